//! Who is calling and what they may do: password hashing (argon2id), TOTP (RFC 6238), session
//! and API tokens (random, shown once, stored as SHA-256), sign-in throttling, and the
//! permission check every endpoint goes through.
//!
//! Rights: a role held in an organisation applies to it and to every organisation below it.
//! Objects of organisations the caller cannot read answer 404, never 403, so that tenants
//! cannot even learn what exists elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use ring::rand::SecureRandom;
use sqlx::Row;

use crate::Control;
use crate::db::col;
use crate::error::{ApiError, ApiResult};

pub const SESSION_COOKIE: &str = "relais_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures allowed per account, and per client address (offices share addresses).
const THROTTLE_MAX: u32 = 5;
const THROTTLE_MAX_IP: u32 = 50;

// -------------------------------------------------------------------------------------------
// Primitives
// -------------------------------------------------------------------------------------------

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SystemRandom only fails if the OS has no entropy source, which we cannot work around.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        panic!("the operating system's random number generator failed");
    }
    b
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(s: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, s).as_ref())
}

/// A new secret token with a recognisable prefix (`rss_` session, `rls_` API, `rle_` edge).
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", hex(&random_bytes::<24>()))
}

pub fn hash_password(pw: &str) -> Result<String, ApiError> {
    argon2::Argon2::default()
        .hash_password(pw.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            ApiError::new("internal", "internal error")
        })
}

