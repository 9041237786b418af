//! Idempotent ingestion of what agents report. Wire messages are converted to domain types at
//! the edge (`TryFrom<&pb::JobEvent>`), where every field is validated and clipped; a result
//! is acknowledged only after it is committed, and a redelivered one is a no-op. A running
//! backup's progress is best effort: one UPDATE of the running job, never acknowledged, never
//! audited, ignored once the job has ended.

use chrono::{DateTime, Utc};
use cofre_proto::agent::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};

/// One agent event, validated.
#[derive(Debug)]
pub struct JobReport {
    pub event_id: Uuid,
    pub job_id: Uuid,
    pub kind: ReportKind,
}

#[derive(Debug)]
pub enum ReportKind {
    Started { policy: Option<Uuid>, trigger: &'static str, started_at: Option<DateTime<Utc>> },
    Finished(Box<Finished>),
    Progress(Progress),
}

/// A running backup's progress as stored in `jobs.progress`: counters PostgreSQL's `bigint`
/// and JSON readers hold exactly (at most `i64::MAX`), totals absent while the agent scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: Option<u64>,
    pub bytes_total: Option<u64>,
}

impl From<&pb::JobProgress> for Progress {
    fn from(p: &pb::JobProgress) -> Self {
        let clip = |v: u64| v.min(i64::MAX as u64);
        // Both totals or neither: a half-known total cannot make a share.
        let (files_total, bytes_total) = match (p.files_total, p.bytes_total) {
            (Some(f), Some(b)) => (Some(clip(f)), Some(clip(b))),
            _ => (None, None),
        };
        Progress { files_done: clip(p.files_done), bytes_done: clip(p.bytes_done), files_total, bytes_total }
    }
}

#[derive(Debug)]
pub struct Finished {
    pub policy: Option<Uuid>,
    pub trigger: &'static str,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub outcome: &'static str,
    pub stats: Option<serde_json::Value>,
    pub snapshot: Option<SnapshotReport>,
    pub warnings: Vec<String>,
    pub error: Option<(String, &'static str)>,
    pub repository: Option<Uuid>,
    pub overran_window: bool,
    pub log: Option<String>,
}

#[derive(Debug)]
pub struct SnapshotReport {
    pub id: String,
    pub time: DateTime<Utc>,
    pub utc_offset_seconds: i32,
    pub hostname: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub bytes_processed: i64,
    pub bytes_added: i64,
}

fn parse_uuid(s: &str, what: &str) -> Result<Uuid> {
    Uuid::try_parse(s).map_err(|_| Error::invalid(format!("{what} is not a UUID")))
}

/// A timestamp PostgreSQL can store and a person could mean (1970 to 9999).
fn ts(t: Option<&prost_types::Timestamp>, what: &str) -> Result<Option<DateTime<Utc>>> {
    let Some(t) = t else { return Ok(None) };
    let bad = || Error::invalid(format!("{what} is out of range"));
    if !(0..=253_402_300_799).contains(&t.seconds) {
        return Err(bad());
    }
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).map_err(|_| bad())?).ok_or_else(bad).map(Some)
}

fn trigger_str(t: i32) -> &'static str {
    if t == pb::TriggerKind::RunNow as i32 { "run_now" } else { "schedule" }
}

