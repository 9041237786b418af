//! Compliance: each machine's status with the reason for every failed rule, roll-ups, and the
//! insert-only history.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A machine's status, ordered from best to worst.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Compliant,
    /// Within 20% of a limit.
    AtRisk,
    /// Never reported (or waiting for approval): nothing is known.
    Unknown,
    NonCompliant,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Compliant, Status::AtRisk, Status::Unknown, Status::NonCompliant];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Compliant => "compliant",
            Status::AtRisk => "at_risk",
            Status::Unknown => "unknown",
            Status::NonCompliant => "non_compliant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rules a machine is judged by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The machine has reported at least once.
    Reported,
    /// The machine is approved.
    Approved,
    /// The machine's certificate is not revoked.
    NotRevoked,
    /// At least one policy applies to the machine.
    PolicyAssigned,
    /// The agent was seen within its heartbeat allowance.
    Heartbeat,
    /// The agent runs the current plan (after a grace period).
    PlanCurrent,
    /// The last good backup is younger than the policy's RPO.
    BackupAge,
    /// The last good integrity check is younger than the check cadence plus a day.
    CheckAge,
    /// Every snapshot in the repository was reported to Cofre.
    NoUnrecordedSnapshots,
    /// The last scheduled run started on time (within a grace after it was due).
    RunOnTime,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Reported => "reported",
            Rule::Approved => "approved",
            Rule::NotRevoked => "not_revoked",
            Rule::PolicyAssigned => "policy_assigned",
            Rule::Heartbeat => "heartbeat",
            Rule::PlanCurrent => "plan_current",
            Rule::BackupAge => "backup_age",
            Rule::CheckAge => "check_age",
            Rule::NoUnrecordedSnapshots => "no_unrecorded_snapshots",
            Rule::RunOnTime => "run_on_time",
        }
    }
}

/// A rule that does not hold (or is close to failing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub rule: Rule,
    pub status: Status,
    /// The policy the rule belongs to (machine-wide rules have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// For a person: what is wrong, with the dates that matter.
    pub reason: String,
    /// Since when this finding holds.
    pub since: Option<DateTime<Utc>>,
    /// The reason as data, for saying it in another language (absent in records made before
    /// it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
}

/// A finding's reason as data: which sentence (`code`) and the values it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Why {
    /// `pending`, `revoked`, `never_reported`, `no_policy`, `silent`, `plan_stale`,
    /// `backup_old`, `backup_never`, `check_old`, `check_never`, `run_late`, `unrecorded`.
    pub code: String,
    /// The moment the sentence names (last backup, last contact, approval…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// A second moment (the deadline a late run missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The limit the rule applies, in seconds (RPO, allowed silence, grace, check cadence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_seconds: Option<i64>,
    /// A count (unrecorded snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// A limit as people write it (`36 h`, `24 h`, `7 d`, `15 min`, `45 s`): the controller's
/// reasons and the portal's translations of them both write limits so.
pub fn human_limit(seconds: i64) -> String {
    let s = seconds;
    if s % 86_400 == 0 && s >= 2 * 86_400 {
        format!("{} d", s / 86_400)
    } else if s % 3600 == 0 && s >= 3600 {
        format!("{} h", s / 3600)
    } else if s % 60 == 0 && s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

impl Why {
    pub fn new(code: &str) -> Self {
        Self { code: code.into(), ..Default::default() }
    }
    pub fn at(mut self, t: DateTime<Utc>) -> Self {
        self.at = Some(t);
        self
    }
    pub fn until(mut self, t: DateTime<Utc>) -> Self {
        self.until = Some(t);
        self
    }
    pub fn limit(mut self, seconds: i64) -> Self {
        self.limit_seconds = Some(seconds);
        self
    }
    pub fn count(mut self, n: i64) -> Self {
        self.count = Some(n);
        self
    }
}

/// One machine's compliance now.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineCompliance {
    pub machine_id: Uuid,
    pub hostname: String,
    pub group_id: Option<Uuid>,
    pub group_name: Option<String>,
    pub status: Status,
    /// Since when the machine has had this status (as recorded by the history).
    pub status_since: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub last_good_backup_at: Option<DateTime<Utc>>,
    /// Failed and at-risk rules, worst first.
    pub findings: Vec<Finding>,
}

/// The report's machines (a page of them when a limit was asked), and how many machines the
/// request selects in all.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub items: Vec<MachineCompliance>,
    pub total: u64,
}

/// Machines per status in a group (or the whole fleet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollup {
    pub group_id: Option<Uuid>,
    pub group_name: Option<String>,
    pub machines: i64,
    pub compliant: i64,
    pub at_risk: i64,
    pub unknown: i64,
    pub non_compliant: i64,
    /// Compliant or at risk, in percent of the machines (100 for an empty group).
    pub protected_percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Summary {
    pub evaluated_at: DateTime<Utc>,
    pub fleet: Rollup,
    pub groups: Vec<Rollup>,
}

/// A change of a machine's status or findings, as the history recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = StatusChange)]
pub struct Change {
    pub machine_id: Uuid,
    pub at: DateTime<Utc>,
    pub status: Status,
    pub findings: Vec<Finding>,
}

/// A machine's history over a period: its changes and the time spent in each status.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineHistory {
    pub machine_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The status at `from` (None before the first record) and every change in the period.
    pub status_at_start: Option<Status>,
    pub changes: Vec<Change>,
    pub seconds: StatusSeconds,
}

/// Seconds spent in each status (time before the first record is counted nowhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusSeconds {
    pub compliant: i64,
    pub at_risk: i64,
    pub unknown: i64,
    pub non_compliant: i64,
}

/// One day of a group (or the fleet): machines by their worst status of that day.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Day {
    pub day: NaiveDate,
    pub group_id: Option<Uuid>,
    pub machines: i64,
    pub compliant: i64,
    pub at_risk: i64,
    pub unknown: i64,
    pub non_compliant: i64,
    pub seconds: StatusSeconds,
}
