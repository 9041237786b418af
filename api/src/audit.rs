//! The audit log: events, signed checkpoints and the verification report.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// `user:<id>:<name>`, `machine:<id>`, `store:<id>` or `system`.
    pub actor: String,
    /// `<resource>.<verb>`, e.g. `machine.revoke`, `auth.login_failed`.
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub details: serde_json::Value,
}

/// A page of events, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventPage {
    pub items: Vec<Event>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A signed checkpoint of the chain head. The signature is Ed25519 over
/// `"cofre-audit-checkpoint v1\nseq {seq}\nhead {head_hash}\nat {at}\n"` (at in RFC 3339 with
/// microseconds and `Z`), by the key whose PEM `/api/v1/audit/checkpoints` gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    pub seq: i64,
    /// Hex.
    pub head_hash: String,
    pub at: DateTime<Utc>,
    /// Hex.
    pub signature: String,
    pub made_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoints {
    pub public_key_pem: String,
    pub items: Vec<Checkpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MadeCheckpoint {
    /// None while the log is empty.
    pub checkpoint: Option<Checkpoint>,
    pub public_key_pem: String,
}

/// What verification found.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub ok: bool,
    /// Events whose link was recomputed (up to the first problem).
    pub events_checked: i64,
    /// The newest event's sequence number.
    pub head_seq: i64,
    /// Events from this number on are keyed (HMAC); earlier ones use the foundation's unkeyed links.
    pub keyed_from_seq: i64,
    pub checkpoints_checked: usize,
    pub newest_checkpoint_seq: Option<i64>,
    /// The checkpoint file compared, when the answering controller has one.
    pub checkpoint_file: Option<String>,
    /// The first problem, by sequence number.
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = VerificationProblem)]
pub struct Problem {
    /// The event (or the event a checkpoint signed) where verification fails.
    pub seq: i64,
    /// `event` or `checkpoint`.
    pub kind: String,
    pub message: String,
}
