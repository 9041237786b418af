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

#[derive(Debug, Clone, Deserialize)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct PolicyInput {
    pub name: String,
    pub repository_id: Uuid,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    pub interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Policy {
    pub id: Uuid,
    pub name: String,
    pub repository_id: Uuid,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    pub interval_seconds: i64,
    pub revision: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Assignment {
    pub id: Uuid,
    pub policy_id: Uuid,
    pub machine_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Machine {
    pub id: Uuid,
    pub hostname: String,
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

#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub machine_id: Uuid,
    pub policy_id: Option<Uuid>,
    pub kind: String,
    pub trigger: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot_id: Option<String>,
    pub stats: Option<serde_json::Value>,
    pub warnings: Option<Vec<String>>,
    pub error_message: Option<String>,
    pub retry_class: Option<String>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "warning" | "failed" | "interrupted")
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
