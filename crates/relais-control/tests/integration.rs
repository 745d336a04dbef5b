//! The control plane for real: its HTTP API on 127.0.0.1 port 0, on SQLite and on PostgreSQL
//! (every test runs on both; `scripts/test` starts PostgreSQL), with real edges following it.
//! Time moves through a manual clock; readiness is awaited, never slept on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relais_control::auth::{base32_decode, totp_code, totp_step};
use relais_control::{Control, ControlOptions};
use relais_edge::clock::{Clock, ManualClock, SystemClock};
use relais_edge::config::{FileCache, FileConfig, FileEdge};
use relais_edge::follow::{self, FollowHandle, FollowOptions};
use relais_edge::{Edge, EdgeOptions};
use relais_testkit::{Origin, Reply};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Kind::Postgres).await
            }
        }
    };
}

static DBS: AtomicU64 = AtomicU64::new(0);

/// A fresh database URL, or `None` when PostgreSQL is not configured (allowed only when
/// `RELAIS_REQUIRE_POSTGRES` is unset: `scripts/test` sets it).
async fn database(kind: Kind, dir: &Path) -> Option<String> {
    match kind {
        Kind::Sqlite => Some(format!("sqlite://{}", dir.join("control.db").display())),
        Kind::Postgres => {
            let Ok(admin) = std::env::var("RELAIS_TEST_POSTGRES") else {
                assert!(
                    std::env::var("RELAIS_REQUIRE_POSTGRES").is_err(),
                    "RELAIS_TEST_POSTGRES is not set"
                );
                eprintln!("PostgreSQL not configured (RELAIS_TEST_POSTGRES): skipped here");
                return None;
            };
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&admin)
                .await
                .expect("connect to PostgreSQL");
            let name = format!(
                "relais_t_{}_{}_{}",
                std::process::id(),
                DBS.fetch_add(1, Ordering::SeqCst),
                SystemClock
                    .now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos()
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&pool)
                .await
                .expect("create database");
            pool.close().await;
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            Some(format!("{base}/{name}"))
        }
    }
}

struct H {
    sink: relais_testkit::SmtpSink,
    ctl: Arc<Control>,
    running: Option<relais_control::Running>,
    base: String,
    clock: ManualClock,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    admin: String,
    admin_login: (String, String, String),
}

struct Resp {
    status: StatusCode,
    body: Value,
    text: String,
    headers: reqwest::header::HeaderMap,
}

