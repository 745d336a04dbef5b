//! The audit journal (CDN-17): append-only and hash-chained.
//!
//! Each entry is written in the same transaction as the change it records, with who (user or
//! token), when, from which address, what (action, target, document before and after). Its
//! hash is SHA-256 over the previous entry's hash and the entry's fields encoded as a JSON
//! array, so changing, removing or reordering any entry breaks every hash after it;
//! [`verify`] recomputes the chain (`relais audit verify`).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::auth::{Actor, millis, sha256_hex};
use crate::db::{Db, DbError, Tx, col};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What changed.
pub struct Change<'a> {
    pub org_id: Option<i64>,
    pub action: &'a str,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at: i64,
    pub at_rfc3339: String,
    pub org_id: Option<i64>,
    pub actor: String,
    pub actor_kind: String,
    pub ip: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub prev_hash: String,
    pub hash: String,
}

#[allow(clippy::too_many_arguments)]
fn entry_hash(
    prev: &str,
    seq: i64,
    at: i64,
    org_id: Option<i64>,
    actor: &str,
    actor_kind: &str,
    ip: &str,
    action: &str,
    target: &str,
    before: Option<&str>,
    after: Option<&str>,
) -> String {
    let fields = serde_json::json!([
        seq, at, org_id, actor, actor_kind, ip, action, target, before, after
    ]);
    sha256_hex(format!("{prev}\n{fields}").as_bytes())
}

/// Appends an entry inside the caller's transaction (which holds the write lock).
pub async fn record(
    db: &Db,
    tx: &mut Tx,
    now: std::time::SystemTime,
    actor: &Actor,
    c: Change<'_>,
) -> Result<i64, DbError> {
    record_as(db, tx, now, &actor.label(), actor.kind(), &actor.ip, c).await
}

pub async fn record_as(
    db: &Db,
    tx: &mut Tx,
    now: std::time::SystemTime,
    actor: &str,
    actor_kind: &str,
    ip: &str,
    c: Change<'_>,
) -> Result<i64, DbError> {
    let last = db
        .q("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (seq, prev) = match last {
        Some(r) => (col::<i64>(&r, "seq")? + 1, col::<String>(&r, "hash")?),
        None => (1, GENESIS.to_owned()),
    };
    let at = millis(now);
    let before = c.before.map(|v| v.to_string());
    let after = c.after.map(|v| v.to_string());
    let hash = entry_hash(
        &prev,
        seq,
        at,
        c.org_id,
        actor,
        actor_kind,
        ip,
        c.action,
        &c.target,
        before.as_deref(),
        after.as_deref(),
    );
    db.q("INSERT INTO audit (seq, at, org_id, actor, actor_kind, ip, action, target, before_doc, after_doc, prev_hash, hash) \
          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(seq)
        .bind(at)
        .bind(c.org_id)
        .bind(actor.to_owned())
        .bind(actor_kind.to_owned())
        .bind(ip.to_owned())
        .bind(c.action.to_owned())
        .bind(c.target)
        .bind(before)
        .bind(after)
        .bind(prev)
        .bind(hash)
        .execute(&mut **tx)
        .await?;
    Ok(seq)
}

fn row_entry(r: &sqlx::any::AnyRow) -> Result<Entry, DbError> {
    let at: i64 = col(r, "at")?;
    let parse = |s: Option<String>| s.map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s)));
    Ok(Entry {
        seq: col(r, "seq")?,
        at,
        at_rfc3339: humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64),
        )
        .to_string(),
        org_id: col(r, "org_id")?,
        actor: col(r, "actor")?,
        actor_kind: col(r, "actor_kind")?,
        ip: col(r, "ip")?,
        action: col(r, "action")?,
        target: col(r, "target")?,
        before: parse(col(r, "before_doc")?),
        after: parse(col(r, "after_doc")?),
        prev_hash: col(r, "prev_hash")?,
        hash: col(r, "hash")?,
    })
}