/// Clips a string to at most `n` bytes on a character boundary, without NUL characters
/// (PostgreSQL's text refuses them, and a hook's output in a job's log may hold one).
pub(crate) fn cap(s: &str, n: usize) -> String {
    if s.contains('\0') {
        return cap(&s.replace('\0', ""), n);
    }
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn clip_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl TryFrom<&pb::JobEvent> for JobReport {
    type Error = Error;

    fn try_from(ev: &pb::JobEvent) -> Result<Self> {
        let event_id = parse_uuid(&ev.event_id, "event_id")?;
        let job_id = parse_uuid(&ev.job_id, "job_id")?;
        let kind = match &ev.kind {
            Some(pb::job_event::Kind::Started(s)) => ReportKind::Started {
                policy: parse_uuid(&s.policy_id, "policy_id").ok(),
                trigger: trigger_str(s.trigger),
                started_at: ts(s.started_at.as_ref(), "started_at")?,
            },
            Some(pb::job_event::Kind::Finished(f)) => ReportKind::Finished(Box::new(Finished::try_from(f)?)),
            Some(pb::job_event::Kind::Progress(p)) => ReportKind::Progress(Progress::from(p)),
            None => return Err(Error::invalid("job event without a kind")),
        };
        Ok(JobReport { event_id, job_id, kind })
    }
}

impl TryFrom<&pb::JobFinished> for Finished {
    type Error = Error;

    fn try_from(f: &pb::JobFinished) -> Result<Self> {
        let outcome = match pb::JobOutcome::try_from(f.outcome) {
            Ok(pb::JobOutcome::Succeeded) => "succeeded",
            Ok(pb::JobOutcome::SucceededWithWarnings) => "warning",
            Ok(pb::JobOutcome::Failed) => "failed",
            Ok(pb::JobOutcome::Interrupted) => "interrupted",
            Ok(pb::JobOutcome::Cancelled) => "cancelled",
            Ok(pb::JobOutcome::Skipped) => "skipped",
            _ => return Err(Error::invalid("unknown job outcome")),
        };
        let started_at = ts(f.started_at.as_ref(), "started_at")?;
        let finished_at = ts(f.finished_at.as_ref(), "finished_at")?.unwrap_or_else(Utc::now);
        let s = f.stats.as_ref();
        let snapshot = match s.filter(|s| !s.snapshot_id.is_empty()) {
            None => None,
            Some(s) => {
                if s.snapshot_id.len() != 64 || !s.snapshot_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::invalid("snapshot_id must be 64 hex characters"));
                }
                Some(SnapshotReport {
                    id: s.snapshot_id.to_ascii_lowercase(),
                    time: ts(s.snapshot_time.as_ref(), "snapshot_time")?.unwrap_or(finished_at),
                    // Real offsets lie within ±18 h.
                    utc_offset_seconds: s.utc_offset_seconds.clamp(-18 * 3600, 18 * 3600),
                    hostname: cap(&s.hostname, 255),
                    paths: s.paths.iter().take(1000).map(|p| cap(p, 4096)).collect(),
                    tags: s.tags.iter().take(100).map(|t| cap(t, 255)).collect(),
                    bytes_processed: clip_i64(s.bytes_processed),
                    bytes_added: clip_i64(s.bytes_added),
                })
            }
        };
        let stats = s.map(|s| {
            serde_json::json!({
                "files_new": s.files_new, "files_changed": s.files_changed, "files_unmodified": s.files_unmodified,
                "dirs_new": s.dirs_new, "dirs_changed": s.dirs_changed, "dirs_unmodified": s.dirs_unmodified,
                "files_processed": s.files_processed, "bytes_processed": s.bytes_processed,
                "bytes_added": s.bytes_added, "bytes_added_packed": s.bytes_added_packed,
                "duration_seconds": match started_at {
                    Some(a) => (finished_at - a).num_milliseconds() as f64 / 1000.0,
                    None => 0.0,
                },
            })
        });
        let error = f.error.as_ref().map(|e| {
            let class =
                if e.retry_class == pb::RetryClass::Permanent as i32 { "permanent" } else { "temporary" };
            (cap(&e.message, 8000), class)
        });
        let repository = match &snapshot {
            Some(_) => Some(parse_uuid(&f.repository_id, "repository_id")?),
            None => parse_uuid(&f.repository_id, "repository_id").ok(),
        };
        Ok(Finished {
            policy: parse_uuid(&f.policy_id, "policy_id").ok(),
            trigger: trigger_str(f.trigger),
            started_at,
            finished_at,
            outcome,
            stats,
            snapshot,
            warnings: f.warnings.iter().take(1000).map(|w| cap(w, 2000)).collect(),
            error,
            repository,
            overran_window: f.overran_window,
            log: Some(cap(&f.log, 64 * 1024)).filter(|l| !l.is_empty()),
        })
    }
}

