//! HTTP caching semantics (RFC 9111, RFC 9213 targeted fields, RFC 5861 stale extensions) as
//! pure functions over headers and times, so every decision is table-testable.
//!
//! Relais is a *shared* cache: `private` responses are never stored and `s-maxage` wins over
//! `max-age`. When a targeted field is present (`Relais-Cache-Control` first, then
//! `CDN-Cache-Control`), it replaces `Cache-Control` and `Expires` for every decision here.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

/// Our own targeted field (RFC 9213 §2.1: `<Product>-Cache-Control`).
pub static RELAIS_CACHE_CONTROL: HeaderName = HeaderName::from_static("relais-cache-control");
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Upper bound for any delta-seconds value (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 2_147_483_648;
/// Cap on heuristic freshness, so a years-old Last-Modified does not pin a page for months.
const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);

/// Cache-Control directives we act on. `None` means absent; an unparsable value of a directive
/// that carries freshness is recorded as `Some(0)` so the response is treated as stale
/// (RFC 9111 §4.2.1 allows either that or ignoring it; stale is the safe side).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Fields named by qualified `no-cache="a, b"` or `private="a"`: stored without them.
    pub omit_fields: Vec<String>,
    // request-only directives
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

fn parse_delta(v: Option<&str>) -> Option<u64> {
    let v = v?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflow means "very large": clamp (RFC 9111 §1.2.2).
    Some(v.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

/// Splits a Cache-Control field value into (name, value) pairs, honouring quoted strings.
fn split_directives(s: &str, mut f: impl FnMut(&str, Option<&str>)) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut in_quotes = false;
    let mut i = 0;
    let mut emit = |part: &str| {
        let part = part.trim();
        if part.is_empty() {
            return;
        }
        match part.split_once('=') {
            Some((k, v)) => {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                f(k.trim(), Some(v))
            }
            None => f(part, None),
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_quotes = !in_quotes,
            b'\\' if in_quotes => i += 1,
            b',' if !in_quotes => {
                emit(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < s.len() {
        emit(&s[start..]);
    }
}

/// Parses every line of `name` in `headers`. The first occurrence of a directive wins.
pub fn parse_cache_control(headers: &HeaderMap, name: &HeaderName) -> Option<Directives> {
    let mut any = false;
    let mut d = Directives::default();
    let mut seen_max_age = false;
    let mut seen_s_maxage = false;
    for value in headers.get_all(name) {
        any = true;
        let Ok(s) = value.to_str() else { continue };
        split_directives(s, |k, v| {
            match k.to_ascii_lowercase().as_str() {
                "max-age" if !seen_max_age => {
                    seen_max_age = true;
                    d.max_age = Some(parse_delta(v).unwrap_or(0));
                }
                "s-maxage" if !seen_s_maxage => {
                    seen_s_maxage = true;
                    d.s_maxage = Some(parse_delta(v).unwrap_or(0));
                }
                "no-store" => d.no_store = true,
                // Qualified forms name fields that must not be stored (RFC 9111 §5.2.2.4, §5.2.2.7).
                "no-cache" | "private" if v.is_some_and(|v| !v.trim().is_empty()) => {
                    for f in v.unwrap_or("").split(',') {
                        let f = f.trim().to_ascii_lowercase();
                        if !f.is_empty() && !d.omit_fields.contains(&f) {
                            d.omit_fields.push(f);
                        }
                    }
                }
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" if d.stale_while_revalidate.is_none() => {
                    d.stale_while_revalidate = parse_delta(v);
                }
                "stale-if-error" if d.stale_if_error.is_none() => d.stale_if_error = parse_delta(v),
                "max-stale" if d.max_stale.is_none() => {
                    d.max_stale = Some(v.and_then(|v| parse_delta(Some(v))));
                }
                "min-fresh" if d.min_fresh.is_none() => d.min_fresh = parse_delta(v),
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        });
    }
    any.then_some(d)
}

/// Which field governed a response's caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Governing {
    RelaisCacheControl,
    CdnCacheControl,
    CacheControl,
    None,
}

/// Parses a targeted field (RFC 9213): a Structured Field Dictionary (RFC 8941). Any syntax
/// error, or a directive value of the wrong type, makes the whole field ignored (`None`), and
/// the cache falls back to the next field.
pub fn parse_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Directives> {
    headers.get(name)?;
    let mut joined = String::new();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            joined.push(',');
        }
        joined.push_str(v.to_str().ok()?);
    }
    let members = sf::parse_dictionary(&joined)?;
    let mut d = Directives::default();
    for (key, value) in members {
        let int = |v: &sf::Item| match v {
            sf::Item::Integer(n) if *n >= 0 => Some((*n as u64).min(MAX_DELTA)),
            _ => None,
        };
        let flag = |v: &sf::Item| matches!(v, sf::Item::Boolean(true));
        match key.as_str() {
            "max-age" => d.max_age = Some(int(&value)?),
            "s-maxage" => d.s_maxage = Some(int(&value)?),
            "stale-while-revalidate" => d.stale_while_revalidate = Some(int(&value)?),
            "stale-if-error" => d.stale_if_error = Some(int(&value)?),
            "no-store" => d.no_store = flag(&value),
            "no-cache" => d.no_cache = flag(&value),
            "private" => d.private = flag(&value),
            "public" => d.public = flag(&value),
            "must-revalidate" => d.must_revalidate = flag(&value),
            "proxy-revalidate" => d.proxy_revalidate = flag(&value),
            "must-understand" => d.must_understand = flag(&value),
            "immutable" => d.immutable = flag(&value),
            _ => {}
        }
    }
    Some(d)
}

/// A minimal RFC 8941 Dictionary parser: enough to validate targeted cache fields strictly.
mod sf {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Item {
        Integer(i64),
        Decimal,
        String,
        Token,
        Bytes,
        Boolean(bool),
    }

    pub fn parse_dictionary(input: &str) -> Option<Vec<(String, Item)>> {
        let b = input.as_bytes();
        let mut i = 0;
        let skip_sp = |i: &mut usize| {
            while *i < b.len() && b[*i] == b' ' {
                *i += 1;
            }
        };
        let skip_ows = |i: &mut usize| {
            while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
                *i += 1;
            }
        };
        skip_sp(&mut i);
        let mut out: Vec<(String, Item)> = Vec::new();
        if i == b.len() {
            return None;
        }
        loop {
            let key = parse_key(b, &mut i)?;
            let value = if i < b.len() && b[i] == b'=' {
                i += 1;
                parse_bare_item(b, &mut i)?
            } else {
                Item::Boolean(true)
            };
            parse_params(b, &mut i)?;
            // Later duplicates overwrite earlier ones (RFC 8941 §4.2.2).
            if let Some(e) = out.iter_mut().find(|(k, _)| *k == key) {
                e.1 = value;
            } else {
                out.push((key, value));
            }
            skip_ows(&mut i);
            if i == b.len() {
                return Some(out);
            }
            if b[i] != b',' {
                return None;
            }
            i += 1;
            skip_ows(&mut i);
            if i == b.len() {
                return None;
            }
        }
    }

    fn parse_key(b: &[u8], i: &mut usize) -> Option<String> {
        let start = *i;
        if *i >= b.len() || !(b[*i].is_ascii_lowercase() || b[*i] == b'*') {
            return None;
        }
        while *i < b.len()
            && (b[*i].is_ascii_lowercase() || b[*i].is_ascii_digit() || b"_-.*".contains(&b[*i]))
        {
            *i += 1;
        }
        Some(String::from_utf8_lossy(&b[start..*i]).into_owned())
    }

    fn parse_params(b: &[u8], i: &mut usize) -> Option<()> {
        while *i < b.len() && b[*i] == b';' {
            *i += 1;
            while *i < b.len() && b[*i] == b' ' {
                *i += 1;
            }
            parse_key(b, i)?;
            if *i < b.len() && b[*i] == b'=' {
                *i += 1;
                parse_bare_item(b, i)?;
            }
        }
        Some(())
    }

    fn parse_bare_item(b: &[u8], i: &mut usize) -> Option<Item> {
        let c = *b.get(*i)?;
        if c == b'-' || c.is_ascii_digit() {
            let start = *i;
            if c == b'-' {
                *i += 1;
            }
            let digits_start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            let int_digits = *i - digits_start;
            if int_digits == 0 {
                return None;
            }
            if *i < b.len() && b[*i] == b'.' {
                if int_digits > 12 {
                    return None;
                }
                *i += 1;
                let frac_start = *i;
                while *i < b.len() && b[*i].is_ascii_digit() {
                    *i += 1;
                }
                let frac = *i - frac_start;
                return (1..=3).contains(&frac).then_some(Item::Decimal);
            }
            if int_digits > 15 {
                return None;
            }
            return std::str::from_utf8(&b[start..*i])
                .ok()?
                .parse()
                .ok()
                .map(Item::Integer);
        }
        match c {
            b'"' => {
                *i += 1;
                while *i < b.len() {
                    match b[*i] {
                        b'\\' => {
                            let n = *b.get(*i + 1)?;
                            if n != b'"' && n != b'\\' {
                                return None;
                            }
                            *i += 2;
                        }
                        b'"' => {
                            *i += 1;
                            return Some(Item::String);
                        }
                        0x20..=0x7e => *i += 1,
                        _ => return None,
                    }
                }
                None
            }
            b':' => {
                *i += 1;
                while *i < b.len() && b[*i] != b':' {
                    if !(b[*i].is_ascii_alphanumeric() || b"+/=".contains(&b[*i])) {
                        return None;
                    }
                    *i += 1;
                }
                if *i >= b.len() {
                    return None;
                }
                *i += 1;
                Some(Item::Bytes)
            }
            b'?' => {
                let v = match b.get(*i + 1)? {
                    b'0' => false,
                    b'1' => true,
                    _ => return None,
                };
                *i += 2;
                Some(Item::Boolean(v))
            }
            c if c.is_ascii_alphabetic() || c == b'*' => {
                while *i < b.len()
                    && (b[*i].is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b[*i]))
                {
                    *i += 1;
                }
                Some(Item::Token)
            }
            _ => None,
        }
    }
}

