//! Running jobs: one at a time, from the local schedule or a run-now request. Each job leaves
//! a marker while it runs (so a crash is reported as an interrupted job on the next start),
//! spools a started and a finished event, and runs the backup engine in a child process
//! (`job_process`).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cofre_proto::agent::v1 as pb;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::spool::Spool;
use crate::state::StateDir;

#[derive(Debug, Clone)]
pub struct JobRequest {
    pub job_id: Uuid,
    pub policy_id: String,
    pub trigger: pb::TriggerKind,
}

/// Written to running/<job>.json while a job runs.
#[derive(Debug, Serialize, Deserialize)]
struct RunningMarker {
    job_id: Uuid,
    policy_id: String,
    trigger: i32,
    started_at: DateTime<Utc>,
}

/// Everything the agent's tasks share.
#[derive(Debug)]
pub struct Agent {
    pub state: StateDir,
    pub spool: Spool,
    pub plan: RwLock<Option<pb::Plan>>,
    queue: mpsc::Sender<JobRequest>,
    /// Jobs accepted in this process (queued or done), so a repeated RunNow runs once.
    accepted: Mutex<HashSet<Uuid>>,
    /// Jobs queued or running per policy, so the schedule does not pile up.
    busy: Mutex<std::collections::HashMap<String, usize>>,
    schedule: Mutex<BTreeMap<String, DateTime<Utc>>>,
    /// Consecutive temporary failures per policy, for retry backoff.
    failures: Mutex<std::collections::HashMap<String, u32>>,
    pub hostname: String,
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl Agent {
    pub fn new(state: StateDir) -> (Arc<Self>, mpsc::Receiver<JobRequest>) {
        let (tx, rx) = mpsc::channel(256);
        let plan = state.load_plan();
        let schedule = state.load_schedule();
        let spool = Spool::new(state.spool_dir());
        let hostname = crate::enroll::inventory().hostname;
        let agent = Arc::new(Self {
            state,
            spool,
            plan: RwLock::new(plan),
            queue: tx,
            accepted: Mutex::new(HashSet::new()),
            busy: Mutex::new(std::collections::HashMap::new()),
            schedule: Mutex::new(schedule),
            failures: Mutex::new(std::collections::HashMap::new()),
            hostname,
        });
        (agent, rx)
    }

    pub fn plan_version(&self) -> u64 {
        self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map_or(0, |p| p.version)
    }

    pub fn set_plan(&self, plan: pb::Plan) -> anyhow::Result<()> {
        self.state.save_plan(&plan)?;
        tracing::info!(version = plan.version, policies = plan.policies.len(), "new plan stored");
        *self.plan.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan);
        Ok(())
    }

