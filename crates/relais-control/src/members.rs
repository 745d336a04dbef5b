//! Members (people and their roles) and API tokens of an organisation. Every method checks
//! the caller's right itself (`admin` on the organisation).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::Control;
use crate::audit::{self, Change};
use crate::auth::{self, Actor, Perm, ROLES, SCOPES, hash_password, millis, new_token, sha256_hex};
use crate::db::col;
use crate::error::{ApiError, ApiResult};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberBody {
    pub email: String,
    pub role: String,
    /// For a person without an account yet.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub name: String,
    pub scope: String,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

impl Control {
    pub async fn members(&self, actor: &Actor, oid: i64) -> ApiResult<Value> {
        self.check(actor, oid, Perm::Admin).await?;
        let rows = self
        .db
        .q("SELECT u.id, u.email, u.name, u.totp_enabled, m.role FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = ? ORDER BY u.email")
        .bind(oid)
        .fetch_all(&self.db.pool)
        .await?;
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                Ok(json!({
                    "user_id": col::<i64>(r, "id")?,
                    "email": col::<String>(r, "email")?,
                    "name": col::<String>(r, "name")?,
                    "role": col::<String>(r, "role")?,
                    "totp_enabled": col::<i64>(r, "totp_enabled")? != 0,
                }))
            })
            .collect::<ApiResult<_>>()?;
        Ok(json!({ "members": list }))
    }

    pub async fn set_member(&self, actor: &Actor, oid: i64, b: MemberBody) -> ApiResult<Value> {
        self.check(actor, oid, Perm::Admin).await?;
        actor.require_user()?;
        if !ROLES.contains(&b.role.as_str()) {
            return Err(ApiError::invalid("role", "one of admin, editor, viewer"));
        }
        let email = b.email.trim().to_ascii_lowercase();
        if !email.contains('@') || email.len() > 254 || email.contains(char::is_whitespace) {
            return Err(ApiError::invalid("email", "an e-mail address"));
        }
        let existing = self
            .db
            .q("SELECT id FROM users WHERE email = ?")
            .bind(email.clone())
            .fetch_optional(&self.db.pool)
            .await?;
        let new_hash = if existing.is_none() {
            let pw = b.password.clone().ok_or_else(|| {
                ApiError::invalid("password", "required for a person without an account")
            })?;
            auth::check_password_policy(&pw)?;
            Some(
                tokio::task::spawn_blocking(move || hash_password(&pw))
                    .await
                    .map_err(|_| ApiError::new("internal", "internal error"))??,
            )
        } else {
            None
        };
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let uid: i64 = match (existing, new_hash) {
            (Some(r), _) => col(&r, "id")?,
            (None, Some(h)) => {
                let name = b.name.clone().unwrap_or_else(|| email.clone());
                let r = self
                .db
                .q("INSERT INTO users (email, name, password_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id")
                .bind(email.clone())
                .bind(name)
                .bind(h)
                .bind(millis(now))
                .fetch_one(&mut *tx)
                .await?;
                col(&r, "id")?
            }
            (None, None) => return Err(ApiError::new("internal", "internal error")),
        };
        let before = self
            .db
            .q("SELECT role FROM memberships WHERE user_id = ? AND org_id = ?")
            .bind(uid)
            .bind(oid)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| col::<String>(&r, "role"))
            .transpose()?;
        self.db
        .q("INSERT INTO memberships (user_id, org_id, role) VALUES (?, ?, ?) ON CONFLICT (user_id, org_id) DO UPDATE SET role = excluded.role")
        .bind(uid)
        .bind(oid)
        .bind(b.role.clone())
        .execute(&mut *tx)
        .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(oid),
                action: "member.set",
                target: format!("user {email} in org #{oid}"),
                before: before.map(|r| json!({"role": r})),
                after: Some(json!({"role": b.role})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(json!({"user_id": uid, "email": email, "role": b.role}))
    }

    pub async fn remove_member(&self, actor: &Actor, oid: i64, uid: i64) -> ApiResult<()> {
        self.check(actor, oid, Perm::Admin).await?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let r = self
            .db
            .q("DELETE FROM memberships WHERE user_id = ? AND org_id = ? RETURNING role")
            .bind(uid)
            .bind(oid)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(ApiError::not_found)?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(oid),
                action: "member.remove",
                target: format!("user #{uid} in org #{oid}"),
                before: Some(json!({"role": col::<String>(&r, "role")?})),
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn tokens(&self, actor: &Actor, oid: i64) -> ApiResult<Value> {
        self.check(actor, oid, Perm::Admin).await?;
        let rows = self
        .db
        .q("SELECT id, name, scope, prefix, created_by, created_at, expires_at, revoked_at, last_used_at FROM api_tokens WHERE org_id = ? ORDER BY id")
        .bind(oid)
        .fetch_all(&self.db.pool)
        .await?;
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                Ok(json!({
                    "id": col::<i64>(r, "id")?,
                    "name": col::<String>(r, "name")?,
                    "scope": col::<String>(r, "scope")?,
                    "prefix": col::<String>(r, "prefix")?,
                    "created_by": col::<String>(r, "created_by")?,
                    "created_at": col::<i64>(r, "created_at")?,
                    "expires_at": col::<Option<i64>>(r, "expires_at")?,
                    "revoked_at": col::<Option<i64>>(r, "revoked_at")?,
                    "last_used_at": col::<Option<i64>>(r, "last_used_at")?,
                }))
            })
            .collect::<ApiResult<_>>()?;
        Ok(json!({ "tokens": list }))
    }

    pub async fn create_token(&self, actor: &Actor, oid: i64, b: TokenBody) -> ApiResult<Value> {
        self.check(actor, oid, Perm::Admin).await?;
        actor.require_user()?;
        if !SCOPES.contains(&b.scope.as_str()) {
            return Err(ApiError::invalid("scope", "one of read, purge, config"));
        }
        let name = b.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::invalid("name", "1 to 100 characters"));
        }
        if b.expires_in_days.is_some_and(|d| d == 0 || d > 3660) {
            return Err(ApiError::invalid("expires_in_days", "1 to 3660"));
        }
        let token = new_token("rls_");
        let now = self.clock.now();
        let expires = b
            .expires_in_days
            .map(|d| millis(now) + d as i64 * 86_400_000);
        let _w = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        let r = self
        .db
        .q("INSERT INTO api_tokens (org_id, name, scope, token_hash, prefix, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id")
        .bind(oid)
        .bind(name.clone())
        .bind(b.scope.clone())
        .bind(sha256_hex(token.as_bytes()))
        .bind(token[..12].to_owned())
        .bind(actor.label())
        .bind(millis(now))
        .bind(expires)
        .fetch_one(&mut *tx)
        .await?;
        let tid: i64 = col(&r, "id")?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(oid),
                action: "token.create",
                target: format!("token {name} (#{tid})"),
                before: None,
                after: Some(json!({"name": name, "scope": b.scope, "expires_at": expires})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(json!({
            "id": tid, "name": name, "scope": b.scope, "expires_at": expires,
            "token": token,
            "note": "shown once: store it now / affiché une seule fois : conservez-le",
        }))
    }

    pub async fn revoke_token(&self, actor: &Actor, oid: i64, tid: i64) -> ApiResult<()> {
        self.check(actor, oid, Perm::Admin).await?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let n = self
        .db
        .q("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND org_id = ? AND revoked_at IS NULL")
        .bind(millis(now))
        .bind(tid)
        .bind(oid)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(ApiError::not_found());
        }
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(oid),
                action: "token.revoke",
                target: format!("token #{tid}"),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSettings {
    #[serde(default)]
    pub log_retention_months: Option<i64>,
    /// Who receives "logs ready" messages.
    #[serde(default)]
    pub log_recipients: Option<Vec<String>>,
    /// `fr` or `en`, for messages.
    #[serde(default)]
    pub language: Option<String>,
    /// Who receives the weekly statistics report (none: no report).
    #[serde(default)]
    pub report_recipients: Option<Vec<String>>,
    /// Which metrics the weekly report carries (see `stats::METRICS`).
    #[serde(default)]
    pub report_metrics: Option<Vec<String>>,
}