/// The response directives that apply to us, and where they came from.
pub fn response_directives(headers: &HeaderMap) -> (Directives, Governing) {
    if let Some(d) = parse_targeted(headers, &RELAIS_CACHE_CONTROL) {
        return (d, Governing::RelaisCacheControl);
    }
    if let Some(d) = parse_targeted(headers, &CDN_CACHE_CONTROL) {
        return (d, Governing::CdnCacheControl);
    }
    match parse_cache_control(headers, &header::CACHE_CONTROL) {
        Some(d) => (d, Governing::CacheControl),
        None => (Directives::default(), Governing::None),
    }
}

/// Request directives (`Pragma: no-cache` counts when there is no Cache-Control).
pub fn request_directives(headers: &HeaderMap) -> Directives {
    if let Some(d) = parse_cache_control(headers, &header::CACHE_CONTROL) {
        return d;
    }
    let mut d = Directives::default();
    for v in headers.get_all(header::PRAGMA) {
        if v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("no-cache"))
        {
            d.no_cache = true;
        }
    }
    d
}

/// Status codes that are cacheable by default (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose semantics we understand (for `must-understand`).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Facts about the request that influence storing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    pub authorization: bool,
    pub cookie: bool,
    pub no_store: bool,
}

impl RequestFacts {
    pub fn of(method: &Method, headers: &HeaderMap, directives: &Directives) -> Self {
        let _ = method;
        Self {
            authorization: headers.contains_key(header::AUTHORIZATION),
            cookie: headers.contains_key(header::COOKIE),
            no_store: directives.no_store,
        }
    }
}

