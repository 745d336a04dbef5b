//! The built-in SFTP server (russh): a customer's people sign in with their password or an SSH
//! key registered on their account, and see only the access-log days of their organisations'
//! sites, read-only.
//!
//! The file system is virtual: `/` lists the sites the person may read, `/<site>/` that site's
//! stored days (`<site>-<date>.log.gz` and its manifest). Client paths are never joined to a
//! real path: a path is parsed into a site the person may read and a file name of the expected
//! shape, and only then mapped into the log store, so `..` and symlinks lead nowhere.
//! Anything that writes answers "permission denied".

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::server::{Auth, Msg, Server as _, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use sqlx::Row;

use crate::Control;
use crate::auth::{Actor, Who, hex, random_bytes, verify_password};
use crate::db::col;

/// Starts the SFTP listener; returns the bound address.
pub async fn serve(
    ctl: Arc<Control>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let seed = host_seed(&ctl).await.map_err(std::io::Error::other)?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let config = Arc::new(russh::server::Config {
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        inactivity_timeout: Some(Duration::from_secs(600)),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut server = SftpServer { ctl };
    let task = tokio::spawn(async move {
        if let Err(e) = server.run_on_socket(config, &listener).await {
            tracing::error!(error = %e, "SFTP listener failed");
        }
    });
    Ok((local, task))
}

/// The host key's seed, created once and kept in the database (clients see a stable key).
async fn host_seed(ctl: &Control) -> Result<[u8; 32], String> {
    let row = ctl
        .db
        .q("SELECT value FROM settings WHERE name = 'sftp_host_seed'")
        .fetch_optional(&ctl.db.pool)
        .await
        .map_err(|e| e.to_string())?;
    let hexs: String = match row {
        Some(r) => r.try_get("value").map_err(|e| e.to_string())?,
        None => {
            let h = hex(&random_bytes::<32>());
            ctl.db
                .q("INSERT INTO settings (name, value) VALUES ('sftp_host_seed', ?) ON CONFLICT (name) DO NOTHING")
                .bind(h.clone())
                .execute(&ctl.db.pool)
                .await
                .map_err(|e| e.to_string())?;
            h
        }
    };
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(hexs.get(2 * i..2 * i + 2).unwrap_or("00"), 16)
            .map_err(|e| e.to_string())?;
    }
    Ok(seed)
}

#[derive(Clone)]
struct SftpServer {
    ctl: Arc<Control>,
}

impl russh::server::Server for SftpServer {
    type Handler = SshSession;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> SshSession {
        SshSession {
            ctl: self.ctl.clone(),
            ip: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            user: None,
            channels: HashMap::new(),
        }
    }
}

struct SshSession {
    ctl: Arc<Control>,
    ip: String,
    /// (user id, e-mail, platform role) once authenticated.
    user: Option<(i64, String, Option<String>)>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl SshSession {
    async fn user_row(&self, email: &str) -> Option<sqlx::any::AnyRow> {
        self.ctl
            .db
            .q("SELECT id, email, password_hash, platform_role, totp_enabled FROM users WHERE email = ?")
            .bind(email.trim().to_ascii_lowercase())
            .fetch_optional(&self.ctl.db.pool)
            .await
            .ok()
            .flatten()
    }

    fn accept(&mut self, row: &sqlx::any::AnyRow) -> Auth {
        let id = col::<i64>(row, "id").unwrap_or(0);
        let email = col::<String>(row, "email").unwrap_or_default();
        let role = col::<Option<String>>(row, "platform_role").unwrap_or(None);
        tracing::info!(%email, ip = %self.ip, "SFTP sign-in");
        self.user = Some((id, email, role));
        Auth::Accept
    }
}

impl russh::server::Handler for SshSession {
    type Error = russh::Error;

    /// Passwords are accepted only for accounts without a second factor (an SFTP client cannot
    /// give a one-time code): people with TOTP use an SSH key.
    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let keys = vec![
            format!("email:{}", user.trim().to_ascii_lowercase()),
            format!("ip:{}", self.ip),
        ];
        if self.ctl.throttle_check(&keys).is_err() {
            return Ok(Auth::reject());
        }
        let row = self.user_row(user).await;
        let ok = match &row {
            Some(r) => {
                let hash = col::<String>(r, "password_hash").unwrap_or_default();
                let totp = col::<i64>(r, "totp_enabled").unwrap_or(1) != 0;
                let pw = password.to_owned();
                !totp
                    && tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
                        .await
                        .unwrap_or(false)
            }
            None => false,
        };
        match row {
            Some(r) if ok => {
                self.ctl.throttle_clear(&keys);
                Ok(self.accept(&r))
            }
            _ => {
                self.ctl.throttle_fail(&keys);
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some(row) = self.user_row(user).await else {
            return Ok(Auth::reject());
        };
        let id = col::<i64>(&row, "id").unwrap_or(0);
        let keys = self
            .ctl
            .db
            .q("SELECT key_text FROM ssh_keys WHERE user_id = ?")
            .bind(id)
            .fetch_all(&self.ctl.db.pool)
            .await
            .unwrap_or_default();
        let offered = key.public_key.key_data();
        let known = keys.iter().any(|k| {
            col::<String>(k, "key_text")
                .ok()
                .and_then(|t| russh::keys::PublicKey::from_openssh(&t).ok())
                .is_some_and(|p| p.key_data() == offered)
        });
        if known {
            Ok(self.accept(&row))
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.close(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(channel), Some((id, email, role))) =
            (self.channels.remove(&channel_id), self.user.clone())
        else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        if name != "sftp" {
            session.channel_failure(channel_id)?;
            return Ok(());
        }
        let actor = Actor {
            who: Who::User {
                id,
                email,
                platform_role: role,
                session_id: 0,
                mfa: true,
            },
            ip: self.ip.clone(),
        };
        let sites = readable_sites(&self.ctl, &actor).await;
        session.channel_success(channel_id)?;
        let fs = Fs {
            root: self.ctl.logs.as_ref().map(|s| s.root().to_path_buf()),
            sites,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next: 0,
        };
        tokio::spawn(russh_sftp::server::run(channel.into_stream(), fs));
        Ok(())
    }
}

async fn readable_sites(ctl: &Control, actor: &Actor) -> Vec<String> {
    let Ok(orgs) = ctl.visible_orgs(actor).await else {
        return vec![];
    };
    let mut out = vec![];
    for o in orgs {
        let rows = ctl
            .db
            .q("SELECT name FROM sites WHERE org_id = ? AND deleted_at IS NULL")
            .bind(o)
            .fetch_all(&ctl.db.pool)
            .await
            .unwrap_or_default();
        out.extend(rows.iter().filter_map(|r| col::<String>(r, "name").ok()));
    }
    out.sort();
    out
}

/// The virtual, read-only file system of one SFTP session.
struct Fs {
    root: Option<std::path::PathBuf>,
    sites: Vec<String>,
    files: HashMap<String, std::fs::File>,
    /// Directory handles: (entries, already sent).
    dirs: HashMap<String, (Vec<File>, bool)>,
    next: u64,
}

/// What a client path designates.
enum Node {
    Root,
    Site(String),
    /// (site, date, file name)
    File(String, String, String),
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = vec![];
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

fn status(id: u32, code: StatusCode, msg: &str) -> Status {
    Status {
        id,
        status_code: code,
        error_message: msg.to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

fn dir_attrs() -> FileAttributes {
    let mut a = FileAttributes::empty();
    a.set_dir(true);
    a.permissions = Some(0o40555);
    a
}

impl Fs {
    fn node(&self, path: &str) -> Option<Node> {
        let p = normalize(path);
        let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        match parts.as_slice() {
            [] => Some(Node::Root),
            [site] if self.sites.iter().any(|s| s == site) => Some(Node::Site((*site).to_owned())),
            [site, file] if self.sites.iter().any(|s| s == site) => {
                let rest = file.strip_prefix(&format!("{site}-"))?;
                let date = rest.get(0..10)?;
                let tail = rest.get(10..)?;
                (crate::logs::valid_date(date) && (tail == ".log.gz" || tail == ".manifest.json"))
                    .then(|| Node::File((*site).to_owned(), date.to_owned(), (*file).to_owned()))
            }
            _ => None,
        }
    }

    fn real(&self, site: &str, date: &str, file: &str) -> Option<std::path::PathBuf> {
        let p = self.root.as_ref()?.join(site).join(date).join(file);
        p.is_file().then_some(p)
    }

    fn file_attrs(len: u64, mtime: Option<u32>) -> FileAttributes {
        let mut a = FileAttributes::empty();
        a.set_regular(true);
        a.size = Some(len);
        a.permissions = Some(0o100444);
        a.mtime = mtime;
        a
    }

    fn listing(&self, node: &Node) -> Vec<File> {
        match node {
            Node::Root => self
                .sites
                .iter()
                .map(|s| File::new(s.clone(), dir_attrs()))
                .collect(),
            Node::Site(site) => {
                let mut out = vec![];
                let Some(root) = &self.root else { return out };
                let Ok(days) = std::fs::read_dir(root.join(site)) else {
                    return out;
                };
                for d in days.flatten() {
                    let date = d.file_name().to_string_lossy().into_owned();
                    for name in [
                        format!("{site}-{date}.log.gz"),
                        format!("{site}-{date}.manifest.json"),
                    ] {
                        if let Ok(m) = std::fs::metadata(d.path().join(&name)) {
                            let mtime = m
                                .modified()
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map(|d| d.as_secs() as u32);
                            out.push(File::new(name, Self::file_attrs(m.len(), mtime)));
                        }
                    }
                }
                out.sort_by(|a, b| a.filename.cmp(&b.filename));
                out
            }
            Node::File(..) => vec![],
        }
    }

    fn attrs(&self, path: &str) -> Result<FileAttributes, StatusCode> {
        match self.node(path) {
            Some(Node::Root) | Some(Node::Site(_)) => Ok(dir_attrs()),
            Some(Node::File(site, date, file)) => {
                let p = self
                    .real(&site, &date, &file)
                    .ok_or(StatusCode::NoSuchFile)?;
                let m = std::fs::metadata(p).map_err(|_| StatusCode::NoSuchFile)?;
                Ok(Self::file_attrs(m.len(), None))
            }
            None => Err(StatusCode::NoSuchFile),
        }
    }

    fn handle(&mut self) -> String {
        self.next += 1;
        format!("h{}", self.next)
    }
}

impl russh_sftp::server::Handler for Fs {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::PermissionDenied
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        Ok(Name {
            id,
            files: vec![File::dummy(normalize(&path))],
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs {
            id,
            attrs: self.attrs(&path)?,
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs {
            id,
            attrs: self.attrs(&path)?,
        })
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let node = self.node(&path).ok_or(StatusCode::NoSuchFile)?;
        if matches!(node, Node::File(..)) {
            return Err(StatusCode::NoSuchFile);
        }
        let entries = self.listing(&node);
        let h = self.handle();
        self.dirs.insert(h.clone(), (entries, false));
        Ok(Handle { id, handle: h })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let (entries, sent) = self.dirs.get_mut(&handle).ok_or(StatusCode::Failure)?;
        if *sent {
            return Err(StatusCode::Eof);
        }
        *sent = true;
        Ok(Name {
            id,
            files: std::mem::take(entries),
        })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        if pflags.intersects(
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        ) {
            return Err(StatusCode::PermissionDenied);
        }
        let Some(Node::File(site, date, file)) = self.node(&filename) else {
            return Err(StatusCode::NoSuchFile);
        };
        let p = self
            .real(&site, &date, &file)
            .ok_or(StatusCode::NoSuchFile)?;
        let f = std::fs::File::open(p).map_err(|_| StatusCode::NoSuchFile)?;
        let h = self.handle();
        self.files.insert(h.clone(), f);
        Ok(Handle { id, handle: h })
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let f = self.files.get_mut(&handle).ok_or(StatusCode::Failure)?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|_| StatusCode::Failure)?;
        let mut buf = vec![0u8; len.min(256 * 1024) as usize];
        let n = f.read(&mut buf).map_err(|_| StatusCode::Failure)?;
        if n == 0 {
            return Err(StatusCode::Eof);
        }
        buf.truncate(n);
        Ok(Data { id, data: buf })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let f = self.files.get(&handle).ok_or(StatusCode::Failure)?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Attrs {
            id,
            attrs: Self::file_attrs(len, None),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.files.remove(&handle);
        self.dirs.remove(&handle);
        Ok(status(id, StatusCode::Ok, "Ok"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_cannot_climb_out() {
        assert_eq!(super::normalize("/a/../../etc/passwd"), "/etc/passwd");
        assert_eq!(super::normalize("."), "/");
        assert_eq!(super::normalize("a//b/./c"), "/a/b/c");
    }
}
