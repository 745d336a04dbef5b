//! Traffic statistics: per site, per minute aggregates that merge (counters add, visitor
//! sketches take the register-wise maximum), so that the control plane can sum edges, minutes
//! into hours and hours into days without ever keeping a raw address.
//!
//! A request is recorded once, when its response ends, under a per-site lock of its own thread
//! (see [`crate::shard`]): its outcome class (read from the `Cache-Status` the edge wrote),
//! status class, time to the response head, bytes sent, and a hash of the client address and
//! User-Agent added to a HyperLogLog sketch.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// HyperLogLog precision: 2^11 registers, standard error 1.04/√2048 ≈ 2.3 %.
pub const HLL_BITS: u32 = 11;
const REGS: usize = 1 << HLL_BITS;

/// Upper bounds (milliseconds) of the time-to-response-head histogram; one more bucket holds
/// everything slower. Index 7 is the 2 s bound of QS-01.
pub const TTFB_BOUNDS_MS: [u64; 9] = [10, 25, 50, 100, 250, 500, 1000, 2000, 5000];
pub const TTFB_BUCKETS: usize = TTFB_BOUNDS_MS.len() + 1;
const UNDER_2S: usize = 8;

/// A HyperLogLog sketch (empty until the first visitor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hll {
    regs: Vec<u8>,
}

const ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

impl Hll {
    pub fn is_empty(&self) -> bool {
        self.regs.iter().all(|&r| r == 0)
    }

    pub fn add_hash(&mut self, h: u64) {
        if self.regs.is_empty() {
            self.regs = vec![0; REGS];
        }
        let idx = (h >> (64 - HLL_BITS)) as usize;
        let rest = h << HLL_BITS;
        let rank = (rest.leading_zeros().min(64 - HLL_BITS) + 1) as u8;
        if self.regs[idx] < rank {
            self.regs[idx] = rank;
        }
    }

    pub fn merge(&mut self, o: &Hll) {
        if o.regs.is_empty() {
            return;
        }
        if self.regs.is_empty() {
            self.regs = o.regs.clone();
            return;
        }
        for (a, b) in self.regs.iter_mut().zip(&o.regs) {
            *a = (*a).max(*b);
        }
    }