/// Ingests one agent event. Returns Ok when it is stored (or was already stored): the caller
/// may then acknowledge it. Malformed events and events about another machine's job are
/// refused (Invalid / Forbidden): retrying cannot fix them.
pub async fn ingest(pool: &PgPool, machine: Uuid, ev: &pb::JobEvent) -> Result<()> {
    let report = JobReport::try_from(ev)?;
    if let ReportKind::Progress(p) = &report.kind {
        return progress(pool, machine, report.job_id, p).await.map(|_| ());
    }
    let mut tx = pool.begin().await?;
    let owner: Option<Option<Uuid>> =
        sqlx::query_scalar("select machine_id from jobs where id = $1 for update")
            .bind(report.job_id)
            .fetch_optional(&mut *tx)
            .await?;
    if owner.is_some_and(|o| o != Some(machine)) {
        return Err(Error::Forbidden("job belongs to another machine".into()));
    }
    match report.kind {
        ReportKind::Started { policy, trigger, started_at } => {
            sqlx::query(
                "insert into jobs (id, machine_id, policy_id, kind, trigger, state, started_at)
                 values ($1, $2, $3, 'backup', $4, 'running', coalesce($5, now()))
                 on conflict (id) do update set state = 'running', started_at = excluded.started_at
                 where jobs.state = 'queued'",
            )
            .bind(report.job_id)
            .bind(machine)
            .bind(policy)
            .bind(trigger)
            .bind(started_at)
            .execute(&mut *tx)
            .await?;
        }
        ReportKind::Finished(f) => {
            finished(&mut tx, machine, report.job_id, report.event_id, owner.is_none(), &f).await?;
        }
        ReportKind::Progress(_) => {}
    }
    tx.commit().await?;
    Ok(())
}

/// Stores a running backup's progress: one UPDATE, only of this machine's job while it runs
/// (a sample arriving after the result, or for a job not started here, changes nothing).
/// Returns whether a job was updated.
pub async fn progress(pool: &PgPool, machine: Uuid, job: Uuid, p: &Progress) -> Result<bool> {
    let updated = sqlx::query(
        "update jobs set progress = $3, progress_at = now()
         where id = $1 and machine_id = $2 and state = 'running' and kind = 'backup'",
    )
    .bind(job)
    .bind(machine)
    .bind(sqlx::types::Json(p))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated > 0)
}

