//! Access logs (CDN-12): one file per site per UTC day, NCSA Combined by default (Common or W3C
//! Extended per site), compressed when the day closes, with a manifest per file (lines, bytes,
//! SHA-256, chained to the previous day's manifest) so completeness can be proven.
//!
//! Invariants:
//! - Logging never blocks or slows a request: the request's thread formats its line into a
//!   buffer of its own (see [`crate::shard`]: no lock shared with other request threads, no
//!   allocation per line, no reference kept to the request's buffers), and one writer thread
//!   takes the buffers every 20 ms while requests come (50 ms when idle), merges the threads'
//!   lines back into completion order and gathers them per file by runs (all the lines of one
//!   thread between two lines of another, one site and day: one copy each, none per line); a
//!   file's lines are written in pieces of about 256 KiB, or once the oldest has waited 80 ms.
//!   A piece the disk refuses is counted as dropped, line for line.
//!   Lines are stamped with the kernel's tick clock ([`crate::clock::Clock::recent`]).
//!   When a buffer is full (disk full, writer behind) the line is dropped and counted, per site
//!   and day, and the manifest of that day says it is incomplete.
//! - A line is written when the response body is finished or abandoned, with the bytes actually
//!   sent. Lines reach the operating system within about 100 ms (the writer flushes after each
//!   batch), and at once on [`AccessLog::flush`] (the edge calls it when it stops).
//! - A day is closed once the clock is past its end plus a grace period (requests that started
//!   before midnight end after it); files of past days left by a crash are closed at start.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

use crate::clock::SharedClock;

/// Bytes of formatted lines a request thread's buffer holds before lines are dropped (and
/// counted): about 20 000 lines, 2 seconds of a busy thread with a stalled disk.
const PENDING_BYTES: usize = 4 << 20;

/// How often the writer takes the threads' lines while requests come. It was set to 20 ms
/// (from 5 ms) when each tick wrote what it took: a small `write` costs the kernel much more
/// per byte than a large one, and the writer thread spent 0.31–0.34 µs of CPU per 1 KiB hit at
/// 5 ms, 0.18–0.20 at 20 ms (per thread, from `/proc`). Since files gather their lines into
/// pieces of [`GATHER_BYTES`], the tick no longer sets the size of the writes, only how large
/// the threads' buffers grow (about 170 KB at 100 000 requests per second) and how often the
/// writer wakes. Compared since with edges interleaved (BENCHMARKS.md, 2026-12-06 session 21):
/// 2 ms was worse (its wake-ups cost more than warmer buffers save), 10 ms no different.
const TICK: Duration = Duration::from_millis(20);

/// The writer's tick when the last one found no line (an idle edge wakes it 20 times a second).
const IDLE_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// One request, as logged (what [`AccessLog::log`] and [`format_line`] take; the edge passes
/// an [`Entry`] to [`AccessLog::log_at`] instead).
#[derive(Debug, Clone)]
pub struct Line {
    pub opts: SiteLog,
    /// When the response ended.
    pub at: SystemTime,
    pub ip: IpAddr,
    pub request: RequestText,
    pub status: u16,
    pub bytes: u64,
    /// Time taken, for W3C lines (to the millisecond, from the kernel's tick clock).
    pub micros: u64,
}

impl Line {
    pub fn entry(&self) -> Entry<'_> {
        Entry {
            opts: self.opts,
            ip: self.ip,
            request: Req::Text(&self.request),
            status: self.status,
            bytes: self.bytes,
            micros: self.micros,
        }
    }
}

/// A line's fields, the request's side borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub opts: SiteLog,
    pub ip: IpAddr,
    pub request: Req<'a>,
    pub status: u16,
    pub bytes: u64,
    pub micros: u64,
}

