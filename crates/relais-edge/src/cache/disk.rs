//! The on-disk layout of the disk tier: `objects/xx/<key>.body` and `<key>.meta` beside it,
//! spill files in `tmp/`. Metadata is a small versioned binary record; a file that does not
//! decode is deleted at startup rather than trusted.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::policy::{Freshness, Governing};
use super::{Key, Meta};

const MAGIC: &[u8; 8] = b"RELAISM1";

pub fn unique_suffix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Creates the layout and this process's spill directory (`tmp/<pid>`), and removes spill
/// directories left by processes that are gone. Another live process may share the cache
/// directory during a zero-downtime upgrade; its in-flight files are left alone.
pub fn prepare_dir(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("objects"))?;
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let me = std::process::id();
    for entry in std::fs::read_dir(&tmp)? {
        let path = entry?.path();
        let owner = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok());
        let alive =
            owner.is_some_and(|pid| pid != me && Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    let mine = tmp.join(me.to_string());
    std::fs::create_dir_all(&mine)?;
    Ok(mine)
}

fn base(dir: &Path, key: Key) -> PathBuf {
    let hex = format!("{key:032x}");
    dir.join("objects").join(&hex[..2]).join(hex)
}

fn body_path(dir: &Path, key: Key) -> PathBuf {
    base(dir, key).with_extension("body")
}

fn meta_path(dir: &Path, key: Key) -> PathBuf {
    base(dir, key).with_extension("meta")
}

pub fn open_body(dir: &Path, key: Key) -> io::Result<(File, u64)> {
    let f = File::open(body_path(dir, key))?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

/// Moves a completed spill file into place as the body of `key`.
pub fn install_body(dir: &Path, key: Key, spill: &Path) -> io::Result<()> {
    let p = body_path(dir, key);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(spill, p)
}

pub fn write_body(dir: &Path, key: Key, data: &[u8]) -> io::Result<()> {
    let p = body_path(dir, key);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    super::body::write_atomic(&p, data)
}

pub fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let p = meta_path(dir, meta.key);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    super::body::write_atomic(&p, &encode(meta))
}

/// Deletes an object's files, metadata first.
pub fn delete(dir: &Path, key: Key) {
    let _ = std::fs::remove_file(meta_path(dir, key));
    let _ = std::fs::remove_file(body_path(dir, key));
}

/// Loads every complete object; removes incomplete or unreadable ones.
pub fn scan(dir: &Path) -> io::Result<Vec<Meta>> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for shard in std::fs::read_dir(dir.join("objects"))? {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&shard)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("meta") => {
                    let body = path.with_extension("body");
                    let decoded = std::fs::read(&path).ok().and_then(|b| decode(&b));
                    match (decoded, std::fs::metadata(&body)) {
                        (Some(m), Ok(bm)) if bm.len() == m.body_len && m.expires > now => {
                            out.push(m)
                        }
                        _ => {
                            let _ = std::fs::remove_file(&path);
                            let _ = std::fs::remove_file(&body);
                        }
                    }
                }
                Some("body") => {
                    if !path.with_extension("meta").exists() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                _ => {
                    // Temporary files from an interrupted atomic write.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    Ok(out)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub fn encode(m: &Meta) -> Vec<u8> {
    let mut o = Vec::with_capacity(512);
    o.extend_from_slice(MAGIC);
    o.extend_from_slice(&m.key.to_le_bytes());
    o.extend_from_slice(&m.primary.to_le_bytes());
    put_bytes(&mut o, m.site.as_bytes());
    put_bytes(&mut o, m.path.as_bytes());
    o.extend_from_slice(&m.status.as_u16().to_le_bytes());
    o.extend_from_slice(&ms(m.response_time).to_le_bytes());
    o.extend_from_slice(&(m.initial_age.as_millis() as u64).to_le_bytes());
    o.extend_from_slice(&(m.fresh.lifetime.as_millis() as u64).to_le_bytes());
    let flags = m.fresh.heuristic as u8
        | (m.fresh.no_cache as u8) << 1
        | (m.fresh.must_revalidate as u8) << 2;
    o.push(flags);
    o.extend_from_slice(&(m.fresh.stale_while_revalidate.as_millis() as u64).to_le_bytes());
    o.extend_from_slice(&(m.fresh.stale_if_error.as_millis() as u64).to_le_bytes());
    o.push(match m.fresh.governing {
        Governing::RelaisCacheControl => 1,
        Governing::CdnCacheControl => 2,
        Governing::CacheControl => 3,
        Governing::None => 0,
    });
    o.extend_from_slice(&ms(m.expires).to_le_bytes());
    o.extend_from_slice(&m.body_len.to_le_bytes());
    o.extend_from_slice(&(m.vary.len() as u32).to_le_bytes());
    for v in &m.vary {
        put_bytes(&mut o, v.as_str().as_bytes());
    }
    o.extend_from_slice(&(m.tags.len() as u32).to_le_bytes());
    for t in &m.tags {
        put_bytes(&mut o, t.as_bytes());
    }
    o.extend_from_slice(&(m.headers.len() as u32).to_le_bytes());
    for (k, v) in &m.headers {
        put_bytes(&mut o, k.as_str().as_bytes());
        put_bytes(&mut o, v.as_bytes());
    }
    o
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take(16)
            .and_then(|b| b.try_into().ok())
            .map(u128::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn time(&mut self) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_millis(self.u64()?))
    }
    fn dur(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(self.u64()?))
    }
}

