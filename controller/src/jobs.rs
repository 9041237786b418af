//! Jobs: run-now requests from the API, and idempotent ingestion of what agents report.
//! A result is acknowledged only after it is committed; a redelivered result is a no-op.

use chrono::{DateTime, Utc};
use cofre_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub machine_id: Uuid,
    pub policy_id: Option<Uuid>,
    pub kind: String,
    pub trigger: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot_id: Option<String>,
    pub stats: Option<serde_json::Value>,
    pub warnings: Option<Vec<String>>,
    pub error_message: Option<String>,
    pub retry_class: Option<String>,
}

const SELECT: &str =
    "select j.id, j.machine_id, j.policy_id, j.kind, j.trigger, j.state, j.created_at, j.started_at,
    j.finished_at, r.snapshot_id, r.stats, r.warnings, r.error_message, r.retry_class
    from jobs j left join job_results r on r.job_id = j.id";

pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "warning" | "failed" | "interrupted")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunNow {
    pub policy_id: Uuid,
}

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
        "select exists (select 1 from policy_assignments a join machines m on m.id = $1
          where a.policy_id = $2 and (a.machine_id = m.id or a.group_id = m.group_id))",
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

pub async fn list_for_machine(
    pool: &PgPool,
    machine: Uuid,
    before: Option<Uuid>,
    limit: usize,
) -> Result<crate::machines::Page<Job>> {
    crate::machines::get(pool, machine).await?;
    let items: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} where j.machine_id = $1 and ($2::uuid is null or j.id < $2) order by j.id desc limit $3"
    )))
    .bind(machine)
    .bind(before)
    .bind(i64::try_from(limit + 1).unwrap_or(101))
    .fetch_all(pool)
    .await?;
    Ok(crate::machines::page(items, limit, |j| j.id))
}

/// Queued run-now jobs for a machine, oldest first, to hand to its session.
pub async fn queued_for(pool: &PgPool, machine: Uuid) -> Result<Vec<(Uuid, Uuid)>> {
    Ok(sqlx::query_as(
        "select id, policy_id from jobs where machine_id = $1 and state = 'queued' and policy_id is not null order by id",
    )
    .bind(machine)
    .fetch_all(pool)
    .await?)
}

fn ts(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

fn trigger_str(t: i32) -> &'static str {
    if t == pb::TriggerKind::RunNow as i32 { "run_now" } else { "schedule" }
}

fn parse_uuid(s: &str, what: &str) -> Result<Uuid> {
    Uuid::try_parse(s).map_err(|_| Error::invalid(format!("{what} is not a UUID")))
}

