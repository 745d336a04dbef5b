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

/// Bytes in decimal units (what operators bill in).
pub fn human_bytes(n: u64, fr: bool) -> String {
    let units: [&str; 5] = if fr {
        ["o", "ko", "Mo", "Go", "To"]
    } else {
        ["B", "kB", "MB", "GB", "TB"]
    };
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let s = if i == 0 {
        format!("{n} {}", units[0])
    } else {
        format!("{v:.1} {}", units[i])
    };
    if fr { s.replace('.', ",") } else { s }
}

/// A ratio as a percentage with one decimal, in the reader's convention.
pub fn percent(r: Option<f64>, fr: bool) -> String {
    match r {
        None => if fr { "sans objet" } else { "n/a" }.into(),
        Some(r) => {
            let s = format!("{:.1} %", r * 100.0);
            if fr {
                s.replace('.', ",")
            } else {
                s.replace(" %", "%")
            }
        }
    }
}

/// One metric of the weekly report: (label, value).
pub fn metric_line(metric: &str, a: &relais_edge::stats::Agg, fr: bool) -> (String, String) {
    let (l_fr, l_en, v) = match metric {
        "requests" => ("Requêtes", "Requests", a.requests.to_string()),
        "visitors" => (
            "Visiteurs (estimation)",
            "Visitors (estimate)",
            a.visitors.estimate().to_string(),
        ),
        "bytes_sent" => ("Volume envoyé", "Data sent", human_bytes(a.bytes_sent, fr)),
        "hit_ratio" => (
            "Taux de succès du cache (requêtes)",
            "Cache hit ratio (requests)",
            percent(a.hit_ratio(), fr),
        ),
        "byte_hit_ratio" => (
            "Taux de succès du cache (octets)",
            "Cache hit ratio (bytes)",
            percent(a.byte_hit_ratio(), fr),
        ),
        "under_2s" => (
            "Réponses en moins de 2 s",
            "Responses under 2 s",
            percent(a.under_2s(), fr),
        ),
        "errors" => ("Erreurs (5xx)", "Errors (5xx)", a.errors.to_string()),
        _ => (
            "Codes 2xx / 3xx / 4xx / 5xx",
            "Status 2xx / 3xx / 4xx / 5xx",
            format!(
                "{} / {} / {} / {}",
                a.status[1], a.status[2], a.status[3], a.status[4]
            ),
        ),
    };
    ((if fr { l_fr } else { l_en }).to_owned(), v)
}

/// The weekly statistics report: (subject, body).
#[allow(clippy::too_many_arguments)]
pub fn weekly_report(
    lang: &str,
    org: &str,
    from: &str,
    to: &str,
    metrics: &[String],
    sites: &[(String, relais_edge::stats::Agg)],
    total: &relais_edge::stats::Agg,
    link: &str,
) -> (String, String) {
    let fr = lang != "en";
    let block = |title: &str, a: &relais_edge::stats::Agg| {
        let mut b = format!("{title}\n");
        for m in metrics {
            let (l, v) = metric_line(m, a, fr);
            b.push_str(&format!("  {l}{} {v}\n", if fr { " :" } else { ":" }));
        }
        b
    };
    let mut body = if fr {
        format!("Bonjour,\n\nVoici les statistiques de {org} du {from} au {to} (UTC).\n\n")
    } else {
        format!("Hello,\n\nHere are the statistics of {org} from {from} to {to} (UTC).\n\n")
    };
    for (s, a) in sites {
        body.push_str(&block(s, a));
        body.push('\n');
    }
    if sites.len() > 1 {
        body.push_str(&block(
            if fr {
                "Ensemble des sites"
            } else {
                "All sites"
            },
            total,
        ));
        body.push('\n');
    }
    body.push_str(&if fr {
        format!("Détail et exports : {link}\n\nCe message est automatique ; les indicateurs se choisissent dans l'extranet.\n")
    } else {
        format!("Details and exports: {link}\n\nThis message is automatic; choose its metrics in the extranet.\n")
    });
    let subject = if fr {
        format!("[Relais] Statistiques de la semaine du {from} — {org}")
    } else {
        format!("[Relais] Statistics for the week of {from} — {org}")
    };
    (subject, body)
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
