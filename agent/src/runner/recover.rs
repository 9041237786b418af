//! What a job left behind when the agent stopped during it (a crash, `kill -9`, power loss):
//! its running marker (`running/<job>.json`) and perhaps its backup's repository lock. At the
//! next start the lock is removed and each marker becomes the job's one result, spooled before
//! the marker goes (a failed write keeps the marker, to try again at the next start):
//!
//! - the spool already holds the job's result (the agent stopped between writing it and
//!   removing the marker): nothing more is spooled;
//! - the job's repository holds a snapshot tagged `cofre-job:<job>` and with this machine's tag:
//!   the backup finished and only its report was lost (the agent stopped during the after-hook,
//!   or between the backup and spooling its result). The job is reported as a success with
//!   warnings, naming that snapshot with the counts the snapshot recorded, and a warning that
//!   says the result was recovered after the agent stopped;
//! - otherwise (no such snapshot, or the repository cannot be searched) it is reported
//!   interrupted, and listed in Hello so the controller marks it at once.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cofre_proto::agent::v1 as pb;
use uuid::Uuid;

use super::{Agent, RunningMarker, finished_event, ts};

/// How long the search for a stopped job's snapshot may take; after it the job is reported
/// interrupted (the agent's start waits for this search).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The start of the warning a recovered result carries (a test looks for it).
pub(crate) const RECOVERED: &str = "recovered after the agent stopped";

impl Agent {
    /// Turns markers of jobs that were running when the agent stopped into spooled results
    /// (see the module documentation), and removes the repository locks their backups left
    /// behind. Returns the ids of the jobs reported interrupted, for Hello.
    pub async fn recover_interrupted(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.state.running_dir()) else { return ids };
        let paths: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        let mut spooled: Option<Vec<String>> = None;
        let mut recovered = Vec::new();
        for p in paths.iter().filter(|p| p.extension().is_some_and(|x| x == "json")) {
            let marker: Option<RunningMarker> =
                std::fs::read(p).ok().and_then(|raw| serde_json::from_slice(&raw).ok());
            if let Some(m) = marker {
                self.remove_left_lock(&m.policy_id, &m.job_id).await;
                let job = m.job_id.to_string();
                let spooled = spooled.get_or_insert_with(|| self.spooled_results());
                if spooled.contains(&job) {
                    tracing::info!(job.id = %job, "the job's result was spooled before the agent stopped");
                } else {
                    let (finished, interrupted) = match self.saved_snapshot(&m).await {
                        Ok(found) => (found, false),
                        Err(why) => (interrupted_result(&m, self.now_utc(), why), true),
                    };
                    if self.spool.push_durable(&finished_event(m.job_id, finished)).is_err() {
                        continue; // keep the marker; try again next start
                    }
                    if interrupted { ids.push(job) } else { recovered.push(job) }
                }
            }
            let _ = std::fs::remove_file(p);
        }
        if !recovered.is_empty() {
            tracing::warn!(jobs = ?recovered,
                "jobs whose backups had saved their snapshots when the agent last stopped: reported with those snapshots");
        }
        if !ids.is_empty() {
            tracing::warn!(jobs = ?ids, "jobs were interrupted when the agent last stopped");
        }
        ids
    }

    /// The jobs whose results are in the spool.
    fn spooled_results(&self) -> Vec<String> {
        self.spool
            .pending()
            .into_iter()
            .filter(|ev| matches!(ev.kind, Some(pb::job_event::Kind::Finished(_))))
            .map(|ev| ev.job_id)
            .collect()
    }

    /// The result of a stopped job whose backup saved its snapshot, found in its repository by
    /// its job's tag; `Err` says why there is none (for the interrupted result).
    async fn saved_snapshot(&self, m: &RunningMarker) -> Result<pb::JobFinished, Option<String>> {
        let (target, req, repository_id) = self.prepare(&m.policy_id, m.job_id).map_err(|e| {
            tracing::warn!(job.id = %m.job_id, error = %e, "cannot look for the stopped job's snapshot");
            Some(e)
        })?;
        let tags = vec![super::backup::job_tag(m.job_id), super::backup::machine_tag(self.machine_id)];
        let cache = self.state.root().join("cache");
        let expected = req.expected_restic_id;
        let look = tokio::task::spawn_blocking(move || {
            cofre_engine::set_cache_dir(Some(cache));
            cofre_engine::find_snapshot(&target, &expected, &tags)
        });
        let failed = |why: String| {
            tracing::warn!(job.id = %m.job_id, error = %why, "cannot search the repository for the stopped job's snapshot");
            Some(why)
        };
        let report = match tokio::time::timeout(LOOKUP_TIMEOUT, look).await {
            Ok(Ok(Ok(Some(report)))) => report,
            Ok(Ok(Ok(None))) => return Err(None),
            Ok(Ok(Err(e))) => return Err(failed(e.to_string())),
            Ok(Err(e)) => return Err(failed(format!("the search failed: {e}"))),
            Err(_) => return Err(failed(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs()))),
        };
        tracing::warn!(job.id = %m.job_id, snapshot = %report.snapshot_id,
            "the stopped job's backup had saved its snapshot; reporting it");
        Ok(recovered_result(m, repository_id, &report, self.now_utc()))
    }

    /// The lock a killed backup of `policy` recorded, removed through the current plan's
    /// repository (if the policy is still there).
    pub(super) async fn remove_left_lock(&self, policy: &str, job: &Uuid) {
        let record = self.lock_record(job);
        if !record.exists() {
            return;
        }
        match self.prepare(policy, *job) {
            Ok((target, _, _)) => crate::job_process::remove_left_lock(&target, &record).await,
            Err(_) => {
                let _ = std::fs::remove_file(&record);
            }
        }
    }
}

