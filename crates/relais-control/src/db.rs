//! The database: embedded SQLite by default, PostgreSQL by URL, one code path.
//!
//! Queries are plain SQL written once with `?` placeholders and the portable subset both engines
//! share (integers, text, `RETURNING`, `ON CONFLICT`); [`Db::sql`] rewrites the placeholders to
//! `$n` for PostgreSQL. Types stay basic (i64 and text: times are Unix milliseconds, documents
//! are JSON text) because that is what `sqlx::Any` carries on both. The schema is one template
//! whose two backend-specific tokens are substituted at migration time.

use std::borrow::Cow;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database URL {0:?} is not sqlite://… or postgres://…")]
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Migrations, oldest first. `{ID}` is an auto-increment primary key, `{INT}` a 64-bit integer.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    id {ID},
    parent_id {INT} REFERENCES orgs(id),
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at {INT} NOT NULL
);
CREATE TABLE users (
    id {ID},
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    platform_role TEXT,
    totp_secret TEXT,
    totp_enabled {INT} NOT NULL DEFAULT 0,
    totp_last_step {INT} NOT NULL DEFAULT 0,
    created_at {INT} NOT NULL
);
CREATE TABLE memberships (
    user_id {INT} NOT NULL REFERENCES users(id),
    org_id {INT} NOT NULL REFERENCES orgs(id),
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, org_id)
);
CREATE TABLE sessions (
    id {ID},
    token_hash TEXT NOT NULL UNIQUE,
    user_id {INT} NOT NULL REFERENCES users(id),
    mfa {INT} NOT NULL,
    created_at {INT} NOT NULL,
    last_seen_at {INT} NOT NULL,
    expires_at {INT} NOT NULL,
    ip TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    revoked_at {INT}
);
CREATE TABLE api_tokens (
    id {ID},
    org_id {INT} NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at {INT} NOT NULL,
    expires_at {INT},
    revoked_at {INT},
    last_used_at {INT}
);
CREATE TABLE sites (
    id {ID},
    org_id {INT} NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL UNIQUE,
    draft TEXT NOT NULL,
    draft_updated_at {INT} NOT NULL,
    draft_updated_by TEXT NOT NULL,
    published_version {INT},
    changed_seq {INT} NOT NULL,
    created_at {INT} NOT NULL,
    deleted_at {INT}
);
CREATE INDEX sites_org ON sites(org_id, id);
CREATE INDEX sites_changed ON sites(changed_seq);
CREATE TABLE site_hosts (
    host TEXT NOT NULL PRIMARY KEY,
    site_id {INT} NOT NULL REFERENCES sites(id)
);
CREATE TABLE site_versions (
    site_id {INT} NOT NULL REFERENCES sites(id),
    version {INT} NOT NULL,
    doc TEXT NOT NULL,
    author TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at {INT} NOT NULL,
    PRIMARY KEY (site_id, version)
);
CREATE TABLE counters (
    name TEXT NOT NULL PRIMARY KEY,
    value {INT} NOT NULL
);
INSERT INTO counters (name, value) VALUES ('config_seq', 0);
CREATE TABLE purges (
    seq {INT} NOT NULL PRIMARY KEY,
    org_id {INT} NOT NULL,
    site_id {INT} NOT NULL,
    site_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    vals TEXT NOT NULL,
    soft {INT} NOT NULL,
    actor TEXT NOT NULL,
    created_at {INT} NOT NULL
);
CREATE INDEX purges_site ON purges(site_id, seq);
CREATE TABLE edges (
    id {ID},
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at {INT} NOT NULL,
    last_seen_at {INT},
    listen TEXT NOT NULL DEFAULT '[]',
    config_seq {INT} NOT NULL DEFAULT 0,
    purge_seq {INT} NOT NULL DEFAULT 0,
    vouched {INT} NOT NULL DEFAULT 0,
    config_error TEXT
);
CREATE TABLE purge_acks (
    purge_seq {INT} NOT NULL,
    edge_id {INT} NOT NULL,
    acked_at {INT} NOT NULL,
    PRIMARY KEY (purge_seq, edge_id)
);
CREATE TABLE audit (
    seq {INT} NOT NULL PRIMARY KEY,
    at {INT} NOT NULL,
    org_id {INT},
    actor TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    ip TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before_doc TEXT,
    after_doc TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_org ON audit(org_id, seq);
CREATE TABLE settings (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE edges ADD COLUMN origins_down TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
ALTER TABLE orgs ADD COLUMN log_retention_months {INT} NOT NULL DEFAULT 13;
"#,
    r#"
ALTER TABLE orgs ADD COLUMN log_recipients TEXT NOT NULL DEFAULT '[]';
ALTER TABLE orgs ADD COLUMN language TEXT NOT NULL DEFAULT 'fr';
"#,
    r#"
CREATE TABLE ssh_keys (
    id {ID},
    user_id {INT} NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    key_text TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at {INT} NOT NULL
);
CREATE INDEX ssh_keys_user ON ssh_keys(user_id);
"#,
    r#"
ALTER TABLE edges ADD COLUMN stats_seq {INT} NOT NULL DEFAULT 0;
ALTER TABLE orgs ADD COLUMN report_recipients TEXT NOT NULL DEFAULT '[]';
ALTER TABLE orgs ADD COLUMN report_metrics TEXT NOT NULL DEFAULT '["requests","visitors","bytes_sent","hit_ratio","under_2s"]';
CREATE TABLE stats (
    site TEXT NOT NULL,
    grain TEXT NOT NULL,
    at {INT} NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (site, grain, at)
);
CREATE TABLE reports_sent (
    org_id {INT} NOT NULL,
    week {INT} NOT NULL,
    sent_at {INT} NOT NULL,
    PRIMARY KEY (org_id, week)
);
"#,
];

impl Db {
    /// Connects (creating an SQLite file if needed) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::Url(url.to_owned()));
        };
        let url: Cow<str> = if backend == Backend::Sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc").into()
        } else {
            url.into()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .connect(&url)
            .await?;
        let db = Db { pool, backend };
        if backend == Backend::Sqlite {
            sqlx::raw_sql("PRAGMA journal_mode=WAL")
                .execute(&db.pool)
                .await?;
        }
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY)",
        )
        .execute(&self.pool)
        .await?;
        let done: i64 = sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
            let (id, int) = match self.backend {
                Backend::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"),
                Backend::Postgres => (
                    "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                    "BIGINT",
                ),
            };
            let sql = m.replace("{ID}", id).replace("{INT}", int);
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
            sqlx::query(AssertSqlSafe(
                self.sql("INSERT INTO schema_migrations (version) VALUES (?)"),
            ))
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version = i + 1, "database migrated");
        }
        Ok(())
    }

    /// Rewrites `?` placeholders for the backend.
    pub fn sql(&self, q: &str) -> String {
        match self.backend {
            Backend::Sqlite => q.to_owned(),
            Backend::Postgres => pg_placeholders(q),
        }
    }

    /// A query with the placeholders rewritten for the backend.
    pub fn q(&self, sql: &str) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        sqlx::query(AssertSqlSafe(self.sql(sql)))
    }

    /// Starts a write transaction. On PostgreSQL it takes a transaction-scoped advisory lock so
    /// that several control-plane processes also serialise their writes (sequence numbers and
    /// the audit chain are assigned in commit order).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        // SQLite: take the write lock up front, so that a transaction that reads then writes
        // never fails on the upgrade (other writers wait on the busy timeout instead).
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7316)")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Increments a named counter inside a transaction and returns the new value.
    pub async fn next(&self, tx: &mut Tx, name: &str) -> Result<i64, DbError> {
        let row = self
            .q("UPDATE counters SET value = value + 1 WHERE name = ? RETURNING value")
            .bind(name.to_owned())
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.try_get("value")?)
    }

    pub async fn counter(&self, name: &str) -> Result<i64, DbError> {
        let row = self
            .q("SELECT value FROM counters WHERE name = ?")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("value")?,
            None => 0,
        })
    }
}

/// Reads a column, mapping errors.
pub fn col<T>(row: &AnyRow, name: &str) -> Result<T, DbError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(name)?)
}

/// `?` → `$1`, `$2`… outside quoted strings.
pub fn pg_placeholders(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 16);
    let mut n = 0;
    let mut quoted = false;
    for c in q.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_outside_strings() {
        assert_eq!(
            super::pg_placeholders("SELECT '?' FROM t WHERE a = ? AND b = ?"),
            "SELECT '?' FROM t WHERE a = $1 AND b = $2"
        );
    }
}
