//! Edge configuration: `relais.toml` → [`FileConfig`] (strict, versioned) → validated [`Config`].
//!
//! Validation happens entirely before anything is swapped in: a refused file leaves the running
//! configuration untouched, and the error names the offending field (`site[2].origin[0].url`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Scheme, Uri};
use serde::{Deserialize, Serialize};

/// The only file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// File form
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default)]
    pub edge: FileEdge,
    #[serde(default)]
    pub cache: FileCache,
    #[serde(default, rename = "site")]
    pub sites: Vec<FileSite>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileEdge {
    #[serde(default)]
    pub listen: Vec<String>,
    #[serde(default)]
    pub listen_tls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_secret: Option<String>,
    /// Bind with SO_REUSEPORT so that a new binary can start beside the old one during an
    /// upgrade (the old one then drains on SIGTERM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse_port: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_header_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uri_bytes: Option<ByteSize>,
    /// Directory for access logs (one file per site per UTC day). No access log when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
    /// Directory where an edge that follows no control plane writes its per-minute statistics
    /// (one JSON Lines file per UTC day). Edges that follow one ship them to it instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileCache {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_object: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSite {
    pub name: String,
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<FileTls>,
    #[serde(rename = "origin")]
    pub origins: Vec<FileOrigin>,
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<FileRule>,
    /// `active` (default), `bypass`, `maintenance` or `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// HTML file shown in maintenance mode (read and checked when the file is loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_page: Option<PathBuf>,
    /// The maintenance page inline (what the control plane distributes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_html: Option<String>,
    /// `Retry-After` sent in maintenance mode (default 5 minutes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    #[serde(default, rename = "schedule", skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<FileSchedule>,
    /// Access log format: `combined` (default), `common` or `w3c`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Client addresses in access logs: `full` (default) or `truncated` (IPv4 /24, IPv6 /48).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_client_ip: Option<String>,
}

/// A mode that applies between two instants (RFC 3339, e.g. `2027-04-23T18:00:00Z`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSchedule {
    pub mode: String,
    pub start: String,
    pub end: String,
}

/// One cache rule. Exactly one scope key (`default`, `group`, `content_type`, `dir`, `page`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respect_origin: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<FileQuery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_cookies: Option<Vec<String>>,
}

/// `query = "keep" | "ignore" | "sorted"` or `{ only = [..] }` / `{ drop = [..] }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileQuery {
    Mode(String),
    Only { only: Vec<String> },
    Drop { drop: Vec<String> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Certificate chain and key as files (relais.toml) ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// ... or inline PEM (what the control plane distributes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOrigin {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<FileHealth>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
}

/// A byte count written as an integer or as `"256MiB"`, `"10 GB"`, `"512k"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"256MiB"`, `"10GB"`, `"512k"`, `"42"` into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number like \"256MiB\" / taille {s:?} invalide : un nombre comme \"256MiB\" est attendu"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} / unité de taille {other:?} inconnue dans {s:?}"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large / taille {s:?} trop grande"))
}

/// Parses `"500ms"`, `"2s"`, `"5m"`, `"24h"`, `"7d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a number like \"30s\" / durée {s:?} invalide : un nombre comme \"30s\" est attendu"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?} (ms, s, m, h, d) / unité de durée {other:?} inconnue dans {s:?} (ms, s, m, h, d)"
            ));
        }
    };
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Validated form
// ---------------------------------------------------------------------------------------------

