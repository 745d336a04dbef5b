//! Every view at HTTP level: rendered content, rights per role, CSRF, security headers, errors.
//! The real control plane and extranet on 127.0.0.1 port 0 (SQLite); time from a manual clock.

use std::sync::Arc;
use std::time::Duration;

use relais_control::auth::{base32_decode, totp_code, totp_step};
use relais_control::{Control, ControlOptions};
use relais_edge::clock::{Clock, ManualClock};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

struct H {
    _ctl: Arc<Control>,
    _running: relais_control::Running,
    base: String,
    clock: ManualClock,
    _dir: tempfile::TempDir,
    admin_email: String,
    admin_password: String,
}

/// A browser-like client: its own cookie store, no redirects followed.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    lang: &'static str,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn csrf(&self) -> String {
        let i = self
            .body
            .find("name=\"_csrf\" value=\"")
            .expect("csrf field")
            + 20;
        self.body[i..i + 64].to_owned()
    }
}

impl Browser {
    async fn get(&self, path: &str) -> Page {
        let mut r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("accept-language", self.lang);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        Self::page(r.send().await.expect("get")).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept-language", self.lang)
            .body(body);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        Self::page(r.send().await.expect("post")).await
    }

    async fn page(r: reqwest::Response) -> Page {
        Page {
            status: r.status(),
            headers: r.headers().clone(),
            body: r.text().await.expect("body"),
        }
    }

    async fn login(&mut self, email: &str, password: &str, totp: &str) -> Page {
        let p = self
            .post(
                "/login",
                &[
                    ("email", email),
                    ("password", password),
                    ("totp", totp),
                    ("next", "/"),
                ],
            )
            .await;
        if let Some(c) = p.headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            self.cookie = Some(c.split(';').next().expect("cookie").to_owned());
        }
        p
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl H {
    async fn new() -> H {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let clock = ManualClock::new();
        let ctl = Control::open(&url, Arc::new(clock.clone()), ControlOptions::default())
            .await
            .expect("open");
        let first = relais_control::bootstrap::bootstrap(&ctl, Some("http://127.0.0.1:9"))
            .await
            .expect("bootstrap")
            .expect("first");
        let running = relais_control::serve_with(
            ctl.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            relais_extranet::router(ctl.clone()),
            relais_extranet::not_found,
        )
        .await
        .expect("serve");
        let base = format!("http://{}", running.addr);
        H {
            _ctl: ctl,
            _running: running,
            base,
            clock,
            _dir: dir,
            admin_email: first.admin_email,
            admin_password: first.admin_password,
        }
    }

    fn browser(&self) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: self.base.clone(),
            cookie: None,
            lang: "fr-FR,fr;q=0.9",
        }
    }

    /// An API session for the platform administrator (TOTP enrolled through the API).
    async fn admin_api(&self) -> String {
        let c = reqwest::Client::builder().no_proxy().build().expect("c");
        let call = |path: &str, token: Option<&str>, body: Value| {
            let mut r = c
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            async move {
                let t = r.send().await.expect("call").text().await.expect("text");
                serde_json::from_str::<Value>(&t).unwrap_or(Value::Null)
            }
        };
        let login = json!({"email": self.admin_email, "password": self.admin_password});
        let t = call("/api/v1/auth/login", None, login.clone()).await["token"]
            .as_str()
            .expect("t")
            .to_owned();
        let secret = call("/api/v1/auth/totp/setup", Some(&t), json!({})).await["secret"]
            .as_str()
            .expect("s")
            .to_owned();
        let key = base32_decode(&secret).expect("b32");
        self.clock.advance(Duration::from_secs(30));
        call(
            "/api/v1/auth/totp/confirm",
            Some(&t),
            json!({"code": totp_code(&key, totp_step(self.clock.now()))}),
        )
        .await;
        self.clock.advance(Duration::from_secs(30));
        let mut l = login;
        l["totp"] = json!(totp_code(&key, totp_step(self.clock.now())));
        call("/api/v1/auth/login", None, l).await["token"]
            .as_str()
            .expect("t")
            .to_owned()
    }

    async fn api(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Value {
        let c = reqwest::Client::builder().no_proxy().build().expect("c");
        let t = c
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("api")
            .text()
            .await
            .expect("text");
        serde_json::from_str(&t).unwrap_or(Value::Null)
    }

    /// A person with a role in the demo organisation (id 1), signed in through the form.
    async fn person(&self, admin: &str, email: &str, role: &str) -> Browser {
        let r = self
            .api(
                reqwest::Method::PUT,
                "/api/v1/orgs/1/members",
                admin,
                json!({"email": email, "role": role, "password": "mot de passe assez long"}),
            )
            .await;
        assert_eq!(r["role"], role, "{r}");
        let mut b = self.browser();
        let p = b.login(email, "mot de passe assez long", "").await;
        assert_eq!(p.status, 303, "{}", p.body);
        b
    }
}

