//! Traffic statistics (CDN-08, CDN-11, CDN-23): edges send numbered batches of per-site
//! minutes; each batch is merged, in one transaction, into the site's minute, hour and day rows
//! (counters add, visitor sketches take the register-wise maximum), so every grain is complete as
//! soon as the batch is committed and a batch sent twice counts once (the edge's last batch
//! number is kept with it). Minutes are kept 7 days, hours 400 days (13 months), days forever,
//! all configurable.

use std::collections::BTreeMap;

use relais_edge::stats::{Agg, Batch, TTFB_BOUNDS_MS};
use serde_json::{Value, json};

use crate::db::col;
use crate::edges::EdgeRow;
use crate::error::{ApiError, ApiResult};

/// Metrics a weekly report may carry, in display order.
pub const METRICS: &[&str] = &[
    "requests",
    "visitors",
    "bytes_sent",
    "hit_ratio",
    "byte_hit_ratio",
    "under_2s",
    "errors",
    "status",
];

/// Largest batch an edge may send (site-minutes).
const MAX_BATCH: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Minute,
    Hour,
    Day,
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        match s {
            "minute" => Some(Step::Minute),
            "hour" => Some(Step::Hour),
            "day" => Some(Step::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Minute => "minute",
            Step::Hour => "hour",
            Step::Day => "day",
        }
    }

    fn grain(self) -> &'static str {
        match self {
            Step::Minute => "m",
            Step::Hour => "h",
            Step::Day => "d",
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Step::Minute => 60,
            Step::Hour => 3600,
            Step::Day => 86_400,
        }
    }
}

/// A date range in whole UTC days, `from` and `to` included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

impl Range {
    /// Parses `from`/`to` (YYYY-MM-DD); by default the 7 days ending today.
    pub fn parse(from: Option<&str>, to: Option<&str>, today: i64) -> ApiResult<Range> {
        let day = |field: &str, v: Option<&str>, default: i64| -> ApiResult<i64> {
            match v.filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => relais_edge::accesslog::parse_date(v).ok_or_else(|| {
                    ApiError::invalid(field, "a date YYYY-MM-DD / une date AAAA-MM-JJ")
                }),
            }
        };
        let to = day("to", to, today)?;
        let from = day("from", from, to - 6)?;
        if from > to {
            return Err(ApiError::invalid(
                "from",
                "must not be after `to` / ne doit pas suivre la date de fin",
            ));
        }
        if to - from > 3660 {
            return Err(ApiError::invalid(
                "from",
                "at most ten years at a time / dix ans au plus",
            ));
        }
        Ok(Range { from, to })
    }

    pub fn days(self) -> i64 {
        self.to - self.from + 1
    }

    /// The step a chart of this range reads best at.
    pub fn auto_step(self) -> Step {
        if self.days() <= 2 {
            Step::Hour
        } else {
            Step::Day
        }
    }
}

/// The query string of statistics routes and pages.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// `minute` (ranges of at most 2 days), `hour` or `day`; by default hours for up to 2 days,
    /// days beyond.
    #[serde(default)]
    pub step: Option<String>,
    /// Exports: `csv`, `xlsx` or `ods`.
    #[serde(default)]
    pub format: Option<String>,
    /// Exports: `fr` (default) or `en` headers.
    #[serde(default)]
    pub lang: Option<String>,
}

impl StatsQuery {
    pub fn resolve(&self, today: i64) -> ApiResult<(Range, Step)> {
        let range = Range::parse(self.from.as_deref(), self.to.as_deref(), today)?;
        let step = match self.step.as_deref().filter(|s| !s.is_empty()) {
            None => range.auto_step(),
            Some(s) => Step::parse(s).ok_or_else(|| {
                ApiError::invalid("step", "minute, hour or day / minute, hour ou day")
            })?,
        };
        if step == Step::Minute && range.days() > 2 {
            return Err(ApiError::invalid(
                "step",
                "minutes for at most 2 days / minutes sur 2 jours au plus",
            ));
        }
        Ok((range, step))
    }

    pub fn format(&self) -> ApiResult<crate::sheets::Format> {
        crate::sheets::Format::parse(self.format.as_deref().unwrap_or("csv"))
            .ok_or_else(|| ApiError::invalid("format", "csv, xlsx or ods / csv, xlsx ou ods"))
    }

