//! SSH public keys of a person, for SFTP.

use serde_json::{Value, json};

use crate::Control;
use crate::audit::{self, Change};
use crate::auth::{Actor, millis};
use crate::db::col;
use crate::error::{ApiError, ApiResult};

impl Control {
    pub async fn ssh_keys(&self, actor: &Actor) -> ApiResult<Vec<Value>> {
        let uid = actor.require_user()?;
        let rows = self
            .db
            .q("SELECT id, name, fingerprint, created_at FROM ssh_keys WHERE user_id = ? ORDER BY id")
            .bind(uid)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(json!({
                    "id": col::<i64>(r, "id")?,
                    "name": col::<String>(r, "name")?,
                    "fingerprint": col::<String>(r, "fingerprint")?,
                    "created_at": col::<i64>(r, "created_at")?,
                }))
            })
            .collect()
    }

    /// Registers an OpenSSH public key line for the caller.
    pub async fn add_ssh_key(
        &self,
        actor: &Actor,
        key: &str,
        name: Option<String>,
    ) -> ApiResult<Value> {
        let uid = actor.require_user()?;
        let key = russh::keys::PublicKey::from_openssh(key.trim()).map_err(|_| {
            ApiError::invalid(
                "key",
                "an OpenSSH public key line, like ssh-ed25519 AAAA… / une clé publique OpenSSH",
            )
        })?;
        let fingerprint = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| key.comment().to_string())
            .chars()
            .take(100)
            .collect::<String>();
        let text = key
            .to_openssh()
            .map_err(|_| ApiError::invalid("key", "unreadable key"))?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let r = self
            .db
            .q("INSERT INTO ssh_keys (user_id, name, key_text, fingerprint, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id")
            .bind(uid)
            .bind(name.clone())
            .bind(text)
            .bind(fingerprint.clone())
            .bind(millis(now))
            .fetch_one(&mut *tx)
            .await?;
        let kid: i64 = col(&r, "id")?;
        audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            Change {
                org_id: None,
                action: "ssh_key.add",
                target: format!("ssh key #{kid} of {}", actor.label()),
                before: None,
                after: Some(json!({"name": name, "fingerprint": fingerprint})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(json!({"id": kid, "name": name, "fingerprint": fingerprint}))
    }

    pub async fn delete_ssh_key(&self, actor: &Actor, kid: i64) -> ApiResult<()> {
        let uid = actor.require_user()?;
        let _w = self.writer.lock().await;
        let now = self.clock.now();
        let mut tx = self.db.begin().await?;
        let n = self
            .db
            .q("DELETE FROM ssh_keys WHERE id = ? AND user_id = ?")
            .bind(kid)
            .bind(uid)
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
                org_id: None,
                action: "ssh_key.delete",
                target: format!("ssh key #{kid} of {}", actor.label()),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
