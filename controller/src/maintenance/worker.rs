//! The maintenance worker of one replica: claims queued maintenance jobs (and ones whose holder
//! died), runs each in its own process, and records the result.
//!
//! Exactly one replica runs a given job: the claim is a conditional UPDATE, and while a job
//! runs its replica holds a session advisory lock for the repository on a connection of its
//! own, and refreshes the job's heartbeat. If the replica dies, Postgres drops its connection
//! (releasing the lock) and the heartbeat goes stale; another replica then claims the job,
//! removes the restic lock the dead holder's process left (its id is in the job row) and runs
//! the job again from the start (forget, prune and check are all safe to repeat). A replica that
//! loses its claim (its connection or its heartbeat) kills its job's process at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cofre_engine::child::{ChildError, run_json};
use sqlx::PgConnection;
use sqlx::PgPool;
use uuid::Uuid;

use super::child::{MaintenanceJob, Task, TaskResult};
use super::identity::MaintenanceIdentity;
use crate::audit::{self, Actor};
use crate::config::MaintenanceSettings;
use crate::error::{Error, Result};
use crate::seal::MasterKey;

/// Advisory lock namespace (first key) for "a replica works on this repository".
const REPO_LOCK_CLASS: i32 = 0x636f_6672;
/// A running job whose heartbeat is older than this may be taken over.
pub(super) const STALE_AFTER_SECS: i64 = 20;
/// How often a running job's heartbeat is refreshed and its claim, cancel and lock checked.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Largest result a maintenance process may print.
const MAX_RESULT_BYTES: u64 = 16 * 1024 * 1024;

/// Everything a replica's maintenance needs.
#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub master: MasterKey,
    pub identity: Arc<MaintenanceIdentity>,
    pub settings: MaintenanceSettings,
    /// Names this replica in `jobs.holder`.
    pub replica: String,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct Claimed {
    id: Uuid,
    kind: String,
    restic_repository_id: Uuid,
    /// The holder's lock record (the ids of the locks it stored, one per line).
    lock_id: Option<String>,
    cancel_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(super) attempts: i32,
    options: serde_json::Value,
}

impl Claimed {
    fn dry_run(&self) -> bool {
        self.options.get("dry_run").and_then(serde_json::Value::as_bool).unwrap_or(false)
    }
}