/// A validated edge configuration. Immutable; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub purge_secret: Option<String>,
    pub reuse_port: bool,
    pub limits: Limits,
    pub cache: CacheConfig,
    pub sites: Vec<Arc<Site>>,
    pub access_log: Option<PathBuf>,
    pub stats_dir: Option<PathBuf>,
    routes: Routes,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub memory_bytes: u64,
    pub max_memory_object: u64,
    pub disk_path: Option<PathBuf>,
    pub disk_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            max_memory_object: 32 << 20,
            disk_path: None,
            disk_bytes: 10 << 30,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Site {
    /// Position in [`Config::sites`]; stable for one config generation.
    pub index: usize,
    pub name: String,
    pub hosts: Vec<String>,
    /// How long stale content is served when every origin fails.
    pub grace: Duration,
    pub max_body_bytes: u64,
    pub tls: Option<SiteTls>,
    pub origins: Vec<Origin>,
    /// Cache rules, validated (resolved by specificity).
    pub rules: Arc<relais_rules::RuleSet>,
    pub mode: Mode,
    pub schedules: Vec<Schedule>,
    pub maintenance_page: Option<bytes::Bytes>,
    pub retry_after: Duration,
    pub log: crate::accesslog::SiteLog,
}

/// How a site is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Served and cached.
    Active,
    /// Served, nothing cached: the CDN is off while DNS still points at us.
    Bypass,
    /// The customer's maintenance page, 503 with Retry-After.
    Maintenance,
    /// Not served: a clear page.
    Disabled,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "active" => Mode::Active,
            "bypass" => Mode::Bypass,
            "maintenance" => Mode::Maintenance,
            "disabled" => Mode::Disabled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Bypass => "bypass",
            Mode::Maintenance => "maintenance",
            Mode::Disabled => "disabled",
        }
    }
}

/// A mode applying in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub mode: Mode,
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
}

impl Site {
    /// The mode in force at `now`: a schedule covering `now`, else the site's mode.
    pub fn mode_at(&self, now: std::time::SystemTime) -> Mode {
        self.schedules
            .iter()
            .find(|s| s.start <= now && now < s.end)
            .map_or(self.mode, |s| s.mode)
    }
}

#[derive(Debug, Clone)]
pub struct SiteTls {
    pub cert: PemSource,
    pub key: PemSource,
}

/// Where a PEM document comes from.
#[derive(Debug, Clone)]
pub enum PemSource {
    File(PathBuf),
    Inline(String),
}

impl fmt::Display for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "{}", p.display()),
            PemSource::Inline(_) => f.write_str("(inline PEM)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Origin {
    pub url: Uri,
    /// Host header sent upstream; `None` keeps the client's.
    pub host: Option<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub health: Health,
}

impl Origin {
    /// Stable identity of an origin across reloads (for health state and connection pools).
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{:?}|{:?}|{:?}",
            self.url,
            self.host.as_deref().unwrap_or(""),
            self.connect_timeout,
            self.response_timeout,
            self.ca_file
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down origin back.
    pub rise: u32,
    /// Consecutive failures that take an origin down.
    pub fall: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            path: "/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

/// Host → site lookup: exact names first, then `*.suffix` wildcards (longest first), then `*`.
#[derive(Debug, Clone, Default)]
struct Routes {
    exact: HashMap<String, usize>,
    wildcard: Vec<(String, usize)>,
    catch_all: Option<usize>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::from_file(file)
    }

    /// The quick-start form: every Host served from one origin with default rules.
    pub fn quick_start(
        listen: Vec<SocketAddr>,
        origin: &str,
        admin: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        let file = FileConfig {
            version: Some(CONFIG_VERSION),
            edge: FileEdge {
                listen: listen.iter().map(|a| a.to_string()).collect(),
                admin: admin.map(|a| a.to_string()),
                ..Default::default()
            },
            cache: FileCache::default(),
            sites: vec![FileSite {
                name: "default".into(),
                hosts: vec!["*".into()],
                grace: None,
                max_body_bytes: None,
                tls: None,
                rules: vec![],
                mode: None,
                maintenance_page: None,
                maintenance_html: None,
                log_format: None,
                log_client_ip: None,
                retry_after: None,
                schedules: vec![],
                origins: vec![FileOrigin {
                    url: origin.to_owned(),
                    host: None,
                    connect_timeout: None,
                    response_timeout: None,
                    ca_file: None,
                    health: None,
                }],
            }],
        };
        Self::from_file(file)
    }

    pub fn from_file(file: FileConfig) -> Result<Config, ConfigError> {
        Self::build(file, false)
    }

