//! The HTTP API (`/api/v1`), the OpenAPI document and the edge endpoints (`/edge/v1`).
//!
//! Every handler authenticates ([`Actor`]), loads the object, finds its organisation and calls
//! [`Control::check`] before anything else; the error table is in [`crate::error`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use relais_edge::config::FileSchedule;
use relais_edge::proto::Ack;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::Control;
use crate::audit::{self, Change};
use crate::auth::{self, Actor, Perm, Who, millis};
use crate::db::col;
use crate::edges::PurgeRequest;
use crate::error::{ApiError, ApiResult};
use crate::members::{MemberBody, OrgSettings, TokenBody};
use crate::sites::{self, SiteRow};
use crate::stats::StatsQuery;

type St = State<Arc<Control>>;

/// A JSON body whose problems come out of the error table.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &S) -> Result<Self, ApiError> {
        let b = Bytes::from_request(req, st).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new("payload_too_large", "the request body is larger than 2 MiB")
            } else {
                ApiError::new("bad_request", e.body_text())
            }
        })?;
        serde_json::from_slice(&b)
            .map(JsonBody)
            .map_err(|e| ApiError::new("bad_request", format!("invalid JSON: {e}")))
    }
}

/// A query string whose problems come out of the error table.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::new("bad_request", e.body_text()))
    }
}

/// The API with its JSON fallback for unknown routes.
pub fn router(st: Arc<Control>) -> Router {
    routes(st).fallback(no_route)
}

pub async fn no_route() -> ApiError {
    ApiError::new("no_route", "no such endpoint; see /api/openapi.json")
}

/// The API routes, without a fallback (so that another router can be merged in).
pub fn routes(st: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/sessions", get(sessions))
        .route("/api/v1/auth/sessions/{id}", delete(revoke_session))
        .route("/api/v1/auth/totp/setup", post(totp_setup))
        .route("/api/v1/auth/totp/confirm", post(totp_confirm))
        .route(
            "/api/v1/auth/ssh-keys",
            get(list_ssh_keys).post(add_ssh_key),
        )
        .route("/api/v1/auth/ssh-keys/{id}", delete(delete_ssh_key))
        .route("/api/v1/orgs", get(list_orgs).post(create_org))
        .route("/api/v1/orgs/{id}", get(get_org))
        .route(
            "/api/v1/orgs/{id}/members",
            get(list_members).put(set_member),
        )
        .route("/api/v1/orgs/{id}/members/{user}", delete(remove_member))
        .route(
            "/api/v1/orgs/{id}/tokens",
            get(list_tokens).post(create_token),
        )
        .route("/api/v1/orgs/{id}/tokens/{token}", delete(revoke_token))
        .route("/api/v1/orgs/{id}/sites", get(list_sites).post(create_site))
        .route("/api/v1/orgs/{id}/audit", get(org_audit))
        .route("/api/v1/sites/{id}", get(get_site).delete(delete_site))
        .route("/api/v1/sites/{id}/draft", put(put_draft))
        .route("/api/v1/sites/{id}/certificate", put(put_certificate))
        .route("/api/v1/sites/{id}/publish", post(publish))
        .route("/api/v1/sites/{id}/rollback", post(rollback))
        .route("/api/v1/sites/{id}/versions", get(versions))
        .route("/api/v1/sites/{id}/versions/{version}", get(version))
        .route("/api/v1/sites/{id}/diff", get(diff))
        .route("/api/v1/sites/{id}/mode", put(set_mode))
        .route("/api/v1/sites/{id}/schedules", put(set_schedules))
        .route("/api/v1/sites/{id}/explain", get(explain))
        .route("/api/v1/sites/{id}/purges", get(site_purges).post(purge))
        .route("/api/v1/sites/{id}/definition", get(definition))
        .route("/api/v1/purges/{id}", get(receipt))
        .route("/api/v1/audit", get(all_audit))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/edges", get(list_edges).post(create_edge))
        .route("/api/v1/edges/{id}", delete(delete_edge))
        .route("/edge/v1/stream", get(edge_stream))
        .route("/edge/v1/ack", post(edge_ack))
        .route(
            "/edge/v1/logs",
            put(edge_logs).layer(DefaultBodyLimit::max(1 << 30)),
        )
        .route("/api/v1/sites/{id}/logs", get(site_logs))
        .route("/api/v1/sites/{id}/logs/{date}", get(site_log_day))
        .route("/api/v1/orgs/{id}/settings", put(org_settings))
        .route(
            "/edge/v1/stats",
            post(edge_stats).layer(DefaultBodyLimit::max(256 << 20)),
        )
        .route("/api/v1/sites/{id}/stats", get(site_stats))
        .route("/api/v1/sites/{id}/stats/export", get(site_stats_export))
        .route("/api/v1/orgs/{id}/stats", get(org_stats))
        .route("/api/v1/orgs/{id}/stats/export", get(org_stats_export))
        .route("/api/v1/orgs/{id}/usage", get(org_usage))
        .layer(DefaultBodyLimit::max(2 << 20))
        .with_state(st)
}

