//! Comparing two versions of a policy: [`diff`] lists what changed, leaf by leaf, as
//! [`Change`]s named by their JSON path.

use serde::{Deserialize, Serialize};

/// One difference between two versions of a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// JSON path of the changed value (`schedule.cron`, `paths[1]`).
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<serde_json::Value>,
}

/// The differences between two JSON documents (two policy versions), leaf by leaf, in path
/// order. Arrays are compared element by element.
pub fn diff(old: &serde_json::Value, new: &serde_json::Value) -> Vec<Change> {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out
}

fn diff_into(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<Change>) {
    use serde_json::Value;
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_into(&join(k), x, y, out),
                    (x, y) => out.push(Change { field: join(k), old: x.cloned(), new: y.cloned() }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => diff_into(&p, x, y, out),
                    (x, y) => out.push(Change { field: p, old: x.cloned(), new: y.cloned() }),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change { field: path.to_string(), old: Some(a.clone()), new: Some(b.clone()) }),
    }
}
