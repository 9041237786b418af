//! Compliance: which machines are protected, which are not, why and since when.
//!
//! `rules/` judges one machine from facts (pure); this module gathers the facts for any number
//! of machines in two queries (plus the plans, for the plan-currency rule), rolls results up per
//! group and fleet-wide, and writes the CSV report. `history.rs` records each machine's latest
//! verdict (`compliance_current`) and the insert-only history (on every change, and one row per
//! machine and day) from one replica at a time; `recorder.rs` decides when. Reports read the
//! recorded verdicts (`report.rs`) and judge only the machines the recorder has not judged recently.
//! Decommissioned machines are left out everywhere.

pub mod evidence;
mod history;
mod recorder;
mod report;
pub mod rules;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use cofre_api::compliance::{Finding, MachineCompliance, Status};
use cofre_policy::schedule::{Trigger, backup_jitter_key, jitter_offset};
use cofre_policy::spec::PolicySpec;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::state::AppState;
use rules::{Limits, MachineFacts, MachineState, PolicyFacts};

pub use history::{days, machine_history, record, record_machines};
pub use recorder::{Dirty, spawn};
pub use report::{BackupAge, Selection, Sort, current, report, summary};

/// What the evaluator remembers between runs about conditions that carry no date of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Since when the agent has reported a plan other than the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_stale_since: Option<DateTime<Utc>>,
    /// When each undated finding (by [`rules::key`]) was first seen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_seen: BTreeMap<String, DateTime<Utc>>,
}

/// One machine's evaluation, with what to remember for the next one.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub machine: MachineCompliance,
    pub observed: Observed,
}

#[derive(sqlx::FromRow)]
struct MachineRow {
    id: Uuid,
    hostname: String,
    group_id: Option<Uuid>,
    group_name: Option<String>,
    status: String,
    registered_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    last_seen_at: Option<DateTime<Utc>>,
    plan_version: i64,
    previous_status: Option<String>,
    changed_at: Option<DateTime<Utc>>,
    observed: Option<serde_json::Value>,
}

#[derive(sqlx::FromRow)]
struct PolicyRow {
    machine_id: Uuid,
    policy_id: Uuid,
    spec: serde_json::Value,
    assigned_at: Option<DateTime<Utc>>,
    initialised_at: Option<DateTime<Utc>>,
    last_good_backup: Option<DateTime<Utc>>,
    last_good_check: Option<DateTime<Utc>>,
    last_scheduled_start: Option<DateTime<Utc>>,
    last_start: Option<DateTime<Utc>>,
    unrecorded: i64,
}

