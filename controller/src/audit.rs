//! The audit log: every mutation writes its event in the same transaction as the change.
//! Events are canonically serialised (JSON with sorted keys) and hash-chained; the sequence is
//! gapless because it is allocated under a transaction-scoped advisory lock.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};

use crate::error::Result;

/// Who did it.
#[derive(Debug, Clone)]
pub enum Actor {
    User { id: uuid::Uuid, name: String },
    Machine(uuid::Uuid),
    System,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User { id, name } => write!(f, "user:{id}:{name}"),
            Actor::Machine(id) => write!(f, "machine:{id}"),
            Actor::System => f.write_str("system"),
        }
    }
}

pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    actor: &Actor,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: Value,
) -> Result<i64> {
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
    // Postgres keeps microseconds: hash exactly what is stored.
    let now = chrono::Utc::now();
    let at = chrono::DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let canonical = serde_json::json!({
        "seq": seq,
        "at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "actor": actor.to_string(),
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "details": details,
    });
    // serde_json's default map is a BTreeMap: keys are emitted sorted, so this is canonical.
    let bytes = serde_json::to_vec(&canonical).map_err(crate::error::Error::internal)?;
    let hash = Sha256::new().chain_update(&prev).chain_update(&bytes).finalize().to_vec();
    sqlx::query(
        "insert into audit_events (seq, at, actor, action, target_type, target_id, details, prev_hash, hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor.to_string())
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
