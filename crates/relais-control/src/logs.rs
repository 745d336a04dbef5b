//! The platform's log store: every edge uploads each closed day of each site (the compressed
//! file and its manifest); the store keeps them and merges them into one daily file per site,
//! its lines in time order, with a platform manifest listing what each edge contributed. A
//! directory today; [`LogStore`] is the boundary an S3-compatible store would implement.
//!
//! Layout: `<root>/<site>/<date>/edges/<edge>.log.gz` (+ `.manifest.json`) and
//! `<root>/<site>/<date>/<site>-<date>.log.gz` (+ `<site>-<date>.manifest.json`).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use relais_edge::accesslog::{Manifest, write_atomic};
use serde::{Deserialize, Serialize};

/// What the platform says about one site-day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DayManifest {
    pub site: String,
    pub date: String,
    pub file: String,
    pub lines: u64,
    pub bytes: u64,
    pub sha256: String,
    pub gz_sha256: String,
    /// Every edge delivered a complete day (no line dropped).
    pub complete: bool,
    pub edges: Vec<EdgePart>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EdgePart {
    pub edge: String,
    pub lines: u64,
    pub sha256: String,
    pub dropped: u64,
    pub complete: bool,
    pub client_ip: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("the file does not match its manifest ({0})")]
    Mismatch(&'static str),
    #[error("log store: {0}")]
    Io(#[from] io::Error),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

/// A `YYYY-MM-DD` date.
pub fn valid_date(s: &str) -> bool {
    relais_edge::accesslog::parse_date(s).is_some()
}

fn sha256(b: &[u8]) -> String {
    relais_edge::accesslog::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A directory-backed log store.
#[derive(Debug, Clone)]
pub struct LogStore {
    root: PathBuf,
}

/// The sort key of a line: seconds since the epoch when its time can be read.
fn line_time(line: &str) -> Option<i64> {
    use relais_edge::accesslog::{MONTHS, days_from_civil};
    let secs = |y: i64, mon: i64, d: i64, t: &str| -> Option<i64> {
        let h: i64 = t.get(0..2)?.parse().ok()?;
        let mi: i64 = t.get(3..5)?.parse().ok()?;
        let s: i64 = t.get(6..8)?.parse().ok()?;
        Some(days_from_civil(y, mon, d) * 86_400 + h * 3600 + mi * 60 + s)
    };
    // Combined / Common: [22/Nov/2026:08:22:03 +0000]
    if let Some(i) = line.find(" [") {
        let t = line.get(i + 2..i + 22)?;
        let mon = MONTHS.iter().position(|m| Some(*m) == t.get(3..6))? as i64 + 1;
        return secs(
            t.get(7..11)?.parse().ok()?,
            mon,
            t.get(0..2)?.parse().ok()?,
            t.get(12..20)?,
        );
    }
    // W3C: 2026-11-22 08:22:03 …
    secs(
        line.get(0..4)?.parse().ok()?,
        line.get(5..7)?.parse().ok()?,
        line.get(8..10)?.parse().ok()?,
        line.get(11..19)?,
    )
}

impl LogStore {
    pub fn new(root: PathBuf) -> LogStore {
        LogStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn day_dir(&self, site: &str, date: &str) -> PathBuf {
        self.root.join(site).join(date)
    }

    /// Stores one edge's day after checking it against its manifest, then re-merges the day.
    pub fn put(&self, edge: &str, manifest: &Manifest, gz: &[u8]) -> Result<DayManifest, LogError> {
        if !valid_name(edge) {
            return Err(LogError::Invalid("edge name"));
        }
        if !valid_name(&manifest.site) {
            return Err(LogError::Invalid("site"));
        }
        if !valid_date(&manifest.date) {
            return Err(LogError::Invalid("date"));
        }
        if sha256(gz) != manifest.gz_sha256 {
            return Err(LogError::Mismatch("gz_sha256"));
        }
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut plain)
            .map_err(|_| LogError::Invalid("gzip data"))?;
        if sha256(&plain) != manifest.sha256 || plain.len() as u64 != manifest.bytes {
            return Err(LogError::Mismatch("sha256"));
        }
        let dir = self.day_dir(&manifest.site, &manifest.date).join("edges");
        fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(format!("{edge}.log.gz")), gz)?;
        write_atomic(
            &dir.join(format!("{edge}.manifest.json")),
            &serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?,
        )?;
        self.merge(&manifest.site, &manifest.date)
    }

    /// Merges every edge's part of a day into one file, lines in time order.
    pub fn merge(&self, site: &str, date: &str) -> Result<DayManifest, LogError> {
        let day = self.day_dir(site, date);
        let mut parts = vec![];
        for e in fs::read_dir(day.join("edges"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(edge) = name.strip_suffix(".manifest.json") {
                let m: Manifest = serde_json::from_slice(&fs::read(e.path())?)
                    .map_err(|_| LogError::Invalid("stored manifest"))?;
                parts.push((edge.to_owned(), m));
            }
        }
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        // k-way merge: each edge's lines are already in time order.
        let mut readers: Vec<std::io::Lines<BufReader<flate2::read::GzDecoder<File>>>> = vec![];
        for (edge, _) in &parts {
            let f = File::open(day.join("edges").join(format!("{edge}.log.gz")))?;
            readers.push(BufReader::new(flate2::read::GzDecoder::new(f)).lines());
        }
        let file = format!("{site}-{date}.log.gz");
        let tmp = day.join(format!("{file}.tmp"));
        let mut out = flate2::write::GzEncoder::new(
            BufWriter::new(File::create(&tmp)?),
            flate2::Compression::default(),
        );
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut emit =
            |out: &mut flate2::write::GzEncoder<BufWriter<File>>, l: &str| -> io::Result<()> {
                ctx.update(l.as_bytes());
                ctx.update(b"\n");
                lines += 1;
                bytes += l.len() as u64 + 1;
                out.write_all(l.as_bytes())?;
                out.write_all(b"\n")
            };
        let mut heads: Vec<Option<String>> = vec![];
        let mut header_done = false;
        for r in readers.iter_mut() {
            let mut first = r.next().transpose()?;
            // W3C directives: written once, from the first edge that has them.
            let mut had_header = false;
            while let Some(l) = &first {
                if !l.starts_with('#') {
                    break;
                }
                if !header_done {
                    emit(&mut out, l)?;
                    had_header = true;
                }
                first = r.next().transpose()?;
            }
            header_done |= had_header;
            heads.push(first);
        }
        loop {
            let next = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|l| (i, line_time(l).unwrap_or(i64::MAX))))
                .min_by_key(|(i, t)| (*t, *i));
            let Some((i, _)) = next else { break };
            if let Some(l) = heads[i].take() {
                emit(&mut out, &l)?;
            }
            let mut n = readers[i].next().transpose()?;
            while n.as_deref().is_some_and(|l| l.starts_with('#')) {
                n = readers[i].next().transpose()?;
            }
            heads[i] = n;
        }
        let f = out.finish()?.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let path = day.join(&file);
        fs::rename(&tmp, &path)?;
        let gz_sha256 = relais_edge::accesslog::sha256_file(&path)?;
        let m = DayManifest {
            site: site.to_owned(),
            date: date.to_owned(),
            file,
            lines,
            bytes,
            sha256: relais_edge::accesslog::hex(ctx.finish().as_ref()),
            gz_sha256,
            complete: parts.iter().all(|(_, m)| m.complete),
            edges: parts
                .iter()
                .map(|(edge, m)| EdgePart {
                    edge: edge.clone(),
                    lines: m.lines,
                    sha256: m.sha256.clone(),
                    dropped: m.dropped,
                    complete: m.complete,
                    client_ip: m.client_ip.clone(),
                })
                .collect(),
        };
        write_atomic(
            &day.join(format!("{site}-{date}.manifest.json")),
            &serde_json::to_vec_pretty(&m).map_err(io::Error::other)?,
        )?;
        Ok(m)
    }

    /// The days stored for a site, newest first, with their manifests.
    pub fn days(&self, site: &str) -> Result<Vec<DayManifest>, LogError> {
        if !valid_name(site) {
            return Err(LogError::Invalid("site"));
        }
        let mut out = vec![];
        let Ok(rd) = fs::read_dir(self.root.join(site)) else {
            return Ok(out);
        };
        for d in rd.flatten() {
            let date = d.file_name().to_string_lossy().into_owned();
            let p = d.path().join(format!("{site}-{date}.manifest.json"));
            if let Ok(b) = fs::read(&p)
                && let Ok(m) = serde_json::from_slice::<DayManifest>(&b)
            {
                out.push(m);
            }
        }
        out.sort_by(|a, b| b.date.cmp(&a.date));
        Ok(out)
    }

    /// The merged file of a day.
    pub fn file(&self, site: &str, date: &str) -> Result<PathBuf, LogError> {
        if !valid_name(site) {
            return Err(LogError::Invalid("site"));
        }
        if !valid_date(date) {
            return Err(LogError::Invalid("date"));
        }
        let p = self
            .day_dir(site, date)
            .join(format!("{site}-{date}.log.gz"));
        if p.exists() {
            Ok(p)
        } else {
            Err(LogError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                "no such day",
            )))
        }
    }

    /// Removes a site's days strictly before `cutoff` (YYYY-MM-DD); returns how many.
    pub fn expire(&self, site: &str, cutoff: &str) -> Result<usize, LogError> {
        let mut n = 0;
        let Ok(rd) = fs::read_dir(self.root.join(site)) else {
            return Ok(0);
        };
        for d in rd.flatten() {
            let date = d.file_name().to_string_lossy().into_owned();
            if valid_date(&date) && date.as_str() < cutoff {
                fs::remove_dir_all(d.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sites with stored logs.
    pub fn sites(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|s| valid_name(s))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl crate::Control {
    /// Removes stored days older than each site's organisation allows (whole months before
    /// today, at least 6). Returns how many site-days were removed.
    pub async fn expire_logs(&self) -> crate::error::ApiResult<usize> {
        let Some(store) = &self.logs else {
            return Ok(0);
        };
        let (y, m, d) = relais_edge::accesslog::civil(self.today());
        let mut removed = 0;
        for site in store.sites() {
            let r = self
                .db
                .q("SELECT o.log_retention_months AS months FROM sites s JOIN orgs o ON o.id = s.org_id WHERE s.name = ?")
                .bind(site.clone())
                .fetch_optional(&self.db.pool)
                .await?;
            let months = match r {
                Some(r) => crate::db::col::<i64>(&r, "months")?.max(6),
                None => 13,
            };
            let total = y * 12 + (m as i64 - 1) - months;
            let cutoff = format!(
                "{:04}-{:02}-{:02}",
                total.div_euclid(12),
                total.rem_euclid(12) + 1,
                d.min(28)
            );
            let store = store.clone();
            let s = site.clone();
            removed += tokio::task::spawn_blocking(move || store.expire(&s, &cutoff))
                .await
                .map_err(|_| crate::error::ApiError::new("internal", "internal error"))?
                .map_err(|e| {
                    tracing::error!(error = %e, "log expiry");
                    crate::error::ApiError::new("internal", "internal error")
                })?;
        }
        if removed > 0 {
            tracing::info!(removed, "expired access-log days removed");
        }
        Ok(removed)
    }

    /// Sends "logs ready" to the site's organisation once every registered edge has delivered
    /// its part of the day; at most once per site-day (a marker in the store). Returns whether a
    /// message was sent.
    pub async fn notify_log_day(&self, site: &str, date: &str) -> crate::error::ApiResult<bool> {
        let (Some(store), Some(mailer)) = (&self.logs, &self.mailer) else {
            return Ok(false);
        };
        let marker = store.root().join(site).join(date).join("notified");
        if marker.exists() {
            return Ok(false);
        }
        // One sender per site-day at a time: two deliveries finishing together (or the hourly
        // retry) must not both send, and a caller waits for a send in progress.
        let _claim = self.notify_lock.lock().await;
        if marker.exists() {
            return Ok(false);
        }
        let Some(day) = store
            .days(site)
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.date == date)
        else {
            return Ok(false);
        };
        let edges = self
            .db
            .q("SELECT COUNT(*) AS n FROM edges")
            .fetch_one(&self.db.pool)
            .await?;
        if (day.edges.len() as i64) < crate::db::col::<i64>(&edges, "n")? {
            return Ok(false);
        }
        let Some(row) = self
            .db
            .q("SELECT s.id, o.log_recipients, o.language FROM sites s JOIN orgs o ON o.id = s.org_id WHERE s.name = ?")
            .bind(site.to_owned())
            .fetch_optional(&self.db.pool)
            .await?
        else {
            return Ok(false);
        };
        let recipients: Vec<String> =
            serde_json::from_str(&crate::db::col::<String>(&row, "log_recipients")?)
                .unwrap_or_default();
        if recipients.is_empty() {
            return Ok(false);
        }
        let id: i64 = crate::db::col(&row, "id")?;
        let lang: String = crate::db::col(&row, "language")?;
        let link = format!(
            "{}/api/v1/sites/{id}/logs/{date}",
            self.opts
                .public_url
                .as_deref()
                .unwrap_or("")
                .trim_end_matches('/')
        );
        let (subject, body) = crate::mail::logs_ready(
            &lang,
            site,
            date,
            day.lines,
            day.edges.len(),
            day.complete,
            &link,
            &day.sha256,
        );
        mailer
            .send(&recipients, &subject, &body)
            .await
            .map_err(|e| crate::error::ApiError::new("internal", e))?;
        std::fs::write(&marker, b"")
            .map_err(|e| crate::error::ApiError::new("internal", e.to_string()))?;
        tracing::info!(
            site,
            date,
            recipients = recipients.len(),
            "logs-ready mail sent"
        );
        Ok(true)
    }

    /// Runs the hourly jobs (log and statistics retention, weekly reports) until the process ends.
    pub fn spawn_jobs(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tick.tick().await;
                if let Err(e) = me.expire_logs().await {
                    tracing::warn!(error = e.message, "log expiry failed");
                }
                if let Err(e) = me.expire_stats().await {
                    tracing::warn!(error = e.message, "statistics expiry failed");
                }
                if let Err(e) = me.send_weekly_reports().await {
                    tracing::warn!(error = e.message, "weekly reports not sent");
                }
                // Messages that could not be sent when the day arrived.
                if let Some(store) = &me.logs {
                    for site in store.sites() {
                        for day in store.days(&site).unwrap_or_default().into_iter().take(3) {
                            if let Err(e) = me.notify_log_day(&site, &day.date).await {
                                tracing::warn!(site, error = e.message, "logs-ready mail not sent");
                            }
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(edge: &str, site: &str, lines: &[&str]) -> (Manifest, Vec<u8>) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).expect("gz");
        let gz = enc.finish().expect("gz");
        let m = Manifest {
            site: site.into(),
            date: "2026-11-22".into(),
            format: "combined".into(),
            file: format!("{edge}.log.gz"),
            lines: lines.len() as u64,
            bytes: text.len() as u64,
            sha256: sha256(text.as_bytes()),
            gz_sha256: sha256(&gz),
            dropped: 0,
            complete: true,
            client_ip: "full".into(),
            previous: None,
        };
        (m, gz)
    }

    #[test]
    fn edges_merge_into_one_time_ordered_day() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LogStore::new(dir.path().to_path_buf());
        let l = |t: &str, p: &str| {
            format!("1.2.3.4 - - [22/Nov/2026:{t} +0000] \"GET {p} HTTP/1.1\" 200 5 \"-\" \"-\"")
        };
        let a = [l("08:00:01", "/a1"), l("08:00:05", "/a2")];
        let b = [l("08:00:03", "/b1"), l("08:00:07", "/b2")];
        let (ma, ga) = part(
            "paris-1",
            "s",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let (mb, gb) = part(
            "lyon-1",
            "s",
            &b.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        store.put("paris-1", &ma, &ga).expect("put");
        let day = store.put("lyon-1", &mb, &gb).expect("put");
        assert_eq!(day.lines, 4);
        assert_eq!(day.edges.len(), 2);
        let mut text = String::new();
        flate2::read::GzDecoder::new(
            File::open(store.file("s", "2026-11-22").expect("file")).expect("open"),
        )
        .read_to_string(&mut text)
        .expect("gunzip");
        let order: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(6).unwrap_or(""))
            .collect();
        assert_eq!(order, ["/a1", "/b1", "/a2", "/b2"]);
        assert_eq!(day.sha256, sha256(text.as_bytes()));
        // Re-delivery replaces the edge's part; a corrupt one is refused.
        assert_eq!(store.put("lyon-1", &mb, &gb).expect("again").lines, 4);
        let mut bad = gb.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        assert!(matches!(
            store.put("lyon-1", &mb, &bad),
            Err(LogError::Mismatch(_))
        ));
        assert!(matches!(
            store.put("../x", &mb, &gb),
            Err(LogError::Invalid(_))
        ));
        assert_eq!(store.days("s").expect("days").len(), 1);
        assert_eq!(store.expire("s", "2026-11-22").expect("expire"), 0);
        assert_eq!(store.expire("s", "2026-11-23").expect("expire"), 1);
        assert!(store.days("s").expect("days").is_empty());
    }

    #[test]
    fn times_are_read_from_both_formats() {
        assert_eq!(
            line_time("1.2.3.4 - - [01/Jan/1970:00:01:00 +0000] \"GET / HTTP/1.1\" 200 -"),
            Some(60)
        );
        assert_eq!(
            line_time("1970-01-02 00:00:01 1.2.3.4 GET / - 200 0 0.001 - -"),
            Some(86_401)
        );
    }
}
