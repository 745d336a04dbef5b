//! The `relais` binary: parses the command line, loads and validates configuration before
//! binding any port, and wires the services together. No logic of its own lives here.

mod demo;

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
        /// Where the cache and data live.
        #[arg(long, default_value = "./relais-data", env = "RELAIS_DATA")]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080", env = "RELAIS_LISTEN")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090", env = "RELAIS_ADMIN")]
        admin: SocketAddr,
    },
    /// Run the caching edge, from a configuration file or in quick-start form.
    Edge {
        /// Configuration file (reloaded on change and on SIGHUP).
        #[arg(long, short, conflicts_with_all = ["origin"])]
        config: Option<PathBuf>,
        /// Quick start: address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: Vec<SocketAddr>,
        /// Quick start: the origin serving every host, e.g. http://127.0.0.1:9000.
        #[arg(long, required_unless_present = "config")]
        origin: Option<String>,
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
            origin,
            admin,
            cache_dir,
            reuse_port,
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
        } => {
            std::fs::create_dir_all(&data)
                .with_context(|| format!("cannot create {}", data.display()))?;
            let origin = demo::start_origin("127.0.0.1:0".parse()?).await?;
            let text = demo::config_text(listen, admin, origin, &data.join("cache"));
            let cfg_path = data.join("relais.toml");
            if !cfg_path.exists() {
                std::fs::write(&cfg_path, &text)?;
            }
            let cfg = Config::parse(&text, "built-in demo configuration")?;
            println!(
                "Relais is serving the demo site at http://localhost:{}/ (admin: http://{admin}/metrics)",
                listen.port()
            );
            run_edge(cfg, None).await
        }
    }
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
