//! Relais control plane: organisations, accounts, the JSON API, the audit journal, site
//! versions (draft → publish → rollback), purge receipts, and configuration distribution to
//! edges.
//!
//! Entry points: [`Control::open`] (database + state), [`serve`] (the HTTP listener: API under
//! `/api/v1`, OpenAPI at `/api/openapi.json`, edge stream under `/edge/v1`).
//!
//! Invariants:
//! - Every write runs in one transaction with its audit entry, under one writer lock (plus an
//!   advisory lock on PostgreSQL), so sequence numbers and the audit chain follow commit order.
//! - A purge is committed before its receipt is returned; edges read purges from the database
//!   by sequence, so an edge that was away receives every purge it missed.
//! - Objects of an organisation the caller cannot read answer 404.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod db;
pub mod definition;
pub mod edges;
pub mod error;
pub mod keys;
pub mod logs;
pub mod mail;
pub mod members;
pub mod openapi;
pub mod sftp;
pub mod sheets;
pub mod sites;
pub mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use relais_edge::clock::SharedClock;
use tokio::sync::watch;

pub use db::{Backend, Db, DbError};

/// Options of the control plane.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Staging host names are `<site>.<staging_domain>`.
    pub staging_domain: String,
    /// Where edges' access logs are kept (none: edges keep them).
    pub log_store: Option<std::path::PathBuf>,
    /// The operator's SMTP relay (none: no mail is sent).
    pub smtp: Option<mail::SmtpConfig>,
    /// The extranet's public address, for links in messages.
    pub public_url: Option<String>,
    /// How long per-minute statistics are kept (days).
    pub stats_minutes_days: i64,
    /// How long hourly statistics are kept (days); daily ones are kept without limit.
    pub stats_hours_days: i64,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            staging_domain: "staging.localhost".into(),
            log_store: None,
            smtp: None,
            public_url: None,
            stats_minutes_days: 7,
            stats_hours_days: 400,
        }
    }
}

/// Sequence heads, broadcast to edge streams after each commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heads {
    pub config_seq: i64,
    pub purge_seq: i64,
}

/// The control plane's shared state.
pub struct Control {
    pub db: Db,
    pub clock: SharedClock,
    pub opts: ControlOptions,
    /// Serialises writes (see the crate invariants).
    pub writer: tokio::sync::Mutex<()>,
    pub heads: watch::Sender<Heads>,
    /// Bumped on every edge acknowledgement (purge receipts wait on it).
    pub acks: watch::Sender<u64>,
    pub(crate) throttle: Mutex<HashMap<String, (u32, std::time::SystemTime)>>,
    pub logs: Option<logs::LogStore>,
    pub mailer: Option<mail::Mailer>,
    /// Serialises "logs ready" messages (one sender per site-day).
    pub(crate) notify_lock: tokio::sync::Mutex<()>,
}

impl Control {
    /// Opens the database (migrating it) and loads the sequence heads.
    pub async fn open(
        url: &str,
        clock: SharedClock,
        opts: ControlOptions,
    ) -> Result<Arc<Control>, DbError> {
        let db = Db::connect(url).await?;
        let heads = Heads {
            config_seq: db.counter("config_seq").await?,
            purge_seq: edges::purge_head(&db).await?,
        };
        let mailer = match &opts.smtp {
            Some(c) => {
                Some(mail::Mailer::new(c).map_err(|e| DbError::Url(format!("SMTP relay: {e}")))?)
            }
            None => None,
        };
        Ok(Arc::new(Control {
            mailer,
            logs: opts.log_store.clone().map(logs::LogStore::new),
            db,
            clock,
            opts,
            writer: tokio::sync::Mutex::new(()),
            heads: watch::channel(heads).0,
            acks: watch::channel(0).0,
            throttle: Mutex::new(HashMap::new()),
            notify_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Tells edge streams that something was committed.
    pub fn notify(&self, config_seq: Option<i64>, purge_seq: Option<i64>) {
        self.heads.send_modify(|h| {
            if let Some(c) = config_seq {
                h.config_seq = h.config_seq.max(c);
            }
            if let Some(p) = purge_seq {
                h.purge_seq = h.purge_seq.max(p);
            }
        });
    }
}

/// A running control-plane listener.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests finish for up to 2 s (edge streams never finish on their
    /// own), then stops.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds and serves the API.
pub async fn serve(control: Arc<Control>, addr: SocketAddr) -> std::io::Result<Running> {
    let app = api::router(control);
    serve_app(app, addr).await
}

/// Binds and serves the API together with other routes (the extranet); `fallback` answers
/// what neither knows outside `/api` and `/edge`.
pub async fn serve_with<F, T>(
    control: Arc<Control>,
    addr: SocketAddr,
    web: axum::Router,
    fallback: F,
) -> std::io::Result<Running>
where
    F: axum::handler::Handler<T, ()>,
    T: 'static,
{
    let api_fallback = axum::Router::new()
        .route("/api/{*rest}", axum::routing::any(api::no_route))
        .route("/edge/{*rest}", axum::routing::any(api::no_route));
    let app = api::routes(control)
        .merge(api_fallback)
        .merge(web)
        .fallback(fallback);
    serve_app(app, addr).await
}

async fn serve_app(app: axum::Router, addr: SocketAddr) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let r = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = rx.await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "control plane listener failed");
        }
    });
    Ok(Running {
        addr,
        shutdown: Some(tx),
        task,
    })
}