    /// The estimated number of distinct values (with the small-range correction).
    pub fn estimate(&self) -> u64 {
        if self.regs.is_empty() {
            return 0;
        }
        let m = REGS as f64;
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for &r in &self.regs {
            sum += 1.0 / f64::from(1u32 << r.min(31));
            if r == 0 {
                zeros += 1;
            }
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let e = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        e.round() as u64
    }

    /// Text form: `s` then 3 hex digits of register + 1 digit of rank per non-zero register when
    /// that is shorter, else `d` then one digit per register.
    pub fn encode(&self) -> String {
        let nonzero = self.regs.iter().filter(|&&r| r != 0).count();
        if nonzero == 0 {
            return String::new();
        }
        if nonzero * 4 < REGS {
            let mut s = String::with_capacity(1 + nonzero * 4);
            s.push('s');
            for (i, &r) in self.regs.iter().enumerate().filter(|(_, r)| **r != 0) {
                s.push_str(&format!("{i:03x}"));
                s.push(ALPHABET[r as usize & 63] as char);
            }
            s
        } else {
            let mut s = String::with_capacity(1 + REGS);
            s.push('d');
            s.extend(self.regs.iter().map(|&r| ALPHABET[r as usize & 63] as char));
            s
        }
    }

    pub fn decode(s: &str) -> Result<Hll, String> {
        let b = s.as_bytes();
        let bad = || "malformed visitor sketch".to_string();
        match b.first() {
            None => Ok(Hll::default()),
            Some(b'd') if b.len() == 1 + REGS => {
                let regs = b[1..]
                    .iter()
                    .map(|&c| digit(c).filter(|&r| r <= 64 - HLL_BITS as u8 + 1))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(bad)?;
                Ok(Hll { regs })
            }
            Some(b's') if (b.len() - 1).is_multiple_of(4) => {
                let mut regs = vec![0; REGS];
                for c in b[1..].chunks(4) {
                    let i = std::str::from_utf8(&c[..3])
                        .ok()
                        .and_then(|h| usize::from_str_radix(h, 16).ok())
                        .filter(|&i| i < REGS)
                        .ok_or_else(bad)?;
                    regs[i] = digit(c[3])
                        .filter(|&r| r <= 64 - HLL_BITS as u8 + 1)
                        .ok_or_else(bad)?;
                }
                Ok(Hll { regs })
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for Hll {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Hll {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hll::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// How a response was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// From cache while fresh, or after the origin confirmed it (304).
    Hit,
    /// From cache, stale (origin down, stale-while-revalidate, grace).
    Stale,
    /// Fetched from the origin and possibly stored.
    Miss,
    /// Passed to the origin without the cache (methods, rules, bypass mode, uncacheable).
    Bypass,
    /// A 5xx answer.
    Error,
}

/// Classifies a response from its status and its last `Cache-Status` header value, where the
/// edge appends its own member after those of the caches before it (an origin behind Varnish or
/// nginx sends its own). No member of the edge's: the response did not go through the cache.
pub fn classify(status: u16, cache_status: Option<&[u8]>) -> Class {
    if status >= 500 {
        return Class::Error;
    }
    let Some(v) = cache_status else {
        return Class::Bypass;
    };
    // The most common answer, as the edge writes it (see `proxy`): `relais; hit; ttl=N[; …]`.
    if let Some(ttl) = v.strip_prefix(b"relais; hit; ttl=")
        && !ttl.contains(&b',')
    {
        return if ttl.first() == Some(&b'-') {
            Class::Stale
        } else {
            Class::Hit
        };
    }
    // One pass over the bytes (this runs for every request): items end at `;`, members at `,`;
    // the first item of a member is the cache's name, and only the last member named as the edge
    // counts (an origin behind another cache, or another Relais, sends members of its own).
    let mut hit = false;
    let mut negative_ttl = false;
    let mut fwd: &[u8] = b"";
    let mut fwd_status: &[u8] = b"";
    let mut start = 0;
    let mut name = true;
    let mut ours = false;
    for i in 0..=v.len() {
        let c = v.get(i).copied().unwrap_or(b',');
        if c != b';' && c != b',' {
            continue;
        }
        let item = v[start..i].trim_ascii();
        if name {
            ours = item == crate::response::CACHE_NAME.as_bytes();
            if ours {
                (hit, negative_ttl, fwd, fwd_status) = (false, false, b"", b"");
            }
        } else if ours {
            if item == b"hit" {
                hit = true;
            } else if let Some(t) = item.strip_prefix(b"ttl=") {
                negative_ttl = t.first() == Some(&b'-');
            } else if let Some(f) = item.strip_prefix(b"fwd=") {
                fwd = f;
            } else if let Some(f) = item.strip_prefix(b"fwd-status=") {
                fwd_status = f;
            }
        }
        start = i + 1;
        name = c == b',';
    }
    if hit {
        return if negative_ttl {
            Class::Stale
        } else {
            Class::Hit
        };
    }
    match fwd {
        // Revalidated: the body came from the cache.
        b"stale" if fwd_status == b"304" => Class::Hit,
        // The origin failed and the stored copy was served.
        b"stale" if negative_ttl => Class::Stale,
        b"miss" | b"vary-miss" | b"request" | b"stale" | b"uri-miss" => Class::Miss,
        _ => Class::Bypass,
    }
}

/// A mergeable aggregate (a minute of one edge, or any sum of them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agg {
    pub requests: u64,
    pub hits: u64,
    pub stale: u64,
    pub misses: u64,
    pub bypass: u64,
    pub errors: u64,
    /// Bytes of response bodies sent to clients.
    pub bytes_sent: u64,
    /// The part of `bytes_sent` served from cache (hits and stale).
    pub bytes_cached: u64,
    /// The part of `bytes_sent` that came from origins (misses, pass-through, errors).
    pub bytes_origin: u64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status: [u64; 5],
    /// Time to the response head, by [`TTFB_BOUNDS_MS`] (measured on the kernel's tick clock:
    /// to within its 1–4 ms, which the first bound, 10 ms, allows for).
    pub ttfb: [u64; TTFB_BUCKETS],
    #[serde(skip_serializing_if = "Hll::is_empty")]
    pub visitors: Hll,
}

impl Agg {
    pub fn merge(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.hits += o.hits;
        self.stale += o.stale;
        self.misses += o.misses;
        self.bypass += o.bypass;
        self.errors += o.errors;
        self.bytes_sent += o.bytes_sent;
        self.bytes_cached += o.bytes_cached;
        self.bytes_origin += o.bytes_origin;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        for (a, b) in self.ttfb.iter_mut().zip(o.ttfb) {
            *a += b;
        }
        self.visitors.merge(&o.visitors);
    }

    /// Records one finished request.
    pub fn record(&mut self, r: &Request) {
        self.requests += 1;
        match r.class {
            Class::Hit => self.hits += 1,
            Class::Stale => self.stale += 1,
            Class::Miss => self.misses += 1,
            Class::Bypass => self.bypass += 1,
            Class::Error => self.errors += 1,
        }
        self.bytes_sent += r.sent;
        if matches!(r.class, Class::Hit | Class::Stale) {
            self.bytes_cached += r.sent;
        } else {
            self.bytes_origin += r.sent;
        }
        let sc = (r.status / 100).clamp(1, 5) as usize - 1;
        self.status[sc] += 1;
        let b = TTFB_BOUNDS_MS
            .iter()
            .position(|&ms| r.ttfb_ms <= ms)
            .unwrap_or(TTFB_BOUNDS_MS.len());
        self.ttfb[b] += 1;
        self.visitors.add_hash(r.visitor);
    }

    /// Requests answered from cache (hits and stale) over all requests.
    pub fn hit_ratio(&self) -> Option<f64> {
        let cacheable = self.requests;
        (cacheable > 0).then(|| (self.hits + self.stale) as f64 / cacheable as f64)
    }

    /// Bytes sent from cache over bytes sent.
    pub fn byte_hit_ratio(&self) -> Option<f64> {
        (self.bytes_sent > 0).then(|| self.bytes_cached as f64 / self.bytes_sent as f64)
    }

    /// Share of responses whose head left within 2 s (QS-01).
    pub fn under_2s(&self) -> Option<f64> {
        let n: u64 = self.ttfb.iter().sum();
        (n > 0).then(|| self.ttfb[..UNDER_2S].iter().sum::<u64>() as f64 / n as f64)
    }

    pub fn is_empty(&self) -> bool {
        *self == Agg::default()
    }
}

/// One finished request, as statistics see it.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub class: Class,
    pub status: u16,
    pub ttfb_ms: u64,
    pub sent: u64,
    pub visitor: u64,
}

/// A stable 64-bit hash of a visitor (address and User-Agent), the same on every edge: eight
/// bytes at a time (multiply, rotate), lengths included, then a SplitMix64 finaliser for
/// well-spread high bits. Edges of one fleet must run the same version of it (it changed once,
/// from byte-wise FNV-1a, for speed).
pub fn visitor_hash(ip: IpAddr, user_agent: Option<&[u8]>) -> u64 {
    fn mix(h: u64, word: u64) -> u64 {
        (h ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29)
    }
    fn eat(mut h: u64, b: &[u8]) -> u64 {
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            h = mix(h, u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            h = mix(h, u64::from_le_bytes(a));
        }
        mix(h, b.len() as u64)
    }
    let h = match ip {
        IpAddr::V4(a) => eat(0x243f_6a88_85a3_08d3, &a.octets()),
        IpAddr::V6(a) => eat(0x243f_6a88_85a3_08d3, &a.octets()),
    };
    let h = eat(h, user_agent.unwrap_or_default());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A site's minutes not yet collected, by minute (Unix seconds / 60).
#[derive(Debug, Default)]
pub struct Minutes {
    open: crate::shard::Sharded<Open>,
}

/// A thread's share of a site's minutes: the one it is recording, and older ones not yet
/// collected.
#[derive(Debug, Default)]
struct Open {
    current: Option<(i64, Agg)>,
    older: BTreeMap<i64, Agg>,
}

fn add(m: &mut BTreeMap<i64, Agg>, minute: i64, agg: Agg) {
    match m.entry(minute) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(agg);
        }
        std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().merge(&agg),
    }
}

impl Minutes {
    pub fn record(&self, minute: i64, r: &Request) {
        let mut open = self.open.mine();
        match &mut open.current {
            Some((m, agg)) if *m == minute => agg.record(r),
            _ => {
                // Another minute (the next one, or a late request of an earlier one): the slot
                // goes to it and the previous minute waits in `older`.
                let mut agg = Agg::default();
                agg.record(r);
                if let Some((m, prev)) = open.current.replace((minute, agg)) {
                    add(&mut open.older, m, prev);
                }
            }
        }
    }

    /// Takes the minutes before `current`, the threads' shares merged.
    pub fn take_before(&self, current: i64) -> Vec<(i64, Agg)> {
        let mut out: BTreeMap<i64, Agg> = BTreeMap::new();
        self.open.each(|open| {
            if open.current.as_ref().is_some_and(|(m, _)| *m < current)
                && let Some((m, agg)) = open.current.take()
            {
                add(&mut out, m, agg);
            }
            let keep = open.older.split_off(&current);
            for (m, agg) in std::mem::replace(&mut open.older, keep) {
                add(&mut out, m, agg);
            }
        });
        out.into_iter().collect()
    }
}

/// One site-minute as shipped to the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteMinute {
    pub site: String,
    /// Unix seconds / 60.
    pub minute: i64,
    pub agg: Agg,
}

/// What an edge sends: batches are numbered so that a batch delivered twice counts once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub seq: u64,
    pub minutes: Vec<SiteMinute>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(class: Class, status: u16, ttfb_ms: u64, sent: u64, v: u64) -> Request {
        Request {
            class,
            status,
            ttfb_ms,
            sent,
            visitor: visitor_hash(IpAddr::from([192, 0, 2, v as u8]), None),
        }
    }

    #[test]
    fn hll_estimates_within_its_error_and_merges() {
        for n in [1u64, 10, 100, 1_000, 20_000, 200_000] {
            let mut a = Hll::default();
            let mut b = Hll::default();
            for i in 0..n {
                let h = visitor_hash(
                    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                    Some(b"ua"),
                );
                if i % 2 == 0 {
                    a.add_hash(h)
                } else {
                    b.add_hash(h)
                }
                // Repeats do not count.
                a.add_hash(h);
            }
            a.merge(&b);
            let e = a.estimate() as f64;
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.07, "n={n} estimate={e}");
            assert_eq!(Hll::decode(&a.encode()).expect("decodes"), a, "n={n}");
        }
    }

