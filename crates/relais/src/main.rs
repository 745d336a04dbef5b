//! The `relais` binary: parses the command line, loads and validates configuration before
//! binding any port, and wires the services together. No logic of its own lives here.

mod demo;

/// mimalloc rather than glibc's allocator: a cache hit allocates about fifteen small blocks, and
/// glibc spent a fifth of the edge's user-space instructions on them (ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use relais_edge::admin::ReloadHook;
use relais_edge::clock::SystemClock;
use relais_edge::config::Config;
use relais_edge::{Edge, EdgeOptions};

#[derive(Parser)]
#[command(
    name = "relais",
    version,
    about = "Relais — caching edge and platform for public-sector websites"
)]
struct Cli {
    /// Log format: "text" or "json".
    #[arg(long, global = true, default_value = "text", env = "RELAIS_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the platform on embedded defaults with a demo site (http://localhost:8080/).
    Serve {
        /// Where the database, the cache and the edge's state live.
        #[arg(long, default_value = "./relais-data", env = "RELAIS_DATA")]
        data: PathBuf,
        /// The edge (the demo site is at http://localhost:8080/).
        #[arg(long, default_value = "127.0.0.1:8080", env = "RELAIS_LISTEN")]
        listen: SocketAddr,
        /// The edge's admin listener (metrics, status).
        #[arg(long, default_value = "127.0.0.1:9090", env = "RELAIS_ADMIN")]
        admin: SocketAddr,
        /// The control plane (API at /api/v1, OpenAPI at /api/openapi.json).
        #[arg(long, default_value = "127.0.0.1:8090", env = "RELAIS_CONTROL_LISTEN")]
        control_listen: SocketAddr,
        /// The demo origin.
        #[arg(long, default_value = "127.0.0.1:8081")]
        demo_origin: SocketAddr,
        /// Database URL (default: SQLite in the data directory; or postgres://…).
        #[arg(long, env = "RELAIS_DATABASE_URL")]
        database_url: Option<String>,
        #[command(flatten)]
        mail: MailArgs,
        /// SFTP access to the access logs (customers sign in with a password or an SSH key).
        #[arg(long, default_value = "127.0.0.1:2222", env = "RELAIS_SFTP_LISTEN")]
        sftp_listen: SocketAddr,
    },
    /// Run the control plane alone (edges follow it with `relais edge --control URL`).
    Control {
        #[arg(long, default_value = "127.0.0.1:8090", env = "RELAIS_CONTROL_LISTEN")]
        listen: SocketAddr,
        /// sqlite://path/to/control.db or postgres://user:pass@host/db
        #[arg(
            long,
            default_value = "sqlite://relais-data/control.db",
            env = "RELAIS_DATABASE_URL"
        )]
        database_url: String,
        /// Drafts are served on `<site>.<staging-domain>`.
        #[arg(long, default_value = "staging.localhost")]
        staging_domain: String,
        /// Where the edges' access logs are kept (one merged file per site per day).
        #[arg(long, default_value = "relais-data/logstore")]
        log_store: PathBuf,
        #[command(flatten)]
        mail: MailArgs,
        /// SFTP access to the access logs (customers sign in with a password or an SSH key).
        #[arg(long, default_value = "127.0.0.1:2222", env = "RELAIS_SFTP_LISTEN")]
        sftp_listen: SocketAddr,
        /// Days per-minute statistics are kept.
        #[arg(long, default_value_t = 7)]
        stats_minutes_days: i64,
        /// Days hourly statistics are kept (daily ones are kept without limit).
        #[arg(long, default_value_t = 400)]
        stats_hours_days: i64,
    },
    /// The audit journal.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the caching edge, from a configuration file or in quick-start form.
    Edge {
        /// Configuration file (reloaded on change and on SIGHUP).
        #[arg(long, short, conflicts_with_all = ["origin"])]
        config: Option<PathBuf>,
        /// Quick start or follower: address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: Vec<SocketAddr>,
        /// Quick start: the origin serving every host, e.g. http://127.0.0.1:9000.
        #[arg(long, required_unless_present_any = ["config", "control"], conflicts_with = "control")]
        origin: Option<String>,
        /// Follow a control plane (e.g. http://127.0.0.1:8090): sites, changes and purges
        /// come from it.
        #[arg(long)]
        control: Option<String>,
        /// This edge's token (from `POST /api/v1/edges`).
        #[arg(long, env = "RELAIS_CONTROL_TOKEN", requires = "control")]
        control_token: Option<String>,
        /// Follower: where the last good snapshot and purge progress are kept.
        #[arg(long, default_value = "./relais-edge-state")]
        state_dir: PathBuf,
        /// Follower: how long the edge vouches for its cache without news from the control
        /// plane (after that, cached objects are revalidated before use).
        #[arg(long, default_value = "3s", value_parser = parse_duration_arg)]
        lease: Duration,
        /// Follower: directory for access logs (one file per site per day, delivered to the
        /// control plane's log store when the day closes).
        #[arg(long)]
        access_log: Option<PathBuf>,
        /// Quick start: admin listener (metrics, purge).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Quick start: directory for the persistent disk cache.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Quick start: bind with SO_REUSEPORT (zero-downtime upgrades: start the new binary,
        /// then SIGTERM the old one).
        #[arg(long)]
        reuse_port: bool,
    },
    /// Validate a configuration file and exit (non-zero with a precise error if invalid).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Cache rules: `relais rules explain` shows, per setting, which rule applies and why.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// A small origin with demo pages and test objects (`/bytes/N`), for trying and benchmarking.
    DemoOrigin {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
}

