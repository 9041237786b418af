//! Alerts: what a webhook receives (JSON, signed) and what the alert API lists.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::compliance::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One alert. Webhooks receive exactly this as their JSON body, with the headers
/// `X-Cofre-Alert-Id` (the same on every retry: receivers de-duplicate by it),
/// `X-Cofre-Alert-Kind` and, when the channel has a secret,
/// `X-Cofre-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: Uuid,
    /// `machine.non_compliant`, `machine.silent`, `run.missed`, `backup.overdue`,
    /// `check.overdue`, `snapshots.unrecorded`, `plan.stale`, `machine.unprotected`,
    /// `machine.revoked`, `machine.recovered`, `machine.reminder`, `job.failed` or
    /// `repository.growth`.
    pub kind: String,
    pub severity: Severity,
    pub at: DateTime<Utc>,
    /// One line for a person.
    pub summary: String,
    /// Every reason behind it (the machine's failed rules, or the job's error).
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<AlertMachine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AlertGroup>,
    /// The machine's compliance status when the alert was raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<AlertJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertMachine {
    pub id: Uuid,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertGroup {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertJob {
    pub id: Uuid,
    /// backup, forget, prune or check.
    pub kind: String,
}

/// An alert's delivery to one channel.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub channel: String,
    /// `pending` or `sent`.
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRecord {
    pub alert: Alert,
    /// Empty until a controller routed it (within seconds), or when no channel takes it.
    pub deliveries: Vec<Delivery>,
}
