//! An edge that follows a control plane (`relais edge --control URL`).
//!
//! Invariants:
//! - The edge keeps serving its last good configuration when the control plane is away or sends
//!   something invalid; that configuration is kept on disk (`snapshot.json`) so a restart
//!   without the control plane serves it too.
//! - Purges are applied in sequence order; the sequence reached is written to disk
//!   (`purge_seq`) before it is acknowledged, and the stream resumes from it, so no
//!   acknowledged purge is skipped.
//! - The edge vouches for its cache only while it hears from the control plane (a ping within
//!   the lease) and has applied every purge up to the head the ping announced. Otherwise stored
//!   objects are revalidated before use ([`Edge::set_vouched`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::Edge;
use crate::accesslog::write_atomic;
use crate::config::{Config, ConfigError, FileConfig};
use crate::proto::{Ack, EdgeState, Message, PurgeMsg, sites_for};

/// Longest line accepted from the control plane (a full snapshot of many sites).
const MAX_LINE: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:8090`.
    pub control: String,
    /// This edge's token (created with `POST /api/v1/edges`).
    pub token: String,
    /// Where the last good snapshot and the purge sequence are kept.
    pub state_dir: PathBuf,
    /// Edge and cache settings (its `[[site]]` list is ignored: sites come from the control
    /// plane).
    pub base: FileConfig,
    /// How long the edge vouches for its cache without hearing from the control plane.
    pub lease: Duration,
    /// Addresses reported to the control plane.
    pub listen: Vec<String>,
    /// How often closed access-log days are delivered to the control plane.
    pub ship_every: Duration,
}

/// Builds the configuration an edge serves for a state.
pub fn build_config(base: &FileConfig, state: &EdgeState) -> Result<Config, ConfigError> {
    let mut file = base.clone();
    file.sites = sites_for(state);
    Config::for_follower(file)
}

/// Reads the state kept on disk (empty when there is none or it cannot be read).
pub fn load_state(dir: &Path) -> (EdgeState, u64) {
    let state = std::fs::read(dir.join("snapshot.json"))
        .ok()
        .and_then(|b| match serde_json::from_slice(&b) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "stored snapshot unreadable, starting empty");
                None
            }
        })
        .unwrap_or_default();
    let seq = std::fs::read_to_string(dir.join("purge_seq"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (state, seq)
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Follower {
    edge: Arc<Edge>,
    opts: FollowOptions,
    client: HttpsClient,
    /// What the control plane last sent (may be invalid).
    received: Mutex<EdgeState>,
    good_seq: AtomicU64,
    purge_seq: AtomicU64,
    connected: AtomicBool,
    /// When the last ping arrived and the purge head it announced.
    last_ping: Mutex<Option<(Instant, u64)>>,
    ack: watch::Sender<Ack>,
}

/// Running follower tasks; stopped on drop.
pub struct FollowHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FollowHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts following. The edge should have been created from [`load_state`] +
/// [`build_config`]; it is marked unvouched until it has caught up.
pub fn spawn(edge: Arc<Edge>, opts: FollowOptions) -> Result<FollowHandle, String> {
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.state_dir.display()))?;
    let (state, purge_seq) = load_state(&opts.state_dir);
    edge.set_vouched(false);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).build(https);
    let (ack, ack_rx) = watch::channel(Ack {
        config_seq: state.config_seq,
        purge_seq,
        config_error: None,
        vouched: false,
        listen: opts.listen.clone(),
        origins_down: vec![],
    });
    let f = Arc::new(Follower {
        edge,
        good_seq: AtomicU64::new(state.config_seq),
        received: Mutex::new(state),
        purge_seq: AtomicU64::new(purge_seq),
        connected: AtomicBool::new(false),
        last_ping: Mutex::new(None),
        ack,
        client,
        opts,
    });
    let mut tasks = vec![
        tokio::spawn(f.clone().run()),
        tokio::spawn(f.clone().send_acks(ack_rx)),
        tokio::spawn(f.clone().watchdog()),
    ];
    if f.edge.access_log.is_some() {
        tasks.push(tokio::spawn(f.clone().ship_logs()));
    }
    f.edge.set_stats(true);
    tasks.push(tokio::spawn(f.ship_stats()));
    Ok(FollowHandle { tasks })
}

impl Follower {
    /// A request to the control plane, with this edge's token.
    fn to_control(&self, method: Method, uri: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.opts.token))
    }

    async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session().await {
                Ok(()) => tracing::warn!("control plane closed the stream"),
                Err(e) => tracing::warn!(error = %e, "control plane unreachable"),
            }
            if self.connected.swap(false, Ordering::SeqCst) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn session(&self) -> Result<(), String> {
        let uri = format!(
            "{}/edge/v1/stream?config_seq={}&purge_seq={}",
            self.opts.control.trim_end_matches('/'),
            self.good_seq.load(Ordering::SeqCst),
            self.purge_seq.load(Ordering::SeqCst)
        );
        let req = self
            .to_control(Method::GET, &uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("{uri}: status {}", resp.status()));
        }
        self.connected.store(true, Ordering::SeqCst);
        tracing::info!(control = %self.opts.control, "following the control plane");
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let silence = self.opts.lease.max(Duration::from_secs(3));
        loop {
            let frame = match tokio::time::timeout(silence, body.frame()).await {
                Err(_) => return Err("no news from the control plane".into()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            let mut purged = false;
            let mut changed = false;
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                let line = &line[..pos];
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Message>(line) {
                    Ok(m) => {
                        let (p, c) = self.handle(m);
                        purged |= p;
                        changed |= c;
                    }
                    Err(e) => return Err(format!("bad message from control plane: {e}")),
                }
            }
            // Configuration changes that arrived together are applied together.
            if changed {
                self.apply_received();
            }
            if buf.len() > MAX_LINE {
                return Err("message from control plane too long".into());
            }
            if buf.is_empty() {
                buf = BytesMut::new();
            } else if buf.capacity() > 4 * buf.len() + 4096 {
                let rest = buf.copy_to_bytes(buf.len());
                buf = BytesMut::from(&rest[..]);
            }
            if purged {
                let seq = self.purge_seq.load(Ordering::SeqCst);
                if let Err(e) = write_atomic(
                    &self.opts.state_dir.join("purge_seq"),
                    seq.to_string().as_bytes(),
                ) {
                    tracing::error!(error = %e, "cannot record purge progress");
                }
                self.ack.send_modify(|a| a.purge_seq = seq);
            }
        }
    }

    /// Handles one message: (purges applied, configuration changed).
    fn handle(&self, m: Message) -> (bool, bool) {
        match m {
            Message::Snapshot {
                config_seq,
                staging_domain,
                sites,
            } => {
                self.update(|s| {
                    *s = EdgeState {
                        config_seq,
                        staging_domain,
                        sites,
                    }
                });
                (false, true)
            }
            Message::Site {
                config_seq,
                name,
                entry,
            } => {
                self.update(|s| {
                    s.config_seq = config_seq;
                    match entry {
                        Some(e) => {
                            s.sites.insert(name, *e);
                        }
                        None => {
                            s.sites.remove(&name);
                        }
                    }
                });
                (false, true)
            }
            Message::Purge(p) => {
                self.purge(&p);
                (true, false)
            }
            Message::Ping {
                config_seq: _,
                purge_seq,
            } => {
                if let Ok(mut l) = self.last_ping.lock() {
                    *l = Some((Instant::now(), purge_seq));
                }
                self.check_vouched();
                (false, false)
            }
        }
    }

    fn purge(&self, p: &PurgeMsg) {
        let cur = self.purge_seq.load(Ordering::SeqCst);
        if p.seq <= cur {
            return;
        }
        let values: Vec<&str> = if p.kind == "all" {
            vec![""]
        } else {
            p.values.iter().map(String::as_str).collect()
        };
        let mut n = 0;
        for v in values {
            match self.edge.purge_described(&p.site, &p.kind, v, p.soft) {
                Ok(k) => n += k,
                Err(e) => tracing::warn!(seq = p.seq, error = %e, "purge refused"),
            }
        }
        tracing::debug!(seq = p.seq, site = %p.site, objects = n, "purge applied");
        self.purge_seq.store(p.seq, Ordering::SeqCst);
    }

    fn update(&self, f: impl FnOnce(&mut EdgeState)) {
        if let Ok(mut state) = self.received.lock() {
            f(&mut state);
        }
    }

    /// Builds and applies what was received; on success keeps it on disk.
    fn apply_received(&self) {
        let Ok(state) = self.received.lock() else {
            return;
        };
        let seq = state.config_seq;
        let t0 = Instant::now();
        let res = build_config(&self.opts.base, &state).map_err(|e| e.to_string());
        let t_build = t0.elapsed();
        match self.edge.reload(res) {
            Ok(_) => {
                let t_apply = t0.elapsed() - t_build;
                tracing::info!(
                    config_seq = seq,
                    sites = state.sites.len(),
                    validate_ms = t_build.as_millis() as u64,
                    swap_ms = t_apply.as_millis() as u64,
                    "configuration from the control plane applied"
                );
                self.good_seq.store(seq, Ordering::SeqCst);
                match serde_json::to_vec(&*state) {
                    Ok(b) => {
                        if let Err(e) = write_atomic(&self.opts.state_dir.join("snapshot.json"), &b)
                        {
                            tracing::error!(error = %e, "cannot keep the snapshot on disk");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode the snapshot"),
                }
                self.ack.send_modify(|a| {
                    a.config_seq = seq;
                    a.config_error = None;
                });
            }
            Err(e) => {
                self.ack.send_modify(|a| a.config_error = Some(e));
            }
        }
    }

    /// Reports origins that went down or came back.
    fn check_origins(&self) {
        let snap = self.edge.snapshot();
        let mut down: Vec<(String, String)> = snap
            .sites
            .iter()
            .flat_map(|s| {
                s.origins
                    .iter()
                    .filter(|o| !o.is_available())
                    .map(move |o| (s.site.name.clone(), o.name.clone()))
            })
            .collect();
        down.sort();
        self.ack.send_if_modified(|a| {
            let changed = a.origins_down != down;
            if changed {
                a.origins_down = down;
            }
            changed
        });
    }

    fn check_vouched(&self) {
        let ping = self.last_ping.lock().ok().and_then(|l| *l);
        let v = self.connected.load(Ordering::SeqCst)
            && ping.is_some_and(|(at, head)| {
                at.elapsed() < self.opts.lease && self.purge_seq.load(Ordering::SeqCst) >= head
            });
        self.edge.set_vouched(v);
        self.ack.send_if_modified(|a| {
            let changed = a.vouched != v;
            a.vouched = v;
            changed
        });
    }

    async fn watchdog(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            self.check_vouched();
            self.check_origins();
        }
    }

    /// Delivers closed access-log days to the control plane's log store, oldest first; a day is
    /// marked shipped (and its compressed file removed) only once the control plane has checked
    /// it against its manifest. Undelivered days wait on disk.
    async fn ship_logs(self: Arc<Self>) {
        let Some(log) = self.edge.access_log.clone() else {
            return;
        };
        let dir = log.dir().to_path_buf();
        let uri = format!("{}/edge/v1/logs", self.opts.control.trim_end_matches('/'));
        let mut tick = tokio::time::interval(self.opts.ship_every);
        loop {
            tick.tick().await;
            let d = dir.clone();
            let pending = tokio::task::spawn_blocking(move || unshipped(&d))
                .await
                .unwrap_or_default();
            for (manifest_path, gz_path) in pending {
                let Ok(manifest) = std::fs::read(&manifest_path) else {
                    continue;
                };
                let Ok(gz) = tokio::fs::read(&gz_path).await else {
                    continue;
                };
                let compact = serde_json::from_slice::<serde_json::Value>(&manifest)
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let req = self
                    .to_control(Method::PUT, &uri)
                    .header("x-relais-manifest", compact)
                    .header(header::CONTENT_TYPE, "application/gzip")
                    .body(Full::new(Bytes::from(gz)));
                let Ok(req) = req else { continue };
                match self.client.request(req).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.into_body().collect().await;
                        let marker = manifest_path.with_extension("shipped");
                        if let Err(e) = std::fs::write(&marker, b"") {
                            tracing::warn!(error = %e, "cannot mark a log day shipped");
                            continue;
                        }
                        let _ = std::fs::remove_file(&gz_path);
                        tracing::info!(file = %gz_path.display(), "access-log day delivered");
                    }
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), file = %gz_path.display(), "log store refused a day");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "log store unreachable");
                        break;
                    }
                }
            }
        }
    }

    /// Collects closed statistics minutes, writes them as a numbered batch under
    /// `state_dir/stats` and delivers pending batches in order; a batch file is removed once the
    /// control plane has accepted it (it ignores a number it has already counted).
    async fn ship_stats(self: Arc<Self>) {
        let dir = self.opts.state_dir.join("stats");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(error = %e, "cannot create the statistics spool; statistics are off");
            self.edge.set_stats(false);
            return;
        }
        let uri = format!("{}/edge/v1/stats", self.opts.control.trim_end_matches('/'));
        let mut seq = stats_seq(&dir);
        let mut tick = tokio::time::interval(self.opts.ship_every.min(Duration::from_secs(10)));
        loop {
            tick.tick().await;
            let minutes = self.edge.take_stats();
            if !minutes.is_empty() {
                seq += 1;
                let batch = crate::stats::Batch { seq, minutes };
                let written = serde_json::to_vec(&batch)
                    .map_err(std::io::Error::other)
                    .and_then(|b| write_atomic(&dir.join(format!("{seq:016}.json")), &b))
                    .and_then(|()| write_atomic(&dir.join("seq"), seq.to_string().as_bytes()));
                if let Err(e) = written {
                    tracing::warn!(error = %e, "statistics batch not spooled");
                }
            }
            for path in pending_batches(&dir) {
                let Ok(body) = tokio::fs::read(&path).await else {
                    continue;
                };
                let req = self
                    .to_control(Method::POST, &uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(req) = req else { continue };
                match self.client.request(req).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.into_body().collect().await;
                        let _ = std::fs::remove_file(&path);
                    }
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), file = %path.display(), "control plane refused a statistics batch");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "control plane unreachable for statistics");
                        break;
                    }
                }
            }
        }
    }

    async fn send_acks(self: Arc<Self>, mut rx: watch::Receiver<Ack>) {
        let uri = format!("{}/edge/v1/ack", self.opts.control.trim_end_matches('/'));
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            loop {
                let ack = rx.borrow_and_update().clone();
                let Ok(body) = serde_json::to_vec(&ack) else {
                    break;
                };
                let req = self
                    .to_control(Method::POST, &uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                let ok = match req {
                    Ok(req) => match self.client.request(req).await {
                        Ok(r) => {
                            let ok = r.status().is_success();
                            let _ = r.into_body().collect().await;
                            ok
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The last batch number used: the larger of the saved counter and any batch still waiting.
fn stats_seq(dir: &Path) -> u64 {
    let saved = std::fs::read_to_string(dir.join("seq"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    pending_batches(dir)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .fold(saved, u64::max)
}

/// Statistics batches waiting for delivery, oldest first.
fn pending_batches(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && p.file_stem()
                            .and_then(|s| s.to_str())
                            .is_some_and(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Closed days not yet delivered: (manifest, compressed file), oldest first.
fn unshipped(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = vec![];
    let Ok(sites) = std::fs::read_dir(dir) else {
        return out;
    };
    for s in sites.flatten() {
        let Ok(files) = std::fs::read_dir(s.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(stem) = name.strip_suffix(".manifest.json") else {
                continue;
            };
            let gz = p.with_file_name(format!("{stem}.log.gz"));
            if gz.exists() && !p.with_extension("shipped").exists() {
                out.push((p, gz));
            }
        }
    }
    out.sort();
    out
}