    pub fn french(&self) -> bool {
        self.lang.as_deref() != Some("en")
    }
}

/// Statistics over a range: totals, one point per step, and totals per site.
#[derive(Debug, Default)]
pub struct Report {
    pub total: Agg,
    pub points: Vec<(i64, Agg)>,
    pub sites: Vec<(String, Agg)>,
}

fn parse_agg(s: &str) -> Agg {
    serde_json::from_str(s).unwrap_or_default()
}

impl crate::Control {
    /// Merges an edge's batch (see the module documentation). Returns the site-minutes counted.
    pub async fn ingest_stats(&self, edge: &EdgeRow, batch: Batch) -> ApiResult<usize> {
        if batch.minutes.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "minutes",
                "too many minutes in one batch",
            ));
        }
        let mut rows: BTreeMap<(String, &'static str, i64), Agg> = BTreeMap::new();
        for m in &batch.minutes {
            if m.site.is_empty() || m.site.len() > 253 || m.minute < 0 {
                return Err(ApiError::invalid(
                    "minutes",
                    "a site name and a minute are required",
                ));
            }
            let at = m.minute * 60;
            for (grain, secs) in [("m", 60), ("h", 3600), ("d", 86_400)] {
                rows.entry((m.site.clone(), grain, at - at.rem_euclid(secs)))
                    .or_default()
                    .merge(&m.agg);
            }
        }
        let _w = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        let last: i64 = col(
            &self
                .db
                .q("SELECT stats_seq FROM edges WHERE id = ?")
                .bind(edge.id)
                .fetch_one(&mut *tx)
                .await?,
            "stats_seq",
        )?;
        if batch.seq as i64 <= last {
            // Delivered before (the edge did not see our answer): already counted.
            tx.commit().await?;
            return Ok(0);
        }
        for ((site, grain, at), agg) in rows {
            let existing = self
                .db
                .q("SELECT data FROM stats WHERE site = ? AND grain = ? AND at = ?")
                .bind(site.clone())
                .bind(grain)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
            let mut merged = match existing {
                Some(r) => parse_agg(&col::<String>(&r, "data")?),
                None => Agg::default(),
            };
            merged.merge(&agg);
            let data = serde_json::to_string(&merged)
                .map_err(|e| ApiError::new("internal", e.to_string()))?;
            self.db
                .q("INSERT INTO stats (site, grain, at, data) VALUES (?, ?, ?, ?) ON CONFLICT (site, grain, at) DO UPDATE SET data = excluded.data")
                .bind(site)
                .bind(grain)
                .bind(at)
                .bind(data)
                .execute(&mut *tx)
                .await?;
        }
        self.db
            .q("UPDATE edges SET stats_seq = ? WHERE id = ?")
            .bind(batch.seq as i64)
            .bind(edge.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(batch.minutes.len())
    }

    /// Removes minutes and hours older than their retention. Returns the rows removed.
    pub async fn expire_stats(&self) -> ApiResult<u64> {
        let now = self.now_secs();
        let mut removed = 0;
        for (grain, days) in [
            ("m", self.opts.stats_minutes_days),
            ("h", self.opts.stats_hours_days),
        ] {
            if days <= 0 {
                continue;
            }
            removed += self
                .db
                .q("DELETE FROM stats WHERE grain = ? AND at < ?")
                .bind(grain)
                .bind(now - days * 86_400)
                .execute(&self.db.pool)
                .await?
                .rows_affected();
        }
        Ok(removed)
    }

    pub(crate) fn now_secs(&self) -> i64 {
        self.clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64
    }

    pub fn today(&self) -> i64 {
        self.now_secs().div_euclid(86_400)
    }

    /// Statistics of `sites` over `range`, with points every `step` (empty steps included).
    pub async fn stats_report(
        &self,
        sites: &[String],
        range: Range,
        step: Step,
    ) -> ApiResult<Report> {
        let mut report = Report::default();
        if sites.is_empty() {
            return Ok(report);
        }
        let (start, end) = (range.from * 86_400, (range.to + 1) * 86_400);
        let marks = vec!["?"; sites.len()].join(", ");
        // Totals from day rows, which are never expired.
        let q = format!(
            "SELECT site, grain, at, data FROM stats WHERE grain IN ('d', ?) AND at >= ? AND at < ? AND site IN ({marks})"
        );
        let mut query = self.db.q(&q).bind(step.grain()).bind(start).bind(end);
        for s in sites {
            query = query.bind(s.clone());
        }
        let rows = query.fetch_all(&self.db.pool).await?;
        let mut per_site: BTreeMap<String, Agg> =
            sites.iter().map(|s| (s.clone(), Agg::default())).collect();
        let mut points: BTreeMap<i64, Agg> = BTreeMap::new();
        let mut t = start;
        while t < end {
            points.insert(t, Agg::default());
            t += step.seconds();
        }
        for r in rows {
            let grain: String = col(&r, "grain")?;
            let at: i64 = col(&r, "at")?;
            let agg = parse_agg(&col::<String>(&r, "data")?);
            if grain == step.grain()
                && let Some(p) = points.get_mut(&at)
            {
                p.merge(&agg);
            }
            if grain == "d" {
                report.total.merge(&agg);
                if let Some(s) = per_site.get_mut(&col::<String>(&r, "site")?) {
                    s.merge(&agg);
                }
            }
        }
        report.points = points.into_iter().collect();
        report.sites = per_site.into_iter().collect();
        Ok(report)
    }

    /// An organisation and every organisation below it.
    pub async fn org_subtree(&self, org_id: i64) -> ApiResult<Vec<i64>> {
        let rows = self
            .db
            .q("SELECT id, parent_id FROM orgs")
            .fetch_all(&self.db.pool)
            .await?;
        let mut all = Vec::with_capacity(rows.len());
        for r in rows {
            all.push((col::<i64>(&r, "id")?, col::<Option<i64>>(&r, "parent_id")?));
        }
        let mut out = vec![org_id];
        crate::auth::descend(&mut out, &all);
        Ok(out)
    }

    /// Names of the sites of an organisation and its sub-organisations.
    pub async fn org_site_names(&self, org_id: i64) -> ApiResult<Vec<String>> {
        let orgs = self.org_subtree(org_id).await?;
        let marks = vec!["?"; orgs.len()].join(", ");
        let mut q = self.db.q(&format!(
            "SELECT name FROM sites WHERE org_id IN ({marks}) ORDER BY name"
        ));
        for o in orgs {
            q = q.bind(o);
        }
        q.fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| col::<String>(r, "name").map_err(ApiError::from))
            .collect()
    }

    /// Bandwidth and storage per site for a calendar month (CDN-23).
    pub async fn usage(&self, org_id: i64, year: i64, month: u32) -> ApiResult<Vec<Value>> {
        let first = relais_edge::accesslog::days_from_civil(year, month as i64, 1);
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month as i64 + 1)
        };
        let last = relais_edge::accesslog::days_from_civil(ny, nm, 1) - 1;
        let sites = self.org_site_names(org_id).await?;
        let report = self
            .stats_report(
                &sites,
                Range {
                    from: first,
                    to: last,
                },
                Step::Day,
            )
            .await?;
        let prefix = format!("{year:04}-{month:02}-");
        let mut out = vec![];
        for (site, agg) in report.sites {
            let storage: u64 = match &self.logs {
                Some(store) => store
                    .days(&site)
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| d.date.starts_with(&prefix))
                    .filter_map(|d| store.file(&site, &d.date).ok())
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum(),
                None => 0,
            };
            out.push(json!({
                "site": site,
                "requests": agg.requests,
                "bytes_sent": agg.bytes_sent,
                "bytes_origin": agg.bytes_origin,
                "log_storage_bytes": storage,
            }));
        }
        Ok(out)
    }
}

