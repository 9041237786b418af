//! Alerts: raised in the same transaction as what causes them (a compliance change recorded by
//! the history, a failed job's result), kept insert-only in `alerts` and audited; then routed
//! to the configured channels and delivered from an outbox (`outbox.rs`) with retries and
//! backoff, so a dead SMTP server delays an alert but never drops it, and two replicas never
//! send one twice.
//!
//! What raises one (`decide`): a machine turning non-compliant; a new non-compliant finding on
//! a machine (silent agent, overdue backup or check, unrecorded snapshots, stale plan, no
//! policy, revoked); a scheduled run missed by its deadline; a machine recovering; a reminder
//! while it stays non-compliant; a failed job; a repository growing too fast in a day.

pub mod channels;
mod outbox;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use cofre_api::alerts::{Alert, AlertGroup, AlertJob, AlertMachine, Severity};
use cofre_api::compliance::{Finding, MachineCompliance, Rule, Status};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};

pub use outbox::{deliver_due, list, route_new, spawn};

/// The alert kind a new finding raises.
fn kind_of(rule: Rule) -> &'static str {
    match rule {
        Rule::Heartbeat => "machine.silent",
        Rule::BackupAge => "backup.overdue",
        Rule::CheckAge => "check.overdue",
        Rule::NoUnrecordedSnapshots => "snapshots.unrecorded",
        Rule::PlanCurrent => "plan.stale",
        Rule::PolicyAssigned => "machine.unprotected",
        Rule::NotRevoked => "machine.revoked",
        Rule::RunOnTime => "run.missed",
        Rule::Reported | Rule::Approved => "machine.non_compliant",
    }
}

/// Findings that raise an alert when they appear: every non-compliant one, and a missed run
/// (only at risk, but the earliest sign of a silent machine).
fn alertable(f: &Finding) -> bool {
    f.status == Status::NonCompliant || f.rule == Rule::RunOnTime
}

/// What the previous evaluation recorded about a machine.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    pub status: Option<Status>,
    /// Finding keys (`compliance::rules::key`).
    pub keys: BTreeSet<String>,
    pub alerted_at: Option<DateTime<Utc>>,
}

/// The alert (kind, severity, summary) a new evaluation of a machine raises, if any: one per
/// change, plus a reminder every `reminder` while it stays non-compliant.
pub fn decide(
    prev: &Previous,
    m: &MachineCompliance,
    now: DateTime<Utc>,
    reminder: Option<Duration>,
) -> Option<(String, Severity, String)> {
    let new: Vec<&Finding> = m
        .findings
        .iter()
        .filter(|f| alertable(f) && !prev.keys.contains(&crate::compliance::rules::key(f)))
        .collect();
    let was_out = prev.status == Some(Status::NonCompliant);
    let is_out = m.status == Status::NonCompliant;
    let name = &m.hostname;
    if is_out && !was_out {
        let kind = match new.as_slice() {
            [one] => kind_of(one.rule),
            _ => "machine.non_compliant",
        };
        let first = m.findings.first().map(|f| f.reason.as_str()).unwrap_or_default();
        return Some((kind.into(), Severity::Critical, format!("{name} is not protected: {first}")));
    }
    if let Some(f) = new.first() {
        let severity = if f.status == Status::NonCompliant { Severity::Critical } else { Severity::Warning };
        return Some((kind_of(f.rule).into(), severity, format!("{name}: {}", f.reason)));
    }
    if was_out && !is_out && prev.status.is_some() {
        return Some((
            "machine.recovered".into(),
            Severity::Info,
            format!("{name} is {} again", human(m.status)),
        ));
    }
    if is_out
        && let Some(every) = reminder
        && prev.alerted_at.is_none_or(|t| now - t >= every)
    {
        return Some((
            "machine.reminder".into(),
            Severity::Critical,
            format!("{name} is still not protected ({} problem(s))", m.findings.len()),
        ));
    }
    None
}

fn human(s: Status) -> &'static str {
    match s {
        Status::Compliant => "compliant",
        Status::AtRisk => "at risk",
        Status::Unknown => "unknown",
        Status::NonCompliant => "non-compliant",
    }
}

/// The alert about a machine, with every reason.
pub fn about_machine(
    m: &MachineCompliance,
    (kind, severity, summary): (String, Severity, String),
    now: DateTime<Utc>,
) -> Alert {
    Alert {
        id: Uuid::now_v7(),
        kind,
        severity,
        at: now,
        summary,
        reasons: m.findings.iter().map(|f| f.reason.clone()).collect(),
        machine: Some(AlertMachine { id: m.machine_id, hostname: m.hostname.clone() }),
        group: m.group_id.zip(m.group_name.clone()).map(|(id, name)| AlertGroup { id, name }),
        status: Some(m.status),
        job: None,
    }
}

