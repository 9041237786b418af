//! Human authentication: argon2 password hashes, password login (limited, audited) that opens a
//! session (`sessions`), claims of access tokens (`jwt`), and the first admin created on first start.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};

pub(crate) const ISSUER: &str = "cofre";
pub(crate) const AUDIENCE: &str = "cofre-api";

pub use crate::jwt::JwtKeys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Auditor,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub name: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    /// The group this user is limited to; absent for fleet-wide users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grp: Option<Uuid>,
    /// The login session (refresh-token family) this access token belongs to: logout ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// Only reads (an API token made read-only); never in a JWT Cofre issues.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ro: bool,
    /// These claims come from an API token (`jti` is its id), not from a login: set by
    /// `api_tokens::authenticate`, never read from a JWT.
    #[serde(skip)]
    pub api_token: bool,
}

impl Claims {
    pub fn actor(&self) -> Actor {
        Actor::User { id: self.sub, name: self.name.clone() }
    }
}

/// Access tokens this process has seen in use, so the first use of each (per replica) is
/// audited once, with the address it came from, rather than every request.
#[derive(Debug, Default)]
pub struct SeenTokens(std::sync::Mutex<std::collections::HashMap<Uuid, i64>>);

impl SeenTokens {
    /// Entries kept before expired tokens are forgotten.
    const PRUNE_AT: usize = 50_000;

    /// True the first time this process sees `claims`' token.
    pub fn first_use(&self, claims: &Claims) -> bool {
        let Ok(mut seen) = self.0.lock() else { return false };
        if seen.len() >= Self::PRUNE_AT {
            let now = chrono::Utc::now().timestamp();
            seen.retain(|_, exp| *exp > now);
        }
        seen.insert(claims.jti, claims.exp).is_none()
    }
}

/// Audits the first use of an access token on this replica (`auth.token_use`).
pub async fn record_token_use(
    pool: &PgPool,
    claims: &Claims,
    address: Option<std::net::IpAddr>,
    request: &str,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let details = serde_json::json!({
        "token_id": claims.jti,
        "address": address.map(|a| a.to_string()),
        "first_request": request,
        "expires_at": chrono::DateTime::from_timestamp(claims.exp, 0),
    });
    audit::record(&mut tx, &claims.actor(), "auth.token_use", "user", &claims.sub.to_string(), details)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(anyhow::anyhow!("argon2: {e}")))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so timing does not reveal it.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("cofre-dummy-password").unwrap_or_default())
}

pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// Creates the first admin when there is no user at all. Returns the generated password
/// when one had to be generated (to be shown once).
pub async fn ensure_first_admin(
    pool: &PgPool,
    username: &str,
    configured: Option<&SecretString>,
) -> Result<Option<(String, Option<String>)>> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(crate::db::locks::FIRST_ADMIN)
        .execute(&mut *tx)
        .await?;
    let any: bool = sqlx::query_scalar("select exists (select 1 from users)").fetch_one(&mut *tx).await?;
    if any {
        return Ok(None);
    }
    let (password, generated) = match configured {
        Some(p) if !p.expose_secret().is_empty() => (p.expose_secret().to_string(), None),
        _ => {
            let p = generate_password();
            (p.clone(), Some(p))
        }
    };
    let id = Uuid::now_v7();
    sqlx::query("insert into users (id, username, password_hash, role) values ($1, $2, $3, 'admin')")
        .bind(id)
        .bind(username)
        .bind(hash_password(&password)?)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &Actor::System,
        "user.create",
        "user",
        &id.to_string(),
        serde_json::json!({"username": username, "role": "admin", "first_admin": true}),
    )
    .await?;
    tx.commit().await?;
    Ok(Some((username.to_string(), generated)))
}

/// Failed logins allowed per user name, and per client address, in [`LOGIN_WINDOW_SECONDS`].
pub const LOGIN_FAILURES_ALLOWED: i64 = 5;
pub const LOGIN_WINDOW_SECONDS: i64 = 15 * 60;

/// Argon2 runs on blocking threads, at most one per core at once, so a flood of logins cannot
/// starve the async workers that serve agents and health checks.
fn hashing() -> &'static tokio::sync::Semaphore {
    static S: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    S.get_or_init(|| tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// Hashes a new password on a blocking thread (bounded like verification).
pub async fn hash_off_the_runtime(password: String) -> Result<String> {
    let _permit = hashing().acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || hash_password(&password)).await.map_err(Error::internal)?
}

async fn verify_off_the_runtime(password: &str, hash: String) -> Result<bool> {
    let _permit = hashing().acquire().await.map_err(Error::internal)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.map_err(Error::internal)
}

/// Login attempts in progress on this replica, per user name and per address: they count
/// against the limit before their outcome is recorded, so a burst of concurrent attempts is
/// limited too.
#[derive(Default)]
struct InFlight(std::sync::Mutex<std::collections::HashMap<String, i64>>);

fn in_flight() -> &'static InFlight {
    static F: std::sync::OnceLock<InFlight> = std::sync::OnceLock::new();
    F.get_or_init(InFlight::default)
}