/// The request's side of a line: kept while its response was sent, or the request itself.
#[derive(Debug, Clone, Copy)]
pub enum Req<'a> {
    /// Escaped before the request was handed on (its response ended later).
    Text(&'a RequestText),
    /// A request still at hand when its line is written (a fresh hit sent whole): its fields
    /// are escaped straight into the line, with no text kept on the way.
    Raw(RawRequest<'a>),
}

/// A request's fields, as a line shows them.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    pub method: &'a Method,
    /// Path and query, as [`target_of`] gives them.
    pub target: &'a [u8],
    pub version: Version,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// `GET /a?b`: the method (a token, checked by the parser: nothing to escape), a space and the
/// target, escaped.
fn push_request(t: &mut Vec<u8>, method: &Method, target: &[u8]) {
    t.extend_from_slice(method.as_str().as_bytes());
    t.push(b' ');
    escape(t, target);
}

/// ` "referer" "user agent"`, escaped, as a Combined line ends (an absent header is `-`, as
/// nginx writes it). Returns where the referer's value ends.
fn push_quoted(t: &mut Vec<u8>, referer: Option<&[u8]>, user_agent: Option<&[u8]>) -> usize {
    t.extend_from_slice(b" \"");
    match referer {
        Some(v) => escape(t, v),
        None => t.push(b'-'),
    }
    let referer_end = t.len();
    t.extend_from_slice(b"\" \"");
    match user_agent {
        Some(v) => escape(t, v),
        None => t.push(b'-'),
    }
    t.push(b'"');
    referer_end
}

/// The largest [`RequestText`] buffer kept from one request to the next.
const KEPT_TEXT: usize = 2048;

/// The request's side of a line, escaped once before the request is handed on: the method and
/// target, then the referer and user agent quoted as a Combined line has them, in one buffer, as
/// `GET /a?b "https://r.example/" "curl/8"`. The edge keeps one in each pooled recording slot
/// and refills it from request to request, so recording a request clones none of its parts
/// (each a reference count taken and released) and moves no more than a few words.
#[derive(Debug, Clone)]
pub struct RequestText {
    text: Vec<u8>,
    /// The ends of the method, of the target, and of the referer's value.
    method_end: u32,
    target_end: u32,
    referer_end: u32,
    version: Version,
}

impl Default for RequestText {
    fn default() -> Self {
        RequestText {
            text: Vec::new(),
            method_end: 0,
            target_end: 0,
            referer_end: 0,
            version: Version::HTTP_11,
        }
    }
}

impl RequestText {
    pub fn new(
        method: &Method,
        target: &[u8],
        version: Version,
        referer: Option<&[u8]>,
        user_agent: Option<&[u8]>,
    ) -> RequestText {
        let mut r = RequestText::default();
        r.set(RawRequest {
            method,
            target,
            version,
            referer,
            user_agent,
        });
        r
    }

    /// Replaces the text with another request's (the buffer is kept).
    pub fn set(&mut self, r: RawRequest<'_>) {
        let t = &mut self.text;
        t.clear();
        push_request(t, r.method, r.target);
        self.method_end = r.method.as_str().len() as u32;
        self.target_end = t.len() as u32;
        self.referer_end = push_quoted(t, r.referer, r.user_agent) as u32;
        self.version = r.version;
    }

    /// Lets a buffer a long request grew go (pooled slots keep theirs otherwise: 256 of them
    /// per thread).
    pub fn trim(&mut self) {
        if self.text.capacity() > KEPT_TEXT {
            self.text = Vec::new();
        }
    }

    fn method(&self) -> &[u8] {
        &self.text[..self.method_end as usize]
    }

    /// `GET /a?b`, escaped.
    fn request(&self) -> &[u8] {
        &self.text[..self.target_end as usize]
    }

    fn target(&self) -> &[u8] {
        &self.text[self.method_end as usize + 1..self.target_end as usize]
    }

    /// ` "referer" "user agent"`, escaped: the end of a Combined line.
    fn combined_tail(&self) -> &[u8] {
        &self.text[self.target_end as usize..]
    }

    /// The referer's value, escaped (`-` if there was none).
    fn referer(&self) -> &[u8] {
        &self.text[self.target_end as usize + 2..self.referer_end as usize]
    }

    /// The user agent's value, escaped (`-` if there was none).
    fn user_agent(&self) -> &[u8] {
        &self.text[self.referer_end as usize + 3..self.text.len() - 1]
    }
}

/// What a line says for a request target: its path and query (`/` for a target without one,
/// such as `CONNECT`'s authority form).
pub fn target_of(u: &http::Uri) -> &str {
    u.path_and_query().map_or("/", |p| p.as_str())
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

/// Bytes written as they are: printable ASCII but `"` and `\`.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0x20;
    while c < 0x7f {
        t[c] = c != b'"' as usize && c != b'\\' as usize;
        c += 1;
    }
    t
};

/// Whether every byte of `b` is [`PLAIN`], eight bytes at a time: a byte is not plain when it
/// is below 0x20, at or above 0x7f, `"` or `\` (the classic "has a byte less than / equal to"
/// word tests, exact for the question "is there any").
fn all_plain(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let not_plain = |w: u64| {
        (w.wrapping_sub(0x20 * ONES) & !w & HIGH)
            | (w & HIGH)
            | has_zero(w ^ (0x7f * ONES))
            | has_zero(w ^ (u64::from(b'"') * ONES))
            | has_zero(w ^ (u64::from(b'\\') * ONES))
    };
    let word = |w: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        u64::from_le_bytes(a)
    };
    if b.len() < 8 {
        return b.iter().all(|&c| PLAIN[c as usize]);
    }
    let mut words = b.chunks_exact(8);
    let mut bad = 0;
    for w in &mut words {
        bad |= not_plain(word(w));
    }
    // The last eight bytes, overlapping the words already seen (no copy of a short tail).
    bad |= not_plain(word(&b[b.len() - 8..]));
    bad == 0
}

