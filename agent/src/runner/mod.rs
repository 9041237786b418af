//! Running jobs: one at a time (so never two jobs on the same repository at once), from the
//! local schedule (`scheduler`) or a run-now request. Each job leaves a marker while it runs (so
//! a crash is reported as an interrupted job on the next start), spools a started and a
//! finished event, runs the policy's hooks (`hooks`) around the backup and the backup itself in
//! a child process (`job_process`), which a cancel request kills. A backup's progress is not
//! spooled: the latest sample waits in [`Agent::progress`] for the session to send it.
//!
//! What belongs here: the queue, cancel, the schedule and worker loops and a job's life (marker,
//! events); one backup job's own work (engine inputs, hooks, the child process, its result) is
//! in `backup`; what a job left behind when the agent stopped during it is in `recover`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use cofre_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::scheduler::{Clock, Corrected, Scheduler};
use crate::spool::Spool;
use crate::state::StateDir;

mod backup;
mod recover;

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
    /// The machine's clock, corrected by the controller's once a session has told it.
    clock: Arc<Corrected>,
    /// Cancel requests for jobs not started yet.
    cancelled: Mutex<HashSet<Uuid>>,
    /// The running job and the switch that stops it.
    running: Mutex<Option<(Uuid, watch::Sender<bool>)>>,
    /// The running backup's latest progress event, for a live session to send (never spooled;
    /// `None` when no backup runs).
    pub progress: watch::Sender<Option<pb::JobEvent>>,
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
        let clock = Arc::new(Corrected::new(clock));
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
            progress: watch::Sender::new(None),
            hook_dir,
            machine_id,
            hostname,
        });
        (agent, rx)
    }

    /// The controller's time, as a session's answer gave it; `local` is this machine's clock
    /// when the answer arrived. Schedules and reported times follow the controller's clock from
    /// now on when the two differ by more than a minute (see `scheduler::Corrected`).
    pub fn learn_controller_time(
        &self,
        controller: jiff::Timestamp,
        local: jiff::Timestamp,
    ) -> jiff::SignedDuration {
        self.clock.learn(local, controller)
    }

    /// This machine's own clock, uncorrected (to compare with the controller's).
    pub fn local_now(&self) -> jiff::Timestamp {
        self.clock.local_now()
    }

    /// Now, on the controller's scale (see [`Agent::learn_controller_time`]).
    fn now_utc(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.clock.now().as_microsecond()).unwrap_or_else(Utc::now)
    }

    /// When this machine's certificate expired, if it has: judged on the controller's clock once
    /// a session has told it (the controller is who refuses an expired certificate), so a clock
    /// an hour off neither announces re-enrollment early nor keeps dialling with a dead one.
    pub fn certificate_expired(&self) -> Option<String> {
        self.state.expired_certificate(self.now_utc().timestamp())
    }

    /// Seconds the certificate has left on the controller's clock (negative once expired).
    pub fn certificate_seconds_left(&self) -> Option<i64> {
        self.state.certificate_not_after().map(|t| t - self.now_utc().timestamp())
    }

    pub fn plan_version(&self) -> u64 {
        self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map_or(0, |p| p.version)
    }

    fn policy(&self, id: &str) -> Option<pb::PlanPolicy> {
        let plan = self.plan.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        plan.as_ref()?.policies.iter().find(|p| p.id == id).cloned()
    }

    /// Takes a new plan: stored, and in force at once. A plan that cannot be stored (a full
    /// disk) is still used; the controller sends it again after a restart.
    pub fn set_plan(&self, plan: pb::Plan) -> anyhow::Result<()> {
        match self.state.save_plan(&plan) {
            Ok(()) => {
                tracing::info!(version = plan.version, policies = plan.policies.len(), "new plan stored");
            }
            Err(e) => tracing::error!(version = plan.version, error = %e,
                "cannot store the new plan; using it from memory (it is lost if the agent restarts before the controller sends it again)"),
        }
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
            // Results kept in memory while the spool's disk was full are written when it has room.
            self.spool.retry_held();
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
        let started_at = self.now_utc();
        let mut finished = pb::JobFinished {
            policy_id: job.policy_id.clone(),
            trigger: job.trigger as i32,
            started_at: Some(ts(started_at)),
            ..Default::default()
        };
        if lock(&self.cancelled).remove(&job.job_id) {
            tracing::info!(job.id = %job.job_id, "cancelled before it started");
            finished.outcome = pb::JobOutcome::Cancelled as i32;
            finished.finished_at = Some(ts(self.now_utc()));
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
        // Without its marker (a full disk) the job still runs and reports; only a crash during
        // it would go unreported.
        let marker_written = match crate::state::write_atomic(&marker_path, &serde_json::to_vec(&marker)?) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(job.id = %job.job_id, path = %marker_path.display(), error = %e,
                    "cannot write the running-job marker; running the job anyway");
                false
            }
        };
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
        self.progress.send_replace(None);
        finished.finished_at = Some(ts(self.now_utc()));
        if let Some(end) = job.window_end
            && self.clock.now() > end
        {
            finished.overran_window = true;
            tracing::warn!(job.id = %job.job_id, "the backup ran past its policy's window");
        }
        // The marker goes once the result is safe: written, or acknowledged from memory.
        self.spool.push_with_marker(
            &finished_event(job.job_id, finished.clone()),
            marker_written.then_some(marker_path),
        )?;
        Ok(finished)
    }

    /// Scheduled policies: a temporary failure is retried sooner (see `scheduler`).
    fn after_job(&self, job: &JobRequest, finished: &pb::JobFinished) {
        let Some(p) = self.policy(&job.policy_id) else { return };
        let temporary = finished.outcome == pb::JobOutcome::Failed as i32
            && finished.error.as_ref().is_some_and(|e| e.retry_class == pb::RetryClass::Temporary as i32);
        lock(&self.scheduler).after_run(&p, temporary, self.clock.now());
    }
}

fn finished_event(job: Uuid, finished: pb::JobFinished) -> pb::JobEvent {
    pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Finished(finished)),
    }
}

#[cfg(test)]
mod tests;
