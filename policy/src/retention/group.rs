//! restic's `--group-by`: which of hostname, paths and tags make up a group ([`GroupBy`], its
//! syntax and serde form) and the key a snapshot is grouped under ([`GroupKey`], [`group_key`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SnapshotMeta;

/// restic's `--group-by`: which of hostname, paths and tags make up a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

/// restic's default, `host,paths`.
impl Default for GroupBy {
    fn default() -> Self {
        GroupBy { host: true, paths: true, tags: false }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown grouping option {0:?} (expected host, paths and/or tags, separated by commas)")]
pub struct GroupByError(pub String);

/// restic's syntax: comma-separated `host`/`hosts`, `path`/`paths`, `tag`/`tags`; empty items
/// are ignored, so `""` groups nothing.
impl FromStr for GroupBy {
    type Err = GroupByError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut group_by = GroupBy { host: false, paths: false, tags: false };
        for option in value.split(',') {
            match option {
                "host" | "hosts" => group_by.host = true,
                "path" | "paths" => group_by.paths = true,
                "tag" | "tags" => group_by.tags = true,
                "" => {}
                other => return Err(GroupByError(other.to_owned())),
            }
        }
        Ok(group_by)
    }
}

/// The `--group-by` argument restic takes for this grouping (`""` for none).
impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [(self.host, "host"), (self.paths, "paths"), (self.tags, "tags")];
        let chosen: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
        f.write_str(&chosen.join(","))
    }
}

impl TryFrom<String> for GroupBy {
    type Error = GroupByError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<GroupBy> for String {
    fn from(value: GroupBy) -> Self {
        value.to_string()
    }
}

/// A group as restic prints it in `forget --json` (`host`, `paths`, `tags`): the hostname is
/// empty when hosts are not grouped, paths and tags are sorted, and `None` when not grouped or
/// empty (restic's `null`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub hostname: String,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

/// The group `snapshot` belongs to under `group_by`.
pub fn group_key(group_by: GroupBy, snapshot: &SnapshotMeta) -> GroupKey {
    let sorted = |on: bool, list: &[String]| {
        (on && !list.is_empty()).then(|| {
            let mut list = list.to_vec();
            list.sort();
            list
        })
    };
    GroupKey {
        hostname: if group_by.host { snapshot.hostname.clone() } else { String::new() },
        paths: sorted(group_by.paths, &snapshot.paths),
        tags: sorted(group_by.tags, &snapshot.tags),
    }
}