impl Worker {
    /// Jobs another replica could start now: queued ones, and running ones whose holder went
    /// silent.
    pub(super) async fn candidates(&self) -> Result<Vec<(Uuid, Uuid)>> {
        Ok(sqlx::query_as(
            "select id, restic_repository_id from jobs
             where kind <> 'backup' and (state = 'queued' or (state = 'running' and heartbeat_at < now() - make_interval(secs => $1)))
             order by created_at limit 20",
        )
        .bind(STALE_AFTER_SECS as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Claims `job` if its repository is free; the returned connection holds the repository's
    /// advisory lock until it is dropped. It is detached from the pool: dropped (a panic, a
    /// lost task), it closes, and the lock goes with it instead of staying on a pooled
    /// connection forever.
    pub(super) async fn claim(&self, job: Uuid, repo: Uuid) -> Result<Option<(PgConnection, Claimed)>> {
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, hashtext($2::text))")
            .bind(REPO_LOCK_CLASS)
            .bind(repo)
            .fetch_one(&mut conn)
            .await?;
        if !locked {
            return Ok(None);
        }
        let claimed: Option<Claimed> = sqlx::query_as(
            "update jobs set state = 'running', holder = $2, heartbeat_at = now(), started_at = coalesce(started_at, now()),
                    attempts = attempts + 1
             where id = $1 and (state = 'queued' or (state = 'running' and heartbeat_at < now() - make_interval(secs => $3)))
             returning id, kind, restic_repository_id, lock_id, cancel_requested_at, attempts, options",
        )
        .bind(job)
        .bind(&self.replica)
        .bind(STALE_AFTER_SECS as f64)
        .fetch_optional(&mut conn)
        .await?;
        match claimed {
            Some(c) => Ok(Some((conn, c))),
            None => {
                unlock(&mut conn, repo).await;
                Ok(None)
            }
        }
    }

    /// Runs a claimed job to its end and records the result (unless the claim was lost).
    pub(super) async fn run(&self, mut conn: PgConnection, job: Claimed) {
        let repo = job.restic_repository_id;
        if job.attempts > 1 {
            tracing::warn!(job.id = %job.id, kind = %job.kind, attempt = job.attempts, "taking over a maintenance job whose holder stopped");
        }
        let outcome = self.execute(&mut conn, &job).await;
        match outcome {
            Ok(Some(result)) => {
                if let Err(e) = self.record(&job, result).await {
                    crate::error::log_internal(&e);
                    tracing::error!(job.id = %job.id, error = %e, "cannot record a maintenance result; another replica will redo the job");
                }
            }
            Ok(None) => {
                tracing::warn!(job.id = %job.id, "lost the claim on a maintenance job; another replica takes it over");
            }
            Err(e) => {
                crate::error::log_internal(&e);
                let failed = Outcome::failed(&format!("the maintenance job could not run: {e}"), "temporary");
                if let Err(e) = self.record(&job, failed).await {
                    crate::error::log_internal(&e);
                }
            }
        }
        unlock(&mut conn, repo).await;
    }

    /// Starts the job's process and watches it; `Ok(None)` when the claim was lost.
    async fn execute(&self, conn: &mut PgConnection, job: &Claimed) -> Result<Option<Outcome>> {
        let access = crate::repositories::access_by_id(&self.pool, &self.master, job.restic_repository_id)
            .await?
            .ok_or_else(|| Error::NotFound("restic repository".into()))?;
        let target = crate::repositories::controller_target(access, &self.identity)?;
        let scratch = tempfile::tempdir().map_err(Error::internal)?;
        let engine_target = crate::repositories::engine_target(
            &target.access,
            scratch.path(),
            target.identity_pem.as_deref().map(String::as_str),
        )
        .map_err(Error::internal)?;
        if job.cancel_requested_at.is_some() {
            // Taken over only to end it: the dead holder's lock goes, nothing else runs.
            if let Some(ids) = job.lock_id.as_deref().map(cofre_engine::recorded_lock_ids) {
                removed(cofre_engine::child::remove_locks(&engine_target, ids).await.map(|()| true));
            }
            return Ok(Some(Outcome::cancelled()));
        }
        let (task, forget_plan) = self.task(job).await?;
        let lock_record = scratch.path().join("lock.id");
        let child_job = MaintenanceJob {
            target: cofre_engine::WireTarget::from(&engine_target),
            task,
            lock_wait_seconds: self.settings.lock_wait_seconds,
            lock_record: lock_record.clone(),
            stale_locks: job.lock_id.as_deref().map(cofre_engine::recorded_lock_ids).unwrap_or_default(),
        };
        let exe = std::env::current_exe().map_err(Error::internal)?;
        let mut cmd = tokio::process::Command::new(exe);
        // The job carries what the process needs; the master key stays with the controller.
        cmd.arg(super::child::SUBCOMMAND).env_remove("COFRE_MASTER_KEY");
        // Why the watcher stopped the process, if it did.
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel::<Option<Stop>>(None);
        let watcher = self.watch(conn, job.id, &lock_record, stop_tx);
        let cancel = async move {
            let _ = stop_rx.wait_for(Option::is_some).await;
        };
        let (result, stop) =
            tokio::join!(run_json::<_, TaskResult>(cmd, &child_job, MAX_RESULT_BYTES, cancel), watcher);
        let outcome = match (result, stop) {
            (_, Some(Stop::LostClaim)) => return Ok(None),
            // A process that did not end cleanly may have left its lock.
            (Err(ChildError::Cancelled), _) => {
                removed(cofre_engine::child::remove_recorded_lock(&engine_target, &lock_record).await);
                Outcome::cancelled()
            }
            (Err(ChildError::Failed(m)), _) => {
                removed(cofre_engine::child::remove_recorded_lock(&engine_target, &lock_record).await);
                Outcome::failed(&m, "temporary")
            }
            (Ok(r), _) => Outcome::from_task(r, forget_plan, job.dry_run()),
        };
        Ok(Some(outcome))
    }

    /// The task for a job, computed now (forget: from the recorded snapshots).
    async fn task(&self, job: &Claimed) -> Result<(Task, Option<super::forget::ForgetPlan>)> {
        let specs: Vec<serde_json::Value> = sqlx::query_scalar(
            "select distinct p.spec from machine_policy_repositories mpr join policies p on p.id = mpr.policy_id
             where mpr.restic_repository_id = $1",
        )
        .bind(job.restic_repository_id)
        .fetch_all(&self.pool)
        .await?;
        let specs = specs.into_iter().map(crate::policies::stored_spec).collect::<Result<Vec<_>>>()?;
        Ok(match job.kind.as_str() {
            "forget" => {
                let plan =
                    super::forget::plan(&self.pool, job.restic_repository_id, chrono::Utc::now()).await?;
                (Task::Forget { remove: plan.remove.clone(), dry_run: job.dry_run() }, Some(plan))
            }
            "prune" => {
                // The strictest tolerance among the repository's policies.
                let max_unused_percent =
                    specs.iter().map(|s| s.maintenance.max_unused_percent).min().unwrap_or(5);
                (Task::Prune { max_unused_percent }, None)
            }
            _ => {
                let read_data = specs
                    .iter()
                    .map(|s| engine_read_data(s.maintenance.read_data()))
                    .max_by(|a, b| depth(a).total_cmp(&depth(b)))
                    .unwrap_or(cofre_engine::maintenance::ReadData::None);
                (Task::Check { read_data }, None)
            }
        })
    }

    /// Refreshes the heartbeat, records the lock id, and says when to stop the process:
    /// cancel requested, or the claim lost (heartbeat row taken, or our connection gone).
    async fn watch(
        &self,
        conn: &mut PgConnection,
        job: Uuid,
        lock_record: &Path,
        stop: tokio::sync::watch::Sender<Option<Stop>>,
    ) -> Option<Stop> {
        let mut lock_id: Option<String> = None;
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.closed() => return None,
            }
            let alive = sqlx::query("select 1").execute(&mut *conn).await.is_ok();
            let now_lock = std::fs::read_to_string(lock_record).ok().map(|s| s.trim().to_string());
            if now_lock.is_some() && now_lock != lock_id {
                lock_id.clone_from(&now_lock);
            }
            let row: std::result::Result<Option<Option<chrono::DateTime<chrono::Utc>>>, _> =
                sqlx::query_scalar(
                    "update jobs set heartbeat_at = now(), lock_id = coalesce($3, lock_id)
                 where id = $1 and holder = $2 and state = 'running' returning cancel_requested_at",
                )
                .bind(job)
                .bind(&self.replica)
                .bind(&lock_id)
                .fetch_optional(&self.pool)
                .await;
            let verdict = match row {
                _ if !alive => Some(Stop::LostClaim),
                Ok(None) => Some(Stop::LostClaim),
                Ok(Some(Some(_))) => Some(Stop::Cancelled),
                // The database is briefly unreachable: the claim stands until the heartbeat
                // goes stale; our own connection check above decides.
                Ok(Some(None)) | Err(_) => None,
            };
            if let Some(v) = verdict {
                let _ = stop.send(Some(v));
                return Some(v);
            }
        }
    }

