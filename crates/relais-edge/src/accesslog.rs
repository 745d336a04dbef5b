//! Access logs (CDN-12): one file per site per UTC day, NCSA Combined by default (Common or W3C
//! Extended per site), compressed when the day closes, with a manifest per file (lines, bytes,
//! SHA-256, chained to the previous day's manifest) so completeness can be proven.
//!
//! Invariants:
//! - Logging never blocks or slows a request: lines go through a bounded queue to one writer
//!   thread; when the queue is full (disk full, writer behind) the line is dropped and counted,
//!   per site and day, and the manifest of that day says it is incomplete.
//! - A line is written when the response body is finished or abandoned, with the bytes actually
//!   sent. Lines reach the operating system within about 200 ms (the writer flushes after each
//!   batch).
//! - A day is closed once the clock is past its end plus a grace period (requests that started
//!   before midnight end after it); files of past days left by a crash are closed at start.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

use crate::clock::SharedClock;

/// Lines waiting for the writer; beyond this, lines are dropped (and counted).
const QUEUE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Combined,
    Common,
    W3c,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        Some(match s {
            "combined" => LogFormat::Combined,
            "common" => LogFormat::Common,
            "w3c" => LogFormat::W3c,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Combined => "combined",
            LogFormat::Common => "common",
            LogFormat::W3c => "w3c",
        }
    }
}

/// A site's logging options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteLog {
    pub format: LogFormat,
    /// Keep only the network part of client addresses (IPv4 /24, IPv6 /48), for GDPR.
    pub truncate_ip: bool,
}

impl Default for SiteLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Combined,
            truncate_ip: false,
        }
    }
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Line {
    pub site: Arc<str>,
    pub opts: SiteLog,
    pub at: SystemTime,
    pub started: Instant,
    pub ip: IpAddr,
    pub method: Method,
    /// The request target (cheap to clone: the URI shares its buffer).
    pub target: http::Uri,
    pub version: Version,
    pub status: u16,
    pub bytes: u64,
    pub referer: Option<http::HeaderValue>,
    pub user_agent: Option<http::HeaderValue>,
    pub micros: u64,
}

fn header_str(v: &Option<http::HeaderValue>) -> Option<&str> {
    v.as_ref()
        .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("(binary)"))
}

fn target_str(u: &http::Uri) -> &str {
    u.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

type Day = i64;

fn day_of(t: SystemTime) -> Day {
    (t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400) as Day
}

/// (year, month, day) from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn date_string(day: Day) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn hms(t: SystemTime) -> (u64, u64, u64) {
    let s = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    (s / 3600, (s / 60) % 60, s % 60)
}

/// Escapes a field the way nginx does (`"`, `\`, controls and non-ASCII as `\xHH`).
fn escape(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if s.bytes()
        .all(|b| b != b'"' && b != b'\\' && (0x20..0x7f).contains(&b))
    {
        out.push_str(s);
        return;
    }
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str("\\x");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
}

fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return truncate(IpAddr::V4(v4));
            }
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

pub const W3C_FIELDS: &str = "date time c-ip cs-method cs-uri-stem cs-uri-query sc-status sc-bytes time-taken cs(User-Agent) cs(Referer)";

/// Formats one line (with its newline).
pub fn format_line(l: &Line) -> String {
    let mut s = String::with_capacity(200);
    format_into(&mut s, l, &mut Stamp::default());
    s
}

/// The last formatted timestamp, reused while the second does not change (the writer formats
/// tens of thousands of lines per second).
#[derive(Default)]
pub struct Stamp {
    secs: u64,
    format: Option<LogFormat>,
    text: String,
}

impl Stamp {
    fn get(&mut self, at: SystemTime, format: LogFormat) -> &str {
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let w3c = format == LogFormat::W3c;
        if secs != self.secs
            || self.format.map(|f| f == LogFormat::W3c) != Some(w3c)
            || self.text.is_empty()
        {
            let (h, m, sec) = hms(at);
            let day = day_of(at);
            self.text = if w3c {
                format!("{} {h:02}:{m:02}:{sec:02}", date_string(day))
            } else {
                let (y, mo, d) = civil(day);
                format!(
                    "[{d:02}/{}/{y:04}:{h:02}:{m:02}:{sec:02} +0000]",
                    MONTHS[(mo - 1) as usize]
                )
            };
            self.secs = secs;
            self.format = Some(format);
        }
        &self.text
    }
}