/// The result of a job stopped before its backup saved a snapshot (or whose repository could
/// not be searched for one: `why`).
fn interrupted_result(m: &RunningMarker, now: DateTime<Utc>, why: Option<String>) -> pb::JobFinished {
    let mut message = "the agent stopped while this job was running".to_string();
    if let Some(why) = why {
        message.push_str(&format!(
            "; its repository could not be searched for a snapshot the backup may have saved: {why}"
        ));
    }
    pb::JobFinished {
        policy_id: m.policy_id.clone(),
        trigger: m.trigger,
        started_at: Some(ts(m.started_at)),
        finished_at: Some(ts(now)),
        outcome: pb::JobOutcome::Interrupted as i32,
        error: Some(pb::JobError { message, retry_class: pb::RetryClass::Temporary as i32 }),
        ..Default::default()
    }
}

/// The result of a job stopped after its backup saved `report`'s snapshot: a success with a
/// warning that says so (the backup's own warnings and its after-hook's outcome are lost), the
/// counts the snapshot recorded, and the snapshot's end as the finish (between the job's start
/// and now).
pub(super) fn recovered_result(
    m: &RunningMarker,
    repository_id: String,
    report: &cofre_engine::BackupReport,
    now: DateTime<Utc>,
) -> pb::JobFinished {
    let took = chrono::Duration::from_std(report.duration).unwrap_or_default();
    let finished_at = (report.snapshot_time + took).clamp(m.started_at, now.max(m.started_at));
    let short = report.snapshot_id.get(..8).unwrap_or(&report.snapshot_id);
    pb::JobFinished {
        policy_id: m.policy_id.clone(),
        trigger: m.trigger,
        started_at: Some(ts(m.started_at)),
        finished_at: Some(ts(finished_at)),
        outcome: pb::JobOutcome::SucceededWithWarnings as i32,
        warnings: vec![format!(
            "{RECOVERED}: the backup had saved snapshot {short} but its result was not yet recorded; \
             it was read back from the repository at the agent's next start, so the backup's own \
             warnings and the after-hook's outcome are not known"
        )],
        stats: Some(super::backup::stats(report)),
        repository_id,
        ..Default::default()
    }
}
