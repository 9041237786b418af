//! Access tokens (JWT, HS256 pinned; iss, aud, exp checked; `kid` in the header) under a key set
//! every replica shares: the current signing key and the previous one, both sealed in
//! `server_keys`. `cofre-controller rotate-jwt-key` makes a new current key; replicas pick it up
//! on their next reload (every few minutes, or at once when a token names a `kid` they do not
//! know), and tokens signed with the previous key stay valid until they expire.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use uuid::Uuid;

use crate::auth::{AUDIENCE, Claims, ISSUER, Role};

/// The audience of portal tickets (never the REST API's).
pub const PORTAL_AUDIENCE: &str = "cofre-portal";

/// What a portal ticket says: whose login session it belongs to, until when, and the CSRF
/// token the portal's forms must carry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PortalTicket {
    pub sub: Uuid,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grp: Option<Uuid>,
    pub sid: Uuid,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub csrf: String,
}
use crate::error::{Error, Result};

/// How often a replica may re-read the key set because a token named an unknown `kid`.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(10);

struct SigningKey {
    kid: String,
    enc: EncodingKey,
    dec: DecodingKey,
}

impl SigningKey {
    fn new(secret: &[u8]) -> Self {
        Self {
            kid: kid_of(secret),
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
        }
    }
}

/// The public name of a signing key: a hash of it, never the key.
pub fn kid_of(secret: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::new().chain_update(b"cofre-jwt-kid:").chain_update(secret).finalize();
    hex::encode(&d[..8])
}

struct KeySet {
    current: SigningKey,
    previous: Option<SigningKey>,
}

