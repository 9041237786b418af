//! Enrollment tokens: what an agent presents once to join the fleet.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// An enrollment token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    pub id: Uuid,
    pub description: String,
    /// The group enrolled machines join.
    pub group_id: Option<Uuid>,
    pub uses_left: i32,
    /// Machines enrolled with it wait for an operator's approval.
    pub requires_approval: bool,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/enrollment-tokens`. Absent fields take the controller's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub requires_approval: bool,
}

/// A new enrollment token: `token` is shown once (`cofre1.<id>.<secret>.<CA fingerprint>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    #[serde(flatten)]
    pub info: EnrollmentToken,
    pub token: String,
    /// The whole agent install as one line to paste on a machine (`curl … | sh -s -- …`),
    /// pinning what it downloads (docs/install.md); absent when this controller has no agent
    /// binary to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_line: Option<String>,
}