/// Appends one line (with its newline) to `s`.
pub fn format_into(s: &mut String, l: &Line, stamp: &mut Stamp) {
    use std::fmt::Write as _;
    let ip = if l.opts.truncate_ip {
        truncate(l.ip)
    } else {
        l.ip
    };
    match l.opts.format {
        LogFormat::Combined | LogFormat::Common => {
            let _ = write!(s, "{ip} - - ");
            s.push_str(stamp.get(l.at, l.opts.format));
            s.push_str(" \"");
            escape(s, l.method.as_str());
            s.push(' ');
            escape(s, target_str(&l.target));
            s.push(' ');
            s.push_str(version_str(l.version));
            let _ = write!(s, "\" {} ", l.status);
            if l.bytes == 0 {
                s.push('-');
            } else {
                let _ = write!(s, "{}", l.bytes);
            }
            if l.opts.format == LogFormat::Combined {
                s.push_str(" \"");
                escape(s, header_str(&l.referer).unwrap_or("-"));
                s.push_str("\" \"");
                escape(s, header_str(&l.user_agent).unwrap_or("-"));
                s.push('"');
            }
        }
        LogFormat::W3c => {
            let w = |s: &mut String, v: Option<&str>| match v {
                Some(v) if !v.is_empty() => {
                    let mut e = String::new();
                    escape(&mut e, v);
                    s.push_str(&e.replace(' ', "+"));
                }
                _ => s.push('-'),
            };
            s.push_str(stamp.get(l.at, l.opts.format));
            let _ = write!(s, " {ip} ");
            w(s, Some(l.method.as_str()));
            s.push(' ');
            let target = target_str(&l.target);
            let (stem, query) = match target.split_once('?') {
                Some((a, b)) => (a, Some(b)),
                None => (target, None),
            };
            w(s, Some(stem));
            s.push(' ');
            w(s, query);
            let _ = write!(s, " {} {} {:.3} ", l.status, l.bytes, l.micros as f64 / 1e6);
            w(s, header_str(&l.user_agent));
            s.push(' ');
            w(s, header_str(&l.referer));
        }
    }
    s.push('\n');
}

/// The per-site, per-day manifest written when a day closes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub site: String,
    pub date: String,
    pub format: String,
    pub file: String,
    pub lines: u64,
    /// Uncompressed size.
    pub bytes: u64,
    /// SHA-256 of the uncompressed content.
    pub sha256: String,
    /// SHA-256 of the compressed file.
    pub gz_sha256: String,
    /// Lines this edge could not write (queue full, disk error).
    pub dropped: u64,
    /// No line was dropped.
    pub complete: bool,
    /// `full` or `truncated` client addresses.
    pub client_ip: String,
    /// SHA-256 of the previous day's manifest file for this site, if there is one.
    pub previous: Option<String>,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_file(p: &Path) -> io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut f = File::open(p)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Paths of a site's files for a day.
pub fn paths(dir: &Path, site: &str, date: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join(site);
    (
        base.join(format!("{site}-{date}.log")),
        base.join(format!("{site}-{date}.log.gz")),
        base.join(format!("{site}-{date}.manifest.json")),
    )
}