impl crate::Control {
    /// Sends last week's report (Monday to Sunday, UTC) to every organisation that has report
    /// recipients, traffic that week, and has not had it yet. Returns how many messages were
    /// sent.
    pub async fn send_weekly_reports(&self) -> ApiResult<usize> {
        let Some(mailer) = &self.mailer else {
            return Ok(0);
        };
        let today = self.today();
        let monday = today - (today + 3).rem_euclid(7);
        let week = Range {
            from: monday - 7,
            to: monday - 1,
        };
        let orgs = self
            .db
            .q("SELECT o.id, o.name, o.language, o.report_recipients, o.report_metrics FROM orgs o WHERE o.report_recipients <> '[]' AND NOT EXISTS (SELECT 1 FROM reports_sent r WHERE r.org_id = o.id AND r.week = ?) ORDER BY o.id")
            .bind(week.from)
            .fetch_all(&self.db.pool)
            .await?;
        let mut sent = 0;
        for o in orgs {
            let id: i64 = col(&o, "id")?;
            let recipients: Vec<String> =
                serde_json::from_str(&col::<String>(&o, "report_recipients")?).unwrap_or_default();
            let metrics: Vec<String> =
                serde_json::from_str(&col::<String>(&o, "report_metrics")?).unwrap_or_default();
            let sites = self.org_site_names(id).await?;
            if recipients.is_empty() || sites.is_empty() {
                continue;
            }
            let r = self.stats_report(&sites, week, Step::Day).await?;
            if r.total.requests == 0 {
                // Nothing served that week (sites not yet live): no report.
                continue;
            }
            let (from, to) = (
                relais_edge::accesslog::date_string(week.from),
                relais_edge::accesslog::date_string(week.to),
            );
            let link = format!(
                "{}/orgs/{id}/stats?from={from}&to={to}",
                self.opts
                    .public_url
                    .as_deref()
                    .unwrap_or("")
                    .trim_end_matches('/')
            );
            let (subject, body) = crate::mail::weekly_report(
                &col::<String>(&o, "language")?,
                &col::<String>(&o, "name")?,
                &from,
                &to,
                &metrics,
                &r.sites,
                &r.total,
                &link,
            );
            mailer
                .send(&recipients, &subject, &body)
                .await
                .map_err(|e| ApiError::new("internal", e))?;
            self.db
                .q("INSERT INTO reports_sent (org_id, week, sent_at) VALUES (?, ?, ?) ON CONFLICT (org_id, week) DO NOTHING")
                .bind(id)
                .bind(week.from)
                .bind(self.now_secs())
                .execute(&self.db.pool)
                .await?;
            sent += 1;
        }
        if sent > 0 {
            tracing::info!(sent, "weekly statistics reports sent");
        }
        Ok(sent)
    }
}

