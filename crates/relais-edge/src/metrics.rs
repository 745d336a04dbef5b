//! Prometheus metrics. Names are defined here once; the hot path only bumps atomics that live
//! in per-site structs (no label hashing per request), and `/metrics` renders them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

/// How a request was served, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Pass,
    Error,
}

#[derive(Debug, Default)]
pub struct SiteMetrics {
    pub requests: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale: AtomicU64,
    pub revalidated: AtomicU64,
    pub pass: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_from_origin: AtomicU64,
    pub coalesced: AtomicU64,
    pub purges: AtomicU64,
    /// Per-minute statistics not yet collected (recorded only while statistics are on).
    pub minutes: crate::stats::Minutes,
}

impl SiteMetrics {
    pub fn count(&self, o: Outcome) {
        let c = match o {
            Outcome::Hit => &self.hits,
            Outcome::Miss => &self.misses,
            Outcome::Stale => &self.stale,
            Outcome::Revalidated => &self.revalidated,
            Outcome::Pass => &self.pass,
            Outcome::Error => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Edge-wide counters.
#[derive(Debug, Default)]
pub struct EdgeMetrics {
    pub bad_requests: AtomicU64,
    pub unknown_host: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub connections: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Input for rendering, gathered by the edge.
pub struct Render<'a> {
    pub edge: &'a EdgeMetrics,
    pub sites: Vec<(&'a str, &'a SiteMetrics)>,
    pub origins: Vec<(&'a str, &'a str, &'a crate::upstream::OriginState)>,
    pub store: &'a crate::cache::Store,
}

pub fn render(r: Render<'_>) -> String {
    let mut o = String::with_capacity(4096);
    type Field = fn(&SiteMetrics) -> &AtomicU64;
    let counters: [(&str, &str, Field); 11] = [
        (
            "relais_requests_total",
            "Requests received, per site.",
            |m| &m.requests,
        ),
        (
            "relais_cache_hits_total",
            "Responses served from cache while fresh.",
            |m| &m.hits,
        ),
        (
            "relais_cache_misses_total",
            "Responses fetched from an origin and stored.",
            |m| &m.misses,
        ),
        (
            "relais_cache_stale_total",
            "Stale responses served (origin failing or stale-while-revalidate).",
            |m| &m.stale,
        ),
        (
            "relais_cache_revalidated_total",
            "Stored responses revalidated with a 304.",
            |m| &m.revalidated,
        ),
        (
            "relais_cache_pass_total",
            "Responses passed through without storing.",
            |m| &m.pass,
        ),
        (
            "relais_errors_total",
            "Edge-generated error responses.",
            |m| &m.errors,
        ),
        (
            "relais_bytes_sent_total",
            "Response body bytes sent to clients (declared length).",
            |m| &m.bytes_sent,
        ),
        (
            "relais_origin_bytes_total",
            "Body bytes received from origins for storing.",
            |m| &m.bytes_from_origin,
        ),
        (
            "relais_coalesced_total",
            "Requests that waited on another request's origin fetch.",
            |m| &m.coalesced,
        ),
        (
            "relais_purged_requests_total",
            "Purge requests applied.",
            |m| &m.purges,
        ),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (site, m) in &r.sites {
            let _ = writeln!(
                o,
                "{name}{{site=\"{}\"}} {}",
                esc(site),
                f(m).load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP relais_origin_latency_seconds Time to origin response headers.\n# TYPE relais_origin_latency_seconds histogram"
    );
    for (site, origin, st) in &r.origins {
        st.latency.render(
            &mut o,
            "relais_origin_latency_seconds",
            &format!("site=\"{}\",origin=\"{}\"", esc(site), esc(origin)),
        );
    }
    let _ = writeln!(
        o,
        "# HELP relais_origin_up Whether the origin is available (health and circuit).\n# TYPE relais_origin_up gauge"
    );
    for (site, origin, st) in &r.origins {
        let _ = writeln!(
            o,
            "relais_origin_up{{site=\"{}\",origin=\"{}\"}} {}",
            esc(site),
            esc(origin),
            st.is_available() as u8
        );
    }
    let _ = writeln!(
        o,
        "# HELP relais_origin_requests_total Requests sent to the origin.\n# TYPE relais_origin_requests_total counter"
    );
    for (site, origin, st) in &r.origins {
        let _ = writeln!(
            o,
            "relais_origin_requests_total{{site=\"{}\",origin=\"{}\"}} {}",
            esc(site),
            esc(origin),
            st.requests.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP relais_origin_failures_total Origin requests that failed or answered 5xx.\n# TYPE relais_origin_failures_total counter"
    );
    for (site, origin, st) in &r.origins {
        let _ = writeln!(
            o,
            "relais_origin_failures_total{{site=\"{}\",origin=\"{}\"}} {}",
            esc(site),
            esc(origin),
            st.failures.load(Ordering::Relaxed)
        );
    }
    let gauges = [
        (
            "relais_cache_memory_bytes",
            "Bytes held by the memory tier.",
            r.store.mem_bytes(),
        ),
        (
            "relais_cache_memory_objects",
            "Objects in the memory tier.",
            r.store.mem_objects() as u64,
        ),
        (
            "relais_cache_disk_bytes",
            "Bytes held by the disk tier.",
            r.store.disk_bytes(),
        ),
        (
            "relais_cache_disk_objects",
            "Objects in the disk tier.",
            r.store.disk_objects() as u64,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let s = &r.store.stats;
    let e = r.edge;
    let totals = [
        (
            "relais_cache_memory_evictions_total",
            "Objects evicted from memory.",
            s.mem_evictions.load(Ordering::Relaxed),
        ),
        (
            "relais_cache_disk_evictions_total",
            "Objects evicted from disk.",
            s.disk_evictions.load(Ordering::Relaxed),
        ),
        (
            "relais_cache_purged_objects_total",
            "Objects removed by purges.",
            s.purged_objects.load(Ordering::Relaxed),
        ),
        (
            "relais_cache_disk_errors_total",
            "Disk tier read or write errors.",
            s.disk_errors.load(Ordering::Relaxed),
        ),
        (
            "relais_bad_requests_total",
            "Requests refused as malformed or oversized.",
            e.bad_requests.load(Ordering::Relaxed),
        ),
        (
            "relais_unknown_host_total",
            "Requests for a host no site serves.",
            e.unknown_host.load(Ordering::Relaxed),
        ),
        (
            "relais_config_reloads_total",
            "Configurations applied.",
            e.reloads.load(Ordering::Relaxed),
        ),
        (
            "relais_config_reload_failures_total",
            "Configurations refused.",
            e.reload_failures.load(Ordering::Relaxed),
        ),
        (
            "relais_connections_total",
            "Client connections accepted.",
            e.connections.load(Ordering::Relaxed),
        ),
        (
            "relais_tls_handshake_failures_total",
            "TLS handshakes that failed.",
            e.tls_handshake_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in totals {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(10));
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.05\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 3\n"), "{s}");
    }
}