/// How long a stored response is fresh and how it may be served once stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub heuristic: bool,
    /// Every reuse needs a successful validation (`no-cache`).
    pub no_cache: bool,
    /// Stale must never be served, not even when origins fail.
    pub must_revalidate: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub governing: Governing,
}

/// Header fields a stored response must not keep (qualified `no-cache` / `private`).
pub fn omitted_fields(headers: &HeaderMap) -> Vec<String> {
    response_directives(headers).0.omit_fields
}

/// Why a response was not stored (for `Cache-Status: detail=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    VaryStar,
    SetCookie,
    NoFreshness,
    RequestNoStore,
    /// A site rule says not to store this.
    Rule,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::VaryStar => "vary-star",
            NotStored::SetCookie => "set-cookie",
            NotStored::NoFreshness => "no-freshness",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::Rule => "rule",
        }
    }
}

/// Decides whether a response to a GET may be stored, and with which freshness (RFC 9111 §3).
pub fn storable(
    req: RequestFacts,
    status: StatusCode,
    headers: &HeaderMap,
    response_time: SystemTime,
) -> Result<Freshness, NotStored> {
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }
    let (d, governing) = response_directives(headers);
    if req.no_store {
        return Err(NotStored::RequestNoStore);
    }
    let understood_must = d.must_understand && understood(status);
    if d.must_understand && !understood(status) {
        return Err(NotStored::Status);
    }
    if d.no_store && !understood_must {
        return Err(NotStored::NoStore);
    }
    if d.private {
        return Err(NotStored::Private);
    }
    if req.authorization && !(d.public || d.s_maxage.is_some() || d.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == "*"))
    }) {
        return Err(NotStored::VaryStar);
    }
    // A Set-Cookie response is personal unless a field aimed at CDNs says otherwise.
    if headers.contains_key(header::SET_COOKIE)
        && !matches!(
            governing,
            Governing::RelaisCacheControl | Governing::CdnCacheControl
        )
    {
        return Err(NotStored::SetCookie);
    }

    let targeted = matches!(
        governing,
        Governing::RelaisCacheControl | Governing::CdnCacheControl
    );
    let date = header_date(headers, header::DATE).unwrap_or(response_time);
    let explicit = if let Some(s) = d.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(m) = d.max_age {
        Some(Duration::from_secs(m))
    } else if !targeted && headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        Some(match header_date(headers, header::EXPIRES) {
            Some(exp) => exp.duration_since(date).unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        })
    } else {
        None
    };
    let (lifetime, heuristic) = match explicit {
        Some(l) => (l, false),
        None => {
            let may_heuristic = heuristically_cacheable(status) || d.public;
            if !may_heuristic {
                return Err(NotStored::NoFreshness);
            }
            // Personalised requests only share what the origin explicitly marked.
            if (req.cookie || req.authorization) && !d.public {
                return Err(NotStored::NoFreshness);
            }
            let h = match header_date(headers, header::LAST_MODIFIED) {
                Some(lm) => date
                    .duration_since(lm)
                    .map(|age| (age / 10).min(MAX_HEURISTIC))
                    .unwrap_or(Duration::ZERO),
                None => Duration::ZERO,
            };
            (h, true)
        }
    };
    Ok(Freshness {
        lifetime,
        heuristic,
        no_cache: d.no_cache,
        must_revalidate: d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some(),
        stale_while_revalidate: Duration::from_secs(d.stale_while_revalidate.unwrap_or(0)),
        stale_if_error: Duration::from_secs(d.stale_if_error.unwrap_or(0)),
        governing,
    })
}

