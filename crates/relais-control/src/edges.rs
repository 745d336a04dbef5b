//! Edges, purges and configuration distribution.
//!
//! Purges get a global sequence number when they are committed. Each edge holds a stream
//! (`GET /edge/v1/stream`) on which it receives, in order, a snapshot of every site if its
//! configuration is behind, every purge after the sequence it reports, then changes as they are
//! committed, and a ping every second carrying the heads. Edges acknowledge (`POST
//! /edge/v1/ack`) the purge sequence they have applied; a purge's receipt lists, per edge,
//! whether and how fast it was applied.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relais_edge::config::FileSite;
use relais_edge::proto::{Ack, Message, PurgeMsg, SiteEntry};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::audit::{self, Change};
use crate::auth::{Actor, millis, new_token, sha256_hex};
use crate::db::{Db, DbError, col};
use crate::error::{ApiError, ApiResult};
use crate::sites::SiteRow;
use crate::{Control, Heads};

pub const PING_EVERY: Duration = Duration::from_secs(1);
/// Most URLs in one purge request.
pub const MAX_PURGE_VALUES: usize = 1000;

pub async fn purge_head(db: &Db) -> Result<i64, DbError> {
    let r = db
        .q("SELECT COALESCE(MAX(seq), 0) AS s FROM purges")
        .fetch_one(&db.pool)
        .await?;
    col(&r, "s")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// `url`, `prefix`, `tag` or `all`.
    pub kind: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub soft: bool,
}

/// An edge as the control plane knows it.
#[derive(Debug, Clone)]
pub struct EdgeRow {
    pub id: i64,
    pub name: String,
}

