//! The rules' table: every boundary and every reason, with an injected clock.

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

const LIMITS: Limits = Limits { plan_grace: Duration::minutes(15), missed_run_grace: Duration::minutes(15) };

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
