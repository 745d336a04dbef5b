//! The request path, as named phases over one [`Edge`]:
//!
//! 1. **validate** — refuse malformed or oversized requests and smuggling shapes (400/413/414);
//! 2. **route** — Host (and SNI) → site; unknown hosts get 404, SNI/Host mismatches 421;
//! 3. **purge** — `PURGE` with the shared secret;
//! 4. **lookup** — GET/HEAD look in the cache; fresh → hit; stale → serve stale if the origin is
//!    down or the response allows it, otherwise revalidate;
//! 5. **fetch** — misses and revalidations are *fills*: one origin request per key, run in its
//!    own task so a client that leaves never cancels it, with every concurrent request for the
//!    same key waiting on it. An uncacheable answer releases the waiters at once, each to make
//!    its own request (never queued one behind another);
//! 6. **respond** — conditional requests, ranges, HEAD, `Age` and `Cache-Status` on every
//!    response.
//!
//! Other methods are passed through; an unsafe method that succeeds invalidates the URL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::cache::policy::{self, RequestFacts};
use crate::cache::{self, BodySource, Growing, Key, Meta, Object, PurgeTarget, Store, Tier};
use crate::clock::SharedClock;
use crate::config::{Config, Mode, Site, normalize_host};
use crate::metrics::{EdgeMetrics, Outcome, SiteMetrics};
use crate::range::{self, Multipart, RangeDecision};
use crate::response::{CACHE_STATUS, EdgeBody, cache_status, error_page};
use crate::tls::CertStore;
use crate::upstream::{self, OriginState, UpBody, UpstreamError, Upstreams};

/// How long a URL whose response was not storable skips request coalescing.
const PASS_MARK: Duration = Duration::from_secs(120);
/// After an origin error while stale content was available, how long that URL is served
/// stale without asking the origin again (per URL, so one failing page never affects others).
const ERROR_BACKOFF: Duration = Duration::from_secs(5);

static PURGE: std::sync::LazyLock<Method> =
    std::sync::LazyLock::new(|| Method::from_bytes(b"PURGE").unwrap_or(Method::DELETE));
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Per-connection facts handed to every request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The SNI name the client sent, if TLS.
    pub sni: Option<String>,
}

/// One site's runtime: its config, counters and origin states.
pub struct SiteRuntime {
    pub site: Arc<Site>,
    /// The site's name, shared by its access-log lines.
    pub log_name: Arc<str>,
    pub metrics: Arc<SiteMetrics>,
    pub origins: Vec<Arc<OriginState>>,
}

/// Everything a request needs, swapped whole on reload.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub sites: Vec<Arc<SiteRuntime>>,
    pub generation: u64,
}

/// What [`Edge::handle_inner`] tells the recording wrapper about a request it routed.
#[derive(Default)]
struct Routed {
    /// The site that answered (none: the request never reached one, and is not recorded).
    site: Option<Arc<SiteRuntime>>,
    /// The statistics class, when the path that answered knows it (the fresh-hit path, the
    /// busiest); otherwise it is read from the response's `Cache-Status`.
    class: Option<crate::stats::Class>,
    /// Set by [`Edge::handle`] when requests are recorded (access log or statistics on).
    rec: Option<Recording>,
}

/// A request being recorded. Its line needs the request's method, target and headers, which
/// the paths that answer consume: a request that may be a fresh hit keeps them in place and is
/// recorded where it is answered, from the request itself, when its body goes whole (most
/// hits); any other request keeps its side of the line ([`RequestText`], escaped, in a pooled
/// slot) before it is handed on, and is recorded once its response ends.
///
/// [`RequestText`]: crate::accesslog::RequestText
struct Recording {
    log: bool,
    stats: bool,
    ip: std::net::IpAddr,
    /// When the request was kept ([`crate::clock::coarse_millis`]): the time it was taken in
    /// hand, as nothing between them waits. `None` for a fresh hit recorded in place, which reads
    /// no time: it is answered within the poll that took it, its time to first byte is 0 ms.
    started_ms: Option<u64>,
    /// The kept request's side of its line.
    slot: Option<crate::response::Recorded>,
    visitor: Option<u64>,
    /// Recorded already (a fresh hit sent whole).
    done: bool,
}

/// A request's fields as its line shows them (the user agent and referer found in one pass over
/// its headers, cheaper than a lookup for each).
fn raw_request<'a>(
    method: &'a Method,
    uri: &'a http::Uri,
    version: http::Version,
    headers: &'a http::HeaderMap,
) -> crate::accesslog::RawRequest<'a> {
    let (mut user_agent, mut referer) = (None, None);
    for (name, value) in headers {
        if *name == header::USER_AGENT {
            user_agent.get_or_insert(value.as_bytes());
        } else if *name == header::REFERER {
            referer.get_or_insert(value.as_bytes());
        }
    }
    crate::accesslog::RawRequest {
        method,
        target: crate::accesslog::target_of(uri).as_bytes(),
        version,
        referer,
        user_agent,
    }
}

impl Recording {
    /// Keeps the request's side of its line and its visitor, before the request is handed on.
    fn keep(&mut self, request: crate::accesslog::RawRequest<'_>) {
        self.started_ms = Some(crate::clock::coarse_millis());
        if self.log {
            let slot = self
                .slot
                .get_or_insert_with(crate::response::Recorded::take);
            if let Some(text) = slot.request_mut() {
                text.set(request);
            }
        }
        if self.stats {
            self.visitor = Some(crate::stats::visitor_hash(self.ip, request.user_agent));
        }
    }

    /// What the log and statistics say of a request answered with `resp` (`sent` still 0).
    fn summary(
        &self,
        class: Option<crate::stats::Class>,
        visitor: Option<u64>,
        resp: &Response<EdgeBody>,
    ) -> crate::response::Summary {
        let status = resp.status().as_u16();
        let stat = visitor.map(|visitor| crate::stats::Request {
            class: match class {
                // The path that answered knows (a fresh hit); a 5xx is an error whatever served it.
                Some(class) if status < 500 => class,
                _ => crate::stats::classify(
                    status,
                    resp.headers()
                        .get_all(&crate::response::CACHE_STATUS)
                        .iter()
                        .next_back()
                        .map(|v| v.as_bytes()),
                ),
            },
            status,
            ttfb_ms: self
                .started_ms
                .map_or(0, |t| crate::clock::coarse_millis().saturating_sub(t)),
            sent: 0,
            visitor,
        });
        crate::response::Summary {
            sent: 0,
            started_ms: self.started_ms,
            ip: self.ip,
            status,
            stat,
        }
    }

    /// A fresh hit, answered while the request is at hand: recorded now from the request itself
    /// when its body goes whole; otherwise the request is kept, to be recorded when the body
    /// ends.
    fn fresh_hit(
        &mut self,
        edge: &Edge,
        rt: &SiteRuntime,
        parts: &Parts,
        class: Option<crate::stats::Class>,
        resp: &Response<EdgeBody>,
    ) {
        let request = raw_request(&parts.method, &parts.uri, parts.version, &parts.headers);
        let Some(sent) = resp.body().whole_len() else {
            self.keep(request);
            return;
        };
        let visitor = self
            .stats
            .then(|| crate::stats::visitor_hash(self.ip, request.user_agent));
        let mut summary = self.summary(class, visitor, resp);
        summary.sent = sent;
        summary.record(edge, rt, crate::accesslog::Req::Raw(request));
        self.done = true;
    }

    /// Records a request whose side of the line was kept: now if its body goes whole, else
    /// when the body ends (the body is wrapped to count what it sends).
    fn finish(
        mut self,
        edge: Arc<Edge>,
        rt: Arc<SiteRuntime>,
        class: Option<crate::stats::Class>,
        resp: &mut Response<EdgeBody>,
    ) {
        let mut summary = self.summary(class, self.visitor, resp);
        // A slot is always kept when the log is on; with statistics alone it only counts.
        let slot = self
            .slot
            .take()
            .unwrap_or_else(crate::response::Recorded::take);
        let body = resp.body_mut();
        match body.whole_len() {
            Some(sent) => {
                summary.sent = sent;
                slot.record_now(&mut summary, &edge, &rt);
            }
            // The body is wrapped in place (the response head is not moved).
            None => {
                let mut slot = slot;
                slot.start(crate::response::Logged {
                    inner: std::mem::replace(body, EdgeBody::Empty),
                    summary,
                    edge,
                    site: rt,
                });
                *body = EdgeBody::Logged(slot);
            }
        }
    }
}

