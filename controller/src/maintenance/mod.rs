//! Maintenance owned by the controller: `forget` (each policy's retention, restic's rules, on
//! the snapshots the controller recorded), `prune` and `check` of every restic repository, on
//! the schedules of the policies that write to it, with the controller's maintenance identity
//! that never appears in a plan — agents back up append-only and never delete.
//!
//! - `identity`: the maintenance certificate towards cofre-store;
//! - `schedule`: when work is due (queued as jobs);
//! - `forget`: which recorded snapshots a retention removes;
//! - `worker`: claiming and running jobs, exactly once across replicas, with takeover;
//! - `child`: the job's own process, which does the repository work under a restic lock.
//!
//! Maintenance jobs are jobs like any other: in the API, in the CLI, audited.

pub mod child;
mod forget;
mod identity;
mod schedule;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub use identity::MaintenanceIdentity;
pub use schedule::KINDS;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event, Events};

/// Advisory lock key of the scheduler (one replica decides what is due).
const SCHEDULER_LOCK: i64 = 0x636f_6672_6505;

/// Starts this replica's maintenance: the scheduler (when this replica holds its lock) and
/// the worker, on `Maintenance` events and every `poll_seconds`.
pub fn spawn(worker: worker::Worker, events: Events) {
    tokio::spawn(async move {
        let mut rx = events.subscribe();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let poll = std::time::Duration::from_secs(worker.settings.poll_seconds);
        loop {
            if let Err(e) = tick(&worker, &running).await {
                crate::error::log_internal(&e);
                tracing::warn!(error = %e, "maintenance scheduling failed; will retry");
            }
            let wait = tokio::time::sleep(poll);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    ev = rx.recv() => match ev {
                        Ok(Event::Maintenance | Event::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Ok(Event::Shutdown) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        Ok(_) => continue,
                    }
                }
            }
        }
    });
}

async fn tick(worker: &worker::Worker, running: &Arc<std::sync::atomic::AtomicUsize>) -> Result<()> {
    use std::sync::atomic::Ordering;
    {
        let mut conn = worker.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(SCHEDULER_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            let res = schedule::enqueue_due(&worker.pool).await;
            let _ =
                sqlx::query("select pg_advisory_unlock($1)").bind(SCHEDULER_LOCK).execute(&mut *conn).await;
            let queued = res?;
            if queued > 0 {
                tracing::info!(jobs = queued, "maintenance due");
            }
        }
    }
    for (job, repo) in worker.candidates().await? {
        if running.load(Ordering::SeqCst) >= worker.settings.concurrency as usize {
            break;
        }
        let Some((conn, claimed)) = worker.claim(job, repo).await? else { continue };
        running.fetch_add(1, Ordering::SeqCst);
        let (w, r) = (worker.clone(), running.clone());
        tokio::spawn(async move {
            w.run(conn, claimed).await;
            r.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// The worker of this process.
pub fn worker(
    pool: PgPool,
    master: crate::seal::MasterKey,
    identity: Arc<MaintenanceIdentity>,
    settings: crate::config::MaintenanceSettings,
) -> worker::Worker {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let replica = format!("{host}:{}:{}", std::process::id(), &Uuid::new_v4().simple().to_string()[..8]);
    worker::Worker { pool, master, identity, settings, replica }
}

/// `POST /api/v1/restic-repositories/{id}/maintenance` (the wire type; checked by [`run_now`]).
pub use cofre_api::repositories::RunMaintenance;

/// Queues a maintenance job of `kind` on a restic repository now.
pub async fn run_now(
    pool: &PgPool,
    actor: &Actor,
    repo: Uuid,
    req: RunMaintenance,
) -> Result<crate::jobs::Job> {
    if !KINDS.contains(&req.kind.as_str()) {
        return Err(Error::field("kind", "one of forget, prune, check"));
    }
    if req.dry_run && req.kind != "forget" {
        return Err(Error::field("dry_run", "only a forget has a dry run"));
    }
    let row: Option<(Option<Uuid>, Option<String>)> =
        sqlx::query_as("select machine_id, restic_id from restic_repositories where id = $1")
            .bind(repo)
            .fetch_optional(pool)
            .await?;
    let Some((machine, restic_id)) = row else { return Err(Error::NotFound("restic repository".into())) };
    if restic_id.is_none() {
        return Err(Error::Conflict("the repository is not initialised yet".into()));
    }
    let user = match actor {
        Actor::User { id, .. } => Some(*id),
        _ => None,
    };
    let mut tx = pool.begin().await?;
    let id = schedule::insert_job(&mut tx, repo, machine, &req.kind, "run_now", user).await?;
    if req.dry_run {
        sqlx::query("update jobs set options = '{\"dry_run\": true}' where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut tx,
        actor,
        "maintenance.run_now",
        "restic_repository",
        &repo.to_string(),
        serde_json::json!({"job_id": id, "kind": req.kind, "dry_run": req.dry_run}),
    )
    .await?;
    events::notify(&mut tx, &Event::Maintenance).await?;
    tx.commit().await?;
    crate::jobs::get(pool, id).await
}

/// A restic repository as the API shows it, with its last maintenance.
#[derive(Debug, sqlx::FromRow)]
pub struct ResticRepository {
    pub id: Uuid,
    pub repository_id: Uuid,
    pub machine_id: Option<Uuid>,
    /// The machine's host name (per-machine repositories).
    pub hostname: Option<String>,
    pub url: String,
    pub restic_id: Option<String>,
    pub init_error: Option<String>,
    pub initialised_at: Option<DateTime<Utc>>,
    pub snapshots: i64,
    pub last_forget: Option<serde_json::Value>,
    pub last_prune: Option<serde_json::Value>,
    pub last_check: Option<serde_json::Value>,
}

/// Every restic repository (of `machine`, of `group`'s machines, when given), with the last
/// job of each maintenance kind (`{id, state, finished_at}`); `page` is (limit, offset), all
/// when None.
pub async fn list_repositories(
    pool: &PgPool,
    machine: Option<Uuid>,
    group: Option<Uuid>,
    page: Option<(i64, i64)>,
) -> Result<Vec<ResticRepository>> {
    let last = |kind: &str| {
        format!(
            "(select jsonb_build_object('id', j.id, 'state', j.state, 'finished_at', j.finished_at) from jobs j
              where j.restic_repository_id = rr.id and j.kind = '{kind}' order by j.created_at desc limit 1)"
        )
    };
    let q = format!(
        "select rr.id, rr.repository_id, rr.machine_id,
                (select m.hostname from machines m where m.id = rr.machine_id) as hostname,
                rr.url, rr.restic_id, rr.init_error, rr.initialised_at,
                (select count(*) from snapshots s where s.restic_repository_id = rr.id and s.forgotten_at is null) as snapshots,
                {} as last_forget, {} as last_prune, {} as last_check
         from restic_repositories rr where ($1::uuid is null or rr.machine_id = $1)
           and ($2::uuid is null or rr.machine_id in (select id from machines where group_id = $2))
         order by rr.id limit $3 offset $4",
        last("forget"),
        last("prune"),
        last("check")
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(machine)
        .bind(group)
        .bind(page.map(|p| p.0))
        .bind(page.map_or(0, |p| p.1))
        .fetch_all(pool)
        .await?)
}
