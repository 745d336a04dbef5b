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
    /// Origins this edge currently considers down, as `site origin` pairs.
    #[serde(default)]
    pub origins_down: Vec<(String, String)>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileSite, FileTls};

    fn site(name: &str, host: &str, mode: Option<&str>) -> FileSite {
        serde_json::from_value(serde_json::json!({
            "name": name, "hosts": [host], "mode": mode,
            "origin": [{"url": "http://127.0.0.1:9"}],
        }))
        .expect("site")
    }

    #[test]
    fn drafts_are_served_on_their_staging_host_only() {
        let mut draft = site("gouv", "www.gouv.fr", Some("maintenance"));
        draft.tls = Some(FileTls {
            cert: None,
            key: None,
            cert_pem: Some("x".into()),
            key_pem: Some("y".into()),
        });
        let mut state = EdgeState {
            config_seq: 3,
            staging_domain: Some("staging.example".into()),
            ..Default::default()
        };
        state.sites.insert(
            "gouv".into(),
            SiteEntry {
                published: Some(site("gouv", "www.gouv.fr", None)),
                draft: Some(draft),
            },
        );
        state.sites.insert(
            "new".into(),
            SiteEntry {
                published: None,
                draft: Some(site("new", "new.fr", None)),
            },
        );
        let sites = sites_for(&state);
        let names: Vec<_> = sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["gouv", "draft.gouv", "draft.new"]);
        assert_eq!(sites[0].hosts, ["www.gouv.fr"]);
        assert_eq!(sites[1].hosts, ["gouv.staging.example"]);
        assert_eq!(sites[1].mode.as_deref(), Some("maintenance"));
        assert!(
            sites[1].tls.is_none(),
            "staging never takes the production certificate"
        );
        assert_eq!(sites[2].hosts, ["new.staging.example"]);
        // Without a staging domain, drafts are not served at all.
        state.staging_domain = None;
        assert_eq!(sites_for(&state).len(), 1);
    }

    #[test]
    fn messages_round_trip_as_json_lines() {
        let m = Message::Purge(PurgeMsg {
            seq: 7,
            site: "s".into(),
            kind: "tag".into(),
            values: vec!["a".into()],
            soft: true,
        });
        let line = serde_json::to_string(&m).expect("encode");
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""type":"purge""#));
        match serde_json::from_str::<Message>(&line).expect("decode") {
            Message::Purge(p) => assert_eq!(p.seq, 7),
            other => panic!("decoded as {other:?}"),
        }
    }
}
