//! The audit log: every mutation writes its event in the same transaction as the change.
//!
//! Events are canonically serialised (JSON with sorted keys) and chained: each link is
//! HMAC-SHA256, under a key sealed with the master key, of the previous link and the event
//! (`chain.rs`), so a row written with database credentials alone does not verify. The sequence
//! is gapless because it is allocated under a transaction-scoped advisory lock. The chain head
//! is signed and checkpointed (`checkpoints.rs`) in Postgres and in a file outside it, so a cut
//! tail or a rewritten history is found too; `verify.rs` recomputes everything, `query.rs`
//! reads events for people.

mod chain;
pub mod checkpoints;
pub mod query;
pub mod verify;

#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use serde_json::Value;
use sqlx::{Postgres, Transaction};

use crate::error::{Error, Result};

pub use chain::ChainRule;
pub use verify::{Problem, Report, verify};

/// Who did it.
#[derive(Debug, Clone)]
pub enum Actor {
    User { id: uuid::Uuid, name: String },
    Machine(uuid::Uuid),
    Store(uuid::Uuid),
    System,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User { id, name } => write!(f, "user:{id}:{name}"),
            Actor::Machine(id) => write!(f, "machine:{id}"),
            Actor::Store(id) => write!(f, "store:{id}"),
            Actor::System => f.write_str("system"),
        }
    }
}

/// The audit keys: the chain's HMAC key and the Ed25519 key that signs checkpoints (and
/// evidence). Both live in `server_keys`, sealed under the master key.
pub struct AuditKeys {
    mac: ring::hmac::Key,
    signing: ring::signature::Ed25519KeyPair,
    /// The raw MAC key, to tell two installs apart.
    mac_id: [u8; 32],
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys").field("public", &hex::encode(self.public_key())).finish_non_exhaustive()
    }
}

impl AuditKeys {
    /// # Errors
    /// A signing key that is not Ed25519 PKCS#8, or a MAC key that is not 32 bytes.
    pub fn new(mac: &[u8], signing_pkcs8: &[u8]) -> anyhow::Result<Self> {
        let mac_id: [u8; 32] =
            mac.try_into().map_err(|_| anyhow::anyhow!("the audit chain key must be 32 bytes"))?;
        let signing = ring::signature::Ed25519KeyPair::from_pkcs8(signing_pkcs8)
            .map_err(|e| anyhow::anyhow!("the audit signing key is not an Ed25519 key: {e}"))?;
        Ok(Self { mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, mac), signing, mac_id })
    }

    pub fn public_key(&self) -> &[u8] {
        use ring::signature::KeyPair as _;
        self.signing.public_key().as_ref()
    }

    /// The public key as a PEM SubjectPublicKeyInfo, as `openssl pkeyutl -pubin` reads it.
    pub fn public_key_pem(&self) -> String {
        use base64::Engine as _;
        // SEQUENCE { SEQUENCE { OID 1.3.101.112 (Ed25519) }, BIT STRING { key } }
        let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        der.extend_from_slice(self.public_key());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).as_ref().to_vec()
    }

    pub(crate) fn mac(&self) -> &ring::hmac::Key {
        &self.mac
    }
}

/// The keys `record` links events with. A controller process serves one database, and every
/// service writes audit events inside its own transaction, so the chain key is installed once
/// per process (by `serve`) rather than threaded through every service call.
static INSTALLED: OnceLock<Arc<AuditKeys>> = OnceLock::new();

/// Installs the process's audit keys. Installing different keys twice is refused: events would
/// be linked under a key the database does not hold.
///
/// # Errors
/// Other keys are installed already.
pub fn install(keys: &Arc<AuditKeys>) -> anyhow::Result<Arc<AuditKeys>> {
    let installed = INSTALLED.get_or_init(|| keys.clone());
    if installed.mac_id != keys.mac_id {
        anyhow::bail!("this process already links audit events under another key (another database?)");
    }
    Ok(installed.clone())
}

/// The installed keys.
///
/// # Errors
/// None installed: writing an event now would leave an unverifiable link.
pub fn installed() -> Result<Arc<AuditKeys>> {
    INSTALLED
        .get()
        .cloned()
        .ok_or_else(|| Error::internal(anyhow::anyhow!("the audit keys are not loaded in this process")))
}

/// Appends one event to the chain; returns its sequence number.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    actor: &Actor,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: Value,
) -> Result<i64> {
    let keys = installed()?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(crate::db::locks::AUDIT_CHAIN)
        .execute(&mut **tx)
        .await?;
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("select seq, hash from audit_events order by seq desc limit 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (seq, prev) = match head {
        Some((s, h)) => (s + 1, h),
        None => (1, vec![0u8; 32]),
    };
    // Postgres keeps microseconds: link exactly what is stored.
    let now = chrono::Utc::now();
    let at = chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let event = chain::Event {
        seq,
        at,
        actor: &actor.to_string(),
        action,
        target_type,
        target_id,
        details: &details,
    };
    let hash = ChainRule::Keyed.link(&keys, &prev, &event)?;
    sqlx::query(
        "insert into audit_events (seq, at, actor, action, target_type, target_id, details, prev_hash, hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(seq)
    .bind(at)
    .bind(event.actor)
    .bind(action)
    .bind(target_type)
    .bind(target_id)
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}
