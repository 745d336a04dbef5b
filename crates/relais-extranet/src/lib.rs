//! Relais extranet: server-rendered pages (askama) over the control plane, French first.
//!
//! Invariants:
//! - Every page and every form goes through the same rights check as the API
//!   ([`relais_control::Control::check`]); controls a role may not use are not rendered, and a
//!   forged post is refused anyway.
//! - Every state-changing request carries a CSRF token bound to the session (HMAC-free:
//!   SHA-256 of the session secret, which only the HttpOnly cookie holds) and is refused
//!   without it.
//! - Every response carries a strict Content-Security-Policy (no inline script) and the usual
//!   security headers. Errors never show internals: they say what went wrong and what to do.
//! - Every string comes from the catalogue in [`i18n`].

pub mod i18n;
mod pages;
mod stats;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use relais_control::Control;
use relais_control::auth::{Actor, Who, sha256_hex};

use crate::i18n::{Lang, Tr};

pub use pages::router_pages;

/// The extranet's routes (merge them with the API: `relais_control::serve_with`).
pub fn router(ctl: Arc<Control>) -> Router {
    router_pages(ctl).layer(middleware::from_fn(security_headers))
}

/// Answers for unknown paths outside the API: an HTML page.
pub async fn not_found(req: Request) -> Response {
    let t = Tr(Lang::from_headers(req.headers()));
    pages::error_page(t, StatusCode::NOT_FOUND, t.s("err.not_found"))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let set = |h: &mut http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "same-origin");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(
        h,
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    resp
}

/// The signed-in person behind a page request.
pub struct WebUser {
    pub actor: Actor,
    pub secret: String,
    pub t: Tr,
}

impl WebUser {
    /// The CSRF token of this session.
    pub fn csrf(&self) -> String {
        csrf_for(&self.secret)
    }

    pub fn email(&self) -> String {
        match &self.actor.who {
            Who::User { email, .. } => email.clone(),
            Who::Token { name, .. } => name.clone(),
        }
    }
}

pub fn csrf_for(secret: &str) -> String {
    sha256_hex(format!("relais-csrf\n{secret}").as_bytes())
}

/// Why a page request cannot go on.
pub enum Reject {
    /// Not signed in: to the sign-in page, then back.
    Login(String),
    /// Platform staff without a second factor.
    Enrol,
    Page(Response),
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        match self {
            Reject::Login(next) => {
                let next = if next.starts_with('/') && !next.starts_with("//") {
                    next
                } else {
                    "/".into()
                };
                Redirect::to(&format!("/login?next={}", urlencode(&next))).into_response()
            }
            Reject::Enrol => Redirect::to("/account/totp").into_response(),
            Reject::Page(r) => r,
        }
    }
}

impl FromRequestParts<Arc<Control>> for WebUser {
    type Rejection = Reject;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<Control>) -> Result<Self, Reject> {
        let t = Tr(Lang::from_headers(&parts.headers));
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        // Pages authenticate by cookie only (a bearer header is for the API).
        let secret = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == relais_control::auth::SESSION_COOKIE)
            .map(|(_, v)| v.to_owned())
            .filter(|s| s.starts_with("rss_"));
        let Some(secret) = secret else {
            return Err(Reject::Login(next));
        };
        let actor = match st
            .authenticate(&secret, relais_control::auth::client_ip(parts))
            .await
        {
            Ok(a) => a,
            Err(_) => return Err(Reject::Login(next)),
        };
        if let Who::User {
            platform_role: Some(_),
            mfa: false,
            ..
        } = &actor.who
            && parts.uri.path() != "/account/totp"
        {
            return Err(Reject::Enrol);
        }
        Ok(WebUser { actor, secret, t })
    }
}

pub fn html(status: StatusCode, body: String) -> Response {
    (status, Html(body)).into_response()
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