    #[test]
    fn sketches_refuse_garbage() {
        assert!(Hll::decode("x123").is_err());
        assert!(Hll::decode("sFFF1").is_err());
        assert!(Hll::decode("s0011zz").is_err());
        assert!(Hll::decode("d12").is_err());
        assert_eq!(Hll::decode("").expect("empty"), Hll::default());
    }

    #[test]
    fn classes_come_from_cache_status() {
        let c = |s: &str| classify(200, Some(s.as_bytes()));
        assert_eq!(c("relais; hit; ttl=30"), Class::Hit);
        assert_eq!(c("relais; hit; ttl=-5; detail=origin-down"), Class::Stale);
        assert_eq!(c("relais; fwd=miss; stored"), Class::Miss);
        assert_eq!(c("relais; fwd=stale; fwd-status=304; ttl=60"), Class::Hit);
        assert_eq!(c("relais; fwd=stale; fwd-status=200; stored"), Class::Miss);
        assert_eq!(
            c("relais; fwd=stale; fwd-status=502; ttl=-40; detail=x"),
            Class::Stale
        );
        assert_eq!(c("relais; fwd=bypass; detail=maintenance"), Class::Bypass);
        assert_eq!(c("relais; fwd=method"), Class::Bypass);
        assert_eq!(classify(502, Some(b"relais; hit")), Class::Error);
        assert_eq!(classify(200, None), Class::Bypass);
        // A cache in front of the origin: its member comes first, the edge's last.
        assert_eq!(c("varnish; hit, relais; fwd=miss; stored"), Class::Miss);
        assert_eq!(c("varnish; fwd=miss,relais; hit; ttl=9"), Class::Hit);
        assert_eq!(c("varnish; fwd=miss,relais; hit; ttl=-9"), Class::Stale);
        // Only the edge's own member counts, the last one if there are several.
        assert_eq!(c("varnish; hit"), Class::Bypass);
        assert_eq!(c("relais; hit; ttl=5, varnish; fwd=miss"), Class::Hit);
        assert_eq!(c("relais; hit; ttl=5, relais; fwd=uri-miss"), Class::Miss);
    }