/// Holds a place in [`InFlight`] for one attempt.
struct Attempt(Vec<String>);

impl InFlight {
    fn enter(&'static self, keys: Vec<String>) -> (Attempt, i64) {
        let Ok(mut m) = self.0.lock() else { return (Attempt(Vec::new()), 0) };
        let mut most = 0;
        for k in &keys {
            let n = m.entry(k.clone()).or_insert(0);
            most = most.max(*n);
            *n += 1;
        }
        (Attempt(keys), most)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Ok(mut m) = in_flight().0.lock() {
            for k in &self.0 {
                if let Some(n) = m.get_mut(k) {
                    *n -= 1;
                    if *n <= 0 {
                        m.remove(k);
                    }
                }
            }
        }
    }
}

/// Refuses an attempt when its user name or address failed [`LOGIN_FAILURES_ALLOWED`] times in
/// the window (counted from the audit log, so every replica sees every failure) or has as many
/// attempts running. The answer says when to try again.
async fn check_login_limit(pool: &PgPool, typed: &str, address: Option<&str>, running: i64) -> Result<()> {
    let (failures, oldest): (i64, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "select count(*), min(at) from audit_events
         where action = 'auth.login_failed' and at > now() - make_interval(secs => $3)
           and (details->>'username' = $1 or ($2::text is not null and details->>'address' = $2))",
    )
    .bind(typed)
    .bind(address)
    .bind(LOGIN_WINDOW_SECONDS as f64)
    .fetch_one(pool)
    .await?;
    if failures + running < LOGIN_FAILURES_ALLOWED {
        return Ok(());
    }
    let wait = oldest.map_or(60, |t| {
        (t + chrono::Duration::seconds(LOGIN_WINDOW_SECONDS) - chrono::Utc::now()).num_seconds().max(1)
    });
    let wait = u64::try_from(wait).unwrap_or(60);
    tracing::warn!(username = typed, address, "login refused: too many failed attempts");
    Err(Error::TooManyRequests(
        format!("too many failed logins for this account or from this address: try again in {wait} s"),
        Some(wait),
    ))
}

/// Password login. Unknown users and wrong passwords get the same answer. Both outcomes are
/// audited with the client's address (`auth.login`, `auth.login_failed`); after
/// [`LOGIN_FAILURES_ALLOWED`] failures per user name or address in the window, attempts are
/// refused (429) before any password is checked.
pub async fn login(
    pool: &PgPool,
    jwt: &JwtKeys,
    session_ttl_seconds: u64,
    username: &str,
    password: &str,
    address: Option<std::net::IpAddr>,
) -> Result<crate::sessions::Tokens> {
    let address = address.map(|a| a.to_string());
    // The name as typed, bounded: enough to tell attempts apart.
    let typed: String = username.chars().take(64).collect();
    let mut keys = vec![format!("u:{typed}")];
    keys.extend(address.as_ref().map(|a| format!("a:{a}")));
    let (_attempt, running) = in_flight().enter(keys);
    check_login_limit(pool, &typed, address.as_deref(), running).await?;
    let row: Option<(Uuid, String, String, Option<Uuid>, bool)> = sqlx::query_as(
        "select id, password_hash, role, group_id, disabled_at is not null from users where username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    let (ok, row) = match row {
        Some(r) => (verify_off_the_runtime(password, r.1.clone()).await?, Some(r)),
        None => {
            let _ = verify_off_the_runtime(password, dummy_hash().to_string()).await?;
            (false, None)
        }
    };
    let mut tx = pool.begin().await?;
    let result = match (ok, row) {
        (true, Some((id, _, _, _, true))) => {
            let details = serde_json::json!({"username": typed, "address": address, "known_user": true, "disabled": true});
            audit::record(&mut tx, &Actor::System, "auth.login_failed", "user", &id.to_string(), details)
                .await?;
            Err(Error::Unauthenticated("this account is disabled".into()))
        }
        (true, Some((id, _, role, group, false))) => {
            let role =
                Role::parse(&role).ok_or_else(|| Error::internal(anyhow::anyhow!("bad role {role}")))?;
            let tokens =
                crate::sessions::open(&mut tx, jwt, session_ttl_seconds, id, username, role, group).await?;
            let actor = Actor::User { id, name: username.to_string() };
            let details = serde_json::json!({"address": address, "session": tokens.session});
            audit::record(&mut tx, &actor, "auth.login", "user", &id.to_string(), details).await?;
            Ok(tokens)
        }
        (_, row) => {
            let target = row.map(|r| r.0.to_string()).unwrap_or_default();
            let details =
                serde_json::json!({"username": typed, "address": address, "known_user": !target.is_empty()});
            audit::record(&mut tx, &Actor::System, "auth.login_failed", "user", &target, details).await?;
            Err(Error::Unauthenticated("wrong username or password".into()))
        }
    };
    tx.commit().await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let h = hash_password("s3cret").unwrap();
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
    }
}