/// Options fixed at start.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    pub active_health_checks: bool,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            active_health_checks: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cache storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

#[derive(Clone)]
enum FillState {
    Pending,
    /// Headers are in; the body streams from `obj`. `shareable` is false when the response is
    /// stored only for use when origins fail (not fresh on arrival): waiters then fetch alone.
    Ready {
        obj: Arc<Object>,
        revalidated: bool,
        shareable: bool,
    },
    /// Not storable: the leader takes the response; waiters make their own requests.
    Pass {
        detail: &'static str,
    },
    Failed(UpstreamError),
}

struct Fill {
    tx: watch::Sender<FillState>,
    leader_resp: Mutex<Option<Response<Incoming>>>,
}

/// The data plane.
pub struct Edge {
    snapshot: ArcSwap<Snapshot>,
    pub store: Store,
    upstreams: Upstreams,
    clock: SharedClock,
    pub metrics: EdgeMetrics,
    site_metrics: Mutex<HashMap<String, Arc<SiteMetrics>>>,
    inflight: Mutex<HashMap<Key, Arc<Fill>>>,
    pass_marks: quick_cache::sync::Cache<Key, SystemTime>,
    error_backoff: quick_cache::sync::Cache<Key, SystemTime>,
    pub certs: Arc<CertStore>,
    options: EdgeOptions,
    generation: AtomicU64,
    pub last_reload_error: Mutex<Option<String>>,
    /// False while this edge cannot vouch that it has applied every purge (it follows a control
    /// plane and lost contact, or has not caught up since it started). Stored objects are then
    /// revalidated before use and never served stale: a purge it missed could cover them.
    vouched: AtomicBool,
    /// Per-site access logs, when the configuration names a directory (fixed at start).
    pub access_log: Option<Arc<crate::accesslog::AccessLog>>,
    /// Whether requests are recorded in per-minute statistics.
    stats_on: AtomicBool,
}

/// What lookup + policy decided for a GET/HEAD.
struct Lookup {
    primary: Key,
    key: Key,
    found: Option<(Arc<Object>, Tier)>,
    vary_known: bool,
    spec: KeySpec,
}

/// What [`Edge::fresh_hit`] hands on when the request is not a fresh hit.
struct Looked {
    reqd: policy::Directives,
    /// `None`: a rule bypasses the cache for this path.
    lk: Option<Lookup>,
    now: std::time::SystemTime,
}

/// Whether the request's own directives (`no-cache`, `max-age`, `min-fresh`) accept a stored
/// response as it is now.
fn client_accepts(reqd: &policy::Directives, m: &cache::Meta, now: std::time::SystemTime) -> bool {
    let age = m.current_age(now).as_secs();
    !reqd.no_cache
        && reqd.max_age.is_none_or(|ma| age <= ma)
        && reqd.min_fresh.is_none_or(|mf| m.ttl(now) >= mf as i64)
}

/// What goes into the cache key of a request once the site's rules are applied: the query
/// string as the rules normalise it, and request headers and cookies the rules add.
#[derive(Clone, Debug)]
struct KeySpec {
    pq: String,
    extra: Vec<HeaderName>,
    cookies: HeaderMap,
}

impl KeySpec {
    fn new(parts: &Parts, rules: Option<&relais_rules::Settings>) -> KeySpec {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Some(r) = rules else {
            return KeySpec {
                pq: pq.to_owned(),
                extra: vec![],
                cookies: HeaderMap::new(),
            };
        };
        let pq = match (&r.query, parts.uri.query()) {
            (Some(mode), Some(q)) => {
                let q = mode.apply(q);
                if q.is_empty() {
                    parts.uri.path().to_owned()
                } else {
                    format!("{}?{q}", parts.uri.path())
                }
            }
            _ => pq.to_owned(),
        };
        let mut extra: Vec<HeaderName> = r
            .key_headers
            .iter()
            .flatten()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let mut cookies = HeaderMap::new();
        for name in r.key_cookies.iter().flatten() {
            let Ok(synthetic) = HeaderName::from_bytes(
                format!("x-relais-key-cookie-{}", name.to_ascii_lowercase()).as_bytes(),
            ) else {
                continue;
            };
            let value = parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| HeaderValue::from_str(v).ok());
            if let Some(v) = value {
                cookies.insert(synthetic.clone(), v);
            }
            extra.push(synthetic);
        }
        KeySpec { pq, extra, cookies }
    }

    /// The variant key: the response's Vary names plus the rules' key headers and cookies.
    fn variant(&self, primary: Key, vary: &[HeaderName], req: &HeaderMap) -> Key {
        if self.extra.is_empty() {
            return cache::variant_key(primary, vary, req);
        }
        let mut names: Vec<HeaderName> = vary.iter().chain(self.extra.iter()).cloned().collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        if self.cookies.is_empty() {
            return cache::variant_key(primary, &names, req);
        }
        let mut h = req.clone();
        for (k, v) in &self.cookies {
            h.insert(k.clone(), v.clone());
        }
        cache::variant_key(primary, &names, &h)
    }
}