pub struct JwtKeys {
    set: RwLock<KeySet>,
    ttl: i64,
    last_reload: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").field("kid", &self.current_kid()).finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn new(current: &[u8], previous: Option<&[u8]>, ttl_seconds: u64) -> Self {
        Self {
            set: RwLock::new(KeySet {
                current: SigningKey::new(current),
                previous: previous.map(SigningKey::new),
            }),
            ttl: i64::try_from(ttl_seconds).unwrap_or(900),
            last_reload: std::sync::Mutex::new(None),
        }
    }

    pub fn ttl_seconds(&self) -> i64 {
        self.ttl
    }

    pub fn current_kid(&self) -> String {
        self.set.read().map(|s| s.current.kid.clone()).unwrap_or_default()
    }

    /// Replaces the key set (after a rotation, read back from the database).
    pub fn replace(&self, current: &[u8], previous: Option<&[u8]>) {
        if let Ok(mut set) = self.set.write() {
            let next = SigningKey::new(current);
            if next.kid != set.current.kid {
                tracing::info!(kid = %next.kid, "the access-token signing key changed");
            }
            *set = KeySet { current: next, previous: previous.map(SigningKey::new) };
        }
    }

    /// Whether `token` names a key this replica does not know and the key set may be re-read now
    /// (at most every [`RELOAD_AT_MOST_EVERY`]).
    pub fn should_reload_for(&self, token: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
        let Some(kid) = header.kid else { return false };
        let known = self
            .set
            .read()
            .map(|s| s.current.kid == kid || s.previous.as_ref().is_some_and(|p| p.kid == kid))
            .unwrap_or(true);
        if known {
            return false;
        }
        let Ok(mut last) = self.last_reload.lock() else { return false };
        if last.is_some_and(|t| t.elapsed() < RELOAD_AT_MOST_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// A new access token for a user; `session` is the login session (refresh family) it
    /// belongs to, which logout ends.
    pub fn issue(
        &self,
        user: Uuid,
        name: &str,
        role: Role,
        group: Option<Uuid>,
        session: Option<Uuid>,
    ) -> Result<String> {
        self.issue_with(user, name, role, group, session, Uuid::new_v4(), self.ttl)
    }

    /// An access token with a given id and lifetime: the portal's per-request tokens share
    /// their ticket's id, so their first use is audited once per session, not per page.
    #[expect(clippy::too_many_arguments, reason = "a token's claims, each named where it is issued")]
    pub fn issue_with(
        &self,
        user: Uuid,
        name: &str,
        role: Role,
        group: Option<Uuid>,
        session: Option<Uuid>,
        jti: Uuid,
        ttl: i64,
    ) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user,
            name: name.to_string(),
            role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + ttl,
            jti,
            grp: group,
            sid: session,
            ro: false,
            api_token: false,
        };
        self.sign(&claims)
    }

    fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String> {
        let set = self.set.read().map_err(|_| Error::internal(anyhow::anyhow!("JWT key set poisoned")))?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(set.current.kid.clone());
        jsonwebtoken::encode(&header, claims, &set.current.enc).map_err(Error::internal)
    }

    /// A portal ticket (the portal's session cookie): the access token's claims under the
    /// portal's own audience, so the REST API never accepts one, valid until `exp`.
    pub fn issue_portal(&self, ticket: &PortalTicket) -> Result<String> {
        self.sign(ticket)
    }

    /// Checks a portal ticket.
    pub fn verify_portal(&self, token: &str) -> Result<PortalTicket> {
        self.decode(token, PORTAL_AUDIENCE)
    }

    /// Signs `header.payload` (both base64url) as this controller would: tests forge tokens
    /// with it (an expired one, for instance).
    #[cfg(test)]
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let message = format!("{header}.{payload}");
        let set = self.set.read().expect("key set");
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &set.current.enc, Algorithm::HS256)
            .unwrap_or_default();
        format!("{message}.{sig}")
    }

    pub fn verify(&self, token: &str) -> Result<Claims> {
        self.decode(token, AUDIENCE)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str, audience: &str) -> Result<T> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::Unauthenticated("malformed access token".into()))?;
        let not_ours = || Error::Unauthenticated("access token not issued by this controller".into());
        if header.alg != Algorithm::HS256 {
            return Err(not_ours());
        }
        let kid = header.kid.ok_or_else(not_ours)?;
        let set = self.set.read().map_err(|_| Error::internal(anyhow::anyhow!("JWT key set poisoned")))?;
        let key = if set.current.kid == kid {
            &set.current.dec
        } else {
            match &set.previous {
                Some(p) if p.kid == kid => &p.dec,
                _ => return Err(not_ours()),
            }
        };
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[audience]);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<T>(token, key, &v).map(|d| d.claims).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Error::Unauthenticated("access token expired: refresh it or log in again".into())
            }
            _ => Error::Unauthenticated("invalid access token".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"another-secret-another-secret-xx";

    #[test]
    fn round_trip_and_tampering() {
        let k = JwtKeys::new(A, None, 60);
        let t = k.issue(Uuid::new_v4(), "admin", Role::Admin, None, None).unwrap();
        assert_eq!(k.verify(&t).unwrap().role, Role::Admin);
        let other = JwtKeys::new(B, None, 60);
        assert!(other.verify(&t).is_err());
        let mut parts: Vec<&str> = t.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        parts[0] = none_header;
        assert!(k.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn rotation_keeps_tokens_of_the_previous_key_and_drops_older_ones() {
        let k = JwtKeys::new(A, None, 60);
        let old = k.issue(Uuid::new_v4(), "admin", Role::Admin, None, None).unwrap();
        // A token naming a key this replica does not know asks for a reload (once per period).
        let rotated = JwtKeys::new(B, Some(A), 60);
        let new = rotated.issue(Uuid::new_v4(), "admin", Role::Admin, None, None).unwrap();
        assert!(k.verify(&new).is_err());
        assert!(k.should_reload_for(&new));
        assert!(!k.should_reload_for(&new), "reloads are rate-limited");
        assert!(!k.should_reload_for(&old), "a known kid never reloads");
        k.replace(B, Some(A));
        assert_eq!(k.current_kid(), kid_of(B));
        assert!(k.verify(&new).is_ok());
        assert!(k.verify(&old).is_ok(), "the previous key's tokens live until they expire");
        // A second rotation forgets A.
        k.replace(b"a-third-secret-a-third-secret-xx", Some(B));
        assert!(k.verify(&old).is_err());
        assert!(k.verify(&new).is_ok());
    }
}