/// Applies a site's resolved rules on top of the HTTP decision. `edge_ttl` applies when the
/// origin gave no explicit freshness, or always when `respect_origin = false` (which also
/// lets a rule cache what the origin marked `no-store`, `private` or `no-cache`; never a
/// response to a request with credentials, nor one setting a cookie).
pub fn apply_rules(
    decision: Result<Freshness, NotStored>,
    rules: Option<&relais_rules::Settings>,
) -> Result<Freshness, NotStored> {
    let Some(r) = rules else { return decision };
    if r.cache == Some(false) {
        return Err(NotStored::Rule);
    }
    let overrides = r.respect_origin == Some(false);
    let blank = Freshness {
        lifetime: Duration::ZERO,
        heuristic: true,
        no_cache: false,
        must_revalidate: false,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        governing: Governing::None,
    };
    let mut f = match decision {
        Ok(f) => f,
        Err(NotStored::NoFreshness) if r.edge_ttl.is_some() => blank,
        Err(NotStored::NoStore | NotStored::Private) if overrides && r.edge_ttl.is_some() => blank,
        Err(e) => return Err(e),
    };
    if let Some(ttl) = r.edge_ttl
        && (overrides || f.heuristic)
    {
        f.lifetime = ttl;
        f.heuristic = false;
        if overrides {
            f.no_cache = false;
        }
    }
    if let Some(d) = r.stale_while_revalidate {
        f.stale_while_revalidate = d;
    }
    if let Some(d) = r.stale_if_error {
        f.stale_if_error = d;
    }
    Ok(f)
}