impl Edge {
    pub fn new(
        config: Config,
        clock: SharedClock,
        options: EdgeOptions,
    ) -> Result<Arc<Edge>, EdgeError> {
        let store = Store::open(&config.cache)?;
        let access_log = match &config.access_log {
            Some(dir) => Some(crate::accesslog::AccessLog::start(
                dir.clone(),
                clock.clone(),
                Duration::from_secs(10),
            )?),
            None => None,
        };
        let certs = Arc::new(CertStore::default());
        let edge = Arc::new(Edge {
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::new(config.clone()),
                sites: vec![],
                generation: 0,
            }),
            store,
            upstreams: Upstreams::default(),
            clock,
            metrics: EdgeMetrics::default(),
            site_metrics: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            pass_marks: quick_cache::sync::Cache::new(100_000),
            error_backoff: quick_cache::sync::Cache::new(100_000),
            certs,
            options,
            generation: AtomicU64::new(0),
            last_reload_error: Mutex::new(None),
            vouched: AtomicBool::new(true),
            access_log,
            stats_on: AtomicBool::new(false),
        });
        edge.apply(config).map_err(EdgeError::Config)?;
        Ok(edge)
    }

    /// See the `vouched` field: whether cached objects may be used without asking the origin.
    pub fn set_vouched(&self, vouched: bool) {
        if self.vouched.swap(vouched, Ordering::SeqCst) != vouched {
            tracing::info!(vouched, "purge vouching changed");
        }
    }

    pub fn is_vouched(&self) -> bool {
        self.vouched.load(Ordering::SeqCst)
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Validates everything that can fail (certificates, origin TLS settings), then swaps the
    /// new configuration in atomically. On error nothing changes.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let certs = crate::tls::load_site_certs(&config)?;
        let mut sites = Vec::with_capacity(config.sites.len());
        let mut all_origins = Vec::new();
        {
            let mut sm = self
                .site_metrics
                .lock()
                .map_err(|_| "metrics table poisoned".to_string())?;
            for site in &config.sites {
                let origins = self
                    .upstreams
                    .resolve(
                        &site.origins,
                        &self.clock,
                        self.options.active_health_checks,
                    )
                    .map_err(|e| format!("site {}: {e}", site.name))?;
                all_origins.extend(origins.iter().cloned());
                let metrics = sm.entry(site.name.clone()).or_default().clone();
                sites.push(Arc::new(SiteRuntime {
                    log_name: site.name.as_str().into(),
                    site: site.clone(),
                    metrics,
                    origins,
                }));
            }
            let names: std::collections::HashSet<&str> =
                config.sites.iter().map(|s| s.name.as_str()).collect();
            sm.retain(|name, _| names.contains(name.as_str()));
        }
        let old = self.snapshot.load();
        if old.generation > 0 {
            if old.config.listen != config.listen
                || old.config.listen_tls != config.listen_tls
                || old.config.admin != config.admin
            {
                tracing::warn!("listen addresses changed: they take effect at the next restart");
            }
            if old.config.cache != config.cache {
                tracing::warn!(
                    "cache sizes or paths changed: they take effect at the next restart"
                );
            }
        }
        self.certs.replace(certs);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.snapshot.store(Arc::new(Snapshot {
            config: Arc::new(config),
            sites,
            generation,
        }));
        self.upstreams.retain(&all_origins);
        Ok(())
    }

    /// Applies a configuration from a reload, recording the outcome.
    pub fn reload(&self, config: Result<Config, String>) -> Result<u64, String> {
        let res = config.and_then(|c| self.apply(c));
        let mut last = self
            .last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(()) => {
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                *last = None;
                let g = self.snapshot.load().generation;
                tracing::info!(generation = g, "configuration applied");
                Ok(g)
            }
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "configuration refused; the previous one keeps serving");
                *last = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Handles one request. Never fails: every problem becomes a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<EdgeBody> {
        let log = self.access_log.is_some();
        let stats = self.stats_on.load(Ordering::Relaxed);
        let mut routed = Routed::default();
        if log || stats {
            routed.rec = Some(Recording {
                log,
                stats,
                ip: conn.remote.ip(),
                started_ms: None,
                slot: None,
                visitor: None,
                done: false,
            });
        }
        let mut resp = self.handle_inner(req, conn, &mut routed).await;
        // A request no site took is not recorded; a fresh hit sent whole was recorded where it
        // was answered.
        if let (Some(rt), Some(rec)) = (routed.site, routed.rec)
            && !rec.done
        {
            rec.finish(self, rt, routed.class, &mut resp);
        }
        resp
    }

    /// Turns per-minute statistics on or off (on for edges that ship them to a control plane).
    pub fn set_stats(&self, on: bool) {
        self.stats_on.store(on, Ordering::Relaxed);
    }

    /// Takes every site's closed minutes (those before the current one).
    pub fn take_stats(&self) -> Vec<crate::stats::SiteMinute> {
        let current = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64
            / 60;
        let sites: Vec<(String, Arc<SiteMetrics>)> = match self.site_metrics.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return vec![],
        };
        let mut out = vec![];
        for (site, m) in sites {
            for (minute, agg) in m.minutes.take_before(current) {
                out.push(crate::stats::SiteMinute {
                    site: site.clone(),
                    minute,
                    agg,
                });
            }
        }
        out
    }

    async fn handle_inner(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        routed: &mut Routed,
    ) -> Response<EdgeBody> {
        let snap = self.snapshot.load_full();
        // Phase 1: validate.
        if let Err(resp) = validate(&req, &snap.config) {
            self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
            return *resp;
        }
        // Phase 2: route.
        let host = request_host(&req).unwrap_or_default();
        let Some(site) = snap.config.route(&host) else {
            self.metrics.unknown_host.fetch_add(1, Ordering::Relaxed);
            return error_page(
                StatusCode::NOT_FOUND,
                "Site inconnu",
                "This address is not served here: no site is configured for this host name.",
                &["fwd=bypass", "detail=unknown-host"],
            );
        };
        if let Some(sni) = &conn.sni {
            let sni_site = snap.config.route(sni).map(|s| s.index);
            if sni_site != Some(site.index) {
                self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
                return error_page(
                    StatusCode::MISDIRECTED_REQUEST,
                    "Requête mal dirigée",
                    "The host name does not match the TLS connection; open a new connection for this host.",
                    &["fwd=bypass", "detail=sni-mismatch"],
                );
            }
        }
        let rt = snap.sites[site.index].clone();
        routed.site = Some(rt.clone());
        rt.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let host = normalize_host(&host).into_owned();

        // Site modes (CDN-03). Purges work in every mode.
        let mode = rt.site.mode_at(self.clock.now());
        // A request that cannot be a fresh hit keeps its side of the line now, while it is at
        // hand (see `Recording`).
        if let Some(rec) = &mut routed.rec
            && !(mode == Mode::Active
                && (req.method() == Method::GET || req.method() == Method::HEAD))
        {
            rec.keep(raw_request(
                req.method(),
                req.uri(),
                req.version(),
                req.headers(),
            ));
        }
        if req.method() != *PURGE {
            match mode {
                Mode::Active => {}
                Mode::Disabled => {
                    return error_page(
                        StatusCode::NOT_FOUND,
                        "Ce site est désactivé",
                        "This site is switched off on this platform.",
                        &["fwd=bypass", "detail=site-disabled"],
                    );
                }
                Mode::Maintenance => return maintenance_page(&rt.site),
                Mode::Bypass if req.method() == Method::GET || req.method() == Method::HEAD => {
                    let (parts, _body) = req.into_parts();
                    // Boxed, as `cacheable_rest` is (see `fresh_hit`).
                    return Box::pin(self.pass_get(parts, &rt, &host, &conn, "detail=site-bypass"))
                        .await;
                }
                Mode::Bypass => {}
            }
        }

        let resp = if req.method() == *PURGE {
            self.purge_request(&req, &rt, &host, &conn, &snap.config)
        } else if req.method() == Method::GET || req.method() == Method::HEAD {
            let (parts, _body) = req.into_parts();
            let path = rt
                .site
                .rules
                .uses("browser_ttl")
                .then(|| parts.uri.path().to_owned());
            // A fresh hit is answered without waiting; the rest is boxed (see `fresh_hit`).
            let mut resp = match self.fresh_hit(&parts, &rt, &host, &mut routed.class) {
                Ok(resp) => {
                    if let Some(rec) = &mut routed.rec {
                        rec.fresh_hit(self, &rt, &parts, routed.class, &resp);
                    }
                    resp
                }
                Err(looked) => {
                    if let Some(rec) = &mut routed.rec {
                        rec.keep(raw_request(
                            &parts.method,
                            &parts.uri,
                            parts.version,
                            &parts.headers,
                        ));
                    }
                    Box::pin(self.clone().cacheable_rest(
                        parts,
                        &rt,
                        &host,
                        &conn,
                        0,
                        &mut routed.class,
                        looked,
                    ))
                    .await
                }
            };
            if let Some(path) = path {
                self.apply_browser_ttl(&rt, &path, &mut resp);
            }
            resp
        } else if req.method() == Method::TRACE || req.method() == Method::CONNECT {
            rt.metrics.count(Outcome::Error);
            error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Méthode refusée",
                "This method is not allowed.",
                &["fwd=method"],
            )
        } else {
            Box::pin(self.pass_unsafe(req, &rt, &host, &conn)).await
        };
        if let Some(len) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            rt.metrics.bytes_sent.fetch_add(len, Ordering::Relaxed);
        }
        resp
    }

    fn purge_request(
        &self,
        req: &Request<Incoming>,
        rt: &SiteRuntime,
        host: &str,
        conn: &ConnInfo,
        cfg: &Config,
    ) -> Response<EdgeBody> {
        let allowed = match &cfg.purge_secret {
            Some(secret) => req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), secret.as_bytes())),
            None => conn.remote.ip().is_loopback(),
        };
        if !allowed {
            rt.metrics.count(Outcome::Error);
            return error_page(
                StatusCode::FORBIDDEN,
                "Purge refusée",
                "Purging needs the purge secret as a bearer token.",
                &["fwd=method"],
            );
        }
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let primary = cache::primary_key(&rt.site.name, host, pq);
        let n = self.store.purge(&PurgeTarget::Url {
            site: rt.site.name.as_str().into(),
            primary,
        });
        rt.metrics.purges.fetch_add(1, Ordering::Relaxed);
        let body = format!("{{\"purged\":{n}}}\n");
        let mut resp = Response::new(EdgeBody::Full(Some(Bytes::from(body))));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().insert(
            CACHE_STATUS.clone(),
            cache_status(&["fwd=method", "detail=purge"]),
        );
        resp
    }

    fn lookup(&self, site: &Site, host: &str, parts: &Parts, spec: KeySpec) -> Lookup {
        let primary = cache::primary_key(&site.name, host, &spec.pq);
        let vary = self.store.vary_of(primary);
        let key = spec.variant(primary, vary.as_deref().unwrap_or(&[]), &parts.headers);
        let now = self.clock.now();
        Lookup {
            primary,
            key,
            found: self.store.lookup(key, now),
            vary_known: vary.is_some(),
            spec,
        }
    }

    /// Phases 4–6 for GET and HEAD, the part that never waits: a fresh hit is answered here,
    /// and anything else goes on to [`Edge::cacheable_rest`] with what was looked up. Kept
    /// apart so that a hit's future holds none of the origin path's (large) state: the
    /// request's future is moved several times per request, and its size is that of its
    /// largest state.
    fn fresh_hit(
        self: &Arc<Self>,
        parts: &Parts,
        rt: &Arc<SiteRuntime>,
        host: &str,
        class: &mut Option<crate::stats::Class>,
    ) -> Result<Response<EdgeBody>, Box<Looked>> {
        let reqd = policy::request_directives(&parts.headers);
        // Rules decided before the response: path scopes only.
        let req_rules = (!rt.site.rules.rules().is_empty())
            .then(|| rt.site.rules.resolve(parts.uri.path(), None));
        if req_rules.as_ref().is_some_and(|r| r.cache == Some(false)) {
            return Err(Box::new(Looked {
                reqd,
                lk: None,
                now: self.clock.now(),
            }));
        }
        let lk = self.lookup(
            &rt.site,
            host,
            parts,
            KeySpec::new(parts, req_rules.as_ref()),
        );
        let now = self.clock.now();
        if let Some((obj, tier)) = &lk.found {
            let m = &obj.meta;
            if *tier == Tier::Disk {
                self.promote_later(obj);
            }
            if self.is_vouched()
                && m.is_fresh(now)
                && !m.fresh.no_cache
                && client_accepts(&reqd, m, now)
            {
                rt.metrics.count(Outcome::Hit);
                *class = Some(crate::stats::Class::Hit);
                let ttl = format!("ttl={}", m.ttl(now));
                return Ok(self.respond(parts, obj, &["hit", &ttl], now));
            }
        }
        Err(Box::new(Looked {
            reqd,
            lk: Some(lk),
            now,
        }))
    }

    /// The rest of phases 4–6: everything but a fresh hit (`looked.lk` is `None` when
    /// a rule bypasses the cache).
    #[allow(clippy::too_many_arguments)]
    async fn cacheable_rest(
        self: Arc<Self>,
        parts: Parts,
        rt: &Arc<SiteRuntime>,
        host: &str,
        conn: &ConnInfo,
        depth: u8,
        class: &mut Option<crate::stats::Class>,
        looked: Box<Looked>,
    ) -> Response<EdgeBody> {
        let Looked { reqd, lk, now } = *looked;
        let Some(lk) = lk else {
            return self
                .pass_get(parts, rt, host, conn, "detail=rule-bypass")
                .await;
        };

        let mut stale: Option<Arc<Object>> = None;
        let mut forced = false;
        if let Some((obj, _)) = &lk.found {
            let m = &obj.meta;
            let vouched = self.is_vouched();
            let fresh = vouched && m.is_fresh(now) && !m.fresh.no_cache;
            let client_ok = client_accepts(&reqd, m, now);
            forced = fresh && !client_ok;
            let staleness = m.staleness(now);
            if vouched && !fresh && !m.fresh.must_revalidate && !m.fresh.no_cache {
                // The client accepts stale (max-stale).
                if let Some(ms) = reqd.max_stale
                    && ms.is_none_or(|ms| staleness.as_secs() <= ms)
                {
                    rt.metrics.count(Outcome::Stale);
                    let ttl = format!("ttl={}", m.ttl(now));
                    return self.respond(&parts, obj, &["hit", &ttl, "detail=max-stale"], now);
                }
                // The origin just failed for this URL: keep serving stale for a while.
                let backing_off = self
                    .error_backoff
                    .get(&lk.key)
                    .is_some_and(|until| until > now);
                // A stored error is never a useful substitute for a failing origin.
                let substitutable = m.status.as_u16() < 500;
                if substitutable
                    && backing_off
                    && staleness <= rt.site.grace.max(m.fresh.stale_if_error)
                {
                    rt.metrics.count(Outcome::Stale);
                    let ttl = format!("ttl={}", m.ttl(now));
                    return self.respond(
                        &parts,
                        obj,
                        &["hit", &ttl, "detail=origin-error-backoff"],
                        now,
                    );
                }
                // Every origin is down: serve stale within grace without asking.
                if substitutable
                    && !upstream::any_available(&rt.origins)
                    && staleness <= rt.site.grace.max(m.fresh.stale_if_error)
                {
                    rt.metrics.count(Outcome::Stale);
                    self.clone()
                        .revalidate_in_background(rt, &parts, &lk, obj.clone());
                    let ttl = format!("ttl={}", m.ttl(now));
                    return self.respond(&parts, obj, &["hit", &ttl, "detail=origin-down"], now);
                }
                // stale-while-revalidate.
                if staleness <= m.fresh.stale_while_revalidate && !reqd.no_cache {
                    rt.metrics.count(Outcome::Stale);
                    self.clone()
                        .revalidate_in_background(rt, &parts, &lk, obj.clone());
                    let ttl = format!("ttl={}", m.ttl(now));
                    return self.respond(
                        &parts,
                        obj,
                        &["hit", &ttl, "detail=stale-while-revalidate"],
                        now,
                    );
                }
            }
            stale = Some(obj.clone());
        } else if reqd.only_if_cached {
            return error_page(
                StatusCode::GATEWAY_TIMEOUT,
                "Absent du cache",
                "The response is not in the cache (only-if-cached).",
                &["fwd=miss", "detail=only-if-cached"],
            );
        }

        let fwd = if forced {
            "fwd=request"
        } else if stale.is_some() {
            "fwd=stale"
        } else if lk.vary_known {
            "fwd=vary-miss"
        } else {
            "fwd=miss"
        };

        // Requests carrying credentials, or URLs known to be uncacheable, skip coalescing.
        let personal = parts.headers.contains_key(header::AUTHORIZATION);
        let marked = self
            .pass_marks
            .get(&lk.key)
            .is_some_and(|until| until > now);
        if (personal || marked) && stale.is_none() {
            return self
                .pass_get(
                    parts,
                    rt,
                    host,
                    conn,
                    if marked {
                        "detail=uncacheable"
                    } else {
                        "detail=authorization"
                    },
                )
                .await;
        }

        let mut lk = lk;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (fill, leader) =
                self.clone()
                    .join_or_start(rt, &parts, host, conn, &lk, stale.clone());
            if !leader {
                rt.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            let state = wait_ready(&fill).await;
            let now = self.clock.now();
            match state {
                FillState::Pending => return unreachable_pending(),
                FillState::Ready {
                    obj,
                    revalidated,
                    shareable,
                } => {
                    if revalidated {
                        rt.metrics.count(Outcome::Revalidated);
                        let ttl = format!("ttl={}", obj.meta.ttl(now));
                        let fwd_p = if forced { "fwd=request" } else { "fwd=stale" };
                        return self.respond(&parts, &obj, &[fwd_p, "fwd-status=304", &ttl], now);
                    }
                    // A waiter whose own variant differs from what arrived looks again.
                    let my_key = lk.spec.variant(lk.primary, &obj.meta.vary, &parts.headers);
                    if my_key != obj.meta.key && attempts < 3 {
                        let spec = lk.spec.clone();
                        lk = self.lookup(&rt.site, host, &parts, spec);
                        continue;
                    }
                    if !leader && shareable && my_key == obj.meta.key && !obj.meta.is_fresh(now) {
                        // We joined a fill that had already delivered, and its object has gone
                        // stale since: once it is stored, take the normal path again
                        // (revalidation, back-off, stale on error).
                        if let BodySource::Growing(g) = &obj.body {
                            let _ = g.wait_complete().await;
                        }
                        if depth < 2 {
                            return match self.fresh_hit(&parts, rt, host, class) {
                                Ok(resp) => resp,
                                Err(looked) => {
                                    Box::pin(self.clone().cacheable_rest(
                                        parts,
                                        rt,
                                        host,
                                        conn,
                                        depth + 1,
                                        class,
                                        looked,
                                    ))
                                    .await
                                }
                            };
                        }
                    }
                    if !leader && (!shareable || my_key != obj.meta.key || !obj.meta.is_fresh(now))
                    {
                        return self
                            .pass_get(parts, rt, host, conn, "detail=not-shareable")
                            .await;
                    }
                    rt.metrics.count(Outcome::Miss);
                    let ttl = format!("ttl={}", obj.meta.ttl(now));
                    let status = format!("fwd-status={}", obj.meta.status.as_u16());
                    let params: [&str; 4] = [
                        fwd,
                        &status,
                        if leader { "stored" } else { "collapsed" },
                        &ttl,
                    ];
                    return self.respond(&parts, &obj, &params, now);
                }
                FillState::Pass { detail } => {
                    if leader {
                        let taken = fill.leader_resp.lock().ok().and_then(|mut s| s.take());
                        if let Some(resp) = taken {
                            rt.metrics.count(Outcome::Pass);
                            let d = format!("detail={detail}");
                            let st = format!("fwd-status={}", resp.status().as_u16());
                            return passthrough(resp, &parts.method, &[fwd, &st, &d]);
                        }
                    }
                    return self
                        .pass_get(parts, rt, host, conn, "detail=uncacheable")
                        .await;
                }
                FillState::Failed(err) => {
                    if let Some(obj) = &stale {
                        let m = &obj.meta;
                        let window = rt.site.grace.max(m.fresh.stale_if_error);
                        if self.is_vouched()
                            && !m.fresh.must_revalidate
                            && !m.fresh.no_cache
                            && m.status.as_u16() < 500
                            && m.staleness(now) <= window
                        {
                            self.error_backoff.insert(lk.key, now + ERROR_BACKOFF);
                            rt.metrics.count(Outcome::Stale);
                            let ttl = format!("ttl={}", m.ttl(now));
                            let st = format!("fwd-status={}", err.status().as_u16());
                            let d = format!("detail={}", err.detail());
                            return self.respond(&parts, obj, &["fwd=stale", &st, &ttl, &d], now);
                        }
                    }
                    if leader {
                        let taken = fill.leader_resp.lock().ok().and_then(|mut s| s.take());
                        if let Some(resp) = taken {
                            rt.metrics.count(Outcome::Pass);
                            let st = format!("fwd-status={}", resp.status().as_u16());
                            return passthrough(
                                resp,
                                &parts.method,
                                &[fwd, &st, "detail=origin-error"],
                            );
                        }
                    }
                    rt.metrics.count(Outcome::Error);
                    return origin_error_page(&err, fwd);
                }
            }
        }
    }

    /// The site's rules for a response (path and content type), if the site has rules.
    fn response_rules(
        &self,
        rt: &SiteRuntime,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Option<relais_rules::Settings> {
        if rt.site.rules.rules().is_empty() {
            return None;
        }
        let path = path_and_query.split('?').next().unwrap_or("/");
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        Some(rt.site.rules.resolve(path, ct))
    }

    /// `browser_ttl`: the Cache-Control clients see on successful responses.
    fn apply_browser_ttl(&self, rt: &SiteRuntime, path: &str, resp: &mut Response<EdgeBody>) {
        if resp.status().as_u16() >= 400 {
            return;
        }
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if let Some(ttl) = rt.site.rules.resolve(path, ct).browser_ttl {
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                hv(&format!("max-age={}", ttl.as_secs())),
            );
        }
    }

    /// Copies a small object found on disk into the memory tier, off the request path.
    fn promote_later(self: &Arc<Self>, obj: &Arc<Object>) {
        let BodySource::File { file, len } = &obj.body else {
            return;
        };
        if *len > self.store.max_mem_object {
            return;
        }
        let (file, len, meta, edge) = (file.clone(), *len, obj.meta.clone(), self.clone());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len as usize];
            if file.read_exact_at(&mut buf, 0).is_ok() {
                edge.store.promote(meta, Bytes::from(buf));
            }
        });
    }

    fn join_or_start(
        self: Arc<Self>,
        rt: &Arc<SiteRuntime>,
        parts: &Parts,
        host: &str,
        conn: &ConnInfo,
        lk: &Lookup,
        stale: Option<Arc<Object>>,
    ) -> (Arc<Fill>, bool) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inflight.get(&lk.key) {
            return (f.clone(), false);
        }
        let fill = Arc::new(Fill {
            tx: watch::channel(FillState::Pending).0,
            leader_resp: Mutex::new(None),
        });
        inflight.insert(lk.key, fill.clone());
        drop(inflight);
        let req = self.fill_request(parts, rt, host, conn, stale.as_deref());
        let facts = RequestFacts::of(
            &parts.method,
            &parts.headers,
            &policy::request_directives(&parts.headers),
        );
        let job = FillJob {
            rt: rt.clone(),
            registered_key: lk.key,
            primary: lk.primary,
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            req_headers: parts.headers.clone(),
            facts,
            stale,
            since: self.store.epoch(),
            spec: lk.spec.clone(),
        };
        tokio::spawn(self.clone().run_fill(job, req, fill.clone()));
        (fill, true)
    }

    fn revalidate_in_background(
        self: Arc<Self>,
        rt: &Arc<SiteRuntime>,
        parts: &Parts,
        lk: &Lookup,
        stale: Arc<Object>,
    ) {
        let exists = self
            .inflight
            .lock()
            .map(|m| m.contains_key(&lk.key))
            .unwrap_or(true);
        if exists {
            return;
        }
        let conn = ConnInfo {
            remote: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            sni: None,
        };
        let host = request_host_parts(parts)
            .map(|h| normalize_host(&h).into_owned())
            .unwrap_or_default();
        let _ = self.join_or_start(rt, parts, &host, &conn, lk, Some(stale));
    }

    /// The request a fill sends: the client's, minus conditionals and range (a fill fetches the
    /// whole representation), plus our own validators when revalidating.
    fn fill_request(
        &self,
        parts: &Parts,
        rt: &SiteRuntime,
        host: &str,
        conn: &ConnInfo,
        stale: Option<&Object>,
    ) -> ForwardRequest {
        let mut headers = parts.headers.clone();
        policy::strip_hop_by_hop(&mut headers);
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        if let Some(obj) = stale {
            if let Some(etag) = obj.meta.headers.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = obj.meta.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        add_forwarding(&mut headers, conn, host, parts.uri.authority());
        let _ = rt;
        ForwardRequest {
            method: Method::GET,
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            headers,
        }
    }

    async fn run_fill(self: Arc<Self>, job: FillJob, req: ForwardRequest, fill: Arc<Fill>) {
        let request_time = self.clock.now();
        let result = send_with_failover(&job.rt, &req, None).await;
        let response_time = self.clock.now();
        let finish = |this: &Edge| {
            let mut m = this.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if m.get(&job.registered_key)
                .is_some_and(|f| Arc::ptr_eq(f, &fill))
            {
                m.remove(&job.registered_key);
            }
        };
        let resp = match result {
            Err(e) => {
                fill.tx.send_replace(FillState::Failed(e));
                finish(&self);
                return;
            }
            Ok(r) => r,
        };
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED
            && let Some(old) = &job.stale
        {
            let obj = self.freshen(old, resp.headers(), request_time, response_time, &job);
            fill.tx.send_replace(FillState::Ready {
                obj,
                revalidated: true,
                shareable: true,
            });
            finish(&self);
            return;
        }
        // A 5xx is a failure (serve stale if we can, protect the origin) unless nothing stale is
        // waiting and the origin explicitly allows storing it (negative caching).
        let explicitly_cacheable = || {
            policy::storable(job.facts, status, resp.headers(), response_time)
                .is_ok_and(|f| !f.heuristic)
        };
        let substitute_waiting = job
            .stale
            .as_ref()
            .is_some_and(|o| o.meta.status.as_u16() < 500);
        if status.is_server_error() && (substitute_waiting || !explicitly_cacheable()) {
            let err = UpstreamError::Status {
                origin: "origin".into(),
                status,
            };
            *fill.leader_resp.lock().unwrap_or_else(|e| e.into_inner()) = Some(resp);
            fill.tx.send_replace(FillState::Failed(err));
            finish(&self);
            return;
        }
        let mut headers = resp.headers().clone();
        policy::strip_hop_by_hop(&mut headers);
        let decision = policy::apply_rules(
            policy::storable(job.facts, status, &headers, response_time),
            self.response_rules(&job.rt, &job.path, &headers).as_ref(),
        );
        for f in policy::omitted_fields(&headers) {
            headers.remove(f.as_str());
        }
        let vary = cache::vary_names(&headers);
        let (fresh, vary) = match (decision, vary) {
            (Ok(f), Some(v)) => (f, v),
            (Err(why), _) => return self.release_pass(&job, &fill, resp, why.as_str(), finish),
            (Ok(_), None) => return self.release_pass(&job, &fill, resp, "vary", finish),
        };
        self.pass_marks.remove(&job.registered_key);
        let key = job.spec.variant(job.primary, &vary, &job.req_headers);
        let mut meta = Meta {
            key,
            primary: job.primary,
            site: job.rt.site.name.as_str().into(),
            path: job.path.clone(),
            status,
            tags: cache::tags_of(&headers),
            headers: policy::compact_headers(&headers),
            vary,
            response_time,
            initial_age: policy::initial_age(resp.headers(), request_time, response_time),
            fresh,
            expires: response_time,
            body_len: 0,
        };
        meta.compute_expires(job.rt.site.grace);
        let shareable = meta.is_fresh(response_time) && !meta.fresh.no_cache;
        let expected = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let growing =
            match Growing::new(expected, self.store.max_mem_object, &self.store.spill_dir()) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open spill file; passing through");
                    return self.release_pass(&job, &fill, resp, "storage", finish);
                }
            };
        if !meta.vary.is_empty() {
            // Published now so that waiters with another variant look up their own key.
            self.store.set_vary(job.primary, &meta.vary);
        }
        let meta_for_store = meta.clone();
        let obj = Arc::new(Object {
            meta: Arc::new(meta),
            body: BodySource::Growing(growing.clone()),
        });
        fill.tx.send_replace(FillState::Ready {
            obj,
            revalidated: false,
            shareable,
        });

        // Stream the body in; this task outlives any client.
        let timeout = job
            .rt
            .origins
            .first()
            .map(|o| o.origin.response_timeout)
            .unwrap_or(Duration::from_secs(30));
        let mut body = resp.into_body();
        let mut total = 0u64;
        let outcome: Result<(), String> = loop {
            match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => break Err("origin body stalled".into()),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(format!("origin body error: {e}")),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len() as u64;
                        if let Err(e) = growing.push(data) {
                            break Err(format!("cache write error: {e}"));
                        }
                    }
                }
            }
        };
        job.rt
            .metrics
            .bytes_from_origin
            .fetch_add(total, Ordering::Relaxed);
        match outcome {
            Err(why) => {
                tracing::warn!(site = %job.rt.site.name, path = %job.path, error = %why, "fill aborted");
                growing.fail(why);
            }
            Ok(()) if expected.is_some_and(|e| e != total) => {
                growing.fail("origin body shorter than its Content-Length".into());
            }
            Ok(()) => match growing.finish() {
                Ok(filled) => {
                    if let Some(stored) = self.store.admit(meta_for_store, filled, job.since)
                        && matches!(stored.body, BodySource::Mem(_))
                    {
                        let edge = self.clone();
                        let since = job.since;
                        tokio::task::spawn_blocking(move || edge.store.persist(&stored, since));
                    }
                    finish(&self);
                    growing.publish();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot complete fill");
                    growing.fail(e.to_string());
                }
            },
        }
        finish(&self);
    }

    fn release_pass(
        &self,
        job: &FillJob,
        fill: &Fill,
        resp: Response<Incoming>,
        detail: &'static str,
        finish: impl Fn(&Edge),
    ) {
        self.pass_marks
            .insert(job.registered_key, self.clock.now() + PASS_MARK);
        *fill.leader_resp.lock().unwrap_or_else(|e| e.into_inner()) = Some(resp);
        fill.tx.send_replace(FillState::Pass { detail });
        finish(self);
    }

    /// Merges a 304 into the stored response (RFC 9111 §4.3.4) and stores the result.
    fn freshen(
        &self,
        old: &Arc<Object>,
        h304: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        job: &FillJob,
    ) -> Arc<Object> {
        let mut meta = (*old.meta).clone();
        let mut incoming = h304.clone();
        policy::strip_hop_by_hop(&mut incoming);
        let mut last: Option<HeaderName> = None;
        for (name, value) in incoming.iter() {
            if !policy::updatable_on_304(name) {
                continue;
            }
            if last.as_ref() != Some(name) {
                meta.headers.remove(name);
                last = Some(name.clone());
            }
            meta.headers.append(name.clone(), value.clone());
        }
        for f in policy::omitted_fields(&meta.headers) {
            meta.headers.remove(f.as_str());
        }
        meta.headers = policy::compact_headers(&meta.headers);
        meta.response_time = response_time;
        meta.initial_age = policy::initial_age(h304, request_time, response_time);
        let rules = self.response_rules(&job.rt, &job.path, &meta.headers);
        match policy::apply_rules(
            policy::storable(job.facts, meta.status, &meta.headers, response_time),
            rules.as_ref(),
        ) {
            Ok(f) => {
                meta.fresh = f;
                meta.tags = cache::tags_of(&meta.headers);
                meta.compute_expires(job.rt.site.grace);
                match self.store.update_meta(old, meta.clone(), job.since) {
                    Some(obj) => obj,
                    None => Arc::new(Object {
                        meta: Arc::new(meta),
                        body: old.body.clone(),
                    }),
                }
            }
            Err(_) => {
                self.store.remove_key(old.meta.key);
                Arc::new(Object {
                    meta: Arc::new(meta),
                    body: old.body.clone(),
                })
            }
        }
    }

    /// A GET/HEAD sent straight to the origin, not stored.
    async fn pass_get(
        &self,
        parts: Parts,
        rt: &SiteRuntime,
        host: &str,
        conn: &ConnInfo,
        detail: &str,
    ) -> Response<EdgeBody> {
        let req = ForwardRequest::pass(&parts, conn, host);
        // Boxed: the origin client's future is large, and held inline it would make every
        // request's future (cache hits included) as large, copied several times per request.
        match Box::pin(send_with_failover(rt, &req, None)).await {
            Ok(resp) => {
                rt.metrics.count(Outcome::Pass);
                let st = format!("fwd-status={}", resp.status().as_u16());
                let fwd = if detail.ends_with("-bypass") {
                    "fwd=bypass"
                } else {
                    "fwd=miss"
                };
                passthrough(resp, &parts.method, &[fwd, &st, detail])
            }
            Err(e) => {
                rt.metrics.count(Outcome::Error);
                origin_error_page(&e, "fwd=miss")
            }
        }
    }

    /// Non-GET methods: passed through with their body (bounded), never retried on another
    /// origin once sent; a success invalidates the URL and its Location/Content-Location.
    async fn pass_unsafe(
        &self,
        req: Request<Incoming>,
        rt: &SiteRuntime,
        host: &str,
        conn: &ConnInfo,
    ) -> Response<EdgeBody> {
        let limit = rt.site.max_body_bytes;
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > limit
        {
            rt.metrics.count(Outcome::Error);
            return error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Requête trop volumineuse",
                "The request body is larger than this site accepts.",
                &["fwd=method", "detail=body-too-large"],
            );
        }
        let (parts, body) = req.into_parts();
        let fwd = ForwardRequest::pass(&parts, conn, host);
        let body: UpBody = http_body_util::Limited::new(body, limit as usize).boxed_unsync();
        // Boxed, as in `pass_get`.
        match Box::pin(send_with_failover(rt, &fwd, Some(body))).await {
            Ok(resp) => {
                let st = resp.status();
                if (st.is_success() || st.is_redirection()) && !parts.method.is_safe() {
                    self.invalidate_after_unsafe(rt, host, &fwd.path, resp.headers());
                }
                rt.metrics.count(Outcome::Pass);
                let s = format!("fwd-status={}", st.as_u16());
                passthrough(resp, &parts.method, &["fwd=method", &s])
            }
            Err(e) => {
                rt.metrics.count(Outcome::Error);
                origin_error_page(&e, "fwd=method")
            }
        }
    }

    fn invalidate_after_unsafe(&self, rt: &SiteRuntime, host: &str, path: &str, resp: &HeaderMap) {
        let site: Arc<str> = rt.site.name.as_str().into();
        let mut targets = vec![path.to_owned()];
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(v) = resp.get(&h).and_then(|v| v.to_str().ok()) {
                match v.parse::<http::Uri>() {
                    Ok(u) if u.host().is_none() && v.starts_with('/') => targets.push(v.to_owned()),
                    Ok(u) if u.host().is_some_and(|h| h.eq_ignore_ascii_case(host)) => {
                        if let Some(pq) = u.path_and_query() {
                            targets.push(pq.as_str().to_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
        for t in targets {
            let primary = cache::primary_key(&site, host, &t);
            self.store.purge(&PurgeTarget::Url {
                site: site.clone(),
                primary,
            });
        }
    }

    /// Builds a response from a stored (or growing) object: conditionals, ranges, HEAD.
    fn respond(
        &self,
        parts: &Parts,
        obj: &Arc<Object>,
        status_params: &[&str],
        now: SystemTime,
    ) -> Response<EdgeBody> {
        let m = &obj.meta;
        let mut headers = m.headers.clone();
        headers.remove(&policy::RELAIS_CACHE_CONTROL);
        headers.insert(header::AGE, HeaderValue::from(m.current_age(now).as_secs()));
        headers.append(CACHE_STATUS.clone(), cache_status(status_params));
        let head = parts.method == Method::HEAD;

        if m.status == StatusCode::OK && not_modified(&parts.headers, &m.headers) {
            let mut resp = Response::new(EdgeBody::Empty);
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::ETAG,
                header::EXPIRES,
                header::VARY,
                header::LAST_MODIFIED,
                header::AGE,
            ] {
                for v in headers.get_all(&name) {
                    resp.headers_mut().append(name.clone(), v.clone());
                }
            }
            for v in headers.get_all(&CACHE_STATUS) {
                resp.headers_mut().append(CACHE_STATUS.clone(), v.clone());
            }
            return resp;
        }

        let len = obj.body.len();
        if m.status == StatusCode::OK && parts.headers.contains_key(header::RANGE) {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if let Some(len) = len {
                match range::decide(&parts.headers, len, &m.headers) {
                    RangeDecision::Full => {}
                    RangeDecision::Unsatisfiable => {
                        let mut resp = Response::new(EdgeBody::Empty);
                        *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                        resp.headers_mut()
                            .insert(header::CONTENT_RANGE, hv(&format!("bytes */{len}")));
                        resp.headers_mut()
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                        resp.headers_mut()
                            .append(CACHE_STATUS.clone(), cache_status(status_params));
                        return resp;
                    }
                    RangeDecision::Partial(spans) if spans.len() == 1 => {
                        let (s, e) = spans[0];
                        headers.insert(
                            header::CONTENT_RANGE,
                            hv(&format!("bytes {}-{}/{}", s, e - 1, len)),
                        );
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(e - s));
                        let body = if head {
                            EdgeBody::Empty
                        } else {
                            EdgeBody::Stream(obj.body.stream(s, Some(e)))
                        };
                        let mut resp = Response::new(body);
                        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                        *resp.headers_mut() = headers;
                        return resp;
                    }
                    RangeDecision::Partial(spans) => {
                        let ct = m
                            .headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok());
                        let mp = Multipart::new(
                            &spans,
                            len,
                            ct,
                            m.key
                                ^ now
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map(|d| d.as_nanos())
                                    .unwrap_or(0),
                        );
                        headers.insert(
                            header::CONTENT_TYPE,
                            hv(&format!("multipart/byteranges; boundary={}", mp.boundary)),
                        );
                        headers.insert(
                            header::CONTENT_LENGTH,
                            HeaderValue::from(mp.content_length(&spans)),
                        );
                        let body = if head {
                            EdgeBody::Empty
                        } else {
                            let mut parts_streams = Vec::new();
                            for (h, (s, e)) in mp.heads.iter().zip(spans.iter()) {
                                let head_bytes = Bytes::from(h.clone());
                                parts_streams.push(
                                    futures_util::stream::once(async move { Ok(head_bytes) })
                                        .boxed(),
                                );
                                parts_streams.push(obj.body.stream(*s, Some(*e)));
                            }
                            let tail = Bytes::from(mp.tail.clone());
                            parts_streams
                                .push(futures_util::stream::once(async move { Ok(tail) }).boxed());
                            EdgeBody::Stream(
                                futures_util::stream::iter(parts_streams).flatten().boxed(),
                            )
                        };
                        let mut resp = Response::new(body);
                        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                        *resp.headers_mut() = headers;
                        return resp;
                    }
                }
            }
        }
        match len {
            Some(l) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(l));
            }
            None => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
        let body = if head {
            EdgeBody::Empty
        } else {
            match &obj.body {
                BodySource::Mem(b) => EdgeBody::Full(Some(b.clone())),
                other => EdgeBody::Stream(other.stream(0, None)),
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = m.status;
        *resp.headers_mut() = headers;
        resp
    }

    /// Renders Prometheus metrics.
    pub fn render_metrics(&self) -> String {
        let snap = self.snapshot.load();
        let sites: Vec<(&str, &SiteMetrics)> = snap
            .sites
            .iter()
            .map(|s| (s.site.name.as_str(), &*s.metrics))
            .collect();
        let origins = snap
            .sites
            .iter()
            .flat_map(|s| {
                s.origins
                    .iter()
                    .map(move |o| (s.site.name.as_str(), o.name.as_str(), &**o))
            })
            .collect();
        let mut out = crate::metrics::render(crate::metrics::Render {
            edge: &self.metrics,
            sites,
            origins,
            store: &self.store,
        });
        if let Some(l) = &self.access_log {
            for (name, help, v) in [
                (
                    "relais_access_log_lines_total",
                    "Access-log lines written.",
                    &l.written,
                ),
                (
                    "relais_access_log_dropped_total",
                    "Access-log lines dropped (queue full or disk error); the day's manifest says so.",
                    &l.dropped,
                ),
                (
                    "relais_access_log_days_closed_total",
                    "Site-days compressed with a manifest.",
                    &l.days_closed,
                ),
            ] {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                    v.load(Ordering::Relaxed)
                ));
            }
        }
        out
    }

    /// Applies a purge for a site by name.
    pub fn purge(&self, target: &PurgeTarget) -> usize {
        self.store.purge(target)
    }

    /// Applies a purge described the way the API and the control plane describe it: `kind` is
    /// `url` (absolute URL, or a path for every host of the site), `prefix`, `tag` or `all`.
    /// A purge for a site this edge does not (yet) know is a no-op that succeeds.
    pub fn purge_described(
        &self,
        site: &str,
        kind: &str,
        value: &str,
        soft: bool,
    ) -> Result<usize, String> {
        let name: Arc<str> = site.into();
        let target = match kind {
            "url" => {
                if value.starts_with('/') {
                    PurgeTarget::Path {
                        site: name,
                        path: value.to_owned(),
                    }
                } else {
                    let u: http::Uri = value
                        .parse()
                        .map_err(|_| format!("{value:?} is not a URL"))?;
                    let (Some(host), Some(pq)) = (u.host(), u.path_and_query()) else {
                        return Err(format!("{value:?} is not an absolute URL"));
                    };
                    PurgeTarget::Url {
                        primary: cache::primary_key(site, &normalize_host(host), pq.as_str()),
                        site: name,
                    }
                }
            }
            "prefix" if value.starts_with('/') => PurgeTarget::Prefix {
                site: name,
                prefix: value.to_owned(),
            },
            "tag" if !value.is_empty() => PurgeTarget::Tag {
                site: name,
                tag: value.to_owned(),
            },
            "all" => PurgeTarget::Site { site: name },
            _ => return Err(format!("invalid purge {kind} {value:?}")),
        };
        let n = if soft {
            self.store.soft_purge(&target, self.clock.now())
        } else {
            self.store.purge(&target)
        };
        let snap = self.snapshot.load();
        if let Some(rt) = snap.sites.iter().find(|r| r.site.name == site) {
            rt.metrics.purges.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }
}

fn unreachable_pending() -> Response<EdgeBody> {
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Erreur interne",
        "Internal error.",
        &["detail=internal"],
    )
}