/// Every (not decommissioned) machine of `group` (None: the fleet), or only the machines
/// `only` names, judged at `now`.
pub async fn evaluate(
    st: &AppState,
    group: Option<Uuid>,
    only: Option<&[Uuid]>,
    now: DateTime<Utc>,
) -> Result<Vec<Evaluated>> {
    let machines: Vec<MachineRow> = sqlx::query_as(
        "select m.id, m.hostname, m.group_id, g.name as group_name, m.status,
                coalesce(m.approved_at, m.enrolled_at) as registered_at, m.revoked_at, m.last_seen_at,
                m.plan_version, c.status as previous_status, c.changed_at, c.observed
         from machines m
         left join groups g on g.id = m.group_id
         left join compliance_current c on c.machine_id = m.id
         where m.status <> 'decommissioned' and ($1::uuid is null or m.group_id = $1)
           and ($2::uuid[] is null or m.id = any($2))
         order by m.hostname, m.id",
    )
    .bind(group)
    .bind(only)
    .fetch_all(&st.pool)
    .await?;
    let ids: Vec<Uuid> = machines.iter().map(|m| m.id).collect();
    // Receive times only: job_results.received_at is the controller's clock.
    let policies: Vec<PolicyRow> = sqlx::query_as(
        "select mpr.machine_id, p.id as policy_id, p.spec,
                (select min(a.created_at) from policy_assignments a
                 where a.policy_id = p.id and (a.machine_id = m.id or a.group_id = m.group_id)) as assigned_at,
                rr.initialised_at,
                (select g.received_at from last_good_backups g
                 where g.machine_id = m.id and g.policy_id = p.id) as last_good_backup,
                (select max(r.received_at) from jobs j join job_results r on r.job_id = j.id
                 where j.restic_repository_id = mpr.restic_repository_id and j.kind = 'check'
                   and r.outcome = 'succeeded') as last_good_check,
                (select max(j.created_at) from jobs j
                 where j.machine_id = m.id and j.policy_id = p.id and j.kind = 'backup'
                   and j.trigger = 'schedule') as last_scheduled_start,
                (select max(j.created_at) from jobs j
                 where j.machine_id = m.id and j.policy_id = p.id and j.kind = 'backup') as last_start,
                coalesce((select sum(cardinality(v.unrecorded_snapshots)) from store_inventory_repositories v
                          where v.restic_repository_id = mpr.restic_repository_id), 0)::bigint as unrecorded
         from machine_policy_repositories mpr
         join machines m on m.id = mpr.machine_id
         join policies p on p.id = mpr.policy_id
         left join restic_repositories rr on rr.id = mpr.restic_repository_id
         where mpr.machine_id = any($1)",
    )
    .bind(&ids)
    .fetch_all(&st.pool)
    .await?;
    let active: Vec<Uuid> = machines.iter().filter(|m| m.status == "active").map(|m| m.id).collect();
    let plans = crate::plans::compute_many(&st.pool, &st.master, &st.ca.cert_pem, &active).await?;
    let mut by_machine: HashMap<Uuid, Vec<PolicyRow>> = HashMap::new();
    let mut parsed: HashMap<Uuid, Option<ParsedPolicy>> = HashMap::new();
    for p in policies {
        parsed.entry(p.policy_id).or_insert_with(|| parse_policy(&p.spec, now));
        by_machine.entry(p.machine_id).or_default().push(p);
    }
    let limits = Limits {
        plan_grace: seconds(st.settings.compliance.plan_grace_seconds),
        missed_run_grace: seconds(st.settings.compliance.missed_run_grace_seconds),
    };
    let mut out = Vec::with_capacity(machines.len());
    for m in machines {
        let previous: Observed =
            m.observed.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
        let stale = plans.get(&m.id).is_some_and(|p| i64::try_from(p.version).ok() != Some(m.plan_version));
        let plan_stale_since = stale.then(|| previous.plan_stale_since.unwrap_or(now));
        let rows = by_machine.remove(&m.id).unwrap_or_default();
        let facts = MachineFacts {
            state: match m.status.as_str() {
                "pending" => MachineState::Pending,
                "revoked" => MachineState::Revoked,
                _ => MachineState::Active,
            },
            registered_at: m.registered_at,
            revoked_at: m.revoked_at,
            last_seen_at: m.last_seen_at,
            plan_stale_since,
            policies: rows
                .iter()
                .filter_map(|r| {
                    policy_facts(r, parsed.get(&r.policy_id).and_then(Option::as_ref), m.id, m.registered_at)
                })
                .collect(),
        };
        let last_good_backup = facts.policies.iter().filter_map(|p| p.last_good_backup).max();
        let mut verdict = rules::evaluate(&facts, &limits, now);
        // Undated findings are dated by when the evaluator first saw them.
        let mut first_seen = BTreeMap::new();
        for f in verdict.findings.iter_mut().filter(|f| f.since.is_none()) {
            let k = rules::key(f);
            let seen = previous.first_seen.get(&k).copied().unwrap_or(now);
            f.since = Some(seen);
            first_seen.insert(k, seen);
        }
        // A machine never judged before has been in its status since it was registered as far
        // as anyone recorded (and two readers then agree on it to the second).
        let status_since = match m.previous_status.as_deref().and_then(Status::parse) {
            Some(s) if s == verdict.status => m.changed_at,
            Some(_) => Some(now),
            None => Some(m.registered_at.min(now)),
        };
        out.push(Evaluated {
            machine: MachineCompliance {
                machine_id: m.id,
                hostname: m.hostname,
                group_id: m.group_id,
                group_name: m.group_name,
                status: verdict.status,
                status_since,
                last_seen_at: m.last_seen_at,
                last_good_backup_at: last_good_backup,
                findings: verdict.findings,
            },
            observed: Observed { plan_stale_since, first_seen },
        });
    }
    Ok(out)
}

