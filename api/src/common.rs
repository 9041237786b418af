//! Shapes every resource shares: lists, pages and the problem+json error body.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One problem with one field, named by its JSON path (`schedule.timezone`, `paths[2]`).
pub use cofre_policy::spec::FieldError;

/// A whole list (small, bounded collections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

impl<T> Items<T> {
    /// A list of wire values made from domain values.
    pub fn of<D>(v: impl IntoIterator<Item = D>) -> Self
    where
        T: From<D>,
    {
        Self { items: v.into_iter().map(T::from).collect() }
    }
}

/// One page of a long list, and the cursor of the next page (absent on the last one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

/// An error answer (RFC 9457 `application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The fields at fault (422), each with what is wrong with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

fn about_blank() -> String {
    "about:blank".into()
}