    /// Writes the result: job state, result row, forgotten snapshots, audit — one transaction,
    /// only if this replica still holds the job.
    async fn record(&self, job: &Claimed, o: Outcome) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "update jobs set state = $3, finished_at = now(), lock_id = null
             where id = $1 and holder = $2 and state = 'running'",
        )
        .bind(job.id)
        .bind(&self.replica)
        .bind(o.state)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(()); // taken over meanwhile: the new holder records it
        }
        sqlx::query(
            "insert into job_results (job_id, event_id, outcome, stats, warnings, error_message, retry_class,
                                      started_at, finished_at, log)
             select $1, $2, $3, $4, $5, $6, $7, started_at, now(), $8 from jobs where id = $1",
        )
        .bind(job.id)
        .bind(Uuid::now_v7())
        .bind(o.state)
        .bind(&o.stats)
        .bind(&o.warnings)
        .bind(&o.error)
        .bind(o.retry_class)
        .bind(&o.log)
        .execute(&mut *tx)
        .await?;
        if !o.forgotten.is_empty() {
            sqlx::query(
                "update snapshots set forgotten_at = now(), forgotten_by = $2
                 where restic_repository_id = $1 and snapshot_id = any($3) and forgotten_at is null",
            )
            .bind(job.restic_repository_id)
            .bind(job.id)
            .bind(&o.forgotten)
            .execute(&mut *tx)
            .await?;
        }
        audit::record(
            &mut tx,
            &Actor::System,
            &format!("maintenance.{}", job.kind),
            "restic_repository",
            &job.restic_repository_id.to_string(),
            serde_json::json!({"job_id": job.id, "outcome": o.state, "stats": o.stats, "error": o.error}),
        )
        .await?;
        if o.state == "failed" {
            crate::alerts::job_failed(&mut tx, job.id, o.error.as_deref(), o.retry_class).await?;
        }
        tx.commit().await?;
        tracing::info!(job.id = %job.id, kind = %job.kind, outcome = o.state, "maintenance job finished");
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancelled,
    LostClaim,
}

async fn unlock(conn: &mut PgConnection, repo: Uuid) {
    let _ = sqlx::query("select pg_advisory_unlock($1, hashtext($2::text))")
        .bind(REPO_LOCK_CLASS)
        .bind(repo)
        .execute(&mut *conn)
        .await;
}

