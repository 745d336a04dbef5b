//! The flows a person clicks through, in a real headless Chromium (Debian `chromium` +
//! `chromedriver`, driven over WebDriver): sign in with TOTP, create a site, edit a rule and see
//! `explain` change, publish and roll back, purge and watch the receipt complete, switch the
//! site to maintenance — against the real control plane, extranet and an edge following them.
//!
//! `RELAIS_SCREENSHOTS=dir` also saves screenshots of the main pages (scripts/screenshots).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use relais_control::auth::{base32_decode, totp_code, totp_step};
use relais_control::{Control, ControlOptions};
use relais_edge::clock::{Clock, ManualClock, SystemClock};
use relais_edge::config::{FileCache, FileConfig, FileEdge};
use relais_edge::{Edge, EdgeOptions, follow};
use relais_testkit::{Origin, Reply};

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Option<Driver> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("chromedriver").exists()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("RELAIS_REQUIRE_BROWSER").is_err(),
            "chromedriver is not installed (Debian: chromium-driver)"
        );
        eprintln!("chromedriver not installed: browser test skipped here");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for _ in 0..500 {
        if http
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(driver);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1100", "--lang=fr-FR"
        ], "prefs": {"intl.accept_languages": "fr-FR,fr"}}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("browser session")
}

async fn fill(c: &Client, css: &str, value: &str) {
    // Waits for the element: the previous click may still be loading the page.
    let e = c.wait().for_element(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .for_element(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

async fn text(c: &Client, css: &str) -> String {
    c.wait()
        .for_element(Locator::Css(css))
        .await
        .expect(css)
        .text()
        .await
        .expect("text")
}

async fn wait_text(c: &Client, css: &str, want: &str) -> String {
    for _ in 0..300 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(want)
        {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{css} never contained {want:?}: {:?}", text(c, css).await);
}

async fn shot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("RELAIS_SCREENSHOTS") {
        let png = c.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(format!("{dir}/{name}.png"), png).expect("write");
    }
}

async fn edge_status(addr: SocketAddr, host: &str) -> u16 {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{addr}/"))
        .header("host", host)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn until_status(addr: SocketAddr, host: &str, want: u16) {
    for _ in 0..500 {
        if edge_status(addr, host).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the edge never answered {want} for {host}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_the_main_flows_in_a_real_browser() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(driver) = chromedriver().await else {
        return;
    };
    // The platform: control plane + extranet, an origin, an edge following.
    let dir = tempfile::tempdir().expect("tmp");
    let clock = ManualClock::new();
    let ctl = Control::open(
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        Arc::new(clock.clone()),
        ControlOptions::default(),
    )
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
    let origin = Origin::start(|s| {
        Reply::ok(format!("<p>page {}</p>", s.path)).header("cache-control", "max-age=300")
    })
    .await;
    let edge_base = FileConfig {
        version: Some(relais_edge::config::CONFIG_VERSION),
        edge: FileEdge {
            listen: vec!["127.0.0.1:0".into()],
            ..Default::default()
        },
        cache: FileCache::default(),
        sites: vec![],
    };
    let edge = Edge::new(
        follow::build_config(&edge_base, &Default::default()).expect("config"),
        Arc::new(SystemClock),
        EdgeOptions {
            active_health_checks: false,
        },
    )
    .expect("edge");
    let edge_srv = relais_edge::server::start(edge.clone(), None)
        .await
        .expect("edge");
    let edge_addr = edge_srv.http[0];
    let _follow = follow::spawn(
        edge.clone(),
        follow::FollowOptions {
            control: base.clone(),
            token: ctl.local_edge_token("paris-1").await.expect("token"),
            state_dir: dir.path().join("edge"),
            base: edge_base,
            lease: Duration::from_secs(3),
            listen: vec![edge_addr.to_string()],
            ship_every: Duration::from_millis(100),
        },
    )
    .expect("follow");
    // The statistics below are a minute this test ships itself: the edge's own minutes (on the
    // real clock) would join the page's totals whenever a real minute ended during the run.
    edge.set_stats(false);

    let c = browser(&driver).await;
    // Sign in: the administrator is sent to enrol a second factor first.
    c.goto(&format!("{base}/login")).await.expect("goto");
    // Whatever the browser's language, the switch sets French.
    if text(&c, "h1").await != "Connexion" {
        click(&c, "a[lang=fr]").await;
    }
    wait_text(&c, "h1", "Connexion").await;
    shot(&c, "login").await;
    // The first Tab reaches the skip link.
    c.find(Locator::Css("body"))
        .await
        .expect("body")
        .send_keys("\u{E004}")
        .await
        .expect("tab");
    let focused = c
        .active_element()
        .await
        .expect("active")
        .attr("class")
        .await
        .expect("attr");
    assert_eq!(focused.as_deref(), Some("skip"));
    fill(&c, "#email", &first.admin_email).await;
    fill(&c, "#password", &first.admin_password).await;
    click(&c, "button[type=submit]").await;
    let secret = text(&c, "#totp-secret").await;
    let key = base32_decode(&secret).expect("secret");
    clock.advance(Duration::from_secs(30));
    fill(&c, "#code", &totp_code(&key, totp_step(clock.now()))).await;
    click(&c, "main button[type=submit]").await;
    wait_text(&c, ".flash", "Double authentification activée").await;
    // Sign out, and in again with the one-time code.
    click(&c, "header button[type=submit]").await;
    fill(&c, "#email", &first.admin_email).await;
    fill(&c, "#password", &first.admin_password).await;
    clock.advance(Duration::from_secs(30));
    fill(&c, "#totp", &totp_code(&key, totp_step(clock.now()))).await;
    click(&c, "main button[type=submit]").await;
    wait_text(&c, "h1", "Tableau de bord").await;

    // Create a site; it starts as a draft.
    fill(&c, "#site-name", "ville").await;
    fill(&c, "#site-host", "www.ville.test").await;
    fill(&c, "#site-origin", &origin.url()).await;
    click(&c, "#create-title ~ form button[type=submit]").await;
    wait_text(&c, ".flash", "Site créé en brouillon").await;
    let site_url = c.current_url().await.expect("url");
    let site_url = site_url.as_str().split('?').next().expect("url").to_owned();
    // Publish version 1.
    fill(&c, "#comment", "mise en ligne").await;
    click(&c, "#publish-title ~ form button[type=submit]").await;
    wait_text(&c, ".flash", "Brouillon publié").await;
    until_status(edge_addr, "www.ville.test", 200).await;
    shot(&c, "site").await;

    // Rules: explain before and after adding a directory rule.
    c.goto(&format!("{site_url}/rules")).await.expect("goto");
    fill(&c, "#url", "/actualites/a.html").await;
    click(&c, "#explain-title ~ form button[type=submit]").await;
    let before = text(&c, "#explain").await;
    assert!(!before.contains("600s"), "{before}");
    fill(&c, "#scope_value", "/actualites/").await;
    fill(&c, "#edge_ttl", "10m").await;
    click(&c, "#rules-list ~ form button[type=submit]").await;
    wait_text(&c, ".flash", "Règle ajoutée").await;
    fill(&c, "#url", "/actualites/a.html").await;
    click(&c, "#explain-title ~ form button[type=submit]").await;
    let after = wait_text(&c, "#explain", "600s").await;
    assert!(after.contains("/actualites/"), "{after}");
    shot(&c, "rules").await;

    // Publish version 2, then roll back to version 1.
    c.goto(&site_url).await.expect("goto");
    assert!(text(&c, "pre.diff").await.contains("/actualites/"));
    click(&c, "#publish-title ~ form button[type=submit]").await;
    wait_text(&c, ".flash", "Brouillon publié").await;
    click(&c, "form[action$='/rollback'] button").await;
    wait_text(&c, ".flash", "Version rétablie").await;
    let versions = text(&c, "#versions-title ~ table").await;
    assert!(versions.contains("rollback to version 1"), "{versions}");

    // Purge the whole site and watch the receipt fill in.
    click(&c, "#kind-all").await;
    click(&c, "#purge-title ~ form button[type=submit]").await;
    wait_text(
        &c,
        "#receipt-status",
        "Purge appliquée sur tous les serveurs. (1/1)",
    )
    .await;
    assert!(text(&c, "#receipt-edges").await.contains("paris-1"));
    shot(&c, "receipt").await;

    // Statistics: a minute of traffic as the edge ships it, then the site's page, a finer
    // step, and the organisation's page with its weekly report form.
    {
        use relais_edge::stats::{Agg, Batch, Class, Request, SiteMinute, visitor_hash};
        let edge_row = ctl
            .edge_by_token(&ctl.local_edge_token("paris-1").await.expect("token"))
            .await
            .expect("edge");
        let mut agg = Agg::default();
        for (class, ip) in [(Class::Hit, 1), (Class::Hit, 2), (Class::Miss, 3)] {
            agg.record(&Request {
                class,
                status: 200,
                ttfb_ms: 4,
                sent: 2048,
                visitor: visitor_hash([192, 0, 2, ip].into(), None),
            });
        }
        let minute = clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs() as i64
            / 60;
        ctl.ingest_stats(
            &edge_row,
            Batch {
                seq: 1_000_000,
                minutes: vec![SiteMinute {
                    site: "ville".into(),
                    minute,
                    agg,
                }],
            },
        )
        .await
        .expect("ingest");
    }
    c.goto(&site_url).await.expect("goto");
    click(&c, "main a[href$='/stats']").await;
    let totals = wait_text(&c, "#stats-totals", "Requêtes").await;
    assert!(totals.contains("66,7 %"), "{totals}");
    let chart = c.find(Locator::Css("svg.chart")).await.expect("chart");
    assert!(chart.is_displayed().await.expect("displayed"));
    c.find(Locator::Css("#step"))
        .await
        .expect("step")
        .select_by_value("minute")
        .await
        .expect("select");
    // Minutes over the default week are refused, with the reason on the page.
    click(&c, "form.range button[type=submit]").await;
    wait_text(&c, "#stats-error", "2 jours au plus").await;
    // Today only (a date field is typed differently in each locale: set it as a script would).
    c.execute(
        "document.getElementById('from').value = document.getElementById('to').value",
        vec![],
    )
    .await
    .expect("script");
    click(&c, "form.range button[type=submit]").await;
    let fine = wait_text(&c, "#stats-totals", "66,7 %").await;
    assert!(fine.contains("Requêtes\n3"), "{fine}");
    let url = c.current_url().await.expect("url");
    assert!(url.as_str().contains("step=minute"), "{url}");
    shot(&c, "stats").await;
    click(&c, "header a[href$='/stats']").await;
    wait_text(&c, "#stats-sites", "ville").await;
    // A wrong address is refused on the form, what was typed is kept; then saved.
    fill(&c, "#recipients", "dsi@ville.test\npas-une-adresse").await;
    let checked = |c: Client| async move {
        c.find(Locator::Css("input[name=metric][value=under_2s]"))
            .await
            .expect("checkbox")
            .prop("checked")
            .await
            .expect("checked")
    };
    let before = checked(c.clone()).await;
    click(&c, "input[name=metric][value=under_2s]").await;
    click(&c, "form[action$='/report'] button[type=submit]").await;
    let refused = wait_text(&c, "#report-error", "pas-une-adresse").await;
    assert!(refused.contains("adresse e-mail invalide"), "{refused}");
    let kept = c
        .find(Locator::Css("#recipients"))
        .await
        .expect("recipients")
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default();
    assert_eq!(kept, "dsi@ville.test\npas-une-adresse");
    // The box the person ticked (or unticked) stays as they left it.
    let after = checked(c.clone()).await;
    assert_ne!(after, before);
    assert!(after.is_some());
    fill(&c, "#recipients", "dsi@ville.test").await;
    click(&c, "form[action$='/report'] button[type=submit]").await;
    wait_text(&c, ".flash", "Rapport hebdomadaire enregistré").await;

    // Switch to maintenance: the confirmation is required; then every visitor gets 503.
    c.goto(&site_url).await.expect("goto");
    click(&c, "#mode-maintenance").await;
    click(&c, "#mode-confirm").await;
    click(&c, "#mode-title ~ form button[type=submit]").await;
    wait_text(&c, ".flash", "Mode appliqué").await;
    until_status(edge_addr, "www.ville.test", 503).await;
    c.goto(&format!("{base}/")).await.expect("goto");
    shot(&c, "dashboard").await;
    c.goto(&format!("{base}/orgs/1/audit")).await.expect("goto");
    assert!(text(&c, "main table").await.contains("site.mode"));
    shot(&c, "audit").await;
    c.close().await.expect("close");
    edge_srv.shutdown().await;
    running.shutdown().await;
}
