//! Statistics pages: per site and per organisation, a date range, summary figures, two charts
//! drawn as inline SVG on the server (no script; each bar has a title and the same figures are
//! in a table below for screen readers), exports, and the weekly report's settings.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use relais_control::auth::Perm;
use relais_control::mail::{human_bytes, percent};
use relais_control::members::OrgSettings;
use relais_control::stats::{METRICS, Range, Report, StatsQuery, Step, stamp};
use relais_edge::accesslog::date_string;
use relais_edge::stats::Agg;

use crate::WebUser;
use crate::i18n::Tr;
use crate::pages::{
    Fields, Page, St, api_error, check_csrf, error_page, field, flash, load_site, render,
};

#[derive(Template)]
#[template(path = "stats.html")]
struct StatsTpl {
    p: Page,
    heading: String,
    action: String,
    export: String,
    from: String,
    to: String,
    step: String,
    error: Option<String>,
    tiles: Vec<(&'static str, String)>,
    chart_requests: String,
    chart_bytes: String,
    rows: Vec<Vec<String>>,
    /// Organisation page: (site id, name, figures).
    sites: Vec<(i64, String, Vec<String>)>,
    report: Option<ReportForm>,
    back: Option<String>,
}

struct ReportForm {
    org: i64,
    recipients: String,
    /// (key, label key, chosen)
    metrics: Vec<(&'static str, String, bool)>,
    language_en: bool,
    /// Why the last submission was refused (the form then shows what was typed).
    error: Option<String>,
}

impl ReportForm {
    fn new(org: i64, recipients: &[String], chosen: &[String], language_en: bool) -> Self {
        ReportForm {
            org,
            recipients: recipients.join("\n"),
            metrics: METRICS
                .iter()
                .map(|m| (*m, format!("metric.{m}"), chosen.iter().any(|c| c == m)))
                .collect(),
            language_en,
            error: None,
        }
    }
}

fn pct(r: Option<f64>, t: Tr) -> String {
    r.map_or_else(|| "—".into(), |_| percent(r, fr(t)))
}

fn fr(t: Tr) -> bool {
    t.0 == crate::i18n::Lang::Fr
}

fn tiles(a: &Agg, t: Tr) -> Vec<(&'static str, String)> {
    vec![
        ("stats.requests", a.requests.to_string()),
        ("stats.visitors", a.visitors.estimate().to_string()),
        ("stats.bytes", human_bytes(a.bytes_sent, fr(t))),
        ("stats.hit_ratio", pct(a.hit_ratio(), t)),
        ("stats.byte_hit_ratio", pct(a.byte_hit_ratio(), t)),
        ("stats.under_2s", pct(a.under_2s(), t)),
        ("stats.errors", a.errors.to_string()),
    ]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart: each bar is `first` (dark) stacked under `second` (light).
fn chart(label: &str, bars: &[(String, u64, u64, String)], legend: (&str, &str)) -> String {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    let max = bars.iter().map(|b| b.1 + b.2).max().unwrap_or(0).max(1) as f64;
    let bw = W / bars.len().max(1) as f64;
    let mut s = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {}\" role=\"img\" aria-label=\"{}\" preserveAspectRatio=\"none\">",
        H + 2.0,
        esc(label)
    );
    for (i, (at, a, b, text)) in bars.iter().enumerate() {
        let x = i as f64 * bw;
        let ha = *a as f64 / max * H;
        let hb = *b as f64 / max * H;
        s.push_str(&format!(
            "<g><title>{} — {}</title><rect class=\"a\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{ha:.2}\"/><rect class=\"b\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{hb:.2}\"/></g>",
            esc(at),
            esc(text),
            H - ha,
            (bw - 1.0).max(0.5),
            H - ha - hb,
            (bw - 1.0).max(0.5),
        ));
    }
    s.push_str(&format!(
        "<line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" class=\"axis\"/></svg><p class=\"legend\"><span class=\"key a\"></span> {} <span class=\"key b\"></span> {}</p>",
        esc(legend.0),
        esc(legend.1)
    ));
    s
}

fn row(at: String, a: &Agg, t: Tr) -> Vec<String> {
    vec![
        at,
        a.requests.to_string(),
        a.visitors.estimate().to_string(),
        human_bytes(a.bytes_sent, fr(t)),
        pct(a.hit_ratio(), t),
        pct(a.byte_hit_ratio(), t),
        pct(a.under_2s(), t),
        a.errors.to_string(),
    ]
}

#[allow(clippy::too_many_arguments)]
fn view(
    u: &WebUser,
    org: i64,
    heading: String,
    action: String,
    export: String,
    q: &StatsQuery,
    resolved: Result<(Range, Step, Report), String>,
    sites: Vec<(i64, String)>,
    report: Option<ReportForm>,
    back: Option<String>,
    flash_q: &Fields,
) -> Response {
    let t = u.t;
    let mut p = Page::of(u, t.s("stats.title"), Some(org));
    p.flash = flash(t, flash_q);
    let (range, step, r, error) = match resolved {
        Ok((range, step, r)) => (Some(range), step, r, None),
        Err(e) => (None, Step::Day, Report::default(), Some(e)),
    };
    let bars_req: Vec<_> = r
        .points
        .iter()
        .map(|(at, a)| {
            let cached = a.hits + a.stale;
            (
                stamp(*at, step),
                cached,
                a.requests - cached.min(a.requests),
                format!("{} {}", a.requests, t.s("stats.requests").to_lowercase()),
            )
        })
        .collect();
    let bars_bytes: Vec<_> = r
        .points
        .iter()
        .map(|(at, a)| {
            (
                stamp(*at, step),
                a.bytes_cached,
                a.bytes_origin,
                human_bytes(a.bytes_sent, fr(t)),
            )
        })
        .collect();
    let sites = sites
        .into_iter()
        .map(|(id, name)| {
            let a = r
                .sites
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            let cells = row(String::new(), &a, t).into_iter().skip(1).collect();
            (id, name, cells)
        })
        .collect();
    let (from, to) = match range {
        Some(r) => (date_string(r.from), date_string(r.to)),
        None => (
            q.from.clone().unwrap_or_default(),
            q.to.clone().unwrap_or_default(),
        ),
    };
    let export = format!(
        "{export}?from={from}&to={to}&step={}&lang={}",
        step.as_str(),
        t.0.code()
    );
    let tpl = StatsTpl {
        heading,
        action,
        export,
        from,
        to,
        step: q.step.clone().unwrap_or_default(),
        error: error.clone(),
        tiles: tiles(&r.total, t),
        chart_requests: chart(
            t.s("stats.chart_requests"),
            &bars_req,
            (t.s("stats.from_cache"), t.s("stats.from_origin")),
        ),
        chart_bytes: chart(
            t.s("stats.chart_bytes"),
            &bars_bytes,
            (t.s("stats.from_cache"), t.s("stats.from_origin")),
        ),
        rows: r
            .points
            .iter()
            .map(|(at, a)| row(stamp(*at, step), a, t))
            .collect(),
        sites,
        report,
        back,
        p,
    };
    let mut resp = render(&tpl);
    if error.is_some() {
        *resp.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

fn split(q: Fields) -> (StatsQuery, Fields) {
    let sq = StatsQuery {
        from: q.get("from").cloned(),
        to: q.get("to").cloned(),
        step: q.get("step").cloned(),
        ..Default::default()
    };
    (sq, q)
}

pub(crate) async fn site_stats_page(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    let (site, _, _) = match load_site(&st, &u, &id).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (q, raw) = split(q);
    let resolved = match q.resolve(st.today()) {
        Ok((range, step)) => st
            .stats_report(std::slice::from_ref(&site.name), range, step)
            .await
            .map(|r| (range, step, r))
            .map_err(|e| e.message),
        Err(e) => Err(e.message),
    };
    view(
        &u,
        site.org_id,
        format!("{} — {}", u.t.s("stats.title"), site.name),
        format!("/sites/{}/stats", site.id),
        format!("/api/v1/sites/{}/stats/export", site.id),
        &q,
        resolved,
        vec![],
        None,
        Some(format!("/sites/{}", site.id)),
        &raw,
    )
}

pub(crate) async fn org_stats_page(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    let Ok(org) = id.parse::<i64>() else {
        return error_page(
            u.t,
            axum::http::StatusCode::NOT_FOUND,
            u.t.s("err.not_found"),
        );
    };
    org_view(st, u, org, q, None).await
}

/// The organisation's statistics page; `typed` is a refused report form, shown as typed.
async fn org_view(
    st: std::sync::Arc<relais_control::Control>,
    u: WebUser,
    org: i64,
    q: Fields,
    typed: Option<ReportForm>,
) -> Response {
    if let Err(e) = st.check(&u.actor, org, Perm::Read).await {
        return api_error(u.t, e);
    }
    let (q, raw) = split(q);
    let names = match st.org_site_names(org).await {
        Ok(n) => n,
        Err(e) => return api_error(u.t, e),
    };
    let mut sites = vec![];
    for n in &names {
        if let Ok(Some(r)) = st
            .db
            .q("SELECT id FROM sites WHERE name = ?")
            .bind(n.clone())
            .fetch_optional(&st.db.pool)
            .await
            && let Ok(id) = relais_control::db::col::<i64>(&r, "id")
        {
            sites.push((id, n.clone()));
        }
    }
    let resolved = match q.resolve(st.today()) {
        Ok((range, step)) => st
            .stats_report(&names, range, step)
            .await
            .map(|r| (range, step, r))
            .map_err(|e| e.message),
        Err(e) => Err(e.message),
    };
    let settings = st
        .db
        .q("SELECT name, report_recipients, report_metrics, language FROM orgs WHERE id = ?")
        .bind(org)
        .fetch_optional(&st.db.pool)
        .await
        .ok()
        .flatten();
    let (name, report) = match settings {
        Some(r) => {
            let get = |c: &str| relais_control::db::col::<String>(&r, c).unwrap_or_default();
            let recipients: Vec<String> =
                serde_json::from_str(&get("report_recipients")).unwrap_or_default();
            let chosen: Vec<String> =
                serde_json::from_str(&get("report_metrics")).unwrap_or_default();
            let form = ReportForm::new(org, &recipients, &chosen, get("language") == "en");
            (get("name"), Some(typed.unwrap_or(form)))
        }
        None => (String::new(), None),
    };
    let can_admin = st.check(&u.actor, org, Perm::Admin).await.is_ok();
    view(
        &u,
        org,
        format!("{} — {name}", u.t.s("stats.title")),
        format!("/orgs/{org}/stats"),
        format!("/api/v1/orgs/{org}/stats/export"),
        &q,
        resolved,
        sites,
        report.filter(|_| can_admin),
        None,
        &raw,
    )
}

pub(crate) async fn save_report(
    State(st): St,
    u: WebUser,
    Path(id): Path<String>,
    Form(f): Form<Vec<(String, String)>>,
) -> Response {
    let fields: Fields = f.iter().cloned().collect();
    if let Err(r) = check_csrf(&u, &fields) {
        return r;
    }
    let Ok(org) = id.parse::<i64>() else {
        return error_page(
            u.t,
            axum::http::StatusCode::NOT_FOUND,
            u.t.s("err.not_found"),
        );
    };
    let recipients: Vec<String> = field(&fields, "recipients")
        .split(['\n', ',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let metrics: Vec<String> = f
        .iter()
        .filter(|(k, _)| k == "metric")
        .map(|(_, v)| v.clone())
        .collect();
    let language_en = field(&fields, "language") == "en";
    let settings = OrgSettings {
        report_recipients: Some(recipients.clone()),
        report_metrics: Some(metrics.clone()),
        language: Some(if language_en { "en" } else { "fr" }.into()),
        ..Default::default()
    };
    match st.set_org_settings(&u.actor, org, settings).await {
        Ok(()) => Redirect::to(&format!("/orgs/{org}/stats?ok=report")).into_response(),
        // A refused address is shown on the form, with what was typed kept.
        Err(e) if e.code == "invalid" => {
            let mut typed = ReportForm::new(org, &recipients, &metrics, language_en);
            // Name the refused address ("report_recipients[2]" says which).
            let bad = e
                .field
                .as_deref()
                .and_then(|f| f.strip_prefix("report_recipients["))
                .and_then(|f| f.strip_suffix(']'))
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| recipients.get(i));
            typed.error = Some(match bad {
                Some(a) => format!("{a} : {}", e.message),
                None => e.message,
            });
            let mut page = org_view(st, u, org, Fields::default(), Some(typed)).await;
            if page.status().is_success() {
                *page.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            }
            page
        }
        Err(e) => api_error(u.t, e),
    }
}
