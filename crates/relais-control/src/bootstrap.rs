//! First start: the first platform administrator and, for `relais serve`, a demo organisation
//! with its webmaster and a published demo site.

use std::sync::Arc;

use serde_json::json;

use crate::Control;
use crate::auth::{Actor, Who, hash_password, hex, millis, random_bytes};
use crate::db::col;
use crate::error::ApiResult;

/// Credentials created on first start (shown once).
#[derive(Debug, Clone)]
pub struct FirstRun {
    pub admin_email: String,
    pub admin_password: String,
    pub demo: Option<(String, String)>,
}

pub const ADMIN_EMAIL: &str = "admin@relais.localhost";
pub const DEMO_EMAIL: &str = "webmestre@demo.localhost";

/// The actor that first-start changes are journaled under.
pub fn system() -> Actor {
    Actor {
        who: Who::User {
            id: 0,
            email: "system".into(),
            platform_role: Some("admin".into()),
            session_id: 0,
            mfa: true,
        },
        ip: "local".into(),
    }
}

fn password() -> String {
    hex(&random_bytes::<9>())
}

async fn add_user(
    st: &Control,
    email: &str,
    name: &str,
    platform_role: Option<&str>,
) -> ApiResult<(i64, String)> {
    let pw = password();
    let p = pw.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&p))
        .await
        .map_err(|_| crate::error::ApiError::new("internal", "internal error"))??;
    let r = st
        .db
        .q("INSERT INTO users (email, name, password_hash, platform_role, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id")
        .bind(email.to_owned())
        .bind(name.to_owned())
        .bind(hash)
        .bind(platform_role.map(str::to_owned))
        .bind(millis(st.clock.now()))
        .fetch_one(&st.db.pool)
        .await?;
    Ok((col(&r, "id")?, pw))
}

/// Creates the first administrator when there is no account yet, and the demo when asked.
/// Returns the credentials it created (`None` when the platform was already set up).
pub async fn bootstrap(
    st: &Arc<Control>,
    demo_origin: Option<&str>,
) -> ApiResult<Option<FirstRun>> {
    let n = st
        .db
        .q("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&st.db.pool)
        .await?;
    if col::<i64>(&n, "n")? > 0 {
        return Ok(None);
    }
    let (_, admin_password) =
        add_user(st, ADMIN_EMAIL, "Administrateur Relais", Some("admin")).await?;
    let mut demo = None;
    if let Some(origin) = demo_origin {
        let now = millis(st.clock.now());
        let r = st
            .db
            .q("INSERT INTO orgs (slug, name, created_at) VALUES ('demo', 'Organisation de démonstration', ?) RETURNING id")
            .bind(now)
            .fetch_one(&st.db.pool)
            .await?;
        let org: i64 = col(&r, "id")?;
        let (uid, pw) = add_user(st, DEMO_EMAIL, "Webmestre de démonstration", None).await?;
        st.db
            .q("INSERT INTO memberships (user_id, org_id, role) VALUES (?, ?, 'admin')")
            .bind(uid)
            .bind(org)
            .execute(&st.db.pool)
            .await?;
        let sys = system();
        let site = st
            .create_site(
                &sys,
                org,
                json!({
                    "name": "demo",
                    "hosts": ["localhost", "demo.localhost", "127.0.0.1"],
                    "origin": [{"url": origin}],
                }),
            )
            .await?;
        st.publish(&sys, &site, "site de démonstration".into())
            .await?;
        demo = Some((DEMO_EMAIL.to_owned(), pw));
    }
    Ok(Some(FirstRun {
        admin_email: ADMIN_EMAIL.to_owned(),
        admin_password,
        demo,
    }))
}
