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

/// sha256(prev_hash || canonical JSON of the event). serde_json's default map is a BTreeMap,
/// so keys are emitted sorted: the serialisation is canonical.
#[allow(clippy::too_many_arguments)] // one argument per hashed column, kept explicit on purpose
fn chain_hash(
    prev: &[u8],
    seq: i64,
    at: chrono::DateTime<chrono::Utc>,
    actor: &str,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: &Value,
) -> Result<Vec<u8>> {
    let canonical = serde_json::json!({
        "seq": seq,
        "at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "actor": actor,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "details": details,
    });
    let bytes = serde_json::to_vec(&canonical).map_err(crate::error::Error::internal)?;
    Ok(Sha256::new().chain_update(prev).chain_update(&bytes).finalize().to_vec())
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
    let hash = chain_hash(&prev, seq, at, &actor.to_string(), action, target_type, target_id, &details)?;
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

/// Recomputes the whole chain. Returns the number of events checked, or the first sequence
/// number whose hash or link does not match.
pub async fn verify(pool: &sqlx::PgPool) -> Result<std::result::Result<i64, i64>> {
    use futures::TryStreamExt;
    type Row = (i64, chrono::DateTime<chrono::Utc>, String, String, String, String, Value, Vec<u8>, Vec<u8>);
    let mut rows = sqlx::query_as::<_, Row>(
        "select seq, at, actor, action, target_type, target_id, details, prev_hash, hash from audit_events order by seq",
    )
    .fetch(pool);
    let mut expected_prev = vec![0u8; 32];
    let mut expected_seq = 1;
    while let Some((seq, at, actor, action, target_type, target_id, details, prev, hash)) =
        rows.try_next().await?
    {
        if seq != expected_seq || prev != expected_prev {
            return Ok(Err(seq));
        }
        let computed = chain_hash(&prev, seq, at, &actor, &action, &target_type, &target_id, &details)?;
        if computed != hash {
            return Ok(Err(seq));
        }
        expected_prev = hash;
        expected_seq += 1;
    }
    Ok(Ok(expected_seq - 1))
}