    /// Like [`Config::from_file`], for an edge that follows a control plane: it may start with
    /// no site yet and receive them later.
    pub fn for_follower(file: FileConfig) -> Result<Config, ConfigError> {
        Self::build(file, true)
    }

    fn build(file: FileConfig, allow_empty: bool) -> Result<Config, ConfigError> {
        match file.version {
            Some(CONFIG_VERSION) => {}
            Some(v) => {
                return Err(invalid(
                    "version",
                    format!("unsupported version {v}, this build reads version {CONFIG_VERSION}"),
                ));
            }
            None => {
                return Err(invalid(
                    "version",
                    format!("missing; write `version = {CONFIG_VERSION}`"),
                ));
            }
        }
        let addrs = |field: &str, list: &[String]| -> Result<Vec<SocketAddr>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, a)| {
                    a.parse().map_err(|_| {
                        invalid(
                            format!("{field}[{i}]"),
                            format!("{a:?} is not an address like \"127.0.0.1:8080\""),
                        )
                    })
                })
                .collect()
        };
        let listen = addrs("edge.listen", &file.edge.listen)?;
        let listen_tls = addrs("edge.listen_tls", &file.edge.listen_tls)?;
        if listen.is_empty() && listen_tls.is_empty() {
            return Err(invalid(
                "edge.listen",
                "at least one listen or listen_tls address is required",
            ));
        }
        let admin = match &file.edge.admin {
            Some(a) => Some(
                a.parse()
                    .map_err(|_| invalid("edge.admin", format!("{a:?} is not an address")))?,
            ),
            None => None,
        };
        if let Some(s) = &file.edge.purge_secret
            && s.len() < 16
        {
            return Err(invalid(
                "edge.purge_secret",
                "must be at least 16 characters",
            ));
        }
        let mut limits = Limits::default();
        if let Some(t) = &file.edge.client_header_timeout {
            limits.header_timeout =
                parse_duration(t).map_err(|m| invalid("edge.client_header_timeout", m))?;
        }
        if let Some(t) = &file.edge.client_idle_timeout {
            limits.idle_timeout =
                parse_duration(t).map_err(|m| invalid("edge.client_idle_timeout", m))?;
        }
        if let Some(b) = file.edge.max_header_bytes {
            if !(1024..=1 << 20).contains(&b.0) {
                return Err(invalid(
                    "edge.max_header_bytes",
                    "must be between 1KiB and 1MiB",
                ));
            }
            limits.max_header_bytes = b.0 as usize;
        }
        if let Some(b) = file.edge.max_uri_bytes {
            if !(256..=1 << 20).contains(&b.0) {
                return Err(invalid(
                    "edge.max_uri_bytes",
                    "must be between 256B and 1MiB",
                ));
            }
            limits.max_uri_bytes = b.0 as usize;
        }

        let mut cache = CacheConfig::default();
        if let Some(b) = file.cache.memory_bytes {
            cache.memory_bytes = b.0;
        }
        if let Some(b) = file.cache.max_memory_object {
            cache.max_memory_object = b.0;
        }
        cache.disk_path = file.cache.disk_path.clone();
        if let Some(b) = file.cache.disk_bytes {
            cache.disk_bytes = b.0;
        }
        if cache.max_memory_object > cache.memory_bytes {
            cache.max_memory_object = cache.memory_bytes;
        }

        if file.sites.is_empty() && !allow_empty {
            return Err(invalid("site", "at least one [[site]] is required"));
        }
        let mut sites = Vec::with_capacity(file.sites.len());
        let mut routes = Routes::default();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for (i, fs) in file.sites.into_iter().enumerate() {
            let field = format!("site[{i}]");
            let site = validate_site(i, fs, &field)?;
            if let Some(prev) = seen_names.insert(site.name.clone(), i) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} is already used by site[{prev}]", site.name),
                ));
            }
            for (h, host) in site.hosts.iter().enumerate() {
                let hf = format!("{field}.hosts[{h}]");
                let dup = if host == "*" {
                    routes.catch_all.replace(i)
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    let s = format!(".{suffix}");
                    let prev = routes
                        .wildcard
                        .iter()
                        .find(|(w, _)| *w == s)
                        .map(|(_, i)| *i);
                    if prev.is_none() {
                        routes.wildcard.push((s, i));
                    }
                    prev
                } else {
                    routes.exact.insert(host.clone(), i)
                };
                if let Some(prev) = dup {
                    return Err(invalid(
                        hf,
                        format!(
                            "host {host:?} is already served by site[{prev}] / l'hôte {host:?} est déjà servi par site[{prev}]"
                        ),
                    ));
                }
            }
            sites.push(Arc::new(site));
        }
        routes
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        if !listen_tls.is_empty() && !allow_empty && !sites.iter().any(|s| s.tls.is_some()) {
            return Err(invalid(
                "edge.listen_tls",
                "a TLS listener needs at least one site with [site.tls]",
            ));
        }
        Ok(Config {
            listen,
            listen_tls,
            admin,
            purge_secret: file.edge.purge_secret,
            reuse_port: file.edge.reuse_port.unwrap_or(false),
            limits,
            cache,
            sites,
            access_log: file.edge.access_log.clone(),
            stats_dir: file.edge.stats_dir.clone(),
            routes,
        })
    }

    /// The site serving `host` (port and trailing dot ignored, case-insensitive).
    pub fn route(&self, host: &str) -> Option<&Arc<Site>> {
        let host = normalize_host(host);
        if let Some(&i) = self.routes.exact.get(host.as_ref()) {
            return self.sites.get(i);
        }
        for (suffix, i) in &self.routes.wildcard {
            if host.ends_with(suffix.as_str()) && host.len() > suffix.len() {
                return self.sites.get(*i);
            }
        }
        self.routes.catch_all.and_then(|i| self.sites.get(i))
    }

    pub fn site_by_name(&self, name: &str) -> Option<&Arc<Site>> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// Validates one site document on its own (what the control plane does before it stores a
