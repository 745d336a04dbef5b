//! End-to-end tests: a real edge and a real origin on 127.0.0.1 port 0. Time moves through a
//! manual clock; readiness is awaited, never slept on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use relais_edge::clock::ManualClock;
use relais_edge::config::Config;
use relais_edge::server::{self, Running};
use relais_edge::{Edge, EdgeOptions};
use relais_testkit::{Origin, Reply, eventually, raw_request, write_cert};

struct Harness {
    edge: Arc<Edge>,
    running: Option<Running>,
    clock: ManualClock,
    client: reqwest::Client,
    base: String,
    dir: Arc<tempfile::TempDir>,
}

fn site_toml(origin: &str, extra_site: &str) -> String {
    format!(
        r#"
[[site]]
name = "s"
hosts = ["*"]
{extra_site}
[[site.origin]]
url = "{origin}"
health = {{ interval = "50ms", fall = 2, rise = 1, timeout = "200ms" }}
"#
    )
}

fn config_text(dir: &std::path::Path, edge_extra: &str, sites: &str) -> String {
    format!(
        r#"version = 1
[edge]
listen = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
{edge_extra}
[cache]
memory_bytes = "32MiB"
max_memory_object = "1MiB"
disk_path = "{}"
disk_bytes = "512MiB"
{sites}"#,
        dir.join("cache").display()
    )
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

async fn start(
    text: &str,
    dir: Arc<tempfile::TempDir>,
    clock: ManualClock,
    health: bool,
) -> Harness {
    let cfg = Config::parse(text, "test").expect("valid config");
    let edge = Edge::new(
        cfg,
        Arc::new(clock.clone()),
        EdgeOptions {
            active_health_checks: health,
        },
    )
    .expect("edge");
    let running = server::start(edge.clone(), None).await.expect("start");
    let base = format!("http://{}", running.http[0]);
    Harness {
        edge,
        running: Some(running),
        clock,
        client: client(),
        base,
        dir,
    }
}

async fn harness(origin: &Origin) -> Harness {
    harness_with(origin, "", "").await
}

async fn harness_with(origin: &Origin, edge_extra: &str, site_extra: &str) -> Harness {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let text = config_text(
        dir.path(),
        edge_extra,
        &site_toml(&origin.url(), site_extra),
    );
    start(&text, dir, clock_for(origin), false).await
}

/// A manual clock that the origin's `Date` header follows too.
fn clock_for(origin: &Origin) -> ManualClock {
    let clock = ManualClock::new();
    let c = clock.clone();
    origin.set_clock(move || relais_edge::clock::Clock::now(&c));
    clock
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> String {
        self.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    async fn get(&self, path: &str) -> Got {
        self.req(reqwest::Method::GET, path, &[]).await
    }

    async fn req(&self, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut r = self
            .client
            .request(method, format!("{}{}", self.base, path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body");
        Got {
            status,
            headers,
            body,
        }
    }

    fn admin(&self) -> String {
        format!(
            "http://{}",
            self.running.as_ref().and_then(|r| r.admin).expect("admin")
        )
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

fn cacheable(
    body: &'static str,
    cc: &'static str,
) -> impl Fn(&relais_testkit::Seen) -> Reply + Send + Sync + 'static {
    move |_| {
        Reply::ok(body)
            .header("cache-control", cc)
            .header("content-type", "text/plain")
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_with_cache_status_and_age() {
    let origin = Origin::start(cacheable("hello", "max-age=60")).await;
    let h = harness(&origin).await;
    let a = h.get("/page").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "hello");
    assert_eq!(
        a.cache_status(),
        "relais; fwd=miss; fwd-status=200; stored; ttl=60"
    );
    h.clock.advance(Duration::from_secs(10));
    let b = h.get("/page").await;
    assert_eq!(b.text(), "hello");
    assert_eq!(b.cache_status(), "relais; hit; ttl=50");
    assert_eq!(b.headers["age"], "10");
    assert_eq!(origin.hits(), 1);
    // Different query string: another object.
    h.get("/page?x=1").await;
    assert_eq!(origin.hits(), 2);
    // HEAD is answered from the stored GET.
    let head = h.req(reqwest::Method::HEAD, "/page", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "5");
    assert!(head.body.is_empty());
    assert_eq!(origin.hits(), 2);
    // Once stale (no validators), it is fetched again.
    h.clock.advance(Duration::from_secs(60));
    let c = h.get("/page").await;
    assert!(
        c.cache_status().contains("fwd=stale"),
        "{}",
        c.cache_status()
    );
    assert_eq!(origin.hits(), 3);
}

/// The client's own request directives decide whether a fresh stored response will do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_cache_control_is_obeyed_before_a_hit() {
    let origin = Origin::start(cacheable("hello", "max-age=60")).await;
    let h = harness(&origin).await;
    h.get("/page").await;
    h.clock.advance(Duration::from_secs(10));
    let cc = |v: &'static str| [("cache-control", v)];
    // Acceptable as it is: a hit.
    for ok in ["max-age=30", "min-fresh=40", "max-stale"] {
        let g = h.req(reqwest::Method::GET, "/page", &cc(ok)).await;
        assert_eq!(g.cache_status(), "relais; hit; ttl=50", "{ok}");
    }
    assert_eq!(origin.hits(), 1);
    // Not fresh enough for long enough, too old, or refused outright: the origin is asked
    // (each time ten seconds after the response stored by the previous one).
    let mut hits = 1;
    for refused in ["min-fresh=55", "max-age=5", "no-cache"] {
        let g = h.req(reqwest::Method::GET, "/page", &cc(refused)).await;
        h.clock.advance(Duration::from_secs(10));
        hits += 1;
        assert!(
            g.cache_status().contains("fwd=request"),
            "{refused}: {}",
            g.cache_status()
        );
        assert_eq!(origin.hits(), hits, "{refused}");
    }
    // Nothing stored and only the cache will do: 504, and the origin is not asked.
    let g = h
        .req(reqwest::Method::GET, "/absent", &cc("only-if-cached"))
        .await;
    assert_eq!(g.status, 504);
    assert!(g.cache_status().contains("detail=only-if-cached"));
    assert_eq!(origin.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_reach_the_origin_and_hop_by_hop_do_not() {
    let origin = Origin::start(cacheable("x", "no-store")).await;
    let h = harness(&origin).await;
    h.req(
        reqwest::Method::GET,
        "/f",
        &[
            ("x-custom", "1"),
            ("connection", "x-secret"),
            ("x-secret", "s"),
        ],
    )
    .await;
    let seen = &origin.requests()[0];
    assert_eq!(seen.header("x-custom"), Some("1"));
    assert_eq!(
        seen.header("x-secret"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(seen.header("via").is_some_and(|v| v.contains("relais")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_make_one_origin_fetch() {
    let origin = Origin::start(|_| {
        Reply::ok("popular")
            .header("cache-control", "max-age=300")
            .delay(Duration::from_millis(300))
    })
    .await;
    let h = Arc::new(harness(&origin).await);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get("/hot").await }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let g = t.await.expect("join");
        assert_eq!(g.status, 200);
        assert_eq!(g.text(), "popular");
        if g.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(
        origin.hits(),
        1,
        "one origin fetch for 200 concurrent misses"
    );
    assert!(collapsed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_response_releases_waiters_in_parallel() {
    // Like nginx's proxy_cache_lock case: 200 waiters, the answer turns out to be private.
    let origin = Origin::start(|_| {
        Reply::ok("mine")
            .header("cache-control", "private")
            .delay(Duration::from_millis(300))
    })
    .await;
    let h = Arc::new(harness(&origin).await);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.get("/account").await }));
    }
    for t in tasks {
        let g = t.await.expect("join");
        assert_eq!(g.status, 200);
        assert_eq!(g.text(), "mine");
    }
    // Every request reached the origin itself (nothing private was shared) ...
    assert_eq!(origin.hits(), 200);
    // ... and the waiters went in parallel, not one behind another.
    assert!(
        origin.max_concurrency() > 50,
        "peak origin concurrency {}",
        origin.max_concurrency()
    );
    // Later requests skip coalescing altogether.
    let g = h.get("/account").await;
    assert!(
        g.cache_status().contains("detail=uncacheable"),
        "{}",
        g.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_serves_stale_within_grace_then_errors() {
    let origin = Origin::start(cacheable("archived", "max-age=60")).await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let text = config_text(dir.path(), "", &site_toml(&origin.url(), "grace = \"1h\""));
    let h = start(&text, dir, clock_for(&origin), false).await;
    assert_eq!(h.get("/a").await.text(), "archived");
    assert_eq!(h.get("/b").await.text(), "archived");
    origin.stop();
    // Fresh: still a plain hit.
    assert!(h.get("/a").await.cache_status().contains("hit"));
    // Stale with the origin refusing connections: served stale, and says so.
    h.clock.advance(Duration::from_secs(120));
    let g = h.get("/a").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "archived");
    assert!(
        g.cache_status().contains("fwd=stale") || g.cache_status().contains("detail=origin-down"),
        "{}",
        g.cache_status()
    );
    // Later requests keep getting the stale copy, without a new attempt each time.
    for _ in 0..5 {
        let g = h.get("/a").await;
        assert_eq!(g.text(), "archived");
        assert!(
            g.cache_status().contains("detail=origin-error-backoff"),
            "{}",
            g.cache_status()
        );
    }
    // An object never cached cannot be served: a clear gateway error.
    let miss = h.get("/never").await;
    assert!(miss.status == 502 || miss.status == 503, "{}", miss.status);
    assert!(miss.text().contains("Relais"));
    // Refused connections open the circuit (fall = 2): the origin is no longer tried at all,
    // and stale content of any URL is served straight away. (The first failure may be a reset
    // of a pooled connection, which proves nothing about reachability, so allow a few misses.)
    let edge = h.edge.clone();
    for i in 0..5 {
        if !edge.snapshot().sites[0].origins[0].is_available() {
            break;
        }
        assert!(h.get(&format!("/never-{i}")).await.status.is_server_error());
    }
    assert!(!edge.snapshot().sites[0].origins[0].is_available());
    let g = h.get("/b").await;
    assert_eq!(g.text(), "archived");
    assert!(
        g.cache_status().contains("detail=origin-down"),
        "{}",
        g.cache_status()
    );
    // Past the grace window nothing stale is served.
    h.clock.advance(Duration::from_secs(2 * 3600));
    let g = h.get("/a").await;
    assert!(
        g.status.is_server_error(),
        "{} {}",
        g.status,
        g.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_origin_is_not_hammered_and_5xx_serves_stale() {
    let origin = Origin::start(cacheable("good", "max-age=10")).await;
    let h = harness(&origin).await;
    assert_eq!(h.get("/p").await.text(), "good");
    origin.set_handler(|_| Reply::ok("boom").status(503));
    h.clock.advance(Duration::from_secs(30));
    for _ in 0..50 {
        let g = h.get("/p").await;
        assert_eq!(g.status, 200, "{}", g.cache_status());
        assert_eq!(g.text(), "good");
    }
    // One failed revalidation puts this URL in back-off: stale is served without asking again
    // while the (manual) clock does not move.
    assert_eq!(origin.hits(), 2, "origin hit {} times", origin.hits());
    let g = h.get("/p").await;
    assert!(
        g.cache_status().contains("detail=origin-error-backoff"),
        "{}",
        g.cache_status()
    );
    // Other URLs are not affected: a 503 for them is passed on as the origin's own answer.
    let other = h.get("/other").await;
    assert_eq!(other.status, 503);
    assert_eq!(other.text(), "boom");
    // When the back-off passes, the origin is asked again; it recovered.
    origin.set_handler(cacheable("better", "max-age=10"));
    h.clock.advance(Duration::from_secs(6));
    let g = h.get("/p").await;
    assert_eq!(g.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || h.edge.snapshot().sites[0]
            .origins[0]
            .is_available())
        .await
    );
    assert_eq!(h.get("/p").await.text(), "better");
}

/// A 5xx with explicit freshness is stored like any response (negative caching); one without
/// is passed on and never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicitly_cacheable_errors_are_stored() {
    let origin = Origin::start(|s| match s.path.as_str() {
        "/busy" => Reply::ok("busy")
            .status(503)
            .header("cache-control", "max-age=30"),
        _ => Reply::ok("broken").status(500),
    })
    .await;
    let h = harness(&origin).await;
    assert_eq!(h.get("/busy").await.status, 503);
    let g = h.get("/busy").await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (503, "busy"));
    assert!(g.cache_status().contains("hit"), "{}", g.cache_status());
    h.clock.advance(Duration::from_secs(31));
    origin.set_handler(|s| match s.path.as_str() {
        "/busy" => Reply::ok("still busy")
            .status(503)
            .header("cache-control", "max-age=30"),
        _ => Reply::ok("broken").status(500),
    });
    let g = h.get("/busy").await;
    assert_eq!(
        g.text(),
        "still busy",
        "a stale 5xx is never reused, not even as a stand-in"
    );
    assert_eq!(origin.hits(), 2);
    origin.set_handler(|_| Reply::ok("broken").status(500));
    h.get("/plain").await;
    let g = h.get("/plain").await;
    assert_eq!(
        (g.status.as_u16(), g.text().as_str()),
        (500, "broken"),
        "the origin's own error page is passed on"
    );
    assert_eq!(origin.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_origin_gets_no_stale_unless_allowed() {
    let origin = Origin::start(cacheable("v1", "max-age=10")).await;
    let h = harness(&origin).await;
    h.get("/x").await;
    origin.set_handler(cacheable("v2", "max-age=10"));
    h.clock.advance(Duration::from_secs(11));
    assert_eq!(
        h.get("/x").await.text(),
        "v2",
        "stale is not served while the origin is healthy"
    );

    // stale-while-revalidate: stale served at once, refreshed in the background.
    origin.set_handler(cacheable("w1", "max-age=10, stale-while-revalidate=60"));
    h.get("/swr").await;
    origin.set_handler(cacheable("w2", "max-age=10, stale-while-revalidate=60"));
    h.clock.advance(Duration::from_secs(15));
    let g = h.get("/swr").await;
    assert_eq!(g.text(), "w1");
    assert!(g.cache_status().contains("detail=stale-while-revalidate"));
    assert!(eventually(Duration::from_secs(5), || origin.hits() >= 4).await);
    let edge = h.edge.clone();
    let clock = h.clock.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let key = relais_edge::cache::primary_key(
                "s",
                h.base
                    .trim_start_matches("http://")
                    .split(':')
                    .next()
                    .unwrap_or(""),
                "/swr",
            );
            edge.store
                .lookup(key, relais_edge::clock::Clock::now(&clock))
                .is_some_and(|(o, _)| o.meta.is_fresh(relais_edge::clock::Clock::now(&clock)))
        })
        .await
    );
    assert_eq!(h.get("/swr").await.text(), "w2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_revalidate_is_never_served_stale() {
    let origin = Origin::start(cacheable("strict", "max-age=10, must-revalidate")).await;
    let h = harness(&origin).await;
    h.get("/m").await;
    origin.stop();
    h.clock.advance(Duration::from_secs(20));
    let g = h.get("/m").await;
    assert!(g.status.is_server_error(), "{}", g.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_cache_survives_a_restart() {
    let origin = Origin::start(|s| {
        let body = if s.path.starts_with("/big") {
            "B".repeat(3 << 20)
        } else {
            "small".into()
        };
        Reply::ok(body).header("cache-control", "max-age=600")
    })
    .await;
    let mut h = harness(&origin).await;
    h.get("/small").await;
    assert_eq!(h.get("/big").await.body.len(), 3 << 20);
    // The small object is written to disk in the background.
    let edge = h.edge.clone();
    assert!(
        eventually(Duration::from_secs(5), || edge.store.disk_objects() == 2).await,
        "{}",
        edge.store.disk_objects()
    );
    h.stop().await;
    drop(edge);
    let dir = h.dir.clone();
    let clock = h.clock.clone();
    drop(h);
    origin.stop();
    let text = config_text(dir.path(), "", &site_toml(&origin.url(), ""));
    let h2 = start(&text, dir, clock, false).await;
    let a = h2.get("/small").await;
    assert_eq!(a.text(), "small");
    assert!(a.cache_status().contains("hit"), "{}", a.cache_status());
    let b = h2.get("/big").await;
    assert_eq!(b.body.len(), 3 << 20);
    assert!(b.cache_status().contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start(|s| {
        let lang = s.header("accept-language").unwrap_or("none").to_owned();
        Reply::ok(format!("lang={lang}"))
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let h = harness(&origin).await;
    let fr = h
        .req(reqwest::Method::GET, "/v", &[("accept-language", "fr")])
        .await;
    assert_eq!(fr.text(), "lang=fr");
    let en = h
        .req(reqwest::Method::GET, "/v", &[("accept-language", "en")])
        .await;
    assert_eq!(en.text(), "lang=en");
    assert!(
        en.cache_status().contains("fwd=vary-miss"),
        "{}",
        en.cache_status()
    );
    let fr2 = h
        .req(reqwest::Method::GET, "/v", &[("accept-language", "fr")])
        .await;
    assert_eq!(fr2.text(), "lang=fr");
    assert!(fr2.cache_status().contains("hit"));
    let none = h.get("/v").await;
    assert_eq!(none.text(), "lang=none");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_with_304_updates_stored_headers() {
    let origin = Origin::start(|s| {
        if s.header("if-none-match") == Some("\"v1\"") {
            Reply::ok("")
                .status(304)
                .header("cache-control", "max-age=30")
                .header("x-version", "refreshed")
        } else {
            Reply::ok("body-v1")
                .header("cache-control", "max-age=10")
                .header("etag", "\"v1\"")
                .header("x-version", "first")
        }
    })
    .await;
    let h = harness(&origin).await;
    assert_eq!(h.get("/r").await.text(), "body-v1");
    h.clock.advance(Duration::from_secs(20));
    let g = h.get("/r").await;
    assert_eq!(g.text(), "body-v1");
    assert_eq!(g.headers["x-version"], "refreshed");
    assert!(
        g.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        g.cache_status()
    );
    assert_eq!(origin.requests()[1].header("if-none-match"), Some("\"v1\""));
    // Fresh again for 30 s.
    h.clock.advance(Duration::from_secs(20));
    let g = h.get("/r").await;
    assert!(g.cache_status().contains("hit"), "{}", g.cache_status());
    assert_eq!(origin.hits(), 2);
    // A client's conditional request is answered 304 from the cache.
    let c = h
        .req(
            reqwest::Method::GET,
            "/r",
            &[("if-none-match", "\"other\", \"v1\"")],
        )
        .await;
    assert_eq!(c.status, 304);
    assert!(c.body.is_empty());
    let c = h
        .req(
            reqwest::Method::GET,
            "/r",
            &[("if-none-match", "\"other\"")],
        )
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_from_cache() {
    let data: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = data.clone();
    let origin = Origin::start(move |_| {
        Reply::ok(body.clone())
            .header("cache-control", "max-age=60")
            .header("content-type", "text/plain")
            .header("etag", "\"e\"")
    })
    .await;
    let h = harness(&origin).await;
    // A range on a miss: the whole object is fetched and stored, the range is answered.
    let g = h
        .req(reqwest::Method::GET, "/file", &[("range", "bytes=10-19")])
        .await;
    assert_eq!(g.status, 206);
    assert_eq!(g.text(), &data[10..20]);
    assert_eq!(g.headers["content-range"], "bytes 10-19/1000");
    assert_eq!(
        origin.requests()[0].header("range"),
        None,
        "the fill fetched the whole object"
    );
    let g = h
        .req(reqwest::Method::GET, "/file", &[("range", "bytes=-5")])
        .await;
    assert_eq!(g.text(), &data[995..]);
    let g = h
        .req(
            reqwest::Method::GET,
            "/file",
            &[("range", "bytes=0-1,500-501")],
        )
        .await;
    assert_eq!(g.status, 206);
    let ct = g.headers["content-type"].to_str().expect("ct").to_owned();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    let text = g.text();
    assert!(
        text.contains("Content-Range: bytes 0-1/1000\r\n\r\nab"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Content-Range: bytes 500-501/1000\r\n\r\n{}",
            &data[500..502]
        )),
        "{text}"
    );
    assert_eq!(
        g.headers["content-length"]
            .to_str()
            .expect("len")
            .parse::<usize>()
            .expect("n"),
        g.body.len()
    );
    let g = h
        .req(reqwest::Method::GET, "/file", &[("range", "bytes=5000-")])
        .await;
    assert_eq!(g.status, 416);
    assert_eq!(g.headers["content-range"], "bytes */1000");
    let g = h
        .req(
            reqwest::Method::GET,
            "/file",
            &[("range", "bytes=0-1"), ("if-range", "\"stale-etag\"")],
        )
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body.len(), 1000);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_and_a_second_client_reads_while_filling() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = std::sync::Mutex::new(Some(rx));
    let total: usize = 24 << 20;
    let origin = Origin::start(move |_| {
        let rx = rx.lock().expect("rx").take().expect("one fetch only");
        let mut r = Reply::channel(rx);
        r.headers
            .push(("cache-control".into(), "max-age=600".into()));
        r.headers
            .push(("content-length".into(), (24usize << 20).to_string()));
        r
    })
    .await;
    let h = Arc::new(harness(&origin).await);
    let first = {
        let h = h.clone();
        tokio::spawn(async move {
            h.client
                .get(format!("{}/video.mp4", h.base))
                .send()
                .await
                .expect("send")
        })
    };
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    // Half the body arrives; the first client already has its response head.
    for _ in 0..12 {
        tx.send(chunk.clone()).await.expect("send");
    }
    let first = first.await.expect("join");
    assert_eq!(first.status(), 200);
    // A second client joins mid-fill and a third asks for a range of the second half.
    let h2 = h.clone();
    let second = tokio::spawn(async move { h2.get("/video.mp4").await });
    let h3 = h.clone();
    let third = tokio::spawn(async move {
        h3.req(
            reqwest::Method::GET,
            "/video.mp4",
            &[("range", "bytes=20971520-20971529")],
        )
        .await
    });
    for _ in 12..24 {
        tx.send(chunk.clone()).await.expect("send");
    }
    drop(tx);
    let body1 = first.bytes().await.expect("body");
    assert_eq!(body1.len(), total);
    let second = second.await.expect("join");
    assert_eq!(second.body.len(), total);
    assert!(second.body.iter().all(|b| *b == 7));
    let third = third.await.expect("join");
    assert_eq!(third.status, 206);
    assert_eq!(third.body.len(), 10);
    assert_eq!(origin.hits(), 1);
    // The body never entered the memory tier (1 MiB per-object limit): it lives on disk.
    assert!(
        h.edge.store.mem_bytes() < 1 << 20,
        "memory tier holds {}",
        h.edge.store.mem_bytes()
    );
    assert_eq!(h.edge.store.disk_objects(), 1);
    let g = h.get("/video.mp4").await;
    assert_eq!(g.body.len(), total);
    assert!(g.cache_status().contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_origin_body_is_never_stored() {
    let origin = Origin::start(|_| {
        let mut r = Reply::ok("");
        r.body = relais_testkit::ReplyBody::Truncated(Bytes::from_static(b"the first half"));
        r.headers
            .push(("cache-control".into(), "max-age=60".into()));
        r
    })
    .await;
    let h = harness(&origin).await;
    let resp = h
        .client
        .get(format!("{}/broken", h.base))
        .send()
        .await
        .expect("head arrives");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.is_err(),
        "the client sees a cut connection, not a short body"
    );
    origin.set_handler(cacheable("whole", "max-age=60"));
    let g = h.get("/broken").await;
    assert_eq!(g.text(), "whole");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_method_and_admin_api() {
    let origin = Origin::start(|s| {
        let tag = if s.path.starts_with("/news") {
            "news"
        } else {
            "other"
        };
        Reply::ok(format!("at {}", s.path))
            .header("cache-control", "max-age=600")
            .header("surrogate-key", tag)
    })
    .await;
    let h = harness_with(&origin, "purge_secret = \"0123456789abcdef\"", "").await;
    for p in ["/news/1", "/news/2", "/about", "/contact"] {
        h.get(p).await;
    }
    assert_eq!(origin.hits(), 4);
    // PURGE without the secret is refused.
    let denied = h
        .req(
            reqwest::Method::from_bytes(b"PURGE").expect("m"),
            "/about",
            &[],
        )
        .await;
    assert_eq!(denied.status, 403);
    let ok = h
        .req(
            reqwest::Method::from_bytes(b"PURGE").expect("m"),
            "/about",
            &[("authorization", "Bearer 0123456789abcdef")],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text().trim(), "{\"purged\":1}");
    h.get("/about").await;
    assert_eq!(origin.hits(), 5);
    // Admin API: by tag.
    let c = client();
    let r = c
        .post(format!("{}/purge", h.admin()))
        .header("authorization", "Bearer 0123456789abcdef")
        .body(r#"{"site":"s","tag":"news"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("t").trim(), "{\"purged\":2}");
    h.get("/news/1").await;
    h.get("/contact").await;
    assert_eq!(origin.hits(), 6, "news refetched, contact still cached");
    // Bad purge requests get precise errors.
    let r = c
        .post(format!("{}/purge", h.admin()))
        .header("authorization", "Bearer 0123456789abcdef")
        .body(r#"{"site":"s","prefix":"news"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{}/purge", h.admin()))
        .body(r#"{"site":"s","all":true}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/purge", h.admin()))
        .header("authorization", "Bearer 0123456789abcdef")
        .body(r#"{"site":"s","all":true}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    h.get("/contact").await;
    assert_eq!(origin.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_pass_through_and_invalidate() {
    let origin = Origin::start(|s| {
        if s.method == "POST" {
            Reply::ok(format!("posted {}", String::from_utf8_lossy(&s.body)))
                .status(201)
                .header("location", "/list")
        } else {
            Reply::ok(format!("get {}", s.path)).header("cache-control", "max-age=600")
        }
    })
    .await;
    let h = harness(&origin).await;
    h.get("/form").await;
    h.get("/list").await;
    let r = h
        .client
        .post(format!("{}/form", h.base))
        .body("a=1")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert!(
        r.headers()["cache-status"]
            .to_str()
            .expect("cs")
            .contains("fwd=method")
    );
    assert_eq!(r.text().await.expect("t"), "posted a=1");
    h.get("/form").await;
    h.get("/list").await;
    assert_eq!(
        origin.hits(),
        5,
        "both the URL and its Location were invalidated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_cache_control_and_authorization() {
    let origin = Origin::start(|s| match s.path.as_str() {
        "/cdn" => Reply::ok("cdn")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=100"),
        "/ours" => Reply::ok("ours")
            .header("cdn-cache-control", "no-store")
            .header("relais-cache-control", "max-age=100"),
        _ => Reply::ok("auth").header("cache-control", "max-age=100"),
    })
    .await;
    let h = harness(&origin).await;
    h.get("/cdn").await;
    let g = h.get("/cdn").await;
    assert!(
        g.cache_status().contains("hit"),
        "CDN-Cache-Control overrides Cache-Control"
    );
    assert_eq!(
        g.headers["cache-control"], "no-store",
        "the browser still gets the origin's Cache-Control"
    );
    h.get("/ours").await;
    let g = h.get("/ours").await;
    assert!(
        g.cache_status().contains("hit"),
        "Relais-Cache-Control overrides CDN-Cache-Control"
    );
    assert!(
        g.headers.get("relais-cache-control").is_none(),
        "our targeted field is not forwarded"
    );
    assert_eq!(origin.hits(), 2);
    h.req(
        reqwest::Method::GET,
        "/auth",
        &[("authorization", "Basic dTpw")],
    )
    .await;
    h.req(
        reqwest::Method::GET,
        "/auth",
        &[("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(
        origin.hits(),
        4,
        "responses to authorized requests are not stored without permission"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tls_sites_by_sni_over_h2_and_http11() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("host={}", s.header("host").unwrap_or("")))
            .header("cache-control", "max-age=60")
    })
    .await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let (ca, ka, pem_a) = write_cert(dir.path(), "a", &["a.example"]);
    let (cb, kb, pem_b) = write_cert(dir.path(), "b", &["b.example"]);
    let sites = format!(
        r#"
[[site]]
name = "a"
hosts = ["a.example"]
tls = {{ cert = "{}", key = "{}" }}
[[site.origin]]
url = "{o}"
[[site]]
name = "b"
hosts = ["b.example"]
tls = {{ cert = "{}", key = "{}" }}
[[site.origin]]
url = "{o}"
"#,
        ca.display(),
        ka.display(),
        cb.display(),
        kb.display(),
        o = origin.url()
    );
    let text = config_text(dir.path(), "listen_tls = [\"127.0.0.1:0\"]", &sites);
    let h = start(&text, dir, ManualClock::new(), false).await;
    let tls_addr = h.running.as_ref().expect("running").https[0];
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem")])
            .resolve("a.example", tls_addr)
            .resolve("b.example", tls_addr)
            .build()
            .expect("client")
    };
    let port = tls_addr.port();
    let ca_client = trusting(&pem_a);
    let r = ca_client
        .get(format!("https://a.example:{port}/"))
        .send()
        .await
        .expect("a over tls");
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiated h2");
    assert_eq!(r.text().await.expect("t"), format!("host=a.example:{port}"));
    // Site b presents b's certificate: a client trusting only a's refuses it.
    assert!(
        ca_client
            .get(format!("https://b.example:{port}/"))
            .send()
            .await
            .is_err()
    );
    let cb_client = trusting(&pem_b);
    let r = cb_client
        .get(format!("https://b.example:{port}/"))
        .send()
        .await
        .expect("b over tls");
    assert_eq!(r.status(), 200);
    // HTTP/1.1 over TLS works too.
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(pem_b.as_bytes()).expect("pem")])
        .resolve("b.example", tls_addr)
        .build()
        .expect("client");
    let r = h1
        .get(format!("https://b.example:{port}/x"))
        .send()
        .await
        .expect("h1");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // A Host that does not match the TLS connection's SNI: 421, never the other site.
    let r = h1
        .get(format!("https://b.example:{port}/x"))
        .header("host", format!("a.example:{port}"))
        .send()
        .await
        .expect("h1");
    assert_eq!(r.status(), 421);
    // Unknown host on the plain listener: 404, never another site's content.
    let g = h.get("/").await;
    assert_eq!(g.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_in_flight_requests_and_refuses_bad_config() {
    let origin = Origin::start(|s| {
        let d = if s.path == "/slow" {
            Duration::from_millis(400)
        } else {
            Duration::ZERO
        };
        Reply::ok(format!("ok {}", s.path))
            .header("cache-control", "no-store")
            .delay(d)
    })
    .await;
    let h = Arc::new(harness(&origin).await);
    let h2 = h.clone();
    let slow = tokio::spawn(async move { h2.get("/slow").await });
    assert!(eventually(Duration::from_secs(5), || origin.hits() == 1).await);
    // A new configuration with another site, applied while /slow is in flight.
    let dir = h.dir.path();
    let extra = format!(
        "{}\n[[site]]\nname = \"new\"\nhosts = [\"new.example\"]\n[[site.origin]]\nurl = \"{}\"\n",
        site_toml(&origin.url(), "").replace("hosts = [\"*\"]", "hosts = [\"old.example\"]"),
        origin.url()
    );
    let good = Config::parse(&config_text(dir, "", &extra), "test").expect("valid");
    let gen_before = h.edge.snapshot().generation;
    let generation = h.edge.reload(Ok(good)).expect("applied");
    assert!(generation > gen_before);
    let g = h
        .req(reqwest::Method::GET, "/n", &[("host", "new.example")])
        .await;
    assert_eq!(g.text(), "ok /n");
    let g = h
        .req(reqwest::Method::GET, "/n", &[("host", "other.example")])
        .await;
    assert_eq!(g.status, 404, "the catch-all is gone");
    let s = slow.await.expect("join");
    assert_eq!(s.status, 200);
    assert_eq!(s.text(), "ok /slow");
    // A bad file is refused with a precise error; the previous config keeps serving.
    let bad = Config::parse(
        &config_text(dir, "", &extra.replace("new.example", "bad host!")),
        "relais.toml",
    );
    let err = h
        .edge
        .reload(bad.map_err(|e| e.to_string()))
        .expect_err("refused");
    assert!(err.contains("site[1].hosts[0]"), "{err}");
    let missing_cert = extra.replace(
        "name = \"new\"",
        "name = \"new\"\ntls = { cert = \"/nonexistent.crt\", key = \"/nonexistent.key\" }",
    );
    let err = h
        .edge
        .reload(Config::parse(&config_text(dir, "", &missing_cert), "t").map_err(|e| e.to_string()))
        .expect_err("refused");
    assert!(err.contains("/nonexistent.crt"), "{err}");
    assert_eq!(h.edge.snapshot().generation, generation);
    let g = h
        .req(reqwest::Method::GET, "/n", &[("host", "new.example")])
        .await;
    assert_eq!(g.status, 200);
    let status: serde_json::Value = serde_json::from_str(
        &client()
            .get(format!("{}/status", h.admin()))
            .send()
            .await
            .expect("status")
            .text()
            .await
            .expect("text"),
    )
    .expect("json");
    assert!(
        status["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("nonexistent"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_cleanly() {
    let origin = Origin::start(cacheable("fine", "max-age=60")).await;
    let h = harness_with(
        &origin,
        "client_header_timeout = \"300ms\"\nmax_header_bytes = \"16KiB\"\nmax_uri_bytes = \"1KiB\"",
        "",
    )
    .await;
    let addr = h.running.as_ref().expect("r").http[0];
    let status_line = |resp: &str| resp.lines().next().unwrap_or("").to_owned();

    // CL + TE together, a classic smuggling shape: framed by Transfer-Encoding alone and the
    // connection closed after the answer (RFC 9112 §6.1), so the tail is never parsed as a
    // request; the origin sees one POST with an empty chunked body.
    let r = raw_request(addr, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        r.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {r}"
    );
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert!(!origin.requests().iter().any(|s| s.path == "/smuggled"));
    let posts: Vec<_> = origin
        .requests()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].body.is_empty());
    assert!(
        posts[0].header("content-length").is_none_or(|v| v == "0"),
        "{:?}",
        posts[0].headers
    );
    // Two different Content-Lengths.
    let r = raw_request(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(status_line(&r).contains("400"), "{r}");
    // An unknown transfer coding.
    let r = raw_request(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&r).starts_with("HTTP/1.1 4") || status_line(&r).starts_with("HTTP/1.1 5"),
        "{r}"
    );
    // Oversized headers.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let r = raw_request(addr, big.as_bytes()).await;
    assert!(
        r.is_empty() || status_line(&r).contains("431") || status_line(&r).contains("400"),
        "{r}"
    );
    // Oversized URI.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let r = raw_request(addr, long.as_bytes()).await;
    assert!(status_line(&r).contains("414"), "{r}");
    // Garbage and missing Host.
    let r = raw_request(addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(r.is_empty() || status_line(&r).contains("400"), "{r}");
    let r = raw_request(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(status_line(&r).contains("400"), "{r}");
    let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(status_line(&r).contains("400"), "{r}");
    let r = raw_request(addr, b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status_line(&r).contains("405"), "{r}");
    // A slow client that never finishes its head is cut off.
    let started = std::time::Instant::now();
    let r = raw_request(addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow:").await;
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the header timeout closed the connection"
    );
    assert!(!r.contains("200 OK"), "{r}");
    // Oversized request bodies.
    let r = raw_request(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
    )
    .await;
    assert!(status_line(&r).contains("413"), "{r}");
    // And the edge still serves.
    assert_eq!(h.get("/ok").await.text(), "fine");
    let metrics = client()
        .get(format!("{}/metrics", h.admin()))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    let bad: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relais_bad_requests_total "))
        .and_then(|v| v.parse().ok())
        .expect("metric");
    assert!(bad >= 3, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_per_site() {
    let origin = Origin::start(cacheable("m", "max-age=60")).await;
    let h = harness(&origin).await;
    h.get("/a").await;
    h.get("/a").await;
    h.get("/a").await;
    let m = client()
        .get(format!("{}/metrics", h.admin()))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(m.contains("relais_requests_total{site=\"s\"} 3"), "{m}");
    assert!(m.contains("relais_cache_hits_total{site=\"s\"} 2"), "{m}");
    assert!(m.contains("relais_cache_misses_total{site=\"s\"} 1"), "{m}");
    assert!(
        m.contains("relais_origin_latency_seconds_count{site=\"s\""),
        "{m}"
    );
    assert!(m.contains("relais_origin_up{site=\"s\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_fail_over_between_origins() {
    let primary = Origin::start(|_| Reply::ok("primary").header("cache-control", "no-store")).await;
    let backup = Origin::start(|_| Reply::ok("backup").header("cache-control", "no-store")).await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let sites = format!(
        "{}\n[[site.origin]]\nurl = \"{}\"\nhealth = {{ interval = \"50ms\", fall = 2, rise = 1, timeout = \"200ms\" }}\n",
        site_toml(&primary.url(), ""),
        backup.url()
    );
    let h = start(
        &config_text(dir.path(), "", &sites),
        dir,
        ManualClock::new(),
        true,
    )
    .await;
    assert_eq!(h.get("/").await.text(), "primary");
    primary.stop();
    // Even before health checks notice, a refused connection fails over at once.
    assert_eq!(h.get("/").await.text(), "backup");
    let edge = h.edge.clone();
    assert!(
        eventually(Duration::from_secs(5), || !edge.snapshot().sites[0].origins
            [0]
        .is_healthy())
        .await
    );
    assert_eq!(h.get("/").await.text(), "backup");
    let _revived = primary.restart().await;
    assert!(
        eventually(Duration::from_secs(5), || edge.snapshot().sites[0].origins
            [0]
        .is_healthy())
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || edge.snapshot().sites[0].origins
            [0]
        .is_available())
        .await
    );
    assert_eq!(h.get("/").await.text(), "primary");
}

/// Media made by ffmpeg, served by a static origin, played through the edge by ffmpeg and
/// ffprobe acting as players: HLS, DASH, and a progressive MP4 whose index is at the end (so
/// the player seeks with Range requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_dash_and_progressive_mp4_play_through_the_edge() {
    let media = tempfile::tempdir().expect("tmp");
    let dir = media.path().to_owned();
    let gen_dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        let src = [
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=3:size=160x120:rate=10",
        ];
        let run = |extra: &[&str]| {
            let st = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-y"])
                .args(src)
                .args(extra)
                .current_dir(&gen_dir)
                .status()
                .expect("ffmpeg is installed by scripts/test");
            assert!(st.success(), "ffmpeg {extra:?}");
        };
        run(&["-c:v", "mpeg4", "video.mp4"]);
        // MPEG-TS wants a codec with in-band headers.
        run(&[
            "-c:v",
            "mpeg2video",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_playlist_type",
            "vod",
            "-hls_segment_filename",
            "seg%03d.ts",
            "stream.m3u8",
        ]);
        run(&[
            "-c:v",
            "mpeg4",
            "-f",
            "dash",
            "-seg_duration",
            "1",
            "manifest.mpd",
        ]);
    })
    .await
    .expect("generate media");

    let files = dir.clone();
    let origin = Origin::start(move |s| {
        let name = s
            .path
            .trim_start_matches('/')
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        if name.contains("..") || name.contains('/') {
            return Reply::ok("no").status(400);
        }
        match std::fs::read(files.join(&name)) {
            Ok(bytes) => {
                let (ct, cc) = match name.rsplit('.').next().unwrap_or("") {
                    "m3u8" => ("application/vnd.apple.mpegurl", "max-age=2"),
                    "mpd" => ("application/dash+xml", "max-age=2"),
                    "ts" => ("video/mp2t", "max-age=86400"),
                    "m4s" => ("video/iso.segment", "max-age=86400"),
                    _ => ("video/mp4", "max-age=86400"),
                };
                Reply::ok(bytes)
                    .header("content-type", ct)
                    .header("cache-control", cc)
            }
            Err(_) => Reply::ok("missing").status(404),
        }
    })
    .await;
    let h = harness(&origin).await;
    let base = h.base.clone();
    let play = move |args: Vec<String>| {
        std::process::Command::new(&args[0])
            .args(&args[1..])
            .output()
            .expect("ffmpeg/ffprobe")
    };
    // ffmpeg reading a URL to the end, as a player would.
    let decode = move |url: String| async move {
        tokio::task::spawn_blocking(move || {
            let args = ["ffmpeg", "-v", "error", "-i", &url, "-f", "null", "-"];
            play(args.iter().map(|a| a.to_string()).collect())
        })
        .await
        .expect("join")
    };
    let probe_url = format!("{base}/stream.m3u8");
    let out = tokio::task::spawn_blocking({
        move || {
            play(vec![
                "ffprobe".into(),
                "-v".into(),
                "error".into(),
                "-show_entries".into(),
                "format=duration".into(),
                "-of".into(),
                "csv=p=0".into(),
                probe_url,
            ])
        }
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duration: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("duration");
    assert!((2.5..=3.5).contains(&duration), "HLS duration {duration}");

    for target in ["stream.m3u8", "manifest.mpd", "video.mp4"] {
        let url = format!("{base}/{target}");

        let out = decode(url).await;
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The MP4 index sits at the end: the player seeks, and the edge answers those ranges.
    let mp4_fetches = origin
        .requests()
        .iter()
        .filter(|s| s.path == "/video.mp4")
        .count();
    assert_eq!(
        mp4_fetches, 1,
        "the MP4 was fetched from the origin once, ranges came from the cache"
    );
    // Every segment was fetched from the origin once; playing again costs the origin nothing.
    let before = origin.hits();
    let url = format!("{base}/stream.m3u8");
    let out = decode(url).await;
    assert!(out.status.success());
    assert_eq!(origin.hits(), before, "second playback entirely from cache");
    let mut seen = std::collections::HashMap::new();
    for s in origin.requests() {
        *seen.entry(s.path.clone()).or_insert(0) += 1;
    }
    assert!(seen.iter().all(|(_, n)| *n == 1), "{seen:?}");
    assert!(
        seen.keys().any(|p| p.ends_with(".ts")) && seen.keys().any(|p| p.ends_with(".m4s")),
        "{seen:?}"
    );
}

/// Mutated requests (flipped bytes, stray CR/LF/NUL, truncations, huge numbers) never take the
/// edge down nor make it answer with a 5xx of its own; afterwards it serves normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_break_the_edge() {
    let origin = Origin::start(cacheable("still here", "max-age=60")).await;
    let h = harness_with(&origin, "client_header_timeout = \"300ms\"", "").await;
    let addr = h.running.as_ref().expect("r").http[0];
    let corpus: [&[u8]; 4] = [
        b"GET /a?b=c HTTP/1.1\r\nHost: x.example\r\nAccept: */*\r\nRange: bytes=0-3\r\n\r\n",
        b"POST /form HTTP/1.1\r\nHost: x.example\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /up HTTP/1.1\r\nHost: x.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x.example\r\nIf-None-Match: \"a\", W/\"b\"\r\nCache-Control: max-age=0, max-stale\r\n\r\n",
    ];
    let mut seed: u64 = 0x5eed_1234_abcd_9876;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cases = Vec::new();
    for i in 0..400 {
        let mut m = corpus[i % corpus.len()].to_vec();
        for _ in 0..1 + next() % 4 {
            let pos = (next() as usize) % m.len();
            match next() % 6 {
                0 => m[pos] = next() as u8,
                1 => m.insert(pos, b"\r\n\0:; \t\"9"[(next() % 9) as usize]),
                2 => m.truncate(pos.max(1)),
                3 => m
                    .splice(pos..pos, b"99999999999999999999".iter().copied())
                    .for_each(drop),
                4 => m
                    .splice(pos..pos, b"\r\nContent-Length: 3\r\n".iter().copied())
                    .for_each(drop),
                _ => {
                    let end = (pos + 1 + (next() as usize) % 8).min(m.len());
                    m.drain(pos..end);
                }
            }
        }
        cases.push(m);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for case in cases {
        let permit = sem.clone().acquire_owned().await.expect("sem");
        tasks.push(tokio::spawn(async move {
            let r =
                relais_testkit::raw_request_quiet_after(addr, &case, Duration::from_millis(800))
                    .await;
            drop(permit);
            (case, r)
        }));
    }
    for t in tasks {
        let (case, r) = t.await.expect("no task panicked");
        let status = r.lines().next().unwrap_or("");
        // An origin may answer 5xx for a strange request it received; the edge itself must
        // not produce 5xx on its own account.
        assert!(
            !(status.contains(" 500 ") && r.contains("Relais")),
            "{:?} -> {status}",
            String::from_utf8_lossy(&case)
        );
    }
    assert_eq!(h.get("/after").await.text(), "still here");
}

/// HTTPS origins: edge B reaches edge A over TLS, trusting a private CA (`ca_file`), with
/// pooled keep-alive connections on both hops; A answers a client that sends no SNI (an IP
/// address) only because its site serves every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origin_with_private_ca_and_pooled_connections() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("via tls {}", s.path)).header("cache-control", "no-store")
    })
    .await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let (cert, key, _) = write_cert(dir.path(), "ip", &["127.0.0.1"]);
    let a_sites = format!(
        "[[site]]\nname = \"a\"\nhosts = [\"*\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n[[site.origin]]\nurl = \"{}\"\n",
        cert.display(),
        key.display(),
        origin.url()
    );
    let a = start(
        &config_text(
            &dir.path().join("a"),
            "listen_tls = [\"127.0.0.1:0\"]",
            &a_sites,
        ),
        dir.clone(),
        ManualClock::new(),
        false,
    )
    .await;
    let a_tls = a.running.as_ref().expect("a").https[0];
    let b_sites = format!(
        "[[site]]\nname = \"b\"\nhosts = [\"*\"]\n[[site.origin]]\nurl = \"https://{a_tls}\"\nca_file = \"{}\"\n",
        cert.display()
    );
    let b = start(
        &config_text(&dir.path().join("b"), "", &b_sites),
        dir.clone(),
        ManualClock::new(),
        false,
    )
    .await;
    for i in 0..5 {
        let g = b.get(&format!("/p{i}")).await;
        assert_eq!(g.status, 200, "{}", g.text());
        assert_eq!(g.text(), format!("via tls /p{i}"));
    }
    assert_eq!(
        a.edge
            .metrics
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "B keeps one TLS connection to A"
    );
    assert_eq!(
        origin.connections(),
        1,
        "A keeps one connection to the origin"
    );
    assert_eq!(
        origin.requests()[0].header("x-forwarded-proto"),
        Some("https")
    );
    // An origin whose certificate is not trusted is refused, with a clear gateway error.
    let c_sites = format!(
        "[[site]]\nname = \"c\"\nhosts = [\"*\"]\n[[site.origin]]\nurl = \"https://{a_tls}\"\n"
    );
    let c = start(
        &config_text(&dir.path().join("c"), "", &c_sites),
        dir.clone(),
        ManualClock::new(),
        false,
    )
    .await;
    let g = c.get("/p0").await;
    assert_eq!(g.status, 502, "{}", g.cache_status());
    assert!(
        g.cache_status().contains("detail=origin-unreachable"),
        "{}",
        g.cache_status()
    );
}

/// Rules on the edge: the most specific rule wins per setting; bypass and key decisions come
/// from paths; "do not store" from content types; a reload changes TTLs for new fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_drive_the_edge_by_specificity() {
    let origin = Origin::start(|s| {
        let path = s.path.split('?').next().unwrap_or("");
        let ct = if path.ends_with(".png") {
            "image/png"
        } else if path.ends_with(".mp4") {
            "video/mp4"
        } else {
            "text/html"
        };
        // No caching headers at all: the rules decide.
        Reply::ok(format!("at {}", s.path)).header("content-type", ct)
    })
    .await;
    let rules = |news_ttl: &str| {
        format!(
            "[[site.rule]]\nid = \"default\"\ndefault = true\nedge_ttl = \"10m\"\nquery = {{ drop = [\"utm_*\"] }}\n\
             [[site.rule]]\nid = \"news\"\ndir = \"/news/\"\nedge_ttl = \"{news_ttl}\"\n\
             [[site.rule]]\nid = \"live\"\npage = \"/news/live\"\nedge_ttl = \"5s\"\n\
             [[site.rule]]\nid = \"account\"\ndir = \"/account/\"\ncache = false\n\
             [[site.rule]]\nid = \"video\"\ngroup = \"video\"\ncache = false\n\
             [[site.rule]]\nid = \"images\"\ngroup = \"images\"\nbrowser_ttl = \"1h\"\n"
        )
    };
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let text = |news_ttl: &str| {
        config_text(
            dir.path(),
            "",
            &format!("{}{}", site_toml(&origin.url(), ""), rules(news_ttl)),
        )
    };
    let h = start(&text("30s"), dir.clone(), clock_for(&origin), false).await;

    let ttl_of = |g: &Got| {
        g.cache_status()
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_owned())
    };
    let g = h.get("/news/a").await;
    assert_eq!(ttl_of(&g).as_deref(), Some("30"), "{}", g.cache_status());
    assert_eq!(
        ttl_of(&h.get("/news/live").await).as_deref(),
        Some("5"),
        "the page beats its directory"
    );
    assert_eq!(
        ttl_of(&h.get("/about").await).as_deref(),
        Some("600"),
        "site default"
    );
    assert!(h.get("/news/a").await.cache_status().contains("hit"));

    let before = origin.hits();
    for _ in 0..2 {
        let g = h.get("/account/me").await;
        assert!(
            g.cache_status()
                .contains("fwd=bypass; fwd-status=200; detail=rule-bypass"),
            "{}",
            g.cache_status()
        );
    }
    assert_eq!(
        origin.hits(),
        before + 2,
        "bypassed directory always goes to the origin"
    );

    let before = origin.hits();
    h.get("/film.mp4").await;
    let g = h.get("/film.mp4").await;
    assert_eq!(origin.hits(), before + 2, "video is not stored");
    assert!(!g.cache_status().contains("hit"));

    let before = origin.hits();
    h.get("/promo?utm_source=mail&id=3").await;
    let g = h.get("/promo?id=3&utm_campaign=x").await;
    assert!(
        g.cache_status().contains("hit"),
        "utm_* are not in the key: {}",
        g.cache_status()
    );
    assert_eq!(origin.hits(), before + 1);

    let png = h.get("/logo.png").await;
    assert_eq!(
        png.headers["cache-control"], "max-age=3600",
        "browser TTL of the images group"
    );

    // A reload shortens the directory TTL: new fills use it at once.
    h.edge
        .reload(Config::parse(&text("7s"), "t").map_err(|e| e.to_string()))
        .expect("applied");
    let g = h.get("/news/b").await;
    assert_eq!(ttl_of(&g).as_deref(), Some("7"), "{}", g.cache_status());
    h.clock.advance(Duration::from_secs(8));
    assert!(
        !h.get("/news/b").await.cache_status().contains("hit"),
        "expired after the new TTL"
    );
}

/// Site modes switched by reload, and a scheduled mode for an event site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_modes_and_schedules() {
    let origin = Origin::start(cacheable("the site", "max-age=600")).await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let page = dir.path().join("maintenance.html");
    std::fs::write(&page, "<h1>Travaux en cours</h1>").expect("page");
    let with = |extra: &str| config_text(dir.path(), "", &site_toml(&origin.url(), extra));
    let h = start(&with(""), dir.clone(), clock_for(&origin), false).await;
    let apply = |extra: &str| {
        h.edge
            .reload(Config::parse(&with(extra), "t").map_err(|e| e.to_string()))
            .expect("applied");
    };
    assert_eq!(h.get("/").await.text(), "the site");
    assert_eq!(origin.hits(), 1);

    apply("mode = \"bypass\"");
    for _ in 0..2 {
        let g = h.get("/").await;
        assert_eq!(g.text(), "the site");
        assert!(
            g.cache_status().contains("fwd=bypass")
                && g.cache_status().contains("detail=site-bypass"),
            "{}",
            g.cache_status()
        );
    }
    assert_eq!(origin.hits(), 3, "bypass: every request reaches the origin");

    apply(&format!(
        "mode = \"maintenance\"\nmaintenance_page = \"{}\"\nretry_after = \"10m\"",
        page.display()
    ));
    let g = h.get("/").await;
    assert_eq!(g.status, 503);
    assert_eq!(g.headers["retry-after"], "600");
    assert_eq!(g.text(), "<h1>Travaux en cours</h1>");
    assert_eq!(origin.hits(), 3);

    apply("mode = \"disabled\"");
    let g = h.get("/").await;
    assert_eq!(g.status, 404);
    assert!(g.text().contains("désactivé"), "{}", g.text());

    // Back to active: the cached page is served again without the origin.
    apply("");
    assert!(h.get("/").await.cache_status().contains("hit"));

    // An event site: disabled, but active for one evening.
    let now = relais_edge::clock::Clock::now(&h.clock);
    let stamp = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let start_at = now + Duration::from_secs(3600);
    let end_at = now + Duration::from_secs(2 * 3600);
    apply(&format!(
        "mode = \"disabled\"\n[[site.schedule]]\nmode = \"active\"\nstart = \"{}\"\nend = \"{}\"",
        stamp(start_at),
        stamp(end_at)
    ));
    assert_eq!(h.get("/").await.status, 404);
    h.clock.advance(Duration::from_secs(3600 + 1));
    assert_eq!(h.get("/").await.status, 200, "the scheduled window is open");
    h.clock.advance(Duration::from_secs(3600));
    assert_eq!(h.get("/").await.status, 404, "and closed again");
}

/// Access logs in the three formats: one file per site per day, compressed with a manifest when
/// the day closes, and GoAccess (Debian package) parses every line without a rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_close_daily_and_goaccess_reads_every_line() {
    let goaccess = std::process::Command::new("goaccess")
        .arg("--version")
        .output();
    if goaccess.is_err() {
        assert!(
            std::env::var("RELAIS_REQUIRE_GOACCESS").is_err(),
            "goaccess is not installed"
        );
        eprintln!("goaccess not installed: skipped here");
        return;
    }
    let origin = Origin::start(|s| match s.path.as_str() {
        "/missing" => Reply::ok("no").status(404),
        p => Reply::ok(format!("page {p}")).header("cache-control", "max-age=60"),
    })
    .await;
    for (format, goaccess_format, truncated) in [
        ("combined", vec!["--log-format=COMBINED"], false),
        ("common", vec!["--log-format=COMMON"], true),
        (
            "w3c",
            vec![
                "--log-format=%d %t %h %m %U %q %s %b %T %u %R",
                "--date-format=%Y-%m-%d",
                "--time-format=%T",
            ],
            false,
        ),
    ] {
        let dir = Arc::new(tempfile::tempdir().expect("tmp"));
        let logs = dir.path().join("logs");
        let text = config_text(
            dir.path(),
            &format!("access_log = \"{}\"", logs.display()),
            &site_toml(
                &origin.url(),
                &format!(
                    "log_format = \"{format}\"\nlog_client_ip = \"{}\"",
                    if truncated { "truncated" } else { "full" }
                ),
            ),
        );
        let h = start(&text, dir.clone(), clock_for(&origin), false).await;
        type Req<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let requests: &[Req] = &[
            ("GET", "/", &[]),
            ("GET", "/", &[("referer", "https://www.gouv.fr/a?b=c")]),
            ("HEAD", "/", &[]),
            ("GET", "/missing", &[]),
            (
                "GET",
                "/q?utm_source=x&y=%22quoted%22",
                &[("user-agent", "Mozilla/5.0 (X11; \"quoted\") été")],
            ),
            ("GET", "/images/logo.png", &[]),
        ];
        for (m, p, hdrs) in requests {
            h.req(
                reqwest::Method::from_bytes(m.as_bytes()).expect("m"),
                p,
                hdrs,
            )
            .await;
        }
        let log = h.edge.access_log.clone().expect("access log");
        assert!(
            eventually(Duration::from_secs(5), || log
                .written
                .load(std::sync::atomic::Ordering::Relaxed)
                == requests.len() as u64)
            .await
        );
        // The day is still open: the plain file is there.
        let date = relais_edge::accesslog::date_string(
            (relais_edge::clock::Clock::now(&h.clock)
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_secs()
                / 86_400) as i64,
        );
        let (plain, gz, manifest) = relais_edge::accesslog::paths(&logs, "s", &date);
        assert!(plain.exists());
        // Midnight passes: the day is compressed and its manifest written.
        h.clock.advance(Duration::from_secs(86_400 + 60));
        assert!(
            eventually(Duration::from_secs(5), || manifest.exists()).await,
            "{format}: no manifest"
        );
        assert!(!plain.exists() && gz.exists());
        let m: relais_edge::accesslog::Manifest =
            serde_json::from_slice(&std::fs::read(&manifest).expect("manifest")).expect("json");
        let mut content = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).expect("gz")),
            &mut content,
        )
        .expect("gunzip");
        let data_lines = content.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(data_lines, requests.len(), "{format}:\n{content}");
        assert_eq!(
            (m.format.as_str(), m.complete, m.dropped),
            (format, true, 0)
        );
        assert_eq!(m.lines as usize, content.lines().count());
        assert_eq!(m.bytes as usize, content.len());
        assert_eq!(m.client_ip, if truncated { "truncated" } else { "full" });
        if format == "combined" {
            // The first GET is a miss (its line written from the text kept before it was handed
            // on), the second and the HEAD fresh hits (written from the request when answered).
            // Lines stamped in the same tick are ordered by thread, not by arrival.
            for line in [
                "\"GET / HTTP/1.1\" 200 6 \"-\" \"-\"",
                "\"GET / HTTP/1.1\" 200 6 \"https://www.gouv.fr/a?b=c\" \"-\"",
                "\"HEAD / HTTP/1.1\" 200 - \"-\" \"-\"",
                "\"GET /q?utm_source=x&y=%22quoted%22 HTTP/1.1\" 200 35 \"-\" \"Mozilla/5.0 (X11; \\x22quoted\\x22) \\xC3\\xA9t\\xC3\\xA9\"",
            ] {
                assert!(
                    content
                        .lines()
                        .any(|l| l.starts_with("127.0.0.1 - - [") && l.ends_with(line)),
                    "{line} in\n{content}"
                );
            }
        }
        if truncated {
            assert!(
                content.lines().all(|l| l.starts_with("127.0.0.0 ")),
                "{content}"
            );
        }
        // GoAccess reads every line.
        let plain_copy = dir.path().join("day.log");
        std::fs::write(&plain_copy, &content).expect("write");
        let report = dir.path().join("report.json");
        let out = std::process::Command::new("goaccess")
            .arg(&plain_copy)
            .args(&goaccess_format)
            .arg("--no-progress")
            .arg("-o")
            .arg(&report)
            .output()
            .expect("goaccess");
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
        assert_eq!(
            r["general"]["failed_requests"], 0,
            "{format}: {}",
            r["general"]
        );
        assert_eq!(
            r["general"]["total_requests"],
            requests.len(),
            "{format}: {}",
            r["general"]
        );
        assert!(
            r["general"]["bandwidth"].as_u64().unwrap_or(0) > 0,
            "{format}: {}",
            r["general"]
        );
        let metrics = h.edge.render_metrics();
        assert!(
            metrics.contains("relais_access_log_days_closed_total 1"),
            "{metrics}"
        );
    }
}

/// When logs cannot be written (here the site's log directory is a file), requests are served
/// as usual and the lost lines are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_access_log_never_stops_traffic() {
    let origin = Origin::start(|_| Reply::ok("ok").header("cache-control", "max-age=60")).await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("dir");
    std::fs::write(logs.join("s"), "not a directory").expect("file");
    let text = config_text(
        dir.path(),
        &format!("access_log = \"{}\"", logs.display()),
        &site_toml(&origin.url(), ""),
    );
    let h = start(&text, dir.clone(), clock_for(&origin), false).await;
    for _ in 0..20 {
        assert_eq!(h.get("/").await.status, 200);
    }
    let log = h.edge.access_log.clone().expect("log");
    assert!(
        eventually(Duration::from_secs(5), || {
            log.dropped.load(std::sync::atomic::Ordering::Relaxed) == 20
        })
        .await
    );
    assert_eq!(log.written.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(
        h.edge
            .render_metrics()
            .contains("relais_access_log_dropped_total 20")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_without_control_plane_writes_its_statistics_minutes() {
    // The origin sits behind a cache of its own, which says so in Cache-Status: the edge's
    // outcome is its own member, appended after the origin's.
    let origin = Origin::start(|s| {
        Reply::ok(format!("corps {}", s.path))
            .header("cache-control", "max-age=600")
            .header("cache-status", "origin-cache; hit")
    })
    .await;
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let stats = dir.path().join("stats");
    let text = config_text(
        dir.path(),
        &format!("stats_dir = \"{}\"", stats.display()),
        &site_toml(&origin.url(), ""),
    );
    let mut h = start(&text, dir.clone(), clock_for(&origin), false).await;
    let mut sent = 0;
    for _ in 0..3 {
        let r = h
            .client
            .get(format!("{}/page", h.base))
            .header("user-agent", "test")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        sent += r.bytes().await.expect("body").len() as u64;
    }
    // The minute closes; at shutdown the edge writes what is closed.
    h.clock.advance(Duration::from_secs(60));
    h.running.take().expect("running").shutdown().await;
    let mut minutes = vec![];
    for f in std::fs::read_dir(&stats).expect("stats dir").flatten() {
        for line in std::fs::read_to_string(f.path()).expect("read").lines() {
            minutes.push(
                serde_json::from_str::<relais_edge::stats::SiteMinute>(line).expect("a minute"),
            );
        }
    }
    assert_eq!(minutes.len(), 1, "{minutes:?}");
    let m = &minutes[0].agg;
    assert_eq!(minutes[0].site, "s");
    assert_eq!((m.requests, m.hits, m.misses), (3, 2, 1));
    assert_eq!(m.bytes_sent, sent);
    assert_eq!(m.bytes_cached, sent / 3 * 2);
    assert_eq!(m.status[1], 3);
    assert_eq!(m.visitors.estimate(), 1);
}
