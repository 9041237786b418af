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
    // Every repository's schedule state in one query, the missing rows in one insert: this
    // runs every few seconds, for the whole fleet, and only due work opens a transaction.
    // `since` is this process's clock, like `now` (the database's could be a little ahead).
    let stored: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("select restic_repository_id, kind, since, last_slot from maintenance_schedule")
            .fetch_all(pool)
            .await?;
    let mut state: BTreeMap<(Uuid, String), (Timestamp, Option<Timestamp>)> = stored
        .into_iter()
        .map(|(repo, kind, since, last)| ((repo, kind), (to_jiff(since), last.map(to_jiff))))
        .collect();
    let mut due: Vec<(Uuid, Option<Uuid>, &str, Timestamp)> = Vec::new();
    let mut missing: (Vec<Uuid>, Vec<&str>) = (Vec::new(), Vec::new());
    for (repo, (machine, specs)) in &repos {
        for kind in KINDS {
            let schedules: Vec<Schedule> = specs.iter().filter_map(|s| schedule_for(s, kind)).collect();
            if schedules.is_empty() {
                continue;
            }
            let (since, last) = *state.entry((*repo, kind.to_string())).or_insert_with(|| {
                missing.0.push(*repo);
                missing.1.push(kind);
                (now, None)
            });
            if let Some(slot) = due_slot(&schedules, repo, since, last, now) {
                due.push((*repo, *machine, kind, slot));
            }
        }
    }
    if !missing.0.is_empty() {
        sqlx::query(
            "insert into maintenance_schedule (restic_repository_id, kind, since)
             select * , $3::timestamptz from unnest($1::uuid[], $2::text[]) on conflict do nothing",
        )
        .bind(&missing.0)
        .bind(&missing.1)
        .bind(to_chrono(now))
        .execute(pool)
        .await?;
    }
    let mut queued = 0;
    for (repo, machine, kind, slot) in due {
        if queue(pool, repo, machine, kind, slot).await? {
            queued += 1;
        }
    }
    Ok(queued)
}

/// The slot to record when one of `schedules` (the most frequent wins) is due now.
fn due_slot(
    schedules: &[Schedule],
    repo: &Uuid,
    since: Timestamp,
    last: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let key = repo.as_bytes();
    // A repository seen for the first time needs no maintenance at once (unlike a backup):
    // its first interval counts from then.
    let last_or_since = |s: &Schedule| match s.trigger {
        cofre_policy::schedule::Trigger::Interval { .. } => last.or(Some(since)),
        _ => last,
    };
    let sched = schedules.iter().find(|s| {
        s.in_window(now)
            && s.next_start(last_or_since(s), since, jitter_offset(s.jitter_seconds, key))
                .is_some_and(|t| t <= now)
    })?;
    let offset = jitter_offset(sched.jitter_seconds, key);
    Some(match sched.trigger {
        cofre_policy::schedule::Trigger::Cron(_) => sched.slot_for_run(
            now.checked_sub(jiff::SignedDuration::from_secs(i64::try_from(offset).unwrap_or(0)))
                .unwrap_or(now),
        ),
        _ => now,
    })
}

/// Queues due work unless the same work is already open, recording its slot.
async fn queue(
    pool: &PgPool,
    repo: Uuid,
    machine: Option<Uuid>,
    kind: &str,
    slot: Timestamp,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
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