/// Logs the removal of a lock a stopped maintenance process left.
fn removed(r: std::result::Result<bool, cofre_engine::EngineError>) {
    match r {
        Ok(true) => tracing::info!("removed the repository lock a stopped maintenance process left"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove a stopped maintenance process's lock"),
    }
}

fn engine_read_data(r: cofre_policy::spec::ReadData) -> cofre_engine::maintenance::ReadData {
    use cofre_engine::maintenance::ReadData as E;
    use cofre_policy::spec::ReadData as P;
    match r {
        P::None => E::None,
        P::All => E::All,
        P::Part { n, of } => E::Part { n, of },
        P::Percent(p) => E::Percent(p),
    }
}

/// How much a check reads, to pick the most thorough of several policies.
fn depth(r: &cofre_engine::maintenance::ReadData) -> f64 {
    use cofre_engine::maintenance::ReadData as E;
    match r {
        E::None => 0.0,
        E::All => 100.0,
        E::Part { of, .. } => 100.0 / f64::from((*of).max(1)),
        E::Percent(p) => *p,
    }
}

/// A job's result as it is recorded.
struct Outcome {
    state: &'static str,
    stats: serde_json::Value,
    warnings: Vec<String>,
    error: Option<String>,
    retry_class: Option<&'static str>,
    log: Option<String>,
    forgotten: Vec<String>,
}

const MAX_LISTED: usize = 100;

impl Outcome {
    fn failed(message: &str, class: &'static str) -> Self {
        Self {
            state: "failed",
            stats: serde_json::json!({}),
            warnings: Vec::new(),
            error: Some(crate::jobs::cap(message, 8000)),
            retry_class: Some(class),
            log: None,
            forgotten: Vec::new(),
        }
    }

    fn cancelled() -> Self {
        Self { state: "cancelled", ..Self::failed("", "permanent") }.without_error()
    }

    fn without_error(mut self) -> Self {
        self.error = None;
        self.retry_class = None;
        self
    }

    fn from_task(r: TaskResult, plan: Option<super::forget::ForgetPlan>, dry_run: bool) -> Self {
        match r {
            TaskResult::Failed { message, retry_class } => Self::failed(
                &message,
                match retry_class {
                    cofre_engine::RetryClass::Temporary => "temporary",
                    cofre_engine::RetryClass::Permanent => "permanent",
                },
            ),
            TaskResult::Forget { report } => {
                let plan = plan.unwrap_or_default();
                let unrecorded: Vec<&String> =
                    report.present.iter().filter(|id| !plan.recorded.contains(*id)).collect();
                let mut warnings: Vec<String> = unrecorded
                    .iter()
                    .take(MAX_LISTED)
                    .map(|id| format!("snapshot {id} is in the repository but no job reported it: not counted, not removed"))
                    .collect();
                warnings.extend(
                    plan.future
                        .iter()
                        .take(MAX_LISTED)
                        .map(|id| format!("snapshot {id} is dated in the future: not counted, not removed")),
                );
                let mut forgotten = report.removed.clone();
                forgotten.extend(report.missing.iter().cloned());
                let mut stats = serde_json::json!({
                    "removed": report.removed.len(),
                    "already_gone": report.missing.len(),
                    "kept": plan.keep,
                    "unrecorded": unrecorded.len(),
                    "unrecorded_ids": unrecorded.iter().take(MAX_LISTED).collect::<Vec<_>>(),
                    "future_dated": plan.future.len(),
                });
                if dry_run {
                    // What a forget would remove now, in full: the preview of a retention.
                    stats["dry_run"] = true.into();
                    stats["would_remove"] = report.removed.clone().into();
                    forgotten.clear();
                }
                Self {
                    state: if warnings.is_empty() { "succeeded" } else { "warning" },
                    stats,
                    warnings,
                    error: None,
                    retry_class: None,
                    log: None,
                    forgotten,
                }
            }
            TaskResult::Prune { report } => Self {
                state: "succeeded",
                stats: serde_json::to_value(&report).unwrap_or_default(),
                ..Self::failed("", "permanent").without_error()
            },
            TaskResult::Check { report } => {
                let errors = report.errors.len();
                let stats = serde_json::json!({"errors": errors, "warnings": report.warnings.len()});
                let mut warnings: Vec<String> = report.warnings.iter().take(1000).cloned().collect();
                warnings.extend(report.errors.iter().take(1000).cloned());
                if errors > 0 {
                    Self {
                        state: "failed",
                        stats,
                        warnings,
                        error: Some(format!("the check found {errors} errors in the repository")),
                        retry_class: Some("permanent"),
                        log: None,
                        forgotten: Vec::new(),
                    }
                } else {
                    Self {
                        state: if warnings.is_empty() { "succeeded" } else { "warning" },
                        stats,
                        warnings,
                        error: None,
                        retry_class: None,
                        log: None,
                        forgotten: Vec::new(),
                    }
                }
            }
        }
    }
}
