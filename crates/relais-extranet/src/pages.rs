//! The pages: one handler per view or form, each checking rights before anything else.

// A refusal is a ready response returned at once; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use relais_control::auth::{Perm, client_ip, session_cookie};
use relais_control::edges::PurgeRequest;
use relais_control::error::ApiError;
use relais_control::members::{MemberBody, TokenBody};
use relais_control::sites::SiteRow;
use relais_control::{Control, audit};
use relais_edge::config::{FileRule, FileSite};
use serde_json::Value;

use crate::i18n::{Lang, Tr};
use crate::{WebUser, html};

pub(crate) type St = State<Arc<Control>>;
pub(crate) type Fields = HashMap<String, String>;

pub fn router_pages(ctl: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/lang/{code}", get(set_lang))
        .route("/account/totp", get(totp_form).post(totp_confirm))
        .route("/sites/{id}", get(site_page))
        .route("/sites/{id}/mode", post(set_mode))
        .route("/sites/{id}/purge", post(purge))
        .route("/sites/{id}/publish", post(publish))
        .route("/sites/{id}/rollback", post(rollback))
        .route("/sites/{id}/origins", post(set_origins))
        .route("/sites/{id}/certificate", post(set_certificate))
        .route("/sites/{id}/versions/{version}", get(version_page))
        .route("/sites/{id}/schedules", post(add_schedule))
        .route(
            "/sites/{id}/schedules/{index}/delete",
            post(delete_schedule),
        )
        .route("/sites/{id}/rules", get(rules_page).post(add_rule))
        .route("/sites/{id}/rules/{index}/delete", post(delete_rule))
        .route("/purges/{id}", get(receipt))
        .route("/sites/{id}/logs", get(logs_page))
        .route("/sites/{id}/stats", get(crate::stats::site_stats_page))
        .route("/orgs/{id}/stats", get(crate::stats::org_stats_page))
        .route("/orgs/{id}/report", post(crate::stats::save_report))
        .route("/account/keys", get(keys_page).post(add_key))
        .route("/account/keys/{id}/delete", post(delete_key))
        .route("/orgs/{id}/audit", get(audit_page))
        .route("/orgs/{id}/sites", post(create_site))
        .route("/orgs/{id}/people", get(people_page).post(set_member))
        .route("/orgs/{id}/people/{user}/remove", post(remove_member))
        .route("/orgs/{id}/tokens", post(create_token))
        .route("/orgs/{id}/tokens/{token}/revoke", post(revoke_token))
        .route("/static/app.css", get(css))
        .route("/static/receipt.js", get(js))
        .with_state(ctl)
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../static/app.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../static/receipt.js"),
    )
        .into_response()
}

/// What every page shows around its content.
pub struct Page {
    pub t: Tr,
    pub title: String,
    pub user: Option<String>,
    pub csrf: String,
    pub org: Option<i64>,
    pub flash: Option<&'static str>,
}

impl Page {
    pub(crate) fn of(u: &WebUser, title: &str, org: Option<i64>) -> Page {
        Page {
            t: u.t,
            title: title.to_owned(),
            user: Some(u.email()),
            csrf: u.csrf(),
            org,
            flash: None,
        }
    }
}

pub(crate) fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(s) => html(StatusCode::OK, s),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            html(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTpl {
    p: Page,
    message: String,
}

pub fn error_page(t: Tr, status: StatusCode, message: &str) -> Response {
    let tpl = ErrorTpl {
        p: Page {
            t,
            title: t.s("err.title").into(),
            user: None,
            csrf: String::new(),
            org: None,
            flash: None,
        },
        message: message.to_owned(),
    };
    let mut r = render(&tpl);
    *r.status_mut() = status;
    r
}

/// An API error as a page (validation errors are shown on their form instead).
pub(crate) fn api_error(t: Tr, e: ApiError) -> Response {
    match e.code {
        "not_found" => error_page(t, StatusCode::NOT_FOUND, t.s("err.not_found")),
        "forbidden" => error_page(t, StatusCode::FORBIDDEN, t.s("err.forbidden")),
        "invalid" | "bad_request" | "conflict" => {
            error_page(t, StatusCode::UNPROCESSABLE_ENTITY, &e.message)
        }
        _ => error_page(t, StatusCode::INTERNAL_SERVER_ERROR, t.s("err.internal")),
    }
}

pub(crate) fn field<'a>(f: &'a Fields, k: &str) -> &'a str {
    f.get(k).map(String::as_str).unwrap_or("")
}

pub(crate) fn check_csrf(u: &WebUser, f: &Fields) -> Result<(), Response> {
    let sent = field(f, "_csrf");
    let want = u.csrf();
    if sent.len() == want.len() && ring_eq(sent.as_bytes(), want.as_bytes()) {
        Ok(())
    } else {
        Err(error_page(u.t, StatusCode::FORBIDDEN, u.t.s("err.csrf")))
    }
}

/// Constant-time comparison.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn when(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
    .replace('T', " ")
    .replace('Z', " UTC")
}

fn mode_label(t: Tr, mode: &str) -> &'static str {
    match mode {
        "bypass" => t.s("mode.bypass"),
        "maintenance" => t.s("mode.maintenance"),
        "disabled" => t.s("mode.disabled"),
        _ => t.s("mode.active"),
    }
}

// ---------------------------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTpl {
    p: Page,
    error: Option<String>,
    email: String,
    next: String,
    totp_focus: bool,
}

fn anonymous(t: Tr, title: &str) -> Page {
    Page {
        t,
        title: title.to_owned(),
        user: None,
        csrf: String::new(),
        org: None,
        flash: None,
    }
}

async fn login_form(headers: HeaderMap, Query(q): Query<Fields>) -> Response {
    let t = Tr(Lang::from_headers(&headers));
    render(&LoginTpl {
        p: anonymous(t, t.s("login.title")),
        error: None,
        email: String::new(),
        next: field(&q, "next").to_owned(),
        totp_focus: false,
    })
}