/// draft). Errors name fields from `site.`.
pub fn validate_site_doc(fs: &FileSite) -> Result<Site, ConfigError> {
    validate_site(0, fs.clone(), "site")
}

/// Lowercases, strips a port and a trailing dot. Borrowed when nothing changes.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let no_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let trimmed = no_port.strip_suffix('.').unwrap_or(no_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

fn valid_host_name(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        })
}

fn validate_site(index: usize, fs: FileSite, field: &str) -> Result<Site, ConfigError> {
    if fs.name.is_empty()
        || !fs
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(
            format!("{field}.name"),
            "use letters, digits, '-', '_' or '.' / lettres, chiffres, « - », « _ » ou « . »",
        ));
    }
    if fs.hosts.is_empty() {
        return Err(invalid(
            format!("{field}.hosts"),
            "at least one host name is required / au moins un nom d'hôte est requis",
        ));
    }
    let mut hosts = Vec::new();
    for (h, host) in fs.hosts.iter().enumerate() {
        let host = host.trim().to_ascii_lowercase();
        if host != "*" && !valid_host_name(&host) {
            return Err(invalid(
                format!("{field}.hosts[{h}]"),
                format!("{host:?} is not a host name / {host:?} n'est pas un nom d'hôte"),
            ));
        }
        hosts.push(host);
    }
    let grace = match &fs.grace {
        Some(g) => parse_duration(g).map_err(|m| invalid(format!("{field}.grace"), m))?,
        None => Duration::from_secs(24 * 3600),
    };
    if fs.origins.is_empty() {
        return Err(invalid(
            format!("{field}.origin"),
            "at least one [[site.origin]] is required / au moins une origine est requise",
        ));
    }
    let mut origins = Vec::new();
    for (o, fo) in fs.origins.into_iter().enumerate() {
        let of = format!("{field}.origin[{o}]");
        origins.push(validate_origin(fo, &of)?);
    }
    let tls = match fs.tls {
        None => None,
        Some(t) => {
            let pick = |file: Option<PathBuf>, pem: Option<String>, name: &str| match (file, pem) {
                (Some(f), None) => Ok(PemSource::File(f)),
                (None, Some(p)) => Ok(PemSource::Inline(p)),
                _ => Err(invalid(
                    format!("{field}.tls.{name}"),
                    format!(
                        "give exactly one of {name} (a file) or {name}_pem (inline) / indiquez soit {name} (un fichier), soit {name}_pem (en ligne)"
                    ),
                )),
            };
            Some(SiteTls {
                cert: pick(t.cert, t.cert_pem, "cert")?,
                key: pick(t.key, t.key_pem, "key")?,
            })
        }
    };
    const MODES: &str = "\"active\", \"bypass\", \"maintenance\" or \"disabled\"";
    let mode = match fs.mode.as_deref() {
        None => Mode::Active,
        Some(m) => Mode::parse(m).ok_or_else(|| {
            invalid(
                format!("{field}.mode"),
                format!("{m:?} is not one of {MODES} / {m:?} n'est pas un mode connu"),
            )
        })?,
    };
    let mut schedules: Vec<Schedule> = Vec::new();
    for (i, s) in fs.schedules.iter().enumerate() {
        let sf = format!("{field}.schedule[{i}]");
        let when = |name: &str, v: &str| {
            humantime::parse_rfc3339_weak(v).map_err(|_| {
                invalid(
                    format!("{sf}.{name}"),
                    format!("{v:?} is not a date like \"2027-04-23T18:00:00Z\" / {v:?} n'est pas une date comme \"2027-04-23T18:00:00Z\""),
                )
            })
        };
        let sched = Schedule {
            mode: Mode::parse(&s.mode).ok_or_else(|| {
                invalid(
                    format!("{sf}.mode"),
                    format!(
                        "{0:?} is not one of {MODES} / {0:?} n'est pas un mode connu",
                        s.mode
                    ),
                )
            })?,
            start: when("start", s.start.trim_end_matches('Z'))?,
            end: when("end", s.end.trim_end_matches('Z'))?,
        };
        if sched.end <= sched.start {
            return Err(invalid(
                format!("{sf}.end"),
                "must be after start / doit être après le début",
            ));
        }
        if let Some(j) = schedules
            .iter()
            .position(|o| o.start < sched.end && sched.start < o.end)
        {
            return Err(invalid(
                sf,
                format!(
                    "overlaps {field}.schedule[{j}]: a site is in one mode at a time / chevauche {field}.schedule[{j}] : un site n'a qu'un mode à la fois"
                ),
            ));
        }
        schedules.push(sched);
    }
    if fs.maintenance_page.is_some() && fs.maintenance_html.is_some() {
        return Err(invalid(
            format!("{field}.maintenance_html"),
            "give maintenance_page (a file) or maintenance_html, not both / indiquez maintenance_page (un fichier) ou maintenance_html, pas les deux",
        ));
    }
    let maintenance_page = match &fs.maintenance_page {
        None => fs.maintenance_html.clone().map(bytes::Bytes::from),
        Some(p) => Some(bytes::Bytes::from(std::fs::read(p).map_err(|e| {
            invalid(
                format!("{field}.maintenance_page"),
                format!("cannot read {}: {e}", p.display()),
            )
        })?)),
    };
    let retry_after = match &fs.retry_after {
        Some(r) => parse_duration(r).map_err(|m| invalid(format!("{field}.retry_after"), m))?,
        None => Duration::from_secs(300),
    };
    let mut rules = Vec::with_capacity(fs.rules.len());
    for (r, fr) in fs.rules.into_iter().enumerate() {
        rules.push(validate_rule(fr, r, &format!("{field}.rule[{r}]"))?);
    }
    let rules =
        relais_rules::RuleSet::new(rules, relais_rules::Groups::default()).map_err(|errs| {
            let e = &errs[0];
            let f = e.field.replacen("rules[", &format!("{field}.rule["), 1);
            let more = if errs.len() > 1 {
                format!(" (and {} more)", errs.len() - 1)
            } else {
                String::new()
            };
            invalid(f, format!("{} / {}{more}", e.en, e.fr))
        })?;
    let log = crate::accesslog::SiteLog {
        format: match fs.log_format.as_deref() {
            None => crate::accesslog::LogFormat::Combined,
            Some(f) => crate::accesslog::LogFormat::parse(f).ok_or_else(|| {
                invalid(
                    format!("{field}.log_format"),
                    format!("{f:?} is not combined, common or w3c / {f:?} n'est pas combined, common ou w3c"),
                )
            })?,
        },
        truncate_ip: match fs.log_client_ip.as_deref() {
            None | Some("full") => false,
            Some("truncated") => true,
            Some(o) => {
                return Err(invalid(
                    format!("{field}.log_client_ip"),
                    format!("{o:?} is not full or truncated / {o:?} n'est pas full ou truncated"),
                ));
            }
        },
    };
    Ok(Site {
        log,
        index,
        name: fs.name,
        hosts,
        grace,
        max_body_bytes: fs.max_body_bytes.map_or(100 << 20, |b| b.0),
        tls,
        origins,
        rules: Arc::new(rules),
        mode,
        schedules,
        maintenance_page,
        retry_after,
    })
}