fn check_recipients(field: &str, r: &[String]) -> ApiResult<()> {
    if r.len() > 50 {
        return Err(ApiError::invalid(
            field,
            "at most 50 addresses / 50 adresses au plus",
        ));
    }
    for (i, a) in r.iter().enumerate() {
        if a.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ApiError::invalid(
                format!("{field}[{i}]"),
                "not an e-mail address / adresse e-mail invalide",
            ));
        }
    }
    Ok(())
}

impl crate::Control {
    /// Changes an organisation's settings (organisation administrators), journaled.
    pub async fn set_org_settings(&self, actor: &Actor, oid: i64, b: OrgSettings) -> ApiResult<()> {
        self.check(actor, oid, Perm::Admin).await?;
        if let Some(m) = b.log_retention_months
            && !(6..=120).contains(&m)
        {
            return Err(ApiError::invalid(
                "log_retention_months",
                "between 6 and 120 months / entre 6 et 120 mois",
            ));
        }
        if let Some(l) = &b.language
            && l != "fr"
            && l != "en"
        {
            return Err(ApiError::invalid("language", "fr or en / fr ou en"));
        }
        if let Some(r) = &b.log_recipients {
            check_recipients("log_recipients", r)?;
        }
        if let Some(r) = &b.report_recipients {
            check_recipients("report_recipients", r)?;
        }
        if let Some(m) = &b.report_metrics {
            for (i, x) in m.iter().enumerate() {
                if !crate::stats::METRICS.contains(&x.as_str()) {
                    return Err(ApiError::invalid(
                        format!("report_metrics[{i}]"),
                        format!("one of / parmi : {}", crate::stats::METRICS.join(", ")),
                    ));
                }
            }
        }
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let row = self
            .db
            .q("SELECT log_retention_months, log_recipients, language, report_recipients, report_metrics FROM orgs WHERE id = ?")
            .bind(oid)
            .fetch_one(&mut *tx)
            .await?;
        let before = json!({
            "log_retention_months": col::<i64>(&row, "log_retention_months")?,
            "log_recipients": serde_json::from_str::<Value>(&col::<String>(&row, "log_recipients")?).unwrap_or(json!([])),
            "language": col::<String>(&row, "language")?,
            "report_recipients": serde_json::from_str::<Value>(&col::<String>(&row, "report_recipients")?).unwrap_or(json!([])),
            "report_metrics": serde_json::from_str::<Value>(&col::<String>(&row, "report_metrics")?).unwrap_or(json!([])),
        });
        let mut after = before.clone();
        if let Some(m) = b.log_retention_months {
            after["log_retention_months"] = json!(m);
        }
        if let Some(r) = &b.log_recipients {
            after["log_recipients"] = json!(r);
        }
        if let Some(l) = &b.language {
            after["language"] = json!(l);
        }
        if let Some(r) = &b.report_recipients {
            after["report_recipients"] = json!(r);
        }
        if let Some(m) = &b.report_metrics {
            after["report_metrics"] = json!(m);
        }
        self.db
            .q("UPDATE orgs SET log_retention_months = ?, log_recipients = ?, language = ?, report_recipients = ?, report_metrics = ? WHERE id = ?")
            .bind(after["log_retention_months"].as_i64().unwrap_or(13))
            .bind(after["log_recipients"].to_string())
            .bind(after["language"].as_str().unwrap_or("fr").to_owned())
            .bind(after["report_recipients"].to_string())
            .bind(after["report_metrics"].to_string())
            .bind(oid)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: Some(oid),
                action: "org.settings",
                target: format!("org #{oid}"),
                before: Some(before),
                after: Some(after),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
