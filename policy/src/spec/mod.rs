//! The policy specification: what an administrator may say about a policy, as the API accepts
//! it, the controller stores and versions it (JSON), and the CLI reads it from a file. Unknown
//! fields are refused, and `validate` checks everything at once and names every bad field, so
//! a rejected request stores nothing and tells the user exactly what to fix.
//!
//! What belongs here: the types, their defaults and JSON parsing. Their validation (and the
//! conversions that validate: schedule, retention) is in `validate`, comparing two versions in
//! `diff`; both are re-exported here.
//!
//! Defaults are the ones a city hall would pick without thinking about them: on demand only
//! until a schedule is given, keep everything until a retention is given, forget daily, prune
//! and check (structure only) weekly, an RPO of 36 hours and 24 hours of agent silence allowed.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod diff;
mod validate;

pub use diff::{Change, diff};
pub use validate::valid_hook_name;

/// One problem with one field, named by its JSON path (`schedule.timezone`, `paths[2]`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A complete policy as written by an administrator.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    pub repository_id: Uuid,
    /// Absolute paths to back up.
    pub paths: Vec<String>,
    /// restic-style exclude globs (`*.tmp`, `/var/cache`, `**/node_modules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Like `excludes`, ignoring case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iexcludes: Vec<String>,
    /// Directories holding a file of one of these names are left out (e.g. `.nobackup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
    /// Files larger than this many bytes are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_larger_than_bytes: Option<u64>,
    /// Do not cross file-system boundaries below the given paths.
    #[serde(default)]
    pub one_file_system: bool,
    /// Extra tags on every snapshot (Cofre adds its own `cofre-policy:` and `cofre-machine:` tags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// When backups run; absent: only on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// How long history is kept; absent: every snapshot is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
    /// The maximum age of the last good backup before a machine is out of compliance.
    #[serde(default = "default_rpo")]
    pub rpo_seconds: u64,
    /// How long an agent may stay silent before it counts as unseen.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_allowance_seconds: u64,
    /// Forget, prune and check, run by the controller's maintenance identity.
    #[serde(default)]
    pub maintenance: MaintenanceSpec,
    /// Hooks the agent runs around a backup, by name only (set by admins).
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
}

fn default_rpo() -> u64 {
    36 * 3600
}

fn default_heartbeat() -> u64 {
    24 * 3600
}

/// A schedule as written: a cron expression in an IANA time zone, or an interval; optional
/// jitter and allowed window.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// IANA time zone (`America/Sao_Paulo`) of the cron expression and the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Each machine starts up to this many seconds late, by an amount fixed per machine, so a
    /// fleet spreads out instead of stampeding at the same minute.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Local times `HH:MM` between which runs may start; `end` before `start` crosses midnight.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub start: String,
    pub end: String,
}

/// restic's `forget --keep-*` options. Counts of 0 and absent durations are not set.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub keep_last: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub keep_hourly: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub keep_daily: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub keep_weekly: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub keep_monthly: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub keep_yearly: u32,
    /// restic durations such as `1y6m`, `30d`, `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_hourly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_daily: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_weekly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_monthly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_yearly: Option<String>,
    /// Taglists as restic writes them: `a,b` keeps snapshots that have both `a` and `b`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}

/// The controller's maintenance of a policy's repositories.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSpec {
    /// When the retention is applied (only snapshots the controller recorded are forgotten).
    #[serde(default = "daily")]
    pub forget: ScheduleSpec,
    /// When unreferenced data is removed.
    #[serde(default = "weekly")]
    pub prune: ScheduleSpec,
    /// Unused space tolerated after a prune, in percent of the repository.
    #[serde(default = "default_max_unused")]
    pub max_unused_percent: u32,
    /// When the repository's integrity is checked.
    #[serde(default = "weekly")]
    pub check: ScheduleSpec,
    /// How much pack data a check reads: `none` (structure only), `all`, `n/t` (part n of t,
    /// so t runs cover everything) or `x%` (a random share).
    #[serde(default = "default_read_data")]
    pub check_read_data: String,
}

