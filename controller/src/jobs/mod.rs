//! Jobs: backups (run by agents) and maintenance (forget, prune, check: run by the
//! controller), run-now requests and cancellation from the API, and the queries the API and
//! the sessions read. What agents report is ingested in `ingest.rs`.

#[cfg(test)]
mod fuzz;
mod ingest;
#[cfg(test)]
mod tests;

pub(crate) use ingest::cap;
pub use ingest::{JobReport, ingest};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};

#[derive(Debug, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    /// The machine a backup ran on, or whose repository a maintenance job worked on (None for
    /// a shared repository's maintenance).
    pub machine_id: Option<Uuid>,
    /// That machine's host name.
    pub hostname: Option<String>,
    pub policy_id: Option<Uuid>,
    pub restic_repository_id: Option<Uuid>,
    /// backup, forget, prune or check.
    pub kind: String,
    pub trigger: String,
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
    pub retry_class: Option<String>,
    pub log: Option<String>,
    /// A running backup's latest progress (`ingest::Progress`) and when it arrived.
    pub progress: Option<sqlx::types::Json<ingest::Progress>>,
    pub progress_at: Option<DateTime<Utc>>,
}

const SELECT: &str =
    "select j.id, j.machine_id, m.hostname, j.policy_id, j.restic_repository_id, j.kind, j.trigger, j.state,
    j.created_at, j.started_at, j.finished_at, j.overran_window, j.cancel_requested_at, r.snapshot_id, r.stats,
    r.warnings, r.error_message, r.retry_class, r.log, j.progress, j.progress_at
    from jobs j left join job_results r on r.job_id = j.id left join machines m on m.id = j.machine_id";

pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "warning" | "failed" | "interrupted" | "cancelled" | "skipped")
}

pub const MAINTENANCE_KINDS: [&str; 3] = ["forget", "prune", "check"];

/// `POST /api/v1/machines/{id}/jobs` (the wire type).
pub use cofre_api::jobs::RunNow;

/// Queues a backup of `policy` on `machine`. With an idempotency key, a repeated request
/// returns the job the first one created.
pub async fn run_now(
    pool: &PgPool,
    actor: &Actor,
    machine: Uuid,
    req: RunNow,
    idempotency_key: Option<&str>,
) -> Result<Job> {
    let user = match actor {
        Actor::User { id, .. } => Some(*id),
        _ => None,
    };
    if let Some(key) = idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err(Error::invalid("Idempotency-Key must be 1 to 200 characters"));
        }
        let existing: Option<Uuid> = sqlx::query_scalar(
            "select id from jobs where requested_by is not distinct from $1 and idempotency_key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(pool)
        .await?;
        if let Some(id) = existing {
            return get(pool, id).await;
        }
    }
    let m = crate::machines::get(pool, machine).await?;
    if m.status != "active" {
        return Err(Error::Conflict(format!("machine is {}; only active machines run jobs", m.status)));
    }
    let assigned: bool = sqlx::query_scalar(
        "select exists (select 1 from machine_policies where machine_id = $1 and policy_id = $2)",
    )
    .bind(machine)
    .bind(req.policy_id)
    .fetch_one(pool)
    .await?;
    if !assigned {
        return Err(Error::field("policy_id", "this policy is not assigned to the machine"));
    }
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into jobs (id, machine_id, policy_id, kind, trigger, state, requested_by, idempotency_key)
         values ($1, $2, $3, 'backup', 'run_now', 'queued', $4, $5)",
    )
    .bind(id)
    .bind(machine)
    .bind(req.policy_id)
    .bind(user)
    .bind(idempotency_key)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "job.run_now",
        "machine",
        &machine.to_string(),
        serde_json::json!({"job_id": id, "policy_id": req.policy_id}),
    )
    .await?;
    events::notify(&mut tx, &Event::Jobs { machine }).await?;
    tx.commit().await?;
    get(pool, id).await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Job> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where j.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound("job".into()))
}

/// Which jobs to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only maintenance jobs (forget, prune, check).
    pub maintenance: bool,
    pub kind: Option<&'a str>,
    pub state: Option<&'a str>,
    pub machine: Option<Uuid>,
    /// Only jobs of this group's machines.
    pub group: Option<Uuid>,
    pub policy: Option<Uuid>,
    /// Created at or after.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Jobs newest first, `limit` per page, before the cursor job `before`.
pub async fn list(
    pool: &PgPool,
    f: Filter<'_>,
    before: Option<Uuid>,
    limit: usize,
) -> Result<crate::machines::Page<Job>> {
    if let Some(k) = f.kind
        && k != "backup"
        && !MAINTENANCE_KINDS.contains(&k)
    {
        return Err(Error::field("kind", "one of backup, forget, prune, check"));
    }
    if let Some(s) = f.state
        && !(is_final(s) || s == "queued" || s == "running")
    {
        return Err(Error::field(
            "state",
            "one of queued, running, succeeded, warning, failed, interrupted, cancelled, skipped",
        ));
    }
    // Open jobs are few among millions: name the partial index's condition in the text, so
    // even a generic plan can use `jobs_open` (a `$5` alone could be anything).
    let open = if matches!(f.state, Some("queued" | "running")) {
        "and j.state in ('queued', 'running')"
    } else {
        ""
    };
    let items: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} where ($1::uuid is null or j.machine_id = $1) and ($2::uuid is null or j.id < $2) {open}
           and (not $3 or j.kind <> 'backup') and ($4::text is null or j.kind = $4) and ($5::text is null or j.state = $5)
           and ($7::uuid is null or j.machine_id in (select id from machines where group_id = $7))
           and ($8::uuid is null or j.policy_id = $8)
           and ($9::timestamptz is null or j.created_at >= $9) and ($10::timestamptz is null or j.created_at < $10)
         order by j.id desc limit $6"
    )))
    .bind(f.machine)
    .bind(before)
    .bind(f.maintenance)
    .bind(f.kind)
    .bind(f.state)
    .bind(i64::try_from(limit + 1).unwrap_or(101))
    .bind(f.group)
    .bind(f.policy)
    .bind(f.from)
    .bind(f.to)
    .fetch_all(pool)
    .await?;
    Ok(crate::machines::page(items, limit, |j| j.id))
}