    /// Queues a job unless this job id was already accepted or its policy is already busy.
    pub fn submit(&self, req: JobRequest) -> bool {
        if !self.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(req.job_id) {
            return false;
        }
        *self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(req.policy_id.clone())
            .or_insert(0) += 1;
        let (job, policy) = (req.job_id, req.policy_id.clone());
        match self.queue.try_send(req) {
            Ok(()) => true,
            Err(e) => {
                // Undo, so the job may be offered again and the policy is not stuck as busy.
                tracing::warn!(error = %e, "job queue full; dropping request");
                self.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&job);
                self.done_with(&policy);
                false
            }
        }
    }

    fn done_with(&self, policy: &str) {
        let mut busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = busy.get_mut(policy) {
            *n -= 1;
            if *n == 0 {
                busy.remove(policy);
            }
        }
    }

    /// Converts markers of jobs that were running when the agent stopped into spooled
    /// "interrupted" results. Returns their ids for Hello.
    pub fn recover_interrupted(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.state.running_dir()) else { return ids };
        for entry in rd.filter_map(|e| e.ok()) {
            let p = entry.path();
            let marker: Option<RunningMarker> =
                std::fs::read(&p).ok().and_then(|raw| serde_json::from_slice(&raw).ok());
            if let Some(m) = marker {
                let ev = pb::JobEvent {
                    event_id: Uuid::now_v7().to_string(),
                    job_id: m.job_id.to_string(),
                    kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
                        policy_id: m.policy_id,
                        trigger: m.trigger,
                        started_at: Some(ts(m.started_at)),
                        finished_at: Some(ts(Utc::now())),
                        outcome: pb::JobOutcome::Interrupted as i32,
                        error: Some(pb::JobError {
                            message: "the agent stopped while this job was running".into(),
                            retry_class: pb::RetryClass::Temporary as i32,
                        }),
                        ..Default::default()
                    })),
                };
                if self.spool.push(&ev).is_err() {
                    continue; // keep the marker; try again next start
                }
                ids.push(m.job_id.to_string());
            }
            let _ = std::fs::remove_file(&p);
        }
        if !ids.is_empty() {
            tracing::warn!(jobs = ?ids, "jobs were interrupted when the agent last stopped");
        }
        ids
    }

    /// Policies due by the local schedule; records their start time.
    fn due_policies(&self) -> Vec<String> {
        self.due_policies_at(Utc::now())
    }

    fn due_policies_at(&self, now: DateTime<Utc>) -> Vec<String> {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(plan) = plan else { return Vec::new() };
        let busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut schedule = self.schedule.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut due = Vec::new();
        for p in plan.policies.iter().filter(|p| p.interval_seconds > 0) {
            let interval =
                chrono::Duration::seconds(i64::try_from(p.interval_seconds).unwrap_or(i64::MAX / 2));
            let is_due = schedule.get(&p.id).is_none_or(|last| now - *last >= interval);
            if is_due && !busy.contains_key(&p.id) {
                schedule.insert(p.id.clone(), now);
                due.push(p.id.clone());
            }
        }
        if !due.is_empty()
            && let Err(e) = self.state.save_schedule(&schedule)
        {
            tracing::warn!(error = %e, "cannot save the schedule");
        }
        due
    }

    /// A run-now counts as the policy's last run: the next scheduled one is an interval later.
    fn record_run(&self, policy_id: &str, at: DateTime<Utc>) {
        let mut schedule = self.schedule.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        schedule.insert(policy_id.to_string(), at);
        if let Err(e) = self.state.save_schedule(&schedule) {
            tracing::warn!(error = %e, "cannot save the schedule");
        }
    }

    /// The local scheduler: runs whether or not the controller is reachable.
    pub async fn schedule_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for policy_id in self.due_policies() {
                let job =
                    JobRequest { job_id: Uuid::now_v7(), policy_id, trigger: pb::TriggerKind::Schedule };
                tracing::info!(job.id = %job.job_id, policy = %job.policy_id, "scheduled backup due");
                self.submit(job);
            }
        }
    }

    /// Runs queued jobs one at a time.
    pub async fn worker_loop(self: Arc<Self>, mut rx: mpsc::Receiver<JobRequest>) {
        while let Some(job) = rx.recv().await {
            let policy = job.policy_id.clone();
            match self.run_job(&job).await {
                Ok(finished) => self.after_job(&policy, &finished, Utc::now()),
                Err(e) => {
                    tracing::error!(job.id = %job.job_id, error = %e, "cannot record job; it will be reported as interrupted");
                }
            }
            self.done_with(&policy);
        }
    }

    /// Runs one job; returns its result as reported.
    async fn run_job(&self, job: &JobRequest) -> anyhow::Result<pb::JobFinished> {
        let started_at = Utc::now();
        let marker_path = self.state.running_dir().join(format!("{}.json", job.job_id));
        let marker = RunningMarker {
            job_id: job.job_id,
            policy_id: job.policy_id.clone(),
            trigger: job.trigger as i32,
            started_at,
        };
        crate::state::write_atomic(&marker_path, &serde_json::to_vec(&marker)?)?;
        self.spool.push(&pb::JobEvent {
            event_id: Uuid::now_v7().to_string(),
            job_id: job.job_id.to_string(),
            kind: Some(pb::job_event::Kind::Started(pb::JobStarted {
                policy_id: job.policy_id.clone(),
                trigger: job.trigger as i32,
                started_at: Some(ts(started_at)),
            })),
        })?;
        tracing::info!(job.id = %job.job_id, policy = %job.policy_id, "backup started");
        if job.trigger == pb::TriggerKind::RunNow {
            self.record_run(&job.policy_id, started_at);
        }
        let mut finished = pb::JobFinished {
            policy_id: job.policy_id.clone(),
            trigger: job.trigger as i32,
            started_at: Some(ts(started_at)),
            ..Default::default()
        };
        match self.prepare(&job.policy_id) {
            Err(msg) => {
                finished.outcome = pb::JobOutcome::Failed as i32;
                finished.error =
                    Some(pb::JobError { message: msg, retry_class: pb::RetryClass::Permanent as i32 });
            }
            Ok((target, req, repository_id)) => {
                finished.repository_id = repository_id;
                let child =
                    crate::job_process::ChildJob::new(&target, &req, Some(self.state.root().join("cache")));
                match crate::job_process::run(&child).await {
                    Ok(report) => {
                        finished.outcome = if report.warnings.is_empty() {
                            pb::JobOutcome::Succeeded
                        } else {
                            pb::JobOutcome::SucceededWithWarnings
                        } as i32;
                        tracing::info!(job.id = %job.job_id, snapshot = %report.snapshot_id,
                            files = report.files_processed, bytes_added = report.bytes_added,
                            warnings = report.warnings.len(), "backup finished");
                        finished.warnings = report.warnings.clone();
                        finished.stats = Some(stats(&report));
                    }
                    Err(e) => {
                        tracing::error!(job.id = %job.job_id, error = %e.message, "backup failed");
                        finished.outcome = pb::JobOutcome::Failed as i32;
                        finished.error = Some(pb::JobError {
                            message: e.message,
                            retry_class: match e.retry_class {
                                cofre_engine::RetryClass::Temporary => pb::RetryClass::Temporary,
                                cofre_engine::RetryClass::Permanent => pb::RetryClass::Permanent,
                            } as i32,
                        });
                    }
                }
            }
        }
        finished.finished_at = Some(ts(Utc::now()));
        self.spool.push(&pb::JobEvent {
            event_id: Uuid::now_v7().to_string(),
            job_id: job.job_id.to_string(),
            kind: Some(pb::job_event::Kind::Finished(finished.clone())),
        })?;
        std::fs::remove_file(&marker_path)?;
        Ok(finished)
    }

    /// After a temporary failure a scheduled policy is retried sooner than its interval: after
    /// 1, 2, 4, ... minutes, never later than the interval itself. Success resets the count; a
    /// permanent failure waits for the next interval (something must change first).
    fn after_job(&self, policy_id: &str, finished: &pb::JobFinished, now: DateTime<Utc>) {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let temporary = finished.outcome == pb::JobOutcome::Failed as i32
            && finished.error.as_ref().is_some_and(|e| e.retry_class == pb::RetryClass::Temporary as i32);
        if !temporary {
            failures.remove(policy_id);
            return;
        }
        let attempts = failures.entry(policy_id.to_string()).or_insert(0);
        *attempts += 1;
        let interval = self.interval_of(policy_id);
        if interval == 0 {
            return;
        }
        let backoff = (60_u64 << (*attempts - 1).min(16)).min(interval);
        let due_at = now + chrono::Duration::seconds(i64::try_from(backoff).unwrap_or(i64::MAX / 4));
        let last = due_at - chrono::Duration::seconds(i64::try_from(interval).unwrap_or(i64::MAX / 4));
        tracing::info!(policy = %policy_id, attempt = *attempts, retry_in_s = backoff, "temporary failure: retrying sooner");
        drop(failures);
        self.record_run(policy_id, last);
    }

    fn interval_of(&self, policy_id: &str) -> u64 {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        plan.as_ref()
            .and_then(|p| p.policies.iter().find(|x| x.id == policy_id))
            .map_or(0, |p| p.interval_seconds)
    }

    /// The engine's inputs for a policy of the current plan.
    fn prepare(
        &self,
        policy_id: &str,
    ) -> Result<(cofre_engine::RepoTarget, cofre_engine::BackupRequest, String), String> {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let plan = plan.ok_or("no plan received yet")?;
        let policy = plan
            .policies
            .iter()
            .find(|p| p.id == policy_id)
            .ok_or_else(|| format!("policy {policy_id} is not in this machine's current plan"))?;
        let repo = plan
            .repositories
            .iter()
            .find(|r| r.id == policy.repository_id)
            .ok_or_else(|| format!("repository {} missing from the plan", policy.repository_id))?;
        if repo.restic_id.is_empty() {
            return Err("the plan's repository has no recorded restic id; refusing to write".into());
        }
        let ca_cert_file = if repo.ca_certificate_pem.is_empty() {
            None
        } else {
            Some(self.state.rest_ca_file(&repo.id, &repo.ca_certificate_pem).map_err(|e| e.to_string())?)
        };
        let target = cofre_engine::RepoTarget {
            url: repo.url.clone(),
            username: Some(repo.username.clone()).filter(|u| !u.is_empty()),
            password: Some(repo.password.clone()).filter(|p| !p.is_empty()).map(SecretString::from),
            repository_password: SecretString::from(repo.repository_password.clone()),
            ca_cert_file,
            // A cofre-store knows this machine by its certificate (identity.pem: certificate
            // and key in one file, replaced atomically on renewal).
            client_identity_file: repo.client_certificate.then(|| self.state.identity_pem_path()),
            allow_insecure_http: repo.allow_insecure_http,
        };
        let req = cofre_engine::BackupRequest {
            expected_restic_id: repo.restic_id.clone(),
            paths: policy.paths.iter().map(std::path::PathBuf::from).collect(),
            excludes: policy.excludes.clone(),
            hostname: self.hostname.clone(),
            tags: vec!["cofre".into()],
        };
        Ok((target, req, repo.id.clone()))
    }
}

