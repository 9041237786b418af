//! Jobs (backups, forget, prune, check) and the snapshots backups made.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// The machine a backup ran on, or whose repository a maintenance job worked on (None for
    /// a shared repository's maintenance).
    pub machine_id: Option<Uuid>,
    /// That machine's host name (as it last reported it), so a list of jobs can name machines
    /// without asking for each.
    #[serde(default)]
    pub hostname: Option<String>,
    pub policy_id: Option<Uuid>,
    pub restic_repository_id: Option<Uuid>,
    /// backup, forget, prune or check.
    pub kind: String,
    /// schedule, manual, …
    pub trigger: String,
    /// queued, running, succeeded, warning, failed, interrupted, cancelled or skipped.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The run was still going when its policy's window closed.
    pub overran_window: bool,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub snapshot_id: Option<String>,
    pub stats: Option<serde_json::Value>,
    pub warnings: Option<Vec<String>>,
    pub error_message: Option<String>,
    /// How the agent should treat the failure: transient, permanent, …
    pub retry_class: Option<String>,
    pub log: Option<String>,
    /// A running backup's latest progress, as its agent last sent it (about every 15 s); none
    /// before the first sample and once the job has ended.
    #[serde(default)]
    pub progress: Option<JobProgress>,
}

/// How far a running backup has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobProgress {
    /// Files processed so far (every entry but directories, as the snapshot's summary counts).
    pub files_done: u64,
    /// Their bytes.
    pub bytes_done: u64,
    /// All files the backup will process, once the agent's scan has counted them (none while
    /// it is still scanning).
    pub files_total: Option<u64>,
    /// Their bytes, once counted.
    pub bytes_total: Option<u64>,
    /// When the controller received this sample.
    pub at: DateTime<Utc>,
}

impl JobProgress {
    /// Bytes done as a share of the total (0 to 100), once the total is known.
    pub fn percent(&self) -> Option<u8> {
        let total = self.bytes_total?;
        if total == 0 {
            return Some(100);
        }
        let pct = (u128::from(self.bytes_done.min(total)) * 100 / u128::from(total)).min(100);
        u8::try_from(pct).ok()
    }
}

impl Job {
    /// The job has ended (it will not change any more).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "warning" | "failed" | "interrupted" | "cancelled" | "skipped"
        )
    }
}

/// `POST /api/v1/machines/{id}/jobs`: back this machine up now under this policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunNow {
    pub policy_id: Uuid,
}

/// `GET /api/v1/machines/{id}/jobs` and `GET /api/v1/maintenance/jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    pub cursor: Option<String>,
    /// 1 to 1000 (100 by default).
    pub limit: Option<usize>,
    pub kind: Option<String>,
    pub state: Option<String>,
}

/// `GET /api/v1/jobs`: every filter is optional; times bound `created_at`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    pub cursor: Option<String>,
    /// 1 to 1000 (100 by default).
    pub limit: Option<usize>,
    pub machine: Option<Uuid>,
    pub policy: Option<Uuid>,
    pub kind: Option<String>,
    pub state: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// A snapshot a backup made, as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub restic_repository_id: Uuid,
    pub machine_id: Uuid,
    pub job_id: Option<Uuid>,
    pub time: DateTime<Utc>,
    pub hostname: String,
    pub paths: Vec<String>,
    pub bytes_processed: Option<i64>,
    pub bytes_added: Option<i64>,
    pub policy_id: Option<Uuid>,
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_of_bytes_and_stays_within_0_to_100() {
        let p = |done: u64, total: Option<u64>| JobProgress {
            files_done: 0,
            bytes_done: done,
            files_total: total.map(|_| 1),
            bytes_total: total,
            at: DateTime::<Utc>::MIN_UTC,
        };
        assert_eq!(p(35, Some(100)).percent(), Some(35));
        assert_eq!(p(999, Some(1000)).percent(), Some(99), "rounded down: 100 only when done");
        assert_eq!(p(7, Some(5)).percent(), Some(100), "a file grown since the scan");
        assert_eq!(p(0, Some(0)).percent(), Some(100));
        assert_eq!(p(u64::MAX, Some(u64::MAX)).percent(), Some(100));
        assert_eq!(p(10, None).percent(), None, "still scanning");
    }
}
