//! The compliance rules, pure: facts about a machine (all times are the controller's receive
//! times, never an agent's clock) and a clock in, status and findings out. Table-driven tests
//! below cover every boundary and every reason.
//!
//! A limit-based rule is *at risk* from 80% of its limit and *non-compliant* from the limit on;
//! its `since` is the instant it crossed. The machine's status is its worst finding's.

use chrono::{DateTime, Duration, Utc};
use cofre_api::compliance::{Finding, Rule, Status};
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
    let s = d.num_seconds();
    if s % 86_400 == 0 && s >= 2 * 86_400 {
        format!("{} d", s / 86_400)
    } else if s % 3600 == 0 && s >= 3600 {
        format!("{} h", s / 3600)
    } else if s % 60 == 0 && s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn finding(
    rule: Rule,
    status: Status,
    policy: Option<&PolicyFacts>,
    reason: String,
    since: Option<DateTime<Utc>>,
) -> Finding {
    Finding {
        rule,
        status,
        policy_id: policy.map(|p| p.policy_id),
        policy_name: policy.map(|p| p.name.clone()),
        reason,
        since,
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
                format!("waiting for approval since {}", at(f.registered_at)),
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
                format!("revoked at {}: it can no longer back up", at(since)),
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
            format!("approved at {} and has never reported", at(f.registered_at)),
            Some(f.registered_at),
        ));
        return verdict(out);
    };
    if f.policies.is_empty() {
        out.push(finding(
            Rule::PolicyAssigned,
            Status::NonCompliant,
            None,
            "no policy applies to this machine: nothing is backed up".into(),
            Some(f.registered_at),
        ));
    }
    let allowance = f.policies.iter().map(|p| p.heartbeat_allowance).min().unwrap_or(Duration::hours(24));
    if let Some((status, since)) = limit_rule(last_seen, allowance, now) {
        out.push(finding(
            Rule::Heartbeat,
            status,
            None,
            format!("agent last seen at {} (allowed silence: {})", at(last_seen), human(allowance)),
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
            format!("runs an older plan since {} (grace: {})", at(stale), human(limits.plan_grace)),
            Some(since),
        ));
    }
    for p in &f.policies {
        let (reference, what) = match p.last_good_backup {
            Some(t) => (t, format!("last good backup at {}", at(t))),
            None => (
                p.applies_since,
                format!("no good backup since the policy applied at {}", at(p.applies_since)),
            ),
        };
        if let Some((status, since)) = limit_rule(reference, p.rpo, now) {
            out.push(finding(
                Rule::BackupAge,
                status,
                Some(p),
                format!("{what} (RPO: {})", human(p.rpo)),
                Some(since),
            ));
        }
        if let (Some(cadence), Some(ready)) = (p.check_cadence, p.repository_ready_at) {
            let limit = cadence + CHECK_SLACK;
            let (reference, what) = match p.last_good_check {
                Some(t) => (t, format!("last good integrity check at {}", at(t))),
                None => (
                    ready,
                    format!("no good integrity check since the repository was created at {}", at(ready)),
                ),
            };
            if let Some((status, since)) = limit_rule(reference, limit, now) {
                out.push(finding(
                    Rule::CheckAge,
                    status,
                    Some(p),
                    format!("{what} (checks every {} plus 1 d)", human(cadence)),
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
                    format!("the backup due at {} had not started by {}", at(due), at(deadline)),
                    Some(deadline),
                ));
            }
        }
        if p.unrecorded_snapshots > 0 {
            out.push(finding(
                Rule::NoUnrecordedSnapshots,
                Status::NonCompliant,
                Some(p),
                format!(
                    "{} snapshot(s) in its repository were not reported by Cofre: written outside Cofre, or planted",
                    p.unrecorded_snapshots
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
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy() -> PolicyFacts {
        PolicyFacts {
            policy_id: Uuid::from_u128(7),
            name: "servers".into(),
            applies_since: t("2026-03-01T00:00:00Z"),
            rpo: Duration::hours(36),
            heartbeat_allowance: Duration::hours(24),
            check_cadence: Some(Duration::days(7)),
            last_good_backup: Some(t("2026-03-10T00:00:00Z")),
            repository_ready_at: Some(t("2026-03-01T00:00:00Z")),
            last_good_check: Some(t("2026-03-09T00:00:00Z")),
            unrecorded_snapshots: 0,
            next_run_due: None,
        }
    }

    fn machine() -> MachineFacts {
        MachineFacts {
            state: MachineState::Active,
            registered_at: t("2026-03-01T00:00:00Z"),
            revoked_at: None,
            last_seen_at: Some(t("2026-03-10T12:00:00Z")),
            plan_stale_since: None,
            policies: vec![policy()],
        }
    }

    const LIMITS: Limits =
        Limits { plan_grace: Duration::minutes(15), missed_run_grace: Duration::minutes(15) };

    /// (description, facts, now, expected status, expected findings as (rule, status, since, reason contains))
    type Case = (
        &'static str,
        MachineFacts,
        &'static str,
        Status,
        Vec<(Rule, Status, Option<&'static str>, &'static str)>,
    );

    fn cases() -> Vec<Case> {
        let m = machine;
        let with = |f: fn(&mut MachineFacts)| {
            let mut x = machine();
            f(&mut x);
            x
        };
        vec![
            ("all good", m(), "2026-03-10T12:00:00Z", Status::Compliant, vec![]),
            // Backup age: RPO 36 h from 03-10 00:00 → at risk from 80% (28.8 h), non-compliant at 36 h.
            ("backup just before 80%", m(), "2026-03-11T04:47:59Z", Status::Compliant, vec![]),
            (
                "backup at 80%",
                with(|x| x.last_seen_at = Some(t("2026-03-11T04:48:00Z"))),
                "2026-03-11T04:48:00Z",
                Status::AtRisk,
                vec![(
                    Rule::BackupAge,
                    Status::AtRisk,
                    Some("2026-03-11T04:48:00Z"),
                    "last good backup at 2026-03-10 00:00 UTC (RPO: 36 h)",
                )],
            ),
            (
                "backup one second before the RPO",
                with(|x| x.last_seen_at = Some(t("2026-03-11T11:59:59Z"))),
                "2026-03-11T11:59:59Z",
                Status::AtRisk,
                vec![(Rule::BackupAge, Status::AtRisk, Some("2026-03-11T04:48:00Z"), "RPO: 36 h")],
            ),
            (
                "backup at the RPO",
                with(|x| x.last_seen_at = Some(t("2026-03-11T12:00:00Z"))),
                "2026-03-11T12:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::BackupAge,
                    Status::NonCompliant,
                    Some("2026-03-11T12:00:00Z"),
                    "last good backup at 2026-03-10 00:00 UTC",
                )],
            ),
            (
                "never backed up: counted from when the policy applied",
                with(|x| {
                    x.policies[0].last_good_backup = None;
                    x.last_seen_at = Some(t("2026-03-03T00:00:00Z"));
                }),
                "2026-03-03T00:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::BackupAge,
                    Status::NonCompliant,
                    Some("2026-03-02T12:00:00Z"),
                    "no good backup since the policy applied at 2026-03-01 00:00 UTC",
                )],
            ),
            // Heartbeat: seen 03-10 12:00, allowance 24 h → at risk from 03-11 07:12, out at 03-11 12:00.
            (
                "silent agent at 80%",
                with(|x| x.policies[0].last_good_backup = Some(t("2026-03-11T07:00:00Z"))),
                "2026-03-11T07:12:00Z",
                Status::AtRisk,
                vec![(
                    Rule::Heartbeat,
                    Status::AtRisk,
                    Some("2026-03-11T07:12:00Z"),
                    "agent last seen at 2026-03-10 12:00 UTC (allowed silence: 24 h)",
                )],
            ),
            (
                "silent agent past its allowance",
                with(|x| x.policies[0].last_good_backup = Some(t("2026-03-11T07:00:00Z"))),
                "2026-03-11T12:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::Heartbeat,
                    Status::NonCompliant,
                    Some("2026-03-11T12:00:00Z"),
                    "allowed silence: 24 h",
                )],
            ),
            // Check: last 03-09, cadence 7 d + 1 d = 8 d → at risk at 03-09 + 6.4 d = 03-15 09:36, out 03-17.
            (
                "check at 80% of its limit",
                with(|x| {
                    x.policies[0].last_good_backup = Some(t("2026-03-15T09:00:00Z"));
                    x.last_seen_at = Some(t("2026-03-15T09:36:00Z"));
                }),
                "2026-03-15T09:36:00Z",
                Status::AtRisk,
                vec![(
                    Rule::CheckAge,
                    Status::AtRisk,
                    Some("2026-03-15T09:36:00Z"),
                    "last good integrity check at 2026-03-09 00:00 UTC (checks every 7 d plus 1 d)",
                )],
            ),
            (
                "check overdue",
                with(|x| {
                    x.policies[0].last_good_backup = Some(t("2026-03-17T00:00:00Z"));
                    x.last_seen_at = Some(t("2026-03-17T00:00:00Z"));
                }),
                "2026-03-17T00:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::CheckAge,
                    Status::NonCompliant,
                    Some("2026-03-17T00:00:00Z"),
                    "last good integrity check",
                )],
            ),
            (
                "no check yet: counted from the repository's creation",
                with(|x| x.policies[0].last_good_check = None),
                "2026-03-10T12:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::CheckAge,
                    Status::NonCompliant,
                    Some("2026-03-09T00:00:00Z"),
                    "no good integrity check since the repository was created at 2026-03-01 00:00 UTC",
                )],
            ),
            (
                "no check rule before the repository exists",
                with(|x| {
                    x.policies[0].last_good_check = None;
                    x.policies[0].repository_ready_at = None;
                }),
                "2026-03-10T12:00:00Z",
                Status::Compliant,
                vec![],
            ),
            (
                "no check rule without a check schedule",
                with(|x| {
                    x.policies[0].last_good_check = None;
                    x.policies[0].check_cadence = None;
                }),
                "2026-03-10T12:00:00Z",
                Status::Compliant,
                vec![],
            ),
            // Plan: stale since 12:00, grace 15 min → at risk at 12:12, out at 12:15.
            (
                "stale plan within its grace",
                with(|x| x.plan_stale_since = Some(t("2026-03-10T12:00:00Z"))),
                "2026-03-10T12:11:59Z",
                Status::Compliant,
                vec![],
            ),
            (
                "stale plan near the end of its grace",
                with(|x| x.plan_stale_since = Some(t("2026-03-10T12:00:00Z"))),
                "2026-03-10T12:12:00Z",
                Status::AtRisk,
                vec![(
                    Rule::PlanCurrent,
                    Status::AtRisk,
                    Some("2026-03-10T12:12:00Z"),
                    "runs an older plan since 2026-03-10 12:00 UTC (grace: 15 min)",
                )],
            ),
            (
                "stale plan past its grace",
                with(|x| x.plan_stale_since = Some(t("2026-03-10T12:00:00Z"))),
                "2026-03-10T12:15:00Z",
                Status::NonCompliant,
                vec![(Rule::PlanCurrent, Status::NonCompliant, Some("2026-03-10T12:15:00Z"), "older plan")],
            ),
            (
                "a run due at 19:00 that has not started by 19:15: at risk",
                with(|x| x.policies[0].next_run_due = Some(t("2026-03-10T19:00:00Z"))),
                "2026-03-10T19:15:00Z",
                Status::AtRisk,
                vec![(
                    Rule::RunOnTime,
                    Status::AtRisk,
                    Some("2026-03-10T19:15:00Z"),
                    "the backup due at 2026-03-10 19:00 UTC had not started by 2026-03-10 19:15 UTC",
                )],
            ),
            (
                "a run due at 19:00, at 19:14:59: still on time",
                with(|x| {
                    x.policies[0].next_run_due = Some(t("2026-03-10T19:00:00Z"));
                    x.last_seen_at = Some(t("2026-03-10T19:14:59Z"));
                }),
                "2026-03-10T19:14:59Z",
                Status::Compliant,
                vec![],
            ),
            (
                "unrecorded snapshots",
                with(|x| x.policies[0].unrecorded_snapshots = 2),
                "2026-03-10T12:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::NoUnrecordedSnapshots,
                    Status::NonCompliant,
                    None,
                    "2 snapshot(s) in its repository were not reported by Cofre",
                )],
            ),
            (
                "no policy",
                with(|x| x.policies.clear()),
                "2026-03-10T12:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::PolicyAssigned,
                    Status::NonCompliant,
                    Some("2026-03-01T00:00:00Z"),
                    "no policy applies to this machine",
                )],
            ),
            (
                "never reported",
                with(|x| x.last_seen_at = None),
                "2026-03-10T12:00:00Z",
                Status::Unknown,
                vec![(Rule::Reported, Status::Unknown, Some("2026-03-01T00:00:00Z"), "has never reported")],
            ),
            (
                "pending",
                with(|x| x.state = MachineState::Pending),
                "2026-03-10T12:00:00Z",
                Status::Unknown,
                vec![(
                    Rule::Approved,
                    Status::Unknown,
                    Some("2026-03-01T00:00:00Z"),
                    "waiting for approval since 2026-03-01 00:00 UTC",
                )],
            ),
            (
                "revoked",
                with(|x| {
                    x.state = MachineState::Revoked;
                    x.revoked_at = Some(t("2026-03-05T08:00:00Z"));
                }),
                "2026-03-10T12:00:00Z",
                Status::NonCompliant,
                vec![(
                    Rule::NotRevoked,
                    Status::NonCompliant,
                    Some("2026-03-05T08:00:00Z"),
                    "revoked at 2026-03-05 08:00 UTC",
                )],
            ),
            (
                "worst finding first",
                with(|x| {
                    x.policies[0].unrecorded_snapshots = 1;
                    x.last_seen_at = Some(t("2026-03-11T07:12:00Z"));
                }),
                "2026-03-11T07:12:00Z",
                Status::NonCompliant,
                vec![
                    (Rule::NoUnrecordedSnapshots, Status::NonCompliant, None, "1 snapshot(s)"),
                    (Rule::BackupAge, Status::AtRisk, Some("2026-03-11T04:48:00Z"), "RPO: 36 h"),
                ],
            ),
        ]
    }

    #[test]
    fn every_boundary_and_reason() {
        for (what, facts, now, status, expected) in cases() {
            let v = evaluate(&facts, &LIMITS, t(now));
            assert_eq!(v.status, status, "{what}: {v:#?}");
            assert_eq!(v.findings.len(), expected.len(), "{what}: {v:#?}");
            for (f, (rule, st, since, reason)) in v.findings.iter().zip(&expected) {
                assert_eq!((f.rule, f.status), (*rule, *st), "{what}: {f:#?}");
                assert_eq!(f.since, since.map(t), "{what}: {f:#?}");
                assert!(f.reason.contains(reason), "{what}: {:?} lacks {reason:?}", f.reason);
            }
        }
    }

    #[test]
    fn limits_read_as_people_write_them() {
        assert_eq!(human(Duration::hours(36)), "36 h");
        assert_eq!(human(Duration::days(7)), "7 d");
        assert_eq!(human(Duration::minutes(15)), "15 min");
        assert_eq!(human(Duration::seconds(90)), "90 s");
    }
}