fn stats(r: &cofre_engine::BackupReport) -> pb::BackupStats {
    pb::BackupStats {
        snapshot_id: r.snapshot_id.clone(),
        files_new: r.files_new,
        files_changed: r.files_changed,
        files_unmodified: r.files_unmodified,
        dirs_new: r.dirs_new,
        dirs_changed: r.dirs_changed,
        dirs_unmodified: r.dirs_unmodified,
        files_processed: r.files_processed,
        bytes_processed: r.bytes_processed,
        bytes_added: r.bytes_added,
        bytes_added_packed: r.bytes_added_packed,
        snapshot_time: Some(ts(r.snapshot_time)),
        paths: r.paths.clone(),
        hostname: r.hostname.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the state dir and the job queue's receiver alive for the test's duration.
    #[allow(dead_code, reason = "held only to be dropped at the end of the test")]
    struct Held(tempfile::TempDir, mpsc::Receiver<JobRequest>);

    fn agent_with_policy(interval: u64) -> (Held, Arc<Agent>) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (agent, rx) = Agent::new(state);
        let plan = pb::Plan {
            version: 1,
            repositories: vec![],
            policies: vec![pb::PlanPolicy {
                id: "p1".into(),
                interval_seconds: interval,
                ..Default::default()
            }],
        };
        agent.set_plan(plan).unwrap();
        (Held(dir, rx), agent)
    }

    #[test]
    fn a_new_policy_is_due_at_once_then_an_interval_later() {
        let (_d, agent) = agent_with_policy(3600);
        assert_eq!(agent.due_policies(), vec!["p1".to_string()]);
        assert!(agent.due_policies().is_empty(), "not due again within the interval");
        // The schedule survives a restart of the agent.
        let (again, _rx) = Agent::new(agent.state.clone());
        assert!(again.due_policies().is_empty());
    }

    fn failed(class: pb::RetryClass) -> pb::JobFinished {
        pb::JobFinished {
            outcome: pb::JobOutcome::Failed as i32,
            error: Some(pb::JobError { message: "x".into(), retry_class: class as i32 }),
            ..Default::default()
        }
    }

    #[test]
    fn temporary_failures_retry_sooner_with_backoff_permanent_ones_wait() {
        let (_d, agent) = agent_with_policy(3600);
        let t0 = Utc::now();
        assert_eq!(agent.due_policies_at(t0).len(), 1);
        agent.after_job("p1", &failed(pb::RetryClass::Temporary), t0);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        assert!(agent.due_policies_at(at(59)).is_empty());
        assert_eq!(agent.due_policies_at(at(61)).len(), 1, "first retry after a minute");
        agent.after_job("p1", &failed(pb::RetryClass::Temporary), at(61));
        assert!(agent.due_policies_at(at(61 + 119)).is_empty());
        assert_eq!(agent.due_policies_at(at(61 + 121)).len(), 1, "then after two minutes");
        // A permanent failure does not hurry: the next run is an interval after the last start.
        agent.after_job("p1", &failed(pb::RetryClass::Permanent), at(182));
        assert!(agent.due_policies_at(at(182 + 600)).is_empty());
        assert_eq!(agent.due_policies_at(at(182 + 3601)).len(), 1);
    }

    #[test]
    fn a_policy_with_a_job_queued_is_not_scheduled_again() {
        let (_d, agent) = agent_with_policy(3600);
        let job = |id| JobRequest { job_id: id, policy_id: "p1".into(), trigger: pb::TriggerKind::RunNow };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(agent.submit(job(a)));
        assert!(!agent.submit(job(a)), "the same job is accepted once");
        assert!(agent.submit(job(b)));
        assert!(agent.due_policies().is_empty(), "busy");
        agent.done_with("p1");
        assert!(agent.due_policies().is_empty(), "one job still queued");
        agent.done_with("p1");
        assert_eq!(agent.due_policies(), vec!["p1".to_string()]);
    }

    #[test]
    fn a_run_now_postpones_the_next_scheduled_run() {
        let (_d, agent) = agent_with_policy(3600);
        agent.record_run("p1", Utc::now());
        assert!(agent.due_policies().is_empty());
        let (_d2, on_demand) = agent_with_policy(0);
        assert!(on_demand.due_policies().is_empty(), "interval 0 means on demand only");
    }
}
