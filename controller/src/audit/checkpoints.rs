//! Signed checkpoints of the chain head: `(seq, head link, time)` signed with the audit Ed25519
//! key. They are stored in Postgres (`audit_checkpoints`) and appended to a file on every
//! controller that has one configured (`audit.checkpoint_file`, JSON lines), so whoever owns the
//! schema can neither cut the log's tail nor rewrite it and its checkpoints together: the file
//! still holds the old head and verification names it.
//!
//! One checkpoint per interval (hourly by default) and one on demand; making one takes the
//! chain's advisory lock, so its head is the real head and replicas never sign two per interval.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::AuditKeys;
use crate::error::{Error, Result};

/// One signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Checkpoint {
    pub seq: i64,
    #[serde(with = "hex_bytes")]
    pub head_hash: Vec<u8>,
    pub at: DateTime<Utc>,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    pub made_by: String,
}

mod hex_bytes {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl From<&Checkpoint> for cofre_api::audit::Checkpoint {
    fn from(c: &Checkpoint) -> Self {
        Self {
            seq: c.seq,
            head_hash: hex::encode(&c.head_hash),
            at: c.at,
            signature: hex::encode(&c.signature),
            made_by: c.made_by.clone(),
        }
    }
}

impl Checkpoint {
    /// The exact bytes signed. Documented in docs/audit.md so anyone can check a checkpoint
    /// with openssl and the controller's public key.
    pub fn message(seq: i64, head: &[u8], at: DateTime<Utc>) -> Vec<u8> {
        format!(
            "cofre-audit-checkpoint v1\nseq {seq}\nhead {}\nat {}\n",
            hex::encode(head),
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
        .into_bytes()
    }

    /// Whether the signature is the audit key's over this checkpoint.
    pub fn signed_by(&self, public_key: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
            .verify(&Self::message(self.seq, &self.head_hash, self.at), &self.signature)
            .is_ok()
    }
}

/// Signs the current head unless it is signed already, or unless the newest checkpoint is
/// younger than `min_age` (the hourly run; on demand passes zero). Returns the head's
/// checkpoint, or `None` when the log is empty or the newest one is young enough.
pub async fn make(
    pool: &PgPool,
    keys: &AuditKeys,
    made_by: &str,
    min_age: Duration,
) -> Result<Option<Checkpoint>> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(crate::db::locks::AUDIT_CHAIN)
        .execute(&mut *tx)
        .await?;
    let newest: Option<Checkpoint> =
        sqlx::query_as("select * from audit_checkpoints order by seq desc limit 1")
            .fetch_optional(&mut *tx)
            .await?;
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("select seq, hash from audit_events order by seq desc limit 1")
            .fetch_optional(&mut *tx)
            .await?;
    let Some((seq, head_hash)) = head else { return Ok(None) };
    let now = Utc::now();
    if let Some(c) = newest {
        let young = (now - c.at).to_std().unwrap_or_default() < min_age;
        if c.seq == seq || young {
            return Ok((c.seq == seq).then_some(c));
        }
    }
    let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let signature = keys.sign(&Checkpoint::message(seq, &head_hash, at));
    let c = Checkpoint { seq, head_hash, at, signature, made_by: made_by.to_owned() };
    sqlx::query(
        "insert into audit_checkpoints (seq, head_hash, at, signature, made_by) values ($1, $2, $3, $4, $5)",
    )
    .bind(c.seq)
    .bind(&c.head_hash)
    .bind(c.at)
    .bind(&c.signature)
    .bind(&c.made_by)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(seq = c.seq, "audit chain head signed and checkpointed");
    Ok(Some(c))
}

/// Every checkpoint in Postgres, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Checkpoint>> {
    Ok(sqlx::query_as("select * from audit_checkpoints order by seq").fetch_all(pool).await?)
}

/// The copy of the checkpoints outside the database: one JSON object per line, appended only.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoints in the file, in file order. A missing file holds none.
    ///
    /// # Errors
    /// An unreadable file, or a line that is not a checkpoint (named by its number).
    pub fn read(&self) -> std::result::Result<Vec<Checkpoint>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| format!("{} line {}: not a checkpoint ({e})", self.path.display(), i + 1))
            })
            .collect()
    }

    /// Appends the database's checkpoints newer than the file's newest, after checking each
    /// signature (a forged row is not copied). Returns how many were appended.
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub async fn sync(&self, pool: &PgPool, keys: &AuditKeys) -> Result<usize> {
        let have = self.read().map_err(|e| Error::internal(anyhow::anyhow!(e)))?;
        let newest = have.iter().map(|c| c.seq).max().unwrap_or(0);
        let new: Vec<Checkpoint> =
            sqlx::query_as("select * from audit_checkpoints where seq > $1 order by seq")
                .bind(newest)
                .fetch_all(pool)
                .await?;
        let good: Vec<&Checkpoint> = new.iter().filter(|c| c.signed_by(keys.public_key())).collect();
        if good.len() != new.len() {
            tracing::error!(
                "{} checkpoint(s) in the database are not signed by the audit key: not copied",
                new.len() - good.len()
            );
        }
        if good.is_empty() {
            return Ok(0);
        }
        let mut lines = Vec::new();
        for c in &good {
            serde_json::to_writer(&mut lines, c).map_err(Error::internal)?;
            lines.push(b'\n');
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&lines)?;
            f.sync_all()
        })
        .await
        .map_err(Error::internal)?
        .map_err(|e| Error::internal(anyhow::anyhow!("cannot append to {}: {e}", self.path.display())))?;
        Ok(good.len())
    }
}

/// Runs forever: signs the head every `interval` (whichever replica comes first) and keeps this
/// replica's file in step with the database every minute.
pub fn spawn(
    pool: PgPool,
    keys: Arc<AuditKeys>,
    file: Option<CheckpointFile>,
    interval: Duration,
    me: String,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60).min(interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = make(&pool, &keys, &me, interval).await {
                tracing::warn!("audit checkpoint: {e}");
            }
            if let Some(f) = &file
                && let Err(e) = f.sync(&pool, &keys).await
            {
                tracing::warn!("audit checkpoint file: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_unchanged() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let keys = AuditKeys::new(&[7u8; 32], pkcs8.as_ref()).unwrap();
        let at = Utc::now();
        let head = vec![1u8; 32];
        let c = Checkpoint {
            seq: 42,
            head_hash: head.clone(),
            at,
            signature: keys.sign(&Checkpoint::message(42, &head, at)),
            made_by: "t".into(),
        };
        assert!(c.signed_by(keys.public_key()));
        let moved = Checkpoint { seq: 41, ..c.clone() };
        assert!(!moved.signed_by(keys.public_key()));
        let line = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&line).unwrap(), c);
    }
}
