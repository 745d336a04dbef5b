//! The admin listener (loopback by default): `/metrics` (Prometheus), `/healthz`, `/status`
//! (JSON), `POST /purge` and `POST /reload`. State-changing calls need the purge secret as a
//! bearer token when one is configured.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cache::{self, PurgeTarget};
use crate::config::normalize_host;
use crate::proxy::Edge;

/// Re-reads the configuration from wherever it came from; returns the new generation.
pub type ReloadHook = Arc<dyn Fn() -> Result<u64, String> + Send + Sync>;

pub async fn serve(
    listener: TcpListener,
    edge: Arc<Edge>,
    reload: Option<ReloadHook>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let edge = edge.clone();
                let reload = reload.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let edge = edge.clone();
                        let reload = reload.clone();
                        async move { Ok::<_, Infallible>(handle(req, &edge, reload.as_ref()).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn err(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "code": code, "message": message }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    site: String,
    url: Option<String>,
    prefix: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn handle(
    req: Request<Incoming>,
    edge: &Edge,
    reload: Option<&ReloadHook>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(edge.render_metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Method::GET, "/healthz") => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        (Method::GET, "/status") => {
            let snap = edge.snapshot();
            let sites: Vec<_> = snap
                .sites
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.site.name,
                        "hosts": s.site.hosts,
                        "origins": s.origins.iter().map(|o| serde_json::json!({"origin": o.name, "up": o.is_available()})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let last = edge
                .last_reload_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or(None);
            json(
                StatusCode::OK,
                serde_json::json!({
                    "generation": snap.generation,
                    "last_reload_error": last,
                    "sites": sites,
                    "cache": {
                        "memory_bytes": edge.store.mem_bytes(), "memory_objects": edge.store.mem_objects(),
                        "disk_bytes": edge.store.disk_bytes(), "disk_objects": edge.store.disk_objects(),
                    },
                }),
            )
        }
        (Method::POST, "/purge") | (Method::POST, "/reload") => {
            let secret = edge.snapshot().config.purge_secret.clone();
            if let Some(secret) = secret {
                let ok = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|g| g.trim() == secret);
                if !ok {
                    return err(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "a bearer token with the purge secret is required",
                    );
                }
            }
            if path == "/reload" {
                return match reload {
                    None => err(
                        StatusCode::NOT_IMPLEMENTED,
                        "no_config_file",
                        "this edge was started without a configuration file",
                    ),
                    Some(hook) => match hook() {
                        Ok(g) => json(StatusCode::OK, serde_json::json!({ "generation": g })),
                        Err(e) => err(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", &e),
                    },
                };
            }
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return err(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the purge request is larger than 64 KiB",
                    );
                }
            };
            let p: PurgeBody = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()),
            };
            let snap = edge.snapshot();
            let Some(site) = snap.config.site_by_name(&p.site) else {
                return err(
                    StatusCode::NOT_FOUND,
                    "unknown_site",
                    "no site has that name",
                );
            };
            let name: Arc<str> = site.name.as_str().into();
            let target = match (p.url, p.prefix, p.tag, p.all) {
                (Some(url), None, None, false) => {
                    let Ok(u) = url.parse::<http::Uri>() else {
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid_url",
                            "url must be absolute, like https://www.example.fr/page",
                        );
                    };
                    let (Some(host), Some(pq)) = (u.host(), u.path_and_query()) else {
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid_url",
                            "url must be absolute, like https://www.example.fr/page",
                        );
                    };
                    PurgeTarget::Url {
                        site: name,
                        primary: cache::primary_key(&site.name, &normalize_host(host), pq.as_str()),
                    }
                }
                (None, Some(prefix), None, false) if prefix.starts_with('/') => {
                    PurgeTarget::Prefix { site: name, prefix }
                }
                (None, None, Some(tag), false) if !tag.is_empty() => {
                    PurgeTarget::Tag { site: name, tag }
                }
                (None, None, None, true) => PurgeTarget::Site { site: name },
                _ => {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "invalid_target",
                        "give exactly one of url, prefix (starting with /), tag, or all=true",
                    );
                }
            };
            let n = edge.purge(&target);
            if let Some(rt) = snap.sites.get(site.index) {
                rt.metrics.purges.fetch_add(1, Ordering::Relaxed);
            }
            json(StatusCode::OK, serde_json::json!({ "purged": n }))
        }
        _ => err(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
    }
}
