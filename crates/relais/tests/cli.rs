//! Tests of the built `relais` binary: configuration checks, quick start, reload on file change
//! and SIGHUP, refusal of a bad file, graceful stop. Ports are 0; the binary reports the real
//! ones in its JSON logs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use relais_testkit::{Origin, Reply, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_relais");

struct Proc {
    child: Child,
    logs: mpsc::Receiver<serde_json::Value>,
    stdout: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json"])
            .args(args)
            .env("RELAIS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relais");
        let stdout = child.stdout.take().expect("stdout");
        let (otx, orx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = otx.send(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Proc {
            child,
            logs: rx,
            stdout: orx,
        }
    }

    /// Waits for a line on standard output containing `text`.
    fn wait_stdout(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(l) = self.stdout.recv_timeout(Duration::from_millis(100))
                && l.contains(text)
            {
                return l;
            }
        }
        panic!("no output line containing {text:?}");
    }

    /// Waits for a log line whose message contains `msg`; returns its fields.
    fn wait_log(&self, msg: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(v) = self.logs.recv_timeout(Duration::from_millis(100))
                && v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(msg))
            {
                return v["fields"].clone();
            }
        }
        panic!("no log line containing {msg:?}");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

async fn get(url: &str, host: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .header("host", host)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

fn config(origin: &str, hosts: &str) -> String {
    format!(
        "version = 1\n[edge]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n[[site]]\nname = \"s\"\nhosts = [{hosts}]\n[[site.origin]]\nurl = \"{origin}\"\n"
    )
}

#[test]
fn check_reports_the_failing_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("relais.toml");
    std::fs::write(&path, config("ftp://nowhere", "\"a.example\"")).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("site[0].origin[0].url"), "{err}");
    std::fs::write(&path, config("http://127.0.0.1:1", "\"a.example\"")).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 sites)"));
}