    #[test]
    fn aggregates_add_up_and_ratios_follow() {
        let mut a = Agg::default();
        a.record(&req(Class::Hit, 200, 3, 1000, 1));
        a.record(&req(Class::Stale, 200, 1500, 500, 2));
        a.record(&req(Class::Miss, 404, 2500, 100, 1));
        let mut b = Agg::default();
        b.record(&req(Class::Bypass, 302, 12_000, 400, 3));
        b.record(&req(Class::Error, 503, 40, 0, 3));
        a.merge(&b);
        assert_eq!(a.requests, 5);
        assert_eq!(
            (a.hits, a.stale, a.misses, a.bypass, a.errors),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(a.status, [0, 2, 1, 1, 1]);
        assert_eq!(a.bytes_sent, 2000);
        assert_eq!(a.bytes_cached, 1500);
        assert_eq!(a.bytes_origin, 500);
        assert_eq!(a.hit_ratio(), Some(0.4));
        assert_eq!(a.byte_hit_ratio(), Some(0.75));
        assert_eq!(a.under_2s(), Some(0.6));
        assert_eq!(a.ttfb[0], 1);
        assert_eq!(a.ttfb[TTFB_BUCKETS - 1], 1);
        assert_eq!(a.visitors.estimate(), 3);
        let back: Agg =
            serde_json::from_str(&serde_json::to_string(&a).expect("json")).expect("back");
        assert_eq!(back, a);
    }

    #[test]
    fn minutes_are_taken_once_closed() {
        let m = Minutes::default();
        m.record(10, &req(Class::Hit, 200, 1, 1, 1));
        m.record(11, &req(Class::Hit, 200, 1, 1, 1));
        let taken = m.take_before(11);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 10);
        assert_eq!(taken[0].1.requests, 1);
        assert!(m.take_before(11).is_empty());
        assert_eq!(m.take_before(12).len(), 1);
    }

    #[test]
    fn late_requests_and_many_threads_merge_into_their_minute() {
        let m = Minutes::default();
        m.record(10, &req(Class::Hit, 200, 1, 1, 1));
        m.record(11, &req(Class::Miss, 200, 1, 1, 2));
        // A request that started in minute 10 and ends after another ended in 11.
        m.record(10, &req(Class::Hit, 200, 1, 1, 3));
        m.record(11, &req(Class::Hit, 200, 1, 1, 4));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..100 {
                        m.record(12, &req(Class::Hit, 200, 1, 10, 10 + (t * 100 + i) % 200));
                    }
                });
            }
        });
        let taken = m.take_before(13);
        let got: Vec<(i64, u64, u64)> = taken
            .iter()
            .map(|(minute, a)| (*minute, a.requests, a.hits))
            .collect();
        assert_eq!(got, vec![(10, 2, 2), (11, 2, 1), (12, 400, 400)]);
        assert_eq!(taken[2].1.bytes_sent, 4000);
        // 200 distinct visitors, each seen by two threads: counted once (within the sketch's
        // error), not twice.
        let v = taken[2].1.visitors.estimate();
        assert!((190..=210).contains(&v), "{v}");
        assert!(m.take_before(13).is_empty());
    }
}