fn id(s: &str) -> ApiResult<i64> {
    s.parse().map_err(|_| ApiError::not_found())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document().to_string(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Sign-in, sessions, second factor
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

async fn login(State(st): St, headers: HeaderMap, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let ip = auth::client_ip(&parts);
    let JsonBody(b): JsonBody<LoginBody> =
        JsonBody::from_request(Request::from_parts(parts, body), &()).await?;
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let si = st
        .sign_in(&b.email, &b.password, b.totp.as_deref(), &ip, ua)
        .await?;
    let mut resp = Json(json!({
        "token": si.token,
        "expires_at": si.expires_at,
        "user": {"id": si.user_id, "email": si.email, "platform_role": si.platform_role, "totp_enabled": si.mfa},
        "mfa_enrollment_required": si.mfa_enrollment_required(),
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&si.token)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn session_id(actor: &Actor) -> ApiResult<i64> {
    match actor.who {
        Who::User { session_id, .. } => Ok(session_id),
        Who::Token { .. } => Err(ApiError::forbidden("this with an API token")),
    }
}

async fn logout(State(st): St, actor: Actor) -> ApiResult<Response> {
    st.end_session(session_id(&actor)?).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "relais_session=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0",
        ),
    );
    Ok(resp)
}

async fn me(State(st): St, actor: Actor) -> ApiResult<Json<Value>> {
    match &actor.who {
        Who::User {
            id,
            email,
            platform_role,
            mfa,
            ..
        } => {
            let rows = st
                .db
                .q("SELECT m.org_id, m.role, o.name, o.slug FROM memberships m JOIN orgs o ON o.id = m.org_id WHERE m.user_id = ? ORDER BY o.name")
                .bind(*id)
                .fetch_all(&st.db.pool)
                .await?;
            let u = st
                .db
                .q("SELECT name, totp_enabled FROM users WHERE id = ?")
                .bind(*id)
                .fetch_one(&st.db.pool)
                .await?;
            let memberships: Vec<Value> = rows
                .iter()
                .map(|r| {
                    Ok(json!({
                        "org_id": col::<i64>(r, "org_id")?,
                        "org": col::<String>(r, "name")?,
                        "slug": col::<String>(r, "slug")?,
                        "role": col::<String>(r, "role")?,
                    }))
                })
                .collect::<ApiResult<_>>()?;
            Ok(Json(json!({
                "kind": "user",
                "id": id,
                "email": email,
                "name": col::<String>(&u, "name")?,
                "platform_role": platform_role,
                "totp_enabled": col::<i64>(&u, "totp_enabled")? != 0,
                "session_mfa": mfa,
                "memberships": memberships,
            })))
        }
        Who::Token {
            id,
            org_id,
            scope,
            name,
        } => Ok(Json(json!({
            "kind": "token", "id": id, "org_id": org_id, "scope": scope, "name": name,
        }))),
    }
}

async fn sessions(State(st): St, actor: Actor) -> ApiResult<Json<Value>> {
    let uid = actor.require_user()?;
    let current = session_id(&actor)?;
    let rows = st
        .db
        .q("SELECT id, created_at, last_seen_at, expires_at, ip, user_agent, revoked_at, mfa FROM sessions WHERE user_id = ? ORDER BY id DESC LIMIT 100")
        .bind(uid)
        .fetch_all(&st.db.pool)
        .await?;
    let now = millis(st.clock.now());
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            let id: i64 = col(r, "id")?;
            let revoked: Option<i64> = col(r, "revoked_at")?;
            let expires: i64 = col(r, "expires_at")?;
            Ok(json!({
                "id": id,
                "current": id == current,
                "created_at": col::<i64>(r, "created_at")?,
                "last_seen_at": col::<i64>(r, "last_seen_at")?,
                "ip": col::<String>(r, "ip")?,
                "user_agent": col::<String>(r, "user_agent")?,
                "active": revoked.is_none() && expires > now,
                "mfa": col::<i64>(r, "mfa")? != 0,
            }))
        })
        .collect::<ApiResult<_>>()?;
    Ok(Json(json!({ "sessions": list })))
}

async fn revoke_session(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
) -> ApiResult<StatusCode> {
    let uid = actor.require_user()?;
    let sid = id(&sid)?;
    let _w = st.writer.lock().await;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let n = st
        .db
        .q("UPDATE sessions SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL")
        .bind(millis(now))
        .bind(sid)
        .bind(uid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found());
    }
    audit::record(
        &st.db,
        &mut tx,
        now,
        &actor,
        Change {
            org_id: None,
            action: "session.revoke",
            target: format!("session #{sid}"),
            before: None,
            after: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn totp_setup(State(st): St, actor: Actor) -> ApiResult<Json<Value>> {
    let uid = actor.require_user()?;
    let (secret, url) = st.totp_setup(uid).await?;
    Ok(Json(json!({
        "secret": secret,
        "otpauth_url": url,
        "next": "POST /api/v1/auth/totp/confirm with {\"code\": \"123456\"}",
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

async fn totp_confirm(
    State(st): St,
    actor: Actor,
    JsonBody(b): JsonBody<CodeBody>,
) -> ApiResult<Json<Value>> {
    st.totp_confirm(&actor, &b.code).await?;
    Ok(Json(json!({"totp_enabled": true})))
}

// ---------------------------------------------------------------------------------------------
// Organisations, members, tokens
// ---------------------------------------------------------------------------------------------

async fn org_json(st: &Control, org_id: i64) -> ApiResult<Value> {
    let r = st
        .db
        .q("SELECT id, parent_id, slug, name, created_at, log_retention_months, log_recipients, language, report_recipients, report_metrics FROM orgs WHERE id = ?")
        .bind(org_id)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(json!({
        "id": col::<i64>(&r, "id")?,
        "parent_id": col::<Option<i64>>(&r, "parent_id")?,
        "slug": col::<String>(&r, "slug")?,
        "name": col::<String>(&r, "name")?,
        "created_at": col::<i64>(&r, "created_at")?,
        "log_retention_months": col::<i64>(&r, "log_retention_months")?,
        "log_recipients": serde_json::from_str::<Value>(&col::<String>(&r, "log_recipients")?).unwrap_or(json!([])),
        "language": col::<String>(&r, "language")?,
        "report_recipients": serde_json::from_str::<Value>(&col::<String>(&r, "report_recipients")?).unwrap_or(json!([])),
        "report_metrics": serde_json::from_str::<Value>(&col::<String>(&r, "report_metrics")?).unwrap_or(json!([])),
    }))
}

async fn list_orgs(State(st): St, actor: Actor) -> ApiResult<Json<Value>> {
    let ids = st.visible_orgs(&actor).await?;
    let mut out = Vec::with_capacity(ids.len());
    for i in ids {
        out.push(org_json(&st, i).await?);
    }
    Ok(Json(json!({ "orgs": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgBody {
    slug: String,
    name: String,
    #[serde(default)]
    parent_id: Option<i64>,
}

async fn create_org(
    State(st): St,
    actor: Actor,
    JsonBody(b): JsonBody<OrgBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    match b.parent_id {
        Some(p) => st.check(&actor, p, Perm::Admin).await?,
        None if actor.is_staff() => {}
        None => return Err(ApiError::forbidden("creating a top-level organisation")),
    }
    let slug = b.slug.trim().to_ascii_lowercase();
    if !(2..=63).contains(&slug.len())
        || !slug
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(ApiError::invalid("slug", "2 to 63 of a-z, 0-9 and '-'"));
    }
    let name = b.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "1 to 200 characters"));
    }
    let _w = st.writer.lock().await;
    let now = st.clock.now();
    let mut tx = st.db.begin().await?;
    let r = st
        .db
        .q("INSERT INTO orgs (parent_id, slug, name, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (slug) DO NOTHING RETURNING id")
        .bind(b.parent_id)
        .bind(slug.clone())
        .bind(name.clone())
        .bind(millis(now))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::new("conflict", format!("the slug {slug:?} is taken")))?;
    let oid: i64 = col(&r, "id")?;
    audit::record(
        &st.db,
        &mut tx,
        now,
        &actor,
        Change {
            org_id: Some(oid),
            action: "org.create",
            target: format!("org {slug} (#{oid})"),
            before: None,
            after: Some(json!({"slug": slug, "name": name, "parent_id": b.parent_id})),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(org_json(&st, oid).await?)))
}

async fn get_org(State(st): St, actor: Actor, Path(oid): Path<String>) -> ApiResult<Json<Value>> {
    let oid = id(&oid)?;
    st.check(&actor, oid, Perm::Read).await?;
    Ok(Json(org_json(&st, oid).await?))
}

async fn list_members(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(st.members(&actor, id(&oid)?).await?))
}

async fn set_member(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    JsonBody(b): JsonBody<MemberBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(st.set_member(&actor, id(&oid)?, b).await?))
}

async fn remove_member(
    State(st): St,
    actor: Actor,
    Path((oid, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    st.remove_member(&actor, id(&oid)?, id(&user)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_tokens(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(st.tokens(&actor, id(&oid)?).await?))
}

async fn create_token(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.create_token(&actor, id(&oid)?, b).await?),
    ))
}

async fn revoke_token(
    State(st): St,
    actor: Actor,
    Path((oid, tid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    st.revoke_token(&actor, id(&oid)?, id(&tid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Sites
// ---------------------------------------------------------------------------------------------

/// Loads a site the caller may act on (404 when it may not even read it).
async fn site_for(st: &Control, actor: &Actor, sid: &str, p: Perm) -> ApiResult<SiteRow> {
    let sid = id(sid)?;
    let site = st.site_row(sid).await?;
    st.check(actor, site.org_id, p).await?;
    Ok(site)
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_sites(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    Q(p): Q<Page>,
) -> ApiResult<Json<Value>> {
    let oid = id(&oid)?;
    st.check(&actor, oid, Perm::Read).await?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let rows = st
        .db
        .q("SELECT id, name, draft, published_version, draft_updated_at FROM sites WHERE org_id = ? AND deleted_at IS NULL AND id > ? ORDER BY id LIMIT ?")
        .bind(oid)
        .bind(p.after.unwrap_or(0))
        .bind(limit)
        .fetch_all(&st.db.pool)
        .await?;
    let mut list = vec![];
    let mut last = None;
    for r in &rows {
        let sid: i64 = col(r, "id")?;
        last = Some(sid);
        let draft: String = col(r, "draft")?;
        let d: Value = serde_json::from_str(&draft).unwrap_or(Value::Null);
        list.push(json!({
            "id": sid,
            "name": col::<String>(r, "name")?,
            "hosts": d.get("hosts"),
            "mode": d.get("mode").cloned().unwrap_or(json!("active")),
            "published_version": col::<Option<i64>>(r, "published_version")?,
            "draft_updated_at": col::<i64>(r, "draft_updated_at")?,
        }));
    }
    let next = if rows.len() as i64 == limit {
        last
    } else {
        None
    };
    Ok(Json(json!({ "sites": list, "next_after": next })))
}

async fn create_site(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    JsonBody(b): JsonBody<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let oid = id(&oid)?;
    st.check(&actor, oid, Perm::Config).await?;
    let site = st.create_site(&actor, oid, b).await?;
    Ok((StatusCode::CREATED, Json(st.site_json(&site).await?)))
}

async fn get_site(State(st): St, actor: Actor, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    Ok(Json(st.site_json(&site).await?))
}

async fn delete_site(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
) -> ApiResult<StatusCode> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    st.delete_site(&actor, &site).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_draft(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    JsonBody(b): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    let site = st.put_draft(&actor, &site, b).await?;
    Ok(Json(st.site_json(&site).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertBody {
    cert_pem: String,
    key_pem: String,
}

async fn put_certificate(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    JsonBody(b): JsonBody<CertBody>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    let site = st
        .set_certificate(&actor, &site, b.cert_pem, b.key_pem)
        .await?;
    Ok(Json(st.site_json(&site).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(default)]
    comment: Option<String>,
}

async fn publish(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    let b: PublishBody = if body.iter().all(u8::is_ascii_whitespace) {
        PublishBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new("bad_request", format!("invalid JSON: {e}")))?
    };
    let comment = b.comment.unwrap_or_default().chars().take(500).collect();
    let v = st.publish(&actor, &site, comment).await?;
    let site = st.site_row(site.id).await?;
    Ok(Json(
        json!({"version": v, "site": st.site_json(&site).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: i64,
}

async fn rollback(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    JsonBody(b): JsonBody<RollbackBody>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    let v = st.rollback(&actor, &site, b.version).await?;
    let site = st.site_row(site.id).await?;
    Ok(Json(
        json!({"version": v, "site": st.site_json(&site).await?}),
    ))
}

async fn versions(State(st): St, actor: Actor, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    Ok(Json(json!({
        "published_version": site.published_version,
        "versions": st.versions(site.id).await?,
    })))
}

async fn version(
    State(st): St,
    actor: Actor,
    Path((sid, v)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let doc = st.doc_ref(&site, &v).await?;
    Ok(Json(json!({
        "version": v,
        "doc": sites::redact(&doc),
        "toml": sites::to_toml(&doc),
    })))
}

#[derive(Deserialize)]
struct DiffQuery {
    from: String,
    #[serde(default)]
    to: Option<String>,
}

async fn diff(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    Q(q): Q<DiffQuery>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let to = q.to.unwrap_or_else(|| "draft".into());
    let a = st.doc_ref(&site, &q.from).await?;
    let b = st.doc_ref(&site, &to).await?;
    let d = sites::diff_lines(&sites::to_toml(&a), &sites::to_toml(&b));
    Ok(Json(json!({
        "from": q.from, "to": to,
        "changed": d.lines().any(|l| !l.starts_with("  ")),
        "diff": d,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: String,
}

async fn set_mode(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    JsonBody(b): JsonBody<ModeBody>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    if relais_edge::config::Mode::parse(&b.mode).is_none() {
        return Err(ApiError::invalid(
            "mode",
            "one of active, bypass, maintenance, disabled",
        ));
    }
    let mode = b.mode.clone();
    let v = st
        .publish_change(
            &actor,
            &site,
            "site.mode",
            format!("mode → {mode}"),
            |d| d.mode = Some(mode.clone()),
        )
        .await?;
    let site = st.site_row(site.id).await?;
    Ok(Json(
        json!({"version": v, "site": st.site_json(&site).await?}),
    ))
}

async fn set_schedules(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    JsonBody(b): JsonBody<Vec<FileSchedule>>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Config).await?;
    let v = st
        .publish_change(
            &actor,
            &site,
            "site.schedules",
            format!("{} schedule(s)", b.len()),
            |d| d.schedules = b.clone(),
        )
        .await?;
    let site = st.site_row(site.id).await?;
    Ok(Json(
        json!({"version": v, "site": st.site_json(&site).await?}),
    ))
}

#[derive(Deserialize)]
struct ExplainQuery {
    url: String,
    #[serde(default)]
    content_type: Option<String>,
    /// `draft` (default), `published` or a version number.
    #[serde(default)]
    version: Option<String>,
}

async fn explain(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    Q(q): Q<ExplainQuery>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let doc = st
        .doc_ref(&site, q.version.as_deref().unwrap_or("draft"))
        .await?;
    let path = match q.url.parse::<http::Uri>() {
        Ok(u) if u.host().is_some() => u.path().to_owned(),
        _ => q.url.split('?').next().unwrap_or("/").to_owned(),
    };
    if !path.starts_with('/') {
        return Err(ApiError::invalid("url", "a path (/news/) or a full URL"));
    }
    Ok(Json(sites::explain_json(
        &doc,
        &path,
        q.content_type.as_deref().filter(|c| !c.is_empty()),
    )?))
}

#[derive(Deserialize)]
struct WaitQuery {
    /// Wait up to this many milliseconds (at most 10 000) for every edge to apply the purge.
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn purge(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    Q(w): Q<WaitQuery>,
    JsonBody(b): JsonBody<PurgeRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let site = site_for(&st, &actor, &sid, Perm::Purge).await?;
    let mut acks = st.acks.subscribe();
    let seq = st.purge(&actor, &site, b).await?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(w.wait_ms.unwrap_or(0).min(10_000));
    loop {
        let (_, r) = st.receipt(seq).await?;
        let complete = r["complete"].as_bool().unwrap_or(false);
        if complete || tokio::time::Instant::now() >= deadline {
            return Ok((StatusCode::ACCEPTED, Json(r)));
        }
        let _ = tokio::time::timeout_at(deadline, acks.changed()).await;
    }
}

async fn site_purges(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    Ok(Json(json!({"purges": st.site_purges(site.id, 50).await?})))
}

async fn receipt(State(st): St, actor: Actor, Path(pid): Path<String>) -> ApiResult<Json<Value>> {
    let (org, r) = st.receipt(id(&pid)?).await?;
    st.check(&actor, org, Perm::Read).await?;
    Ok(Json(r))
}

#[derive(Deserialize)]
struct FormatQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn definition(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    Q(q): Q<FormatQuery>,
) -> ApiResult<Response> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let md = crate::definition::markdown(&st, &site).await?;
    Ok(match q.format.as_deref() {
        Some("html") => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::definition::html(&md),
        )
            .into_response(),
        None | Some("md") | Some("markdown") => {
            ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], md).into_response()
        }
        Some(_) => return Err(ApiError::invalid("format", "md or html")),
    })
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    action: Option<String>,
    /// `json` (default), `jsonl` or `csv`.
    #[serde(default)]
    format: Option<String>,
}

fn audit_response(entries: Vec<audit::Entry>, format: Option<&str>) -> ApiResult<Response> {
    Ok(match format {
        None | Some("json") => Json(json!({
            "entries": entries,
            "next_after": entries.last().map(|e| e.seq),
        }))
        .into_response(),
        Some("jsonl") => {
            let mut out = String::new();
            for e in &entries {
                out.push_str(&serde_json::to_string(e).unwrap_or_default());
                out.push('\n');
            }
            (
                [
                    (header::CONTENT_TYPE, "application/x-ndjson"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"audit.jsonl\"",
                    ),
                ],
                out,
            )
                .into_response()
        }
        Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"audit.csv\"",
                ),
            ],
            audit::to_csv(&entries),
        )
            .into_response(),
        Some(_) => return Err(ApiError::invalid("format", "json, jsonl or csv")),
    })
}

async fn org_audit(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    Q(q): Q<AuditQuery>,
) -> ApiResult<Response> {
    let oid = id(&oid)?;
    st.check(&actor, oid, Perm::Admin).await?;
    // The organisation and those below it.
    let visible = st.visible_orgs(&actor).await?;
    let mut orgs = vec![];
    for o in visible {
        if st.org_chain(o).await?.contains(&oid) {
            orgs.push(o);
        }
    }
    let entries = audit::list(
        &st.db,
        Some(&orgs),
        q.after.unwrap_or(0),
        q.limit.unwrap_or(1000).clamp(1, 100_000),
        q.action.as_deref(),
    )
    .await?;
    audit_response(entries, q.format.as_deref())
}

async fn all_audit(State(st): St, actor: Actor, Q(q): Q<AuditQuery>) -> ApiResult<Response> {
    if !actor.is_staff() {
        return Err(ApiError::forbidden("reading the whole platform's journal"));
    }
    let entries = audit::list(
        &st.db,
        None,
        q.after.unwrap_or(0),
        q.limit.unwrap_or(1000).clamp(1, 100_000),
        q.action.as_deref(),
    )
    .await?;
    audit_response(entries, q.format.as_deref())
}

async fn audit_verify(State(st): St, actor: Actor) -> ApiResult<Json<audit::Verification>> {
    if !actor.is_staff() {
        return Err(ApiError::forbidden("verifying the journal"));
    }
    Ok(Json(audit::verify(&st.db).await?))
}

// ---------------------------------------------------------------------------------------------
// Edges
// ---------------------------------------------------------------------------------------------

async fn list_edges(State(st): St, actor: Actor) -> ApiResult<Json<Value>> {
    if !actor.is_staff() {
        return Err(ApiError::forbidden("listing edges"));
    }
    Ok(Json(json!({"edges": st.edges_json().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeBody {
    name: String,
}

async fn create_edge(
    State(st): St,
    actor: Actor,
    JsonBody(b): JsonBody<EdgeBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !actor.is_platform_admin() {
        return Err(ApiError::forbidden("registering edges"));
    }
    let (eid, token) = st.create_edge(&actor, &b.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": eid, "name": b.name, "token": token,
            "note": "shown once: start the edge with --control-token"})),
    ))
}

async fn delete_edge(
    State(st): St,
    actor: Actor,
    Path(eid): Path<String>,
) -> ApiResult<StatusCode> {
    if !actor.is_platform_admin() {
        return Err(ApiError::forbidden("retiring edges"));
    }
    st.delete_edge(&actor, id(&eid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn edge_secret(headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_owned())
        .ok_or_else(ApiError::unauthenticated)
}

#[derive(Deserialize)]
struct StreamQuery {
    #[serde(default)]
    config_seq: i64,
    #[serde(default)]
    purge_seq: i64,
}

async fn edge_stream(
    State(st): St,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> ApiResult<Response> {
    let edge = st.edge_by_token(&edge_secret(&headers)?).await?;
    let body = Body::from_stream(st.stream(edge, q.config_seq, q.purge_seq));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

async fn edge_ack(
    State(st): St,
    headers: HeaderMap,
    JsonBody(ack): JsonBody<Ack>,
) -> ApiResult<StatusCode> {
    let edge = st.edge_by_token(&edge_secret(&headers)?).await?;
    st.ack(&edge, &ack).await?;
    st.acks.send_modify(|n| *n += 1);
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Access logs
// ---------------------------------------------------------------------------------------------

/// An edge delivers a closed day: the compressed file as the body, its manifest (JSON) in the
/// `x-relais-manifest` header. Checked against the manifest, stored, merged.
async fn edge_logs(State(st): St, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let edge = st.edge_by_token(&edge_secret(&headers)?).await?;
    let Some(store) = &st.logs else {
        return Err(ApiError::new(
            "conflict",
            "this control plane keeps no logs (--log-store)",
        ));
    };
    let manifest: relais_edge::accesslog::Manifest = headers
        .get("x-relais-manifest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .ok_or_else(|| {
            ApiError::new(
                "bad_request",
                "x-relais-manifest: a JSON manifest is required",
            )
        })?;
    let store = store.clone();
    let name = edge.name.clone();
    let (site, date) = (manifest.site.clone(), manifest.date.clone());
    let day = tokio::task::spawn_blocking(move || store.put(&name, &manifest, &body))
        .await
        .map_err(|_| ApiError::new("internal", "internal error"))?
        .map_err(|e| match e {
            crate::logs::LogError::Io(e) => {
                tracing::error!(error = %e, "log store");
                ApiError::new("internal", "internal error")
            }
            other => ApiError::invalid("log", other.to_string()),
        })?;
    // Tell the organisation when every edge has delivered (in the background: the edge's
    // delivery is done).
    let me = st.clone();
    tokio::spawn(async move {
        if let Err(e) = me.notify_log_day(&site, &date).await {
            tracing::warn!(site, date, error = e.message, "logs-ready mail not sent");
        }
    });
    Ok(Json(serde_json::to_value(day).unwrap_or(Value::Null)))
}

async fn site_logs(State(st): St, actor: Actor, Path(sid): Path<String>) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let days = match &st.logs {
        Some(store) => store
            .days(&site.name)
            .map_err(|e| ApiError::invalid("site", e.to_string()))?,
        None => vec![],
    };
    Ok(Json(json!({ "days": days })))
}

async fn site_log_day(
    State(st): St,
    actor: Actor,
    Path((sid, date)): Path<(String, String)>,
) -> ApiResult<Response> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let Some(store) = &st.logs else {
        return Err(ApiError::not_found());
    };
    let path = store
        .file(&site.name, &date)
        .map_err(|_| ApiError::not_found())?;
    let data = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::not_found())?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-{date}.log.gz\"", site.name),
            ),
        ],
        data,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

async fn edge_stats(State(st): St, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let edge = st.edge_by_token(&edge_secret(&headers)?).await?;
    let batch: relais_edge::stats::Batch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new("bad_request", format!("statistics batch: {e}")))?;
    let counted = st.ingest_stats(&edge, batch).await?;
    Ok(Json(json!({ "counted": counted })))
}

async fn site_stats(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    Q(q): Q<StatsQuery>,
) -> ApiResult<Json<Value>> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let (range, step) = q.resolve(st.today())?;
    let r = st
        .stats_report(std::slice::from_ref(&site.name), range, step)
        .await?;
    let mut v = crate::stats::report_json(&r, range, step);
    v["site"] = json!(site.name);
    Ok(Json(v))
}

/// A spreadsheet download.
pub fn sheet_response(
    name: &str,
    t: &crate::sheets::Table,
    f: crate::sheets::Format,
) -> ApiResult<Response> {
    let data = crate::sheets::render(t, f).map_err(|e| {
        tracing::error!(error = %e, "export");
        ApiError::new("internal", "internal error")
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, f.content_type().to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{}\"", f.extension()),
            ),
        ],
        data,
    )
        .into_response())
}

async fn site_stats_export(
    State(st): St,
    actor: Actor,
    Path(sid): Path<String>,
    Q(q): Q<StatsQuery>,
) -> ApiResult<Response> {
    let site = site_for(&st, &actor, &sid, Perm::Read).await?;
    let (range, step) = q.resolve(st.today())?;
    let f = q.format()?;
    let r = st
        .stats_report(std::slice::from_ref(&site.name), range, step)
        .await?;
    let t = crate::sheets::series_table(&site.name, &r, step, q.french());
    let name = format!(
        "{}-{}-{}",
        site.name,
        relais_edge::accesslog::date_string(range.from),
        relais_edge::accesslog::date_string(range.to)
    );
    sheet_response(&name, &t, f)
}

async fn org_report(
    st: &Control,
    actor: &Actor,
    oid: &str,
    q: &StatsQuery,
) -> ApiResult<(
    i64,
    crate::stats::Report,
    crate::stats::Range,
    crate::stats::Step,
)> {
    let oid = id(oid)?;
    st.check(actor, oid, Perm::Read).await?;
    let (range, step) = q.resolve(st.today())?;
    let sites = st.org_site_names(oid).await?;
    Ok((
        oid,
        st.stats_report(&sites, range, step).await?,
        range,
        step,
    ))
}

async fn org_stats(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    Q(q): Q<StatsQuery>,
) -> ApiResult<Json<Value>> {
    let (oid, r, range, step) = org_report(&st, &actor, &oid, &q).await?;
    let mut v = crate::stats::report_json(&r, range, step);
    v["org_id"] = json!(oid);
    Ok(Json(v))
}

async fn org_stats_export(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    Q(q): Q<StatsQuery>,
) -> ApiResult<Response> {
    let f = q.format()?;
    let (oid, r, range, _) = org_report(&st, &actor, &oid, &q).await?;
    let t = crate::sheets::sites_table(&format!("org {oid}"), &r, q.french());
    let name = format!(
        "org-{oid}-{}-{}",
        relais_edge::accesslog::date_string(range.from),
        relais_edge::accesslog::date_string(range.to)
    );
    sheet_response(&name, &t, f)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// `YYYY-MM`; the current month by default.
    #[serde(default)]
    month: Option<String>,
}

async fn org_usage(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    Q(q): Q<UsageQuery>,
) -> ApiResult<Json<Value>> {
    let oid = id(&oid)?;
    st.check(&actor, oid, Perm::Read).await?;
    let (y, m) = match q.month.as_deref() {
        Some(s) => s
            .split_once('-')
            .and_then(|(y, m)| Some((y.parse::<i64>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(y, m)| (1970..=9999).contains(y) && (1..=12).contains(m) && s.len() == 7)
            .ok_or_else(|| ApiError::invalid("month", "YYYY-MM / AAAA-MM"))?,
        None => {
            let (y, m, _) = relais_edge::accesslog::civil(st.today());
            (y, m)
        }
    };
    Ok(Json(json!({
        "month": format!("{y:04}-{m:02}"),
        "sites": st.usage(oid, y, m).await?,
    })))
}

async fn org_settings(
    State(st): St,
    actor: Actor,
    Path(oid): Path<String>,
    JsonBody(b): JsonBody<OrgSettings>,
) -> ApiResult<Json<Value>> {
    let oid = id(&oid)?;
    st.set_org_settings(&actor, oid, b).await?;
    Ok(Json(org_json(&st, oid).await?))
}

// ---------------------------------------------------------------------------------------------
// SSH keys (SFTP)
// ---------------------------------------------------------------------------------------------

async fn list_ssh_keys(State(st): St, actor: Actor) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "keys": st.ssh_keys(&actor).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshKeyBody {
    /// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    key: String,
    #[serde(default)]
    name: Option<String>,
}

async fn add_ssh_key(
    State(st): St,
    actor: Actor,
    JsonBody(b): JsonBody<SshKeyBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.add_ssh_key(&actor, &b.key, b.name).await?),
    ))
}

async fn delete_ssh_key(
    State(st): St,
    actor: Actor,
    Path(kid): Path<String>,
) -> ApiResult<StatusCode> {
    st.delete_ssh_key(&actor, id(&kid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
