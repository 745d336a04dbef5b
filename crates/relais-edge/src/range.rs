//! Byte ranges (RFC 9110 §14): parsing `Range`, evaluating `If-Range`, and the
//! `multipart/byteranges` framing for several ranges.

use http::HeaderMap;
use http::header;

/// Above this many ranges the header is ignored and the whole body is sent (a cheap defence
/// against range amplification).
const MAX_RANGES: usize = 16;

/// `[start, end)` byte spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeDecision {
    /// Send the whole representation.
    Full,
    /// Send these spans (one: plain 206; several: multipart).
    Partial(Vec<(u64, u64)>),
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Evaluates a request's `Range` against a body of `len` bytes.
pub fn decide(req: &HeaderMap, len: u64, stored: &HeaderMap) -> RangeDecision {
    let Some(range) = req.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeDecision::Full;
    };
    if let Some(ir) = req.get(header::IF_RANGE)
        && !if_range_matches(ir.to_str().unwrap_or(""), stored)
    {
        return RangeDecision::Full;
    }
    parse(range, len)
}

fn if_range_matches(v: &str, stored: &HeaderMap) -> bool {
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        // Strong comparison: weak validators never match.
        let Some(etag) = stored.get(header::ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        !v.starts_with("W/") && !etag.starts_with("W/") && etag == v
    } else {
        let lm = stored
            .get(header::LAST_MODIFIED)
            .and_then(|e| e.to_str().ok());
        match (
            lm.and_then(|l| httpdate::parse_http_date(l).ok()),
            httpdate::parse_http_date(v).ok(),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// Parses a `bytes=` range set.
pub fn parse(s: &str, len: u64) -> RangeDecision {
    let Some(set) = s.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    let mut spans = Vec::new();
    let mut count = 0;
    for spec in set.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return RangeDecision::Full;
        }
        let Some((a, b)) = spec.split_once('-') else {
            return RangeDecision::Full;
        };
        let (a, b) = (a.trim(), b.trim());
        let span = if a.is_empty() {
            // suffix: last n bytes
            let Ok(n) = b.parse::<u64>() else {
                return RangeDecision::Full;
            };
            if n == 0 {
                continue;
            }
            Some((len.saturating_sub(n), len))
        } else {
            let Ok(first) = a.parse::<u64>() else {
                return RangeDecision::Full;
            };
            let last = if b.is_empty() {
                None
            } else {
                match b.parse::<u64>() {
                    Ok(l) if l >= first => Some(l),
                    _ => return RangeDecision::Full,
                }
            };
            if first >= len {
                None
            } else {
                Some((first, last.map_or(len, |l| (l + 1).min(len))))
            }
        };
        if let Some(sp) = span
            && sp.0 < sp.1
        {
            spans.push(sp);
        }
    }
    if count == 0 {
        return RangeDecision::Full;
    }
    if spans.is_empty() {
        return RangeDecision::Unsatisfiable;
    }
    if spans.len() > 1 {
        // Coalesce overlapping or adjacent spans (RFC 9110 §14.2 allows it).
        let mut sorted = spans.clone();
        sorted.sort();
        let overlaps = sorted.windows(2).any(|w| w[1].0 <= w[0].1);
        if overlaps {
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for s in sorted {
                match merged.last_mut() {
                    Some(last) if s.0 <= last.1 => last.1 = last.1.max(s.1),
                    _ => merged.push(s),
                }
            }
            spans = merged;
        }
    }
    RangeDecision::Partial(spans)
}

/// The framing of a multipart/byteranges body: per part, the head to send before its bytes,
/// and the closing delimiter. Total length is computable up front.
pub struct Multipart {
    pub boundary: String,
    pub heads: Vec<String>,
    pub tail: String,
}

impl Multipart {
    pub fn new(spans: &[(u64, u64)], len: u64, content_type: Option<&str>, seed: u128) -> Self {
        let boundary = format!("relais-{:016x}", (seed as u64) ^ (seed >> 64) as u64);
        let heads = spans
            .iter()
            .enumerate()
            .map(|(i, (s, e))| {
                let mut h = String::new();
                if i > 0 {
                    h.push_str("\r\n");
                }
                h.push_str("--");
                h.push_str(&boundary);
                h.push_str("\r\n");
                if let Some(ct) = content_type {
                    h.push_str("Content-Type: ");
                    h.push_str(ct);
                    h.push_str("\r\n");
                }
                h.push_str(&format!(
                    "Content-Range: bytes {}-{}/{}\r\n\r\n",
                    s,
                    e - 1,
                    len
                ));
                h
            })
            .collect();
        let tail = format!("\r\n--{boundary}--\r\n");
        Self {
            boundary,
            heads,
            tail,
        }
    }

    pub fn content_length(&self, spans: &[(u64, u64)]) -> u64 {
        self.heads.iter().map(|h| h.len() as u64).sum::<u64>()
            + spans.iter().map(|(s, e)| e - s).sum::<u64>()
            + self.tail.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn range_table() {
        use RangeDecision::*;
        let cases: &[(&str, u64, RangeDecision)] = &[
            ("bytes=0-99", 1000, Partial(vec![(0, 100)])),
            ("bytes=900-", 1000, Partial(vec![(900, 1000)])),
            ("bytes=-100", 1000, Partial(vec![(900, 1000)])),
            ("bytes=-5000", 1000, Partial(vec![(0, 1000)])),
            ("bytes=990-2000", 1000, Partial(vec![(990, 1000)])),
            ("bytes=0-0,-1", 1000, Partial(vec![(0, 1), (999, 1000)])),
            (
                "bytes=0-10,5-20,100-110",
                1000,
                Partial(vec![(0, 21), (100, 111)]),
            ),
            ("bytes=1000-", 1000, Unsatisfiable),
            ("bytes=5-1", 1000, Full),
            ("bytes=abc", 1000, Full),
            ("items=0-1", 1000, Full),
            (
                "bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8,9-9,10-10,11-11,12-12,13-13,14-14,15-15,16-16",
                1000,
                Full,
            ),
        ];
        for (h, len, want) in cases {
            assert_eq!(&parse(h, *len), want, "{h}");
        }
    }

    #[test]
    fn if_range() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        stored.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Sun, 22 Nov 2026 10:00:00 GMT"),
        );
        let mut req = HeaderMap::new();
        req.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        req.insert(header::IF_RANGE, HeaderValue::from_static("\"v1\""));
        assert_eq!(
            decide(&req, 10, &stored),
            RangeDecision::Partial(vec![(0, 2)])
        );
        req.insert(header::IF_RANGE, HeaderValue::from_static("\"v2\""));
        assert_eq!(decide(&req, 10, &stored), RangeDecision::Full);
        req.insert(
            header::IF_RANGE,
            HeaderValue::from_static("Sun, 22 Nov 2026 10:00:00 GMT"),
        );
        assert_eq!(
            decide(&req, 10, &stored),
            RangeDecision::Partial(vec![(0, 2)])
        );
    }

    #[test]
    fn multipart_length_matches_framing() {
        let spans = [(0, 3), (7, 10)];
        let m = Multipart::new(&spans, 10, Some("text/plain"), 99);
        let mut body = Vec::new();
        let data = b"0123456789";
        for (h, (s, e)) in m.heads.iter().zip(spans) {
            body.extend_from_slice(h.as_bytes());
            body.extend_from_slice(&data[s as usize..e as usize]);
        }
        body.extend_from_slice(m.tail.as_bytes());
        assert_eq!(body.len() as u64, m.content_length(&spans));
        let text = String::from_utf8(body).expect("utf8");
        assert!(
            text.contains("Content-Range: bytes 7-9/10\r\n\r\n789"),
            "{text}"
        );
    }
}