pub(crate) fn seconds(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// What a policy's spec says that does not depend on the machine: parsed once per evaluation,
/// not once per machine (10,000 machines share a handful of policies).
struct ParsedPolicy {
    name: String,
    rpo: Duration,
    heartbeat_allowance: Duration,
    check_cadence: Option<Duration>,
    schedule: Option<cofre_policy::schedule::Schedule>,
}

fn parse_policy(spec: &serde_json::Value, now: DateTime<Utc>) -> Option<ParsedPolicy> {
    let spec: PolicySpec = serde_json::from_value(spec.clone()).ok()?;
    let ts = |t: DateTime<Utc>| jiff::Timestamp::from_microsecond(t.timestamp_micros()).ok();
    let check_cadence = spec.maintenance.check.parse("maintenance.check").ok().and_then(|s| {
        let gap = s.longest_gap(ts(now)?, 8)?;
        Some(Duration::seconds(gap.as_secs()))
    });
    Some(ParsedPolicy {
        rpo: seconds(spec.rpo_seconds),
        heartbeat_allowance: seconds(spec.heartbeat_allowance_seconds),
        check_cadence,
        schedule: spec.schedule.as_ref().and_then(|s| s.parse("schedule").ok()),
        name: spec.name,
    })
}

fn policy_facts(
    r: &PolicyRow,
    parsed: Option<&ParsedPolicy>,
    machine: Uuid,
    registered_at: DateTime<Utc>,
) -> Option<PolicyFacts> {
    let parsed = parsed?;
    let ts = |t: DateTime<Utc>| jiff::Timestamp::from_microsecond(t.timestamp_micros()).ok();
    let applies_since = r.assigned_at.map_or(registered_at, |a| a.max(registered_at));
    // When the agent should start its next scheduled backup, by the rules it schedules with:
    // an interval counts from any run (a run-now included), cron from the last scheduled one.
    let next_run_due = parsed.schedule.as_ref().and_then(|s| {
        let key = backup_jitter_key(machine.as_bytes(), &r.policy_id.to_string());
        let offset = jitter_offset(s.jitter_seconds, &key);
        let last = match s.trigger {
            Trigger::Interval { .. } => r.last_start,
            _ => r.last_scheduled_start,
        };
        let due = s.next_start(last.and_then(ts), ts(applies_since)?, offset)?;
        DateTime::from_timestamp_micros(due.as_microsecond())
    });
    Some(PolicyFacts {
        policy_id: r.policy_id,
        name: parsed.name.clone(),
        applies_since,
        rpo: parsed.rpo,
        heartbeat_allowance: parsed.heartbeat_allowance,
        check_cadence: parsed.check_cadence,
        last_good_backup: r.last_good_backup,
        repository_ready_at: r.initialised_at,
        last_good_check: r.last_good_check,
        unrecorded_snapshots: r.unrecorded,
        next_run_due,
    })
}

/// The report as CSV (RFC 4180): one row per machine and finding (a compliant machine has one
/// row with empty finding columns), for spreadsheets.
pub fn csv(machines: &[MachineCompliance]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let t = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
    };
    let mut out = String::from(
        "machine_id,hostname,group,status,status_since,last_seen_at,last_good_backup_at,rule,rule_status,policy,reason,since\r\n",
    );
    for m in machines {
        let head = [
            m.machine_id.to_string(),
            m.hostname.clone(),
            m.group_name.clone().unwrap_or_default(),
            m.status.to_string(),
            t(m.status_since),
            t(m.last_seen_at),
            t(m.last_good_backup_at),
        ];
        let rows: Vec<[String; 5]> = if m.findings.is_empty() {
            vec![Default::default()]
        } else {
            m.findings.iter().map(finding_columns).collect()
        };
        for r in rows {
            let line: Vec<String> = head.iter().chain(r.iter()).map(|s| field(s)).collect();
            out.push_str(&line.join(","));
            out.push_str("\r\n");
        }
    }
    out
}

fn finding_columns(f: &Finding) -> [String; 5] {
    [
        f.rule.as_str().to_string(),
        f.status.to_string(),
        f.policy_name.clone().unwrap_or_default(),
        f.reason.clone(),
        f.since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default(),
    ]
}
