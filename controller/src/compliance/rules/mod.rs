//! The compliance rules, pure: facts about a machine (all times are the controller's receive
//! times, never an agent's clock) and a clock in, status and findings out. Table-driven tests
//! below cover every boundary and every reason.
//!
//! A limit-based rule is *at risk* from 80% of its limit and *non-compliant* from the limit on;
//! its `since` is the instant it crossed. The machine's status is its worst finding's.

use chrono::{DateTime, Duration, Utc};
use cofre_api::compliance::{Finding, Rule, Status, Why};
use uuid::Uuid;

/// Share of a limit after which a rule is at risk, in percent.
pub const AT_RISK_PERCENT: i32 = 80;

/// Slack added to a check cadence before a missing check counts: the check itself takes time.
pub const CHECK_SLACK: Duration = Duration::days(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    Pending,
    Active,
    Revoked,
}

#[derive(Debug, Clone)]
pub struct MachineFacts {
    pub state: MachineState,
    /// Approved (or enrolled, when approval was not needed).
    pub registered_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Since when the agent has reported a plan other than the current one.
    pub plan_stale_since: Option<DateTime<Utc>>,
    pub policies: Vec<PolicyFacts>,
}

#[derive(Debug, Clone)]
pub struct PolicyFacts {
    pub policy_id: Uuid,
    pub name: String,
    /// When the policy started to apply to this machine.
    pub applies_since: DateTime<Utc>,
    pub rpo: Duration,
    pub heartbeat_allowance: Duration,
    /// The longest gap between scheduled checks; None: no scheduled check.
    pub check_cadence: Option<Duration>,
    pub last_good_backup: Option<DateTime<Utc>>,
    /// When its repository was initialised (None: not yet).
    pub repository_ready_at: Option<DateTime<Utc>>,
    pub last_good_check: Option<DateTime<Utc>>,
    pub unrecorded_snapshots: i64,
    /// When the next scheduled backup should start (the schedule and the machine's jitter
    /// applied to the last scheduled start the controller received); None: no schedule.
    pub next_run_due: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub plan_grace: Duration,
    /// How late a scheduled run may start before it counts as missed: silence is noticed
    /// this long after a run was due, not only when the RPO runs out.
    pub missed_run_grace: Duration,
}

/// The verdict on one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    /// Worst first.
    pub findings: Vec<Finding>,
}

/// Judges a limit: `reference` is when the clock started (the last good event, or when the
/// rule started to apply), `limit` how long it may run.
fn limit_rule(
    reference: DateTime<Utc>,
    limit: Duration,
    now: DateTime<Utc>,
) -> Option<(Status, DateTime<Utc>)> {
    let deadline = reference + limit;
    if now >= deadline {
        return Some((Status::NonCompliant, deadline));
    }
    let warn = reference + limit * AT_RISK_PERCENT / 100;
    (now >= warn).then_some((Status::AtRisk, warn))
}

