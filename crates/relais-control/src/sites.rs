//! Sites: one draft and a history of published versions (CDN-20).
//!
//! A site's document is the `[[site]]` table of `relais.toml` in JSON ([`FileSite`]), validated
//! by the edge's own validator before it is stored. The draft is served on the staging host
//! `<name>.<staging_domain>` as soon as it is saved; publishing copies it into a new numbered
//! version in one transaction (atomic for every edge: they receive the whole document); a
//! rollback publishes an older version's document again as a new version, so history only
//! grows. Mode switches and schedules apply at once: they publish too.

use std::collections::BTreeSet;

use relais_edge::config::{ConfigError, FileSite, validate_site_doc};
use serde_json::{Value, json};
use sqlx::Row;

use crate::Control;
use crate::audit::{self, Change};
use crate::auth::{Actor, millis};
use crate::db::{Tx, col};
use crate::error::{ApiError, ApiResult};

pub const REDACTED: &str = "(secret: stored, never shown)";

/// A site row.
#[derive(Debug, Clone)]
pub struct SiteRow {
    pub id: i64,
    pub org_id: i64,
    pub name: String,
    pub draft: FileSite,
    pub draft_updated_at: i64,
    pub draft_updated_by: String,
    pub published_version: Option<i64>,
    pub created_at: i64,
}

fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::Invalid { field, message } => ApiError::invalid(field, message),
        other => ApiError::invalid("site", other.to_string()),
    }
}

/// Parses and validates a document sent through the API. Files on the server cannot be
/// referenced through the API (that would read arbitrary server files): PEM and HTML go inline.
pub fn parse_doc(v: Value, name: &str, staff: bool) -> ApiResult<FileSite> {
    let mut v = v;
    if let Some(o) = v.as_object_mut() {
        o.insert("name".into(), Value::String(name.to_owned()));
    }
    let doc: FileSite =
        serde_json::from_value(v).map_err(|e| ApiError::invalid("site", format!("{e}")))?;
    if doc.maintenance_page.is_some() {
        return Err(ApiError::invalid(
            "site.maintenance_page",
            "server files cannot be referenced through the API; send the page as maintenance_html",
        ));
    }
    if let Some(t) = &doc.tls
        && (t.cert.is_some() || t.key.is_some())
    {
        return Err(ApiError::invalid(
            "site.tls",
            "server files cannot be referenced through the API; send cert_pem and key_pem",
        ));
    }
    for (i, o) in doc.origins.iter().enumerate() {
        if o.ca_file.is_some() {
            return Err(ApiError::invalid(
                format!("site.origin[{i}].ca_file"),
                "server files cannot be referenced through the API",
            ));
        }
    }
    for (i, h) in doc.hosts.iter().enumerate() {
        if h.trim() == "*" && !staff {
            return Err(ApiError::invalid(
                format!("site.hosts[{i}]"),
                "only platform staff may create a catch-all (\"*\") site",
            ));
        }
    }
    validate_site_doc(&doc).map_err(config_error)?;
    Ok(doc)
}

/// The document as shown to callers: private keys never leave the control plane.
pub fn redact(doc: &FileSite) -> Value {
    let mut d = doc.clone();
    if let Some(t) = &mut d.tls
        && t.key_pem.is_some()
    {
        t.key_pem = Some(REDACTED.into());
    }
    serde_json::to_value(&d).unwrap_or(Value::Null)
}

/// A document sent back with the redacted key keeps the stored key.
pub fn unredact(doc: &mut FileSite, stored: &FileSite) {
    if let (Some(t), Some(s)) = (&mut doc.tls, &stored.tls)
        && t.key_pem.as_deref() == Some(REDACTED)
    {
        t.key_pem = s.key_pem.clone();
    }
}