/// Outgoing mail (logs-ready messages).
#[derive(clap::Args)]
struct MailArgs {
    /// The operator's SMTP relay: smtp://host:port or smtp+starttls://host:port.
    #[arg(long, env = "RELAIS_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender address of messages.
    #[arg(
        long,
        default_value = "Relais <relais@localhost>",
        env = "RELAIS_MAIL_FROM"
    )]
    mail_from: String,
    /// The extranet's public address, for links in messages.
    #[arg(long, env = "RELAIS_PUBLIC_URL")]
    public_url: Option<String>,
}

impl MailArgs {
    fn smtp(&self) -> Result<Option<relais_control::mail::SmtpConfig>> {
        self.smtp_url
            .as_deref()
            .map(|u| relais_control::mail::SmtpConfig::parse(u, &self.mail_from))
            .transpose()
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the journal's hash chain; exits non-zero if an entry was altered or removed.
    Verify {
        #[arg(
            long,
            default_value = "sqlite://relais-data/control.db",
            env = "RELAIS_DATABASE_URL"
        )]
        database_url: String,
    },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    relais_edge::config::parse_duration(s)
}

#[derive(Subcommand)]
enum RulesCommand {
    /// For a URL of a site (and optionally the response's content type), show each setting, the
    /// rule that won and the rules it overrode.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// Site name, as in the configuration.
        #[arg(long)]
        site: String,
        /// A path (`/news/a.html`) or a full URL.
        #[arg(long)]
        url: String,
        /// The response's content type, e.g. `image/png` (content-type rules apply only then).
        #[arg(long)]
        content_type: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.command))
}

