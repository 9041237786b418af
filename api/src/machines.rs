//! Machines: what the fleet knows about one, and what people may change about it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `PUT /api/v1/machines/{id}`: absent fields stay; `null` clears (the name, or the group).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    /// A name for people (the hostname stays what the agent reports).
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Option<String>>,
    /// Move it to another group (its group's policies and store access follow).
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Option<Uuid>>,
}

/// A machine of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Machine {
    pub id: Uuid,
    /// What the agent reports.
    pub hostname: String,
    /// A name people gave it.
    pub display_name: Option<String>,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub group_id: Option<Uuid>,
    pub group_name: Option<String>,
    /// pending (waiting for approval), active, revoked or decommissioned.
    pub status: String,
    pub enrolled_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The plan version the agent holds.
    pub plan_version: i64,
    /// Storage quota enforced by cofre-store (None: no limit).
    pub storage_quota_bytes: Option<i64>,
    /// Finish time of the last successful backup (with or without warnings).
    pub last_backup_at: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub last_result_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// `GET /api/v1/machines`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MachineQuery {
    pub cursor: Option<String>,
    /// 1 to 1000 (100 by default).
    pub limit: Option<usize>,
    /// pending, active, revoked or decommissioned.
    pub status: Option<String>,
}