impl Control {
    pub async fn create_edge(&self, actor: &Actor, name: &str) -> ApiResult<(i64, String)> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ApiError::invalid(
                "name",
                "letters, digits, '-', '_' or '.'",
            ));
        }
        let token = new_token("rle_");
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let r = self
            .db
            .q("INSERT INTO edges (name, token_hash, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING id")
            .bind(name.to_owned())
            .bind(sha256_hex(token.as_bytes()))
            .bind(millis(now))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(r) = r else {
            return Err(ApiError::new(
                "conflict",
                format!("an edge named {name:?} exists"),
            ));
        };
        let id: i64 = col(&r, "id")?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: None,
                action: "edge.create",
                target: format!("edge {name} (#{id})"),
                before: None,
                after: Some(json!({"name": name})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok((id, token))
    }

    /// Retires an edge: its token stops working and receipts no longer wait for it.
    pub async fn delete_edge(&self, actor: &Actor, id: i64) -> ApiResult<()> {
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let r = self
            .db
            .q("DELETE FROM edges WHERE id = ? RETURNING name")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(ApiError::not_found)?;
        let name: String = col(&r, "name")?;
        self.db
            .q("DELETE FROM purge_acks WHERE edge_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: None,
                action: "edge.delete",
                target: format!("edge {name} (#{id})"),
                before: Some(json!({"name": name})),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// For `relais serve`: the in-process edge's record, with a fresh token each start.
    pub async fn local_edge_token(&self, name: &str) -> Result<String, DbError> {
        let token = new_token("rle_");
        let _w = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        let h = sha256_hex(token.as_bytes());
        let now = millis(self.clock.now());
        let n = self
            .db
            .q("UPDATE edges SET token_hash = ? WHERE name = ?")
            .bind(h.clone())
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            self.db
                .q("INSERT INTO edges (name, token_hash, created_at) VALUES (?, ?, ?)")
                .bind(name.to_owned())
                .bind(h)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(token)
    }

    pub async fn edge_by_token(&self, token: &str) -> ApiResult<EdgeRow> {
        let r = self
            .db
            .q("SELECT id, name FROM edges WHERE token_hash = ?")
            .bind(sha256_hex(token.as_bytes()))
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        Ok(EdgeRow {
            id: col(&r, "id")?,
            name: col(&r, "name")?,
        })
    }

    pub async fn edges_json(&self) -> ApiResult<Vec<Value>> {
        let rows = self
            .db
            .q("SELECT * FROM edges ORDER BY id")
            .fetch_all(&self.db.pool)
            .await?;
        let heads = *self.heads.borrow();
        rows.iter()
            .map(|r| {
                let purge_seq: i64 = col(r, "purge_seq")?;
                let listen: String = col(r, "listen")?;
                Ok(json!({
                    "id": col::<i64>(r, "id")?,
                    "name": col::<String>(r, "name")?,
                    "listen": serde_json::from_str::<Value>(&listen).unwrap_or(json!([])),
                    "last_seen_at": col::<Option<i64>>(r, "last_seen_at")?,
                    "config_seq": col::<i64>(r, "config_seq")?,
                    "purge_seq": purge_seq,
                    "purges_behind": (heads.purge_seq - purge_seq).max(0),
                    "vouched": col::<i64>(r, "vouched")? != 0,
                    "config_error": col::<Option<String>>(r, "config_error")?,
                    "origins_down": serde_json::from_str::<Value>(&col::<String>(r, "origins_down")?).unwrap_or(json!([])),
                }))
            })
            .collect()
    }

    /// Every origin some edge reports down: (edge, site, origin). One query, for pages that
    /// show many sites.
    pub async fn origins_down(&self) -> ApiResult<Vec<(String, String, String)>> {
        let rows = self
            .db
            .q("SELECT name, origins_down FROM edges ORDER BY id")
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = vec![];
        for r in rows {
            let edge: String = col(&r, "name")?;
            let down: Vec<(String, String)> =
                serde_json::from_str(&col::<String>(&r, "origins_down")?).unwrap_or_default();
            out.extend(down.into_iter().map(|(s, o)| (edge.clone(), s, o)));
        }
        Ok(out)
    }

    /// Origins of one site that some edge reports down: (edge, origin).
    pub async fn site_health(&self, site: &str) -> ApiResult<Vec<(String, String)>> {
        Ok(self
            .origins_down()
            .await?
            .into_iter()
            .filter(|(_, s, _)| s == site)
            .map(|(e, _, o)| (e, o))
            .collect())
    }

    /// Records a purge and returns its sequence number (committed before this returns).
    pub async fn purge(&self, actor: &Actor, site: &SiteRow, req: PurgeRequest) -> ApiResult<i64> {
        match req.kind.as_str() {
            "all" => {
                if !req.values.is_empty() {
                    return Err(ApiError::invalid("values", "`all` takes no values"));
                }
            }
            "url" | "prefix" | "tag" => {
                if req.values.is_empty() {
                    return Err(ApiError::invalid("values", "give at least one value"));
                }
                if req.values.len() > MAX_PURGE_VALUES {
                    return Err(ApiError::invalid(
                        "values",
                        format!("at most {MAX_PURGE_VALUES} per request"),
                    ));
                }
                for (i, v) in req.values.iter().enumerate() {
                    let ok = match req.kind.as_str() {
                        "url" => {
                            v.starts_with('/')
                                || v.parse::<http::Uri>().is_ok_and(|u| {
                                    u.host().is_some_and(|h| {
                                        site.draft.hosts.iter().any(|sh| host_matches(sh, h))
                                    })
                                })
                        }
                        "prefix" => v.starts_with('/'),
                        _ => !v.is_empty() && v.len() <= 1024,
                    };
                    if !ok {
                        let hint = match req.kind.as_str() {
                            "url" => "a path (/page) or a URL on one of the site's hosts",
                            "prefix" => "a path starting with /",
                            _ => "a tag, 1 to 1024 characters",
                        };
                        return Err(ApiError::invalid(format!("values[{i}]"), hint));
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid("kind", "one of url, prefix, tag, all"));
            }
        }
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let r = self
            .db
            .q("SELECT COALESCE(MAX(seq), 0) AS s FROM purges")
            .fetch_one(&mut *tx)
            .await?;
        let seq: i64 = col::<i64>(&r, "s")? + 1;
        let vals = serde_json::to_string(&req.values).unwrap_or_default();
        self.db
            .q("INSERT INTO purges (seq, org_id, site_id, site_name, kind, vals, soft, actor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(seq)
            .bind(site.org_id)
            .bind(site.id)
            .bind(site.name.clone())
            .bind(req.kind.clone())
            .bind(vals)
            .bind(req.soft as i64)
            .bind(actor.label())
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(site.org_id),
                action: "purge",
                target: format!("site {} (#{}) purge {seq}", site.name, site.id),
                before: None,
                after: Some(json!({"kind": req.kind, "values": req.values, "soft": req.soft})),
            },
        )
        .await?;
        tx.commit().await?;
        self.notify(None, Some(seq));
        Ok(seq)
    }

    /// A purge's receipt: the request, and per edge whether it was applied and how fast.
    pub async fn receipt(&self, seq: i64) -> ApiResult<(i64, Value)> {
        let p = self
            .db
            .q("SELECT * FROM purges WHERE seq = ?")
            .bind(seq)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(ApiError::not_found)?;
        let created: i64 = col(&p, "created_at")?;
        let org_id: i64 = col(&p, "org_id")?;
        let rows = self
            .db
            .q(
                "SELECT e.id, e.name, e.last_seen_at, a.acked_at FROM edges e \
                LEFT JOIN purge_acks a ON a.edge_id = e.id AND a.purge_seq = ? ORDER BY e.id",
            )
            .bind(seq)
            .fetch_all(&self.db.pool)
            .await?;
        let mut edges = vec![];
        let mut done = 0;
        for r in &rows {
            let acked: Option<i64> = col(r, "acked_at")?;
            if acked.is_some() {
                done += 1;
            }
            edges.push(json!({
                "edge": col::<String>(r, "name")?,
                "status": if acked.is_some() { "applied" } else { "pending" },
                "applied_at": acked,
                "latency_ms": acked.map(|a| (a - created).max(0)),
                "last_seen_at": col::<Option<i64>>(r, "last_seen_at")?,
            }));
        }
        let vals: String = col(&p, "vals")?;
        Ok((
            org_id,
            json!({
                "id": seq,
                "site": col::<String>(&p, "site_name")?,
                "site_id": col::<i64>(&p, "site_id")?,
                "kind": col::<String>(&p, "kind")?,
                "values": serde_json::from_str::<Value>(&vals).unwrap_or(json!([])),
                "soft": col::<i64>(&p, "soft")? != 0,
                "requested_by": col::<String>(&p, "actor")?,
                "created_at": created,
                "complete": done == rows.len(),
                "edges_applied": done,
                "edges_total": rows.len(),
                "edges": edges,
            }),
        ))
    }

    pub async fn site_purges(&self, site_id: i64, limit: i64) -> ApiResult<Vec<Value>> {
        let rows = self
            .db
            .q("SELECT seq FROM purges WHERE site_id = ? ORDER BY seq DESC LIMIT ?")
            .bind(site_id)
            .bind(limit)
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = vec![];
        for r in rows {
            out.push(self.receipt(col(&r, "seq")?).await?.1);
        }
        Ok(out)
    }

    /// Records an edge's progress.
    pub async fn ack(&self, edge: &EdgeRow, ack: &Ack) -> ApiResult<()> {
        let now = millis(self.clock.now());
        let mut tx = self.db.begin().await?;
        let r = self
            .db
            .q("SELECT purge_seq FROM edges WHERE id = ?")
            .bind(edge.id)
            .fetch_one(&mut *tx)
            .await?;
        let old: i64 = col(&r, "purge_seq")?;
        let new = ack.purge_seq as i64;
        if new > old {
            self.db
                .q("INSERT INTO purge_acks (purge_seq, edge_id, acked_at) \
                    SELECT seq, ?, ? FROM purges WHERE seq > ? AND seq <= ? ON CONFLICT DO NOTHING")
                .bind(edge.id)
                .bind(now)
                .bind(old)
                .bind(new)
                .execute(&mut *tx)
                .await?;
        }
        self.db
            .q("UPDATE edges SET last_seen_at = ?, purge_seq = ?, config_seq = ?, vouched = ?, config_error = ?, listen = ?, origins_down = ? WHERE id = ?")
            .bind(now)
            .bind(new.max(old))
            .bind(ack.config_seq as i64)
            .bind(ack.vouched as i64)
            .bind(ack.config_error.clone())
            .bind(serde_json::to_string(&ack.listen).unwrap_or_else(|_| "[]".into()))
            .bind(serde_json::to_string(&ack.origins_down).unwrap_or_else(|_| "[]".into()))
            .bind(edge.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every site as distributed.
    async fn snapshot(&self) -> Result<(i64, BTreeMap<String, SiteEntry>), DbError> {
        let head = self.db.counter("config_seq").await?;
        let rows = self
            .db
            .q(
                "SELECT s.name, s.draft, v.doc FROM sites s LEFT JOIN site_versions v \
                ON v.site_id = s.id AND v.version = s.published_version WHERE s.deleted_at IS NULL",
            )
            .fetch_all(&self.db.pool)
            .await?;
        let mut sites = BTreeMap::new();
        for r in rows {
            let name: String = col(&r, "name")?;
            sites.insert(name, entry_of(&r)?);
        }
        Ok((head, sites))
    }

    async fn changes_since(
        &self,
        after: i64,
    ) -> Result<Vec<(i64, String, Option<Box<SiteEntry>>)>, DbError> {
        let rows = self
            .db
            .q("SELECT s.name, s.draft, s.deleted_at, s.changed_seq, v.doc FROM sites s LEFT JOIN site_versions v \
                ON v.site_id = s.id AND v.version = s.published_version WHERE s.changed_seq > ? ORDER BY s.changed_seq")
            .bind(after)
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = vec![];
        for r in rows {
            let seq: i64 = col(&r, "changed_seq")?;
            let name: String = col(&r, "name")?;
            if col::<Option<i64>>(&r, "deleted_at")?.is_some() {
                let real = name.split("~deleted~").next().unwrap_or(&name).to_owned();
                out.push((seq, real, None));
            } else {
                out.push((seq, name, Some(Box::new(entry_of(&r)?))));
            }
        }
        Ok(out)
    }

    async fn purges_since(&self, after: i64) -> Result<Vec<PurgeMsg>, DbError> {
        let rows = self
            .db
            .q("SELECT seq, site_name, kind, vals, soft FROM purges WHERE seq > ? ORDER BY seq LIMIT 10000")
            .bind(after)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let vals: String = col(r, "vals")?;
                Ok(PurgeMsg {
                    seq: col::<i64>(r, "seq")? as u64,
                    site: col(r, "site_name")?,
                    kind: col(r, "kind")?,
                    values: serde_json::from_str(&vals).unwrap_or_default(),
                    soft: col::<i64>(r, "soft")? != 0,
                })
            })
            .collect()
    }

    /// The body of an edge's stream.
    pub fn stream(
        self: &Arc<Self>,
        edge: EdgeRow,
        config_seq: i64,
        purge_seq: i64,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.feed(edge.clone(), config_seq, purge_seq, tx).await {
                tracing::debug!(edge = %edge.name, error = %e, "edge stream ended");
            }
        });
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
        )
    }

    async fn feed(
        self: Arc<Self>,
        edge: EdgeRow,
        mut config_seq: i64,
        mut purge_seq: i64,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<(), String> {
        let send = |m: &Message| {
            let mut line = serde_json::to_vec(m).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        let mut heads_rx = self.heads.subscribe();
        tracing::info!(edge = %edge.name, config_seq, purge_seq, "edge connected");
        let head = self
            .db
            .counter("config_seq")
            .await
            .map_err(|e| e.to_string())?;
        if config_seq == 0 || config_seq != head {
            let (seq, sites) = self.snapshot().await.map_err(|e| e.to_string())?;
            let m = Message::Snapshot {
                config_seq: seq as u64,
                staging_domain: Some(self.opts.staging_domain.clone()),
                sites,
            };
            tx.send(send(&m)).await.map_err(|e| e.to_string())?;
            config_seq = seq;
        }
        let mut tick = tokio::time::interval(PING_EVERY);
        loop {
            // Heads are read before the queries: everything they announce is committed, so it
            // is in what the queries return, and a commit after this wakes the loop again.
            let Heads {
                config_seq: hc,
                purge_seq: hp,
            } = *heads_rx.borrow_and_update();
            // Purges first: they are what an edge must not miss.
            loop {
                let ps = self
                    .purges_since(purge_seq)
                    .await
                    .map_err(|e| e.to_string())?;
                if ps.is_empty() {
                    break;
                }
                for p in ps {
                    purge_seq = p.seq as i64;
                    tx.send(send(&Message::Purge(p)))
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            for (seq, name, entry) in self
                .changes_since(config_seq)
                .await
                .map_err(|e| e.to_string())?
            {
                config_seq = config_seq.max(seq);
                let m = Message::Site {
                    config_seq: seq as u64,
                    name,
                    entry,
                };
                tx.send(send(&m)).await.map_err(|e| e.to_string())?;
            }
            let ping = Message::Ping {
                config_seq: config_seq.max(hc) as u64,
                purge_seq: hp.max(purge_seq) as u64,
            };
            tx.send(send(&ping)).await.map_err(|e| e.to_string())?;
            tokio::select! {
                r = heads_rx.changed() => if r.is_err() { return Ok(()) },
                _ = tick.tick() => {},
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

fn entry_of(r: &sqlx::any::AnyRow) -> Result<SiteEntry, DbError> {
    let draft: String = r.try_get("draft")?;
    let published: Option<String> = r.try_get("doc")?;
    let draft: Option<FileSite> = serde_json::from_str(&draft).ok();
    let published: Option<FileSite> = published.and_then(|p| serde_json::from_str(&p).ok());
    let same = match (&draft, &published) {
        (Some(d), Some(p)) => serde_json::to_value(d).ok() == serde_json::to_value(p).ok(),
        _ => false,
    };
    Ok(SiteEntry {
        published,
        draft: if same { None } else { draft },
    })
}

/// Does a site's host pattern cover a host name?
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let p = pattern.to_ascii_lowercase();
    p == "*"
        || p == host
        || p.strip_prefix("*.")
            .is_some_and(|s| host.ends_with(&format!(".{s}")))
}
