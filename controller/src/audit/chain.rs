//! How one event is linked to the previous one. Both rules hash the same canonical text: the
//! event as JSON with sorted keys (serde_json's default map is a BTreeMap) and timestamps in
//! microseconds, exactly as Postgres stores them.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuditKeys;
use crate::error::{Error, Result};

/// One event as it is linked.
pub(crate) struct Event<'a> {
    pub seq: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub details: &'a Value,
}

impl Event<'_> {
    fn canonical(&self) -> Result<Vec<u8>> {
        let canonical = serde_json::json!({
            "seq": self.seq,
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "actor": self.actor,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "details": self.details,
        });
        serde_json::to_vec(&canonical).map_err(Error::internal)
    }
}

/// The link rule of an event, fixed by its position: events before the boundary recorded by
/// the migration (`audit_chain_rules`) were linked unkeyed; every later one is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainRule {
    /// sha256(prev || event): what the foundation wrote. Anyone can compute it.
    Legacy,
    /// HMAC-SHA256(chain key, prev || event): only a holder of the master key can.
    Keyed,
}

impl ChainRule {
    pub(crate) fn link(self, keys: &AuditKeys, prev: &[u8], event: &Event<'_>) -> Result<Vec<u8>> {
        let body = event.canonical()?;
        Ok(match self {
            ChainRule::Legacy => Sha256::new().chain_update(prev).chain_update(&body).finalize().to_vec(),
            ChainRule::Keyed => {
                let mut ctx = ring::hmac::Context::with_key(keys.mac());
                ctx.update(prev);
                ctx.update(&body);
                ctx.sign().as_ref().to_vec()
            }
        })
    }
}