/// A machine's jobs (its backups and its repository's maintenance), newest first.
pub async fn list_for_machine(
    pool: &PgPool,
    machine: Uuid,
    before: Option<Uuid>,
    limit: usize,
) -> Result<crate::machines::Page<Job>> {
    crate::machines::get(pool, machine).await?;
    list(pool, Filter { machine: Some(machine), ..Default::default() }, before, limit).await
}

/// Queued run-now backups for a machine, oldest first, to hand to its session.
pub async fn queued_for(pool: &PgPool, machine: Uuid) -> Result<Vec<(Uuid, Uuid)>> {
    Ok(sqlx::query_as(
        "select id, policy_id from jobs where machine_id = $1 and kind = 'backup' and state = 'queued'
         and policy_id is not null and cancel_requested_at is null order by id",
    )
    .bind(machine)
    .fetch_all(pool)
    .await?)
}

/// A machine's backups that someone asked to cancel and that have no result yet, for its
/// session to pass on (the agent ignores jobs it does not have).
pub async fn cancels_for(pool: &PgPool, machine: Uuid) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "select j.id from jobs j where j.machine_id = $1 and j.kind = 'backup'
         and j.cancel_requested_at > now() - interval '7 days'
         and not exists (select 1 from job_results r where r.job_id = j.id) order by j.id",
    )
    .bind(machine)
    .fetch_all(pool)
    .await?)
}

/// Asks for a job to stop. A queued job that no agent has started is cancelled at once; a
/// running backup is stopped by its agent (its session passes the request on, now or when the
/// agent reconnects) and ends "cancelled"; a running maintenance job is stopped by the
/// controller replica that holds it. Cancelling a finished job is a conflict.
pub async fn cancel(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<Job> {
    let user = match actor {
        Actor::User { id, .. } => Some(*id),
        _ => None,
    };
    let mut tx = pool.begin().await?;
    let row: Option<(String, String, Option<Uuid>)> =
        sqlx::query_as("select state, kind, machine_id from jobs where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((state, kind, machine)) = row else { return Err(Error::NotFound("job".into())) };
    if is_final(&state) {
        return Err(Error::Conflict(format!("the job has already finished ({state})")));
    }
    // Nobody works on a queued job yet: it ends now. A queued backup may already be on its
    // way to its agent: the session still passes the cancel on, and the agent drops it.
    let at_once = state == "queued";
    sqlx::query(
        "update jobs set cancel_requested_at = coalesce(cancel_requested_at, now()),
         cancel_requested_by = coalesce(cancel_requested_by, $2),
         state = case when $3 then 'cancelled' else state end,
         finished_at = case when $3 then now() else finished_at end
         where id = $1",
    )
    .bind(id)
    .bind(user)
    .bind(at_once)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "job.cancel",
        "job",
        &id.to_string(),
        serde_json::json!({"kind": kind, "state": state}),
    )
    .await?;
    if let Some(machine) = machine
        && kind == "backup"
    {
        events::notify(&mut tx, &Event::Jobs { machine }).await?;
    }
    tx.commit().await?;
    get(pool, id).await
}

/// Marks jobs the agent says were running when it stopped.
pub async fn mark_interrupted(pool: &PgPool, machine: Uuid, jobs: &[Uuid]) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    let marked: Vec<Uuid> = sqlx::query_scalar(
        "update jobs set state = 'interrupted', finished_at = now()
         where machine_id = $1 and id = any($2) and state in ('queued', 'running') returning id",
    )
    .bind(machine)
    .bind(jobs)
    .fetch_all(&mut *tx)
    .await?;
    if !marked.is_empty() {
        audit::record(
            &mut tx,
            &Actor::Machine(machine),
            "job.interrupted",
            "machine",
            &machine.to_string(),
            serde_json::json!({"jobs": marked}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
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

/// The snapshots of a machine that still exist (not forgotten by maintenance), newest first.
pub async fn snapshots_for_machine(pool: &PgPool, machine: Uuid) -> Result<Vec<Snapshot>> {
    crate::machines::get(pool, machine).await?;
    Ok(sqlx::query_as(
        "select snapshot_id, restic_repository_id, machine_id, job_id, time, hostname, paths, bytes_processed, bytes_added,
                policy_id, tags
         from snapshots where machine_id = $1 and forgotten_at is null order by time desc limit 1000",
    )
    .bind(machine)
    .fetch_all(pool)
    .await?)
}