/// Escapes a field the way nginx does (`"`, `\`, controls and non-ASCII as `\xHH`), so that a
/// line is always printable ASCII whatever the request carried.
fn escape(out: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Most fields are plain ASCII and are copied whole.
    if all_plain(b) {
        out.extend_from_slice(b);
        return;
    }
    for &c in b {
        if PLAIN[c as usize] {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
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

/// The end of an NCSA request field: ` HTTP/1.1" ` (one size for every version, so it is copied
/// without a call to `memcpy`).
fn version_tail(v: Version) -> &'static [u8; 11] {
    match v {
        Version::HTTP_09 => b" HTTP/0.9\" ",
        Version::HTTP_10 => b" HTTP/1.0\" ",
        Version::HTTP_2 => b" HTTP/2.0\" ",
        Version::HTTP_3 => b" HTTP/3.0\" ",
        _ => b" HTTP/1.1\" ",
    }
}

pub const W3C_FIELDS: &str = "date time c-ip cs-method cs-uri-stem cs-uri-query sc-status sc-bytes time-taken cs(User-Agent) cs(Referer)";

/// Formats one line (with its newline).
pub fn format_line(l: &Line) -> String {
    let mut s = Vec::with_capacity(200);
    format_into(&mut s, l, &mut Stamp::default());
    // Lines are ASCII by construction (every field is escaped).
    String::from_utf8_lossy(&s).into_owned()
}

/// The last formatted timestamps, reused while the second does not change (a busy thread
/// formats thousands of lines per second).
pub struct Stamp {
    /// ` - - [22/Nov/2026:08:22:03 +0000] "`: what follows the address in an NCSA line, one
    /// size whatever the second (years are written with four digits), so it is copied without a
    /// call to `memcpy`.
    ncsa: [u8; 35],
    ncsa_secs: u64,
    w3c: String,
    w3c_secs: u64,
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp {
            ncsa: [0; 35],
            ncsa_secs: u64::MAX,
            w3c: String::new(),
            w3c_secs: u64::MAX,
        }
    }
}

impl Stamp {
    /// ` - - [date] "` for second `secs` (since the epoch).
    fn ncsa(&mut self, secs: u64) -> &[u8; 35] {
        if secs != self.ncsa_secs {
            let s = secs % 86_400;
            let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
            let (y, mo, d) = civil((secs / 86_400) as Day);
            // Four digits (a clock past the year 9999 is wrong anyway).
            let y = y.clamp(0, 9999);
            let text = format!(
                " - - [{d:02}/{}/{y:04}:{h:02}:{m:02}:{sec:02} +0000] \"",
                MONTHS[(mo - 1) as usize]
            );
            self.ncsa.copy_from_slice(text.as_bytes());
            self.ncsa_secs = secs;
        }
        &self.ncsa
    }

    /// `2026-11-22 08:22:03` for second `secs`.
    fn w3c(&mut self, secs: u64) -> &[u8] {
        if secs != self.w3c_secs {
            let s = secs % 86_400;
            let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
            self.w3c = format!(
                "{} {h:02}:{m:02}:{sec:02}",
                date_string((secs / 86_400) as Day)
            );
            self.w3c_secs = secs;
        }
        self.w3c.as_bytes()
    }
}

/// Appends a number in decimal (without the formatting machinery: this runs for every line).
fn push_u64(s: &mut Vec<u8>, n: u64) {
    s.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A status code and the space after it: three digits (the parser and the edge only make 100
/// to 999).
fn push_status(s: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        let d = |n: u16| b'0' + (n % 10) as u8;
        s.extend_from_slice(&[d(status / 100), d(status / 10), d(status), b' ']);
    } else {
        push_u64(s, u64::from(status));
        s.push(b' ');
    }
}

/// `0.` to `255.`, padded to four bytes, and their length.
static OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut o = 0;
    while o < 256 {
        let (a, b, c) = ((o / 100) as u8, (o / 10 % 10) as u8, (o % 10) as u8);
        t[o] = if o >= 100 {
            ([b'0' + a, b'0' + b, b'0' + c, b'.'], 4)
        } else if o >= 10 {
            ([b'0' + b, b'0' + c, b'.', 0], 3)
        } else {
            ([b'0' + c, b'.', 0, 0], 2)
        };
        o += 1;
    }
    t
};

fn push_ip(s: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Each octet's digits and a dot from a table, into a stack buffer, then one copy.
            let mut buf = [0u8; 16];
            let mut n = 0;
            for o in v4.octets() {
                let (digits, len) = OCTETS[o as usize];
                buf[n..n + 4].copy_from_slice(&digits);
                n += len as usize;
            }
            // Sixteen bytes copied (no call to `memcpy`), the padding cut off.
            s.extend_from_slice(&buf);
            s.truncate(s.len() - 16 + n - 1);
        }
        IpAddr::V6(v6) => {
            let _ = write!(s, "{v6}");
        }
    }
}

/// Appends one line (with its newline) to `s`; every field is escaped, so the line is ASCII.
pub fn format_into(s: &mut Vec<u8>, l: &Line, stamp: &mut Stamp) {
    let secs =
        l.at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
    format_at(s, &l.entry(), secs, stamp, &mut RequestText::default());
}

/// [`format_into`] with the line's time already in seconds since the epoch (`scratch` holds a
/// raw request's escaped fields for a W3C line).
fn format_at(s: &mut Vec<u8>, l: &Entry, secs: u64, stamp: &mut Stamp, scratch: &mut RequestText) {
    let ip = if l.opts.truncate_ip {
        truncate(l.ip)
    } else {
        l.ip
    };
    match l.opts.format {
        LogFormat::Combined | LogFormat::Common => {
            push_ip(s, ip);
            s.extend_from_slice(stamp.ncsa(secs));
            match l.request {
                Req::Text(t) => {
                    s.extend_from_slice(t.request());
                    s.extend_from_slice(version_tail(t.version));
                }
                Req::Raw(r) => {
                    push_request(s, r.method, r.target);
                    s.extend_from_slice(version_tail(r.version));
                }
            }
            push_status(s, l.status);
            if l.bytes == 0 {
                s.push(b'-');
            } else {
                push_u64(s, l.bytes);
            }
            if l.opts.format == LogFormat::Combined {
                match l.request {
                    Req::Text(t) => s.extend_from_slice(t.combined_tail()),
                    Req::Raw(r) => {
                        push_quoted(s, r.referer, r.user_agent);
                    }
                }
            }
        }
        LogFormat::W3c => {
            let r = match l.request {
                Req::Text(t) => t,
                Req::Raw(r) => {
                    scratch.set(r);
                    &*scratch
                }
            };
            // W3C fields are separated by spaces: a space inside a field becomes `+` (the
            // fields are already escaped).
            let w = |s: &mut Vec<u8>, v: Option<&[u8]>| match v {
                Some(v) if !v.is_empty() => {
                    s.extend(v.iter().map(|&c| if c == b' ' { b'+' } else { c }));
                }
                _ => s.push(b'-'),
            };
            s.extend_from_slice(stamp.w3c(secs));
            let _ = write!(s, " {ip} ");
            w(s, Some(r.method()));
            s.push(b' ');
            let target = r.target();
            let (stem, query) = match target.iter().position(|&c| c == b'?') {
                Some(q) => (&target[..q], Some(&target[q + 1..])),
                None => (target, None),
            };
            w(s, Some(stem));
            s.push(b' ');
            w(s, query);
            let _ = write!(s, " {} {} {:.3} ", l.status, l.bytes, l.micros as f64 / 1e6);
            w(s, Some(r.user_agent()));
            s.push(b' ');
            w(s, Some(r.referer()));
        }
    }
    s.push(b'\n');
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
    f: File,
    /// Lines gathered for one larger write (a busy file is written in pieces of about
    /// [`GATHER_BYTES`]: the kernel's work per `write` call is much more than its bytes).
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    /// When `buf` took its first line ([`crate::clock::coarse_millis`]).
    since_ms: u64,
    opts: SiteLog,
}