fn ratio(v: Option<f64>) -> Value {
    v.map(|r| json!((r * 10_000.0).round() / 10_000.0))
        .unwrap_or(Value::Null)
}

/// The JSON form of an aggregate (ratios rounded to 4 decimals, `null` when undefined).
pub fn agg_json(a: &Agg, detail: bool) -> Value {
    let mut v = json!({
        "requests": a.requests,
        "visitors": a.visitors.estimate(),
        "hits": a.hits,
        "stale": a.stale,
        "misses": a.misses,
        "bypass": a.bypass,
        "errors": a.errors,
        "bytes_sent": a.bytes_sent,
        "bytes_cached": a.bytes_cached,
        "bytes_origin": a.bytes_origin,
        "status": {"1xx": a.status[0], "2xx": a.status[1], "3xx": a.status[2], "4xx": a.status[3], "5xx": a.status[4]},
        "hit_ratio": ratio(a.hit_ratio()),
        "byte_hit_ratio": ratio(a.byte_hit_ratio()),
        "under_2s": ratio(a.under_2s()),
    });
    if detail {
        v["response_time_ms"] = a
            .ttfb
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"le": TTFB_BOUNDS_MS.get(i), "count": n}))
            .collect();
    }
    v
}

/// Unix seconds as `YYYY-MM-DD` (days) or `YYYY-MM-DDTHH:MMZ`.
pub fn stamp(at: i64, step: Step) -> String {
    let date = relais_edge::accesslog::date_string(at.div_euclid(86_400));
    if step == Step::Day {
        return date;
    }
    let s = at.rem_euclid(86_400);
    format!("{date}T{:02}:{:02}Z", s / 3600, s % 3600 / 60)
}

pub fn report_json(r: &Report, range: Range, step: Step) -> Value {
    json!({
        "from": relais_edge::accesslog::date_string(range.from),
        "to": relais_edge::accesslog::date_string(range.to),
        "step": step.as_str(),
        "total": agg_json(&r.total, true),
        "points": r.points.iter().map(|(at, a)| {
            let mut v = agg_json(a, false);
            v["at"] = json!(stamp(*at, step));
            v
        }).collect::<Vec<_>>(),
        "sites": r.sites.iter().map(|(s, a)| {
            let mut v = agg_json(a, false);
            v["site"] = json!(s);
            v
        }).collect::<Vec<_>>(),
    })
}