fn validate_rule(
    fr: FileRule,
    index: usize,
    field: &str,
) -> Result<relais_rules::Rule, ConfigError> {
    use relais_rules::{QueryMode, Rule, Scope, Settings};
    let scopes = [
        fr.default.filter(|d| *d).is_some(),
        fr.group.is_some(),
        fr.content_type.is_some(),
        fr.dir.is_some(),
        fr.page.is_some(),
    ];
    if scopes.iter().filter(|s| **s).count() != 1 {
        return Err(invalid(
            field,
            "give exactly one scope: default = true, group, content_type, dir or page / indiquez une seule portée : default = true, group, content_type, dir ou page",
        ));
    }
    let scope = if let Some(g) = fr.group {
        Scope::Group(g)
    } else if let Some(t) = fr.content_type {
        Scope::ContentType(t)
    } else if let Some(d) = fr.dir {
        Scope::Dir(d)
    } else if let Some(p) = fr.page {
        Scope::Page(p)
    } else {
        Scope::Site
    };
    let dur = |name: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
        v.as_deref()
            .map(|s| parse_duration(s).map_err(|m| invalid(format!("{field}.{name}"), m)))
            .transpose()
    };
    let query = match fr.query {
        None => None,
        Some(FileQuery::Mode(m)) => Some(match m.as_str() {
            "keep" => QueryMode::Keep,
            "ignore" => QueryMode::Ignore,
            "sorted" => QueryMode::Sorted,
            other => {
                return Err(invalid(
                    format!("{field}.query"),
                    format!(
                        "{other:?} is not one of \"keep\", \"ignore\", \"sorted\", {{ only = [..] }}, {{ drop = [..] }}"
                    ),
                ));
            }
        }),
        Some(FileQuery::Only { only }) => Some(QueryMode::Only(only)),
        Some(FileQuery::Drop { drop }) => Some(QueryMode::Drop(drop)),
    };
    let lower =
        |v: Option<Vec<String>>| v.map(|v| v.into_iter().map(|s| s.to_ascii_lowercase()).collect());
    Ok(Rule {
        id: fr.id.unwrap_or_else(|| format!("rule {index}")),
        scope,
        settings: Settings {
            cache: fr.cache,
            edge_ttl: dur("edge_ttl", &fr.edge_ttl)?,
            browser_ttl: dur("browser_ttl", &fr.browser_ttl)?,
            respect_origin: fr.respect_origin,
            stale_while_revalidate: dur("stale_while_revalidate", &fr.stale_while_revalidate)?,
            stale_if_error: dur("stale_if_error", &fr.stale_if_error)?,
            query,
            key_headers: lower(fr.key_headers),
            key_cookies: fr.key_cookies,
        },
    })
}