/// Compresses a day's file and writes its manifest; removes the plain file.
pub fn close_day(
    dir: &Path,
    site: &str,
    day: Day,
    opts: SiteLog,
    dropped: u64,
) -> io::Result<Manifest> {
    let date = date_string(day);
    let (log, gz, man) = paths(dir, site, &date);
    let mut input = File::open(&log)?;
    let tmp = gz.with_extension("gz.tmp");
    let mut enc = flate2::write::GzEncoder::new(
        BufWriter::new(File::create(&tmp)?),
        flate2::Compression::default(),
    );
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        ctx.update(chunk);
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        bytes += n as u64;
        enc.write_all(chunk)?;
    }
    let w = enc.finish()?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    fs::rename(&tmp, &gz)?;
    let previous = {
        let (_, _, prev) = paths(dir, site, &date_string(day - 1));
        if prev.exists() {
            Some(sha256_file(&prev)?)
        } else {
            None
        }
    };
    let m = Manifest {
        site: site.to_owned(),
        date,
        format: opts.format.as_str().to_owned(),
        file: gz
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        lines,
        bytes,
        sha256: hex(ctx.finish().as_ref()),
        gz_sha256: sha256_file(&gz)?,
        dropped,
        complete: dropped == 0,
        client_ip: if opts.truncate_ip {
            "truncated"
        } else {
            "full"
        }
        .to_owned(),
        previous,
    };
    write_atomic(
        &man,
        &serde_json::to_vec_pretty(&m).map_err(io::Error::other)?,
    )?;
    fs::remove_file(&log)?;
    Ok(m)
}

struct Open {
    w: BufWriter<File>,
    opts: SiteLog,
}

/// The access log of an edge.
pub struct AccessLog {
    tx: SyncSender<Line>,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub days_closed: AtomicU64,
    dropped_by: Mutex<HashMap<(Arc<str>, Day), u64>>,
    dir: PathBuf,
    clock: SharedClock,
}

impl AccessLog {
    /// Starts the writer thread. `grace` is how long after midnight (UTC) a day stays open.
    pub fn start(dir: PathBuf, clock: SharedClock, grace: Duration) -> io::Result<Arc<AccessLog>> {
        fs::create_dir_all(&dir)?;
        let (tx, rx) = sync_channel(QUEUE);
        let log = Arc::new(AccessLog {
            tx,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            days_closed: AtomicU64::new(0),
            dropped_by: Mutex::new(HashMap::new()),
            dir,
            clock: clock.clone(),
        });
        let weak = Arc::downgrade(&log);
        let dir = log.dir.clone();
        std::thread::Builder::new()
            .name("relais-access-log".into())
            .spawn(move || writer(rx, dir, clock, grace, weak))?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lines are timed when the response ends, as nginx does: a line always belongs to the day
    /// that is open when it is written.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Queues a line; never blocks.
    pub fn log(&self, line: Line) {
        let key = (line.site.clone(), day_of(line.at));
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut m) = self.dropped_by.lock() {
                    *m.entry(key).or_default() += 1;
                }
            }
        }
    }

    fn take_dropped(&self, site: &Arc<str>, day: Day) -> u64 {
        self.dropped_by
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(site.clone(), day)))
            .unwrap_or(0)
    }

    fn note_dropped(&self, site: &Arc<str>, day: Day) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.dropped_by.lock() {
            *m.entry((site.clone(), day)).or_default() += 1;
        }
    }
}

fn open_file(dir: &Path, site: &str, day: Day, opts: SiteLog) -> io::Result<Open> {
    let (log, gz, _) = paths(dir, site, &date_string(day));
    if gz.exists() {
        // The day was closed and its manifest written: a late line cannot join it.
        return Err(io::Error::other("the day is already closed"));
    }
    if let Some(p) = log.parent() {
        fs::create_dir_all(p)?;
    }
    let f = OpenOptions::new().create(true).append(true).open(&log)?;
    let fresh = f.metadata()?.len() == 0;
    let mut w = BufWriter::with_capacity(64 * 1024, f);
    if fresh && opts.format == LogFormat::W3c {
        write!(
            w,
            "#Version: 1.0\n#Software: Relais\n#Date: {} 00:00:00\n#Fields: {W3C_FIELDS}\n",
            date_string(day)
        )?;
    }
    Ok(Open { w, opts })
}