async fn finished(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    machine: Uuid,
    job_id: Uuid,
    event_id: Uuid,
    new_job: bool,
    f: &Finished,
) -> Result<()> {
    if new_job {
        sqlx::query(
            "insert into jobs (id, machine_id, policy_id, kind, trigger, state, started_at, finished_at, overran_window)
             values ($1, $2, $3, 'backup', $4, $5, $6, $7, $8)",
        )
        .bind(job_id)
        .bind(machine)
        .bind(f.policy)
        .bind(f.trigger)
        .bind(f.outcome)
        .bind(f.started_at)
        .bind(f.finished_at)
        .bind(f.overran_window)
        .execute(&mut **tx)
        .await?;
    } else {
        // A job the agent's Hello called interrupted but that has no result yet takes its
        // result's outcome: an agent killed after spooling a result and before removing the
        // job's running marker reports both, the result first (#13, kill points).
        sqlx::query(
            "update jobs set state = $2, started_at = coalesce(started_at, $3), finished_at = $4, overran_window = $5,
                             progress = null, progress_at = null
             where id = $1 and (state in ('queued', 'running')
                                or (state = 'interrupted' and not exists (select 1 from job_results where job_id = $1)))",
        )
        .bind(job_id)
        .bind(f.outcome)
        .bind(f.started_at)
        .bind(f.finished_at)
        .bind(f.overran_window)
        .execute(&mut **tx)
        .await?;
    }
    let inserted = sqlx::query(
        "insert into job_results (job_id, event_id, outcome, snapshot_id, stats, warnings, error_message, retry_class,
                                  started_at, finished_at, log)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) on conflict do nothing",
    )
    .bind(job_id)
    .bind(event_id)
    .bind(f.outcome)
    .bind(f.snapshot.as_ref().map(|s| &s.id))
    .bind(f.stats.clone().unwrap_or_else(|| serde_json::json!({})))
    .bind(&f.warnings)
    .bind(f.error.as_ref().map(|e| &e.0))
    .bind(f.error.as_ref().map(|e| e.1))
    .bind(f.started_at)
    .bind(f.finished_at)
    .bind(&f.log)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(()); // delivered before: already stored
    }
    if let (Some(s), Some(repo)) = (&f.snapshot, f.repository) {
        let uses: bool = sqlx::query_scalar(
            "select exists (select 1 from machine_restic_repositories where machine_id = $2 and restic_repository_id = $1)",
        )
        .bind(repo)
        .bind(machine)
        .fetch_one(&mut **tx)
        .await?;
        if !uses {
            return Err(Error::Forbidden(
                "snapshot reported for a repository this machine does not use".into(),
            ));
        }
        sqlx::query(
            "insert into snapshots (restic_repository_id, snapshot_id, machine_id, job_id, time, hostname, paths,
                                    bytes_processed, bytes_added, utc_offset_seconds, tags, policy_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     (select id from policies where id = $12)) on conflict do nothing",
        )
        .bind(repo)
        .bind(&s.id)
        .bind(machine)
        .bind(job_id)
        .bind(s.time)
        .bind(&s.hostname)
        .bind(&s.paths)
        .bind(s.bytes_processed)
        .bind(s.bytes_added)
        .bind(s.utc_offset_seconds)
        .bind(&s.tags)
        .bind(f.policy)
        .execute(&mut **tx)
        .await?;
    }
    audit::record(
        tx,
        &Actor::Machine(machine),
        "job.result",
        "job",
        &job_id.to_string(),
        serde_json::json!({"outcome": f.outcome, "snapshot_id": f.snapshot.as_ref().map(|s| &s.id), "event_id": event_id}),
    )
    .await?;
    if f.outcome == "failed" {
        crate::alerts::job_failed(
            tx,
            job_id,
            f.error.as_ref().map(|e| e.0.as_str()),
            f.error.as_ref().map(|e| e.1),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress_event(p: pb::JobProgress) -> pb::JobEvent {
        pb::JobEvent {
            event_id: Uuid::now_v7().to_string(),
            job_id: Uuid::now_v7().to_string(),
            kind: Some(pb::job_event::Kind::Progress(p)),
        }
    }

    #[test]
    fn progress_is_clipped_and_its_totals_come_in_pairs() {
        let ev = progress_event(pb::JobProgress {
            files_done: 3,
            bytes_done: u64::MAX,
            files_total: Some(u64::MAX),
            bytes_total: Some(10),
            sampled_at: None,
        });
        let ReportKind::Progress(p) = JobReport::try_from(&ev).unwrap().kind else { panic!("progress") };
        let max = i64::MAX as u64;
        assert_eq!(
            p,
            Progress { files_done: 3, bytes_done: max, files_total: Some(max), bytes_total: Some(10) }
        );
        let half = progress_event(pb::JobProgress { files_total: Some(5), ..Default::default() });
        let ReportKind::Progress(p) = JobReport::try_from(&half).unwrap().kind else { panic!("progress") };
        assert_eq!((p.files_total, p.bytes_total), (None, None));
        let mut bad = progress_event(pb::JobProgress::default());
        bad.job_id = "not a job".into();
        assert!(JobReport::try_from(&bad).is_err());
    }
}
