//! Running jobs: one at a time (so never two jobs on the same repository at once), from the
//! local schedule (`scheduler`) or a run-now request. Each job leaves a marker while it runs (so
//! a crash is reported as an interrupted job on the next start), spools a started and a
//! finished event, runs the policy's hooks (`hooks`) around the backup and the backup itself in
//! a child process (`job_process`), which a cancel request kills.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use cofre_proto::agent::v1 as pb;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::scheduler::{Clock, Scheduler};
use crate::spool::Spool;
use crate::state::StateDir;

#[derive(Debug, Clone)]
pub struct JobRequest {
    pub job_id: Uuid,
    pub policy_id: String,
    pub trigger: pb::TriggerKind,
    /// When the policy's window closes (scheduled runs of windowed policies).
    pub window_end: Option<jiff::Timestamp>,
}

/// Written to running/<job>.json while a job runs.
#[derive(Debug, Serialize, Deserialize)]
struct RunningMarker {
    job_id: Uuid,
    policy_id: String,
    trigger: i32,
    started_at: DateTime<Utc>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything the agent's tasks share.
pub struct Agent {
    pub state: StateDir,
    pub spool: Spool,
    pub plan: RwLock<Option<pb::Plan>>,
    queue: mpsc::Sender<JobRequest>,
    /// Jobs accepted in this process (queued or done), so a repeated RunNow runs once.
    accepted: Mutex<HashSet<Uuid>>,
    /// Jobs queued or running per policy, so the schedule does not pile up.
    busy: Mutex<HashMap<String, usize>>,
    scheduler: Mutex<Scheduler>,
    clock: Arc<dyn Clock>,
    /// Cancel requests for jobs not started yet.
    cancelled: Mutex<HashSet<Uuid>>,
    /// The running job and the switch that stops it.
    running: Mutex<Option<(Uuid, watch::Sender<bool>)>>,
    hook_dir: PathBuf,
    machine_id: Uuid,
    pub hostname: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("machine_id", &self.machine_id).finish_non_exhaustive()
    }
}

