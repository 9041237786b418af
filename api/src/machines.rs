//! Machines: what people may change about one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `PUT /api/v1/machines/{id}`: absent fields stay; `null` clears (the name, or the group).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    /// A name for people (the hostname stays what the agent reports).
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Option<String>>,
    /// Move it to another group (its group's policies and store access follow).
    #[serde(default, with = "crate::double_option", skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Option<Uuid>>,
}