/// A file's gathered lines are written once they reach this size...
const GATHER_BYTES: usize = 256 * 1024;
/// ...or once the oldest has waited this long (with the tick, lines reach the operating system
/// within about 100 ms).
const GATHER_MS: u64 = 80;

/// One formatted line waiting in a thread's buffer: 16 bytes, written for every request (the
/// day is the completion time's, the log options are the site entry's).
struct Waiting {
    /// Completion time in microseconds, to merge the threads' lines in order.
    at_us: u64,
    /// End of the line in `Pending::text` (it starts where the previous one ends; the text is
    /// bounded by [`PENDING_BYTES`]).
    end: u32,
    /// Index in `Pending::sites`.
    site: u32,
}

const DAY_US: u64 = 86_400_000_000;

impl Waiting {
    fn day(&self) -> Day {
        (self.at_us / DAY_US) as Day
    }
}

/// Bytes ahead of a thread's last line that [`prefetch_next`] asks for: a line with a browser's
/// user agent and a referrer is 250 to 350 bytes.
const PREFETCH_BYTES: usize = 384;

/// Asks the processor for the memory the thread's next line will be written to, while the next
/// request is handled. That memory was last touched a tick ago (the buffers are swapped with the
/// writer's) and has usually left the cache: `log_at` took 0.18–0.19 µs per request in perf,
/// four fifths of it in the shard lock's release waiting for the line's cache-missing stores;
/// with the memory fetched ahead it takes 0.05.
fn prefetch_next(p: &mut Pending) {
    let spare = p.text.spare_capacity_mut();
    for byte in spare.iter().take(PREFETCH_BYTES).step_by(64) {
        mem_prefetch::prefetch_write_data::<_, 3>(byte);
    }
    if let Some(slot) = p.lines.spare_capacity_mut().first() {
        mem_prefetch::prefetch_write_data::<_, 3>(slot);
    }
}

/// A request thread's formatted lines.
#[derive(Default)]
struct Pending {
    text: Vec<u8>,
    lines: Vec<Waiting>,
    /// The sites of these lines with their log options (each request's own `Arc`, compared by
    /// address: cloned once per site and batch rather than once per line).
    sites: Vec<(Arc<str>, SiteLog)>,
    site_index: HashMap<(usize, SiteLog), u32>,
    stamp: Stamp,
    /// A raw request's fields escaped, for W3C lines.
    scratch: RequestText,
}

impl Pending {
    fn site(&mut self, site: &Arc<str>, opts: SiteLog) -> u32 {
        if let Some((last, o)) = self.sites.last()
            && Arc::ptr_eq(last, site)
            && *o == opts
        {
            return (self.sites.len() - 1) as u32;
        }
        let key = (Arc::as_ptr(site) as *const u8 as usize, opts);
        if let Some(&i) = self.site_index.get(&key) {
            return i;
        }
        self.sites.push((site.clone(), opts));
        let i = (self.sites.len() - 1) as u32;
        self.site_index.insert(key, i);
        i
    }

    fn clear(&mut self) {
        self.scratch.trim();
        self.text.clear();
        self.lines.clear();
        self.sites.clear();
        self.site_index.clear();
    }
}

/// The writer's side: open files, and the buffers swapped with the threads' each batch.
#[derive(Default)]
struct Files {
    open: HashMap<(Arc<str>, Day), Open>,
    spare: Vec<Pending>,
    /// Scratch for [`plan`]: lines to sort, when a shard's are out of order.
    order: Vec<(u64, u32, u32)>,
    /// Runs of lines to write: shard, first line, end.
    runs: Vec<(u32, u32, u32)>,
}

