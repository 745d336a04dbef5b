//! Origins: pooled keep-alive clients, failover in configured order, active health checks and a
//! per-origin circuit breaker so that a failing origin is not hammered.
//!
//! An origin is *available* when its health checks pass and its circuit is closed. When no
//! origin of a site is available, the proxy serves stale content without asking; when it has
//! nothing stale, it lets one probe request through per cool-down period (half-open) and fails
//! the others fast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::clock::SharedClock;
use crate::config::Origin;
use crate::metrics::Histogram;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpBody = UnsyncBoxBody<Bytes, BoxError>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, UpBody>;

/// How long a tripped circuit stays open before one probe is let through.
const CIRCUIT_COOLDOWN: Duration = Duration::from_secs(5);

/// Why an origin request failed, and whose fault it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to origin {origin}: {detail}")]
    Connect { origin: String, detail: String },
    #[error("origin {origin} did not answer within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("origin {origin} failed: {detail}")]
    Protocol { origin: String, detail: String },
    #[error("origin {origin} answered {status}")]
    Status { origin: String, status: StatusCode },
    #[error("no origin of site {site} is available")]
    Unavailable { site: String },
}

impl UpstreamError {
    /// The status an edge-generated error page carries.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Status { status, .. } => *status,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short token for `Cache-Status: detail=`.
    pub fn detail(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "origin-unreachable",
            UpstreamError::Timeout { .. } => "origin-timeout",
            UpstreamError::Protocol { .. } => "origin-protocol-error",
            UpstreamError::Status { .. } => "origin-error",
            UpstreamError::Unavailable { .. } => "origin-down",
        }
    }
}

/// One origin's client and health.
pub struct OriginState {
    pub origin: Origin,
    pub name: String,
    client: HttpsClient,
    clock: SharedClock,
    /// Result of active health checks (starts healthy).
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Circuit open until this many ms since the epoch (0 = closed).
    open_until_ms: AtomicU64,
    health_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub latency: Histogram,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

impl std::fmt::Debug for OriginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginState")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for OriginState {
    fn drop(&mut self) {
        if let Some(t) = self.health_task.get_mut().ok().and_then(|t| t.take()) {
            t.abort();
        }
    }
}