pub(crate) fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl Agent {
    pub fn new(
        state: StateDir,
        clock: Arc<dyn Clock>,
        hook_dir: PathBuf,
    ) -> (Arc<Self>, mpsc::Receiver<JobRequest>) {
        let (tx, rx) = mpsc::channel(256);
        let plan = state.load_plan();
        let machine_id =
            state.identity().ok().and_then(|i| Uuid::try_parse(&i.machine_id).ok()).unwrap_or_default();
        let scheduler = Scheduler::load(state.load_schedule().as_deref(), machine_id.as_bytes(), clock.now());
        let spool = Spool::new(state.spool_dir());
        let hostname = crate::enroll::inventory().hostname;
        let agent = Arc::new(Self {
            state,
            spool,
            plan: RwLock::new(plan),
            queue: tx,
            accepted: Mutex::new(HashSet::new()),
            busy: Mutex::new(HashMap::new()),
            scheduler: Mutex::new(scheduler),
            clock,
            cancelled: Mutex::new(HashSet::new()),
            running: Mutex::new(None),
            hook_dir,
            machine_id,
            hostname,
        });
        (agent, rx)
    }

    pub fn plan_version(&self) -> u64 {
        self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map_or(0, |p| p.version)
    }

    fn policy(&self, id: &str) -> Option<pb::PlanPolicy> {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        plan.as_ref()?.policies.iter().find(|p| p.id == id).cloned()
    }

    pub fn set_plan(&self, plan: pb::Plan) -> anyhow::Result<()> {
        self.state.save_plan(&plan)?;
        tracing::info!(version = plan.version, policies = plan.policies.len(), "new plan stored");
        *self.plan.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan);
        Ok(())
    }

    /// Queues a job unless this job id was already accepted or its policy is already busy.
    pub fn submit(&self, req: JobRequest) -> bool {
        if !lock(&self.accepted).insert(req.job_id) {
            return false;
        }
        *lock(&self.busy).entry(req.policy_id.clone()).or_insert(0) += 1;
        let (job, policy) = (req.job_id, req.policy_id.clone());
        match self.queue.try_send(req) {
            Ok(()) => true,
            Err(e) => {
                // Undo, so the job may be offered again and the policy is not stuck as busy.
                tracing::warn!(error = %e, "job queue full; dropping request");
                lock(&self.accepted).remove(&job);
                self.done_with(&policy);
                false
            }
        }
    }

    fn done_with(&self, policy: &str) {
        let mut busy = lock(&self.busy);
        if let Some(n) = busy.get_mut(policy) {
            *n -= 1;
            if *n == 0 {
                busy.remove(policy);
            }
        }
    }

    /// A cancel request from the controller: stops the running job, or drops a queued one
    /// when its turn comes. Unknown jobs are ignored.
    pub fn cancel(&self, job: Uuid) {
        if let Some((running, stop)) = lock(&self.running).as_ref()
            && *running == job
        {
            tracing::info!(job.id = %job, "cancelling the running job");
            let _ = stop.send(true);
            return;
        }
        if lock(&self.accepted).contains(&job) {
            lock(&self.cancelled).insert(job);
        }
    }

    /// Converts markers of jobs that were running when the agent stopped into spooled
    /// "interrupted" results, and removes the repository locks their backups left behind.
    /// Returns their ids for Hello.
    pub async fn recover_interrupted(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.state.running_dir()) else { return ids };
        let paths: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        for p in paths.iter().filter(|p| p.extension().is_some_and(|x| x == "json")) {
            let marker: Option<RunningMarker> =
                std::fs::read(p).ok().and_then(|raw| serde_json::from_slice(&raw).ok());
            if let Some(m) = marker {
                self.remove_left_lock(&m.policy_id, &m.job_id).await;
                let ev = finished_event(
                    m.job_id,
                    pb::JobFinished {
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
                    },
                );
                if self.spool.push(&ev).is_err() {
                    continue; // keep the marker; try again next start
                }
                ids.push(m.job_id.to_string());
            }
            let _ = std::fs::remove_file(p);
        }
        if !ids.is_empty() {
            tracing::warn!(jobs = ?ids, "jobs were interrupted when the agent last stopped");
        }
        ids
    }

    /// The lock a killed backup of `policy` recorded, removed through the current plan's
    /// repository (if the policy is still there).
    async fn remove_left_lock(&self, policy: &str, job: &Uuid) {
        let record = self.lock_record(job);
        if !record.exists() {
            return;
        }
        match self.prepare(policy, *job) {
            Ok((target, req, _)) => {
                let child = crate::job_process::ChildJob::new(&target, &req, None);
                crate::job_process::remove_left_lock(&child).await;
            }
            Err(_) => {
                let _ = std::fs::remove_file(&record);
            }
        }
    }

    fn lock_record(&self, job: &Uuid) -> PathBuf {
        self.state.running_dir().join(format!("{job}.lock"))
    }

    /// Policies due by the local schedule now; records their slots.
    fn due_jobs(&self) -> Vec<JobRequest> {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(plan) = plan else { return Vec::new() };
        let busy: HashSet<String> = lock(&self.busy).keys().cloned().collect();
        let mut sched = lock(&self.scheduler);
        let (due, changed) = sched.due(&plan, &busy, self.clock.as_ref());
        if changed && let Err(e) = self.state.save_schedule(&sched.to_json()) {
            tracing::warn!(error = %e, "cannot save the schedule");
        }
        due.into_iter()
            .map(|d| JobRequest {
                job_id: Uuid::now_v7(),
                policy_id: d.policy_id,
                trigger: pb::TriggerKind::Schedule,
                window_end: d.window_end,
            })
            .collect()
    }

    /// The local scheduler: runs whether or not the controller is reachable, evaluating every
    /// few seconds (never one long sleep: see `scheduler`).
    pub async fn schedule_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(crate::scheduler::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for job in self.due_jobs() {
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
                Ok(finished) => self.after_job(&job, &finished),
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
        let mut finished = pb::JobFinished {
            policy_id: job.policy_id.clone(),
            trigger: job.trigger as i32,
            started_at: Some(ts(started_at)),
            ..Default::default()
        };
        if lock(&self.cancelled).remove(&job.job_id) {
            tracing::info!(job.id = %job.job_id, "cancelled before it started");
            finished.outcome = pb::JobOutcome::Cancelled as i32;
            finished.finished_at = Some(ts(Utc::now()));
            self.spool.push(&finished_event(job.job_id, finished.clone()))?;
            return Ok(finished);
        }
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
        if job.trigger == pb::TriggerKind::RunNow
            && let Some(p) = self.policy(&job.policy_id)
        {
            let mut sched = lock(&self.scheduler);
            sched.record_run_now(&p, self.clock.now());
            if let Err(e) = self.state.save_schedule(&sched.to_json()) {
                tracing::warn!(error = %e, "cannot save the schedule");
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        *lock(&self.running) = Some((job.job_id, stop_tx));
        self.run_backup(job, &mut finished, stop_rx).await;
        *lock(&self.running) = None;
        finished.finished_at = Some(ts(Utc::now()));
        if let Some(end) = job.window_end
            && self.clock.now() > end
        {
            finished.overran_window = true;
            tracing::warn!(job.id = %job.job_id, "the backup ran past its policy's window");
        }
        self.spool.push(&finished_event(job.job_id, finished.clone()))?;
        std::fs::remove_file(&marker_path)?;
        Ok(finished)
    }

    /// Hooks and the backup, filling `finished`.
    async fn run_backup(
        &self,
        job: &JobRequest,
        finished: &mut pb::JobFinished,
        stop: watch::Receiver<bool>,
    ) {
        let fail = |f: &mut pb::JobFinished, message: String, class: pb::RetryClass| {
            f.outcome = pb::JobOutcome::Failed as i32;
            f.error = Some(pb::JobError { message, retry_class: class as i32 });
        };
        let (target, req, repository_id) = match self.prepare(&job.policy_id, job.job_id) {
            Ok(p) => p,
            Err(msg) => return fail(finished, msg, pb::RetryClass::Permanent),
        };
        finished.repository_id = repository_id;
        let policy = self.policy(&job.policy_id).unwrap_or_default();
        let mut log = String::new();
        let mut hook_warnings = Vec::new();
        if let Some(h) = &policy.before_hook {
            let r = crate::hooks::run(&self.hook_dir, h, &self.hook_env(job, &policy, None)).await;
            append_log(&mut log, &r);
            if !r.ok {
                match pb::HookOnFailure::try_from(h.on_failure).unwrap_or(pb::HookOnFailure::Fail) {
                    pb::HookOnFailure::SkipBackup => {
                        finished.outcome = pb::JobOutcome::Skipped as i32;
                        finished.warnings.push(r.summary);
                        finished.log = log;
                        return;
                    }
                    pb::HookOnFailure::Continue => hook_warnings.push(r.summary),
                    _ => {
                        finished.log = log;
                        return fail(finished, r.summary, pb::RetryClass::Temporary);
                    }
                }
            }
        }
        let child = crate::job_process::ChildJob::new(&target, &req, Some(self.state.root().join("cache")));
        let mut stop = stop;
        let cancelled = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        match crate::job_process::run(&child, cancelled).await {
            Ok(report) => {
                tracing::info!(job.id = %job.job_id, snapshot = %report.snapshot_id,
                    files = report.files_processed, bytes_added = report.bytes_added,
                    warnings = report.warnings.len(), "backup finished");
                finished.warnings = report.warnings.clone();
                finished.stats = Some(stats(&report));
                finished.outcome = pb::JobOutcome::Succeeded as i32;
            }
            Err(e) if e.cancelled => {
                tracing::info!(job.id = %job.job_id, "backup cancelled");
                finished.outcome = pb::JobOutcome::Cancelled as i32;
                finished.log = log;
                return;
            }
            Err(e) => {
                tracing::error!(job.id = %job.job_id, error = %e.message, "backup failed");
                fail(
                    finished,
                    e.message,
                    match e.retry_class {
                        cofre_engine::RetryClass::Temporary => pb::RetryClass::Temporary,
                        cofre_engine::RetryClass::Permanent => pb::RetryClass::Permanent,
                    },
                );
            }
        }
        if let Some(h) = &policy.after_hook {
            let outcome =
                if finished.outcome == pb::JobOutcome::Failed as i32 { "failed" } else { "succeeded" };
            let r = crate::hooks::run(&self.hook_dir, h, &self.hook_env(job, &policy, Some(outcome))).await;
            append_log(&mut log, &r);
            if !r.ok {
                match pb::HookOnFailure::try_from(h.on_failure).unwrap_or(pb::HookOnFailure::Fail) {
                    pb::HookOnFailure::Fail if finished.error.is_none() => {
                        // The snapshot stays recorded; the job still fails.
                        fail(finished, r.summary, pb::RetryClass::Temporary);
                    }
                    _ => hook_warnings.push(r.summary),
                }
            }
        }
        finished.warnings.extend(hook_warnings);
        if finished.outcome == pb::JobOutcome::Succeeded as i32 && !finished.warnings.is_empty() {
            finished.outcome = pb::JobOutcome::SucceededWithWarnings as i32;
        }
        finished.log = log;
    }

    fn hook_env(
        &self,
        job: &JobRequest,
        p: &pb::PlanPolicy,
        outcome: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("COFRE_JOB_ID", job.job_id.to_string()),
            ("COFRE_POLICY_ID", p.id.clone()),
            ("COFRE_POLICY_NAME", p.name.clone()),
            ("COFRE_MACHINE_ID", self.machine_id.to_string()),
            ("COFRE_HOOK", if outcome.is_some() { "after" } else { "before" }.to_string()),
        ];
        if let Some(o) = outcome {
            env.push(("COFRE_BACKUP_OUTCOME", o.to_string()));
        }
        env
    }

    /// Scheduled policies: a temporary failure is retried sooner (see `scheduler`).
    fn after_job(&self, job: &JobRequest, finished: &pb::JobFinished) {
        let Some(p) = self.policy(&job.policy_id) else { return };
        let temporary = finished.outcome == pb::JobOutcome::Failed as i32
            && finished.error.as_ref().is_some_and(|e| e.retry_class == pb::RetryClass::Temporary as i32);
        lock(&self.scheduler).after_run(&p, temporary, self.clock.now());
    }

    /// The engine's inputs for a policy of the current plan.
    fn prepare(
        &self,
        policy_id: &str,
        job: Uuid,
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
        // Cofre's own tags say which policy and machine made a snapshot (the controller's
        // retention keeps each policy's history by its own rules).
        let mut tags = vec![
            "cofre".to_string(),
            format!("cofre-policy:{}", policy.id),
            format!("cofre-machine:{}", self.machine_id),
        ];
        tags.extend(policy.tags.iter().cloned());
        let req = cofre_engine::BackupRequest {
            expected_restic_id: repo.restic_id.clone(),
            paths: policy.paths.iter().map(std::path::PathBuf::from).collect(),
            excludes: policy.excludes.clone(),
            filters: cofre_engine::SourceFilters {
                iexcludes: policy.iexcludes.clone(),
                exclude_if_present: policy.exclude_if_present.clone(),
                exclude_larger_than: Some(policy.exclude_larger_than_bytes).filter(|b| *b > 0),
                one_file_system: policy.one_file_system,
            },
            hostname: self.hostname.clone(),
            tags,
            lock: cofre_engine::LockOptions {
                wait: crate::job_process::LOCK_WAIT,
                record: Some(self.lock_record(&job)),
                stale: Vec::new(),
            },
        };
        Ok((target, req, repo.id.clone()))
    }
}

fn finished_event(job: Uuid, finished: pb::JobFinished) -> pb::JobEvent {
    pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Finished(finished)),
    }
}

