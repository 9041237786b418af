//! The API's request and response bodies as the client sees them. Unknown response fields are
//! ignored so older clients keep working against newer controllers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Problem {
    pub title: String,
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

pub use cofre_api::users::Session;

#[derive(Debug, Clone, Default, Serialize)]
pub struct NewEnrollmentToken {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    pub requires_approval: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatedEnrollmentToken {
    pub id: Uuid,
    pub token: String,
    pub uses_left: i32,
    pub expires_at: DateTime<Utc>,
    pub group_id: Option<Uuid>,
    pub requires_approval: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Group {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NewRepository {
    pub name: String,
    pub url: String,
    pub per_machine: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate_pem: Option<String>,
    pub allow_insecure_http: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_password: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub per_machine: bool,
    pub path_template: String,
    pub username: Option<String>,
    pub has_password: bool,
}

/// What a policy says: the same type the controller validates and stores (`cofre-policy`).
/// The field-level difference between two specs (as JSON), as `cofre apply` shows it.
pub use cofre_policy::spec::diff as spec_diff;
pub use cofre_policy::spec::{
    Change, HookSpec, Hooks, MaintenanceSpec, OnFailure, PolicySpec, RetentionSpec, ScheduleSpec, WindowSpec,
};

/// A policy as the API returns it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Policy {
    pub id: Uuid,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PolicyVersion {
    pub policy_id: Uuid,
    pub revision: i64,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
    pub spec: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PolicyDiff {
    pub from: i64,
    pub to: i64,
    pub changes: Vec<Change>,
}

/// A machine whose agent does not hold its current plan.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StalePlan {
    pub machine_id: Uuid,
    pub hostname: String,
    pub group_id: Option<Uuid>,
    pub held_plan_version: i64,
    pub current_plan_version: i64,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A restic repository with its last maintenance jobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResticRepository {
    pub id: Uuid,
    pub repository_id: Uuid,
    pub machine_id: Option<Uuid>,
    pub url: String,
    pub restic_id: Option<String>,
    pub init_error: Option<String>,
    pub snapshots: i64,
    pub last_forget: Option<serde_json::Value>,
    pub last_prune: Option<serde_json::Value>,
    pub last_check: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Assignment {
    pub id: Uuid,
    pub policy_id: Uuid,
    pub machine_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Machine {
    pub id: Uuid,
    pub hostname: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub os: String,
    pub agent_version: String,
    pub group_id: Option<Uuid>,
    pub group_name: Option<String>,
    pub status: String,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub plan_version: i64,
    pub last_backup_at: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub machine_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    #[serde(default)]
    pub restic_repository_id: Option<Uuid>,
    /// backup, forget, prune or check.
    pub kind: String,
    pub trigger: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub overran_window: bool,
    #[serde(default)]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub snapshot_id: Option<String>,
    pub stats: Option<serde_json::Value>,
    pub warnings: Option<Vec<String>>,
    pub error_message: Option<String>,
    pub retry_class: Option<String>,
    #[serde(default)]
    pub log: Option<String>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "warning" | "failed" | "interrupted" | "cancelled" | "skipped"
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub restic_repository_id: Uuid,
    pub machine_id: Uuid,
    pub job_id: Option<Uuid>,
    pub time: DateTime<Utc>,
    pub hostname: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub policy_id: Option<Uuid>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Store {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub status: String,
    pub store_version: String,
    pub access_list_version: i64,
    pub created_at: DateTime<Utc>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CreatedStore {
    #[serde(flatten)]
    pub store: Store,
    /// One-time enrollment token for `cofre-store enroll`.
    pub token: String,
}

/// One repository a store holds, as it reported it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RepositoryInventory {
    pub path: String,
    pub url: String,
    pub restic_repository_id: Option<Uuid>,
    pub machine_id: Option<Uuid>,
    pub size_bytes: i64,
    pub data_objects: i64,
    pub index_objects: i64,
    pub snapshot_objects: i64,
    pub key_objects: i64,
    pub lock_objects: i64,
    pub has_config: bool,
    pub last_snapshot_at: Option<DateTime<Utc>>,
    /// Snapshot objects on the store that no job reported to the controller.
    pub unrecorded_snapshots: Vec<String>,
    pub reported_at: DateTime<Utc>,
}

/// Filters for [`crate::Client::audit_events`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Filters for [`crate::Client::list_all_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub machine: Option<Uuid>,
    pub policy: Option<Uuid>,
    pub kind: Option<String>,
    pub state: Option<String>,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}
