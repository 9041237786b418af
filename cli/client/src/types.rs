//! The API's request and response bodies: the wire types of `cofre-api`, defined once and
//! shared with the controller. Unknown response fields are ignored so older clients keep
//! working against newer controllers.

pub use cofre_api::enrollment::{CreatedEnrollmentToken, EnrollmentToken, NewEnrollmentToken};
pub use cofre_api::groups::{Group, NewGroup};
pub use cofre_api::jobs::{Job, JobFilter, Snapshot};
pub use cofre_api::machines::Machine;
/// What a policy says: the same type the controller validates and stores (`cofre-policy`).
pub use cofre_api::policies::{
    Assignment, Change, HookSpec, Hooks, MaintenanceSpec, OnFailure, Policy, PolicyDiff, PolicySpec,
    PolicyVersion, RetentionSpec, ScheduleSpec, StalePlan, WindowSpec,
};
pub use cofre_api::repositories::{NewRepository, Repository, ResticRepository};
pub use cofre_api::stores::{CreatedStore, RepositoryInventory, Store};
pub use cofre_api::users::Session;
pub use cofre_api::{FieldError, Items, Page, Problem};
/// The field-level difference between two specs (as JSON), as `cofre apply` shows it.
pub use cofre_policy::spec::diff as spec_diff;

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