fn cap(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Ingests one agent event. Returns Ok when it is stored (or was already stored): the caller
/// may then acknowledge it. Events about another machine's job are refused.
pub async fn ingest(pool: &PgPool, machine: Uuid, ev: &pb::JobEvent) -> Result<()> {
    let event_id = parse_uuid(&ev.event_id, "event_id")?;
    let job_id = parse_uuid(&ev.job_id, "job_id")?;
    let mut tx = pool.begin().await?;
    let owner: Option<Uuid> = sqlx::query_scalar("select machine_id from jobs where id = $1 for update")
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
    if owner.is_some_and(|o| o != machine) {
        return Err(Error::Forbidden("job belongs to another machine".into()));
    }
    match &ev.kind {
        Some(pb::job_event::Kind::Started(s)) => {
            let policy = parse_uuid(&s.policy_id, "policy_id").ok();
            sqlx::query(
                "insert into jobs (id, machine_id, policy_id, kind, trigger, state, started_at)
                 values ($1, $2, $3, 'backup', $4, 'running', coalesce($5, now()))
                 on conflict (id) do update set state = 'running', started_at = excluded.started_at
                 where jobs.state = 'queued'",
            )
            .bind(job_id)
            .bind(machine)
            .bind(policy)
            .bind(trigger_str(s.trigger))
            .bind(ts(s.started_at.as_ref()))
            .execute(&mut *tx)
            .await?;
        }
        Some(pb::job_event::Kind::Finished(f)) => {
            ingest_finished(&mut tx, machine, job_id, event_id, owner.is_none(), f).await?;
        }
        None => return Err(Error::invalid("job event without a kind")),
    }
    tx.commit().await?;
    Ok(())
}

async fn ingest_finished(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    machine: Uuid,
    job_id: Uuid,
    event_id: Uuid,
    new_job: bool,
    f: &pb::JobFinished,
) -> Result<()> {
    let outcome = match pb::JobOutcome::try_from(f.outcome) {
        Ok(pb::JobOutcome::Succeeded) => "succeeded",
        Ok(pb::JobOutcome::SucceededWithWarnings) => "warning",
        Ok(pb::JobOutcome::Failed) => "failed",
        Ok(pb::JobOutcome::Interrupted) => "interrupted",
        _ => return Err(Error::invalid("unknown job outcome")),
    };
    let finished_at = ts(f.finished_at.as_ref()).unwrap_or_else(Utc::now);
    let started_at = ts(f.started_at.as_ref());
    if new_job {
        let policy = parse_uuid(&f.policy_id, "policy_id").ok();
        sqlx::query(
            "insert into jobs (id, machine_id, policy_id, kind, trigger, state, started_at, finished_at)
             values ($1, $2, $3, 'backup', $4, $5, $6, $7)",
        )
        .bind(job_id)
        .bind(machine)
        .bind(policy)
        .bind(trigger_str(f.trigger))
        .bind(outcome)
        .bind(started_at)
        .bind(finished_at)
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query(
            "update jobs set state = $2, started_at = coalesce(started_at, $3), finished_at = $4
             where id = $1 and state in ('queued', 'running')",
        )
        .bind(job_id)
        .bind(outcome)
        .bind(started_at)
        .bind(finished_at)
        .execute(&mut **tx)
        .await?;
    }
    let stats = f.stats.as_ref();
    let snapshot_id = stats.map(|s| s.snapshot_id.clone()).filter(|s| !s.is_empty());
    if let Some(sid) = &snapshot_id
        && (sid.len() != 64 || !sid.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::invalid("snapshot_id must be 64 hex characters"));
    }
    let stats_json = stats.map(|s| {
        serde_json::json!({
            "files_new": s.files_new, "files_changed": s.files_changed, "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new, "dirs_changed": s.dirs_changed, "dirs_unmodified": s.dirs_unmodified,
            "files_processed": s.files_processed, "bytes_processed": s.bytes_processed,
            "bytes_added": s.bytes_added, "bytes_added_packed": s.bytes_added_packed,
            "duration_seconds": match (started_at, Some(finished_at)) {
                (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
                _ => 0.0,
            },
        })
    });
    let warnings: Vec<String> = f.warnings.iter().take(1000).map(|w| cap(w, 2000)).collect();
    let (error_message, retry_class) = match &f.error {
        Some(e) => (
            Some(cap(&e.message, 8000)),
            Some(if e.retry_class == pb::RetryClass::Permanent as i32 { "permanent" } else { "temporary" }),
        ),
        None => (None, None),
    };
    let inserted = sqlx::query(
        "insert into job_results (job_id, event_id, outcome, snapshot_id, stats, warnings, error_message, retry_class, started_at, finished_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) on conflict do nothing",
    )
    .bind(job_id)
    .bind(event_id)
    .bind(outcome)
    .bind(&snapshot_id)
    .bind(stats_json.unwrap_or_else(|| serde_json::json!({})))
    .bind(&warnings)
    .bind(&error_message)
    .bind(retry_class)
    .bind(started_at)
    .bind(finished_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(()); // delivered before: already stored
    }
    if let (Some(sid), Some(s)) = (&snapshot_id, stats) {
        let repo = parse_uuid(&f.repository_id, "repository_id")?;
        let owns: bool = sqlx::query_scalar(
            "select exists (select 1 from restic_repositories rr join repositories r on r.id = rr.repository_id
              where rr.id = $1 and (rr.machine_id = $2 or (rr.machine_id is null and not r.per_machine)))",
        )
        .bind(repo)
        .bind(machine)
        .fetch_one(&mut **tx)
        .await?;
        if !owns {
            return Err(Error::Forbidden(
                "snapshot reported for a repository this machine does not use".into(),
            ));
        }
        sqlx::query(
            "insert into snapshots (restic_repository_id, snapshot_id, machine_id, job_id, time, hostname, paths, bytes_processed, bytes_added)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict do nothing",
        )
        .bind(repo)
        .bind(sid)
        .bind(machine)
        .bind(job_id)
        .bind(ts(s.snapshot_time.as_ref()).unwrap_or(finished_at))
        .bind(cap(&s.hostname, 255))
        .bind(s.paths.iter().take(1000).map(|p| cap(p, 4096)).collect::<Vec<_>>())
        .bind(i64::try_from(s.bytes_processed).unwrap_or(i64::MAX))
        .bind(i64::try_from(s.bytes_added).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    }
    audit::record(
        tx,
        &Actor::Machine(machine),
        "job.result",
        "job",
        &job_id.to_string(),
        serde_json::json!({"outcome": outcome, "snapshot_id": snapshot_id, "event_id": event_id}),
    )
    .await?;
    Ok(())
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

#[derive(Debug, Serialize, sqlx::FromRow)]
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
}

pub async fn snapshots_for_machine(pool: &PgPool, machine: Uuid) -> Result<Vec<Snapshot>> {
    crate::machines::get(pool, machine).await?;
    Ok(sqlx::query_as(
        "select snapshot_id, restic_repository_id, machine_id, job_id, time, hostname, paths, bytes_processed, bytes_added
         from snapshots where machine_id = $1 order by time desc limit 1000",
    )
    .bind(machine)
    .fetch_all(pool)
    .await?)
}