pub fn decode(b: &[u8]) -> Option<Meta> {
    let mut r = Reader(b);
    if r.take(8)? != MAGIC {
        return None;
    }
    let key = r.u128()?;
    let primary = r.u128()?;
    let site: Arc<str> = r.string()?.into();
    let path = r.string()?;
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let response_time = r.time()?;
    let initial_age = r.dur()?;
    let lifetime = r.dur()?;
    let flags = r.u8()?;
    let swr = r.dur()?;
    let sie = r.dur()?;
    let governing = match r.u8()? {
        1 => Governing::RelaisCacheControl,
        2 => Governing::CdnCacheControl,
        3 => Governing::CacheControl,
        _ => Governing::None,
    };
    let expires = r.time()?;
    let body_len = r.u64()?;
    let mut vary = Vec::new();
    for _ in 0..r.u32()?.min(64) {
        vary.push(HeaderName::from_bytes(r.bytes()?).ok()?);
    }
    let mut tags = Vec::new();
    for _ in 0..r.u32()?.min(1024) {
        tags.push(r.string()?);
    }
    let mut headers = HeaderMap::new();
    for _ in 0..r.u32()?.min(10_000) {
        let k = HeaderName::from_bytes(r.bytes()?).ok()?;
        let v = HeaderValue::from_bytes(r.bytes()?).ok()?;
        headers.append(k, v);
    }
    Some(Meta {
        key,
        primary,
        site,
        path,
        status,
        headers,
        vary,
        response_time,
        initial_age,
        fresh: Freshness {
            lifetime,
            heuristic: flags & 1 != 0,
            no_cache: flags & 2 != 0,
            must_revalidate: flags & 4 != 0,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            governing,
        },
        tags,
        expires,
        body_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_garbage_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(
            "content-type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.append(
            "set-thing",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("obs-text"),
        );
        headers.append("set-thing", HeaderValue::from_static("two"));
        let m = Meta {
            key: 42,
            primary: 7,
            site: "mairie".into(),
            path: "/a?b=c".into(),
            status: StatusCode::NOT_FOUND,
            headers,
            vary: vec![HeaderName::from_static("accept-encoding")],
            response_time: UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
            initial_age: Duration::from_secs(3),
            fresh: Freshness {
                lifetime: Duration::from_secs(60),
                heuristic: true,
                no_cache: false,
                must_revalidate: true,
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::from_secs(9),
                governing: Governing::CdnCacheControl,
            },
            tags: vec!["news".into()],
            expires: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            body_len: 1234,
        };
        let back = decode(&encode(&m)).expect("decodes");
        assert_eq!(encode(&back), encode(&m));
        assert_eq!(back.headers.get_all("set-thing").iter().count(), 2);
        assert_eq!(back.fresh, m.fresh);
        let enc = encode(&m);
        for cut in [0, 8, 20, enc.len() - 1] {
            assert!(decode(&enc[..cut]).is_none(), "truncated at {cut}");
        }
    }
}
