//! What recording a request costs: its access-log line (formatted on the request thread, written
//! by the writer thread to a real file) and its statistics minute, in CPU time per request for
//! the whole process (request threads and writer together), without the network or HTTP noise
//! of an end-to-end run. Compare with the edge's CPU time per cache hit that bench/logging.sh
//! prints.
//!
//!   cargo bench -p relais-edge --bench recording          # THREADS=2 SECONDS=3 RATE=200000
//!
//! RATE is requests per second per thread: unpaced, the threads format lines far faster than
//! any edge serves requests and the writer cannot keep up, and a dropped line costs less than a
//! written one (the run prints the lines dropped: none, or the figure is void).

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use relais_edge::accesslog::{AccessLog, Entry, LogFormat, RawRequest, Req, SiteLog};
use relais_edge::clock::{SharedClock, SystemClock};
use relais_edge::stats::{Class, Minutes, Request, visitor_hash};

/// User and system CPU time of this process so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    // Linux reports these in clock ticks of 1/100 s on every architecture we build for.
    Duration::from_millis(ticks * 10)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let threads = env("THREADS", 2);
    let seconds = env("SECONDS", 3);
    let rate = env("RATE", 200_000).max(1000);
    let dir = std::env::temp_dir().join(format!("relais-recording-bench-{}", std::process::id()));
    let clock: SharedClock = Arc::new(SystemClock);
    for (label, log_on, stats_on) in [
        ("access log", true, false),
        ("statistics", false, true),
        ("access log + statistics", true, true),
    ] {
        let log = AccessLog::start(dir.clone(), clock.clone(), Duration::from_secs(60))
            .expect("access log");
        let minutes = Arc::new(Minutes::default());
        let site: Arc<str> = "bench".into();
        let uri = http::uri::PathAndQuery::from_static("/assets/app.css?v=1");
        let ua = http::HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        );
        let referer = http::HeaderValue::from_static("https://www.example.gouv.fr/");
        let (c0, t0) = (cpu(), Instant::now());
        let running = std::sync::atomic::AtomicBool::new(true);
        let done: u64 = std::thread::scope(|s| {
            // Lines are written continuously here, as the edge's writer does under load.
            s.spawn(|| {
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    log.flush();
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (log, minutes, site) = (&log, &minutes, &site);
                    let (uri, ua, referer) = (&uri, &ua, &referer);
                    let clock = clock.clone();
                    s.spawn(move || {
                        let mut n = 0u64;
                        let start = Instant::now();
                        let until = start + Duration::from_secs(seconds);
                        while Instant::now() < until {
                            for i in 0..1000u32 {
                                let ip =
                                    std::net::IpAddr::from([10, t as u8, (i >> 8) as u8, i as u8]);
                                let now = clock.recent();
                                if log_on {
                                    // As the edge records a fresh hit sent whole: the line is
                                    // escaped straight from the request's fields.
                                    let raw = RawRequest {
                                        method: &http::Method::GET,
                                        target: uri.as_str().as_bytes(),
                                        version: http::Version::HTTP_11,
                                        referer: Some(referer.as_bytes()),
                                        user_agent: Some(ua.as_bytes()),
                                    };
                                    let entry = Entry {
                                        opts: SiteLog {
                                            format: LogFormat::Combined,
                                            truncate_ip: false,
                                        },
                                        ip,
                                        request: Req::Raw(raw),
                                        status: 200,
                                        bytes: 1024,
                                        // Combined lines do not carry it (the edge skips
                                        // this clock read too).
                                        micros: 0,
                                    };
                                    let at_us = now
                                        .duration_since(UNIX_EPOCH)
                                        .unwrap_or_default()
                                        .as_micros()
                                        as u64;
                                    log.log_at(site, &entry, at_us);
                                }
                                if stats_on {
                                    let r = Request {
                                        // A fresh hit: its path knows the class, and it reads
                                        // no clock for its time to first byte.
                                        class: Class::Hit,
                                        status: 200,
                                        ttfb_ms: 0,
                                        sent: 1024,
                                        visitor: visitor_hash(ip, Some(ua.as_bytes())),
                                    };
                                    let minute = now
                                        .duration_since(UNIX_EPOCH)
                                        .unwrap_or_default()
                                        .as_secs()
                                        as i64
                                        / 60;
                                    minutes.record(minute, &r);
                                }
                            }
                            n += 1000;
                            // Paced to RATE: sleeping costs no CPU time.
                            let due = Duration::from_secs_f64(n as f64 / rate as f64);
                            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                                std::thread::sleep(ahead);
                            }
                        }
                        n
                    })
                })
                .collect();
            let n = workers.into_iter().map(|w| w.join().expect("worker")).sum();
            running.store(false, std::sync::atomic::Ordering::Relaxed);
            n
        });
        let wall = t0.elapsed();
        // The lines still buffered are part of the cost.
        log.flush();
        let used = cpu() - c0;
        let dropped = log.dropped.load(std::sync::atomic::Ordering::Relaxed);
        drop(log);
        println!(
            "{label}: {:.0} ns of CPU per request ({done} requests on {threads} threads in {:.1} s, {dropped} lines dropped)",
            used.as_nanos() as f64 / done as f64,
            wall.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