/// Entries for some organisations (all when `orgs` is `None`), oldest first, after `after`.
pub async fn list(
    db: &Db,
    orgs: Option<&[i64]>,
    after: i64,
    limit: i64,
    action: Option<&str>,
) -> Result<Vec<Entry>, DbError> {
    let mut sql = String::from("SELECT * FROM audit WHERE seq > ?");
    if let Some(o) = orgs {
        if o.is_empty() {
            return Ok(vec![]);
        }
        sql.push_str(" AND org_id IN (");
        sql.push_str(&vec!["?"; o.len()].join(","));
        sql.push(')');
    }
    if action.is_some() {
        sql.push_str(" AND action LIKE ?");
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    let mut q = db.q(&sql).bind(after);
    for id in orgs.unwrap_or(&[]) {
        q = q.bind(*id);
    }
    if let Some(a) = action {
        q = q.bind(format!("{}%", a.replace(['%', '_'], "")));
    }
    let rows = q.bind(limit).fetch_all(&db.pool).await?;
    rows.iter().map(row_entry).collect()
}

/// The outcome of [`verify`].
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub entries: i64,
    pub ok: bool,
    /// The first entry whose hash or link does not match.
    pub broken_at: Option<i64>,
    pub message: String,
}

/// Recomputes the whole chain.
pub async fn verify(db: &Db) -> Result<Verification, DbError> {
    let mut prev = GENESIS.to_owned();
    let mut expect_seq = 1;
    let mut n = 0;
    let mut after = 0i64;
    loop {
        let rows = db
            .q("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT 5000")
            .bind(after)
            .fetch_all(&db.pool)
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let seq: i64 = r.try_get("seq")?;
            after = seq;
            let stored_prev: String = col(&r, "prev_hash")?;
            let hash: String = col(&r, "hash")?;
            let before: Option<String> = col(&r, "before_doc")?;
            let after_doc: Option<String> = col(&r, "after_doc")?;
            let computed = entry_hash(
                &prev,
                seq,
                col(&r, "at")?,
                col(&r, "org_id")?,
                &col::<String>(&r, "actor")?,
                &col::<String>(&r, "actor_kind")?,
                &col::<String>(&r, "ip")?,
                &col::<String>(&r, "action")?,
                &col::<String>(&r, "target")?,
                before.as_deref(),
                after_doc.as_deref(),
            );
            let problem = if seq != expect_seq {
                Some(format!("entry {expect_seq} is missing (next is {seq})"))
            } else if stored_prev != prev {
                Some(format!("entry {seq} does not link to the entry before it"))
            } else if computed != hash {
                Some(format!(
                    "entry {seq} was altered (its hash does not match its content)"
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                return Ok(Verification {
                    entries: n,
                    ok: false,
                    broken_at: Some(seq.min(expect_seq)),
                    message,
                });
            }
            prev = hash;
            expect_seq += 1;
            n += 1;
        }
    }
    Ok(Verification {
        entries: n,
        ok: true,
        broken_at: None,
        message: format!("{n} entries, chain intact"),
    })
}

/// CSV with a header row (RFC 4180 quoting).
pub fn to_csv(entries: &[Entry]) -> String {
    fn q(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out = String::from(
        "seq,time,org_id,actor,actor_kind,ip,action,target,before,after,prev_hash,hash\r\n",
    );
    for e in entries {
        let v = |x: &Option<Value>| x.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let cells = [
            e.seq.to_string(),
            e.at_rfc3339.clone(),
            e.org_id.map(|o| o.to_string()).unwrap_or_default(),
            e.actor.clone(),
            e.actor_kind.clone(),
            e.ip.clone(),
            e.action.clone(),
            e.target.clone(),
            v(&e.before),
            v(&e.after),
            e.prev_hash.clone(),
            e.hash.clone(),
        ];
        out.push_str(&cells.iter().map(|c| q(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}