pub fn header_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

/// `corrected_initial_age` of RFC 9111 §4.2.3, computed once when a response arrives.
pub fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let date = header_date(headers, header::DATE).unwrap_or(response_time);
    let apparent = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| parse_delta(Some(s)))
        .unwrap_or(0);
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent.max(Duration::from_secs(age_value) + delay)
}

/// Headers that a 304 must not overwrite in the stored response (RFC 9111 §3.2).
pub fn updatable_on_304(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "content-encoding"
            | "transfer-encoding"
            | "content-range"
            | "content-type"
    )
}

/// Hop-by-hop headers never forwarded nor stored (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// A deep, exact-size copy of a header map for storage. Parsed header values are slices of
/// the connection's read buffer; storing them as they are would keep that whole buffer alive
/// for as long as the object is cached.
pub fn compact_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        let mut copy = http::HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
        copy.set_sensitive(v.is_sensitive());
        out.append(k.clone(), copy);
    }
    out
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        m
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Sun, 22 Nov 2026 12:00:00 GMT").expect("date")
    }

    fn store(pairs: &[(&str, &str)]) -> Result<Freshness, NotStored> {
        storable(RequestFacts::default(), StatusCode::OK, &h(pairs), now())
    }

    #[test]
    fn parses_directives() {
        let d = parse_cache_control(
            &h(&[
                ("cache-control", "public, max-age=\"60\", s-maxage=30"),
                ("cache-control", "max-age=99, no-cache=\"set-cookie, foo\""),
            ]),
            &header::CACHE_CONTROL,
        )
        .expect("present");
        assert_eq!(
            d.max_age,
            Some(60),
            "first occurrence wins, quoted accepted"
        );
        assert_eq!(d.s_maxage, Some(30));
        assert!(d.public && !d.no_cache);
        assert_eq!(d.omit_fields, vec!["set-cookie", "foo"]);
        let d = parse_cache_control(
            &h(&[("cache-control", "max-age=abc")]),
            &header::CACHE_CONTROL,
        )
        .expect("present");
        assert_eq!(d.max_age, Some(0), "invalid max-age is treated as stale");
        let d = parse_cache_control(
            &h(&[("cache-control", "max-age=99999999999999")]),
            &header::CACHE_CONTROL,
        )
        .expect("present");
        assert_eq!(d.max_age, Some(MAX_DELTA));
    }

    /// (response headers, expected lifetime in seconds or the reason it is not stored)
    #[test]
    fn storability_and_freshness_table() {
        let date = "Sun, 22 Nov 2026 12:00:00 GMT";
        type Case<'a> = (Vec<(&'a str, &'a str)>, Result<u64, NotStored>);
        let cases: Vec<Case> = vec![
            (vec![("cache-control", "max-age=60")], Ok(60)),
            (vec![("cache-control", "max-age=60, s-maxage=10")], Ok(10)),
            (
                vec![("cache-control", "no-store, max-age=60")],
                Err(NotStored::NoStore),
            ),
            (
                vec![("cache-control", "private, max-age=60")],
                Err(NotStored::Private),
            ),
            (
                vec![("cache-control", "max-age=60"), ("vary", "accept, *")],
                Err(NotStored::VaryStar),
            ),
            (
                vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                Err(NotStored::SetCookie),
            ),
            (
                vec![("cdn-cache-control", "max-age=60"), ("set-cookie", "a=b")],
                Ok(60),
            ),
            (
                vec![("date", date), ("expires", "Sun, 22 Nov 2026 12:10:00 GMT")],
                Ok(600),
            ),
            (vec![("date", date), ("expires", "0")], Ok(0)),
            (
                vec![
                    ("date", date),
                    ("expires", "Sun, 22 Nov 2026 12:10:00 GMT"),
                    ("cache-control", "max-age=5"),
                ],
                Ok(5),
            ),
            (
                vec![
                    ("date", date),
                    ("last-modified", "Sun, 22 Nov 2026 02:00:00 GMT"),
                ],
                Ok(3600),
            ),
            (
                vec![
                    ("date", date),
                    ("last-modified", "Sun, 22 Nov 2020 02:00:00 GMT"),
                ],
                Ok(86400),
            ),
            (vec![], Ok(0)),
            // targeted fields replace Cache-Control entirely
            (
                vec![
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=300"),
                ],
                Ok(300),
            ),
            (
                vec![
                    ("cache-control", "max-age=300"),
                    ("cdn-cache-control", "no-store"),
                ],
                Err(NotStored::NoStore),
            ),
            (
                vec![
                    ("cdn-cache-control", "max-age=300"),
                    ("relais-cache-control", "max-age=7"),
                ],
                Ok(7),
            ),
            (
                vec![
                    ("cache-control", "max-age=300"),
                    ("cdn-cache-control", "public"),
                ],
                Ok(0),
            ),
            // must-understand overrides no-store for understood statuses
            (
                vec![("cache-control", "must-understand, no-store, max-age=60")],
                Ok(60),
            ),
        ];
        for (pairs, expected) in cases {
            let got = store(&pairs).map(|f| f.lifetime.as_secs());
            assert_eq!(got, expected, "{pairs:?}");
        }
    }

    #[test]
    fn targeted_fields_are_strict_structured_fields() {
        let cases: &[(&str, Option<Option<u64>>)] = &[
            ("max-age=3600", Some(Some(3600))),
            ("foobar, max-age=3600", Some(Some(3600))),
            (
                "max-age=99999999999",
                Some(Some(99_999_999_999u64.min(MAX_DELTA))),
            ),
            ("max-age =100", None),
            ("max-age= 100", None),
            ("max-age=\"10000\"", None),
            ("max-age=10000, &&&&&", None),
            ("MaX-aGe=3600", None),
            ("max-age=10;foo=bar, private", Some(Some(10))),
            ("no-store", Some(None)),
            ("max-age=1,", None),
        ];
        for (v, want) in cases {
            let got = parse_targeted(&h(&[("cdn-cache-control", v)]), &CDN_CACHE_CONTROL)
                .map(|d| d.max_age);
            assert_eq!(&got, want, "{v}");
        }
        // An invalid targeted field falls back to Cache-Control.
        assert_eq!(
            store(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=\"10000\"")
            ]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[
                ("cache-control", "max-age=1"),
                ("cdn-cache-control", "max-age =100")
            ])
            .map(|f| f.lifetime.as_secs()),
            Ok(1)
        );
        let d = parse_targeted(&h(&[("cdn-cache-control", "private")]), &CDN_CACHE_CONTROL)
            .expect("valid");
        assert!(d.private);
    }

    #[test]
    fn qualified_no_cache_and_private_name_fields() {
        let f = store(&[
            ("cache-control", "max-age=60, no-cache=\"a, B\""),
            ("a", "1"),
        ])
        .expect("stored");
        assert!(
            !f.no_cache,
            "qualified no-cache does not force revalidation"
        );
        assert_eq!(
            omitted_fields(&h(&[(
                "cache-control",
                "max-age=60, no-cache=\"a, B\", private=c"
            )])),
            vec!["a", "b", "c"]
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60, private")]),
            Err(NotStored::Private)
        );
    }

    #[test]
    fn rules_on_top_of_http() {
        let rule = |ttl: u64, respect: Option<bool>| relais_rules::Settings {
            edge_ttl: Some(Duration::from_secs(ttl)),
            respect_origin: respect,
            ..Default::default()
        };
        // No freshness from the origin: the rule's TTL applies.
        assert_eq!(
            apply_rules(store(&[]), Some(&rule(30, None))).map(|f| f.lifetime.as_secs()),
            Ok(30)
        );
        // Explicit origin freshness wins unless the rule overrides it.
        assert_eq!(
            apply_rules(
                store(&[("cache-control", "max-age=5")]),
                Some(&rule(30, None))
            )
            .map(|f| f.lifetime.as_secs()),
            Ok(5)
        );
        assert_eq!(
            apply_rules(
                store(&[("cache-control", "max-age=5")]),
                Some(&rule(30, Some(false)))
            )
            .map(|f| f.lifetime.as_secs()),
            Ok(30)
        );
        // no-store is respected unless the rule overrides; Set-Cookie never is.
        assert_eq!(
            apply_rules(
                store(&[("cache-control", "no-store")]),
                Some(&rule(30, None))
            ),
            Err(NotStored::NoStore)
        );
        assert!(
            apply_rules(
                store(&[("cache-control", "no-store")]),
                Some(&rule(30, Some(false)))
            )
            .is_ok()
        );
        assert_eq!(
            apply_rules(
                store(&[("set-cookie", "a=b")]),
                Some(&rule(30, Some(false)))
            ),
            Err(NotStored::SetCookie)
        );
        let off = relais_rules::Settings {
            cache: Some(false),
            ..Default::default()
        };
        assert_eq!(
            apply_rules(store(&[("cache-control", "max-age=5")]), Some(&off)),
            Err(NotStored::Rule)
        );
        assert_eq!(
            apply_rules(store(&[("cache-control", "max-age=5")]), None)
                .map(|f| f.lifetime.as_secs()),
            Ok(5)
        );
    }

    #[test]
    fn status_and_request_rules() {
        let t = now();
        let none = HeaderMap::new();
        assert_eq!(
            storable(
                RequestFacts::default(),
                StatusCode::INTERNAL_SERVER_ERROR,
                &none,
                t
            ),
            Err(NotStored::NoFreshness),
            "500 is not heuristically cacheable"
        );
        assert!(
            storable(
                RequestFacts::default(),
                StatusCode::INTERNAL_SERVER_ERROR,
                &h(&[("cache-control", "max-age=5")]),
                t
            )
            .is_ok()
        );
        assert_eq!(
            storable(
                RequestFacts::default(),
                StatusCode::PARTIAL_CONTENT,
                &h(&[("cache-control", "max-age=5")]),
                t
            ),
            Err(NotStored::Status)
        );
        let auth = RequestFacts {
            authorization: true,
            ..Default::default()
        };
        assert_eq!(
            storable(
                auth,
                StatusCode::OK,
                &h(&[("cache-control", "max-age=5")]),
                t
            ),
            Err(NotStored::Authorization)
        );
        assert!(
            storable(
                auth,
                StatusCode::OK,
                &h(&[("cache-control", "public, max-age=5")]),
                t
            )
            .is_ok()
        );
        assert!(
            storable(
                auth,
                StatusCode::OK,
                &h(&[("cache-control", "s-maxage=5")]),
                t
            )
            .is_ok()
        );
        let cookie = RequestFacts {
            cookie: true,
            ..Default::default()
        };
        assert_eq!(
            storable(cookie, StatusCode::OK, &none, t),
            Err(NotStored::NoFreshness),
            "no heuristic for cookie requests"
        );
        let f = storable(
            RequestFacts::default(),
            StatusCode::OK,
            &h(&[(
                "cache-control",
                "s-maxage=5, stale-while-revalidate=30, stale-if-error=600",
            )]),
            t,
        )
        .expect("stored");
        assert!(f.must_revalidate, "s-maxage implies proxy-revalidate");
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(f.stale_if_error, Duration::from_secs(600));
    }

    #[test]
    fn ages() {
        let req = now();
        let resp = req + Duration::from_secs(2);
        let headers = h(&[("date", "Sun, 22 Nov 2026 11:59:00 GMT"), ("age", "30")]);
        // apparent age = 62s; corrected age value = 30 + 2
        assert_eq!(initial_age(&headers, req, resp), Duration::from_secs(62));
        let headers = h(&[("date", "Sun, 22 Nov 2026 12:00:02 GMT"), ("age", "100")]);
        assert_eq!(initial_age(&headers, req, resp), Duration::from_secs(102));
    }

    #[test]
    fn hop_by_hop() {
        let mut m = h(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut m);
        assert_eq!(m.len(), 1);
        assert!(m.contains_key("x-keep"));
    }
}