fn assert_security_headers(p: &Page) {
    let csp = p.headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(p.headers["x-content-type-options"], "nosniff");
    assert_eq!(p.headers["x-frame-options"], "DENY");
    assert!(!p.body.contains("<script>"), "inline script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_pages_languages_and_headers() {
    let h = H::new().await;
    let mut b = h.browser();
    // Anonymous: to the sign-in page, which keeps where to go back.
    let p = b.get("/sites/1").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/login?next=/sites/1");
    let p = b.get("/login").await;
    assert_eq!(p.status, 200);
    assert_security_headers(&p);
    assert!(p.body.contains("<html lang=\"fr\">"));
    assert!(
        p.body
            .contains("<label for=\"email\">Adresse e-mail</label>")
    );
    assert!(
        p.body
            .contains("<label for=\"password\">Mot de passe</label>")
    );
    assert!(p.body.contains("href=\"#main\""), "skip link");
    // English by Accept-Language, and by the language switch (a cookie).
    b.lang = "en-GB,en;q=0.8";
    let p = b.get("/login").await;
    assert!(p.body.contains("<html lang=\"en\">") && p.body.contains("E-mail address"));
    b.lang = "fr";
    let p = b.get("/lang/en").await;
    assert_eq!(p.status, 303);
    assert!(
        p.headers["set-cookie"]
            .to_str()
            .expect("c")
            .starts_with("lang=en")
    );
    // Wrong password: the same page, the error tied to the field, the e-mail kept.
    let p = b.login("webmestre@demo.localhost", "nope", "").await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("role=\"alert\" id=\"login-error\""));
    assert!(p.body.contains("aria-describedby=\"login-error\""));
    assert!(p.body.contains("value=\"webmestre@demo.localhost\""));
    assert!(b.cookie.is_none());
    // Platform staff without a second factor are sent to enrol, then get in.
    let p = b.login(&h.admin_email, &h.admin_password, "").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/account/totp");
    let cookie = p.headers["set-cookie"].to_str().expect("cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Lax")
    );
    let p = b.get("/").await;
    assert_eq!(p.location(), "/account/totp", "must enrol first");
    let p = b.get("/account/totp").await;
    assert_eq!(p.status, 200);
    let i = p.body.find("id=\"totp-secret\">").expect("secret") + 17;
    let secret = p.body[i..].split('<').next().expect("secret").to_owned();
    let csrf = p.csrf();
    let bad = b
        .post("/account/totp", &[("_csrf", &csrf), ("code", "000000")])
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("aria-invalid=\"true\""));
    h.clock.advance(Duration::from_secs(30));
    let code = totp_code(
        &base32_decode(&secret).expect("b32"),
        totp_step(h.clock.now()),
    );
    let ok = b
        .post("/account/totp", &[("_csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let p = b.get(ok.location()).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Double authentification activée."));
    // Signing in again now needs the code, and rotates the session.
    let old = b.cookie.clone();
    let p = b.login(&h.admin_email, &h.admin_password, "").await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("Saisissez le code"));
    h.clock.advance(Duration::from_secs(30));
    let code = totp_code(
        &base32_decode(&secret).expect("b32"),
        totp_step(h.clock.now()),
    );
    let p = b.login(&h.admin_email, &h.admin_password, &code).await;
    assert_eq!(p.status, 303);
    assert_ne!(b.cookie, old);
    // Sign out ends the session.
    let d = b.get("/").await;
    let p = b.post("/logout", &[("_csrf", &d.csrf())]).await;
    assert_eq!(p.location(), "/login");
    assert_eq!(b.get("/").await.status, 303);
    // Unknown pages: an HTML page, not a trace; unknown API routes keep the JSON error.
    let p = b.get("/nulle-part").await;
    assert_eq!(p.status, 404);
    assert!(p.body.contains("<h1>") && !p.body.contains("panicked"));
    let p = b.get("/api/v1/nulle-part").await;
    assert!(p.body.contains("\"no_route\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_no_controls_and_forged_posts_are_refused() {
    let h = H::new().await;
    let admin = h.admin_api().await;
    let viewer = h.person(&admin, "lecteur@demo.localhost", "viewer").await;
    let editor = h.person(&admin, "editeur@demo.localhost", "editor").await;
    let p = viewer.get("/sites/1").await;
    assert_eq!(p.status, 200);
    assert_security_headers(&p);
    assert!(p.body.contains("<h1>Site demo</h1>"));
    for control in [
        "action=\"/sites/1/mode\"",
        "action=\"/sites/1/purge\"",
        "action=\"/sites/1/rollback\"",
    ] {
        assert!(!p.body.contains(control), "a viewer sees {control}");
    }
    let rules = viewer.get("/sites/1/rules").await;
    assert!(
        !rules
            .body
            .contains("method=\"post\" action=\"/sites/1/rules\"")
    );
    // A forged post with the viewer's own valid CSRF token is still refused by rights.
    let csrf = p.csrf();
    let r = viewer
        .post("/sites/1/purge", &[("_csrf", &csrf), ("kind", "all")])
        .await;
    assert_eq!(r.status, 403);
    let r = viewer
        .post(
            "/sites/1/mode",
            &[("_csrf", &csrf), ("mode", "disabled"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Votre rôle ne permet pas"));
    assert!(
        !viewer
            .get("/")
            .await
            .body
            .contains("action=\"/orgs/1/sites\"")
    );
    // The viewer cannot read the journal.
    assert_eq!(viewer.get("/orgs/1/audit").await.status, 403);
    // The editor sees the controls; a post without the CSRF token changes nothing.
    let p = editor.get("/sites/1").await;
    for control in ["action=\"/sites/1/mode\"", "action=\"/sites/1/purge\""] {
        assert!(p.body.contains(control), "an editor lacks {control}");
    }
    let r = editor
        .post("/sites/1/mode", &[("mode", "disabled"), ("confirm", "yes")])
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Le formulaire a expiré"));
    let r = editor
        .post(
            "/sites/1/mode",
            &[("_csrf", &csrf), ("mode", "disabled"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(r.status, 403, "another session's token was accepted");
    let site = h
        .api(reqwest::Method::GET, "/api/v1/sites/1", &admin, Value::Null)
        .await;
    assert_eq!(site["mode"], "active");
    // Another tenant's site and journal: not found.
    let other = h
        .api(
            reqwest::Method::POST,
            "/api/v1/orgs",
            &admin,
            json!({"slug": "autre", "name": "Autre"}),
        )
        .await;
    let oid = other["id"].as_i64().expect("org");
    let s = h
        .api(reqwest::Method::POST, &format!("/api/v1/orgs/{oid}/sites"), &admin, json!({"name": "autre", "hosts": ["autre.test"], "origin": [{"url": "http://127.0.0.1:9"}]}))
        .await;
    let sid = s["id"].as_i64().expect("site");
    for path in [
        format!("/sites/{sid}"),
        format!("/sites/{sid}/rules"),
        format!("/orgs/{oid}/audit"),
    ] {
        let r = editor.get(&path).await;
        assert_eq!(r.status, 404, "{path}");
    }
    let r = editor
        .post(
            &format!("/sites/{sid}/purge"),
            &[("_csrf", &editor.get("/").await.csrf()), ("kind", "all")],
        )
        .await;
    assert_eq!(r.status, 404);
    let d = editor.get("/").await;
    assert!(d.body.contains(">demo</a>") && !d.body.contains(">autre</a>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_flows_mode_purge_rules_publish_rollback_audit() {
    let h = H::new().await;
    let admin = h.admin_api().await;
    let ed = h.person(&admin, "chef@demo.localhost", "admin").await;
    let p = ed.get("/").await;
    assert!(p.body.contains("Organisation de démonstration"));
    assert!(p.body.contains("<a href=\"/sites/1\">demo</a>"));
    let csrf = p.csrf();
    // Create a site: a bad origin is shown on the form (values kept), a good one is created.
    assert!(p.body.contains("action=\"/orgs/1/sites\""));
    let r = ed
        .post(
            "/orgs/1/sites",
            &[
                ("_csrf", &csrf),
                ("name", "mairie"),
                ("host", "www.mairie.test"),
                ("origin", "ftp://x"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(
        r.body.contains("<code>site.origin[0].url</code>")
            && r.body.contains("value=\"www.mairie.test\""),
        "{}",
        r.body
    );
    let r = ed
        .post(
            "/orgs/1/sites",
            &[
                ("_csrf", &csrf),
                ("name", "mairie"),
                ("host", "www.mairie.test"),
                ("origin", "https://origine.mairie.test"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let created = ed.get(r.location()).await;
    assert!(
        created.body.contains("Site créé en brouillon")
            && created.body.contains("mairie.staging.localhost")
    );
    assert!(p.body.contains("Disponibles"), "origin health column");
    // Scheduled modes: an event window, a refused one (end before start), removal.
    let r = ed
        .post(
            "/sites/1/schedules",
            &[
                ("_csrf", &csrf),
                ("mode", "maintenance"),
                ("start", "2027-04-23T18:00"),
                ("end", "2027-04-24T02:00"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/sites/1?ok=scheduled");
    let p = ed.get(r.location()).await;
    assert!(
        p.body.contains("2027-04-23T18:00:00Z") && p.body.contains("Programmation enregistrée")
    );
    let r = ed
        .post(
            "/sites/1/schedules",
            &[
                ("_csrf", &csrf),
                ("mode", "bypass"),
                ("start", "2027-05-02T00:00"),
                ("end", "2027-05-01T00:00"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(
        r.body.contains("<code>site.schedule[1].end</code>"),
        "{}",
        r.body
    );
    let r = ed
        .post("/sites/1/schedules/0/delete", &[("_csrf", &csrf)])
        .await;
    assert_eq!(r.status, 303);
    assert!(
        ed.get("/sites/1")
            .await
            .body
            .contains("Aucune programmation")
    );
    // Origins: a bad address is refused on the form; a list is saved in order.
    let r = ed
        .post(
            "/sites/1/origins",
            &[("_csrf", &csrf), ("origins", "ftp://nope")],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("<code>site.origin[0].url</code>"));
    let r = ed
        .post(
            "/sites/1/origins",
            &[
                ("_csrf", &csrf),
                (
                    "origins",
                    "http://127.0.0.1:9\r\nhttps://secours.demo.test\r\n",
                ),
            ],
        )
        .await;
    assert_eq!(r.location(), "/sites/1?ok=origins");
    let site = h
        .api(reqwest::Method::GET, "/api/v1/sites/1", &admin, Value::Null)
        .await;
    assert_eq!(
        site["draft"]["origin"][1]["url"],
        "https://secours.demo.test"
    );
    // Certificate: a key that does not match is refused; the private key never comes back.
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, key, _) = relais_testkit::write_cert(dir.path(), "demo", &["localhost"]);
    let cert = std::fs::read_to_string(cert).expect("cert");
    let key = std::fs::read_to_string(key).expect("key");
    let r = ed
        .post(
            "/sites/1/certificate",
            &[
                ("_csrf", &csrf),
                ("cert_pem", &cert),
                ("key_pem", "not a key"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("<code>certificate</code>"));
    let r = ed
        .post(
            "/sites/1/certificate",
            &[("_csrf", &csrf), ("cert_pem", &cert), ("key_pem", &key)],
        )
        .await;
    assert_eq!(r.location(), "/sites/1?ok=certificate");
    let p2 = ed.get("/sites/1").await;
    assert!(p2.body.contains("présent") && !p2.body.contains("PRIVATE KEY"));
    // Mode switch: refused without the confirmation, applied with it.
    let r = ed
        .post(
            "/sites/1/mode",
            &[("_csrf", &csrf), ("mode", "maintenance")],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("Cochez la confirmation"));
    let r = ed
        .post(
            "/sites/1/mode",
            &[
                ("_csrf", &csrf),
                ("mode", "maintenance"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/sites/1?ok=mode");
    let p = ed.get(r.location()).await;
    assert!(p.body.contains("Mode appliqué."));
    assert!(p.body.contains("id=\"current-mode\">Maintenance"));
    // Purge: an invalid value is shown on the form; a valid one leads to its receipt.
    let r = ed
        .post(
            "/sites/1/purge",
            &[
                ("_csrf", &csrf),
                ("kind", "prefix"),
                ("values", "sans-barre"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("<code>values[0]</code>"), "{}", r.body);
    let r = ed
        .post(
            "/sites/1/purge",
            &[
                ("_csrf", &csrf),
                ("kind", "url"),
                ("values", "/a\r\n/b\r\n"),
                ("soft", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let receipt = ed.get(r.location()).await;
    assert_eq!(receipt.status, 200);
    assert!(
        receipt.body.contains("url /a, /b (soft)"),
        "{}",
        receipt.body
    );
    assert!(receipt.body.contains("aria-live=\"polite\""));
    assert!(receipt.body.contains("src=\"/static/receipt.js\""));
    // Rules: add a directory rule to the draft, see explain use it, see the invalid one refused.
    let r = ed
        .post(
            "/sites/1/rules",
            &[
                ("_csrf", &csrf),
                ("scope", "dir"),
                ("scope_value", "/actualites/"),
                ("edge_ttl", "10m"),
                ("cache", ""),
            ],
        )
        .await;
    assert_eq!(r.location(), "/sites/1/rules?ok=added");
    let x = ed.get("/sites/1/rules?url=%2Factualites%2Fa.html").await;
    assert!(
        x.body.contains(
            "<th scope=\"row\">Durée en cache</th><td>600s</td><td>règle 0 (répertoire /actualites/)</td>"
        ),
        "{}",
        x.body
    );
    let r = ed
        .post(
            "/sites/1/rules",
            &[
                ("_csrf", &csrf),
                ("scope", "dir"),
                ("scope_value", "/actualites/"),
                ("edge_ttl", "dix minutes"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(
        r.body.contains("<code>site.rule[1].edge_ttl</code>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("durée"), "the message is in French too");
    // Publish the draft with a comment; the diff was shown first.
    let p = ed.get("/sites/1").await;
    assert!(p.body.contains("Publier le brouillon"));
    assert!(
        p.body.contains("+ dir = &#34;/actualites/&#34;"),
        "{}",
        p.body
    );
    let r = ed
        .post(
            "/sites/1/publish",
            &[("_csrf", &csrf), ("comment", "TTL actualités")],
        )
        .await;
    assert_eq!(r.location(), "/sites/1?ok=published");
    let p = ed.get("/sites/1").await;
    assert!(p.body.contains("TTL actualités"));
    assert!(!p.body.contains("Publier le brouillon"));
    // Roll back to version 1.
    let r = ed
        .post("/sites/1/rollback", &[("_csrf", &csrf), ("version", "1")])
        .await;
    assert_eq!(r.location(), "/sites/1?ok=rollback");
    let v = h
        .api(
            reqwest::Method::GET,
            "/api/v1/sites/1/versions",
            &admin,
            Value::Null,
        )
        .await;
    assert_eq!(v["versions"][0]["comment"], "rollback to version 1");
    assert_eq!(v["versions"][0]["author"], "chef@demo.localhost");
    // Each version can be read, with its changes from the one before.
    let ttl_version = v["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|x| x["comment"] == "TTL actualités")
        .expect("published version")["version"]
        .as_i64()
        .expect("n");
    let v2 = ed.get(&format!("/sites/1/versions/{ttl_version}")).await;
    assert_eq!(v2.status, 200);
    assert!(
        v2.body.contains("id=\"version-diff\"")
            && v2.body.contains("+ dir = &#34;/actualites/&#34;"),
        "{}",
        v2.body
    );
    assert!(
        ed.get("/sites/1/versions/1")
            .await
            .body
            .contains("Première version.")
    );
    assert_eq!(ed.get("/sites/1/versions/99").await.status, 404);
    // Delete the rule again (draft).
    let r = ed
        .post(
            "/sites/1/rules",
            &[
                ("_csrf", &csrf),
                ("scope", "page"),
                ("scope_value", "/index.html"),
                ("cache", "off"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let r = ed
        .post("/sites/1/rules/0/delete", &[("_csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/sites/1/rules?ok=deleted");
    assert!(ed.get("/sites/1/rules").await.body.contains("Aucune règle"));
    // The journal shows who did what, with filters and exports.
    let a = ed.get("/orgs/1/audit?action=site").await;
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("site.mode")
            && a.body.contains("site.publish")
            && a.body.contains("chef@demo.localhost")
    );
    assert!(!a.body.contains("<td>purge</td>"), "the filter was ignored");
    assert!(a.body.contains("format=csv"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_admins_manage_people_and_tokens() {
    let h = H::new().await;
    let admin = h.admin_api().await;
    let chef = h.person(&admin, "chef@demo.localhost", "admin").await;
    let viewer = h.person(&admin, "lecteur@demo.localhost", "viewer").await;
    assert_eq!(viewer.get("/orgs/1/people").await.status, 403);
    let p = chef.get("/orgs/1/people").await;
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("lecteur@demo.localhost") && p.body.contains("webmestre@demo.localhost")
    );
    let csrf = p.csrf();
    // A new person needs an initial password; the error names the field.
    let r = chef
        .post(
            "/orgs/1/people",
            &[
                ("_csrf", &csrf),
                ("email", "nouveau@demo.localhost"),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("<code>password</code>"), "{}", r.body);
    let r = chef
        .post(
            "/orgs/1/people",
            &[
                ("_csrf", &csrf),
                ("email", "nouveau@demo.localhost"),
                ("role", "editor"),
                ("password", "un mot de passe solide"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/orgs/1/people?ok=member");
    // Promote the viewer.
    let r = chef
        .post(
            "/orgs/1/people",
            &[
                ("_csrf", &csrf),
                ("email", "lecteur@demo.localhost"),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(
        viewer
            .get("/sites/1")
            .await
            .body
            .contains("action=\"/sites/1/purge\""),
        "the new role applies at once"
    );
    // A purge token: shown once, works on the API, then revoked.
    let r = chef
        .post(
            "/orgs/1/tokens",
            &[
                ("_csrf", &csrf),
                ("name", "CMS"),
                ("scope", "purge"),
                ("days", "30"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let i = r
        .body
        .find("id=\"new-token\" class=\"wrap\">")
        .expect("token shown")
        + "id=\"new-token\" class=\"wrap\">".len();
    let token = r.body[i..].split('<').next().expect("token").to_owned();
    assert!(token.starts_with("rls_"));
    let again = chef.get("/orgs/1/people").await;
    assert!(!again.body.contains(&token), "the secret was shown twice");
    let receipt = h
        .api(
            reqwest::Method::POST,
            "/api/v1/sites/1/purges",
            &token,
            json!({"kind": "all"}),
        )
        .await;
    assert!(receipt["id"].is_i64(), "{receipt}");
    let tid = h
        .api(
            reqwest::Method::GET,
            "/api/v1/orgs/1/tokens",
            &admin,
            Value::Null,
        )
        .await["tokens"][0]["id"]
        .as_i64()
        .expect("id");
    let r = chef
        .post(&format!("/orgs/1/tokens/{tid}/revoke"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/orgs/1/people?ok=revoked");
    let refused = h
        .api(
            reqwest::Method::POST,
            "/api/v1/sites/1/purges",
            &token,
            json!({"kind": "all"}),
        )
        .await;
    assert_eq!(refused["code"], "unauthenticated");
    // Remove a person.
    let uid = h
        .api(
            reqwest::Method::GET,
            "/api/v1/orgs/1/members",
            &admin,
            Value::Null,
        )
        .await["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["email"] == "nouveau@demo.localhost")
        .expect("member")["user_id"]
        .as_i64()
        .expect("id");
    let r = chef
        .post(&format!("/orgs/1/people/{uid}/remove"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/orgs/1/people?ok=removed");
    assert!(
        !chef
            .get("/orgs/1/people")
            .await
            .body
            .contains("nouveau@demo.localhost")
    );
    // Without the CSRF token nothing happens.
    let r = chef
        .post(
            "/orgs/1/people",
            &[
                ("email", "x@demo.localhost"),
                ("role", "admin"),
                ("password", "un mot de passe solide"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keys_and_log_days_pages() {
    let h = H::new().await;
    let admin = h.admin_api().await;
    let viewer = h.person(&admin, "lecteur@demo.localhost", "viewer").await;
    // The site page links to its log days; none yet.
    assert!(
        viewer
            .get("/sites/1")
            .await
            .body
            .contains("href=\"/sites/1/logs\"")
    );
    let logs = viewer.get("/sites/1/logs").await;
    assert_eq!(logs.status, 200);
    assert!(logs.body.contains("Aucun jour disponible"));
    assert_eq!(viewer.get("/sites/999/logs").await.status, 404);
    // SSH keys: a bad key is refused on the form; a good one is listed with its fingerprint.
    let p = viewer.get("/account/keys").await;
    assert_eq!(p.status, 200);
    let csrf = p.csrf();
    let r = viewer
        .post("/account/keys", &[("_csrf", &csrf), ("key", "pas une clé")])
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("aria-invalid=\"true\""));
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILuQvggZv1Rk9IICWohgHQqhvCc7EW6vKmGw58/tCTxF poste-alice";
    let r = viewer
        .post("/account/keys", &[("_csrf", &csrf), ("key", key)])
        .await;
    assert_eq!(r.location(), "/account/keys?ok=key_added");
    let p = viewer.get("/account/keys").await;
    assert!(
        p.body.contains("poste-alice") && p.body.contains("SHA256:"),
        "{}",
        p.body
    );
    let api = h
        .api(
            reqwest::Method::GET,
            "/api/v1/orgs/1/members",
            &admin,
            Value::Null,
        )
        .await;
    assert!(api["members"].is_array());
    let marker = "action=\"/account/keys/";
    let i = p.body.find(marker).expect("delete form") + marker.len();
    let kid: String = p.body[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let r = viewer
        .post(&format!("/account/keys/{kid}/delete"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/account/keys?ok=key_removed");
    assert!(
        viewer
            .get("/account/keys")
            .await
            .body
            .contains("Aucune clé")
    );
    // Without the CSRF token nothing is added.
    let r = viewer.post("/account/keys", &[("key", key)]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_pages_exports_and_weekly_report_settings() {
    use relais_edge::stats::{Agg, Batch, Class, Request, SiteMinute, visitor_hash};
    let h = H::new().await;
    let admin = h.admin_api().await;
    // A minute of traffic on the demo site, as an edge ships it.
    let token = h._ctl.local_edge_token("e1").await.expect("token");
    let edge = h._ctl.edge_by_token(&token).await.expect("edge");
    let minute = h
        .clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
        / 60;
    let mut agg = Agg::default();
    for (class, ip) in [
        (Class::Hit, 1),
        (Class::Hit, 2),
        (Class::Miss, 3),
        (Class::Hit, 1),
    ] {
        agg.record(&Request {
            class,
            status: 200,
            ttfb_ms: 5,
            sent: 1500,
            visitor: visitor_hash([192, 0, 2, ip].into(), None),
        });
    }
    h._ctl
        .ingest_stats(
            &edge,
            Batch {
                seq: 1,
                minutes: vec![SiteMinute {
                    site: "demo".into(),
                    minute,
                    agg,
                }],
            },
        )
        .await
        .expect("ingest");
    let viewer = h.person(&admin, "lecteur@demo.localhost", "viewer").await;
    assert!(
        viewer
            .get("/sites/1")
            .await
            .body
            .contains("href=\"/sites/1/stats\"")
    );
    let p = viewer.get("/sites/1/stats").await;
    assert_eq!(p.status, 200, "{}", p.body);
    let totals = &p.body[p.body.find("id=\"stats-totals\"").expect("totals")..];
    assert!(totals.contains("<dt>Requêtes</dt><dd>4</dd>"), "{totals}");
    assert!(
        totals.contains("<dt>Visiteurs (estimation)</dt><dd>3</dd>"),
        "{totals}"
    );
    assert!(totals.contains("<dd>6,0 ko</dd>"), "{totals}");
    assert!(totals.contains("<dd>75,0 %</dd>"), "{totals}");
    assert!(p.body.contains("<svg class=\"chart\""));
    assert!(
        p.body
            .contains("role=\"img\" aria-label=\"Requêtes dans le temps\"")
    );
    assert!(p.body.contains("/api/v1/sites/1/stats/export?from="));
    // The export link works with the browser's session.
    let i = p.body.find("/api/v1/sites/1/stats/export?").expect("link");
    let link: String = p.body[i..].chars().take_while(|c| *c != '"').collect();
    let csv = viewer.get(&link.replace("&amp;", "&")).await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.contains("Période (UTC),Requêtes,"), "{}", csv.body);
    // A bad range is explained, not a crash.
    let bad = viewer.get("/sites/1/stats?from=2026-02-30").await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("id=\"stats-error\""));
    assert_eq!(viewer.get("/sites/999/stats").await.status, 404);
    // The organisation page: per-site table; the report form only for administrators.
    let org = viewer.get("/orgs/1/stats").await;
    assert_eq!(org.status, 200);
    assert!(org.body.contains("href=\"/sites/1/stats?from="));
    assert!(!org.body.contains("action=\"/orgs/1/report\""));
    let csrf = org.csrf();
    let forged = viewer
        .post(
            "/orgs/1/report",
            &[("_csrf", &csrf), ("recipients", "x@demo.localhost")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let boss = h.person(&admin, "chef@demo.localhost", "admin").await;
    let org = boss.get("/orgs/1/stats").await;
    assert!(org.body.contains("action=\"/orgs/1/report\""));
    let csrf = org.csrf();
    // A wrong address: the form again, with the error next to it and what was typed kept.
    let refused = boss
        .post(
            "/orgs/1/report",
            &[
                ("_csrf", &csrf),
                ("recipients", "dsi@demo.localhost\nnot an address"),
                ("metric", "visitors"),
            ],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("id=\"report-error\">not an address : not an e-mail address"),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains(">dsi@demo.localhost\nnot an address</textarea>")
    );
    assert!(refused.body.contains("value=\"visitors\" checked"));
    assert!(refused.body.contains("aria-invalid=\"true\""));
    let r = boss
        .post(
            "/orgs/1/report",
            &[
                ("_csrf", &csrf),
                ("recipients", "dsi@demo.localhost\ncom@demo.localhost"),
                ("metric", "requests"),
                ("metric", "under_2s"),
                ("language", "en"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/orgs/1/stats?ok=report");
    let o = h
        .api(reqwest::Method::GET, "/api/v1/orgs/1", &admin, Value::Null)
        .await;
    assert_eq!(
        o["report_recipients"],
        json!(["dsi@demo.localhost", "com@demo.localhost"])
    );
    assert_eq!(o["report_metrics"], json!(["requests", "under_2s"]));
    assert_eq!(o["language"], "en");
    let page = boss.get("/orgs/1/stats?ok=report").await;
    assert!(page.body.contains("Rapport hebdomadaire enregistré."));
    assert!(page.body.contains("value=\"under_2s\" checked"));
    assert!(!page.body.contains("value=\"visitors\" checked"));
}
