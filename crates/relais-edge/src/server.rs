//! Listeners: plain HTTP, TLS (HTTP/1.1 and HTTP/2 by ALPN), and the admin port. Each accepted
//! connection is served by hyper in its own task; shutdown stops accepting and lets open
//! connections finish their requests.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, ReloadHook};
use crate::proxy::{ConnInfo, Edge};

/// How long open connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(30);

/// A started edge: the addresses it actually bound (useful with port 0) and its tasks.
pub struct Running {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    edge: Arc<Edge>,
}

impl Running {
    /// Stops accepting, lets connections drain, waits for the accept loops, and writes the
    /// last access-log lines.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(log) = self.edge.access_log.clone() {
            let _ = tokio::task::spawn_blocking(move || log.flush()).await;
        }
    }
}

async fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    if reuse_port {
        sock.set_reuseport(true)?;
    }
    sock.set_nodelay(true)?;
    sock.bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    sock.listen(4096)
}

/// Binds every listener of the edge's current configuration and starts serving.
pub async fn start(edge: Arc<Edge>, reload: Option<ReloadHook>) -> io::Result<Running> {
    let cfg = edge.snapshot().config.clone();
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(dir) = cfg.stats_dir.clone() {
        edge.set_stats(true);
        tasks.push(tokio::spawn(write_stats(edge.clone(), dir, rx.clone())));
    }
    let mut http = Vec::new();
    for addr in &cfg.listen {
        let l = bind(*addr, cfg.reuse_port).await?;
        http.push(l.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(l, edge.clone(), None, rx.clone())));
    }
    let mut https = Vec::new();
    if !cfg.listen_tls.is_empty() {
        let tls = crate::tls::server_config(edge.certs.clone()).map_err(io::Error::other)?;
        let acceptor = TlsAcceptor::from(tls);
        for addr in &cfg.listen_tls {
            let l = bind(*addr, cfg.reuse_port).await?;
            https.push(l.local_addr()?);
            tasks.push(tokio::spawn(accept_loop(
                l,
                edge.clone(),
                Some(acceptor.clone()),
                rx.clone(),
            )));
        }
    }
    let mut admin_addr = None;
    if let Some(addr) = cfg.admin {
        let l = bind(addr, cfg.reuse_port).await?;
        admin_addr = Some(l.local_addr()?);
        tasks.push(tokio::spawn(admin::serve(
            l,
            edge.clone(),
            reload,
            rx.clone(),
        )));
    }
    Ok(Running {
        http,
        https,
        admin: admin_addr,
        shutdown: tx,
        tasks,
        edge,
    })
}

async fn accept_loop(
    listener: TcpListener,
    edge: Arc<Edge>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, remote)) => {
                        edge.metrics.connections.fetch_add(1, Ordering::Relaxed);
                        conns.spawn(serve_conn(stream, remote, edge.clone(), tls.clone(), shutdown.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_conn(
    stream: TcpStream,
    remote: SocketAddr,
    edge: Arc<Edge>,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = edge.snapshot().config.limits;
    match tls {
        None => {
            let info = ConnInfo {
                remote,
                tls: false,
                sni: None,
            };
            serve_io(TokioIo::new(stream), info, edge, limits, shutdown).await
        }
        Some(acc) => {
            let hs = tokio::time::timeout(limits.header_timeout, acc.accept(stream)).await;
            let tls_stream = match hs {
                Ok(Ok(s)) => s,
                _ => {
                    edge.metrics
                        .tls_handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let sni = tls_stream.get_ref().1.server_name().map(str::to_owned);
            let info = ConnInfo {
                remote,
                tls: true,
                sni,
            };
            serve_io(TokioIo::new(tls_stream), info, edge, limits, shutdown).await
        }
    }
}

async fn serve_io<I>(
    io: TokioIo<I>,
    info: ConnInfo,
    edge: Arc<Edge>,
    limits: crate::config::Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let edge = edge.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(edge.handle(req, info).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// Appends closed statistics minutes to `dir/YYYY-MM-DD.jsonl` every 10 seconds and at shutdown
/// (edges without a control plane).
async fn write_stats(edge: Arc<Edge>, dir: std::path::PathBuf, mut stop: watch::Receiver<bool>) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(error = %e, dir = %dir.display(), "statistics directory; statistics are off");
        edge.set_stats(false);
        return;
    }
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => false,
            _ = stop.changed() => true,
        };
        let minutes = edge.take_stats();
        let mut by_day: std::collections::BTreeMap<i64, String> = Default::default();
        for m in minutes {
            if let Ok(line) = serde_json::to_string(&m) {
                let day = by_day.entry(m.minute.div_euclid(1440)).or_default();
                day.push_str(&line);
                day.push('\n');
            }
        }
        for (day, text) in by_day {
            let path = dir.join(format!("{}.jsonl", crate::accesslog::date_string(day)));
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
            if let Err(e) = r {
                tracing::warn!(error = %e, file = %path.display(), "statistics not written");
            }
        }
        if stopping {
            return;
        }
    }
}