fn now_ms(clock: &SharedClock) -> u64 {
    clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl OriginState {
    fn new(origin: Origin, clock: SharedClock) -> Result<Arc<Self>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &origin.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read {}: {e}", ca.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot parse {}: {e}", ca.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("bad CA in {}: {e}", ca.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(origin.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(https);
        let name = origin
            .url
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        Ok(Arc::new(Self {
            origin,
            name,
            client,
            clock,
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            health_task: Mutex::new(None),
            latency: Histogram::default(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Healthy and circuit closed.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && now_ms(&self.clock) >= self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Lets one request through an open circuit per cool-down period.
    fn try_half_open(&self) -> bool {
        let now = now_ms(&self.clock);
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if now < until {
            return false;
        }
        self.open_until_ms
            .compare_exchange(
                until,
                now + CIRCUIT_COOLDOWN.as_millis() as u64,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Relaxed);
    }

    fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.origin.health.fall {
            self.open_until_ms.store(
                now_ms(&self.clock) + CIRCUIT_COOLDOWN.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// The origin URI for a client request target.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let mut parts = self.origin.url.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse()?);
        Ok(Uri::from_parts(parts)?)
    }

    /// Sends one request to this origin, applying its response timeout.
    pub async fn send(&self, req: Request<UpBody>) -> Result<Response<Incoming>, UpstreamError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let res =
            tokio::time::timeout(self.origin.response_timeout, self.client.request(req)).await;
        self.latency.observe(started.elapsed());
        let res = match res {
            Err(_) => Err(UpstreamError::Timeout {
                origin: self.name.clone(),
                timeout: self.origin.response_timeout,
            }),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect {
                origin: self.name.clone(),
                detail: error_chain(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                origin: self.name.clone(),
                detail: error_chain(&e),
            }),
            Ok(Ok(resp)) => Ok(resp),
        };
        // The breaker measures reachability: a 5xx or a reset mid-exchange proves the origin is
        // there (those are handled per URL by the proxy); refused connections and silence do not.
        match &res {
            Ok(r) => {
                if r.status().is_server_error() {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
                self.record_success();
            }
            Err(UpstreamError::Connect { .. } | UpstreamError::Timeout { .. }) => {
                self.record_failure()
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        res
    }

    fn start_health_checks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut ok_streak = 0u32;
            let mut fail_streak = 0u32;
            loop {
                let interval = match weak.upgrade() {
                    Some(o) => o.origin.health.interval,
                    None => return,
                };
                tokio::time::sleep(interval).await;
                let Some(o) = weak.upgrade() else { return };
                let ok = o.probe().await;
                if ok {
                    ok_streak += 1;
                    fail_streak = 0;
                    if !o.is_healthy() && ok_streak >= o.origin.health.rise {
                        tracing::info!(origin = %o.name, "origin is back up");
                        o.record_success();
                        o.healthy.store(true, Ordering::Relaxed);
                    }
                } else {
                    fail_streak += 1;
                    ok_streak = 0;
                    if o.is_healthy() && fail_streak >= o.origin.health.fall {
                        tracing::warn!(origin = %o.name, "origin is down");
                        o.healthy.store(false, Ordering::Relaxed);
                    }
                }
            }
        });
        if let Ok(mut slot) = self.health_task.lock() {
            *slot = Some(task);
        }
    }

    async fn probe(&self) -> bool {
        let Ok(uri) = self.uri_for(&self.origin.health.path) else {
            return false;
        };
        let mut req = Request::get(uri);
        if let Some(h) = &self.origin.host {
            req = req.header(http::header::HOST, h.as_str());
        }
        req = req.header(http::header::USER_AGENT, "relais-health/1");
        let Ok(req) = req.body(empty_body()) else {
            return false;
        };
        match tokio::time::timeout(self.origin.health.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => !resp.status().is_server_error(),
            _ => false,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn empty_body() -> UpBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// All origin states, shared across config generations by origin identity so that a reload
/// keeps pools and health.
#[derive(Default)]
pub struct Upstreams {
    by_id: Mutex<HashMap<String, Arc<OriginState>>>,
}

impl Upstreams {
    /// Origin states for a site's origins, reusing existing ones.
    pub fn resolve(
        &self,
        origins: &[Origin],
        clock: &SharedClock,
        health_checks: bool,
    ) -> Result<Vec<Arc<OriginState>>, String> {
        let mut map = self
            .by_id
            .lock()
            .map_err(|_| "origin table poisoned".to_string())?;
        let mut out = Vec::with_capacity(origins.len());
        for o in origins {
            let id = o.id();
            if let Some(s) = map.get(&id)
                && s.origin.health == o.health
            {
                out.push(s.clone());
                continue;
            }
            let s = OriginState::new(o.clone(), clock.clone())?;
            if health_checks {
                s.start_health_checks();
            }
            map.insert(id, s.clone());
            out.push(s);
        }
        Ok(out)
    }

    /// Forgets origins no longer referenced by `keep`.
    pub fn retain(&self, keep: &[Arc<OriginState>]) {
        if let Ok(mut map) = self.by_id.lock() {
            let keep: std::collections::HashSet<*const OriginState> =
                keep.iter().map(Arc::as_ptr).collect();
            map.retain(|_, v| keep.contains(&Arc::as_ptr(v)));
        }
    }
}

/// The origins to try for one request, in order: available ones first; if none is, at most
/// one half-open probe.
pub fn plan(origins: &[Arc<OriginState>]) -> Vec<Arc<OriginState>> {
    let avail: Vec<_> = origins
        .iter()
        .filter(|o| o.is_available())
        .cloned()
        .collect();
    if !avail.is_empty() {
        return avail;
    }
    origins
        .iter()
        .find(|o| o.is_healthy() && o.try_half_open())
        .or_else(|| origins.iter().find(|o| o.try_half_open()))
        .cloned()
        .into_iter()
        .collect()
}

pub fn any_available(origins: &[Arc<OriginState>]) -> bool {
    origins.iter().any(|o| o.is_available())
}