/// "36 h", "24 h", "7 d", "15 min", "45 s": limits as people write them.
pub fn human(d: Duration) -> String {
    cofre_api::compliance::human_limit(d.num_seconds())
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn finding(
    rule: Rule,
    status: Status,
    policy: Option<&PolicyFacts>,
    (reason, why): (String, Why),
    since: Option<DateTime<Utc>>,
) -> Finding {
    Finding {
        rule,
        status,
        policy_id: policy.map(|p| p.policy_id),
        policy_name: policy.map(|p| p.name.clone()),
        reason,
        since,
        why: Some(why),
    }
}

pub fn evaluate(f: &MachineFacts, limits: &Limits, now: DateTime<Utc>) -> Verdict {
    let mut out = Vec::new();
    match f.state {
        MachineState::Pending => {
            out.push(finding(
                Rule::Approved,
                Status::Unknown,
                None,
                (
                    format!("waiting for approval since {}", at(f.registered_at)),
                    Why::new("pending").at(f.registered_at),
                ),
                Some(f.registered_at),
            ));
            return verdict(out);
        }
        MachineState::Revoked => {
            let since = f.revoked_at.unwrap_or(f.registered_at);
            out.push(finding(
                Rule::NotRevoked,
                Status::NonCompliant,
                None,
                (
                    format!("revoked at {}: it can no longer back up", at(since)),
                    Why::new("revoked").at(since),
                ),
                Some(since),
            ));
            return verdict(out);
        }
        MachineState::Active => {}
    }
    let Some(last_seen) = f.last_seen_at else {
        out.push(finding(
            Rule::Reported,
            Status::Unknown,
            None,
            (
                format!("approved at {} and has never reported", at(f.registered_at)),
                Why::new("never_reported").at(f.registered_at),
            ),
            Some(f.registered_at),
        ));
        return verdict(out);
    };
    if f.policies.is_empty() {
        out.push(finding(
            Rule::PolicyAssigned,
            Status::NonCompliant,
            None,
            ("no policy applies to this machine: nothing is backed up".into(), Why::new("no_policy")),
            Some(f.registered_at),
        ));
    }
    let allowance = f.policies.iter().map(|p| p.heartbeat_allowance).min().unwrap_or(Duration::hours(24));
    if let Some((status, since)) = limit_rule(last_seen, allowance, now) {
        out.push(finding(
            Rule::Heartbeat,
            status,
            None,
            (
                format!("agent last seen at {} (allowed silence: {})", at(last_seen), human(allowance)),
                Why::new("silent").at(last_seen).limit(allowance.num_seconds()),
            ),
            Some(since),
        ));
    }
    if let Some(stale) = f.plan_stale_since
        && let Some((status, since)) = limit_rule(stale, limits.plan_grace, now)
    {
        out.push(finding(
            Rule::PlanCurrent,
            status,
            None,
            (
                format!("runs an older plan since {} (grace: {})", at(stale), human(limits.plan_grace)),
                Why::new("plan_stale").at(stale).limit(limits.plan_grace.num_seconds()),
            ),
            Some(since),
        ));
    }
    for p in &f.policies {
        let (reference, what, code) = match p.last_good_backup {
            Some(t) => (t, format!("last good backup at {}", at(t)), "backup_old"),
            None => (
                p.applies_since,
                format!("no good backup since the policy applied at {}", at(p.applies_since)),
                "backup_never",
            ),
        };
        if let Some((status, since)) = limit_rule(reference, p.rpo, now) {
            out.push(finding(
                Rule::BackupAge,
                status,
                Some(p),
                (
                    format!("{what} (RPO: {})", human(p.rpo)),
                    Why::new(code).at(reference).limit(p.rpo.num_seconds()),
                ),
                Some(since),
            ));
        }
        if let (Some(cadence), Some(ready)) = (p.check_cadence, p.repository_ready_at) {
            let limit = cadence + CHECK_SLACK;
            let (reference, what, code) = match p.last_good_check {
                Some(t) => (t, format!("last good integrity check at {}", at(t)), "check_old"),
                None => (
                    ready,
                    format!("no good integrity check since the repository was created at {}", at(ready)),
                    "check_never",
                ),
            };
            if let Some((status, since)) = limit_rule(reference, limit, now) {
                out.push(finding(
                    Rule::CheckAge,
                    status,
                    Some(p),
                    (
                        format!("{what} (checks every {} plus 1 d)", human(cadence)),
                        Why::new(code).at(reference).limit(cadence.num_seconds()),
                    ),
                    Some(since),
                ));
            }
        }
        if let Some(due) = p.next_run_due {
            let deadline = due + limits.missed_run_grace;
            if now >= deadline {
                out.push(finding(
                    Rule::RunOnTime,
                    Status::AtRisk,
                    Some(p),
                    (
                        format!("the backup due at {} had not started by {}", at(due), at(deadline)),
                        Why::new("run_late").at(due).until(deadline),
                    ),
                    Some(deadline),
                ));
            }
        }
        if p.unrecorded_snapshots > 0 {
            out.push(finding(
                Rule::NoUnrecordedSnapshots,
                Status::NonCompliant,
                Some(p),
                (
                    format!(
                        "{} snapshot(s) in its repository were not reported by Cofre: written outside Cofre, or planted",
                        p.unrecorded_snapshots
                    ),
                    Why::new("unrecorded").count(p.unrecorded_snapshots),
                ),
                None,
            ));
        }
    }
    verdict(out)
}

fn verdict(mut findings: Vec<Finding>) -> Verdict {
    findings.sort_by(|a, b| {
        b.status.cmp(&a.status).then(a.rule.cmp(&b.rule)).then(a.policy_name.cmp(&b.policy_name))
    });
    let status = findings.first().map_or(Status::Compliant, |f| f.status);
    Verdict { status, findings }
}

/// The identity of a finding across evaluations: the same rule, policy and status. A change of
/// any of these (not of the reason's wording) is a change in the history.
pub fn key(f: &Finding) -> String {
    format!(
        "{}:{}:{}",
        f.rule.as_str(),
        f.policy_id.map(|p| p.to_string()).unwrap_or_default(),
        f.status.as_str()
    )
}

#[cfg(test)]
mod tests;