pub fn verify_password(pw: &str, hash: &str) -> bool {
    match argon2::password_hash::phc::PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(pw.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn check_password_policy(pw: &str) -> ApiResult<()> {
    if pw.chars().count() < 12 {
        return Err(ApiError::invalid(
            "password",
            "at least 12 characters / au moins 12 caractères",
        ));
    }
    if pw.len() > 1024 {
        return Err(ApiError::invalid("password", "at most 1024 bytes"));
    }
    Ok(())
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub fn base32(data: &[u8]) -> String {
    let mut out = String::new();
    let mut buf: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(B32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(B32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=' && *c != b' ') {
        let v = B32.iter().position(|x| *x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// The RFC 6238 code (HMAC-SHA1, 30 s steps, 6 digits) for a time step.
pub fn totp_code(secret: &[u8], step: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, &step.to_be_bytes());
    let h = tag.as_ref();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = ((h[off] as u32 & 0x7f) << 24)
        | ((h[off + 1] as u32) << 16)
        | ((h[off + 2] as u32) << 8)
        | (h[off + 3] as u32);
    format!("{:06}", bin % 1_000_000)
}

pub fn totp_step(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 30
}

/// Checks a code against the steps around `now` (±1, for clock drift); returns the step it
/// matched, which must be later than the last one used (no replay).
pub fn totp_verify(secret_b32: &str, code: &str, now: SystemTime, last_step: u64) -> Option<u64> {
    let secret = base32_decode(secret_b32)?;
    let code = code.trim();
    let step = totp_step(now);
    [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|s| *s > last_step && totp_code(&secret, *s) == code)
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

// -------------------------------------------------------------------------------------------
// Callers and rights
// -------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Perm {
    Read,
    Purge,
    Config,
    /// Users, roles, tokens, sub-organisations.
    Admin,
}

impl Perm {
    fn what(self) -> &'static str {
        match self {
            Perm::Read => "reading this",
            Perm::Purge => "purging",
            Perm::Config => "changing configuration",
            Perm::Admin => "managing users, tokens and organisations",
        }
    }
}

pub const ROLES: &[&str] = &["admin", "editor", "viewer"];
pub const SCOPES: &[&str] = &["read", "purge", "config"];

fn role_allows(role: &str, p: Perm) -> bool {
    match role {
        "admin" => true,
        "editor" => p <= Perm::Config,
        "viewer" => p == Perm::Read,
        _ => false,
    }
}

fn scope_allows(scope: &str, p: Perm) -> bool {
    match scope {
        "config" => p <= Perm::Config,
        "purge" => p <= Perm::Purge,
        "read" => p == Perm::Read,
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub enum Who {
    User {
        id: i64,
        email: String,
        /// `admin` (platform administrator) or `operator`.
        platform_role: Option<String>,
        session_id: i64,
        mfa: bool,
    },
    Token {
        id: i64,
        org_id: i64,
        scope: String,
        name: String,
    },
}

#[derive(Debug, Clone)]
pub struct Actor {
    pub who: Who,
    pub ip: String,
}

impl Actor {
    /// How the audit journal names the caller.
    pub fn label(&self) -> String {
        match &self.who {
            Who::User { email, .. } => email.clone(),
            Who::Token { id, name, .. } => format!("token {name} (#{id})"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.who {
            Who::User { .. } => "user",
            Who::Token { .. } => "token",
        }
    }

    pub fn platform_role(&self) -> Option<&str> {
        match &self.who {
            Who::User { platform_role, .. } => platform_role.as_deref(),
            Who::Token { .. } => None,
        }
    }

    pub fn is_platform_admin(&self) -> bool {
        self.platform_role() == Some("admin")
    }

    /// Platform staff (administrators and operators) see every organisation.
    pub fn is_staff(&self) -> bool {
        self.platform_role().is_some()
    }

    pub fn user_id(&self) -> Option<i64> {
        match self.who {
            Who::User { id, .. } => Some(id),
            Who::Token { .. } => None,
        }
    }

    pub fn require_user(&self) -> ApiResult<i64> {
        self.user_id()
            .ok_or_else(|| ApiError::forbidden("this with an API token (sign in as a person)"))
    }
}

impl Control {
    /// The organisation and its ancestors, nearest first.
    pub async fn org_chain(&self, org_id: i64) -> ApiResult<Vec<i64>> {
        let mut chain = vec![];
        let mut cur = Some(org_id);
        while let Some(id) = cur {
            if chain.contains(&id) || chain.len() > 32 {
                break;
            }
            let row = self
                .db
                .q("SELECT parent_id FROM orgs WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?;
            let Some(row) = row else {
                if chain.is_empty() {
                    return Err(ApiError::not_found());
                }
                break;
            };
            chain.push(id);
            cur = col::<Option<i64>>(&row, "parent_id")?;
        }
        Ok(chain)
    }

    /// Checks that the caller may do `p` in organisation `org_id`: `not_found` if it cannot
    /// even read there, `forbidden` if it can read but not do this.
    pub async fn check(&self, actor: &Actor, org_id: i64, p: Perm) -> ApiResult<()> {
        match &actor.who {
            Who::User {
                id, platform_role, ..
            } => {
                if platform_role.is_some() {
                    // Staff: the organisation must exist.
                    self.org_chain(org_id).await?;
                    return Ok(());
                }
                let chain = self.org_chain(org_id).await?;
                let rows = self
                    .db
                    .q("SELECT org_id, role FROM memberships WHERE user_id = ?")
                    .bind(*id)
                    .fetch_all(&self.db.pool)
                    .await?;
                let mut best: Option<String> = None;
                for r in rows {
                    let o: i64 = col(&r, "org_id")?;
                    let role: String = col(&r, "role")?;
                    if chain.contains(&o) {
                        let rank = |x: &str| ROLES.iter().position(|y| *y == x).unwrap_or(9);
                        if best.as_deref().is_none_or(|b| rank(&role) < rank(b)) {
                            best = Some(role);
                        }
                    }
                }
                match best {
                    None => Err(ApiError::not_found()),
                    Some(r) if role_allows(&r, p) => Ok(()),
                    Some(_) => Err(ApiError::forbidden(p.what())),
                }
            }
            Who::Token {
                org_id: t, scope, ..
            } => {
                let chain = self.org_chain(org_id).await?;
                if !chain.contains(t) {
                    return Err(ApiError::not_found());
                }
                if scope_allows(scope, p) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(p.what()))
                }
            }
        }
    }

    /// Organisations the caller can read: all for staff, else every organisation at or below
    /// one where it holds a role (or its token's).
    pub async fn visible_orgs(&self, actor: &Actor) -> ApiResult<Vec<i64>> {
        let rows = self
            .db
            .q("SELECT id, parent_id FROM orgs ORDER BY id")
            .fetch_all(&self.db.pool)
            .await?;
        let mut all = Vec::with_capacity(rows.len());
        for r in rows {
            all.push((col::<i64>(&r, "id")?, col::<Option<i64>>(&r, "parent_id")?));
        }
        if actor.is_staff() {
            return Ok(all.into_iter().map(|(i, _)| i).collect());
        }
        let mut roots: Vec<i64> = match &actor.who {
            Who::Token { org_id, .. } => vec![*org_id],
            Who::User { id, .. } => {
                let rows = self
                    .db
                    .q("SELECT org_id FROM memberships WHERE user_id = ?")
                    .bind(*id)
                    .fetch_all(&self.db.pool)
                    .await?;
                rows.iter()
                    .map(|r| col::<i64>(r, "org_id"))
                    .collect::<Result<_, _>>()?
            }
        };
        descend(&mut roots, &all);
        roots.sort_unstable();
        Ok(roots)
    }

    /// Records a failed sign-in for these keys; `Err` when the caller must wait.
    pub fn throttle_check(&self, keys: &[String]) -> ApiResult<()> {
        let now = self.clock.now();
        let t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if let Some((n, first)) = t.get(k) {
                let age = now.duration_since(*first).unwrap_or_default();
                let max = if k.starts_with("ip:") {
                    THROTTLE_MAX_IP
                } else {
                    THROTTLE_MAX
                };
                if *n >= max && age < THROTTLE_WINDOW {
                    let mut e = ApiError::new(
                        "too_many_attempts",
                        "too many failed sign-ins; try again later / trop d'échecs de connexion, réessayez plus tard",
                    );
                    e.retry_after = Some((THROTTLE_WINDOW - age).as_secs().max(1));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub fn throttle_fail(&self, keys: &[String]) {
        let now = self.clock.now();
        let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() > 100_000 {
            t.retain(|_, (_, first)| {
                now.duration_since(*first).unwrap_or_default() < THROTTLE_WINDOW
            });
        }
        for k in keys {
            let e = t.entry(k.clone()).or_insert((0, now));
            if now.duration_since(e.1).unwrap_or_default() >= THROTTLE_WINDOW {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    pub fn throttle_clear(&self, keys: &[String]) {
        let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            t.remove(k);
        }
    }

    /// Resolves a bearer or cookie secret to a caller.
    pub async fn authenticate(&self, secret: &str, ip: String) -> ApiResult<Actor> {
        let now = millis(self.clock.now());
        let h = sha256_hex(secret.as_bytes());
        if secret.starts_with("rss_") {
            let row = self
                .db
                .q("SELECT s.id, s.user_id, s.mfa, s.expires_at, s.revoked_at, u.email, u.platform_role \
                    FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?")
                .bind(h)
                .fetch_optional(&self.db.pool)
                .await?
                .ok_or_else(ApiError::unauthenticated)?;
            let expires: i64 = col(&row, "expires_at")?;
            let revoked: Option<i64> = col(&row, "revoked_at")?;
            if revoked.is_some() || expires <= now {
                return Err(ApiError::unauthenticated());
            }
            let id: i64 = col(&row, "id")?;
            // Sliding expiry, written at most once a minute.
            let new_exp = now + SESSION_TTL.as_millis() as i64;
            if new_exp - expires > 60_000 {
                self.db
                    .q("UPDATE sessions SET last_seen_at = ?, expires_at = ? WHERE id = ?")
                    .bind(now)
                    .bind(new_exp)
                    .bind(id)
                    .execute(&self.db.pool)
                    .await?;
            }
            return Ok(Actor {
                who: Who::User {
                    id: col(&row, "user_id")?,
                    email: col(&row, "email")?,
                    platform_role: col(&row, "platform_role")?,
                    session_id: id,
                    mfa: col::<i64>(&row, "mfa")? != 0,
                },
                ip,
            });
        }
        if secret.starts_with("rls_") {
            let row = self
                .db
                .q("SELECT id, org_id, scope, name, expires_at, revoked_at, last_used_at FROM api_tokens WHERE token_hash = ?")
                .bind(h)
                .fetch_optional(&self.db.pool)
                .await?
                .ok_or_else(ApiError::unauthenticated)?;
            let expires: Option<i64> = col(&row, "expires_at")?;
            let revoked: Option<i64> = col(&row, "revoked_at")?;
            if revoked.is_some() || expires.is_some_and(|e| e <= now) {
                return Err(ApiError::unauthenticated());
            }
            let id: i64 = col(&row, "id")?;
            let last: Option<i64> = col(&row, "last_used_at")?;
            if last.is_none_or(|l| now - l > 60_000) {
                self.db
                    .q("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&self.db.pool)
                    .await?;
            }
            return Ok(Actor {
                who: Who::Token {
                    id,
                    org_id: col(&row, "org_id")?,
                    scope: col(&row, "scope")?,
                    name: col(&row, "name")?,
                },
                ip,
            });
        }
        Err(ApiError::unauthenticated())
    }
}

/// The secret a request carries: `Authorization: Bearer …`, else the session cookie.
pub fn request_secret(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

pub fn client_ip(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl FromRequestParts<Arc<Control>> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<Control>) -> ApiResult<Actor> {
        let secret = request_secret(parts).ok_or_else(ApiError::unauthenticated)?;
        let actor = st.authenticate(&secret, client_ip(parts)).await?;
        if let Who::User {
            platform_role: Some(_),
            mfa: false,
            ..
        } = &actor.who
            && !parts.uri.path().starts_with("/api/v1/auth/")
        {
            return Err(ApiError::new(
                "mfa_enrollment_required",
                "platform staff must enable a second factor first: POST /api/v1/auth/totp/setup then /confirm, and sign in again",
            ));
        }
        Ok(actor)
    }
}

/// Loads one row's `org_id` for an object and checks the caller's right on it (404 otherwise).
pub async fn org_of(st: &Control, sql: &str, id: i64) -> ApiResult<i64> {
    let row = st
        .db
        .q(sql)
        .bind(id)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(row.try_get::<i64, _>("org_id")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_matches_rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890" (8-digit codes there; the
        // last 6 digits are ours).
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59 / 30), "287082");
        assert_eq!(totp_code(secret, 1111111109 / 30), "081804");
        assert_eq!(totp_code(secret, 2000000000 / 30), "279037");
    }

    #[test]
    fn base32_round_trips() {
        let s = base32(b"12345678901234567890");
        assert_eq!(s, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            base32_decode(&s).as_deref(),
            Some(&b"12345678901234567890"[..])
        );
    }

    #[test]
    fn totp_refuses_replay_and_wrong_codes() {
        let secret = base32(b"12345678901234567890");
        let now = UNIX_EPOCH + Duration::from_secs(1111111109);
        let step = totp_step(now);
        assert_eq!(totp_verify(&secret, "081804", now, 0), Some(step));
        assert_eq!(totp_verify(&secret, "081804", now, step), None);
        assert_eq!(totp_verify(&secret, "000000", now, 0), None);
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn roles_and_scopes() {
        assert!(role_allows("editor", Perm::Config));
        assert!(!role_allows("editor", Perm::Admin));
        assert!(!role_allows("viewer", Perm::Purge));
        assert!(scope_allows("purge", Perm::Purge));
        assert!(!scope_allows("purge", Perm::Config));
        assert!(!scope_allows("config", Perm::Admin));
    }
}

/// The outcome of a successful sign-in.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub token: String,
    pub expires_at: i64,
    pub user_id: i64,
    pub email: String,
    pub platform_role: Option<String>,
    pub mfa: bool,
}

impl SignIn {
    /// Platform staff without a second factor must enrol before anything else.
    pub fn mfa_enrollment_required(&self) -> bool {
        self.platform_role.is_some() && !self.mfa
    }
}

/// The session cookie for a session token.
pub fn session_cookie(token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// An argon2 hash of a random password, verified when the e-mail is unknown so that both cases
/// take the same time.
fn dummy_hash() -> String {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password(&hex(&random_bytes::<16>())).unwrap_or_default())
        .clone()
}

impl Control {
    /// Checks credentials (and the TOTP code when enabled), with throttling, and opens a new
    /// session (a new token every time: sessions rotate on sign-in).
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        totp: Option<&str>,
        ip: &str,
        user_agent: &str,
    ) -> ApiResult<SignIn> {
        let email = email.trim().to_ascii_lowercase();
        let keys = vec![format!("email:{email}"), format!("ip:{ip}")];
        self.throttle_check(&keys)?;
        let row = self
            .db
            .q("SELECT id, name, password_hash, platform_role, totp_secret, totp_enabled, totp_last_step FROM users WHERE email = ?")
            .bind(email.clone())
            .fetch_optional(&self.db.pool)
            .await?;
        let hash = match &row {
            Some(r) => col::<String>(r, "password_hash")?,
            None => tokio::task::spawn_blocking(dummy_hash)
                .await
                .unwrap_or_default(),
        };
        let pw = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
            .await
            .unwrap_or(false);
        let Some(row) = row.filter(|_| ok) else {
            self.throttle_fail(&keys);
            tracing::info!(%email, %ip, "sign-in refused");
            return Err(ApiError::new(
                "bad_credentials",
                "wrong e-mail or password / e-mail ou mot de passe incorrect",
            ));
        };
        let user_id: i64 = col(&row, "id")?;
        let platform_role: Option<String> = col(&row, "platform_role")?;
        let totp_enabled = col::<i64>(&row, "totp_enabled")? != 0;
        let now = self.clock.now();
        if totp_enabled {
            let Some(code) = totp.filter(|c| !c.trim().is_empty()) else {
                return Err(ApiError::new(
                    "totp_required",
                    "enter the 6-digit code from your authenticator app / saisissez le code à 6 chiffres",
                ));
            };
            let secret: Option<String> = col(&row, "totp_secret")?;
            let last: i64 = col(&row, "totp_last_step")?;
            let step = secret
                .as_deref()
                .and_then(|s| totp_verify(s, code, now, last as u64));
            let Some(step) = step else {
                self.throttle_fail(&keys);
                return Err(ApiError::new(
                    "bad_totp",
                    "wrong or already used code / code erroné ou déjà utilisé",
                ));
            };
            self.db
                .q("UPDATE users SET totp_last_step = ? WHERE id = ?")
                .bind(step as i64)
                .bind(user_id)
                .execute(&self.db.pool)
                .await?;
        }
        self.throttle_clear(&keys);
        let token = new_token("rss_");
        let expires = millis(now) + SESSION_TTL.as_millis() as i64;
        let ua: String = user_agent.chars().take(200).collect();
        let actor = Actor {
            who: Who::User {
                id: user_id,
                email: email.clone(),
                platform_role: platform_role.clone(),
                session_id: 0,
                mfa: totp_enabled,
            },
            ip: ip.to_owned(),
        };
        let _w = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        self.db
            .q("INSERT INTO sessions (token_hash, user_id, mfa, created_at, last_seen_at, expires_at, ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(sha256_hex(token.as_bytes()))
            .bind(user_id)
            .bind(totp_enabled as i64)
            .bind(millis(now))
            .bind(millis(now))
            .bind(expires)
            .bind(ip.to_owned())
            .bind(ua)
            .execute(&mut *tx)
            .await?;
        crate::audit::record(
            &self.db,
            &mut tx,
            now,
            &actor,
            crate::audit::Change {
                org_id: None,
                action: "auth.login",
                target: format!("user {email}"),
                before: None,
                after: Some(serde_json::json!({"mfa": totp_enabled})),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(SignIn {
            token,
            expires_at: expires,
            user_id,
            email,
            platform_role,
            mfa: totp_enabled,
        })
    }

    /// Ends a session.
    pub async fn end_session(&self, session_id: i64) -> ApiResult<()> {
        self.db
            .q("UPDATE sessions SET revoked_at = ? WHERE id = ?")
            .bind(millis(self.clock.now()))
            .bind(session_id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Starts TOTP enrolment: a new secret (base32) and its otpauth:// URL.
    pub async fn totp_setup(&self, user_id: i64) -> ApiResult<(String, String)> {
        let r = self
            .db
            .q("SELECT email, totp_enabled FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_one(&self.db.pool)
            .await?;
        if col::<i64>(&r, "totp_enabled")? != 0 {
            return Err(ApiError::new(
                "conflict",
                "a second factor is already enabled",
            ));
        }
        let secret = base32(&random_bytes::<20>());
        self.db
            .q("UPDATE users SET totp_secret = ? WHERE id = ?")
            .bind(secret.clone())
            .bind(user_id)
            .execute(&self.db.pool)
            .await?;
        let email: String = col(&r, "email")?;
        let url = format!(
            "otpauth://totp/Relais:{email}?secret={secret}&issuer=Relais&algorithm=SHA1&digits=6&period=30"
        );
        Ok((secret, url))
    }

    /// Finishes TOTP enrolment with a current code; the caller's session counts as verified.
    pub async fn totp_confirm(&self, actor: &Actor, code: &str) -> ApiResult<()> {
        let Who::User { id, session_id, .. } = actor.who else {
            return Err(ApiError::forbidden("this with an API token"));
        };
        let r = self
            .db
            .q("SELECT totp_secret, totp_enabled, totp_last_step FROM users WHERE id = ?")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await?;
        if col::<i64>(&r, "totp_enabled")? != 0 {
            return Err(ApiError::new(
                "conflict",
                "a second factor is already enabled",
            ));
        }
        let Some(secret) = col::<Option<String>>(&r, "totp_secret")? else {
            return Err(ApiError::new(
                "conflict",
                "call /api/v1/auth/totp/setup first",
            ));
        };
        let now = self.clock.now();
        let last: i64 = col(&r, "totp_last_step")?;
        let Some(step) = totp_verify(&secret, code, now, last as u64) else {
            return Err(ApiError::new("bad_totp", "wrong code / code erroné"));
        };
        let _w = self.writer.lock().await;
        let mut tx = self.db.begin().await?;
        self.db
            .q("UPDATE users SET totp_enabled = 1, totp_last_step = ? WHERE id = ?")
            .bind(step as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.db
            .q("UPDATE sessions SET mfa = 1 WHERE id = ?")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        crate::audit::record(
            &self.db,
            &mut tx,
            now,
            actor,
            crate::audit::Change {
                org_id: None,
                action: "totp.enable",
                target: format!("user {}", actor.label()),
                before: None,
                after: None,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Adds to `orgs` every organisation below one of them; `all` is (id, parent) of every one.
pub(crate) fn descend(orgs: &mut Vec<i64>, all: &[(i64, Option<i64>)]) {
    let mut i = 0;
    while i < orgs.len() {
        let p = orgs[i];
        for (id, parent) in all {
            if *parent == Some(p) && !orgs.contains(id) {
                orgs.push(*id);
            }
        }
        i += 1;
    }
}
