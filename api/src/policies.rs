//! Policies: what to back up, when, how long to keep it; their versions and assignments.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What a policy says: the type the controller validates and stores (`cofre-policy`), which
/// is also the body of `POST /api/v1/policies` and `PUT /api/v1/policies/{id}`.
pub use cofre_policy::spec::{
    Change, HookSpec, Hooks, MaintenanceSpec, OnFailure, PolicySpec, RetentionSpec, ScheduleSpec, WindowSpec,
};

/// A policy: its spec's fields with its id and revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub id: Uuid,
    /// Grows by one at every change; every revision is kept (`/versions`).
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: PolicySpec,
}

/// One revision of a policy, as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyVersion {
    pub policy_id: Uuid,
    pub revision: i64,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
    /// The spec of this revision.
    pub spec: serde_json::Value,
}

/// What changed between two revisions, field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyDiff {
    pub from: i64,
    pub to: i64,
    pub changes: Vec<Change>,
}

/// Which revisions `GET /api/v1/policies/{id}/diff` compares.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    pub from: i64,
    pub to: i64,
}

/// A policy applied to one machine or to every machine of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub id: Uuid,
    pub policy_id: Uuid,
    pub machine_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/policies/{id}/assignments`: exactly one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Uuid>,
}

/// A machine whose agent does not hold its current plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StalePlan {
    pub machine_id: Uuid,
    pub hostname: String,
    pub group_id: Option<Uuid>,
    /// The plan version the agent last reported (0: none yet).
    pub held_plan_version: i64,
    pub current_plan_version: i64,
    pub last_seen_at: Option<DateTime<Utc>>,
}