fn validate_origin(fo: FileOrigin, field: &str) -> Result<Origin, ConfigError> {
    let url: Uri = fo.url.parse().map_err(|_| {
        invalid(
            format!("{field}.url"),
            format!("{0:?} is not a URL / {0:?} n'est pas une URL", fo.url),
        )
    })?;
    match url.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        _ => {
            return Err(invalid(
                format!("{field}.url"),
                "must start with http:// or https:// / doit commencer par http:// ou https://",
            ));
        }
    }
    if url.host().is_none() {
        return Err(invalid(
            format!("{field}.url"),
            "has no host / l'adresse n'a pas de nom d'hôte",
        ));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(invalid(
            format!("{field}.url"),
            "must not have a path (the client's path is kept) / ne doit pas contenir de chemin (celui du client est conservé)",
        ));
    }
    let dur =
        |name: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                Some(s) => {
                    let d = parse_duration(s).map_err(|m| invalid(format!("{field}.{name}"), m))?;
                    if d.is_zero() {
                        return Err(invalid(
                            format!("{field}.{name}"),
                            "must be greater than zero / doit être supérieur à zéro",
                        ));
                    }
                    Ok(d)
                }
                None => Ok(default),
            }
        };
    let connect_timeout = dur(
        "connect_timeout",
        &fo.connect_timeout,
        Duration::from_secs(3),
    )?;
    let response_timeout = dur(
        "response_timeout",
        &fo.response_timeout,
        Duration::from_secs(30),
    )?;
    let mut health = Health::default();
    if let Some(h) = fo.health {
        if let Some(p) = h.path {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("{field}.health.path"),
                    "must start with '/' / doit commencer par « / »",
                ));
            }
            health.path = p;
        }
        health.interval = dur("health.interval", &h.interval, health.interval)?;
        health.timeout = dur("health.timeout", &h.timeout, health.timeout)?;
        if let Some(r) = h.rise {
            health.rise = r.max(1);
        }
        if let Some(f) = h.fall {
            health.fall = f.max(1);
        }
    }
    if let Some(host) = &fo.host
        && !valid_host_name(&normalize_host(host))
    {
        return Err(invalid(
            format!("{field}.host"),
            format!("{host:?} is not a host name / {host:?} n'est pas un nom d'hôte"),
        ));
    }
    Ok(Origin {
        url,
        host: fo.host,
        connect_timeout,
        response_timeout,
        ca_file: fo.ca_file,
        health,
    })
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
[edge]
listen = ["127.0.0.1:8080"]
[[site]]
name = "mairie"
hosts = ["www.mairie.example", "*.mairie.example"]
grace = "2h"
[[site.origin]]
url = "http://127.0.0.1:9000"
[[site]]
name = "other"
hosts = ["*"]
[[site.origin]]
url = "https://origin.example"
host = "origin.example"
"#;

    #[test]
    fn parses_and_routes() {
        let c = Config::parse(GOOD, "t").expect("valid");
        assert_eq!(c.sites.len(), 2);
        assert_eq!(c.sites[0].grace, Duration::from_secs(7200));
        assert_eq!(
            c.route("www.mairie.example").map(|s| s.name.as_str()),
            Some("mairie")
        );
        assert_eq!(
            c.route("WWW.Mairie.Example.:8080").map(|s| s.name.as_str()),
            Some("mairie")
        );
        assert_eq!(
            c.route("static.mairie.example").map(|s| s.name.as_str()),
            Some("mairie")
        );
        assert_eq!(
            c.route("mairie.example").map(|s| s.name.as_str()),
            Some("other")
        );
        assert_eq!(c.route("anything").map(|s| s.name.as_str()), Some("other"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("version = 1", "version = 7"), "version"),
            (
                GOOD.replace("http://127.0.0.1:9000", "ftp://x"),
                "site[0].origin[0].url",
            ),
            (
                GOOD.replace("grace = \"2h\"", "grace = \"2 fortnights\""),
                "site[0].grace",
            ),
            (
                GOOD.replace("\"*\"", "\"www.mairie.example\""),
                "site[1].hosts[0]",
            ),
            (
                GOOD.replace("name = \"other\"", "name = \"mairie\""),
                "site[1].name",
            ),
            (
                GOOD.replace("127.0.0.1:8080", "localhost"),
                "edge.listen[0]",
            ),
        ];
        for (text, field) in cases {
            match Config::parse(&text, "t") {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        let err = Config::parse(
            "version = 1\n[edge]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n",
            "relais.toml",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("bogus"), "{err}");
        assert!(err.to_string().starts_with("relais.toml"), "{err}");
    }

    #[test]
    fn rules_are_read_and_validated_with_field_names() {
        let with_rules = GOOD.replace(
            "grace = \"2h\"",
            "grace = \"2h\"\n[[site.rule]]\nid = \"news\"\ndir = \"/news/\"\nedge_ttl = \"30s\"\nquery = { drop = [\"utm_*\"] }\n[[site.rule]]\ngroup = \"images\"\nedge_ttl = \"1d\"",
        );
        let c = Config::parse(&with_rules, "t").expect("valid");
        let s = c.sites[0].rules.resolve("/news/a.png", Some("image/png"));
        assert_eq!(s.edge_ttl, Some(Duration::from_secs(30)));
        assert_eq!(
            c.sites[0]
                .rules
                .resolve("/a.png", Some("image/png"))
                .edge_ttl,
            Some(Duration::from_secs(86400))
        );
        let conflict = with_rules.replace("group = \"images\"", "dir = \"/news/\"");
        match Config::parse(&conflict, "t") {
            Err(ConfigError::Invalid { field, message }) => {
                assert_eq!(field, "site[0].rule[1].edge_ttl");
                assert!(
                    message.contains("\"news\"") && message.contains("gardez-en une seule"),
                    "{message}"
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let two_scopes =
            with_rules.replace("group = \"images\"", "group = \"images\"\npage = \"/x\"");
        assert!(
            matches!(Config::parse(&two_scopes, "t"), Err(ConfigError::Invalid { field, .. }) if field == "site[0].rule[1]")
        );
        let bad_ttl = with_rules.replace("\"1d\"", "\"one day\"");
        assert!(
            matches!(Config::parse(&bad_ttl, "t"), Err(ConfigError::Invalid { field, .. }) if field == "site[0].rule[1].edge_ttl")
        );
    }

    #[test]
    fn modes_and_schedules() {
        let text = GOOD.replace(
            "grace = \"2h\"",
            "grace = \"2h\"\nmode = \"disabled\"\n[[site.schedule]]\nmode = \"active\"\nstart = \"2027-04-23T18:00:00Z\"\nend = \"2027-04-24T06:00:00Z\"",
        );
        let c = Config::parse(&text, "t").expect("valid");
        let at = |s: &str| humantime::parse_rfc3339(s).expect("date");
        assert_eq!(
            c.sites[0].mode_at(at("2027-04-23T17:59:59Z")),
            Mode::Disabled
        );
        assert_eq!(c.sites[0].mode_at(at("2027-04-23T18:00:00Z")), Mode::Active);
        assert_eq!(
            c.sites[0].mode_at(at("2027-04-24T06:00:00Z")),
            Mode::Disabled
        );
        let bad = |t: &str, field: &str| match Config::parse(t, "t") {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{t}"),
            other => panic!("expected {field}: {other:?}"),
        };
        bad(
            &text.replace("mode = \"disabled\"", "mode = \"off\""),
            "site[0].mode",
        );
        bad(
            &text.replace("2027-04-24T06:00:00Z", "2027-04-23T06:00:00Z"),
            "site[0].schedule[0].end",
        );
        bad(
            &text.replace("2027-04-23T18:00:00Z", "tomorrow"),
            "site[0].schedule[0].start",
        );
        let overlap = text.replace(
            "end = \"2027-04-24T06:00:00Z\"",
            "end = \"2027-04-24T06:00:00Z\"\n[[site.schedule]]\nmode = \"maintenance\"\nstart = \"2027-04-24T05:00:00Z\"\nend = \"2027-04-24T07:00:00Z\"",
        );
        bad(&overlap, "site[0].schedule[1]");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("1k"), Ok(1024));
        assert_eq!(parse_bytes("12"), Ok(12));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999TB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("-1s").is_err());
    }
}
