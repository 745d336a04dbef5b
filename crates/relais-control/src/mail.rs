//! Outgoing e-mail through the operator's SMTP relay (lettre), and the messages the platform
//! sends: for now, "a day of access logs is ready", in French or English per organisation.

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};

/// Where and as whom mail is sent.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// STARTTLS required (an internal relay on loopback or a private network may go without).
    pub starttls: bool,
    pub from: String,
}

impl SmtpConfig {
    /// `smtp://host:port` (plain) or `smtp+starttls://host:port`.
    pub fn parse(url: &str, from: &str) -> Result<SmtpConfig, String> {
        let (starttls, rest) = if let Some(r) = url.strip_prefix("smtp+starttls://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("smtp://") {
            (false, r)
        } else {
            return Err(format!(
                "{url:?}: use smtp://host:port or smtp+starttls://host:port"
            ));
        };
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
            None => (rest.trim_end_matches('/'), if starttls { 587 } else { 25 }),
        };
        from.parse::<Mailbox>()
            .map_err(|e| format!("{from:?} is not a sender address: {e}"))?;
        Ok(SmtpConfig {
            host: host.to_owned(),
            port,
            starttls,
            from: from.to_owned(),
        })
    }
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(cfg: &SmtpConfig) -> Result<Mailer, String> {
        let transport = if cfg.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)
                .map_err(|e| e.to_string())?
                .port(cfg.port)
                .build()
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
                .port(cfg.port)
                .build()
        };
        Ok(Mailer {
            transport,
            from: cfg.from.parse().map_err(|e| format!("{e}"))?,
        })
    }

    /// Sends one plain-text message to every recipient.
    pub async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), String> {
        let mut b = Message::builder().from(self.from.clone()).subject(subject);
        for t in to {
            b = b.to(t.parse().map_err(|e| format!("{t:?}: {e}"))?);
        }
        let m = b
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| e.to_string())?;
        self.transport.send(m).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The "logs ready" message: (subject, body).
#[allow(clippy::too_many_arguments)]
pub fn logs_ready(
    lang: &str,
    site: &str,
    date: &str,
    lines: u64,
    edges: usize,
    complete: bool,
    link: &str,
    sha256: &str,
) -> (String, String) {
    if lang == "en" {
        (
            format!("[Relais] Access logs of {date} ready — {site}"),
            format!(
                "Hello,\n\nThe access logs of site {site} for {date} (UTC) are ready: {lines} lines from {edges} edge(s){}.\n\nDownload: {link}\nSHA-256: {sha256}\n\nThis message is automatic.\n",
                if complete {
                    ""
                } else {
                    " — INCOMPLETE: lines were dropped, see the manifest"
                }
            ),
        )
    } else {
        (
            format!("[Relais] Journaux du {date} disponibles — {site}"),
            format!(
                "Bonjour,\n\nLes journaux d'accès du site {site} pour le {date} (UTC) sont disponibles : {lines} lignes, {edges} serveur(s){}.\n\nTéléchargement : {link}\nEmpreinte SHA-256 : {sha256}\n\nCe message est automatique.\n",
                if complete {
                    ""
                } else {
                    " — INCOMPLETS : des lignes ont été perdues, voir le manifeste"
                }
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_in_both_languages() {
        let (s, b) = super::logs_ready(
            "fr",
            "mairie",
            "2026-11-22",
            10,
            2,
            false,
            "https://x/l",
            "abc",
        );
        assert!(s.contains("Journaux du 2026-11-22 disponibles — mairie"));
        assert!(b.contains("10 lignes, 2 serveur(s) — INCOMPLETS") && b.contains("https://x/l"));
        let (s, b) = super::logs_ready(
            "en",
            "mairie",
            "2026-11-22",
            10,
            2,
            true,
            "https://x/l",
            "abc",
        );
        assert!(s.contains("Access logs of 2026-11-22 ready"));
        assert!(b.contains("10 lines from 2 edge(s).") && !b.contains("INCOMPLETE"));
    }

    #[test]
    fn smtp_urls() {
        let c = super::SmtpConfig::parse("smtp://127.0.0.1:2525", "relais@example.fr").expect("ok");
        assert_eq!(
            (c.host.as_str(), c.port, c.starttls),
            ("127.0.0.1", 2525, false)
        );
        let c = super::SmtpConfig::parse("smtp+starttls://mail.example.fr", "relais@example.fr")
            .expect("ok");
        assert_eq!((c.port, c.starttls), (587, true));
        assert!(super::SmtpConfig::parse("http://x", "a@b.c").is_err());
        assert!(super::SmtpConfig::parse("smtp://x:25", "not an address").is_err());
    }
}