fn append_log(log: &mut String, r: &crate::hooks::HookResult) {
    log.push_str(&format!("== {}\n", r.summary));
    if !r.output.is_empty() {
        log.push_str(&r.output);
        if !r.output.ends_with('\n') {
            log.push('\n');
        }
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
        utc_offset_seconds: r.utc_offset_seconds,
        tags: r.tags.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the state dir and the job queue's receiver alive for the test's duration.
    #[allow(dead_code, reason = "held only to be dropped at the end of the test")]
    struct Held(tempfile::TempDir, mpsc::Receiver<JobRequest>);

    fn agent() -> (Held, Arc<Agent>) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (agent, rx) =
            Agent::new(state, Arc::new(crate::scheduler::SystemClock::default()), dir.path().join("hooks"));
        let plan = pb::Plan {
            version: 1,
            repositories: vec![],
            policies: vec![pb::PlanPolicy {
                id: "p1".into(),
                schedule: Some(pb::Schedule { interval_seconds: 3600, ..Default::default() }),
                ..Default::default()
            }],
        };
        agent.set_plan(plan).unwrap();
        (Held(dir, rx), agent)
    }

    fn job(id: Uuid) -> JobRequest {
        JobRequest { job_id: id, policy_id: "p1".into(), trigger: pb::TriggerKind::RunNow, window_end: None }
    }

    #[test]
    fn a_policy_with_a_job_queued_is_not_scheduled_again() {
        let (_d, agent) = agent();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(agent.submit(job(a)));
        assert!(!agent.submit(job(a)), "the same job is accepted once");
        assert!(agent.submit(job(b)));
        assert!(agent.due_jobs().is_empty(), "busy");
        agent.done_with("p1");
        assert!(agent.due_jobs().is_empty(), "one job still queued");
        agent.done_with("p1");
        assert_eq!(agent.due_jobs().len(), 1);
        // The schedule survives a restart of the agent.
        let (again, _rx) =
            Agent::new(agent.state.clone(), Arc::new(crate::scheduler::SystemClock::default()), "/x".into());
        assert!(again.due_jobs().is_empty());
    }

    #[tokio::test]
    async fn a_queued_job_cancelled_before_its_turn_ends_cancelled_without_running() {
        let (_d, agent) = agent();
        let id = Uuid::now_v7();
        assert!(agent.submit(job(id)));
        agent.cancel(id);
        let finished = agent.run_job(&job(id)).await.unwrap();
        assert_eq!(finished.outcome, pb::JobOutcome::Cancelled as i32);
        assert_eq!(agent.spool.pending().len(), 1, "the result is spooled");
        agent.cancel(Uuid::now_v7()); // unknown jobs are ignored
    }

    #[test]
    fn snapshots_carry_the_policy_and_the_machine_as_tags() {
        let (_d, agent) = agent();
        {
            let mut plan = agent.plan.write().unwrap();
            let plan = plan.as_mut().unwrap();
            plan.repositories.push(pb::PlanRepository {
                id: "r".into(),
                url: "https://store.example/r".into(),
                restic_id: "ab".repeat(32),
                repository_password: "pw".into(),
                ..Default::default()
            });
            plan.policies[0].repository_id = "r".into();
            plan.policies[0].tags = vec!["finance".into()];
        }
        let (_, req, _) = agent.prepare("p1", Uuid::nil()).unwrap();
        assert!(req.tags.contains(&"cofre-policy:p1".to_string()));
        assert!(req.tags.iter().any(|t| t.starts_with("cofre-machine:")));
        assert!(req.tags.contains(&"finance".to_string()));
        assert!(req.lock.record.is_some());
    }
}