fn hosts_of(docs: &[&FileSite]) -> BTreeSet<String> {
    docs.iter()
        .flat_map(|d| d.hosts.iter())
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

impl Control {
    pub async fn site_row(&self, id: i64) -> ApiResult<SiteRow> {
        let r = self
            .db
            .q("SELECT * FROM sites WHERE id = ? AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(ApiError::not_found)?;
        row_site(&r)
    }

    pub async fn published_doc(&self, site_id: i64, version: i64) -> ApiResult<FileSite> {
        let r = self
            .db
            .q("SELECT doc FROM site_versions WHERE site_id = ? AND version = ?")
            .bind(site_id)
            .bind(version)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(ApiError::not_found)?;
        doc_from(&col::<String>(&r, "doc")?)
    }

    /// Claims host names for a site (its draft and published ones together).
    async fn set_hosts(
        &self,
        tx: &mut Tx,
        site_id: i64,
        hosts: &BTreeSet<String>,
    ) -> ApiResult<()> {
        self.db
            .q("DELETE FROM site_hosts WHERE site_id = ?")
            .bind(site_id)
            .execute(&mut **tx)
            .await?;
        for h in hosts {
            let r = self
                .db
                .q("INSERT INTO site_hosts (host, site_id) VALUES (?, ?) ON CONFLICT (host) DO NOTHING")
                .bind(h.clone())
                .bind(site_id)
                .execute(&mut **tx)
                .await?;
            if r.rows_affected() == 0 {
                return Err(ApiError::new(
                    "conflict",
                    format!(
                        "host {h:?} is already served by another site / l'hôte {h:?} est déjà servi par un autre site"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub async fn create_site(&self, actor: &Actor, org_id: i64, body: Value) -> ApiResult<SiteRow> {
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("site.name", "required"))?
            .to_owned();
        let doc = parse_doc(body, &name, actor.is_staff())?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let exists = self
            .db
            .q("SELECT id FROM sites WHERE name = ?")
            .bind(name.clone())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(ApiError::new(
                "conflict",
                format!("a site named {name:?} already exists"),
            ));
        }
        let seq = self.db.next(&mut tx, "config_seq").await?;
        let text = serde_json::to_string(&doc).map_err(|_| ApiError::new("internal", "encode"))?;
        let row = self
            .db
            .q("INSERT INTO sites (org_id, name, draft, draft_updated_at, draft_updated_by, changed_seq, created_at) \
                VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id")
            .bind(org_id)
            .bind(name.clone())
            .bind(text)
            .bind(millis(now))
            .bind(actor.label())
            .bind(seq)
            .bind(millis(now))
            .fetch_one(&mut *tx)
            .await?;
        let id: i64 = col(&row, "id")?;
        self.set_hosts(&mut tx, id, &hosts_of(&[&doc])).await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(org_id),
                action: "site.create",
                target: format!("site {name} (#{id})"),
                before: None,
                after: Some(redact(&doc)),
            },
        )
        .await?;
        tx.commit().await?;
        self.notify(Some(seq), None);
        self.site_row(id).await
    }

    pub async fn put_draft(
        &self,
        actor: &Actor,
        site: &SiteRow,
        body: Value,
    ) -> ApiResult<SiteRow> {
        let mut doc = parse_doc(body, &site.name, actor.is_staff())?;
        unredact(&mut doc, &site.draft);
        validate_site_doc(&doc).map_err(config_error)?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let published = match site.published_version {
            Some(v) => Some(self.published_doc(site.id, v).await?),
            None => None,
        };
        let mut docs = vec![&doc];
        docs.extend(published.as_ref());
        self.set_hosts(&mut tx, site.id, &hosts_of(&docs)).await?;
        let seq = self.db.next(&mut tx, "config_seq").await?;
        self.db
            .q("UPDATE sites SET draft = ?, draft_updated_at = ?, draft_updated_by = ?, changed_seq = ? WHERE id = ?")
            .bind(serde_json::to_string(&doc).unwrap_or_default())
            .bind(millis(now))
            .bind(actor.label())
            .bind(seq)
            .bind(site.id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(site.org_id),
                action: "site.draft",
                target: format!("site {} (#{})", site.name, site.id),
                before: Some(redact(&site.draft)),
                after: Some(redact(&doc)),
            },
        )
        .await?;
        tx.commit().await?;
        self.notify(Some(seq), None);
        self.site_row(site.id).await
    }

    /// Publishes `doc` as the next version (the draft becomes `doc` too).
    async fn publish_doc(
        &self,
        actor: &Actor,
        site: &SiteRow,
        doc: FileSite,
        action: &'static str,
        comment: String,
    ) -> ApiResult<i64> {
        self.publish_doc_with_draft(actor, site, doc, None, action, comment)
            .await
    }

    /// Publishes `doc`; the draft becomes `draft` when given (a pending edit kept), else `doc`.
    async fn publish_doc_with_draft(
        &self,
        actor: &Actor,
        site: &SiteRow,
        doc: FileSite,
        draft: Option<FileSite>,
        action: &'static str,
        comment: String,
    ) -> ApiResult<i64> {
        validate_site_doc(&doc).map_err(config_error)?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let before = match site.published_version {
            Some(v) => Some(self.published_doc(site.id, v).await?),
            None => None,
        };
        let row = self
            .db
            .q("SELECT COALESCE(MAX(version), 0) AS v FROM site_versions WHERE site_id = ?")
            .bind(site.id)
            .fetch_one(&mut *tx)
            .await?;
        let version: i64 = col::<i64>(&row, "v")? + 1;
        let text = serde_json::to_string(&doc).unwrap_or_default();
        self.db
            .q("INSERT INTO site_versions (site_id, version, doc, author, comment, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(site.id)
            .bind(version)
            .bind(text.clone())
            .bind(actor.label())
            .bind(comment.clone())
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        let mut hosted = vec![&doc];
        hosted.extend(draft.as_ref());
        self.set_hosts(&mut tx, site.id, &hosts_of(&hosted)).await?;
        let seq = self.db.next(&mut tx, "config_seq").await?;
        let draft_text = match &draft {
            Some(d) => serde_json::to_string(d).unwrap_or_default(),
            None => text,
        };
        self.db
            .q("UPDATE sites SET draft = ?, draft_updated_at = ?, draft_updated_by = ?, published_version = ?, changed_seq = ? WHERE id = ?")
            .bind(draft_text)
            .bind(millis(now))
            .bind(actor.label())
            .bind(version)
            .bind(seq)
            .bind(site.id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(site.org_id),
                action,
                target: format!("site {} (#{}) version {version}", site.name, site.id),
                before: before.as_ref().map(redact),
                after: Some(json!({"version": version, "comment": comment, "doc": redact(&doc)})),
            },
        )
        .await?;
        tx.commit().await?;
        self.notify(Some(seq), None);
        Ok(version)
    }

    pub async fn publish(&self, actor: &Actor, site: &SiteRow, comment: String) -> ApiResult<i64> {
        self.publish_doc(actor, site, site.draft.clone(), "site.publish", comment)
            .await
    }

    pub async fn rollback(&self, actor: &Actor, site: &SiteRow, version: i64) -> ApiResult<i64> {
        let doc = self.published_doc(site.id, version).await?;
        self.publish_doc(
            actor,
            site,
            doc,
            "site.rollback",
            format!("rollback to version {version}"),
        )
        .await
    }

    /// Changes something of the live configuration at once (mode, schedules): the published
    /// document changes and so does the draft.
    pub async fn publish_change(
        &self,
        actor: &Actor,
        site: &SiteRow,
        action: &'static str,
        comment: String,
        change: impl Fn(&mut FileSite),
    ) -> ApiResult<i64> {
        let mut doc = match site.published_version {
            Some(v) => self.published_doc(site.id, v).await?,
            None => site.draft.clone(),
        };
        change(&mut doc);
        validate_site_doc(&doc).map_err(config_error)?;
        // Keep the draft's other pending edits, with the same change, in the same transaction
        // (one change for the edges).
        let mut draft = site.draft.clone();
        change(&mut draft);
        let draft = (site.published_version.is_some() && validate_site_doc(&draft).is_ok())
            .then_some(draft);
        self.publish_doc_with_draft(actor, site, doc, draft, action, comment)
            .await
    }

    /// Puts a certificate and key (PEM) in the draft, after the edge's own TLS loader has
    /// checked that they parse and match.
    pub async fn set_certificate(
        &self,
        actor: &Actor,
        site: &SiteRow,
        cert_pem: String,
        key_pem: String,
    ) -> ApiResult<SiteRow> {
        let mut doc = site.draft.clone();
        doc.tls = Some(relais_edge::config::FileTls {
            cert: None,
            key: None,
            cert_pem: Some(cert_pem),
            key_pem: Some(key_pem),
        });
        let check = relais_edge::config::Config::for_follower(relais_edge::config::FileConfig {
            version: Some(relais_edge::config::CONFIG_VERSION),
            edge: relais_edge::config::FileEdge {
                listen: vec!["127.0.0.1:0".into()],
                ..Default::default()
            },
            cache: Default::default(),
            sites: vec![doc.clone()],
        })
        .map_err(|e| ApiError::invalid("certificate", e.to_string()))?;
        relais_edge::tls::load_site_certs(&check)
            .map_err(|e| ApiError::invalid("certificate", e))?;
        let body = serde_json::to_value(&doc).unwrap_or(Value::Null);
        self.put_draft(actor, site, body).await
    }

    pub async fn delete_site(&self, actor: &Actor, site: &SiteRow) -> ApiResult<()> {
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        self.db
            .q("DELETE FROM site_hosts WHERE site_id = ?")
            .bind(site.id)
            .execute(&mut *tx)
            .await?;
        let seq = self.db.next(&mut tx, "config_seq").await?;
        self.db
            .q("UPDATE sites SET deleted_at = ?, name = ?, changed_seq = ? WHERE id = ?")
            .bind(millis(now))
            .bind(format!("{}~deleted~{}", site.name, site.id))
            .bind(seq)
            .bind(site.id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(site.org_id),
                action: "site.delete",
                target: format!("site {} (#{})", site.name, site.id),
                before: Some(redact(&site.draft)),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        self.notify(Some(seq), None);
        Ok(())
    }

    pub async fn site_json(&self, s: &SiteRow) -> ApiResult<Value> {
        let published = match s.published_version {
            Some(v) => Some(self.published_doc(s.id, v).await?),
            None => None,
        };
        let differs = published
            .as_ref()
            .is_none_or(|p| serde_json::to_value(p).ok() != serde_json::to_value(&s.draft).ok());
        let live = published.as_ref().unwrap_or(&s.draft);
        Ok(json!({
            "id": s.id,
            "org_id": s.org_id,
            "name": s.name,
            "hosts": live.hosts,
            "mode": live.mode.clone().unwrap_or_else(|| "active".into()),
            "published_version": s.published_version,
            "published": published.as_ref().map(redact),
            "draft": redact(&s.draft),
            "draft_differs": differs,
            "draft_updated_at": s.draft_updated_at,
            "draft_updated_by": s.draft_updated_by,
            "staging_host": relais_edge::proto::staging_host(&s.name, &self.opts.staging_domain),
            "created_at": s.created_at,
        }))
    }

    pub async fn versions(&self, site_id: i64) -> ApiResult<Vec<Value>> {
        let rows = self
            .db
            .q("SELECT version, author, comment, created_at FROM site_versions WHERE site_id = ? ORDER BY version DESC")
            .bind(site_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(json!({
                    "version": col::<i64>(r, "version")?,
                    "author": col::<String>(r, "author")?,
                    "comment": col::<String>(r, "comment")?,
                    "created_at": col::<i64>(r, "created_at")?,
                }))
            })
            .collect()
    }

    /// A document by reference: a version number, `published` or `draft`.
    pub async fn doc_ref(&self, s: &SiteRow, r: &str) -> ApiResult<FileSite> {
        match r {
            "draft" => Ok(s.draft.clone()),
            "published" => match s.published_version {
                Some(v) => self.published_doc(s.id, v).await,
                None => Err(ApiError::not_found()),
            },
            n => {
                let v: i64 = n.parse().map_err(|_| {
                    ApiError::invalid("version", "a number, `published` or `draft`")
                })?;
                self.published_doc(s.id, v).await
            }
        }
    }
}

fn doc_from(text: &str) -> ApiResult<FileSite> {
    serde_json::from_str(text).map_err(|e| {
        tracing::error!(error = %e, "stored site document unreadable");
        ApiError::new("internal", "internal error")
    })
}

fn row_site(r: &sqlx::any::AnyRow) -> ApiResult<SiteRow> {
    Ok(SiteRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        draft: doc_from(&r.try_get::<String, _>("draft")?)?,
        draft_updated_at: r.try_get("draft_updated_at")?,
        draft_updated_by: r.try_get("draft_updated_by")?,
        published_version: r.try_get("published_version")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The document as TOML (what a person reads in a diff), key material redacted.
pub fn to_toml(doc: &FileSite) -> String {
    let v = redact(doc);
    match toml::to_string_pretty(&v) {
        Ok(t) => t,
        Err(_) => serde_json::to_string_pretty(&v).unwrap_or_default(),
    }
}

/// A line diff (longest common subsequence), `-`/`+`/` ` prefixed.
pub fn diff_lines(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str("  ");
            out.push_str(a[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str("- ");
            out.push_str(a[i]);
            i += 1;
        } else {
            out.push_str("+ ");
            out.push_str(b[j]);
            j += 1;
        }
        out.push('\n');
    }
    out
}

/// `explain` as JSON.
pub fn explain_json(doc: &FileSite, path: &str, content_type: Option<&str>) -> ApiResult<Value> {
    let site = validate_site_doc(doc).map_err(config_error)?;
    let lines = site.rules.explain(path, content_type);
    let settings: Vec<Value> = lines
        .iter()
        .map(|l| {
            json!({
                "setting": l.setting,
                "value": l.value,
                "rule": l.winner.as_ref().map(|w| json!({"rule": w.0, "scope": w.1})),
                "overridden": l.overridden.iter().map(|o| json!({
                    "rule": o.rule, "scope": o.scope, "value": o.value, "reason": o.reason,
                })).collect::<Vec<_>>(),
                "note": l.note,
            })
        })
        .collect();
    Ok(json!({
        "path": path,
        "content_type": content_type,
        "settings": settings,
        "text": relais_rules::render_explain(&lines),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff_lines("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(d, "  a\n- b\n+ x\n  c\n");
        assert_eq!(diff_lines("", "new\n"), "+ new\n");
    }
}