fn init_logging(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("RELAIS_LOG").unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Check { config } => {
            let c = Config::load(&config)?;
            println!("{}: valid ({} sites)", config.display(), c.sites.len());
            Ok(())
        }
        Command::Rules {
            command:
                RulesCommand::Explain {
                    config,
                    site,
                    url,
                    content_type,
                },
        } => {
            let c = Config::load(&config)?;
            let Some(s) = c.site_by_name(&site) else {
                bail!("no site named {site:?} in {}", config.display())
            };
            let path = match url.parse::<http::Uri>() {
                Ok(u) if u.host().is_some() => u.path().to_owned(),
                _ => url.split('?').next().unwrap_or("/").to_owned(),
            };
            println!(
                "site {}, path {path}, content type {}",
                s.name,
                content_type
                    .as_deref()
                    .unwrap_or("(not given: request-time view)")
            );
            print!(
                "{}",
                relais_rules::render_explain(&s.rules.explain(&path, content_type.as_deref()))
            );
            Ok(())
        }
        Command::DemoOrigin { listen } => {
            let addr = demo::start_origin(listen).await?;
            tracing::info!(%addr, "demo origin listening");
            shutdown_signal().await;
            Ok(())
        }
        Command::Edge {
            config: Some(path), ..
        } => {
            let cfg = Config::load(&path).with_context(|| "refusing to start")?;
            run_edge(cfg, Some(path)).await
        }
        Command::Edge {
            config: None,
            listen,
            control: Some(control),
            control_token,
            state_dir,
            lease,
            admin,
            cache_dir,
            reuse_port,
            access_log,
            ..
        } => {
            let Some(token) = control_token else {
                bail!("--control-token (or RELAIS_CONTROL_TOKEN) is required with --control")
            };
            let base = follower_base(&listen, admin, cache_dir, reuse_port, access_log);
            let opts = relais_edge::follow::FollowOptions {
                control,
                token,
                state_dir,
                base,
                lease,
                listen: listen.iter().map(|a| a.to_string()).collect(),
                ship_every: Duration::from_secs(30),
            };
            run_follower(opts).await
        }
        Command::Control {
            listen,
            database_url,
            staging_domain,
            log_store,
            mail,
            sftp_listen,
            stats_minutes_days,
            stats_hours_days,
        } => {
            prepare_sqlite_dir(&database_url)?;
            let ctl = relais_control::Control::open(
                &database_url,
                Arc::new(SystemClock),
                relais_control::ControlOptions {
                    staging_domain,
                    log_store: Some(log_store),
                    smtp: mail.smtp()?,
                    public_url: mail.public_url.clone(),
                    stats_minutes_days,
                    stats_hours_days,
                },
            )
            .await?;
            if let Some(first) = relais_control::bootstrap::bootstrap(&ctl, None)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?
            {
                print_first_run(&first);
            }
            let _jobs = ctl.spawn_jobs();
            let (sftp_addr, _sftp) = relais_control::sftp::serve(ctl.clone(), sftp_listen)
                .await
                .with_context(|| format!("cannot start SFTP on {sftp_listen}"))?;
            tracing::info!(addr = %sftp_addr, "SFTP listening (access logs, read-only)");
            let running = relais_control::serve_with(
                ctl.clone(),
                listen,
                relais_extranet::router(ctl),
                relais_extranet::not_found,
            )
            .await?;
            tracing::info!(addr = %running.addr, "control plane listening");
            shutdown_signal().await;
            running.shutdown().await;
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { database_url },
        } => {
            let db = relais_control::Db::connect(&database_url).await?;
            let v = relais_control::audit::verify(&db).await?;
            println!("{}", v.message);
            if !v.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Edge {
            config: None,
            listen,
            origin,
            admin,
            cache_dir,
            reuse_port,
            ..
        } => {
            let Some(origin) = origin else {
                bail!("--origin or --config is required")
            };
            let mut cfg = Config::quick_start(listen, &origin, admin)?;
            cfg.cache.disk_path = cache_dir;
            cfg.reuse_port = reuse_port;
            run_edge(cfg, None).await
        }
        Command::Serve {
            data,
            listen,
            admin,
            control_listen,
            demo_origin,
            database_url,
            mail,
            sftp_listen,
        } => {
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create {}", data.display()))?;
            let origin = demo::start_origin(demo_origin)
                .await
                .with_context(|| format!("cannot start the demo origin on {demo_origin}"))?;
            let url = database_url
                .unwrap_or_else(|| format!("sqlite://{}", data.join("control.db").display()));
            let ctl = relais_control::Control::open(
                &url,
                Arc::new(SystemClock),
                relais_control::ControlOptions {
                    log_store: Some(data.join("logstore")),
                    smtp: mail.smtp()?,
                    public_url: Some(
                        mail.public_url
                            .clone()
                            .unwrap_or_else(|| format!("http://{control_listen}")),
                    ),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot open the database {url}"))?;
            let first =
                relais_control::bootstrap::bootstrap(&ctl, Some(&format!("http://{origin}")))
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            let token = ctl.local_edge_token("local").await?;
            let _jobs = ctl.spawn_jobs();
            // The demo platform starts even when the SFTP port is taken; it says so.
            let _sftp = match relais_control::sftp::serve(ctl.clone(), sftp_listen).await {
                Ok((addr, task)) => {
                    tracing::info!(%addr, "SFTP listening (access logs, read-only)");
                    Some(task)
                }
                Err(e) => {
                    tracing::warn!(addr = %sftp_listen, error = %e, "SFTP not started (use --sftp-listen)");
                    None
                }
            };
            let running = relais_control::serve_with(
                ctl.clone(),
                control_listen,
                relais_extranet::router(ctl),
                relais_extranet::not_found,
            )
            .await?;
            tracing::info!(addr = %running.addr, "control plane listening");
            let opts = relais_edge::follow::FollowOptions {
                control: format!("http://{}", running.addr),
                token,
                state_dir: data.join("edge"),
                base: follower_base(
                    &[listen],
                    Some(admin),
                    Some(data.join("cache")),
                    false,
                    Some(data.join("access-logs")),
                ),
                lease: Duration::from_secs(3),
                listen: vec![listen.to_string()],
                ship_every: Duration::from_secs(30),
            };
            if let Some(first) = &first {
                print_first_run(first);
            }
            println!(
                "Relais is serving the demo site at http://localhost:{}/\n  extranet: http://{}/ (API: /api/v1, OpenAPI: /api/openapi.json)\n  edge admin: http://{admin}/metrics",
                listen.port(),
                running.addr
            );
            let r = run_follower(opts).await;
            running.shutdown().await;
            r
        }
    }
}

fn follower_base(
    listen: &[SocketAddr],
    admin: Option<SocketAddr>,
    cache_dir: Option<PathBuf>,
    reuse_port: bool,
    access_log: Option<PathBuf>,
) -> relais_edge::config::FileConfig {
    use relais_edge::config::{ByteSize, FileCache, FileConfig, FileEdge};
    FileConfig {
        version: Some(relais_edge::config::CONFIG_VERSION),
        edge: FileEdge {
            listen: listen.iter().map(|a| a.to_string()).collect(),
            admin: admin.map(|a| a.to_string()),
            reuse_port: Some(reuse_port),
            access_log,
            ..Default::default()
        },
        cache: FileCache {
            disk_bytes: cache_dir.as_ref().map(|_| ByteSize(2 << 30)),
            disk_path: cache_dir,
            ..Default::default()
        },
        sites: vec![],
    }
}

fn print_first_run(first: &relais_control::bootstrap::FirstRun) {
    println!(
        "First start: platform administrator {} / password {}\n  (shown once; a second factor is required: POST /api/v1/auth/totp/setup)",
        first.admin_email, first.admin_password
    );
    if let Some((email, pw)) = &first.demo {
        println!("  demo webmaster {email} / password {pw}");
    }
}

fn prepare_sqlite_dir(url: &str) -> Result<()> {
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = Path::new(path.split('?').next().unwrap_or(path)).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Runs an edge that follows a control plane.
async fn run_follower(opts: relais_edge::follow::FollowOptions) -> Result<()> {
    let (state, _) = relais_edge::follow::load_state(&opts.state_dir);
    let cfg = relais_edge::follow::build_config(&opts.base, &state)
        .or_else(|e| {
            tracing::warn!(error = %e, "the stored snapshot is not valid any more; starting empty");
            relais_edge::follow::build_config(&opts.base, &Default::default())
        })
        .context("refusing to start")?;
    let edge = Edge::new(cfg, Arc::new(SystemClock), EdgeOptions::default())?;
    let _follow = relais_edge::follow::spawn(edge.clone(), opts).map_err(anyhow::Error::msg)?;
    let running = relais_edge::server::start(edge.clone(), None).await?;
    for a in &running.http {
        tracing::info!(addr = %a, "edge listening (http)");
    }
    for a in &running.https {
        tracing::info!(addr = %a, "edge listening (https, h2 + http/1.1)");
    }
    if let Some(a) = running.admin {
        tracing::info!(addr = %a, "admin listening");
    }
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, open ones finish");
    running.shutdown().await;
    Ok(())
}

async fn run_edge(cfg: Config, path: Option<PathBuf>) -> Result<()> {
    let edge = Edge::new(cfg, Arc::new(SystemClock), EdgeOptions::default())?;
    let hook: Option<ReloadHook> = path.clone().map(|p| {
        let edge = edge.clone();
        Arc::new(move || edge.reload(Config::load(&p).map_err(|e| e.to_string()))) as ReloadHook
    });
    let running = relais_edge::server::start(edge.clone(), hook.clone()).await?;
    for a in &running.http {
        tracing::info!(addr = %a, "edge listening (http)");
    }
    for a in &running.https {
        tracing::info!(addr = %a, "edge listening (https, h2 + http/1.1)");
    }
    if let Some(a) = running.admin {
        tracing::info!(addr = %a, "admin listening");
    }
    if let (Some(path), Some(hook)) = (path, hook) {
        tokio::spawn(watch_config(path, hook));
    }
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, open ones finish");
    running.shutdown().await;
    Ok(())
}

/// Reloads on SIGHUP and when the file's modification time changes.
async fn watch_config(path: PathBuf, hook: ReloadHook) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    let mut last = mtime(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => { let _ = hook(); last = mtime(&path); }
            _ = tick.tick() => {
                let now = mtime(&path);
                if now != last {
                    last = now;
                    let _ = hook();
                }
            }
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

async fn shutdown_signal() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
