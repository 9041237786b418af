//! cofre-store instances, what they hold, and quotas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Store {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    /// pending (not enrolled yet), active or revoked.
    pub status: String,
    pub store_version: String,
    pub access_list_version: i64,
    pub created_at: DateTime<Utc>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/stores`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStore {
    pub name: String,
    /// The URL agents and the controller reach the store at, e.g. `https://backup.example:8443/`.
    pub url: String,
}

/// A registered store and its enrollment token for `cofre-store enroll` (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedStore {
    #[serde(flatten)]
    pub store: Store,
    pub token: String,
}

/// One repository a store holds, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RepositoryInventory {
    pub path: String,
    pub url: String,
    /// The restic repository the controller created at this URL (None: unknown to Cofre).
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

/// `PUT /api/v1/machines/{id}/quota` and `PUT /api/v1/groups/{id}/quota`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Bytes; null removes the limit.
    pub storage_quota_bytes: Option<u64>,
}
