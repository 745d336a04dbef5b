//! What crosses the control plane → edge boundary.
//!
//! An edge opens `GET /edge/v1/stream?config_seq=C&purge_seq=P` with its bearer token and reads
//! newline-delimited JSON [`Message`]s: a full [`Message::Snapshot`] when its `config_seq` is
//! behind (or unknown), then every purge after `P` in order, then changes as they happen, and a
//! [`Message::Ping`] every second that states the control plane's current sequence numbers. The
//! edge reports progress with `POST /edge/v1/ack` ([`Ack`]).
//!
//! A site document ([`crate::config::FileSite`]) is the same in the API (JSON) and in
//! `relais.toml` (`[[site]]`), so the edge validates what it receives with the code that
//! validates its own file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::FileSite;

/// One site as distributed: the published document, and the draft when it differs (served on the
/// staging host `<name>.<staging_domain>` only).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SiteEntry {
    pub published: Option<FileSite>,
    pub draft: Option<FileSite>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Every site, replacing what the edge had.
    Snapshot {
        config_seq: u64,
        staging_domain: Option<String>,
        sites: BTreeMap<String, SiteEntry>,
    },
    /// One site changed (`entry: None`: it was deleted).
    Site {
        config_seq: u64,
        name: String,
        entry: Option<Box<SiteEntry>>,
    },
    Purge(PurgeMsg),
    /// Liveness and the control plane's head: an edge whose applied purge sequence has reached
    /// `purge_seq` can vouch for its cache.
    Ping {
        config_seq: u64,
        purge_seq: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PurgeMsg {
    pub seq: u64,
    pub site: String,
    /// `url`, `prefix`, `tag` or `all`.
    pub kind: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub soft: bool,
}

/// Progress reported by an edge.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Ack {
    pub config_seq: u64,
    pub purge_seq: u64,
    /// Why the last configuration received was refused (the previous one keeps serving).
    #[serde(default)]
    pub config_error: Option<String>,
    #[serde(default)]
    pub vouched: bool,
    /// The addresses this edge serves on (for the site definition document).
    #[serde(default)]
    pub listen: Vec<String>,
}

/// The state an edge keeps on disk: the last good configuration it received and how far it got
/// in the purge stream.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EdgeState {
    pub config_seq: u64,
    pub staging_domain: Option<String>,
    pub sites: BTreeMap<String, SiteEntry>,
}

/// Name of the site that serves a site's draft on the staging host.
pub fn draft_site_name(name: &str) -> String {
    format!("draft.{name}")
}

/// The staging host of a site.
pub fn staging_host(name: &str, staging_domain: &str) -> String {
    format!("{}.{}", name.to_ascii_lowercase(), staging_domain)
}

/// The `[[site]]` list an edge serves for a state: every published document, plus every draft
/// on its staging host (without TLS: staging is reached over plain HTTP or the catch-all
/// certificate).
pub fn sites_for(state: &EdgeState) -> Vec<FileSite> {
    let mut out = Vec::new();
    for (name, e) in &state.sites {
        if let Some(p) = &e.published {
            out.push(p.clone());
        }
        if let (Some(d), Some(domain)) = (&e.draft, &state.staging_domain) {
            let mut d = d.clone();
            d.name = draft_site_name(name);
            d.hosts = vec![staging_host(name, domain)];
            d.tls = None;
            out.push(d);
        }
    }
    out
}