/// Plain `.log` files of days before `today` (left by a crash or a stop before the day closed).
fn leftovers(dir: &Path, today: Day) -> Vec<(String, Day)> {
    let mut out = vec![];
    let Ok(sites) = fs::read_dir(dir) else {
        return out;
    };
    for s in sites.flatten() {
        let site = s.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(s.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some(date) = name
                .strip_prefix(&format!("{site}-"))
                .and_then(|r| r.strip_suffix(".log"))
            else {
                continue;
            };
            if let Some(day) = parse_date(date)
                && day < today
            {
                out.push((site.clone(), day));
            }
        }
    }
    out
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, inverse of [`civil`]).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` → days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<Day> {
    let valid = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !valid {
        return None;
    }
    let (y, m, d) = (
        s[0..4].parse().ok()?,
        s[5..7].parse().ok()?,
        s[8..10].parse().ok()?,
    );
    let day = days_from_civil(y, m, d);
    // Only real dates: 2026-02-30 or 2026-13-01 do not round-trip.
    (civil(day) == (y, m as u32, d as u32)).then_some(day)
}

/// Writes a file whole or not at all: a temporary file, synced, then renamed over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn writer(
    rx: Receiver<Line>,
    dir: PathBuf,
    clock: SharedClock,
    grace: Duration,
    log: std::sync::Weak<AccessLog>,
) {
    let mut open: HashMap<(Arc<str>, Day), Open> = HashMap::new();
    let mut buf = String::with_capacity(512);
    let mut stamp = Stamp::default();
    let mut last_formats: HashMap<Arc<str>, SiteLog> = HashMap::new();
    // Close what a previous run left open.
    let grace_days = |now: SystemTime| day_of(now.checked_sub(grace).unwrap_or(now));
    for (site, day) in leftovers(&dir, grace_days(clock.now())) {
        if let Err(e) = close_day(&dir, &site, day, SiteLog::default(), 0) {
            tracing::error!(site, error = %e, "cannot close a previous day's access log");
        }
    }
    loop {
        // Batches: the writer sleeps between drains instead of being woken for every line, so
        // requests never pay for a thread wake-up.
        std::thread::sleep(Duration::from_millis(50));
        let mut batch: Vec<Line> = Vec::new();
        let mut disconnected = false;
        while batch.len() < QUEUE {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let Some(owner) = log.upgrade() else { break };
        for l in batch {
            let day = day_of(l.at);
            let key = (l.site.clone(), day);
            last_formats.insert(l.site.clone(), l.opts);
            if !open.contains_key(&key) {
                match open_file(&dir, &l.site, day, l.opts) {
                    Ok(o) => {
                        open.insert(key.clone(), o);
                    }
                    Err(e) => {
                        tracing::error!(site = %l.site, error = %e, "cannot open access log");
                        owner.note_dropped(&l.site, day);
                        continue;
                    }
                }
            }
            let Some(o) = open.get_mut(&key) else {
                continue;
            };
            buf.clear();
            format_into(&mut buf, &l, &mut stamp);
            match o.w.write_all(buf.as_bytes()) {
                Ok(()) => {
                    owner.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(site = %l.site, error = %e, "access log write failed");
                    owner.note_dropped(&l.site, day);
                }
            }
        }
        for o in open.values_mut() {
            if let Err(e) = o.w.flush() {
                tracing::warn!(error = %e, "access log flush failed");
            }
        }
        // Close days that are over.
        let closable = grace_days(clock.now());
        let done: Vec<(Arc<str>, Day)> = open
            .keys()
            .filter(|(_, d)| *d < closable)
            .cloned()
            .collect();
        for key in done {
            if let Some(mut o) = open.remove(&key) {
                let _ = o.w.flush();
                drop(o.w);
                let dropped = owner.take_dropped(&key.0, key.1);
                match close_day(&dir, &key.0, key.1, o.opts, dropped) {
                    Ok(m) => {
                        owner.days_closed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(site = %m.site, date = %m.date, lines = m.lines, dropped = m.dropped, "access log day closed");
                    }
                    Err(e) => {
                        tracing::error!(site = %key.0, error = %e, "cannot close the access log day")
                    }
                }
            }
        }
        drop(owner);
        if disconnected {
            break;
        }
    }
    for (_, mut o) in open {
        let _ = o.w.flush();
    }
    let _ = last_formats;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat) -> Line {
        Line {
            site: "s".into(),
            opts: SiteLog {
                format,
                truncate_ip: false,
            },
            at: UNIX_EPOCH + Duration::from_secs(1_795_335_723),
            started: Instant::now(),
            ip: "192.0.2.7".parse().expect("ip"),
            method: Method::GET,
            target: http::Uri::from_static("/a%20b?x=%221%22"),
            version: Version::HTTP_11,
            status: 200,
            bytes: 512,
            referer: Some(http::HeaderValue::from_static("https://r.example/")),
            user_agent: Some(
                http::HeaderValue::from_bytes("curl/8 \"quoted\" é".as_bytes()).expect("ua"),
            ),
            micros: 1500,
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(date_string(20_779), "2026-11-22");
        assert_eq!(date_string(11_016), "2000-02-29");
        for d in [0, 59, 60, 11_016, 20_779, 40_000] {
            assert_eq!(parse_date(&date_string(d)), Some(d));
        }
    }

    #[test]
    fn combined_common_and_w3c_lines() {
        let c = format_line(&line(LogFormat::Combined));
        assert_eq!(
            c,
            "192.0.2.7 - - [22/Nov/2026:08:22:03 +0000] \"GET /a%20b?x=%221%22 HTTP/1.1\" 200 512 \"https://r.example/\" \"curl/8 \\x22quoted\\x22 \\xC3\\xA9\"\n"
        );
        let mut l = line(LogFormat::Common);
        l.bytes = 0;
        l.opts.truncate_ip = true;
        assert_eq!(
            format_line(&l),
            "192.0.2.0 - - [22/Nov/2026:08:22:03 +0000] \"GET /a%20b?x=%221%22 HTTP/1.1\" 200 -\n"
        );
        let w = format_line(&line(LogFormat::W3c));
        assert_eq!(
            w,
            "2026-11-22 08:22:03 192.0.2.7 GET /a%20b x=%221%22 200 512 0.002 curl/8+\\x22quoted\\x22+\\xC3\\xA9 https://r.example/\n"
        );
        let mut v6 = line(LogFormat::Common);
        v6.ip = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        v6.opts.truncate_ip = true;
        assert!(format_line(&v6).starts_with("2001:db8:1:: - -"));
    }

    #[test]
    fn the_cached_timestamp_never_leaks_between_formats_or_seconds() {
        let mut stamp = Stamp::default();
        let mut l = line(LogFormat::Combined);
        for (format, plus) in [
            (LogFormat::Combined, 0),
            (LogFormat::W3c, 0),
            (LogFormat::Common, 0),
            (LogFormat::Common, 1),
            (LogFormat::W3c, 86_400),
        ] {
            l.opts.format = format;
            l.at = UNIX_EPOCH + Duration::from_secs(1_795_335_723 + plus);
            let mut s = String::new();
            format_into(&mut s, &l, &mut stamp);
            assert_eq!(s, format_line(&l), "{format:?} +{plus}");
        }
    }

    #[test]
    fn a_closed_day_is_compressed_with_a_chained_manifest() {
        let dir = tempfile::tempdir().expect("tmp");
        let opts = SiteLog::default();
        for (day, n) in [(100, 3), (101, 2)] {
            let (log, _, _) = paths(dir.path(), "s", &date_string(day));
            fs::create_dir_all(log.parent().expect("parent")).expect("dir");
            fs::write(&log, "a\n".repeat(n)).expect("write");
        }
        let m1 = close_day(dir.path(), "s", 100, opts, 0).expect("close");
        assert_eq!(
            (m1.lines, m1.bytes, m1.complete, m1.previous.clone()),
            (3, 6, true, None)
        );
        let m2 = close_day(dir.path(), "s", 101, opts, 4).expect("close");
        assert_eq!((m2.lines, m2.dropped, m2.complete), (2, 4, false));
        let (_, gz1, man1) = paths(dir.path(), "s", &date_string(100));
        assert_eq!(m2.previous, Some(sha256_file(&man1).expect("hash")));
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&gz1).expect("gz"))
            .read_to_string(&mut text)
            .expect("gunzip");
        assert_eq!(text, "a\na\na\n");
        assert_eq!(m1.gz_sha256, sha256_file(&gz1).expect("hash"));
        assert!(!paths(dir.path(), "s", &date_string(100)).0.exists());
    }
}
