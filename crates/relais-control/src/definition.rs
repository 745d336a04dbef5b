//! The site definition document (CDN-19): generated on request from the live configuration, so
//! it is current by construction. Markdown, and HTML rendered from that Markdown.

use std::fmt::Write;

use serde_json::Value;
use sqlx::Row;

use crate::Control;
use crate::auth::millis;
use crate::error::ApiResult;
use crate::sites::SiteRow;

fn when(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub async fn markdown(st: &Control, site: &SiteRow) -> ApiResult<String> {
    let (doc, label) = match site.published_version {
        Some(v) => (
            st.published_doc(site.id, v).await?,
            format!("version publiée / published version {v}"),
        ),
        None => (
            site.draft.clone(),
            "brouillon, jamais publié / draft, never published".to_owned(),
        ),
    };
    let org = st
        .db
        .q("SELECT name, slug FROM orgs WHERE id = ?")
        .bind(site.org_id)
        .fetch_one(&st.db.pool)
        .await?;
    let org_name: String = org.try_get("name")?;
    let org_slug: String = org.try_get("slug")?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Définition du service — {} / Service definition\n",
        site.name
    );
    let _ = writeln!(
        md,
        "Généré le {} à partir de la configuration en service ({label}). Ce document est recalculé à chaque demande.\n\nGenerated from the live configuration; it is recomputed on every request.\n",
        when(millis(st.clock.now()))
    );
    let _ = writeln!(
        md,
        "## Organisation\n\n- {} (`{}`)\n",
        cell(&org_name),
        org_slug
    );

    let _ = writeln!(md, "## Domaines / Domains\n");
    for h in &doc.hosts {
        let _ = writeln!(md, "- `{h}`");
    }
    let _ = writeln!(
        md,
        "- Pré-production / staging: `{}`\n",
        relais_edge::proto::staging_host(&site.name, &st.opts.staging_domain)
    );

    let _ = writeln!(md, "## Serveurs de diffusion / Edges\n");
    let edges = st.edges_json().await?;
    if edges.is_empty() {
        let _ = writeln!(md, "Aucun serveur enregistré / no edge registered.\n");
    } else {
        let _ = writeln!(
            md,
            "| Edge | Adresses / addresses | Dernier contact / last seen | À jour / up to date |\n|---|---|---|---|"
        );
        for e in &edges {
            let listen: Vec<String> = e["listen"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let seen = e["last_seen_at"]
                .as_i64()
                .map(when)
                .unwrap_or_else(|| "—".into());
            let ok = e["vouched"].as_bool().unwrap_or(false) && e["config_error"].is_null();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                cell(e["name"].as_str().unwrap_or("")),
                cell(&listen.join(", ")),
                seen,
                if ok { "oui / yes" } else { "non / no" }
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Origines / Origins\n");
    let _ = writeln!(
        md,
        "| # | URL | En-tête Host / Host header | Connexion / connect | Réponse / response | Sonde / health check |\n|---|---|---|---|---|---|"
    );
    for (i, o) in doc.origins.iter().enumerate() {
        let health = o
            .health
            .as_ref()
            .map(|h| {
                format!(
                    "{} every {}",
                    h.path.as_deref().unwrap_or("/"),
                    h.interval.as_deref().unwrap_or("5s")
                )
            })
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} |",
            i + 1,
            cell(&o.url),
            cell(
                o.host
                    .as_deref()
                    .unwrap_or("(domaine demandé / requested host)")
            ),
            o.connect_timeout.as_deref().unwrap_or("5s"),
            o.response_timeout.as_deref().unwrap_or("60s"),
            cell(&health)
        );
    }
    let _ = writeln!(
        md,
        "\nLes origines sont essayées dans l'ordre ; une origine en échec est contournée. Origins are tried in order; a failing origin is skipped.\n"
    );

    let _ = writeln!(md, "## TLS\n");
    let _ = writeln!(
        md,
        "{}\n",
        if doc.tls.is_some() {
            "Certificat propre au site, choisi par SNI ; HTTP/2 et HTTP/1.1. / Site certificate chosen by SNI; HTTP/2 and HTTP/1.1."
        } else {
            "Pas de certificat propre au site (HTTP, ou certificat de la plateforme). / No site certificate (HTTP, or the platform's)."
        }
    );

    let _ = writeln!(md, "## Mode\n");
    let _ = writeln!(md, "- `{}`", doc.mode.as_deref().unwrap_or("active"));
    for s in &doc.schedules {
        let _ = writeln!(md, "- `{}` du / from {} au / to {}", s.mode, s.start, s.end);
    }
    md.push('\n');

    let _ = writeln!(md, "## Règles de cache / Cache rules\n");
    let _ = writeln!(
        md,
        "Sans règle, les en-têtes de l'origine s'appliquent (RFC 9111). La définition la plus spécifique l'emporte : page > répertoire > type de contenu > groupe > site. Without rules, the origin's headers apply; the most specific definition wins.\n"
    );
    if doc.rules.is_empty() {
        let _ = writeln!(md, "Aucune règle / no rule.\n");
    } else {
        let _ = writeln!(
            md,
            "| Règle / rule | Portée / scope | Réglages / settings |\n|---|---|---|"
        );
        for (i, r) in doc.rules.iter().enumerate() {
            let v = serde_json::to_value(r).unwrap_or(Value::Null);
            let mut scope = String::from("site");
            let mut settings = vec![];
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    let shown = match val {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match k.as_str() {
                        "id" => {}
                        "default" => scope = "site".into(),
                        "group" | "content_type" | "dir" | "page" => scope = format!("{k} {shown}"),
                        _ => settings.push(format!("{k} = {shown}")),
                    }
                }
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell(r.id.as_deref().unwrap_or(&format!("#{}", i + 1))),
                cell(&scope),
                cell(&settings.join(", "))
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Protection de l'origine / Origin protection\n");
    let _ = writeln!(
        md,
        "- Contenu périmé servi si l'origine est indisponible pendant / stale served when origins fail for: {}",
        doc.grace.as_deref().unwrap_or("24h")
    );
    let _ = writeln!(
        md,
        "- Requêtes simultanées regroupées (une seule requête à l'origine par objet) / concurrent misses coalesced into one origin request"
    );
    let _ = writeln!(
        md,
        "- Disjoncteur sur connexions refusées et délais, pause de 5 s par URL après une erreur 5xx / circuit breaker on refused connections and timeouts, 5 s per-URL back-off after a 5xx"
    );
    let _ = writeln!(
        md,
        "- Corps de requête limité à / request bodies limited to {} octets / bytes",
        doc.max_body_bytes.map_or(100 << 20, |b| b.0)
    );
    Ok(md)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Inline Markdown we emit: `code` only.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Renders the Markdown this module writes (headings, lists, tables, paragraphs).
pub fn html(md: &str) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\"><title>Définition du service</title>\
         <style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
         table{border-collapse:collapse}td,th{border:1px solid #999;padding:.3rem .5rem;text-align:left}</style></head><body>\n",
    );
    let mut in_list = false;
    let mut table: Vec<Vec<String>> = vec![];
    let flush_table = |out: &mut String, table: &mut Vec<Vec<String>>| {
        if table.is_empty() {
            return;
        }
        out.push_str("<table>\n");
        for (i, row) in table.iter().enumerate() {
            let tag = if i == 0 { "th" } else { "td" };
            out.push_str("<tr>");
            for c in row {
                let _ = write!(out, "<{tag}>{}</{tag}>", inline(c));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        table.clear();
    };
    for line in md.lines() {
        let t = line.trim_end();
        if t.starts_with('|') {
            let cells: Vec<String> = t
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().replace("\\|", "|"))
                .collect();
            if !cells.iter().all(|c| c.chars().all(|x| x == '-')) {
                table.push(cells);
            }
            continue;
        }
        flush_table(&mut out, &mut table);
        if let Some(item) = t.strip_prefix("- ") {
            if !in_list {
                out.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(out, "<li>{}</li>", inline(item));
            continue;
        }
        if in_list {
            out.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(h) = t.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = t.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
        } else if !t.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(t));
        }
    }
    flush_table(&mut out, &mut table);
    if in_list {
        out.push_str("</ul>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_escapes_and_renders_tables() {
        let h = super::html("# T <x>\n\n| a | b |\n|---|---|\n| `c` | d\\|e |\n\n- item\n");
        assert!(h.contains("<h1>T &lt;x&gt;</h1>"));
        assert!(h.contains("<tr><th>a</th><th>b</th></tr>"));
        assert!(h.contains("<td><code>c</code></td><td>d|e</td>"));
        assert!(h.contains("<li>item</li>"));
    }
}
