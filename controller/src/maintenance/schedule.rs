//! When maintenance is due: every initialised restic repository that active machines' policies
//! write to gets forget (when one of its policies has a retention), prune and check on the
//! schedules of those policies (`maintenance.forget|prune|check`; the most frequent wins, each
//! spread over the fleet by a jitter keyed by the repository; a new repository's first interval
//! counts from when it was first seen). Due work becomes a queued job;
//! the last slot per repository and kind is kept in `maintenance_schedule`. One replica at a
//! time decides (advisory lock); the unique index on open maintenance jobs makes a second queue
//! of the same work impossible anyway.

use std::collections::BTreeMap;

use cofre_policy::schedule::{Schedule, jitter_offset};
use cofre_policy::spec::PolicySpec;
use jiff::Timestamp;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The maintenance kinds, in the order they run when due together.
pub const KINDS: [&str; 3] = ["forget", "prune", "check"];

fn to_jiff(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn to_chrono(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(t.as_microsecond()).unwrap_or_default()
}

fn schedule_for(spec: &PolicySpec, kind: &str) -> Option<Schedule> {
    let s = match kind {
        "forget" => {
            // Nothing to forget without a retention.
            spec.keep_policy().ok().flatten()?;
            &spec.maintenance.forget
        }
        "prune" => &spec.maintenance.prune,
        _ => &spec.maintenance.check,
    };
    s.parse("maintenance").ok()
}

/// Queues the maintenance jobs that are due now. Returns how many were queued.
pub async fn enqueue_due(pool: &PgPool) -> Result<usize> {
    let rows: Vec<(Uuid, Option<Uuid>, serde_json::Value)> = sqlx::query_as(
        "select distinct rr.id, rr.machine_id, p.spec
         from machine_policy_repositories mpr
         join machines m on m.id = mpr.machine_id and m.status = 'active'
         join restic_repositories rr on rr.id = mpr.restic_repository_id and rr.restic_id is not null
         join policies p on p.id = mpr.policy_id",
    )
    .fetch_all(pool)
    .await?;
    let mut repos: BTreeMap<Uuid, (Option<Uuid>, Vec<PolicySpec>)> = BTreeMap::new();
    for (repo, machine, spec) in rows {
        repos.entry(repo).or_insert((machine, Vec::new())).1.push(crate::policies::stored_spec(spec)?);
    }
    let now = Timestamp::now();
    let mut queued = 0;
    for (repo, (machine, specs)) in repos {
        for kind in KINDS {
            let schedules: Vec<Schedule> = specs.iter().filter_map(|s| schedule_for(s, kind)).collect();
            if schedules.is_empty() {
                continue;
            }
            if queue_if_due(pool, repo, machine, kind, &schedules, now).await? {
                queued += 1;
            }
        }
    }
    Ok(queued)
}

async fn queue_if_due(
    pool: &PgPool,
    repo: Uuid,
    machine: Option<Uuid>,
    kind: &str,
    schedules: &[Schedule],
    now: Timestamp,
) -> Result<bool> {
    // `since` is this process's clock, like `now`: the database's could be a little ahead. The
    // row is committed on its own: it must stay even when nothing is due yet.
    sqlx::query(
        "insert into maintenance_schedule (restic_repository_id, kind, since) values ($1, $2, $3) on conflict do nothing",
    )
    .bind(repo)
    .bind(kind)
    .bind(to_chrono(now))
    .execute(pool)
    .await?;
    let mut tx = pool.begin().await?;
    let (since, last): (chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>) = sqlx::query_as(
        "select since, last_slot from maintenance_schedule where restic_repository_id = $1 and kind = $2 for update",
    )
    .bind(repo)
    .bind(kind)
    .fetch_one(&mut *tx)
    .await?;
    let (since, last) = (to_jiff(since), last.map(to_jiff));
    let key = repo.as_bytes();
    // A repository seen for the first time needs no maintenance at once (unlike a backup):
    // its first interval counts from then.
    let last_or_since = |s: &Schedule| match s.trigger {
        cofre_policy::schedule::Trigger::Interval { .. } => last.or(Some(since)),
        _ => last,
    };
    // Due when any policy's schedule says so (the most frequent one wins).
    let due = schedules.iter().find(|s| {
        s.in_window(now)
            && s.next_start(last_or_since(s), since, jitter_offset(s.jitter_seconds, key))
                .is_some_and(|t| t <= now)
    });
    let Some(sched) = due else { return Ok(false) };
    let open: bool = sqlx::query_scalar(
        "select exists (select 1 from jobs where restic_repository_id = $1 and kind = $2 and state in ('queued', 'running'))",
    )
    .bind(repo)
    .bind(kind)
    .fetch_one(&mut *tx)
    .await?;
    if open {
        return Ok(false);
    }
    let offset = jitter_offset(sched.jitter_seconds, key);
    let slot = match sched.trigger {
        cofre_policy::schedule::Trigger::Cron(_) => sched.slot_for_run(
            now.checked_sub(jiff::SignedDuration::from_secs(i64::try_from(offset).unwrap_or(0)))
                .unwrap_or(now),
        ),
        _ => now,
    };
    sqlx::query(
        "update maintenance_schedule set last_slot = $3 where restic_repository_id = $1 and kind = $2",
    )
    .bind(repo)
    .bind(kind)
    .bind(to_chrono(slot))
    .execute(&mut *tx)
    .await?;
    insert_job(&mut tx, repo, machine, kind, "schedule", None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Inserts a queued maintenance job; a conflict means the same work is already open.
pub(super) async fn insert_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    repo: Uuid,
    machine: Option<Uuid>,
    kind: &str,
    trigger: &str,
    requested_by: Option<Uuid>,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into jobs (id, machine_id, kind, trigger, state, restic_repository_id, requested_by)
         values ($1, $2, $3, $4, 'queued', $5, $6)",
    )
    .bind(id)
    .bind(machine)
    .bind(kind)
    .bind(trigger)
    .bind(repo)
    .bind(requested_by)
    .execute(&mut **tx)
    .await
    .map_err(|e| match Error::from(e) {
        Error::Conflict(_) => {
            Error::Conflict(format!("a {kind} of this repository is already queued or running"))
        }
        other => other,
    })?;
    Ok(id)
}