/// Puts the shards' lines in completion order as runs `(shard, first, end)` of lines that are
/// contiguous in one shard's text and belong to one site and day, so that each run is written
/// with one copy. Each thread's lines are already in order (it stamps them as it formats them),
/// so the shards are merged, without sorting, and a run usually holds all the lines of one
/// thread between two lines of another; only a shard that two threads shared (more threads than
/// shards) may be out of order, and then the lines are sorted.
fn plan(spare: &[Pending], order: &mut Vec<(u64, u32, u32)>, runs: &mut Vec<(u32, u32, u32)>) {
    runs.clear();
    let same = |p: &Pending, a: usize, b: usize| {
        let (a, b) = (&p.lines[a], &p.lines[b]);
        a.site == b.site && a.day() == b.day()
    };
    let in_order = spare
        .iter()
        .all(|p| p.lines.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    if !in_order {
        order.clear();
        for (shard, p) in spare.iter().enumerate() {
            for (i, l) in p.lines.iter().enumerate() {
                order.push((l.at_us, shard as u32, i as u32));
            }
        }
        order.sort_unstable();
        for &(_, shard, i) in order.iter() {
            match runs.last_mut() {
                Some((s, _, end))
                    if *s == shard
                        && *end == i
                        && same(&spare[shard as usize], i as usize - 1, i as usize) =>
                {
                    *end += 1
                }
                _ => runs.push((shard, i, i + 1)),
            }
        }
        return;
    }
    // A k-way merge: the shard whose next line is the oldest gives lines until one of another
    // shard is older, or the site or day changes (ties go to the lower shard, as a sort would).
    let mut next = vec![0usize; spare.len()];
    loop {
        // The oldest next line, by (time, shard), and the next oldest of the other shards.
        let (mut best, mut bound) = (None, (u64::MAX, usize::MAX));
        for (s, p) in spare.iter().enumerate() {
            let Some(l) = p.lines.get(next[s]) else {
                continue;
            };
            match best {
                Some(b) if (l.at_us, s) >= b => bound = bound.min((l.at_us, s)),
                _ => {
                    if let Some(b) = best {
                        bound = bound.min(b);
                    }
                    best = Some((l.at_us, s));
                }
            }
        }
        let Some((_, best)) = best else {
            return;
        };
        let p = &spare[best];
        let first = next[best];
        let mut end = first + 1;
        while end < p.lines.len() && (p.lines[end].at_us, best) < bound && same(p, first, end) {
            end += 1;
        }
        runs.push((best as u32, first as u32, end as u32));
        next[best] = end;
    }
}

/// The access log of an edge.
pub struct AccessLog {
    pending: crate::shard::Sharded<Pending>,
    files: Mutex<Files>,
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub days_closed: AtomicU64,
    dropped_by: Mutex<HashMap<(Arc<str>, Day), u64>>,
    dir: PathBuf,
    clock: SharedClock,
    grace: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AccessLog {
    /// Starts the writer thread. `grace` is how long after midnight (UTC) a day stays open.
    pub fn start(dir: PathBuf, clock: SharedClock, grace: Duration) -> io::Result<Arc<AccessLog>> {
        let log = Self::without_writer(dir, clock, grace)?;
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("relais-access-log".into())
            .spawn(move || writer(weak))?;
        Ok(log)
    }

    /// A log whose lines are written only by [`AccessLog::flush`] (and when it is dropped).
    fn without_writer(
        dir: PathBuf,
        clock: SharedClock,
        grace: Duration,
    ) -> io::Result<Arc<AccessLog>> {
        fs::create_dir_all(&dir)?;
        // Close what a previous run left open.
        for (site, day) in leftovers(&dir, grace_day(clock.now(), grace)) {
            if let Err(e) = close_day(&dir, &site, day, SiteLog::default(), 0) {
                tracing::error!(site, error = %e, "cannot close a previous day's access log");
            }
        }
        Ok(Arc::new(AccessLog {
            pending: Default::default(),
            files: Default::default(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            days_closed: AtomicU64::new(0),
            dropped_by: Mutex::new(HashMap::new()),
            dir,
            clock,
            grace,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lines are timed when the response ends, as nginx does: a line always belongs to the day
    /// that is open when it is written.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Formats a line into the calling thread's buffer; never blocks on the disk.
    pub fn log(&self, site: &Arc<str>, line: &Line) {
        let at_us = line
            .at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        self.log_at(site, &line.entry(), at_us);
    }

    /// [`AccessLog::log`] with the line's time already in microseconds since the epoch.
    pub fn log_at(&self, site: &Arc<str>, line: &Entry, at_us: u64) {
        let day = (at_us / DAY_US) as Day;
        let mut guard = self.pending.mine();
        let p = &mut *guard;
        if p.text.len() >= PENDING_BYTES {
            drop(guard);
            self.note_dropped(site, day, 1);
            return;
        }
        let site = p.site(site, line.opts);
        format_at(
            &mut p.text,
            line,
            at_us / 1_000_000,
            &mut p.stamp,
            &mut p.scratch,
        );
        p.lines.push(Waiting {
            at_us,
            end: p.text.len() as u32,
            site,
        });
        prefetch_next(p);
    }

    /// Writes every line formatted so far to the files; returns how many lines it took.
    pub fn flush(&self) -> usize {
        self.write_batch(true)
    }

    /// Takes the threads' lines; writes a file's lines once enough are gathered or the oldest
    /// has waited long enough, or every file's when `all`. Returns how many lines it took.
    fn write_batch(&self, all: bool) -> usize {
        let now_ms = crate::clock::coarse_millis();
        let mut files = lock(&self.files);
        let files = &mut *files;
        let shards = crate::shard::count();
        files.spare.resize_with(shards, Pending::default);
        let mut i = 0;
        self.pending.each(|p| {
            std::mem::swap(p, &mut files.spare[i]);
            i += 1;
        });
        plan(&files.spare, &mut files.order, &mut files.runs);
        let taken = files.spare.iter().map(|p| p.lines.len()).sum();
        for &(shard, first, end) in &files.runs {
            let p = &files.spare[shard as usize];
            let (first, end) = (first as usize, end as usize);
            let last = &p.lines[end - 1];
            let ((site, opts), day) = (&p.sites[last.site as usize], last.day());
            let n = (end - first) as u64;
            let o = match files.open.entry((site.clone(), day)) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match open_file(&self.dir, site, day, *opts) {
                        Ok(o) => v.insert(o),
                        Err(e) => {
                            tracing::error!(site = %site, error = %e, "cannot open access log");
                            self.note_dropped(site, day, n);
                            continue;
                        }
                    }
                }
            };
            // A day's format is the one of its last line (a site's format changes with its
            // configuration).
            o.opts = *opts;
            let from = if first == 0 {
                0
            } else {
                p.lines[first - 1].end as usize
            };
            if o.lines == 0 {
                o.since_ms = now_ms;
            }
            o.buf.extend_from_slice(&p.text[from..last.end as usize]);
            o.lines += n;
        }
        for p in &mut files.spare {
            p.clear();
        }
        for ((site, day), o) in files.open.iter_mut() {
            if o.lines == 0 {
                // A file that took no line since its last write gives its memory back. A busy
                // one keeps its buffer: a buffer allocated again is fresh memory, and under
                // load its page faults (a huge page zeroed at a time) were a fifth of the
                // writer's CPU.
                if o.buf.capacity() > 64 * 1024 {
                    o.buf = Vec::new();
                }
            } else if all
                || o.buf.len() >= GATHER_BYTES
                || now_ms.saturating_sub(o.since_ms) >= GATHER_MS
            {
                self.write_out(site, *day, o);
            }
        }
        taken
    }

    /// Writes a file's gathered lines; if the write fails they are counted as dropped.
    fn write_out(&self, site: &Arc<str>, day: Day, o: &mut Open) {
        match o.f.write_all(&o.buf) {
            Ok(()) => {
                self.written.fetch_add(o.lines, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(site = %site, error = %e, "access log write failed");
                self.note_dropped(site, day, o.lines);
            }
        }
        o.buf.clear();
        o.lines = 0;
    }

    /// Closes the days that are over (past midnight plus the grace period).
    fn close_days(&self) {
        let mut files = lock(&self.files);
        let closable = grace_day(self.clock.now(), self.grace);
        let done: Vec<(Arc<str>, Day)> = files
            .open
            .keys()
            .filter(|(_, d)| *d < closable)
            .cloned()
            .collect();
        for key in done {
            let Some(mut o) = files.open.remove(&key) else {
                continue;
            };
            self.write_out(&key.0, key.1, &mut o);
            drop(o.f);
            let dropped = self.take_dropped(&key.0, key.1);
            match close_day(&self.dir, &key.0, key.1, o.opts, dropped) {
                Ok(m) => {
                    self.days_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(site = %m.site, date = %m.date, lines = m.lines, dropped = m.dropped, "access log day closed");
                }
                Err(e) => {
                    tracing::error!(site = %key.0, error = %e, "cannot close the access log day")
                }
            }
        }
    }

    fn take_dropped(&self, site: &Arc<str>, day: Day) -> u64 {
        lock(&self.dropped_by)
            .remove(&(site.clone(), day))
            .unwrap_or(0)
    }

    fn note_dropped(&self, site: &Arc<str>, day: Day, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        *lock(&self.dropped_by)
            .entry((site.clone(), day))
            .or_default() += lines;
    }
}

impl Drop for AccessLog {
    /// The last lines reach the files even when the edge stops without calling `flush`.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The last day still open at `now`: days before it are closed.
fn grace_day(now: SystemTime, grace: Duration) -> Day {
    day_of(now.checked_sub(grace).unwrap_or(now))
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
    let mut f = OpenOptions::new().create(true).append(true).open(&log)?;
    let fresh = f.metadata()?.len() == 0;
    if fresh && opts.format == LogFormat::W3c {
        write!(
            f,
            "#Version: 1.0\n#Software: Relais\n#Date: {} 00:00:00\n#Fields: {W3C_FIELDS}\n",
            date_string(day)
        )?;
    }
    Ok(Open {
        f,
        buf: Vec::new(),
        lines: 0,
        since_ms: 0,
        opts,
    })
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

/// The writer thread: every tick, writes the lines formatted since the last one and closes the
/// days that are over; stops when the log is dropped (whose `Drop` writes the last lines).
fn writer(log: std::sync::Weak<AccessLog>) {
    let mut busy = false;
    loop {
        // The writer sleeps between batches instead of being woken for every line, so requests
        // never pay for a thread wake-up.
        std::thread::sleep(if busy { TICK } else { IDLE_TICK });
        let Some(owner) = log.upgrade() else { break };
        busy = owner.write_batch(false) > 0;
        owner.close_days();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat) -> Line {
        Line {
            opts: SiteLog {
                format,
                truncate_ip: false,
            },
            at: UNIX_EPOCH + Duration::from_secs(1_795_335_723),
            ip: "192.0.2.7".parse().expect("ip"),
            request: RequestText::new(
                &Method::GET,
                b"/a%20b?x=%221%22",
                Version::HTTP_11,
                Some(b"https://r.example/"),
                Some("curl/8 \"quoted\" é".as_bytes()),
            ),
            status: 200,
            bytes: 512,
            micros: 1500,
        }
    }

    #[test]
    fn the_word_test_agrees_with_the_table_for_every_byte_at_every_place() {
        assert!(all_plain(b""));
        for len in 1..=19 {
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut b = vec![b'x'; len];
                    b[at] = c;
                    assert_eq!(
                        all_plain(&b),
                        PLAIN[c as usize],
                        "byte {c:#x} at {at} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_logged_target_is_the_path_and_query_of_any_request_form() {
        let of = |u: &str| target_of(&u.parse().expect("uri")).to_owned();
        assert_eq!(of("/a/b?c=d"), "/a/b?c=d");
        // Absolute form (sent to proxies): the scheme and host are not part of the target.
        assert_eq!(of("http://www.example.gouv.fr/x?y"), "/x?y");
        // Authority form (`CONNECT`) has no path.
        assert_eq!(of("www.example.gouv.fr:443"), "/");
    }

    #[test]
    fn statuses_are_written_in_full() {
        for (status, text) in [
            (200, "200 "),
            (404, "404 "),
            (999, "999 "),
            (42, "42 "),
            (1000, "1000 "),
        ] {
            let mut s = vec![];
            push_status(&mut s, status);
            assert_eq!(s, text.as_bytes());
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
        let request = |method: Method, version, referer: Option<&[u8]>, ua: Option<&[u8]>| {
            RequestText::new(&method, b"/a%20b?x=%221%22", version, referer, ua)
        };
        // Bytes that are not UTF-8 are escaped one by one, like any other non-ASCII byte.
        let mut raw = line(LogFormat::Combined);
        raw.request = request(Method::GET, Version::HTTP_11, None, Some(b"a\xffb"));
        assert!(format_line(&raw).ends_with("200 512 \"-\" \"a\\xFFb\"\n"));
        // Absent headers are `-` in every format; an empty one is empty where it is quoted.
        raw.request = request(Method::GET, Version::HTTP_11, None, None);
        assert!(format_line(&raw).ends_with("200 512 \"-\" \"-\"\n"));
        raw.request = request(Method::GET, Version::HTTP_11, Some(b""), Some(b" "));
        assert!(format_line(&raw).ends_with("200 512 \"\" \" \"\n"));
        raw.opts.format = LogFormat::W3c;
        assert!(format_line(&raw).ends_with(" 200 512 0.002 + -\n"));
        raw.request = request(Method::GET, Version::HTTP_11, None, None);
        assert!(format_line(&raw).ends_with(" 200 512 0.002 - -\n"));
        raw.opts.format = LogFormat::Combined;
        // Long fields take the other check.
        raw.request = request(
            Method::GET,
            Version::HTTP_11,
            Some(b"https://r.example/"),
            Some(b"Mozilla/5.0 (X11; Linux x86_64) \"Gecko\" \\ 1"),
        );
        assert!(
            format_line(&raw)
                .ends_with("\"Mozilla/5.0 (X11; Linux x86_64) \\x22Gecko\\x22 \\x5C 1\"\n")
        );
        let mut v6 = line(LogFormat::Common);
        v6.ip = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        v6.opts.truncate_ip = true;
        assert!(format_line(&v6).starts_with("2001:db8:1:: - -"));
        for ip in ["10.100.0.255", "1.2.3.4", "255.255.255.255", "0.0.0.0"] {
            let mut v4 = line(LogFormat::Common);
            v4.ip = ip.parse().expect("ip");
            assert!(format_line(&v4).starts_with(&format!("{ip} - - [22/Nov/2026:")));
        }
        let mut post = line(LogFormat::Common);
        post.request = request(Method::POST, Version::HTTP_10, None, None);
        assert!(format_line(&post).contains("] \"POST /a%20b?x=%221%22 HTTP/1.0\" 200 "));
    }

    /// A fresh hit's line is written from the request itself, any other from the text kept
    /// before the request was handed on: both must read the same, byte for byte.
    #[test]
    fn a_request_logged_in_place_or_kept_gives_the_same_line() {
        type Fields<'a> = (
            Method,
            &'a [u8],
            Version,
            Option<&'a [u8]>,
            Option<&'a [u8]>,
        );
        let fields: [Fields; 5] = [
            (Method::GET, b"/", Version::HTTP_11, None, None),
            (
                Method::HEAD,
                b"/a%20b?x=%221%22&y=\"z\"",
                Version::HTTP_10,
                Some(b"https://r.example/a b"),
                Some("curl/8 \"quoted\" \u{e9}\\".as_bytes()),
            ),
            (
                Method::GET,
                b"/\x01\xff",
                Version::HTTP_2,
                Some(b""),
                Some(b" "),
            ),
            (
                Method::GET,
                b"/a-long-path/with/several/segments?and=a&query=string",
                Version::HTTP_11,
                Some(b"https://www.gouv.fr/"),
                Some(b"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"),
            ),
            (Method::POST, b"/form", Version::HTTP_3, Some(b"-"), None),
        ];
        for (method, target, version, referer, user_agent) in fields {
            let kept = RequestText::new(&method, target, version, referer, user_agent);
            let raw = RawRequest {
                method: &method,
                target,
                version,
                referer,
                user_agent,
            };
            for format in [LogFormat::Combined, LogFormat::Common, LogFormat::W3c] {
                for truncate_ip in [false, true] {
                    let entry = |request| Entry {
                        opts: SiteLog {
                            format,
                            truncate_ip,
                        },
                        ip: "2001:db8::7".parse().expect("ip"),
                        request,
                        status: 304,
                        bytes: 0,
                        micros: 1500,
                    };
                    let (mut a, mut b) = (vec![], vec![]);
                    let mut scratch = RequestText::default();
                    format_at(
                        &mut a,
                        &entry(Req::Text(&kept)),
                        1_795_335_723,
                        &mut Stamp::default(),
                        &mut scratch,
                    );
                    format_at(
                        &mut b,
                        &entry(Req::Raw(raw)),
                        1_795_335_723,
                        &mut Stamp::default(),
                        &mut scratch,
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&a),
                        String::from_utf8_lossy(&b),
                        "{format:?}"
                    );
                    assert!(a.len() > 40 && a.ends_with(b"\n"));
                }
            }
        }
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
            let mut s = Vec::new();
            format_into(&mut s, &l, &mut stamp);
            assert_eq!(
                String::from_utf8(s).expect("ascii"),
                format_line(&l),
                "{format:?} +{plus}"
            );
        }
    }

    #[test]
    fn lines_from_many_threads_are_written_in_completion_order_and_none_is_lost_on_drop() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let log = AccessLog::without_writer(dir.path().into(), clock, Duration::ZERO).expect("log");
        let site: Arc<str> = "s".into();
        let base = 1_795_335_723u64;
        let threads = 4u64;
        let per = 50u64;
        // Thread t logs seconds t, t+4, t+8, ...: only a merge gives one ordered file.
        let run = |round: u64| {
            std::thread::scope(|sc| {
                for t in 0..threads {
                    let (log, site) = (&log, &site);
                    sc.spawn(move || {
                        for i in 0..per {
                            let mut l = line(LogFormat::Common);
                            l.at = UNIX_EPOCH
                                + Duration::from_secs(base + round * 1000 + t + threads * i);
                            l.status = 200 + (t as u16);
                            log.log(site, &l);
                        }
                    });
                }
            });
        };
        run(0);
        log.flush();
        assert_eq!(log.written.load(Ordering::Relaxed), threads * per);
        run(1);
        // Not flushed: dropping the log writes these lines too.
        let log = Arc::into_inner(log).expect("only owner");
        drop(log);
        let (file, _, _) = paths(
            dir.path(),
            "s",
            &date_string(day_of(UNIX_EPOCH + Duration::from_secs(base))),
        );
        let text = fs::read_to_string(file).expect("log file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, 2 * threads * per);
        let expected: Vec<String> = (0..2u64)
            .flat_map(|round| (0..threads * per).map(move |k| (round, k)))
            .map(|(round, k)| {
                let mut l = line(LogFormat::Common);
                l.at = UNIX_EPOCH + Duration::from_secs(base + round * 1000 + k);
                l.status = 200 + (k % threads) as u16;
                format_line(&l).trim_end().to_owned()
            })
            .collect();
        assert_eq!(lines, expected);
    }

    /// A shard whose lines are `(time in the day, site, day)`; each line's text names its shard
    /// and index.
    fn shard_of(n: usize, lines: &[(u64, &str, Day)]) -> Pending {
        let mut p = Pending::default();
        for (i, &(t, site, day)) in lines.iter().enumerate() {
            let at_us = day as u64 * DAY_US + t;
            let site: Arc<str> = site.into();
            // Sites are compared by index, the index by the `Arc`'s address: reuse the first.
            let site = p
                .sites
                .iter()
                .find(|(s, _)| s.as_ref() == site.as_ref())
                .map(|(s, _)| s.clone())
                .unwrap_or(site);
            let site = p.site(&site, SiteLog::default());
            p.text.extend_from_slice(format!("{n}.{i}\n").as_bytes());
            p.lines.push(Waiting {
                at_us,
                end: p.text.len() as u32,
                site,
            });
        }
        p
    }

    /// The text of each run, in the planned order.
    fn planned(spare: &[Pending]) -> Vec<String> {
        let (mut order, mut runs) = (vec![], vec![]);
        plan(spare, &mut order, &mut runs);
        runs.iter()
            .map(|&(s, first, end)| {
                let p = &spare[s as usize];
                let from = if first == 0 {
                    0
                } else {
                    p.lines[first as usize - 1].end as usize
                };
                String::from_utf8_lossy(&p.text[from..p.lines[end as usize - 1].end as usize])
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn shards_are_merged_into_runs_in_completion_order() {
        // One busy thread: everything in one run.
        let one = [shard_of(0, &[(1, "a", 0), (1, "a", 0), (2, "a", 0)])];
        assert_eq!(planned(&one), ["0.0\n0.1\n0.2\n"]);
        // Two threads: runs broken where the other thread's line is older; ties go to the
        // lower shard, as a sort by (time, shard, line) would.
        let two = [
            shard_of(0, &[(1, "a", 0), (3, "a", 0), (3, "a", 0), (7, "a", 0)]),
            shard_of(1, &[(2, "a", 0), (3, "a", 0), (8, "a", 0)]),
            Pending::default(),
        ];
        assert_eq!(
            planned(&two),
            ["0.0\n", "1.0\n", "0.1\n0.2\n", "1.1\n", "0.3\n", "1.2\n"]
        );
        // A change of site or day ends a run (they go to different files).
        let sites = [shard_of(
            0,
            &[
                (1, "a", 0),
                (2, "b", 0),
                (3, "b", 0),
                (4, "b", 1),
                (5, "a", 1),
            ],
        )];
        assert_eq!(planned(&sites), ["0.0\n", "0.1\n0.2\n", "0.3\n", "0.4\n"]);
        // A shard two threads shared can be out of order: sorted, then cut into runs.
        let shared = [
            shard_of(0, &[(1, "a", 0), (5, "a", 0), (2, "a", 0), (6, "a", 0)]),
            shard_of(1, &[(3, "a", 0), (4, "a", 0)]),
        ];
        assert_eq!(
            planned(&shared),
            ["0.0\n", "0.2\n", "1.0\n1.1\n", "0.1\n", "0.3\n"]
        );
        // Every line is planned exactly once.
        assert!(planned(&[Pending::default(), Pending::default()]).is_empty());
    }

    /// A disk that fills (here the day's file is `/dev/full`) loses the lines it could not take,
    /// and they are counted as dropped for their site and day, not as written.
    #[test]
    #[cfg(target_os = "linux")]
    fn lines_a_full_disk_refuses_are_counted_as_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let log = AccessLog::without_writer(dir.path().into(), clock, Duration::ZERO).expect("log");
        let site: Arc<str> = "s".into();
        let l = line(LogFormat::Combined);
        let day = day_of(l.at);
        let (file, _, _) = paths(dir.path(), "s", &date_string(day));
        fs::create_dir_all(file.parent().expect("parent")).expect("dir");
        std::os::unix::fs::symlink("/dev/full", &file).expect("symlink");
        for _ in 0..7 {
            log.log(&site, &l);
        }
        assert_eq!(log.flush(), 7);
        assert_eq!(log.written.load(Ordering::Relaxed), 0);
        assert_eq!(log.dropped.load(Ordering::Relaxed), 7);
        assert_eq!(log.take_dropped(&site, day), 7);
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
