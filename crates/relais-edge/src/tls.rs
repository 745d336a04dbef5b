//! TLS termination: certificates chosen per connection by SNI from a map that reloads swap
//! atomically, so a certificate change never needs a restart or drops a connection.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{Config, PemSource, normalize_host};

/// Host name → certificate, as loaded from the sites' `[site.tls]`.
#[derive(Default, Debug)]
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    catch_all: Option<Arc<CertifiedKey>>,
}

impl Certs {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.catch_all.is_none()
    }

    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(name);
        if let Some(c) = self.exact.get(name.as_ref()) {
            return Some(c.clone());
        }
        for (suffix, c) in &self.wildcard {
            if name.ends_with(suffix.as_str()) && name.len() > suffix.len() {
                return Some(c.clone());
            }
        }
        self.catch_all.clone()
    }
}

/// The resolver handed to rustls.
#[derive(Default, Debug)]
pub struct CertStore {
    current: ArcSwap<Certs>,
}

impl CertStore {
    pub fn replace(&self, certs: Certs) {
        self.current.store(Arc::new(certs));
    }

    pub fn is_empty(&self) -> bool {
        self.current.load().is_empty()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.load();
        match hello.server_name() {
            Some(name) => certs.find(name),
            // Without SNI (clients connecting by IP address) only a site that explicitly
            // serves every host (`*`) answers; no other site's certificate is handed out.
            None => certs.catch_all.clone(),
        }
    }
}

fn load_pair(cert: &PemSource, key: &PemSource) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = match cert {
        PemSource::File(p) => CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("cannot read certificate {}: {e}", p.display()))?
            .collect::<Result<_, _>>(),
        PemSource::Inline(t) => CertificateDer::pem_slice_iter(t.as_bytes()).collect(),
    }
    .map_err(|e| format!("cannot parse certificate {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("no certificate found in {cert}"));
    }
    let key = match key {
        PemSource::File(p) => PrivateKeyDer::from_pem_file(p),
        PemSource::Inline(t) => PrivateKeyDer::from_pem_slice(t.as_bytes()),
    }
    .map_err(|e| format!("cannot read private key {key}: {e}"))?;
    let signer = ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("certificate {cert} does not match its key: {e}"))?;
    Ok(Arc::new(ck))
}

/// Loads every site's certificate; any failure refuses the whole configuration.
pub fn load_site_certs(config: &Config) -> Result<Certs, String> {
    let mut certs = Certs::default();
    for site in &config.sites {
        let Some(tls) = &site.tls else { continue };
        let ck = load_pair(&tls.cert, &tls.key).map_err(|e| format!("site {}: {e}", site.name))?;
        for host in &site.hosts {
            if host == "*" {
                certs.catch_all = Some(ck.clone());
            } else if let Some(s) = host.strip_prefix("*.") {
                certs.wildcard.push((format!(".{s}"), ck.clone()));
            } else {
                certs.exact.insert(host.clone(), ck.clone());
            }
        }
    }
    certs
        .wildcard
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    Ok(certs)
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
