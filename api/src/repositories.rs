//! Repository definitions (where backups go) and the restic repositories made from them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A repository definition. Secrets are write-only: only whether one is set is returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Repository {
    pub id: Uuid,
    pub name: String,
    /// The REST server (or cofre-store) URL.
    pub url: String,
    /// One restic repository per machine (under `path_template`), or one shared.
    pub per_machine: bool,
    pub path_template: String,
    pub username: Option<String>,
    pub has_password: bool,
    pub ca_certificate_pem: Option<String>,
    pub allow_insecure_http: bool,
    pub maintenance_url: Option<String>,
    pub maintenance_username: Option<String>,
    pub has_maintenance_password: bool,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/repositories`. Passwords are write-only: never returned, never logged.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRepository {
    pub name: String,
    pub url: String,
    #[serde(default = "default_true")]
    pub per_machine: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate_pem: Option<String>,
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// A plain rest-server's controller-only instance serving the same data (the agents' one
    /// runs `--append-only`): init, forget, prune and check go there. Not for cofre-store,
    /// which knows the controller's maintenance identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_username: Option<String>,
    /// Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_password: Option<String>,
}

fn default_true() -> bool {
    true
}

impl std::fmt::Debug for NewRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRepository")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("per_machine", &self.per_machine)
            .field("username", &self.username)
            .field("has_password", &self.password.is_some())
            .finish_non_exhaustive()
    }
}

/// A restic repository (one per machine, or one shared) with its last maintenance jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResticRepository {
    pub id: Uuid,
    pub repository_id: Uuid,
    pub machine_id: Option<Uuid>,
    /// The machine's host name (per-machine repositories).
    #[serde(default)]
    pub hostname: Option<String>,
    pub url: String,
    /// restic's repository id, once initialised.
    pub restic_id: Option<String>,
    /// Why it could not be initialised (retried).
    pub init_error: Option<String>,
    pub initialised_at: Option<DateTime<Utc>>,
    pub snapshots: i64,
    pub last_forget: Option<serde_json::Value>,
    pub last_prune: Option<serde_json::Value>,
    pub last_check: Option<serde_json::Value>,
}

/// `POST /api/v1/restic-repositories/{id}/maintenance`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunMaintenance {
    /// forget, prune or check.
    pub kind: String,
    /// A forget that removes nothing and reports what it would remove (`stats.would_remove`).
    #[serde(default)]
    pub dry_run: bool,
}

/// `PUT /api/v1/repositories/{id}`: absent fields stay; `null` clears. Secrets stay
/// write-only. Where the backups live (`url`, `per_machine`, `path_template`) cannot change:
/// the restic repositories already exist there; define a new repository instead.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRepository {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only the same value is accepted (it cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Only the same value is accepted (it cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_machine: Option<bool>,
    /// Only the same value is accepted (it cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub username: Option<Option<String>>,
    /// Write-only: a new storage password (rotation), or null to remove it.
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub password: Option<Option<String>>,
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub ca_certificate_pem: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure_http: Option<bool>,
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub maintenance_url: Option<Option<String>>,
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub maintenance_username: Option<Option<String>>,
    /// Write-only.
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub maintenance_password: Option<Option<String>>,
}

impl std::fmt::Debug for UpdateRepository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateRepository")
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password_changes", &self.password.is_some())
            .field("maintenance_password_changes", &self.maintenance_password.is_some())
            .finish_non_exhaustive()
    }
}