#[test]
fn rules_explain_shows_the_winner_and_what_it_overrides() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("relais.toml");
    let rules = "[[site.rule]]\nid = \"site\"\ndefault = true\nedge_ttl = \"10m\"\n\
                 [[site.rule]]\nid = \"images\"\ngroup = \"images\"\nedge_ttl = \"1d\"\n\
                 [[site.rule]]\nid = \"election\"\ndir = \"/elections/\"\nedge_ttl = \"30s\"\n";
    std::fs::write(
        &path,
        format!("{}{rules}", config("http://127.0.0.1:1", "\"a.example\"")),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["rules", "explain", "--config"])
        .arg(&path)
        .args([
            "--site",
            "s",
            "--url",
            "https://a.example/elections/map.png?x=1",
            "--content-type",
            "image/png",
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("path /elections/map.png"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("edge_ttl"))
        .expect("edge_ttl line");
    assert!(
        line.contains("30s") && line.contains("rule election (directory /elections/)"),
        "{text}"
    );
    assert!(
        text.contains("overrides rule images (group images) = 86400s"),
        "{text}"
    );
    assert!(
        text.contains("overrides rule site (site default) = 600s"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["rules", "explain", "--config"])
        .arg(&path)
        .args(["--site", "nope", "--url", "/"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no site named \"nope\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_serves_every_host_from_one_origin() {
    let origin = Origin::start(|s| {
        Reply::ok(format!("from origin {}", s.path)).header("cache-control", "max-age=60")
    })
    .await;
    let p = Proc::spawn(&["edge", "--listen", "127.0.0.1:0", "--origin", &origin.url()]);
    let addr = p.wait_log("edge listening (http)")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let (status, body) = get(&format!("http://{addr}/x"), "anything.example").await;
    assert_eq!((status, body.as_str()), (200, "from origin /x"));
    let (_, body) = get(&format!("http://{addr}/x"), "other.example").await;
    assert_eq!(body, "from origin /x");
    // The key includes the host: two hosts, two fetches.
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_on_file_change_and_sighup_and_refuses_bad_files() {
    let origin = Origin::start(|_| Reply::ok("ok").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("relais.toml");
    std::fs::write(&path, config(&origin.url(), "\"a.example\"")).expect("write");
    let p = Proc::spawn(&["edge", "--config", path.to_str().expect("utf8")]);
    let addr = p.wait_log("edge listening (http)")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let url = format!("http://{addr}/");
    assert_eq!(get(&url, "a.example").await.0, 200);
    assert_eq!(get(&url, "b.example").await.0, 404);

    // A file change is picked up (the watcher polls every second).
    std::fs::write(&path, config(&origin.url(), "\"a.example\", \"b.example\"")).expect("write");
    let applied = p.wait_log("configuration applied");
    assert!(applied["generation"].as_u64().is_some_and(|g| g >= 2));
    assert_eq!(get(&url, "b.example").await.0, 200);

    // A bad file is refused; the previous configuration keeps serving.
    std::fs::write(&path, config(&origin.url(), "\"not a host!\"")).expect("write");
    let refused = p.wait_log("configuration refused");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("site[0].hosts[0]")),
        "{refused}"
    );
    assert_eq!(get(&url, "b.example").await.0, 200);

    // SIGHUP re-reads the file. The modification time is put back, so only the signal can
    // be what triggers this reload.
    let before = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::fs::write(&path, config(&origin.url(), "\"c.example\"")).expect("write");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(before))
        .expect("set mtime");
    p.signal("-HUP");
    p.wait_log("configuration applied");
    assert_eq!(get(&url, "c.example").await.0, 200);
    assert_eq!(get(&url, "a.example").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let origin = Origin::start(|_| {
        Reply::ok("slow but whole")
            .header("cache-control", "no-store")
            .delay(Duration::from_millis(700))
    })
    .await;
    let mut p = Proc::spawn(&["edge", "--listen", "127.0.0.1:0", "--origin", &origin.url()]);
    let addr = p.wait_log("edge listening (http)")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let url = format!("http://{addr}/slow");
    let inflight = tokio::spawn(async move { get(&url, "x.example").await });
    assert!(eventually(Duration::from_secs(5), || origin.hits() == 1).await);
    p.signal("-TERM");
    let (status, body) = inflight.await.expect("join");
    assert_eq!((status, body.as_str()), (200, "slow but whole"));
    let code = tokio::task::spawn_blocking(move || p.child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(code.success(), "{code:?}");
}

/// CDN-21: a new binary starts beside the old one on the same port (SO_REUSEPORT), the old one
/// is told to stop and drains, and the service never stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_upgrade_with_reuse_port() {
    let origin = Origin::start(|_| Reply::ok("up").header("cache-control", "max-age=60")).await;
    let cache = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = |reuse: bool| {
        let mut a = vec![
            "edge",
            "--listen",
            &listen,
            "--origin",
            "",
            "--cache-dir",
            cache.path().to_str().expect("utf8"),
        ];
        if reuse {
            a.push("--reuse-port");
        }
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let with_origin = |mut a: Vec<String>| {
        a[4] = origin.url();
        a
    };
    let old_args = with_origin(args(true));
    let old = Proc::spawn(&old_args.iter().map(String::as_str).collect::<Vec<_>>());
    old.wait_log("edge listening (http)");
    let url = format!("http://{listen}/page");
    assert_eq!(get(&url, "site.example").await, (200, "up".to_owned()));

    // Without SO_REUSEPORT a second binary cannot take the port, and says why.
    let plain = with_origin(args(false));
    let out = Command::new(BIN).args(&plain).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {listen}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With it, the new binary starts beside the old one and shares the disk cache.
    let new_args = with_origin(args(true));
    let new = Proc::spawn(&new_args.iter().map(String::as_str).collect::<Vec<_>>());
    new.wait_log("edge listening (http)");
    for _ in 0..10 {
        assert_eq!(get(&url, "site.example").await.0, 200);
    }
    let mut old = old;
    old.signal("-TERM");
    let code = tokio::task::spawn_blocking(move || old.child.wait().expect("wait"))
        .await
        .expect("join");
    assert!(code.success());
    for _ in 0..20 {
        assert_eq!(get(&url, "site.example").await, (200, "up".to_owned()));
    }
    drop(new);
}

/// The README's first command: control plane, demo organisation and site, edge following it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_the_platform_with_a_demo_site() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("path");
    let any = "127.0.0.1:0";
    let p = Proc::spawn(&[
        "serve",
        "--data",
        data_s,
        "--listen",
        any,
        "--admin",
        any,
        "--control-listen",
        any,
        "--demo-origin",
        any,
        "--sftp-listen",
        any,
    ]);
    let demo = p.wait_stdout("demo webmaster");
    let password = demo.rsplit(' ').next().expect("password").to_owned();
    let control = p.wait_log("control plane listening")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let edge = p.wait_log("edge listening (http)")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let url = format!("http://{edge}/");
    let mut first = (0, String::new());
    for _ in 0..500 {
        first = get(&url, "localhost").await;
        if first.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.0, 200, "{}", first.1);
    assert!(first.1.contains("Site de démonstration"));
    let c = client();
    let cs = |r: &reqwest::Response| {
        r.headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let r = c
        .get(&url)
        .header("host", "localhost")
        .send()
        .await
        .expect("get");
    assert!(cs(&r).contains("; hit"), "{}", cs(&r));
    // The demo webmaster signs in and purges; the receipt says the edge applied it.
    let login = c
        .post(format!("http://{control}/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"email": "webmestre@demo.localhost", "password": password})
                .to_string(),
        )
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200);
    let login: serde_json::Value =
        serde_json::from_str(&login.text().await.expect("body")).expect("json");
    let token = login["token"].as_str().expect("token").to_owned();
    let receipt = c
        .post(format!(
            "http://{control}/api/v1/sites/1/purges?wait_ms=5000"
        ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"kind":"all"}"#)
        .send()
        .await
        .expect("purge")
        .text()
        .await
        .expect("body");
    let receipt: serde_json::Value = serde_json::from_str(&receipt).expect("json");
    assert_eq!(receipt["complete"], true, "{receipt}");
    let r = c
        .get(&url)
        .header("host", "localhost")
        .send()
        .await
        .expect("get");
    assert!(cs(&r).contains("fwd=miss"), "{}", cs(&r));
    // Stop, then check the journal from the command line.
    p.signal("-TERM");
    drop(p);
    let out = Command::new(BIN)
        .args(["audit", "verify", "--database-url"])
        .arg(format!("sqlite://{}", data.join("control.db").display()))
        .output()
        .expect("verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("chain intact"), "{text}");
}

/// `relais control` and `relais edge --control` as separate processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_process_follows_a_control_plane_process() {
    use relais_control::auth::{base32_decode, totp_code};
    let dir = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = dir.path().join("logstore");
    let control = Proc::spawn(&[
        "control",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--sftp-listen",
        "127.0.0.1:0",
        "--log-store",
        store.to_str().expect("path"),
    ]);
    let line = control.wait_stdout("platform administrator");
    let words: Vec<&str> = line.split_whitespace().collect();
    let email = words[words
        .iter()
        .position(|w| *w == "administrator")
        .expect("word")
        + 1];
    let password = words.last().expect("password").to_string();
    let base = format!(
        "http://{}",
        control.wait_log("control plane listening")["addr"]
            .as_str()
            .expect("addr")
    );
    let c = client();
    let call = |method: reqwest::Method, path: &str, token: &str, body: serde_json::Value| {
        let mut r = c
            .request(method, format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if !token.is_empty() {
            r = r.bearer_auth(token);
        }
        async move {
            let resp = r.send().await.expect("call");
            let text = resp.text().await.expect("body");
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::Null)
        }
    };
    let login = |totp: Option<String>| {
        call(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            "",
            serde_json::json!({"email": email, "password": password, "totp": totp}),
        )
    };
    let t = login(None).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let secret = call(
        reqwest::Method::POST,
        "/api/v1/auth/totp/setup",
        &t,
        serde_json::json!({}),
    )
    .await["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let key = base32_decode(&secret).expect("b32");
    let step = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        / 30;
    let r = call(
        reqwest::Method::POST,
        "/api/v1/auth/totp/confirm",
        &t,
        serde_json::json!({"code": totp_code(&key, step - 1)}),
    )
    .await;
    assert_eq!(r["totp_enabled"], true, "{r}");
    let admin = login(Some(totp_code(&key, step))).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let origin =
        Origin::start(|_| Reply::ok("bonjour").header("cache-control", "max-age=60")).await;
    let org = call(
        reqwest::Method::POST,
        "/api/v1/orgs",
        &admin,
        serde_json::json!({"slug": "mairie", "name": "Mairie"}),
    )
    .await;
    let site = call(
        reqwest::Method::POST,
        &format!("/api/v1/orgs/{}/sites", org["id"]),
        &admin,
        serde_json::json!({"name": "mairie", "hosts": ["mairie.test"], "origin": [{"url": origin.url()}]}),
    )
    .await;
    let sid = site["id"].as_i64().expect("site");
    call(
        reqwest::Method::POST,
        &format!("/api/v1/sites/{sid}/publish"),
        &admin,
        serde_json::json!({}),
    )
    .await;
    let edge = call(
        reqwest::Method::POST,
        "/api/v1/edges",
        &admin,
        serde_json::json!({"name": "paris-1"}),
    )
    .await;
    let token = edge["token"].as_str().expect("edge token").to_owned();
    let state = dir.path().join("edge-state");
    let e = Proc::spawn(&[
        "edge",
        "--control",
        &base,
        "--control-token",
        &token,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().expect("path"),
    ]);
    let addr = e.wait_log("edge listening (http)")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let url = format!("http://{addr}/");
    let mut got = (0, String::new());
    for _ in 0..500 {
        got = get(&url, "mairie.test").await;
        if got.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, (200, "bonjour".to_owned()));
    let receipt = call(
        reqwest::Method::POST,
        &format!("/api/v1/sites/{sid}/purges?wait_ms=5000"),
        &admin,
        serde_json::json!({"kind": "all"}),
    )
    .await;
    assert_eq!(receipt["complete"], true, "{receipt}");
    assert_eq!(receipt["edges"][0]["edge"], "paris-1");
    // The control plane stops; the edge keeps serving its last good configuration.
    control.signal("-TERM");
    drop(control);
    assert_eq!(get(&url, "mairie.test").await, (200, "bonjour".to_owned()));
    assert!(state.join("snapshot.json").exists());
}
