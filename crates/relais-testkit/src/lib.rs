//! Test helpers shared by the integration suites: a scriptable origin server on port 0 that
//! records what it receives (count, peak concurrency), a raw TCP client for malformed
//! requests, and self-signed certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the origin answers one request.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Wait this long before sending the response head.
    pub delay: Duration,
}

pub enum ReplyBody {
    Full(Bytes),
    /// Chunks sent as the test pushes them; the body ends when the sender is dropped.
    Channel(mpsc::Receiver<Bytes>),
    /// Sends the head and these bytes, then breaks the connection (a broken origin).
    Truncated(Bytes),
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self {
            status: StatusCode::OK,
            headers: vec![],
            body: ReplyBody::Full(body.into()),
            delay: Duration::ZERO,
        }
    }

    pub fn status(mut self, s: u16) -> Self {
        self.status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn channel(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            status: StatusCode::OK,
            headers: vec![],
            body: ReplyBody::Channel(rx),
            delay: Duration::ZERO,
        }
    }
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A scriptable origin.
pub struct Origin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

type DateSource = Option<Arc<dyn Fn() -> SystemTime + Send + Sync>>;

/// State shared by the accept loop, every connection and the test.
struct Shared {
    hits: AtomicUsize,
    connections: AtomicUsize,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    log: Mutex<Vec<Seen>>,
    handler: Mutex<Handler>,
    date: Mutex<DateSource>,
}

/// Answers one request: records it, asks the handler, stamps `Date` if a clock is set.
async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let now = shared.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_inflight.fetch_max(now, Ordering::SeqCst);
    shared.log.lock().expect("log").push(seen.clone());
    let handler = shared.handler.lock().expect("handler").clone();
    let reply = handler(&seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    shared.inflight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = build(reply);
    let source = shared.date.lock().expect("date").clone();
    if let Some(now) = source
        && !resp.headers().contains_key(http::header::DATE)
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now()))
    {
        resp.headers_mut().insert(http::header::DATE, v);
    }
    Ok(resp)
}

impl Origin {
    /// Starts on 127.0.0.1:0.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Arc<Origin> {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), Arc::new(handler)).await
    }

    /// Starts on a given address (to restart an origin where it was).
    pub async fn start_on(addr: SocketAddr, handler: Handler) -> Arc<Origin> {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            handler: Mutex::new(handler),
            date: Mutex::new(None),
        });
        let o = Arc::new(Origin {
            addr,
            shared: shared.clone(),
            task: Mutex::new(None),
            conns: Arc::default(),
        });
        let conns = o.conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(shared.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                conns.lock().expect("conns").push(conn);
            }
        });
        *o.task.lock().expect("task") = Some(task);
        o
    }

    /// Stamps `Date` from this clock (the same one the edge under test reads), so that ages
    /// computed from `Date` agree with the test's notion of time.
    pub fn set_clock(&self, now: impl Fn() -> SystemTime + Send + Sync + 'static) {
        *self.shared.date.lock().expect("date") = Some(Arc::new(now));
    }

    /// Replaces how the origin answers.
    pub fn set_handler(&self, h: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.shared.handler.lock().expect("handler") = Arc::new(h);
    }

    /// Stops listening and cuts every open connection: the origin is down.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().expect("task").take() {
            t.abort();
        }
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }

    /// Starts again on the same address with the same handler.
    pub async fn restart(&self) -> Arc<Origin> {
        let h = self.shared.handler.lock().expect("handler").clone();
        let o = Origin::start_on(self.addr, h).await;
        *o.shared.date.lock().expect("date") = self.shared.date.lock().expect("date").clone();
        o
    }

    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn max_concurrency(&self) -> usize {
        self.shared.max_inflight.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().expect("log").clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn build(reply: Reply) -> Response<OriginBody> {
    let mut truncated_len = None;
    let body: OriginBody = match reply.body {
        ReplyBody::Full(b) => http_body_util::Full::new(b).map_err(|e| match e {}).boxed(),
        ReplyBody::Channel(rx) => {
            let s = futures_stream(rx);
            StreamBody::new(s).boxed()
        }
        ReplyBody::Truncated(b) => {
            // Declare more than is sent, flush what is sent, then end: the origin's server
            // closes the connection mid-body.
            truncated_len = Some(b.len() + 1000);
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let _ = tx.send(b).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(tx);
            });
            StreamBody::new(futures_stream(rx)).boxed()
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = reply.status;
    if let Some(len) = truncated_len {
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

struct ChanStream(mpsc::Receiver<Bytes>);

impl tokio_stream_like::Stream for ChanStream {
    type Item = Result<Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// `Stream` is re-exported by http-body-util's StreamBody bound through futures-core.
mod tokio_stream_like {
    pub use futures_core::Stream;
}

fn futures_stream(rx: mpsc::Receiver<Bytes>) -> ChanStream {
    ChanStream(rx)
}

/// Sends raw bytes and returns everything the server answers until it closes or goes quiet.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_request_quiet_after(addr, bytes, Duration::from_secs(2)).await
}

/// Like [`raw_request`], giving up once the server has been quiet for `quiet`.
pub async fn raw_request_quiet_after(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything; that is an answer too.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A self-signed certificate for `hosts`, written as PEM files into `dir`.
pub fn write_cert(dir: &Path, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf, String) {
    let ck =
        rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .expect("cert");
    let cert_pem = ck.cert.pem();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key, cert_pem)
}

/// Polls `cond` until it holds or `within` passes; for readiness, never for timing assertions.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A message received by [`SmtpSink`].
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The DATA section (headers and body), dot-unstuffed.
    pub data: String,
}

/// A small SMTP server on loopback that accepts every message and keeps it, so tests can read
/// what a real SMTP client sent (RFC 5321 commands: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP,
/// QUIT).
pub struct SmtpSink {
    pub addr: SocketAddr,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp sink");
        let addr = listener.local_addr().expect("addr");
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let store = mails.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = smtp_session(stream, store).await;
                });
            }
        });
        SmtpSink { addr, mails, task }
    }

    pub fn received(&self) -> Vec<Mail> {
        self.mails.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

async fn smtp_session(
    stream: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            w.write_all(b"250-sink.test\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            w.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            w.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().trim_matches(['<', '>']).to_owned();
            w.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(cmd[8..].trim().trim_matches(['<', '>']).to_owned());
            w.write_all(b"250 ok\r\n").await?;
        } else if upper == "DATA" {
            w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            if let Ok(mut m) = store.lock() {
                m.push(Mail {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
            }
            w.write_all(b"250 queued\r\n").await?;
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"502 not implemented\r\n").await?;
        }
    }
}