impl H {
    async fn new(kind: Kind) -> Option<H> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let url = database(kind, dir.path()).await?;
        let clock = ManualClock::new();
        let sink = relais_testkit::SmtpSink::start().await;
        let ctl = Control::open(
            &url,
            Arc::new(clock.clone()),
            ControlOptions {
                log_store: Some(dir.path().join("logstore")),
                smtp: Some(
                    relais_control::mail::SmtpConfig::parse(
                        &format!("smtp://{}", sink.addr),
                        "Relais <relais@plateforme.test>",
                    )
                    .expect("smtp"),
                ),
                public_url: Some("https://extranet.test".into()),
                ..Default::default()
            },
        )
        .await
        .expect("open control plane");
        let first = relais_control::bootstrap::bootstrap(&ctl, None)
            .await
            .expect("bootstrap")
            .expect("first run");
        let running = relais_control::serve(ctl.clone(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serve");
        let base = format!("http://{}", running.addr);
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let mut h = H {
            sink,
            ctl,
            running: Some(running),
            base,
            clock,
            http,
            dir,
            admin: String::new(),
            admin_login: Default::default(),
        };
        let (token, secret) = h
            .enrol_totp(&first.admin_email, &first.admin_password)
            .await;
        h.admin = token;
        h.admin_login = (first.admin_email, first.admin_password, secret);
        Some(h)
    }

    async fn req(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if !token.is_empty() {
            r = r.bearer_auth(token);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            text,
            headers,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.req(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req(Method::POST, path, token, Some(body)).await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> Resp {
        self.req(Method::PUT, path, token, Some(body)).await
    }

    async fn login(&self, email: &str, password: &str, totp: Option<&str>) -> Resp {
        let mut b = json!({"email": email, "password": password});
        if let Some(t) = totp {
            b["totp"] = json!(t);
        }
        self.post("/api/v1/auth/login", "", b).await
    }

    fn code(&self, secret: &str) -> String {
        // Each code is accepted once: move to the next 30 s step first.
        self.clock.advance(Duration::from_secs(30));
        totp_code(
            &base32_decode(secret).expect("base32"),
            totp_step(self.clock.now()),
        )
    }

    /// Signs in a platform staff member, enrols TOTP, signs in again with a code.
    async fn enrol_totp(&self, email: &str, password: &str) -> (String, String) {
        let r = self.login(email, password, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["mfa_enrollment_required"], true);
        let t = r.body["token"].as_str().expect("token").to_owned();
        let s = self.post("/api/v1/auth/totp/setup", &t, json!({})).await;
        let secret = s.body["secret"].as_str().expect("secret").to_owned();
        let c = self
            .post(
                "/api/v1/auth/totp/confirm",
                &t,
                json!({"code": self.code(&secret)}),
            )
            .await;
        assert_eq!(c.status, 200, "{}", c.text);
        let r = self.login(email, password, Some(&self.code(&secret))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        (r.body["token"].as_str().expect("token").to_owned(), secret)
    }

    /// A new administrator session (after the clock moved past the session's life).
    async fn admin_again(&mut self) {
        let (e, p, s) = self.admin_login.clone();
        let r = self.login(&e, &p, Some(&self.code(&s))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        self.admin = r.body["token"].as_str().expect("token").to_owned();
    }

    async fn org(&self, slug: &str, parent: Option<i64>, token: &str) -> i64 {
        let r = self
            .post(
                "/api/v1/orgs",
                token,
                json!({"slug": slug, "name": format!("Org {slug}"), "parent_id": parent}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_i64().expect("id")
    }

    /// Gives a new person a role and returns their session token.
    async fn person(&self, org: i64, email: &str, role: &str) -> String {
        let r = self
            .put(
                &format!("/api/v1/orgs/{org}/members"),
                &self.admin,
                json!({"email": email, "role": role, "name": email, "password": "un mot de passe long"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = self.login(email, "un mot de passe long", None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["token"].as_str().expect("token").to_owned()
    }

    async fn token(&self, org: i64, scope: &str, days: Option<u32>) -> (i64, String) {
        let r = self
            .post(
                &format!("/api/v1/orgs/{org}/tokens"),
                &self.admin,
                json!({"name": format!("{scope} token"), "scope": scope, "expires_in_days": days}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        (
            r.body["id"].as_i64().expect("id"),
            r.body["token"].as_str().expect("token").to_owned(),
        )
    }

    async fn site(&self, org: i64, name: &str, host: &str, origin: &str) -> i64 {
        let r = self
            .post(
                &format!("/api/v1/orgs/{org}/sites"),
                &self.admin,
                json!({"name": name, "hosts": [host], "origin": [{"url": origin}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["id"].as_i64().expect("id");
        let p = self
            .post(
                &format!("/api/v1/sites/{id}/publish"),
                &self.admin,
                json!({}),
            )
            .await;
        assert_eq!(p.status, 200, "{}", p.text);
        id
    }
}

// ---------------------------------------------------------------------------------------------
// Tenancy
// ---------------------------------------------------------------------------------------------

async fn tenant_isolation_on_every_endpoint(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    let a = h.org("ministere-a", None, &h.admin).await;
    let b = h.org("ministere-b", None, &h.admin).await;
    let a_admin = h.person(a, "admin@a.fr", "admin").await;
    let (_, a_token) = h.token(a, "config", None).await;
    let _b_admin = h.person(b, "admin@b.fr", "admin").await;
    let b_user: i64 = h.get("/api/v1/orgs/2/members", &h.admin).await.body["members"][0]["user_id"]
        .as_i64()
        .expect("user");
    let (b_tok, _) = h.token(b, "read", None).await;
    let sb = h.site(b, "site-b", "www.b.fr", "http://127.0.0.1:9").await;
    let pb = h
        .post(
            &format!("/api/v1/sites/{sb}/purges"),
            &h.admin,
            json!({"kind": "all"}),
        )
        .await
        .body["id"]
        .as_i64()
        .expect("purge");
    let before = h.get(&format!("/api/v1/sites/{sb}"), &h.admin).await.body;
    let audit_before = h.get("/api/v1/audit?limit=100000", &h.admin).await.body["entries"]
        .as_array()
        .map(Vec::len);

    // Every documented route that names an object, called with B's objects by A's admin and
    // A's token: 404, and nothing of B changes.
    let mut checked = 0;
    for (method, path, _, _) in relais_control::openapi::ROUTES {
        if !path.contains('{') {
            continue;
        }
        let concrete = path
            .replace("/orgs/{id}", &format!("/orgs/{b}"))
            .replace("/sites/{id}", &format!("/sites/{sb}"))
            .replace("/purges/{id}", &format!("/purges/{pb}"))
            .replace("{user}", &b_user.to_string())
            .replace("{token}", &b_tok.to_string())
            .replace("{version}", "1");
        if concrete.contains("/auth/sessions/") || concrete.contains("/edges/") {
            continue; // a person's own sessions, and platform-only routes: tested below
        }
        let concrete = if concrete.ends_with("/explain") {
            format!("{concrete}?url=/")
        } else if concrete.ends_with("/diff") {
            format!("{concrete}?from=1")
        } else {
            concrete
        };
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let body = match *method {
            "get" | "delete" => None,
            _ if concrete.ends_with("/members") => Some(
                json!({"email": "x@a.fr", "role": "admin", "password": "un mot de passe long"}),
            ),
            _ if concrete.ends_with("/tokens") => Some(json!({"name": "x", "scope": "config"})),
            _ if concrete.ends_with("/sites") => Some(
                json!({"name": "intrus", "hosts": ["intrus.fr"], "origin": [{"url": "http://127.0.0.1:9"}]}),
            ),
            _ if concrete.ends_with("/draft") => {
                Some(json!({"hosts": ["pirate.fr"], "origin": [{"url": "http://127.0.0.1:9"}]}))
            }
            _ if concrete.ends_with("/certificate") => {
                Some(json!({"cert_pem": "x", "key_pem": "y"}))
            }
            _ if concrete.ends_with("/rollback") => Some(json!({"version": 1})),
            _ if concrete.ends_with("/mode") => Some(json!({"mode": "disabled"})),
            _ if concrete.ends_with("/schedules") => Some(json!([])),
            _ if concrete.ends_with("/purges") => Some(json!({"kind": "all"})),
            _ if concrete.ends_with("/settings") => Some(json!({"log_retention_months": 12})),
            _ => Some(json!({})),
        };
        for who in [&a_admin, &a_token] {
            let r = h.req(m.clone(), &concrete, who, body.clone()).await;
            assert_eq!(
                r.status, 404,
                "{method} {concrete} by a tenant of A answered {}: {}",
                r.status, r.text
            );
            assert_eq!(r.body["code"], "not_found", "{method} {concrete}");
            checked += 1;
        }
        // The route exists: without credentials it answers 401, not `no_route`.
        let r = h.req(m.clone(), &concrete, "", None).await;
        assert_eq!(
            r.body["code"], "unauthenticated",
            "{method} {concrete} is documented but not routed"
        );
    }
    assert!(checked >= 50, "only {checked} checks");
    let after = h.get(&format!("/api/v1/sites/{sb}"), &h.admin).await.body;
    assert_eq!(before["draft"], after["draft"]);
    assert_eq!(before["published_version"], after["published_version"]);
    let audit_after = h.get("/api/v1/audit?limit=100000", &h.admin).await.body["entries"]
        .as_array()
        .map(Vec::len);
    assert_eq!(
        audit_before, audit_after,
        "a refused call changed something"
    );

    // Lists show only one's own organisations; the platform-wide views are staff only.
    let orgs = h.get("/api/v1/orgs", &a_admin).await.body;
    let ids: Vec<i64> = orgs["orgs"]
        .as_array()
        .expect("orgs")
        .iter()
        .filter_map(|o| o["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![a]);
    for p in ["/api/v1/audit", "/api/v1/audit/verify", "/api/v1/edges"] {
        assert_eq!(h.get(p, &a_admin).await.status, 403, "{p}");
        assert_eq!(h.get(p, &a_token).await.status, 403, "{p}");
    }
    for who in [&a_admin, &a_token] {
        let r = h.req(Method::DELETE, "/api/v1/edges/1", who, None).await;
        assert_eq!(r.status, 403);
        let r = h.post("/api/v1/edges", who, json!({"name": "mine"})).await;
        assert_eq!(r.status, 403);
    }
    // A sub-organisation inherits its parent's roles; a sibling does not.
    let a1 = h.org("agence-a1", Some(a), &a_admin).await;
    assert_eq!(
        h.get(&format!("/api/v1/orgs/{a1}"), &a_admin).await.status,
        200
    );
    assert_eq!(
        h.get(&format!("/api/v1/orgs/{a1}"), &a_token).await.status,
        200
    );
    let r = h
        .post(
            "/api/v1/orgs",
            &a_admin,
            json!({"slug": "sous-b", "name": "x", "parent_id": b}),
        )
        .await;
    assert_eq!(r.status, 404);
    // A host of another tenant cannot be claimed.
    let r = h
        .post(&format!("/api/v1/orgs/{a}/sites"), &a_admin, json!({"name": "copie", "hosts": ["www.b.fr"], "origin": [{"url": "http://127.0.0.1:9"}]}))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    // Customers cannot create a catch-all site.
    let r = h
        .post(
            &format!("/api/v1/orgs/{a}/sites"),
            &a_admin,
            json!({"name": "tout", "hosts": ["*"], "origin": [{"url": "http://127.0.0.1:9"}]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["field"], "site.hosts[0]");
}
both!(tenant_isolation_on_every_endpoint);

async fn roles_and_token_scopes(kind: Kind) {
    let Some(mut h) = H::new(kind).await else {
        return;
    };
    let o = h.org("mairie", None, &h.admin).await;
    let s = h
        .site(o, "mairie", "www.mairie.fr", "http://127.0.0.1:9")
        .await;
    let viewer = h.person(o, "lecteur@mairie.fr", "viewer").await;
    let editor = h.person(o, "editeur@mairie.fr", "editor").await;
    let (_, read) = h.token(o, "read", None).await;
    let (_, purge) = h.token(o, "purge", None).await;
    let (_, config) = h.token(o, "config", Some(1)).await;
    let draft = json!({"hosts": ["www.mairie.fr"], "origin": [{"url": "http://127.0.0.1:9"}], "grace": "1h"});
    let purge_body = json!({"kind": "url", "values": ["/"]});
    let site = format!("/api/v1/sites/{s}");
    for (who, can_read, can_purge, can_config, can_admin) in [
        (&viewer, true, false, false, false),
        (&editor, true, true, true, false),
        (&read, true, false, false, false),
        (&purge, true, true, false, false),
        (&config, true, true, true, false),
    ] {
        let code = |ok: bool| if ok { 200 } else { 403 };
        assert_eq!(h.get(&site, who).await.status, code(can_read));
        let p = h
            .post(&format!("{site}/purges"), who, purge_body.clone())
            .await;
        assert_eq!(p.status, if can_purge { 202 } else { 403 }, "{}", p.text);
        let d = h.put(&format!("{site}/draft"), who, draft.clone()).await;
        assert_eq!(d.status, code(can_config), "{}", d.text);
        let t = h.get(&format!("/api/v1/orgs/{o}/tokens"), who).await;
        assert_eq!(t.status, code(can_admin), "{}", t.text);
        if !can_config {
            assert_eq!(d.body["code"], "forbidden");
        }
    }
    // Expiry (1 day) and revocation.
    h.clock.advance(Duration::from_secs(86_401));
    assert_eq!(h.get(&site, &config).await.status, 401);
    assert_eq!(
        h.get(&site, &h.admin).await.status,
        401,
        "sessions expire too"
    );
    h.admin_again().await;
    let list = h
        .get(&format!("/api/v1/orgs/{o}/tokens"), &h.admin)
        .await
        .body;
    let read_id = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["scope"] == "read")
        .expect("read")["id"]
        .as_i64()
        .expect("id");
    assert!(
        !list.to_string().contains(&read),
        "a token secret was listed"
    );
    let r = h
        .req(
            Method::DELETE,
            &format!("/api/v1/orgs/{o}/tokens/{read_id}"),
            &h.admin,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(h.get(&site, &read).await.status, 401);
    // One person, different roles in two organisations.
    let viewer = h
        .login("lecteur@mairie.fr", "un mot de passe long", None)
        .await
        .body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let o2 = h.org("prefecture", None, &h.admin).await;
    let s2 = h
        .site(o2, "prefecture", "www.prefecture.fr", "http://127.0.0.1:9")
        .await;
    let r = h
        .put(
            &format!("/api/v1/orgs/{o2}/members"),
            &h.admin,
            json!({"email": "lecteur@mairie.fr", "role": "editor"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d2 = json!({"hosts": ["www.prefecture.fr"], "origin": [{"url": "http://127.0.0.1:9"}], "grace": "2h"});
    assert_eq!(
        h.put(&format!("/api/v1/sites/{s2}/draft"), &viewer, d2)
            .await
            .status,
        200
    );
    assert_eq!(
        h.put(&format!("{site}/draft"), &viewer, draft.clone())
            .await
            .status,
        403
    );
    let me = h.get("/api/v1/auth/me", &viewer).await.body;
    assert_eq!(me["memberships"].as_array().map(Vec::len), Some(2));
    // Tokens cannot mint tokens; people can.
    let r = h
        .post(
            &format!("/api/v1/orgs/{o}/tokens"),
            &purge,
            json!({"name": "x", "scope": "read"}),
        )
        .await;
    assert_eq!(r.status, 403);
}
both!(roles_and_token_scopes);

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

async fn totp_throttling_and_sessions(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    // A new operator cannot do anything before enrolling a second factor.
    let o = h.org("org", None, &h.admin).await;
    h.person(o, "op@relais.fr", "viewer").await;
    h.ctl
        .db
        .q("UPDATE users SET platform_role = 'operator' WHERE email = ?")
        .bind("op@relais.fr".to_owned())
        .execute(&h.ctl.db.pool)
        .await
        .expect("promote");
    let r = h.login("op@relais.fr", "un mot de passe long", None).await;
    let t = r.body["token"].as_str().expect("token").to_owned();
    let r = h.get("/api/v1/orgs", &t).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["code"], "mfa_enrollment_required");
    let s = h.post("/api/v1/auth/totp/setup", &t, json!({})).await;
    let secret = s.body["secret"].as_str().expect("secret").to_owned();
    assert!(
        s.body["otpauth_url"]
            .as_str()
            .expect("url")
            .starts_with("otpauth://totp/")
    );
    let bad = h
        .post("/api/v1/auth/totp/confirm", &t, json!({"code": "000000"}))
        .await;
    assert_eq!(bad.body["code"], "bad_totp");
    let ok = h
        .post(
            "/api/v1/auth/totp/confirm",
            &t,
            json!({"code": h.code(&secret)}),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(h.get("/api/v1/orgs", &t).await.status, 200);
    // From now on the code is required, and each code works once.
    let r = h.login("op@relais.fr", "un mot de passe long", None).await;
    assert_eq!(r.body["code"], "totp_required");
    let code = h.code(&secret);
    assert_eq!(
        h.login("op@relais.fr", "un mot de passe long", Some(&code))
            .await
            .status,
        200
    );
    assert_eq!(
        h.login("op@relais.fr", "un mot de passe long", Some(&code))
            .await
            .body["code"],
        "bad_totp"
    );

    // Throttling: five failures, then even the right password waits.
    h.clock.advance(Duration::from_secs(16 * 60));
    for _ in 0..5 {
        let r = h.login("op@relais.fr", "mauvais mot de passe", None).await;
        assert_eq!(r.body["code"], "bad_credentials");
    }
    let r = h
        .login(
            "op@relais.fr",
            "un mot de passe long",
            Some(&h.code(&secret)),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    // Unknown accounts are throttled the same way and told nothing more.
    assert_eq!(
        h.login("nobody@x.fr", "whatever", None).await.body["code"],
        "bad_credentials"
    );
    h.clock.advance(Duration::from_secs(16 * 60));
    let r = h
        .login(
            "op@relais.fr",
            "un mot de passe long",
            Some(&h.code(&secret)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh = r.body["token"].as_str().expect("token").to_owned();

    // Sessions: listed, and one revoked from another stops working at once.
    let list = h.get("/api/v1/auth/sessions", &fresh).await.body;
    let sessions = list["sessions"].as_array().expect("sessions");
    assert!(sessions.iter().filter(|s| s["active"] == true).count() >= 3);
    let mine = h.get("/api/v1/auth/sessions", &t).await.body;
    let other = mine["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["current"] == true)
        .expect("current")["id"]
        .as_i64()
        .expect("id");
    assert!(
        sessions
            .iter()
            .any(|s| s["id"] == other && s["current"] == false)
    );
    let r = h
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{other}"),
            &fresh,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        h.get("/api/v1/auth/me", &t).await.status,
        401,
        "the revoked session still works"
    );
    // Someone else's session is not found.
    let admin_sessions = h.get("/api/v1/auth/sessions", &h.admin).await.body;
    let admin_sid = admin_sessions["sessions"][0]["id"].as_i64().expect("id");
    let r = h
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{admin_sid}"),
            &fresh,
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // Logout ends the session; the cookie also authenticates.
    let login = h
        .login(
            "op@relais.fr",
            "un mot de passe long",
            Some(&h.code(&secret)),
        )
        .await;
    let cookie = login
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Lax")
    );
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let me = h
        .http
        .get(format!("{}/api/v1/auth/me", h.base))
        .header("cookie", &pair)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);
    let lt = login.body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        h.post("/api/v1/auth/logout", &lt, json!({})).await.status,
        204
    );
    assert_eq!(h.get("/api/v1/auth/me", &lt).await.status, 401);
    // Passwords are stored as argon2id hashes.
    let row = h
        .ctl
        .db
        .q("SELECT password_hash FROM users WHERE email = ?")
        .bind("op@relais.fr".to_owned())
        .fetch_one(&h.ctl.db.pool)
        .await
        .expect("row");
    let hash: String = sqlx::Row::try_get(&row, "password_hash").expect("hash");
    assert!(hash.starts_with("$argon2id$") && !hash.contains("un mot de passe long"));
}
both!(totp_throttling_and_sessions);

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

async fn audit_journal_exports_and_detects_tampering(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    let a = h.org("org-a", None, &h.admin).await;
    let b = h.org("org-b", None, &h.admin).await;
    let sa = h.site(a, "sa", "a.fr", "http://127.0.0.1:9").await;
    h.site(b, "sb", "b.fr", "http://127.0.0.1:9").await;
    let a_admin = h.person(a, "chef@a.fr", "admin").await;
    let r = h
        .put(
            &format!("/api/v1/sites/{sa}/draft"),
            &a_admin,
            json!({"hosts": ["a.fr"], "origin": [{"url": "http://127.0.0.1:9"}], "grace": "2h"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = h.get("/api/v1/audit/verify", &h.admin).await.body;
    assert_eq!(v["ok"], true, "{v}");
    // Who, when, from where, what before and after.
    let j = h
        .get(&format!("/api/v1/orgs/{a}/audit"), &a_admin)
        .await
        .body;
    let entries = j["entries"].as_array().expect("entries");
    let e = entries
        .iter()
        .find(|e| e["action"] == "site.draft")
        .expect("draft entry");
    assert_eq!(e["actor"], "chef@a.fr");
    assert_eq!(e["ip"], "127.0.0.1");
    assert!(e["before"]["grace"].is_null());
    assert_eq!(e["after"]["grace"], "2h");
    assert!(
        entries.iter().all(|e| e["org_id"] == a),
        "another tenant's entry leaked"
    );
    // Exports.
    let jl = h
        .get(&format!("/api/v1/orgs/{a}/audit?format=jsonl"), &a_admin)
        .await;
    assert_eq!(jl.text.lines().count(), entries.len());
    for l in jl.text.lines() {
        let v: Value = serde_json::from_str(l).expect("json line");
        assert_eq!(v["org_id"], a);
    }
    let csv = h
        .get(&format!("/api/v1/orgs/{a}/audit?format=csv"), &a_admin)
        .await;
    assert!(csv.text.starts_with("seq,time,org_id,actor"));
    assert_eq!(csv.text.lines().count(), entries.len() + 1);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );

    // Tampering: change one entry's content, then remove one.
    let seq = e["seq"].as_i64().expect("seq");
    h.ctl
        .db
        .q("UPDATE audit SET actor = 'quelqu''un d''autre' WHERE seq = ?")
        .bind(seq)
        .execute(&h.ctl.db.pool)
        .await
        .expect("tamper");
    let v = relais_control::audit::verify(&h.ctl.db)
        .await
        .expect("verify");
    assert!(!v.ok);
    assert_eq!(v.broken_at, Some(seq));
    let v2 = h.get("/api/v1/audit/verify", &h.admin).await.body;
    assert_eq!(v2["ok"], false);
    h.ctl
        .db
        .q("UPDATE audit SET actor = 'chef@a.fr' WHERE seq = ?")
        .bind(seq)
        .execute(&h.ctl.db.pool)
        .await
        .expect("restore");
    assert!(
        relais_control::audit::verify(&h.ctl.db)
            .await
            .expect("verify")
            .ok
    );
    h.ctl
        .db
        .q("DELETE FROM audit WHERE seq = ?")
        .bind(seq - 1)
        .execute(&h.ctl.db.pool)
        .await
        .expect("delete");
    let v = relais_control::audit::verify(&h.ctl.db)
        .await
        .expect("verify");
    assert!(!v.ok);
    assert_eq!(v.broken_at, Some(seq - 1));
}
both!(audit_journal_exports_and_detects_tampering);

// ---------------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------------

async fn drafts_publish_diff_rollback_explain(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    let o = h.org("org-o", None, &h.admin).await;
    let ed = h.person(o, "ed@o.fr", "editor").await;
    let s = h.site(o, "actu", "actu.fr", "http://127.0.0.1:9").await;
    let base = format!("/api/v1/sites/{s}");
    // A draft with a directory rule: validated, field-level errors in both languages.
    let bad = h
        .put(
            &format!("{base}/draft"),
            &ed,
            json!({"hosts": ["actu.fr"], "origin": [{"url": "http://127.0.0.1:9"}],
            "rule": [{"dir": "/news/", "edge_ttl": "5m"}, {"dir": "/news/", "edge_ttl": "10m"}]}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert!(
        bad.body["field"]
            .as_str()
            .expect("field")
            .starts_with("site.rule["),
        "{}",
        bad.text
    );
    let m = bad.body["message"].as_str().expect("message");
    assert!(m.contains(" / "), "French and English: {m}");
    let bad = h
        .put(
            &format!("{base}/draft"),
            &ed,
            json!({"hosts": ["actu.fr"], "origin": [{"url": "ftp://x"}]}),
        )
        .await;
    assert_eq!(bad.body["field"], "site.origin[0].url");
    let m = bad.body["message"].as_str().expect("message");
    assert!(
        m.contains("must start with http") && m.contains("doit commencer par http"),
        "{m}"
    );
    let bad = h.put(&format!("{base}/draft"), &ed, json!({"hosts": ["actu.fr"], "origin": [{"url": "http://x"}], "maintenance_page": "/etc/passwd"})).await;
    assert_eq!(bad.status, 422);

    let draft = json!({"hosts": ["actu.fr"], "origin": [{"url": "http://127.0.0.1:9"}],
        "rule": [{"id": "news", "dir": "/news/", "edge_ttl": "5m"}]});
    let r = h.put(&format!("{base}/draft"), &ed, draft).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["draft_differs"], true);
    assert_eq!(r.body["staging_host"], "actu.staging.localhost");
    // explain: the draft has the rule, the published version not yet.
    let e = h
        .get(&format!("{base}/explain?url=/news/a.html"), &ed)
        .await
        .body;
    let ttl = e["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .find(|x| x["setting"] == "edge_ttl")
        .expect("ttl")
        .clone();
    assert_eq!(ttl["rule"]["rule"], "news");
    let e = h
        .get(
            &format!("{base}/explain?url=/news/a.html&version=published"),
            &ed,
        )
        .await
        .body;
    let ttl = e["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .find(|x| x["setting"] == "edge_ttl")
        .expect("ttl")
        .clone();
    assert!(ttl["rule"].is_null());
    let d = h
        .get(&format!("{base}/diff?from=published&to=draft"), &ed)
        .await
        .body;
    assert_eq!(d["changed"], true);
    assert!(
        d["diff"]
            .as_str()
            .expect("diff")
            .contains("+ dir = \"/news/\""),
        "{}",
        d["diff"]
    );
    // Publish with a comment; history keeps author and time.
    let p = h
        .post(
            &format!("{base}/publish"),
            &ed,
            json!({"comment": "TTL actualités"}),
        )
        .await;
    assert_eq!(p.body["version"], 2);
    assert_eq!(p.body["site"]["draft_differs"], false);
    let v = h.get(&format!("{base}/versions"), &ed).await.body;
    assert_eq!(v["versions"][0]["version"], 2);
    assert_eq!(v["versions"][0]["author"], "ed@o.fr");
    assert_eq!(v["versions"][0]["comment"], "TTL actualités");
    assert_eq!(
        v["versions"][1]["author"],
        h.get("/api/v1/auth/me", &h.admin).await.body["email"]
    );
    // Rollback publishes version 1's document as version 3.
    let r = h
        .post(&format!("{base}/rollback"), &ed, json!({"version": 1}))
        .await;
    assert_eq!(r.body["version"], 3, "{}", r.text);
    let d = h.get(&format!("{base}/diff?from=1&to=3"), &ed).await.body;
    assert_eq!(d["changed"], false, "{}", d["diff"]);
    let d = h
        .get(&format!("{base}/diff?from=2&to=published"), &ed)
        .await
        .body;
    assert!(
        d["diff"]
            .as_str()
            .expect("diff")
            .contains("- dir = \"/news/\"")
    );
    // Mode switch applies at once (a new version) and keeps a pending draft edit.
    h.put(
        &format!("{base}/draft"),
        &ed,
        json!({"hosts": ["actu.fr"], "origin": [{"url": "http://127.0.0.1:9"}], "grace": "3h"}),
    )
    .await;
    let m = h
        .put(&format!("{base}/mode"), &ed, json!({"mode": "maintenance"}))
        .await;
    assert_eq!(m.status, 200, "{}", m.text);
    assert_eq!(m.body["site"]["mode"], "maintenance");
    assert_eq!(m.body["site"]["published"]["mode"], "maintenance");
    assert_eq!(m.body["site"]["draft"]["grace"], "3h");
    assert_eq!(m.body["site"]["draft"]["mode"], "maintenance");
    let bad = h.put(&format!("{base}/schedules"), &ed, json!([{"mode": "bypass", "start": "2027-05-01T00:00:00Z", "end": "2027-04-01T00:00:00Z"}])).await;
    assert_eq!(bad.body["field"], "site.schedule[0].end");
    // A certificate and key go in as PEM; the key never comes back out.
    let (cert, key, _) = relais_testkit::write_cert(h.dir.path(), "actu", &["actu.fr"]);
    let cert = std::fs::read_to_string(cert).expect("cert");
    let key = std::fs::read_to_string(key).expect("key");
    let r = h
        .put(
            &format!("{base}/certificate"),
            &ed,
            json!({"cert_pem": cert, "key_pem": "garbage"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["field"], "certificate");
    let r = h
        .put(
            &format!("{base}/certificate"),
            &ed,
            json!({"cert_pem": cert, "key_pem": key}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        !r.text.contains("PRIVATE KEY"),
        "the private key was echoed"
    );
    assert_eq!(
        r.body["draft"]["tls"]["key_pem"],
        relais_control::sites::REDACTED
    );
    // Sending the redacted document back keeps the stored key.
    let mut back = r.body["draft"].clone();
    back["grace"] = json!("4h");
    let r = h.put(&format!("{base}/draft"), &ed, back).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let stored = h.ctl.site_row(s).await.expect("row");
    assert!(
        stored
            .draft
            .tls
            .and_then(|t| t.key_pem)
            .expect("key")
            .contains("PRIVATE KEY")
    );
    // Query strings and bodies that do not parse get the same error format.
    let r = h.get(&format!("{base}/explain"), &ed).await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (400, Some("bad_request")),
        "{}",
        r.text
    );
    let r = h.req(Method::PUT, &format!("{base}/mode"), &ed, None).await;
    assert_eq!(r.body["code"], "bad_request", "{}", r.text);
    assert_eq!(h.get("/api/v1/nowhere", &ed).await.body["code"], "no_route");
    // The definition document follows the live configuration.
    let md = h.get(&format!("{base}/definition"), &ed).await;
    assert!(
        md.text.contains("`actu.fr`") && md.text.contains("`maintenance`"),
        "{}",
        md.text
    );
    let html = h.get(&format!("{base}/definition?format=html"), &ed).await;
    assert!(html.text.contains("<h2>Origines / Origins</h2>"));
    // OpenAPI.
    let api = h.get("/api/openapi.json", "").await.body;
    assert_eq!(api["openapi"], "3.1.0");
    assert!(api["paths"]["/api/v1/sites/{id}/purges"]["post"].is_object());
}
both!(drafts_publish_diff_rollback_explain);

// ---------------------------------------------------------------------------------------------
// Edges: distribution, staging, purge receipts, vouching
// ---------------------------------------------------------------------------------------------

struct EdgeProc {
    edge: Arc<Edge>,
    running: Option<relais_edge::server::Running>,
    follow: Option<FollowHandle>,
    addr: SocketAddr,
}

impl EdgeProc {
    async fn stop(&mut self) {
        self.follow.take();
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

async fn start_edge(h: &H, name: &str, lease: Duration) -> EdgeProc {
    start_edge_with(h, name, lease, Arc::new(SystemClock), false).await
}

async fn start_edge_with(
    h: &H,
    name: &str,
    lease: Duration,
    clock: relais_edge::clock::SharedClock,
    access_log: bool,
) -> EdgeProc {
    let token = h.ctl.local_edge_token(name).await.expect("token");
    let state_dir = h.dir.path().join(format!("edge-{name}"));
    let base = FileConfig {
        version: Some(relais_edge::config::CONFIG_VERSION),
        edge: FileEdge {
            listen: vec!["127.0.0.1:0".into()],
            access_log: access_log.then(|| h.dir.path().join(format!("logs-{name}"))),
            ..Default::default()
        },
        cache: FileCache {
            disk_path: Some(h.dir.path().join(format!("cache-{name}"))),
            ..Default::default()
        },
        sites: vec![],
    };
    let (state, _) = follow::load_state(&state_dir);
    let cfg = follow::build_config(&base, &state).expect("config");
    let edge = Edge::new(
        cfg,
        clock,
        EdgeOptions {
            active_health_checks: false,
        },
    )
    .expect("edge");
    let running = relais_edge::server::start(edge.clone(), None)
        .await
        .expect("start");
    let addr = running.http[0];
    let f = follow::spawn(
        edge.clone(),
        FollowOptions {
            control: h.base.clone(),
            token,
            state_dir,
            base,
            lease,
            listen: vec![addr.to_string()],
            ship_every: Duration::from_millis(100),
        },
    )
    .expect("follow");
    EdgeProc {
        edge,
        running: Some(running),
        follow: Some(f),
        addr,
    }
}

async fn fetch(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let r = c
        .get(format!("http://{addr}{path}"))
        .header("host", host)
        .send()
        .await
        .expect("get");
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, cs, r.text().await.unwrap_or_default())
}

async fn until<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn edges_follow_publish_staging_and_modes(kind: Kind) {
    let Some(mut h) = H::new(kind).await else {
        return;
    };
    let origin = Origin::start(|s| {
        Reply::ok(format!("page {}", s.path)).header("cache-control", "public, max-age=600")
    })
    .await;
    let o = h.org("org-o", None, &h.admin).await;
    let mut e1 = start_edge(&h, "e1", Duration::from_secs(3)).await;
    let s = h.site(o, "gouv", "www.gouv.test", &origin.url()).await;
    let base = format!("/api/v1/sites/{s}");
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e1.addr, "www.gouv.test", "/").await.0 == 200
        })
        .await
    );
    // A draft is served on the staging host only, with its own cache.
    let r = h
        .put(&format!("{base}/draft"), &h.admin, json!({"hosts": ["www.gouv.test"], "origin": [{"url": origin.url()}], "mode": "maintenance", "maintenance_html": "<p>bientôt</p>"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e1.addr, "gouv.staging.localhost", "/").await.0 == 503
        })
        .await
    );
    let (st, _, body) = fetch(e1.addr, "gouv.staging.localhost", "/").await;
    assert_eq!((st, body.as_str()), (503, "<p>bientôt</p>"));
    assert_eq!(
        fetch(e1.addr, "www.gouv.test", "/").await.0,
        200,
        "the draft leaked to production"
    );
    // Publishing applies it on the edge (atomically: the whole document).
    h.post(&format!("{base}/publish"), &h.admin, json!({}))
        .await;
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e1.addr, "www.gouv.test", "/").await.0 == 503
        })
        .await
    );
    // Modes switch at once; rollback brings back version 1.
    h.put(
        &format!("{base}/mode"),
        &h.admin,
        json!({"mode": "disabled"}),
    )
    .await;
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e1.addr, "www.gouv.test", "/").await.0 == 404
        })
        .await
    );
    let r = h
        .post(&format!("{base}/rollback"), &h.admin, json!({"version": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e1.addr, "www.gouv.test", "/").await.0 == 200
        })
        .await
    );
    // The edge reports its progress.
    let edges = h.get("/api/v1/edges", &h.admin).await.body;
    assert_eq!(edges["edges"][0]["name"], "e1");
    assert!(
        until(Duration::from_secs(5), || async {
            h.get("/api/v1/edges", &h.admin).await.body["edges"][0]["vouched"] == true
        })
        .await
    );

    // Something invalid reaches the edge (written behind the API's back): refused, reported,
    // and the last good configuration keeps serving.
    h.ctl
        .db
        .q("UPDATE sites SET draft = ?, changed_seq = changed_seq + 1000 WHERE id = ?")
        .bind(
            json!({"name": "gouv", "hosts": ["www.gouv.test"], "origin": [{"url": "ftp://nope"}]})
                .to_string(),
        )
        .bind(s)
        .execute(&h.ctl.db.pool)
        .await
        .expect("corrupt");
    h.ctl
        .db
        .q("UPDATE counters SET value = value + 1000 WHERE name = 'config_seq'")
        .execute(&h.ctl.db.pool)
        .await
        .expect("seq");
    h.ctl.notify(Some(i64::MAX / 2), None);
    assert!(
        until(Duration::from_secs(5), || async {
            h.get("/api/v1/edges", &h.admin).await.body["edges"][0]["config_error"].is_string()
        })
        .await
    );
    assert_eq!(fetch(e1.addr, "www.gouv.test", "/").await.0, 200);

    // The control plane goes away: the edge keeps serving; restarted without it, the edge
    // serves from the snapshot it kept on disk.
    h.running.take().expect("running").shutdown().await;
    assert_eq!(fetch(e1.addr, "www.gouv.test", "/x").await.0, 200);
    e1.stop().await;
    let e1b = start_edge(&h, "e1", Duration::from_secs(3)).await;
    let (st, _, body) = fetch(e1b.addr, "www.gouv.test", "/y").await;
    assert_eq!((st, body.as_str()), (200, "page /y"));
    h.running = None;
}
both!(edges_follow_publish_staging_and_modes);

async fn purge_receipts_survive_an_edge_restart(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    let origin = Origin::start(|s| {
        Reply::ok(format!("v{}", s.path))
            .header("cache-control", "public, max-age=600")
            .header("etag", "\"1\"")
            .header("surrogate-key", "actus")
    })
    .await;
    let o = h.org("org-o", None, &h.admin).await;
    let (_, purger) = h.token(o, "purge", None).await;
    let s = h.site(o, "presse", "presse.test", &origin.url()).await;
    let mut e1 = start_edge(&h, "e1", Duration::from_secs(3)).await;
    let mut e2 = start_edge(&h, "e2", Duration::from_secs(3)).await;
    for e in [&e1, &e2] {
        assert!(
            until(Duration::from_secs(5), || async {
                fetch(e.addr, "presse.test", "/a").await.0 == 200
            })
            .await
        );
        assert!(until(Duration::from_secs(5), || async { e.edge.is_vouched() }).await);
        assert!(fetch(e.addr, "presse.test", "/a").await.1.contains("hit"));
        fetch(e.addr, "presse.test", "/b").await;
    }
    // Both edges up: the receipt completes, with a latency per edge.
    let r = h
        .post(
            &format!("/api/v1/sites/{s}/purges?wait_ms=5000"),
            &purger,
            json!({"kind": "url", "values": ["/a", "http://presse.test/zz"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["complete"], true, "{}", r.text);
    assert_eq!(r.body["edges_total"], 2);
    for e in r.body["edges"].as_array().expect("edges") {
        assert_eq!(e["status"], "applied");
        assert!(e["latency_ms"].as_i64().is_some());
    }
    for e in [&e1, &e2] {
        assert!(
            fetch(e.addr, "presse.test", "/a")
                .await
                .1
                .contains("fwd=miss")
        );
        assert!(fetch(e.addr, "presse.test", "/b").await.1.contains("hit"));
    }
    // Edge 2 is stopped; a purge by tag is acknowledged and pending for it.
    e2.stop().await;
    let r = h
        .post(
            &format!("/api/v1/sites/{s}/purges?wait_ms=3000"),
            &purger,
            json!({"kind": "tag", "values": ["actus"]}),
        )
        .await;
    let id = r.body["id"].as_i64().expect("id");
    assert_eq!(r.body["complete"], false);
    let by_edge = |r: &Value, name: &str| {
        r["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| e["edge"] == name)
            .expect("edge")["status"]
            .clone()
    };
    assert_eq!(by_edge(&r.body, "e1"), "applied");
    assert_eq!(by_edge(&r.body, "e2"), "pending");
    // Edge 2 comes back with its disk cache: before it has caught up it does not vouch, and
    // once it has, the receipt completes and the purged object is fetched again.
    let hits = origin.hits();
    let e2b = start_edge(&h, "e2", Duration::from_secs(3)).await;
    assert!(
        until(Duration::from_secs(5), || async {
            h.get(&format!("/api/v1/purges/{id}"), &purger).await.body["complete"] == true
        })
        .await
    );
    assert!(until(Duration::from_secs(5), || async { e2b.edge.is_vouched() }).await);
    let (_, cs, _) = fetch(e2b.addr, "presse.test", "/b").await;
    assert!(
        !cs.contains("; hit"),
        "a purged object was served from cache: {cs}"
    );
    assert!(origin.hits() > hits);
    // A retired edge's token stops working and receipts no longer wait for it.
    let edges = h.get("/api/v1/edges", &h.admin).await.body;
    let e2_id = edges["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["name"] == "e2")
        .expect("e2")["id"]
        .as_i64()
        .expect("id");
    let mut e2b = e2b;
    e2b.stop().await;
    let r = h
        .req(
            Method::DELETE,
            &format!("/api/v1/edges/{e2_id}"),
            &h.admin,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = h
        .post(
            &format!("/api/v1/sites/{s}/purges?wait_ms=3000"),
            &purger,
            json!({"kind": "all"}),
        )
        .await;
    assert_eq!(r.body["complete"], true, "{}", r.text);
    assert_eq!(r.body["edges_total"], 1);
    // Soft purge: objects become stale and are revalidated (304 from the origin keeps them).
    fetch(e1.addr, "presse.test", "/c").await;
    let r = h
        .post(
            &format!("/api/v1/sites/{s}/purges?wait_ms=3000"),
            &purger,
            json!({"kind": "prefix", "values": ["/c"], "soft": true}),
        )
        .await;
    assert_eq!(by_edge(&r.body, "e1"), "applied");
    let (_, cs, _) = fetch(e1.addr, "presse.test", "/c").await;
    assert!(cs.contains("fwd=stale"), "{cs}");
    // A purge token cannot read another site's receipts or purge other sites.
    let bad = h
        .post(
            &format!("/api/v1/sites/{s}/purges"),
            &purger,
            json!({"kind": "url", "values": ["http://ailleurs.test/x"]}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["field"], "values[0]");
    e1.stop().await;
}
both!(purge_receipts_survive_an_edge_restart);

async fn an_edge_without_news_revalidates_instead_of_trusting_its_cache(kind: Kind) {
    let Some(mut h) = H::new(kind).await else {
        return;
    };
    let origin =
        Origin::start(|_| Reply::ok("contenu").header("cache-control", "public, max-age=600"))
            .await;
    let o = h.org("org-o", None, &h.admin).await;
    h.site(o, "s", "s.test", &origin.url()).await;
    let e = start_edge(&h, "e", Duration::from_millis(600)).await;
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e.addr, "s.test", "/").await.0 == 200
        })
        .await
    );
    assert!(until(Duration::from_secs(5), || async { e.edge.is_vouched() }).await);
    assert!(fetch(e.addr, "s.test", "/").await.1.contains("hit"));
    // The control plane disappears: after the lease the edge cannot vouch for its cache.
    h.running.take().expect("running").shutdown().await;
    assert!(until(Duration::from_secs(5), || async { !e.edge.is_vouched() }).await);
    let before = origin.hits();
    let (st, cs, _) = fetch(e.addr, "s.test", "/").await;
    assert_eq!(st, 200);
    assert!(!cs.contains("; hit"), "{cs}");
    assert_eq!(origin.hits(), before + 1);
    // And with the origin down too, it refuses to serve what a missed purge might cover.
    origin.stop();
    let (st, _, _) = fetch(e.addr, "s.test", "/").await;
    assert!(
        st >= 500,
        "served {st} from an unvouched cache with the origin down"
    );
}
both!(an_edge_without_news_revalidates_instead_of_trusting_its_cache);

async fn edges_report_origins_that_are_down(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    let origin = Origin::start(|_| Reply::ok("ok").header("cache-control", "no-store")).await;
    let o = h.org("org-o", None, &h.admin).await;
    h.site(o, "sante", "sante.test", &origin.url()).await;
    let e = start_edge(&h, "e", Duration::from_secs(3)).await;
    assert!(
        until(Duration::from_secs(5), || async {
            fetch(e.addr, "sante.test", "/").await.0 == 200
        })
        .await
    );
    let down = || async {
        h.get("/api/v1/edges", &h.admin).await.body["edges"][0]["origins_down"].clone()
    };
    assert_eq!(down().await, json!([]));
    // The origin stops: refused connections open the breaker; the edge reports it.
    origin.stop();
    for _ in 0..5 {
        fetch(e.addr, "sante.test", "/").await;
    }
    assert!(
        until(Duration::from_secs(5), || async {
            down()
                .await
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p[0] == "sante"))
        })
        .await
    );
    assert_eq!(h.ctl.site_health("sante").await.expect("health")[0].0, "e");
}
both!(edges_report_origins_that_are_down);

async fn access_logs_of_two_edges_reach_the_store_as_one_day(kind: Kind) {
    let Some(mut h) = H::new(kind).await else {
        return;
    };
    let origin =
        Origin::start(|s| Reply::ok(format!("p{}", s.path)).header("cache-control", "max-age=60"))
            .await;
    let o = h.org("org-o", None, &h.admin).await;
    let s = h.site(o, "journal", "journal.test", &origin.url()).await;
    // Sessions expire when the clock jumps a day: reads go through an API token.
    let (_, reader) = h.token(o, "read", Some(3650)).await;
    let clock: relais_edge::clock::SharedClock = Arc::new(h.clock.clone());
    let e1 = start_edge_with(&h, "e1", Duration::from_secs(3), clock.clone(), true).await;
    let e2 = start_edge_with(&h, "e2", Duration::from_secs(3), clock.clone(), true).await;
    for e in [&e1, &e2] {
        assert!(
            until(Duration::from_secs(5), || async {
                fetch(e.addr, "journal.test", "/warm").await.0 == 200
            })
            .await
        );
    }
    for p in ["/a", "/b", "/c"] {
        fetch(e1.addr, "journal.test", p).await;
    }
    for p in ["/d", "/e"] {
        fetch(e2.addr, "journal.test", p).await;
    }
    let written = |e: &EdgeProc| {
        e.edge
            .access_log
            .as_ref()
            .map_or(0, |l| l.written.load(std::sync::atomic::Ordering::Relaxed))
    };
    assert!(
        until(Duration::from_secs(5), || async {
            written(&e1) >= 4 && written(&e2) >= 3
        })
        .await
    );
    let expected = written(&e1) + written(&e2);
    let r = h
        .put(
            &format!("/api/v1/orgs/{o}/settings"),
            &h.admin,
            json!({"log_recipients": ["webmestre@journal.test", "dsi@journal.test"], "language": "en"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bad = h
        .put(
            &format!("/api/v1/orgs/{o}/settings"),
            &h.admin,
            json!({"log_recipients": ["pas une adresse"]}),
        )
        .await;
    assert_eq!(bad.body["field"], "log_recipients[0]");
    // Midnight: each edge closes its day and delivers it; the store merges both.
    h.clock.advance(Duration::from_secs(86_400 + 60));
    assert!(
        until(Duration::from_secs(10), || async {
            let d = log_days(&h, s, &reader).await;
            d[0]["edges"].as_array().map(Vec::len) == Some(2)
        })
        .await,
        "{}",
        log_days(&h, s, &reader).await
    );
    let d = log_days(&h, s, &reader).await;
    assert_eq!(d[0]["lines"].as_u64(), Some(expected));
    assert_eq!(d[0]["complete"], true);
    let date = d[0]["date"].as_str().expect("date").to_owned();
    // Download the day: one file, every line, in time order.
    let resp = h
        .http
        .get(format!("{}/api/v1/sites/{s}/logs/{date}", h.base))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("download");
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    let gz = resp.bytes().await.expect("body");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
        .expect("gunzip");
    assert_eq!(text.lines().count() as u64, expected);
    for p in ["/a", "/b", "/c", "/d", "/e"] {
        assert!(
            text.contains(&format!("GET {p} HTTP/1.1")),
            "{p} missing:\n{text}"
        );
    }
    // Once both edges have delivered, the organisation's recipients get one message, through
    // a real SMTP exchange.
    assert!(
        until(Duration::from_secs(5), || async {
            !h.sink.received().is_empty()
        })
        .await,
        "no mail"
    );
    let mails = h.sink.received();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "relais@plateforme.test");
    assert_eq!(mail.to, ["webmestre@journal.test", "dsi@journal.test"]);
    assert!(
        mail.data.contains("The access logs of site journal"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains(&format!(
            "https://extranet.test/api/v1/sites/{s}/logs/{date}"
        )),
        "{}",
        mail.data
    );
    assert!(mail.data.contains(d[0]["sha256"].as_str().expect("sha")));
    assert!(
        !h.ctl
            .notify_log_day("journal", &date)
            .await
            .expect("notify"),
        "sent twice"
    );
    // Delivered days leave the edges' disks.
    assert!(
        until(Duration::from_secs(5), || async {
            std::fs::read_dir(h.dir.path().join("logs-e1").join("journal"))
                .map(|rd| {
                    rd.flatten()
                        .all(|f| !f.file_name().to_string_lossy().ends_with(".log.gz"))
                })
                .unwrap_or(false)
        })
        .await
    );
    // Another tenant cannot list or fetch them.
    h.admin_again().await;
    let other = h.org("org-x", None, &h.admin).await;
    let (_, tok) = h.token(other, "read", None).await;
    assert_eq!(
        h.get(&format!("/api/v1/sites/{s}/logs"), &tok).await.status,
        404
    );
    assert_eq!(
        h.get(&format!("/api/v1/sites/{s}/logs/{date}"), &tok)
            .await
            .status,
        404
    );
    // Retention: never less than 6 months; after 7 months a 6-month organisation loses the day.
    let r = h
        .put(
            &format!("/api/v1/orgs/{o}/settings"),
            &h.admin,
            json!({"log_retention_months": 5}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .put(
            &format!("/api/v1/orgs/{o}/settings"),
            &h.admin,
            json!({"log_retention_months": 6}),
        )
        .await;
    assert_eq!(r.body["log_retention_months"], 6);
    assert_eq!(h.ctl.expire_logs().await.expect("expire"), 0);
    h.clock.advance(Duration::from_secs(214 * 86_400));
    assert_eq!(h.ctl.expire_logs().await.expect("expire"), 1);
    assert_eq!(log_days(&h, s, &reader).await, json!([]));
}
both!(access_logs_of_two_edges_reach_the_store_as_one_day);

async fn log_days(h: &H, site: i64, token: &str) -> Value {
    h.get(&format!("/api/v1/sites/{site}/logs"), token)
        .await
        .body["days"]
        .clone()
}

/// Puts one day of logs for a site in the store, as an edge would deliver it.
fn store_day(h: &H, site: &str, lines: &[&str]) -> Vec<u8> {
    let tmp = h.dir.path().join(format!("day-{site}"));
    let day = 20_779; // 2026-11-22
    let (plain, gz, man) = relais_edge::accesslog::paths(&tmp, site, "2026-11-22");
    std::fs::create_dir_all(plain.parent().expect("dir")).expect("dir");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&plain, text).expect("write");
    relais_edge::accesslog::close_day(&tmp, site, day, Default::default(), 0).expect("close");
    let m: relais_edge::accesslog::Manifest =
        serde_json::from_slice(&std::fs::read(man).expect("manifest")).expect("json");
    let store = h.ctl.logs.as_ref().expect("store");
    store
        .put("paris-1", &m, &std::fs::read(gz).expect("gz"))
        .expect("put");
    std::fs::read(store.file(site, "2026-11-22").expect("file")).expect("read")
}

async fn sftp(port: u16, user: &str, key: &std::path::Path, batch: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let b = dir.path().join("batch");
    std::fs::write(&b, batch).expect("batch");
    let out = tokio::process::Command::new("sftp")
        .arg("-b")
        .arg(&b)
        .arg("-P")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
        ])
        .arg(format!("User={user}"))
        .arg("127.0.0.1")
        .output()
        .await
        .expect("sftp client");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn keygen(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    let ok = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .await
        .expect("ssh-keygen");
    assert!(ok.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    (key, public)
}

async fn sftp_serves_each_customer_only_their_logs_read_only(kind: Kind) {
    let Some(h) = H::new(kind).await else { return };
    let a = h.org("org-a", None, &h.admin).await;
    let b = h.org("org-b", None, &h.admin).await;
    h.site(a, "sitea", "a.test", "http://127.0.0.1:9").await;
    h.site(b, "siteb", "b.test", "http://127.0.0.1:9").await;
    let day_a = store_day(
        &h,
        "sitea",
        &["1.2.3.4 - - [22/Nov/2026:08:00:00 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"-\""],
    );
    store_day(
        &h,
        "siteb",
        &["5.6.7.8 - - [22/Nov/2026:08:00:00 +0000] \"GET /secret HTTP/1.1\" 200 5 \"-\" \"-\""],
    );
    let alice = h.person(a, "alice@a.test", "viewer").await;
    let (key, public) = keygen(h.dir.path(), "alice").await;
    let bad = h
        .post(
            "/api/v1/auth/ssh-keys",
            &alice,
            json!({"key": "ssh-ed25519 notakey"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    let r = h
        .post("/api/v1/auth/ssh-keys", &alice, json!({"key": public}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        r.body["fingerprint"]
            .as_str()
            .expect("fp")
            .starts_with("SHA256:")
    );
    let (addr, _task) =
        relais_control::sftp::serve(h.ctl.clone(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("sftp");
    let port = addr.port();
    // Alice lists her sites and fetches a day with the OpenSSH client.
    let got = h.dir.path().join("got.gz");
    let (ok, out) = sftp(
        port,
        "alice@a.test",
        &key,
        &format!(
            "ls /\nls /sitea\nget /sitea/sitea-2026-11-22.log.gz {}\n",
            got.display()
        ),
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("sitea-2026-11-22.log.gz") && out.contains("sitea-2026-11-22.manifest.json"),
        "{out}"
    );
    assert!(
        !out.contains("siteb"),
        "another tenant's site is listed: {out}"
    );
    assert_eq!(std::fs::read(&got).expect("got"), day_a);
    // Another tenant's files, climbing out, and writing: all refused.
    for batch in [
        "ls /siteb\n".to_owned(),
        "get /siteb/siteb-2026-11-22.log.gz /tmp/x\n".to_owned(),
        "get /sitea/../../etc/passwd /tmp/x\n".to_owned(),
        format!("put {} /sitea/new.log.gz\n", got.display()),
        "rm /sitea/sitea-2026-11-22.log.gz\n".to_owned(),
        "mkdir /sitea/x\n".to_owned(),
    ] {
        let (ok, out) = sftp(port, "alice@a.test", &key, &batch).await;
        assert!(!ok, "{batch} succeeded: {out}");
    }
    assert!(
        h.ctl
            .logs
            .as_ref()
            .expect("store")
            .file("sitea", "2026-11-22")
            .is_ok()
    );
    // A key that is not registered gets nothing.
    let (other, _) = keygen(h.dir.path(), "mallory").await;
    let (ok, _) = sftp(port, "alice@a.test", &other, "ls /\n").await;
    assert!(!ok);
    // Removing the key closes the door.
    let kid = h.get("/api/v1/auth/ssh-keys", &alice).await.body["keys"][0]["id"]
        .as_i64()
        .expect("id");
    let r = h
        .req(
            Method::DELETE,
            &format!("/api/v1/auth/ssh-keys/{kid}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let (ok, _) = sftp(port, "alice@a.test", &key, "ls /\n").await;
    assert!(!ok);
}
both!(sftp_serves_each_customer_only_their_logs_read_only);

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

async fn get_ua(addr: SocketAddr, host: &str, path: &str, ua: &str) -> (u16, u64) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let r = c
        .get(format!("http://{addr}{path}"))
        .header("host", host)
        .header("user-agent", ua)
        .send()
        .await
        .expect("get");
    let status = r.status().as_u16();
    (status, r.bytes().await.map(|b| b.len() as u64).unwrap_or(0))
}

/// Decodes a quoted-printable body (soft line breaks and `=XX`).
fn quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn minute_of(clock: &ManualClock) -> i64 {
    use relais_edge::clock::Clock;
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
        / 60
}

async fn traffic_statistics_from_two_edges(kind: Kind) {
    let Some(mut h) = H::new(kind).await else {
        return;
    };
    let origin = Origin::start(|s| match s.path.as_str() {
        "/boom" => Reply::ok("panne").status(500),
        "/nostore" => Reply::ok("dynamique").header("cache-control", "no-store"),
        p => Reply::ok(format!("page {p}")).header("cache-control", "max-age=600"),
    })
    .await;
    let o = h.org("org-stats", None, &h.admin).await;
    let s = h.site(o, "chiffres", "chiffres.test", &origin.url()).await;
    let (_, reader) = h.token(o, "read", Some(3650)).await;
    let clock: relais_edge::clock::SharedClock = Arc::new(h.clock.clone());
    let e1 = start_edge_with(&h, "s1", Duration::from_secs(3600), clock.clone(), false).await;
    let e2 = start_edge_with(&h, "s2", Duration::from_secs(3600), clock.clone(), false).await;
    for e in [&e1, &e2] {
        assert!(
            until(Duration::from_secs(5), || async {
                fetch(e.addr, "chiffres.test", "/warm").await.0 == 200
            })
            .await
        );
    }
    // Until an edge has caught up with the control plane it revalidates every object (a miss
    // for statistics): wait for both to vouch for their caches.
    for e in [&e1, &e2] {
        assert!(until(Duration::from_secs(10), || async { e.edge.is_vouched() }).await);
    }
    // A minute of known traffic on two edges, from two visitors.
    h.clock.advance(Duration::from_secs(60));
    let m1 = minute_of(&h.clock);
    let mut sent = 0;
    let mut cached = 0;
    for i in 0..3 {
        let (st, n) = get_ua(e1.addr, "chiffres.test", "/page", "Firefox").await;
        assert_eq!(st, 200);
        sent += n;
        if i > 0 {
            cached += n;
        }
    }
    for i in 0..2 {
        let (_, n) = get_ua(e2.addr, "chiffres.test", "/page", "Chromium").await;
        sent += n;
        if i > 0 {
            cached += n;
        }
    }
    sent += get_ua(e2.addr, "chiffres.test", "/nostore", "Chromium")
        .await
        .1;
    let (st, n) = get_ua(e1.addr, "chiffres.test", "/boom", "Firefox").await;
    assert_eq!(st, 500);
    sent += n;
    // The minute closes; both edges ship it.
    h.clock.advance(Duration::from_secs(60));
    let date = relais_edge::accesslog::date_string(m1 / 1440);
    let at = relais_control::stats::stamp(m1 * 60, relais_control::stats::Step::Minute);
    let minutes = format!("/api/v1/sites/{s}/stats?from={date}&to={date}&step=minute");
    let point = |v: &Value| {
        v["points"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["at"] == at.as_str()).cloned())
            .unwrap_or(Value::Null)
    };
    assert!(
        until(Duration::from_secs(10), || async {
            point(&h.get(&minutes, &reader).await.body)["requests"] == 7
        })
        .await,
        "{}",
        h.get(&minutes, &reader).await.text
    );
    let r = h.get(&minutes, &reader).await;
    assert_eq!(r.body["points"].as_array().map(Vec::len), Some(1440));
    let p = point(&r.body);
    assert_eq!(p["hits"], 3, "{p}");
    assert_eq!(p["misses"], 3, "{p}");
    assert_eq!(p["errors"], 1, "{p}");
    assert_eq!(p["stale"], 0, "{p}");
    assert_eq!(p["status"]["2xx"], 6, "{p}");
    assert_eq!(p["status"]["5xx"], 1, "{p}");
    assert_eq!(p["visitors"], 2, "{p}");
    assert_eq!(p["bytes_sent"], sent, "{p}");
    assert_eq!(p["bytes_cached"], cached, "{p}");
    assert_eq!(p["bytes_origin"], sent - cached, "{p}");
    assert_eq!(p["hit_ratio"], json!(0.4286), "{p}");
    assert_eq!(p["under_2s"], json!(1.0), "{p}");
    // Hours and days were merged from the same minutes: the day holds the warm-up too.
    let day = h
        .get(
            &format!("/api/v1/sites/{s}/stats?from={date}&to={date}&step=day"),
            &reader,
        )
        .await;
    assert_eq!(day.body["points"].as_array().map(Vec::len), Some(1));
    let total = day.body["total"].clone();
    assert!(total["requests"].as_u64() >= Some(9), "{total}");
    assert_eq!(total["requests"], day.body["points"][0]["requests"]);
    assert_eq!(
        total["response_time_ms"].as_array().map(Vec::len),
        Some(relais_edge::stats::TTFB_BUCKETS)
    );
    // A batch delivered twice counts once.
    let token = h.ctl.local_edge_token("replayer").await.expect("token");
    let agg = relais_edge::stats::Agg {
        requests: 5,
        bypass: 5,
        ..Default::default()
    };
    let batch = json!({"seq": 1, "minutes": [{"site": "chiffres", "minute": m1, "agg": agg}]});
    for expected in [1, 0] {
        let r = h
            .http
            .post(format!("{}/edge/v1/stats", h.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(batch.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&r.text().await.expect("text")).expect("json");
        assert_eq!(v["counted"], expected);
    }
    let r = h.get(&minutes, &reader).await;
    assert_eq!(point(&r.body)["requests"], 12);
    assert_eq!(point(&r.body)["bypass"], 5);
    // Edges cannot read, readers cannot write, bad batches are refused whole.
    assert_eq!(
        h.http
            .post(format!("{}/edge/v1/stats", h.base))
            .bearer_auth(&reader)
            .header("content-type", "application/json")
            .body(batch.to_string())
            .send()
            .await
            .expect("post")
            .status(),
        401
    );
    let bad = h
        .http
        .post(format!("{}/edge/v1/stats", h.base))
        .bearer_auth(&token)
        .body(json!({"seq": 2, "minutes": [{"site": "chiffres", "minute": m1, "agg": {"visitors": "zz"}}]}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    assert_eq!(point(&h.get(&minutes, &reader).await.body)["requests"], 12);
    // Bad ranges get clear errors.
    let r = h
        .get(&format!("/api/v1/sites/{s}/stats?from=2026-13-01"), &reader)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["field"].as_str()),
        (422, Some("from"))
    );
    let r = h
        .get(
            &format!("/api/v1/sites/{s}/stats?step=minute&from=2026-01-01&to=2026-01-09"),
            &reader,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["field"].as_str()),
        (422, Some("step"))
    );
    // The organisation view sums its sites; usage reports the month's bandwidth.
    let org = h
        .get(
            &format!("/api/v1/orgs/{o}/stats?from={date}&to={date}"),
            &reader,
        )
        .await;
    assert_eq!(
        org.body["total"]["requests"],
        total["requests"].as_u64().map(|n| n + 5).unwrap_or(0)
    );
    assert_eq!(org.body["sites"][0]["site"], "chiffres");
    let month = &date[..7];
    let usage = h
        .get(&format!("/api/v1/orgs/{o}/usage?month={month}"), &reader)
        .await;
    assert_eq!(
        usage.body["sites"][0]["bytes_sent"],
        org.body["total"]["bytes_sent"]
    );
    assert_eq!(
        h.get(&format!("/api/v1/orgs/{o}/usage?month=2026-1"), &reader)
            .await
            .status,
        422
    );
    // CSV export: the minute's row carries the same figures.
    let csv = h
        .http
        .get(format!("{}{minutes}&format=csv&lang=en", h.base).replace("/stats?", "/stats/export?"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("csv");
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .unwrap_or("")
            .contains(".csv")
    );
    let csv = csv.text().await.expect("text");
    let row = csv
        .lines()
        .find(|l| l.starts_with(&at))
        .expect("the minute's row");
    let cols: Vec<&str> = row.split(',').collect();
    assert_eq!(cols[1], "12");
    assert_eq!(cols[3], sent.to_string());
    assert!(
        csv.trim_start_matches('\u{feff}')
            .starts_with("Period (UTC),Requests,")
    );
    // Another tenant sees none of it.
    h.admin_again().await;
    let other = h.org("org-autre", None, &h.admin).await;
    let (_, tok) = h.token(other, "read", None).await;
    for path in [
        format!("/api/v1/sites/{s}/stats"),
        format!("/api/v1/sites/{s}/stats/export?format=xlsx"),
        format!("/api/v1/orgs/{o}/stats"),
        format!("/api/v1/orgs/{o}/usage"),
    ] {
        assert_eq!(h.get(&path, &tok).await.status, 404, "{path}");
    }
    // Weekly report: the metrics the customer chose, once.
    let r = h
        .put(
            &format!("/api/v1/orgs/{o}/settings"),
            &h.admin,
            json!({"report_recipients": ["direction@chiffres.test"], "report_metrics": ["requests", "hit_ratio"], "language": "en"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bad = h
        .put(
            &format!("/api/v1/orgs/{o}/settings"),
            &h.admin,
            json!({"report_metrics": ["requests", "humeur"]}),
        )
        .await;
    assert_eq!(bad.body["field"], "report_metrics[1]");
    let d0 = m1 / 1440;
    assert_eq!(
        h.ctl.send_weekly_reports().await.expect("report"),
        0,
        "the week is not over: {:?}",
        h.sink.received().last().map(|m| m.data.clone())
    );
    let next_monday = d0 - (d0 + 3).rem_euclid(7) + 7;
    h.clock.advance(Duration::from_secs(
        ((next_monday * 1440 - m1) * 60 + 3600) as u64,
    ));
    assert_eq!(h.ctl.send_weekly_reports().await.expect("report"), 1);
    assert_eq!(
        h.ctl.send_weekly_reports().await.expect("report"),
        0,
        "sent twice"
    );
    let mails = h.sink.received();
    let mut mail = mails.last().expect("a report").clone();
    mail.data = quoted_printable(&mail.data);
    assert_eq!(mail.to, ["direction@chiffres.test"]);
    assert!(mail.data.contains("Requests: "), "{}", mail.data);
    assert!(
        mail.data.contains("Cache hit ratio (requests): "),
        "{}",
        mail.data
    );
    assert!(!mail.data.contains("Visitors"), "{}", mail.data);
    assert!(mail.data.contains("chiffres"), "{}", mail.data);
    assert!(
        mail.data
            .contains(&format!("Requests: {}", org.body["total"]["requests"])),
        "{}",
        mail.data
    );
}
both!(traffic_statistics_from_two_edges);