async fn login(State(st): St, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let t = Tr(Lang::from_headers(&parts.headers));
    let ip = client_ip(&parts);
    let ua = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let req = axum::extract::Request::from_parts(parts, body);
    let Ok(Form(f)) =
        <Form<Fields> as axum::extract::FromRequest<()>>::from_request(req, &()).await
    else {
        return error_page(t, StatusCode::BAD_REQUEST, t.s("err.csrf"));
    };
    let next = field(&f, "next");
    let next = if next.starts_with('/') && !next.starts_with("//") {
        next.to_owned()
    } else {
        "/".to_owned()
    };
    let totp = Some(field(&f, "totp")).filter(|s| !s.is_empty());
    match st
        .sign_in(field(&f, "email"), field(&f, "password"), totp, &ip, &ua)
        .await
    {
        Ok(si) => {
            let to = if si.mfa_enrollment_required() {
                "/account/totp".to_owned()
            } else {
                next
            };
            let mut r = Redirect::to(&to).into_response();
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&si.token)) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            let (status, key) = match e.code {
                "totp_required" => (StatusCode::UNAUTHORIZED, "login.totp_required"),
                "bad_totp" => (StatusCode::UNAUTHORIZED, "login.bad_totp"),
                "too_many_attempts" => (StatusCode::TOO_MANY_REQUESTS, "login.throttled"),
                "bad_credentials" => (StatusCode::UNAUTHORIZED, "login.bad"),
                _ => return api_error(t, e),
            };
            let mut r = render(&LoginTpl {
                p: anonymous(t, t.s("login.title")),
                error: Some(t.s(key).to_owned()),
                email: field(&f, "email").to_owned(),
                next,
                totp_focus: key != "login.bad" && key != "login.throttled",
            });
            *r.status_mut() = status;
            r
        }
    }
}

async fn logout(State(st): St, u: WebUser, Form(f): Form<Fields>) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    if let relais_control::auth::Who::User { session_id, .. } = u.actor.who
        && let Err(e) = st.end_session(session_id).await
    {
        return api_error(u.t, e);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "relais_session=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0",
        ),
    );
    r
}

async fn set_lang(Path(code): Path<String>, headers: HeaderMap) -> Response {
    let code = if code == "en" { "en" } else { "fr" };
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.parse::<http::Uri>().ok())
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_owned()))
        .filter(|p| p.starts_with('/') && !p.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    let mut r = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "lang={code}; Path=/; SameSite=Lax; Max-Age=31536000"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Template)]
#[template(path = "totp.html")]
struct TotpTpl {
    p: Page,
    secret: String,
    url: String,
    error: Option<String>,
}

async fn totp_form(State(st): St, u: WebUser) -> Response {
    let Some(uid) = u.actor.user_id() else {
        return error_page(u.t, StatusCode::FORBIDDEN, u.t.s("err.forbidden"));
    };
    match st.totp_setup(uid).await {
        Ok((secret, url)) => render(&TotpTpl {
            p: Page::of(&u, u.t.s("totp.title"), None),
            secret,
            url,
            error: None,
        }),
        Err(e) if e.code == "conflict" => Redirect::to("/").into_response(),
        Err(e) => api_error(u.t, e),
    }
}