fn daily() -> ScheduleSpec {
    ScheduleSpec { interval_seconds: Some(24 * 3600), ..Default::default() }
}

fn weekly() -> ScheduleSpec {
    ScheduleSpec { interval_seconds: Some(7 * 24 * 3600), ..Default::default() }
}

fn default_max_unused() -> u32 {
    5
}

fn default_read_data() -> String {
    "none".into()
}

impl Default for MaintenanceSpec {
    fn default() -> Self {
        Self {
            forget: daily(),
            prune: weekly(),
            max_unused_percent: default_max_unused(),
            check: weekly(),
            check_read_data: default_read_data(),
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<HookSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<HookSpec>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.before.is_none() && self.after.is_none()
    }
}

/// A hook by name: the agent runs it only if an executable of this name exists in its own
/// root-owned hook directory. A policy never carries a command line.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    pub name: String,
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_hook_timeout() -> u64 {
    300
}

/// What a failed (or timed-out, or missing) hook does to the job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The job fails (after a backup: the snapshot is kept, the job still fails).
    #[default]
    Fail,
    /// Before a backup only: no backup this time; the job ends "skipped".
    SkipBackup,
    /// Go on; the job ends with a warning.
    Continue,
}

/// How much pack data a check reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// Part `n` of `t` (1-based): `t` consecutive runs with n = 1..t read everything.
    Part {
        n: u32,
        of: u32,
    },
    Percent(f64),
}

impl std::str::FromStr for ReadData {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("`{s}`: use none, all, n/t (e.g. 1/7) or a percentage (e.g. 10%)");
        match s {
            "none" => return Ok(ReadData::None),
            "all" => return Ok(ReadData::All),
            _ => {}
        }
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("`{s}`: a percentage above 0 and at most 100"));
            }
            return Ok(ReadData::Percent(v));
        }
        let (n, t) = s.split_once('/').ok_or_else(bad)?;
        let (n, t): (u32, u32) = (n.trim().parse().map_err(|_| bad())?, t.trim().parse().map_err(|_| bad())?);
        if n == 0 || t == 0 || n > t || t > 1000 {
            return Err(format!("`{s}`: n/t needs 1 <= n <= t <= 1000"));
        }
        Ok(ReadData::Part { n, of: t })
    }
}

impl PolicySpec {
    /// A policy backing up `paths` to `repository_id`, on demand only, with every default.
    pub fn new(name: impl Into<String>, repository_id: Uuid, paths: Vec<String>) -> Self {
        Self {
            name: name.into(),
            repository_id,
            paths,
            excludes: Vec::new(),
            iexcludes: Vec::new(),
            exclude_if_present: Vec::new(),
            exclude_larger_than_bytes: None,
            one_file_system: false,
            tags: Vec::new(),
            schedule: None,
            retention: None,
            rpo_seconds: default_rpo(),
            heartbeat_allowance_seconds: default_heartbeat(),
            maintenance: MaintenanceSpec::default(),
            hooks: Hooks::default(),
        }
    }

    /// The same policy, run every `seconds` (0: on demand only).
    #[must_use]
    pub fn every(mut self, seconds: u64) -> Self {
        self.schedule =
            (seconds > 0).then(|| ScheduleSpec { interval_seconds: Some(seconds), ..Default::default() });
        self
    }

    /// Parses a spec from JSON, naming the field of the first shape error (unknown field,
    /// wrong type, negative count).
    pub fn from_json(value: serde_json::Value) -> Result<Self, Vec<FieldError>> {
        serde_path::from_value(value)
    }
}

/// Deserialisation that names the field of a shape error.
mod serde_path {
    use super::FieldError;

    pub fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Vec<FieldError>> {
        serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            vec![FieldError::new(field, e.inner().to_string())]
        })
    }
}