struct FillJob {
    rt: Arc<SiteRuntime>,
    registered_key: Key,
    primary: Key,
    path: String,
    req_headers: HeaderMap,
    facts: RequestFacts,
    stale: Option<Arc<Object>>,
    since: u64,
    spec: KeySpec,
}

struct ForwardRequest {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl ForwardRequest {
    /// The client's request as it goes to the origin when it is passed through: same method,
    /// target and headers, minus hop-by-hop, plus forwarding headers.
    fn pass(parts: &Parts, conn: &ConnInfo, host: &str) -> ForwardRequest {
        let mut headers = parts.headers.clone();
        policy::strip_hop_by_hop(&mut headers);
        add_forwarding(&mut headers, conn, host, parts.uri.authority());
        ForwardRequest {
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into()),
            headers,
        }
    }
}

async fn wait_ready(fill: &Fill) -> FillState {
    let mut rx = fill.tx.subscribe();
    loop {
        {
            let st = rx.borrow_and_update();
            if !matches!(*st, FillState::Pending) {
                return st.clone();
            }
        }
        if rx.changed().await.is_err() {
            return FillState::Failed(UpstreamError::Protocol {
                origin: "origin".into(),
                detail: "fill abandoned".into(),
            });
        }
    }
}

/// Sends a request to the site's origins in order; GET/HEAD (no body) fail over to the next
/// origin on connection errors, timeouts and 5xx.
async fn send_with_failover(
    rt: &SiteRuntime,
    req: &ForwardRequest,
    body: Option<UpBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let plan = upstream::plan(&rt.origins);
    if plan.is_empty() {
        return Err(UpstreamError::Unavailable {
            site: rt.site.name.clone(),
        });
    }
    let retryable = body.is_none();
    let mut body = body;
    let mut last_err = None;
    let n = plan.len();
    for (i, origin) in plan.into_iter().enumerate().take(3) {
        let uri = origin
            .uri_for(&req.path)
            .map_err(|e| UpstreamError::Protocol {
                origin: origin.name.clone(),
                detail: e.to_string(),
            })?;
        let mut b = Request::builder().method(req.method.clone()).uri(uri);
        if let Some(h) = b.headers_mut() {
            *h = req.headers.clone();
            if let Some(host) = &origin.origin.host {
                h.insert(header::HOST, hv(host));
            }
        }
        let this_body = body.take().unwrap_or_else(upstream::empty_body);
        let Ok(request) = b.body(this_body) else {
            return Err(UpstreamError::Protocol {
                origin: origin.name.clone(),
                detail: "cannot build the origin request".into(),
            });
        };
        match origin.send(request).await {
            Ok(resp) if resp.status().is_server_error() && retryable && i + 1 < n => {
                last_err = Some(UpstreamError::Status {
                    origin: origin.name.clone(),
                    status: resp.status(),
                });
            }
            Ok(resp) => return Ok(resp),
            Err(e) => {
                tracing::debug!(error = %e, "origin request failed");
                if !retryable {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or(UpstreamError::Unavailable {
        site: rt.site.name.clone(),
    }))
}

fn passthrough(resp: Response<Incoming>, method: &Method, params: &[&str]) -> Response<EdgeBody> {
    let (mut parts, body) = resp.into_parts();
    policy::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&policy::RELAIS_CACHE_CONTROL);
    parts
        .headers
        .append(CACHE_STATUS.clone(), cache_status(params));
    let body = if *method == Method::HEAD {
        EdgeBody::Empty
    } else {
        EdgeBody::Upstream(body)
    };
    Response::from_parts(parts, body)
}

/// Maintenance mode: the site's own page (or ours), 503 with Retry-After.
fn maintenance_page(site: &Site) -> Response<EdgeBody> {
    let mut resp = match &site.maintenance_page {
        Some(page) => {
            let mut r = Response::new(EdgeBody::Full(Some(page.clone())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut().insert(
                CACHE_STATUS.clone(),
                cache_status(&["fwd=bypass", "detail=maintenance"]),
            );
            r
        }
        None => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Site en maintenance",
            "This site is under maintenance. Please come back later.",
            &["fwd=bypass", "detail=maintenance"],
        ),
    };
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(site.retry_after.as_secs()),
    );
    resp
}

fn origin_error_page(e: &UpstreamError, fwd: &str) -> Response<EdgeBody> {
    let status = e.status();
    let detail = format!("detail={}", e.detail());
    let (fr, en) = match e {
        UpstreamError::Timeout { .. } => (
            "Le serveur d'origine ne répond pas à temps",
            "The origin server did not answer in time. Please try again shortly.",
        ),
        UpstreamError::Unavailable { .. } => (
            "Le site est momentanément indisponible",
            "The origin servers of this site are unavailable. Please try again shortly.",
        ),
        _ => (
            "Le serveur d'origine est injoignable",
            "The origin server could not be reached. Please try again shortly.",
        ),
    };
    let mut resp = error_page(status, fr, en, &[fwd, &detail]);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

fn add_forwarding(
    h: &mut HeaderMap,
    conn: &ConnInfo,
    host: &str,
    authority: Option<&http::uri::Authority>,
) {
    let ip = conn.remote.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    h.insert(X_FORWARDED_FOR.clone(), hv(&xff));
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    h.insert(X_FORWARDED_HOST.clone(), hv(host));
    h.append(header::VIA, HeaderValue::from_static("1.1 relais"));
    // Requests reaching the origin over HTTP/1.1 need a Host even if the client spoke HTTP/2.
    if !h.contains_key(header::HOST) {
        h.insert(header::HOST, hv(authority.map_or(host, |a| a.as_str())));
    }
}

fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

fn request_host_parts(parts: &Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// Phase 1: refuses what must never reach an origin.
fn validate(req: &Request<Incoming>, cfg: &Config) -> Result<(), Box<Response<EdgeBody>>> {
    let bad = |fr: &str, en: &str, status: StatusCode| {
        Err(Box::new(error_page(
            status,
            fr,
            en,
            &["detail=bad-request"],
        )))
    };
    let pq_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if pq_len > cfg.limits.max_uri_bytes {
        return bad(
            "Adresse trop longue",
            "The request URI is too long.",
            StatusCode::URI_TOO_LONG,
        );
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return bad(
            "Requête ambiguë",
            "Content-Length and Transfer-Encoding must not both be present.",
            StatusCode::BAD_REQUEST,
        );
    }
    let hosts = h.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return bad(
            "Requête invalide",
            "Several Host headers were sent.",
            StatusCode::BAD_REQUEST,
        );
    }
    if req.version() == http::Version::HTTP_11 && hosts == 0 && req.uri().authority().is_none() {
        return bad(
            "Requête invalide",
            "HTTP/1.1 requests need a Host header.",
            StatusCode::BAD_REQUEST,
        );
    }
    if let (Some(a), Some(hh)) = (req.uri().authority(), h.get(header::HOST))
        && !hh.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
        && req.version() != http::Version::HTTP_2
    {
        return bad(
            "Requête invalide",
            "The Host header does not match the request target.",
            StatusCode::BAD_REQUEST,
        );
    }
    if let Some(host) = request_host(req)
        && (host.is_empty()
            || host.len() > 255
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)))
    {
        return bad(
            "Requête invalide",
            "The Host header is not a valid host name.",
            StatusCode::BAD_REQUEST,
        );
    }
    if !req.uri().path().starts_with('/') && req.method() != Method::OPTIONS {
        return bad(
            "Requête invalide",
            "The request target must start with '/'.",
            StatusCode::BAD_REQUEST,
        );
    }
    Ok(())
}

/// RFC 9110 §13.1.2 / §13.1.3, evaluated against a stored 200.
fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        let ours = weak(etag);
        return inm.trim() == "*" || inm.split(',').any(|t| weak(t) == ours);
    }
    if let Some(ims) = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let lm = stored
            .get(header::LAST_MODIFIED)
            .or_else(|| stored.get(header::DATE))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        return lm.is_some_and(|lm| lm <= ims);
    }
    false
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