async fn totp_confirm(State(st): St, u: WebUser, Form(f): Form<Fields>) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    match st.totp_confirm(&u.actor, field(&f, "code")).await {
        Ok(()) => Redirect::to("/?ok=totp").into_response(),
        Err(e) if e.code == "bad_totp" => {
            let Some(uid) = u.actor.user_id() else {
                return api_error(u.t, e);
            };
            // The secret stays the one already shown: read it back.
            let secret = match st
                .db
                .q("SELECT totp_secret FROM users WHERE id = ?")
                .bind(uid)
                .fetch_one(&st.db.pool)
                .await
            {
                Ok(r) => sqlx::Row::try_get::<Option<String>, _>(&r, "totp_secret")
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                Err(_) => String::new(),
            };
            let mut r = render(&TotpTpl {
                p: Page::of(&u, u.t.s("totp.title"), None),
                url: String::new(),
                secret,
                error: Some(u.t.s("login.bad_totp").to_owned()),
            });
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
        Err(e) => api_error(u.t, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

struct SiteLine {
    id: i64,
    name: String,
    hosts: String,
    mode: String,
    mode_label: &'static str,
    version: Option<i64>,
    draft_pending: bool,
    /// (edge, origin) pairs reported down.
    health: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardTpl {
    p: Page,
    orgs: Vec<(i64, String, bool)>,
    /// Every organisation with its number of sites (shown to those who see several).
    all_orgs: Vec<(i64, String, i64)>,
    org_name: Option<String>,
    sites: Vec<SiteLine>,
    can_create: bool,
    error: Option<String>,
    error_field: Option<String>,
    form_name: String,
    form_host: String,
    form_origin: String,
}

pub(crate) fn flash(t: Tr, q: &Fields) -> Option<&'static str> {
    let key = match field(q, "ok") {
        "mode" => "mode.done",
        "published" => "publish.done",
        "rollback" => "rollback.done",
        "added" => "rules.added",
        "deleted" => "rules.deleted",
        "totp" => "totp.done",
        "created" => "create.done",
        "member" => "people.saved",
        "removed" => "people.removed",
        "revoked" => "tokens.revoked_done",
        "scheduled" => "sched.done",
        "origins" => "origins.done",
        "certificate" => "cert.done",
        "key_added" => "keys.added",
        "key_removed" => "keys.removed",
        "report" => "report.saved",
        _ => return None,
    };
    Some(t.s(key))
}

async fn dashboard(State(st): St, u: WebUser, Query(q): Query<Fields>) -> Response {
    dashboard_view(&st, &u, &q, None, &Fields::new()).await
}

async fn dashboard_view(
    st: &Control,
    u: &WebUser,
    q: &Fields,
    error: Option<ApiError>,
    form: &Fields,
) -> Response {
    let t = u.t;
    let ids = match st.visible_orgs(&u.actor).await {
        Ok(i) => i,
        Err(e) => return api_error(t, e),
    };
    let mut orgs: Vec<(i64, String)> = vec![];
    for id in &ids {
        if let Ok(r) = st
            .db
            .q("SELECT name FROM orgs WHERE id = ?")
            .bind(*id)
            .fetch_one(&st.db.pool)
            .await
        {
            orgs.push((
                *id,
                sqlx::Row::try_get::<String, _>(&r, "name").unwrap_or_default(),
            ));
        }
    }
    let org = field(q, "org")
        .parse::<i64>()
        .ok()
        .filter(|o| ids.contains(o))
        .or_else(|| ids.first().copied());
    let mut sites = vec![];
    let mut org_name = None;
    if let Some(o) = org {
        if let Err(e) = st.check(&u.actor, o, Perm::Read).await {
            return api_error(t, e);
        }
        org_name = orgs.iter().find(|x| x.0 == o).map(|x| x.1.clone());
        let rows = match st
            .db
            .q("SELECT id FROM sites WHERE org_id = ? AND deleted_at IS NULL ORDER BY name LIMIT 500")
            .bind(o)
            .fetch_all(&st.db.pool)
            .await
        {
            Ok(r) => r,
            Err(e) => return api_error(t, e.into()),
        };
        let down = st.origins_down().await.unwrap_or_default();
        for r in rows {
            let Ok(id) = sqlx::Row::try_get::<i64, _>(&r, "id") else {
                continue;
            };
            let Ok(s) = st.site_row(id).await else {
                continue;
            };
            let Ok(j) = st.site_json(&s).await else {
                continue;
            };
            let mode = j["mode"].as_str().unwrap_or("active").to_owned();
            sites.push(SiteLine {
                id,
                name: s.name.clone(),
                hosts: join(&j["hosts"]),
                mode_label: mode_label(t, &mode),
                mode,
                version: s.published_version,
                draft_pending: j["draft_differs"].as_bool().unwrap_or(false),
                health: down
                    .iter()
                    .filter(|(_, site, _)| *site == s.name)
                    .map(|(e, _, o)| (e.clone(), o.clone()))
                    .collect(),
            });
        }
    }
    let mut all_orgs = vec![];
    if orgs.len() > 1 {
        for (id, name) in &orgs {
            let n = match st
                .db
                .q("SELECT COUNT(*) AS n FROM sites WHERE org_id = ? AND deleted_at IS NULL")
                .bind(*id)
                .fetch_one(&st.db.pool)
                .await
            {
                Ok(r) => sqlx::Row::try_get::<i64, _>(&r, "n").unwrap_or(0),
                Err(e) => return api_error(t, e.into()),
            };
            all_orgs.push((*id, name.clone(), n));
        }
    }
    let can_create = match org {
        Some(o) => st.check(&u.actor, o, Perm::Config).await.is_ok(),
        None => false,
    };
    let mut p = Page::of(u, t.s("dash.title"), org);
    p.flash = flash(t, q);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = render(&DashboardTpl {
        p,
        orgs: orgs
            .into_iter()
            .map(|(id, name)| (id, name, Some(id) == org))
            .collect(),
        all_orgs,
        org_name,
        sites,
        can_create,
        error_field: error.as_ref().and_then(|e| e.field.clone()),
        error: error.map(|e| e.message),
        form_name: field(form, "name").to_owned(),
        form_host: field(form, "host").to_owned(),
        form_origin: field(form, "origin").to_owned(),
    });
    *r.status_mut() = status;
    r
}

async fn create_site(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let Ok(org) = id.parse::<i64>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    if let Err(e) = st.check(&u.actor, org, Perm::Config).await {
        return api_error(u.t, e);
    }
    let doc = serde_json::json!({
        "name": field(&f, "name").trim(),
        "hosts": [field(&f, "host").trim()],
        "origin": [{"url": field(&f, "origin").trim()}],
    });
    let mut q = Fields::new();
    q.insert("org".into(), org.to_string());
    match st.create_site(&u.actor, org, doc).await {
        Ok(site) => Redirect::to(&format!("/sites/{}?ok=created", site.id)).into_response(),
        Err(e) if e.code == "invalid" || e.code == "conflict" => {
            dashboard_view(&st, &u, &q, Some(e), &f).await
        }
        Err(e) => api_error(u.t, e),
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Site
// ---------------------------------------------------------------------------------------------

struct VersionLine {
    version: i64,
    live: bool,
    author: String,
    date: String,
    comment: String,
}

#[derive(Template)]
#[template(path = "site.html")]
struct SiteTpl {
    p: Page,
    id: i64,
    name: String,
    hosts: String,
    mode: String,
    mode_label: &'static str,
    modes: Vec<(&'static str, &'static str)>,
    version: Option<i64>,
    origins: String,
    staging: String,
    health: Vec<(String, String)>,
    /// `http://<staging host>:<port>/` when an edge reports a plain-HTTP address (names under
    /// `.localhost` resolve to this machine in browsers).
    staging_link: Option<String>,
    draft_origins: String,
    has_cert: bool,
    /// (index, mode label, start, end)
    schedules: Vec<(usize, &'static str, String, String)>,
    can_config: bool,
    can_purge: bool,
    draft_differs: bool,
    diff: String,
    versions: Vec<VersionLine>,
    purges: Vec<(i64, String)>,
    error: Option<String>,
    error_field: Option<String>,
}

/// Loads a site the person may read, with what they may do there.
pub(crate) async fn load_site(
    st: &Control,
    u: &WebUser,
    id: &str,
) -> Result<(SiteRow, bool, bool), Response> {
    let Ok(id) = id.parse::<i64>() else {
        return Err(error_page(
            u.t,
            StatusCode::NOT_FOUND,
            u.t.s("err.not_found"),
        ));
    };
    let site = st.site_row(id).await.map_err(|e| api_error(u.t, e))?;
    st.check(&u.actor, site.org_id, Perm::Read)
        .await
        .map_err(|e| api_error(u.t, e))?;
    let can_config = st.check(&u.actor, site.org_id, Perm::Config).await.is_ok();
    let can_purge = st.check(&u.actor, site.org_id, Perm::Purge).await.is_ok();
    Ok((site, can_config, can_purge))
}

/// A site a form acts on, with what the person may do there.
struct SiteForm {
    site: SiteRow,
    can_config: bool,
    can_purge: bool,
}

/// Every site form starts here: CSRF token, the site (404 if unreadable), then the right the
/// form needs (`Purge` or `Config`).
async fn site_form(
    st: &Control,
    u: &WebUser,
    id: &str,
    f: &Fields,
    need: Perm,
) -> Result<SiteForm, Response> {
    check_csrf(u, f)?;
    let (site, can_config, can_purge) = load_site(st, u, id).await?;
    let allowed = if need == Perm::Purge {
        can_purge
    } else {
        can_config
    };
    if !allowed {
        return Err(error_page(
            u.t,
            StatusCode::FORBIDDEN,
            u.t.s("err.forbidden"),
        ));
    }
    Ok(SiteForm {
        site,
        can_config,
        can_purge,
    })
}

impl SiteForm {
    /// The site page again, with the refusal shown on its form.
    async fn refused(&self, st: &Control, u: &WebUser, e: ApiError) -> Response {
        site_view(
            st,
            u,
            &self.site,
            self.can_config,
            self.can_purge,
            &Fields::new(),
            Some(e),
        )
        .await
    }

    /// After a change: back to the site page with `ok` as its message, or the error shown on
    /// the form when the input was refused.
    async fn done<T>(
        &self,
        st: &Control,
        u: &WebUser,
        r: relais_control::error::ApiResult<T>,
        ok: &str,
    ) -> Response {
        match r {
            Ok(_) => Redirect::to(&format!("/sites/{}?ok={ok}", self.site.id)).into_response(),
            Err(e) => self.failed(st, u, e).await,
        }
    }

    async fn failed(&self, st: &Control, u: &WebUser, e: ApiError) -> Response {
        if e.code == "invalid" || e.code == "conflict" {
            self.refused(st, u, e).await
        } else {
            api_error(u.t, e)
        }
    }
}

async fn site_view(
    st: &Control,
    u: &WebUser,
    site: &SiteRow,
    can_config: bool,
    can_purge: bool,
    q: &Fields,
    error: Option<ApiError>,
) -> Response {
    let t = u.t;
    let j = match st.site_json(site).await {
        Ok(j) => j,
        Err(e) => return api_error(t, e),
    };
    let mode = j["mode"].as_str().unwrap_or("active").to_owned();
    let live: FileSite = match site.published_version {
        Some(v) => match st.published_doc(site.id, v).await {
            Ok(d) => d,
            Err(e) => return api_error(t, e),
        },
        None => site.draft.clone(),
    };
    let draft_differs = j["draft_differs"].as_bool().unwrap_or(false);
    let diff = if draft_differs {
        relais_control::sites::diff_lines(
            &relais_control::sites::to_toml(&live),
            &relais_control::sites::to_toml(&site.draft),
        )
        .lines()
        .filter(|l| !l.starts_with("  "))
        .collect::<Vec<_>>()
        .join("\n")
    } else {
        String::new()
    };
    let versions = st
        .versions(site.id)
        .await
        .unwrap_or_default()
        .iter()
        .map(|v| VersionLine {
            version: v["version"].as_i64().unwrap_or(0),
            live: v["version"].as_i64() == site.published_version,
            author: v["author"].as_str().unwrap_or("").to_owned(),
            date: when(v["created_at"].as_i64().unwrap_or(0)),
            comment: v["comment"].as_str().unwrap_or("").to_owned(),
        })
        .collect();
    let purges = st
        .site_purges(site.id, 5)
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let what = format!(
                "{} {} — {}/{}",
                r["kind"].as_str().unwrap_or(""),
                join(&r["values"]),
                r["edges_applied"],
                r["edges_total"]
            );
            (r["id"].as_i64().unwrap_or(0), what)
        })
        .collect();
    let mut p = Page::of(
        u,
        &format!("{} {}", t.s("site.name"), site.name),
        Some(site.org_id),
    );
    p.flash = flash(t, q);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = render(&SiteTpl {
        p,
        id: site.id,
        name: site.name.clone(),
        hosts: live.hosts.join(", "),
        mode_label: mode_label(t, &mode),
        mode,
        modes: ["active", "bypass", "maintenance", "disabled"]
            .into_iter()
            .map(|m| (m, mode_label(t, m)))
            .collect(),
        version: site.published_version,
        origins: live
            .origins
            .iter()
            .map(|o| o.url.clone())
            .collect::<Vec<_>>()
            .join(", "),
        staging: j["staging_host"].as_str().unwrap_or("").to_owned(),
        health: st.site_health(&site.name).await.unwrap_or_default(),
        staging_link: staging_link(st, j["staging_host"].as_str().unwrap_or("")).await,
        draft_origins: site
            .draft
            .origins
            .iter()
            .map(|o| o.url.clone())
            .collect::<Vec<_>>()
            .join("\n"),
        has_cert: site.draft.tls.is_some(),
        schedules: live
            .schedules
            .iter()
            .enumerate()
            .map(|(i, x)| (i, mode_label(t, &x.mode), x.start.clone(), x.end.clone()))
            .collect(),
        can_config,
        can_purge,
        draft_differs,
        diff,
        versions,
        purges,
        error_field: error.as_ref().and_then(|e| e.field.clone()),
        error: error.map(|e| e.message),
    });
    *r.status_mut() = status;
    r
}

async fn site_page(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    match load_site(&st, &u, &id).await {
        Ok((site, c, p)) => site_view(&st, &u, &site, c, p, &q, None).await,
        Err(r) => r,
    }
}

async fn set_mode(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let form = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if field(&f, "confirm") != "yes" {
        let e = ApiError::invalid("confirm", u.t.s("mode.need_confirm"));
        return form.refused(&st, &u, e).await;
    }
    let mode = field(&f, "mode").to_owned();
    if relais_edge::config::Mode::parse(&mode).is_none() {
        let e = ApiError::invalid("mode", "active, bypass, maintenance, disabled");
        return form.refused(&st, &u, e).await;
    }
    let r = st
        .publish_change(
            &u.actor,
            &form.site,
            "site.mode",
            format!("mode → {mode}"),
            |d| d.mode = Some(mode.clone()),
        )
        .await;
    form.done(&st, &u, r, "mode").await
}

async fn purge(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let form = match site_form(&st, &u, &id, &f, Perm::Purge).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let kind = field(&f, "kind").to_owned();
    let values: Vec<String> = if kind == "all" {
        vec![]
    } else {
        field(&f, "values")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let req = PurgeRequest {
        kind,
        values,
        soft: field(&f, "soft") == "yes",
    };
    match st.purge(&u.actor, &form.site, req).await {
        Ok(seq) => Redirect::to(&format!("/purges/{seq}")).into_response(),
        Err(e) => form.failed(&st, &u, e).await,
    }
}

async fn publish(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let form = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let comment: String = field(&f, "comment").chars().take(500).collect();
    let r = st.publish(&u.actor, &form.site, comment).await;
    form.done(&st, &u, r, "published").await
}

async fn rollback(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let form = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(v) = field(&f, "version").parse::<i64>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    let r = st.rollback(&u.actor, &form.site, v).await;
    form.done(&st, &u, r, "rollback").await
}

// ---------------------------------------------------------------------------------------------
// Purge receipt
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "receipt.html")]
struct ReceiptTpl {
    p: Page,
    id: i64,
    site: String,
    site_id: i64,
    what: String,
    complete: bool,
    applied: i64,
    total: i64,
    edges: Vec<(String, bool, String)>,
}

async fn receipt(State(st): St, u: WebUser, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    let (org, r) = match st.receipt(id).await {
        Ok(x) => x,
        Err(e) => return api_error(u.t, e),
    };
    if let Err(e) = st.check(&u.actor, org, Perm::Read).await {
        return api_error(u.t, e);
    }
    let edges = r["edges"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["edge"].as_str().unwrap_or("").to_owned(),
                        e["status"] == "applied",
                        e["latency_ms"]
                            .as_i64()
                            .map(|l| format!("{l} ms"))
                            .unwrap_or_else(|| "—".into()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    render(&ReceiptTpl {
        p: Page::of(&u, u.t.s("purge.receipt"), Some(org)),
        id,
        site: r["site"].as_str().unwrap_or("").to_owned(),
        site_id: r["site_id"].as_i64().unwrap_or(0),
        what: format!(
            "{} {}{}",
            r["kind"].as_str().unwrap_or(""),
            join(&r["values"]),
            if r["soft"] == true { " (soft)" } else { "" }
        ),
        complete: r["complete"] == true,
        applied: r["edges_applied"].as_i64().unwrap_or(0),
        total: r["edges_total"].as_i64().unwrap_or(0),
        edges,
    })
}

// ---------------------------------------------------------------------------------------------
// Rules and explain
// ---------------------------------------------------------------------------------------------

struct RuleLine {
    index: usize,
    label: String,
    scope: String,
    settings: String,
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesTpl {
    p: Page,
    id: i64,
    name: String,
    rules: Vec<RuleLine>,
    can_config: bool,
    url: String,
    content_type: String,
    explain: Vec<(String, String, String, String)>,
    error: Option<String>,
    error_field: Option<String>,
}

fn rule_lines(doc: &FileSite) -> Vec<RuleLine> {
    doc.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let v = serde_json::to_value(r).unwrap_or(Value::Null);
            let mut scope = "site".to_owned();
            let mut settings = vec![];
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    let shown = match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match k.as_str() {
                        "id" => {}
                        "default" => scope = "site".into(),
                        "group" | "content_type" | "dir" | "page" => scope = format!("{k} {shown}"),
                        _ => settings.push(format!("{k} = {shown}")),
                    }
                }
            }
            RuleLine {
                index: i,
                label: r.id.clone().unwrap_or_else(|| format!("#{}", i + 1)),
                scope,
                settings: settings.join(", "),
            }
        })
        .collect()
}

async fn rules_view(
    _st: &Control,
    u: &WebUser,
    site: &SiteRow,
    can_config: bool,
    q: &Fields,
    error: Option<ApiError>,
) -> Response {
    let url = field(q, "url").to_owned();
    let ct = field(q, "content_type").to_owned();
    let mut explain = vec![];
    if !url.is_empty() {
        let path = match url.parse::<http::Uri>() {
            Ok(u) if u.host().is_some() => u.path().to_owned(),
            _ => url.split('?').next().unwrap_or("/").to_owned(),
        };
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        if let Ok(j) = relais_control::sites::explain_json(
            &site.draft,
            &path,
            Some(ct.as_str()).filter(|c| !c.is_empty()),
        ) {
            let t = u.t;
            for s in j["settings"].as_array().into_iter().flatten() {
                let note = s["note"].as_str().map(|n| note_tr(t, n));
                let (winner, winner_scope) = match &s["rule"] {
                    Value::Object(o) => {
                        let scope = o.get("scope").and_then(Value::as_str).unwrap_or("");
                        (
                            format!(
                                "{} ({})",
                                rule_tr(t, o.get("rule").and_then(Value::as_str).unwrap_or("")),
                                scope_tr(t, scope)
                            ),
                            scope.to_owned(),
                        )
                    }
                    _ => (note.clone().unwrap_or_else(|| "—".into()), String::new()),
                };
                let over = s["overridden"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|o| {
                                let scope = o["scope"].as_str().unwrap_or("");
                                format!(
                                    "{} ({}) = {} : {} {} {}",
                                    rule_tr(t, o["rule"].as_str().unwrap_or("")),
                                    scope_tr(t, scope),
                                    o["value"].as_str().unwrap_or(""),
                                    scope_tr(t, &winner_scope),
                                    t.s("explain.more_specific"),
                                    scope_tr(t, scope),
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                let setting = s["setting"].as_str().unwrap_or("");
                let label = CATALOGUE_SETTING
                    .iter()
                    .find(|k| **k == setting)
                    .map(|k| t.s(&format!("setting.{k}")).to_owned())
                    .unwrap_or_else(|| setting.to_owned());
                explain.push((
                    label,
                    s["value"].as_str().unwrap_or("—").to_owned(),
                    winner,
                    over,
                ));
            }
        }
    }
    let mut p = Page::of(u, u.t.s("rules.title"), Some(site.org_id));
    p.flash = flash(u.t, q);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = render(&RulesTpl {
        p,
        id: site.id,
        name: site.name.clone(),
        rules: rule_lines(&site.draft),
        can_config,
        url,
        content_type: ct,
        explain,
        error_field: error.as_ref().and_then(|e| e.field.clone()),
        error: error.map(|e| e.message),
    });
    *r.status_mut() = status;
    r
}

async fn rules_page(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    match load_site(&st, &u, &id).await {
        Ok((site, c, _)) => rules_view(&st, &u, &site, c, &q, None).await,
        Err(r) => r,
    }
}

async fn save_rules(
    st: &Control,
    u: &WebUser,
    site: &SiteRow,
    rules: Vec<FileRule>,
    ok: &str,
) -> Response {
    let mut doc = site.draft.clone();
    doc.rules = rules;
    let body = serde_json::to_value(&doc).unwrap_or(Value::Null);
    match st.put_draft(&u.actor, site, body).await {
        Ok(_) => Redirect::to(&format!("/sites/{}/rules?ok={ok}", site.id)).into_response(),
        Err(e) if e.code == "invalid" || e.code == "conflict" => {
            rules_view(st, u, site, true, &Fields::new(), Some(e)).await
        }
        Err(e) => api_error(u.t, e),
    }
}

async fn add_rule(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let site = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x.site,
        Err(r) => return r,
    };
    let value = field(&f, "scope_value").trim().to_owned();
    let opt = |k: &str| Some(field(&f, k).trim().to_owned()).filter(|v| !v.is_empty());
    let mut rule = FileRule {
        cache: match field(&f, "cache") {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        },
        edge_ttl: opt("edge_ttl"),
        browser_ttl: opt("browser_ttl"),
        ..Default::default()
    };
    match field(&f, "scope") {
        "default" => rule.default = Some(true),
        "group" => rule.group = Some(value),
        "content_type" => rule.content_type = Some(value),
        "page" => rule.page = Some(value),
        _ => rule.dir = Some(value),
    }
    let mut rules = site.draft.rules.clone();
    rules.push(rule);
    save_rules(&st, &u, &site, rules, "added").await
}

async fn delete_rule(
    State(st): St,
    u: WebUser,
    Path((id, index)): Path<(String, String)>,
    Form(f): Form<Fields>,
) -> Response {
    let site = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x.site,
        Err(r) => return r,
    };
    let mut rules = site.draft.rules.clone();
    match index.parse::<usize>() {
        Ok(i) if i < rules.len() => {
            rules.remove(i);
        }
        _ => return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found")),
    }
    save_rules(&st, &u, &site, rules, "deleted").await
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditTpl {
    p: Page,
    org_id: i64,
    org_name: String,
    action: String,
    entries: Vec<audit::Entry>,
}

async fn audit_page(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    let Ok(org) = id.parse::<i64>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    if let Err(e) = st.check(&u.actor, org, Perm::Admin).await {
        return api_error(u.t, e);
    }
    let visible = match st.visible_orgs(&u.actor).await {
        Ok(v) => v,
        Err(e) => return api_error(u.t, e),
    };
    let mut orgs = vec![];
    for o in visible {
        if st
            .org_chain(o)
            .await
            .map(|c| c.contains(&org))
            .unwrap_or(false)
        {
            orgs.push(o);
        }
    }
    let action = field(&q, "action").trim().to_owned();
    let mut entries = match audit::list(
        &st.db,
        Some(&orgs),
        0,
        100_000,
        Some(action.as_str()).filter(|a| !a.is_empty()),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => return api_error(u.t, e.into()),
    };
    entries.reverse();
    entries.truncate(500);
    let org_name = match st
        .db
        .q("SELECT name FROM orgs WHERE id = ?")
        .bind(org)
        .fetch_one(&st.db.pool)
        .await
    {
        Ok(r) => sqlx::Row::try_get::<String, _>(&r, "name").unwrap_or_default(),
        Err(e) => return api_error(u.t, e.into()),
    };
    render(&AuditTpl {
        p: Page::of(&u, u.t.s("audit.title"), Some(org)),
        org_id: org,
        org_name,
        action,
        entries,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_compare() {
        assert!(super::ring_eq(b"abc", b"abc"));
        assert!(!super::ring_eq(b"abc", b"abd"));
    }

    #[test]
    fn csrf_differs_per_session() {
        assert_ne!(crate::csrf_for("rss_a"), crate::csrf_for("rss_b"));
        assert_eq!(crate::csrf_for("rss_a").len(), 64);
    }
}

// ---------------------------------------------------------------------------------------------
// People and tokens
// ---------------------------------------------------------------------------------------------

struct MemberLine {
    id: i64,
    email: String,
    name: String,
    role: String,
    totp: bool,
}

struct TokenLine {
    id: i64,
    name: String,
    prefix: String,
    scope: String,
    expires: String,
    last_used: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "people.html")]
struct PeopleTpl {
    p: Page,
    org_id: i64,
    org_name: String,
    members: Vec<MemberLine>,
    tokens: Vec<TokenLine>,
    new_token: Option<String>,
    error: Option<String>,
    error_field: Option<String>,
}

fn org_id(u: &WebUser, id: &str) -> Result<i64, Response> {
    id.parse::<i64>()
        .map_err(|_| error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found")))
}

async fn people_view(
    st: &Control,
    u: &WebUser,
    org: i64,
    q: &Fields,
    new_token: Option<String>,
    error: Option<ApiError>,
) -> Response {
    let t = u.t;
    let members = match st.members(&u.actor, org).await {
        Ok(m) => m,
        Err(e) => return api_error(t, e),
    };
    let tokens = match st.tokens(&u.actor, org).await {
        Ok(m) => m,
        Err(e) => return api_error(t, e),
    };
    let org_name = match st
        .db
        .q("SELECT name FROM orgs WHERE id = ?")
        .bind(org)
        .fetch_one(&st.db.pool)
        .await
    {
        Ok(r) => sqlx::Row::try_get::<String, _>(&r, "name").unwrap_or_default(),
        Err(e) => return api_error(t, e.into()),
    };
    let date = |v: &Value| {
        v.as_i64()
            .map(when)
            .unwrap_or_else(|| t.s("tokens.never").into())
    };
    let mut p = Page::of(u, t.s("people.title"), Some(org));
    p.flash = flash(t, q);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = render(&PeopleTpl {
        p,
        org_id: org,
        org_name,
        members: members["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| MemberLine {
                id: m["user_id"].as_i64().unwrap_or(0),
                email: m["email"].as_str().unwrap_or("").into(),
                name: m["name"].as_str().unwrap_or("").into(),
                role: m["role"].as_str().unwrap_or("").into(),
                totp: m["totp_enabled"] == true,
            })
            .collect(),
        tokens: tokens["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| TokenLine {
                id: k["id"].as_i64().unwrap_or(0),
                name: k["name"].as_str().unwrap_or("").into(),
                prefix: k["prefix"].as_str().unwrap_or("").into(),
                scope: k["scope"].as_str().unwrap_or("").into(),
                expires: date(&k["expires_at"]),
                last_used: date(&k["last_used_at"]),
                active: k["revoked_at"].is_null(),
            })
            .collect(),
        new_token,
        error_field: error.as_ref().and_then(|e| e.field.clone()),
        error: error.map(|e| e.message),
    });
    *r.status_mut() = status;
    r
}

async fn people_page(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    match org_id(&u, &id) {
        Ok(o) => people_view(&st, &u, o, &q, None, None).await,
        Err(r) => r,
    }
}

async fn set_member(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let org = match org_id(&u, &id) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let opt = |k: &str| Some(field(&f, k).to_owned()).filter(|v| !v.is_empty());
    let b = MemberBody {
        email: field(&f, "email").to_owned(),
        role: field(&f, "role").to_owned(),
        name: opt("name"),
        password: opt("password"),
    };
    match st.set_member(&u.actor, org, b).await {
        Ok(_) => Redirect::to(&format!("/orgs/{org}/people?ok=member")).into_response(),
        Err(e) if e.code == "invalid" || e.code == "conflict" => {
            people_view(&st, &u, org, &Fields::new(), None, Some(e)).await
        }
        Err(e) => api_error(u.t, e),
    }
}

async fn remove_member(
    State(st): St,
    u: WebUser,
    Path((id, user)): Path<(String, String)>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let (Ok(org), Ok(uid)) = (id.parse::<i64>(), user.parse::<i64>()) else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    match st.remove_member(&u.actor, org, uid).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/people?ok=removed")).into_response(),
        Err(e) => api_error(u.t, e),
    }
}

async fn create_token(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let org = match org_id(&u, &id) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let days = field(&f, "days").trim();
    let expires_in_days = if days.is_empty() {
        None
    } else {
        match days.parse::<u32>() {
            Ok(d) => Some(d),
            Err(_) => {
                let e = ApiError::invalid("expires_in_days", "1 to 3660");
                return people_view(&st, &u, org, &Fields::new(), None, Some(e)).await;
            }
        }
    };
    let b = TokenBody {
        name: field(&f, "name").to_owned(),
        scope: field(&f, "scope").to_owned(),
        expires_in_days,
    };
    match st.create_token(&u.actor, org, b).await {
        // Shown once, on this response only (never in a URL).
        Ok(v) => {
            let token = v["token"].as_str().map(str::to_owned);
            people_view(&st, &u, org, &Fields::new(), token, None).await
        }
        Err(e) if e.code == "invalid" => {
            people_view(&st, &u, org, &Fields::new(), None, Some(e)).await
        }
        Err(e) => api_error(u.t, e),
    }
}

async fn revoke_token(
    State(st): St,
    u: WebUser,
    Path((id, token)): Path<(String, String)>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let (Ok(org), Ok(tid)) = (id.parse::<i64>(), token.parse::<i64>()) else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    match st.revoke_token(&u.actor, org, tid).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/people?ok=revoked")).into_response(),
        Err(e) => api_error(u.t, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduled modes
// ---------------------------------------------------------------------------------------------

/// `2027-04-23T18:00` (a datetime-local field, read as UTC) → `2027-04-23T18:00:00Z`.
fn utc_instant(v: &str) -> String {
    let v = v.trim();
    match v.len() {
        16 => format!("{v}:00Z"),
        19 => format!("{v}Z"),
        _ => v.to_owned(),
    }
}

async fn change_schedules(
    st: &Control,
    u: &WebUser,
    id: &str,
    f: &Fields,
    change: impl Fn(&mut Vec<relais_edge::config::FileSchedule>) -> bool,
) -> Response {
    let form = match site_form(st, u, id, f, Perm::Config).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut current = match form.site.published_version {
        Some(v) => match st.published_doc(form.site.id, v).await {
            Ok(d) => d.schedules,
            Err(e) => return api_error(u.t, e),
        },
        None => form.site.draft.schedules.clone(),
    };
    if !change(&mut current) {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    }
    let n = current.len();
    let r = st
        .publish_change(
            &u.actor,
            &form.site,
            "site.schedules",
            format!("{n} schedule(s)"),
            |d| d.schedules = current.clone(),
        )
        .await;
    form.done(st, u, r, "scheduled").await
}

async fn add_schedule(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let s = relais_edge::config::FileSchedule {
        mode: field(&f, "mode").to_owned(),
        start: utc_instant(field(&f, "start")),
        end: utc_instant(field(&f, "end")),
    };
    change_schedules(&st, &u, &id, &f, |list| {
        list.push(s.clone());
        true
    })
    .await
}

async fn delete_schedule(
    State(st): St,
    u: WebUser,
    Path((id, index)): Path<(String, String)>,
    Form(f): Form<Fields>,
) -> Response {
    let Ok(i) = index.parse::<usize>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    change_schedules(&st, &u, &id, &f, |list| {
        if i < list.len() {
            list.remove(i);
            true
        } else {
            false
        }
    })
    .await
}

async fn staging_link(st: &Control, host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    let edges = st.edges_json().await.ok()?;
    let addr = edges
        .iter()
        .filter_map(|e| e["listen"].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.parse::<std::net::SocketAddr>().ok())?;
    Some(format!("http://{host}:{}/", addr.port()))
}

// ---------------------------------------------------------------------------------------------
// One version
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "version.html")]
struct VersionTpl {
    p: Page,
    id: i64,
    name: String,
    version: i64,
    author: String,
    date: String,
    comment: String,
    diff: Option<String>,
    toml: String,
}

async fn version_page(
    State(st): St,
    u: WebUser,
    Path((id, version)): Path<(String, String)>,
) -> Response {
    let (site, _, _) = match load_site(&st, &u, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(v) = version.parse::<i64>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    let doc = match st.published_doc(site.id, v).await {
        Ok(d) => d,
        Err(e) => return api_error(u.t, e),
    };
    let meta = st
        .versions(site.id)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|x| x["version"].as_i64() == Some(v))
        .unwrap_or(Value::Null);
    let toml = relais_control::sites::to_toml(&doc);
    let diff = match st.published_doc(site.id, v - 1).await {
        Ok(prev) => Some(relais_control::sites::diff_lines(
            &relais_control::sites::to_toml(&prev),
            &toml,
        )),
        Err(_) => None,
    };
    render(&VersionTpl {
        p: Page::of(&u, u.t.s("version.title"), Some(site.org_id)),
        id: site.id,
        name: site.name.clone(),
        version: v,
        author: meta["author"].as_str().unwrap_or("").to_owned(),
        date: when(meta["created_at"].as_i64().unwrap_or(0)),
        comment: meta["comment"].as_str().unwrap_or("").to_owned(),
        diff,
        toml,
    })
}

pub(crate) const CATALOGUE_SETTING: &[&str] = &[
    "cache",
    "edge_ttl",
    "browser_ttl",
    "respect_origin",
    "stale_while_revalidate",
    "stale_if_error",
    "query",
    "key_headers",
    "key_cookies",
];

/// A scope as `relais-rules` writes it (`directory /news/`), in the page's language.
fn scope_tr(t: Tr, scope: &str) -> String {
    for (en, key) in [
        ("platform default", "scope.platform"),
        ("site default", "scope.site"),
        ("group ", "scope.group"),
        ("content type ", "scope.content_type"),
        ("directory ", "scope.dir"),
        ("page ", "scope.page"),
    ] {
        if let Some(rest) = scope.strip_prefix(en) {
            return if rest.is_empty() {
                t.s(key).to_owned()
            } else {
                format!("{} {rest}", t.s(key))
            };
        }
    }
    scope.to_owned()
}

fn note_tr(t: Tr, note: &str) -> String {
    if note.starts_with("decided before the response") {
        t.s("explain.note.request_time").to_owned()
    } else if note.starts_with("content-type rules exist") {
        t.s("explain.note.content_type").to_owned()
    } else {
        note.to_owned()
    }
}

/// `rule 3` (an unnamed rule) or a rule's own id, in the page's language.
fn rule_tr(t: Tr, id: &str) -> String {
    let n = id.strip_prefix("rule ").unwrap_or(id);
    format!("{} {n}", t.s("explain.rule"))
}

// ---------------------------------------------------------------------------------------------
// Origins and certificate
// ---------------------------------------------------------------------------------------------

async fn set_origins(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let form = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let draft = &form.site.draft;
    let mut doc = draft.clone();
    // An origin already configured keeps its settings (Host, timeouts, health check).
    doc.origins = field(&f, "origins")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|url| {
            draft
                .origins
                .iter()
                .find(|o| o.url == url)
                .cloned()
                .unwrap_or(relais_edge::config::FileOrigin {
                    url: url.to_owned(),
                    host: None,
                    connect_timeout: None,
                    response_timeout: None,
                    ca_file: None,
                    health: None,
                })
        })
        .collect();
    let body = serde_json::to_value(&doc).unwrap_or(Value::Null);
    let r = st.put_draft(&u.actor, &form.site, body).await;
    form.done(&st, &u, r, "origins").await
}

async fn set_certificate(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let form = match site_form(&st, &u, &id, &f, Perm::Config).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r = st
        .set_certificate(
            &u.actor,
            &form.site,
            field(&f, "cert_pem").to_owned(),
            field(&f, "key_pem").to_owned(),
        )
        .await;
    form.done(&st, &u, r, "certificate").await
}

// ---------------------------------------------------------------------------------------------
// Access logs and SSH keys
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsTpl {
    p: Page,
    id: i64,
    name: String,
    /// (date, lines, edges, complete)
    days: Vec<(String, u64, usize, bool)>,
}

async fn logs_page(State(st): St, u: WebUser, Path(id): Path<String>) -> Response {
    let (site, _, _) = match load_site(&st, &u, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let days = st
        .logs
        .as_ref()
        .and_then(|s| s.days(&site.name).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.date, d.lines, d.edges.len(), d.complete))
        .collect();
    render(&LogsTpl {
        p: Page::of(&u, u.t.s("logs.title"), Some(site.org_id)),
        id: site.id,
        name: site.name.clone(),
        days,
    })
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysTpl {
    p: Page,
    /// (id, name, fingerprint)
    keys: Vec<(i64, String, String)>,
    error: Option<String>,
}

async fn keys_view(st: &Control, u: &WebUser, q: &Fields, error: Option<String>) -> Response {
    let keys = match st.ssh_keys(&u.actor).await {
        Ok(k) => k,
        Err(e) => return api_error(u.t, e),
    };
    let mut p = Page::of(u, u.t.s("keys.title"), None);
    p.flash = flash(u.t, q);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = render(&KeysTpl {
        p,
        keys: keys
            .iter()
            .map(|k| {
                (
                    k["id"].as_i64().unwrap_or(0),
                    k["name"].as_str().unwrap_or("").to_owned(),
                    k["fingerprint"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        error,
    });
    *r.status_mut() = status;
    r
}

async fn keys_page(State(st): St, u: WebUser, Query(q): Query<Fields>) -> Response {
    keys_view(&st, &u, &q, None).await
}

async fn add_key(State(st): St, u: WebUser, Form(f): Form<Fields>) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let name = Some(field(&f, "name").to_owned()).filter(|n| !n.is_empty());
    match st.add_ssh_key(&u.actor, field(&f, "key"), name).await {
        Ok(_) => Redirect::to("/account/keys?ok=key_added").into_response(),
        Err(e) if e.code == "invalid" => keys_view(&st, &u, &Fields::new(), Some(e.message)).await,
        Err(e) => api_error(u.t, e),
    }
}

async fn delete_key(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&u, &f) {
        return r;
    }
    let Ok(kid) = id.parse::<i64>() else {
        return error_page(u.t, StatusCode::NOT_FOUND, u.t.s("err.not_found"));
    };
    match st.delete_ssh_key(&u.actor, kid).await {
        Ok(()) => Redirect::to("/account/keys?ok=key_removed").into_response(),
        Err(e) => api_error(u.t, e),
    }
}
