//! The demo origin behind `relais serve`: a few pages that show caching at work, and
//! `/bytes/N` objects for benchmarks. It is deliberately tiny and dependency-free.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

static SERVED: AtomicU64 = AtomicU64::new(0);

pub async fn start_origin(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    Ok(local)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path();
    let (ctype, cc, body): (&str, &str, Bytes) = if let Some(size) = path.strip_prefix("/bytes/") {
        let size: usize = size.parse().unwrap_or(0).min(64 << 20);
        (
            "application/octet-stream",
            "public, max-age=3600",
            Bytes::from(vec![b'r'; size]),
        )
    } else if path == "/" || path == "/index.html" {
        (
            "text/html; charset=utf-8",
            "public, max-age=60",
            Bytes::from(page(n)),
        )
    } else if path == "/time" {
        (
            "text/plain; charset=utf-8",
            "public, max-age=5",
            Bytes::from(format!(
                "{}\n",
                httpdate::fmt_http_date(std::time::SystemTime::now())
            )),
        )
    } else if path == "/private" {
        (
            "text/plain; charset=utf-8",
            "private, no-store",
            Bytes::from_static(b"personal content, never cached\n"),
        )
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=30"),
        );
        return Ok(r);
    };
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static(cc));
    h.insert("surrogate-key", http::HeaderValue::from_static("demo"));
    Ok(r)
}

fn page(n: u64) -> String {
    format!(
        "<!doctype html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Relais — site de démonstration</title></head>\n\
<body><main><h1>Site de démonstration Relais</h1>\n\
<p>Cette page est servie par le cache de Relais. L'origine l'a produite pour la requête n° {n}.</p>\n\
<p>Rechargez : l'en-tête <code>Cache-Status</code> indique <code>hit</code> tant que la page est fraîche (60 s).</p>\n\
<ul><li><a href=\"/time\">/time</a> — frais 5 s</li><li><a href=\"/private\">/private</a> — jamais mis en cache</li>\
<li><a href=\"/bytes/102400\">/bytes/102400</a> — objet de 100 Kio</li></ul>\n\
<p lang=\"en\">This page is served through the Relais cache; the origin built it for request #{n}.</p></main></body></html>\n"
    )
}
