//! The REST API's wire types: what `/api/v1` answers, defined once and used by the controller
//! (which maps its rows into them), the client, the CLI and the portal. Serde only: no
//! database, no HTTP. Every type derives its OpenAPI schema (utoipa), so the document the
//! controller serves is made from the same definitions.

pub mod alerts;
pub mod audit;
pub mod common;
pub mod compliance;
pub mod enrollment;
pub mod groups;
pub mod jobs;
pub mod machines;
pub mod policies;
pub mod repositories;
pub mod stores;
pub mod users;

pub use common::{FieldError, Items, Page, Problem};

/// Tells an absent field (no change) from `null` (clear it).
pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}