/// Records `alert` (insert-only) and its audit event, in the caller's transaction. It reaches
/// channels once a controller routes it.
pub async fn raise(tx: &mut Transaction<'_, Postgres>, alert: &Alert) -> Result<()> {
    let payload = serde_json::to_value(alert).map_err(Error::internal)?;
    sqlx::query(
        "insert into alerts (id, at, kind, severity, machine_id, group_id, job_id, payload)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(alert.id)
    .bind(alert.at)
    .bind(&alert.kind)
    .bind(alert.severity.as_str())
    .bind(alert.machine.as_ref().map(|m| m.id))
    .bind(alert.group.as_ref().map(|g| g.id))
    .bind(alert.job.as_ref().map(|j| j.id))
    .bind(&payload)
    .execute(&mut **tx)
    .await?;
    let (target_type, target_id) = match (&alert.machine, &alert.job) {
        (_, Some(j)) => ("job", j.id.to_string()),
        (Some(m), None) => ("machine", m.id.to_string()),
        (None, None) => ("alert", alert.id.to_string()),
    };
    let details = serde_json::json!({"alert_id": alert.id, "kind": alert.kind, "severity": alert.severity.as_str(), "summary": alert.summary});
    audit::record(tx, &Actor::System, "alert.raise", target_type, &target_id, details).await?;
    Ok(())
}

/// Raises `job.failed` for job `job` (its result was just written as failed in `tx`):
/// critical, or a warning when the failure is temporary (the job is retried).
pub async fn job_failed(
    tx: &mut Transaction<'_, Postgres>,
    job: Uuid,
    error: Option<&str>,
    retry_class: Option<&str>,
) -> Result<()> {
    type Row = (String, Option<Uuid>, Option<String>, Option<Uuid>, Option<String>);
    let (kind, machine, hostname, group, group_name): Row = sqlx::query_as(
        "select j.kind, m.id, m.hostname, g.id, g.name from jobs j
         left join machines m on m.id = j.machine_id
         left join groups g on g.id = m.group_id
         where j.id = $1",
    )
    .bind(job)
    .fetch_one(&mut **tx)
    .await?;
    let on = hostname.clone().unwrap_or_else(|| "a shared repository".into());
    let alert = Alert {
        id: Uuid::now_v7(),
        kind: "job.failed".into(),
        severity: if retry_class == Some("temporary") { Severity::Warning } else { Severity::Critical },
        at: Utc::now(),
        summary: format!("{kind} of {on} failed"),
        reasons: vec![error.unwrap_or("no reason given").chars().take(2000).collect()],
        machine: machine.zip(hostname).map(|(id, hostname)| AlertMachine { id, hostname }),
        group: group.zip(group_name).map(|(id, name)| AlertGroup { id, name }),
        status: None,
        job: Some(AlertJob { id: job, kind }),
    };
    raise(tx, &alert).await
}

/// Records today's size of every repository a store reports (once a day, in `tx`) and raises
/// `repository.growth` for each that grew by more than `percent` and `min_bytes` since
/// yesterday. Returns how many alerts were raised.
pub async fn record_sizes(
    tx: &mut Transaction<'_, Postgres>,
    today: chrono::NaiveDate,
    percent: u64,
    min_bytes: u64,
) -> Result<usize> {
    type Row = (Uuid, i64, Option<i64>, Option<Uuid>, Option<String>, Option<Uuid>, Option<String>);
    let grown: Vec<Row> = sqlx::query_as(
        "with today as (
             insert into repository_sizes (restic_repository_id, day, size_bytes)
             select distinct on (v.restic_repository_id) v.restic_repository_id, $1, i.size_bytes
             from store_inventory i
             join store_inventory_repositories v on v.store_id = i.store_id and v.path = i.path
             where v.restic_repository_id is not null
             order by v.restic_repository_id, i.reported_at desc
             on conflict do nothing
             returning restic_repository_id, size_bytes)
         select t.restic_repository_id, t.size_bytes, y.size_bytes, m.id, m.hostname, g.id, g.name
         from today t
         join repository_sizes y on y.restic_repository_id = t.restic_repository_id and y.day = $1 - 1
         join restic_repositories rr on rr.id = t.restic_repository_id
         left join machines m on m.id = rr.machine_id
         left join groups g on g.id = m.group_id",
    )
    .bind(today)
    .fetch_all(&mut **tx)
    .await?;
    if percent == 0 {
        return Ok(0);
    }
    let mut raised = 0;
    for (_repo, now, before, machine, hostname, group, group_name) in grown {
        let Some(before) = before else { continue };
        let growth = now - before;
        let over_percent = i128::from(growth) * 100 > i128::from(before) * i128::from(percent);
        if growth < i64::try_from(min_bytes).unwrap_or(i64::MAX) || !over_percent {
            continue;
        }
        let on = hostname.clone().unwrap_or_else(|| "a shared repository".into());
        let gib = |b: i64| format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30));
        let alert = Alert {
            id: Uuid::now_v7(),
            kind: "repository.growth".into(),
            severity: Severity::Warning,
            at: Utc::now(),
            summary: format!("the repository of {on} grew from {} to {} in a day", gib(before), gib(now)),
            reasons: vec![format!(
                "grew by {} ({}%), more than the {percent}% allowed: new data being backed up, or files encrypted by ransomware",
                gib(growth),
                if before > 0 { i128::from(growth) * 100 / i128::from(before) } else { 100 }
            )],
            machine: machine.zip(hostname).map(|(id, hostname)| AlertMachine { id, hostname }),
            group: group.zip(group_name).map(|(id, name)| AlertGroup { id, name }),
            status: None,
            job: None,
        };
        raise(tx, &alert).await?;
        raised += 1;
    }
    Ok(raised)
}
