//! Database tests of policies: validation naming every bad field with nothing stored, versions
//! and their differences, hook rights, plans carrying the schedule, stale plans.

use axum::http::StatusCode;
use cofre_policy::spec::{HookSpec, OnFailure, PolicySpec, ScheduleSpec};
use sqlx::PgPool;
use uuid::Uuid;

use super::{HookRights, create, diff, list_versions, update};
use crate::audit::Actor;
use crate::auth::Role;
use crate::error::Error;
use crate::tests::{call_json, machine_in_new_group, state, test_repository, user_token};

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn invalid_policies_are_refused_naming_the_field_and_nothing_is_stored(pool: PgPool) {
    let st = state(pool).await;
    let repo = test_repository(&st).await;
    let admin = user_token(&st, "a", Role::Admin, None).await;
    let base = serde_json::json!({"name": "p", "repository_id": repo, "paths": ["/srv"]});
    let with = |patch: serde_json::Value| {
        let mut v = base.clone();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    let cases = [
        (with(serde_json::json!({"schedule": {"cron": "61 * * * *", "timezone": "UTC"}})), "schedule.cron"),
        (
            with(serde_json::json!({"schedule": {"cron": "0 19 * * *", "timezone": "Mars/Olympus"}})),
            "schedule.timezone",
        ),
        (with(serde_json::json!({"schedule": {"cron": "0 19 * * *"}})), "schedule.timezone"),
        (with(serde_json::json!({"paths": []})), "paths"),
        (with(serde_json::json!({"paths": ["relative/path"]})), "paths[0]"),
        (with(serde_json::json!({"retention": {"keep_last": -1}})), "retention.keep_last"),
        (with(serde_json::json!({"retention": {"keep_within": "1w"}})), "retention.keep_within"),
        (with(serde_json::json!({"retention": {"keep_within": "0d"}})), "retention.keep_within"),
        (with(serde_json::json!({"interval_seconds": 3600})), "interval_seconds"),
        (with(serde_json::json!({"hooks": {"before": {"name": "../../bin/sh"}}})), "hooks.before.name"),
        (with(serde_json::json!({"hooks": {"after": {"name": "a/b"}}})), "hooks.after.name"),
        (
            with(serde_json::json!({"hooks": {"after": {"name": "ok", "on_failure": "skip_backup"}}})),
            "hooks.after.on_failure",
        ),
        (
            with(serde_json::json!({"schedule": {"interval_seconds": 86400 * 3}, "rpo_seconds": 86400})),
            "schedule.interval_seconds",
        ),
        (
            with(
                serde_json::json!({"schedule": {"interval_seconds": 3600, "timezone": "UTC", "window": {"start": "19:00", "end": "19:00"}}}),
            ),
            "schedule.window",
        ),
        (
            with(
                serde_json::json!({"schedule": {"interval_seconds": 3600, "timezone": "UTC", "window": {"start": "25:00", "end": "07:00"}}}),
            ),
            "schedule.window.start",
        ),
        (with(serde_json::json!({"excludes": ["a["]})), "excludes[0]"),
        (with(serde_json::json!({"maintenance": {"check_read_data": "7/3"}})), "maintenance.check_read_data"),
        (with(serde_json::json!({"tags": ["a,b"]})), "tags[0]"),
        (with(serde_json::json!({"repository_id": Uuid::now_v7()})), "repository_id"),
    ];
    for (body, field) in cases {
        let (s, problem) = call_json(&st, "POST", "/api/v1/policies", &admin, &body.to_string()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {problem}");
        let fields: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&field), "{body}: expected {field} in {fields:?} ({problem})");
    }
    // Several problems at once are all named.
    let (_, problem) = call_json(
        &st,
        "POST",
        "/api/v1/policies",
        &admin,
        &with(serde_json::json!({"paths": ["x"], "tags": ["cofre-x"]})).to_string(),
    )
    .await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
    let stored: i64 = sqlx::query_scalar("select count(*) from policies").fetch_one(&st.pool).await.unwrap();
    let versions: i64 =
        sqlx::query_scalar("select count(*) from policy_versions").fetch_one(&st.pool).await.unwrap();
    assert_eq!((stored, versions), (0, 0), "nothing stored on a 4xx");
    let (s, _) = call_json(&st, "POST", "/api/v1/policies", &admin, &base.to_string()).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn every_change_is_a_version_with_its_author_and_a_field_diff(pool: PgPool) {
    let st = state(pool).await;
    let repo = test_repository(&st).await;
    let alice = Actor::User { id: Uuid::now_v7(), name: "alice".into() };
    let spec = PolicySpec::new("docs", repo, vec!["/home".into()]).every(3600);
    let p = create(&st.pool, &alice, spec.clone(), HookRights::Allowed).await.unwrap();
    assert_eq!(p.revision, 1);
    let mut v2 = spec.clone();
    v2.schedule = Some(ScheduleSpec {
        cron: Some("0 19 * * 1-5".into()),
        timezone: Some("America/Sao_Paulo".into()),
        ..Default::default()
    });
    v2.paths.push("/etc".into());
    let p2 = update(&st.pool, &alice, p.id, Some(1), v2.clone(), HookRights::Allowed).await.unwrap();
    assert_eq!(p2.revision, 2);
    // The same spec again changes nothing and makes no version.
    let same = update(&st.pool, &alice, p.id, None, v2, HookRights::Allowed).await.unwrap();
    assert_eq!(same.revision, 2);
    let versions = list_versions(&st.pool, p.id).await.unwrap();
    assert_eq!(versions.iter().map(|v| v.revision).collect::<Vec<_>>(), vec![2, 1]);
    assert!(versions[0].changed_by.contains("alice"));
    let changes = diff(&st.pool, p.id, 1, 2).await.unwrap();
    let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains(&"paths[1]"), "{fields:?}");
    assert!(fields.contains(&"schedule.cron") && fields.contains(&"schedule.interval_seconds"), "{fields:?}");
    assert!(matches!(diff(&st.pool, p.id, 1, 9).await, Err(Error::Invalid { .. })));
    // The app role cannot rewrite history.
    let mut tx = st.pool.begin().await.unwrap();
    sqlx::query("set local role cofre_app").execute(&mut *tx).await.unwrap();
    assert!(sqlx::query("update policy_versions set spec = '{}'").execute(&mut *tx).await.is_err());
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn only_admins_set_hooks(pool: PgPool) {
    let st = state(pool).await;
    let repo = test_repository(&st).await;
    let mut spec = PolicySpec::new("db", repo, vec!["/var/lib/postgresql".into()]);
    spec.hooks.before = Some(HookSpec {
        name: "dump-postgres".into(),
        timeout_seconds: 600,
        on_failure: OnFailure::SkipBackup,
    });
    let denied = create(&st.pool, &Actor::System, spec.clone(), HookRights::Denied).await;
    assert!(matches!(denied, Err(Error::Forbidden(_))), "{denied:?}");
    let p = create(&st.pool, &Actor::System, spec.clone(), HookRights::Allowed).await.unwrap();
    // Others may still edit the rest of a policy that has hooks.
    let mut other = spec.clone();
    other.paths.push("/etc".into());
    update(&st.pool, &Actor::System, p.id, None, other.clone(), HookRights::Denied).await.unwrap();
    other.hooks.before = None;
    other.hooks.after =
        Some(HookSpec { name: "x".into(), timeout_seconds: 5, on_failure: OnFailure::Continue });
    assert!(matches!(
        update(&st.pool, &Actor::System, p.id, None, other, HookRights::Denied).await,
        Err(Error::Forbidden(_))
    ));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn plans_carry_the_schedule_and_machines_on_old_plans_are_listed(pool: PgPool) {
    let st = state(pool).await;
    let (_group, machine) = machine_in_new_group(&st, "finance").await;
    let repo = test_repository(&st).await;
    let mut spec = PolicySpec::new("docs", repo, vec!["/home".into()]);
    spec.schedule = Some(ScheduleSpec {
        cron: Some("0 19 * * *".into()),
        timezone: Some("America/Sao_Paulo".into()),
        jitter_seconds: 600,
        ..Default::default()
    });
    spec.tags = vec!["finance".into()];
    spec.iexcludes = vec!["*.ISO".into()];
    let p = create(&st.pool, &Actor::System, spec, HookRights::Allowed).await.unwrap();
    super::assign(
        &st.pool,
        &Actor::System,
        p.id,
        super::NewAssignment { machine_id: Some(machine), group_id: None },
    )
    .await
    .unwrap();
    // The repository is not initialised yet: the plan leaves the policy out.
    let plan = crate::plans::compute(&st.pool, &st.master, &st.ca.cert_pem, machine).await.unwrap();
    assert!(plan.policies.is_empty());
    crate::tests::initialise_repositories(&st).await;
    let plan = crate::plans::compute(&st.pool, &st.master, &st.ca.cert_pem, machine).await.unwrap();
    let pp = &plan.policies[0];
    let sched = pp.schedule.as_ref().unwrap();
    assert_eq!(
        (sched.cron.as_str(), sched.timezone.as_str(), sched.jitter_seconds),
        ("0 19 * * *", "America/Sao_Paulo", 600)
    );
    assert_eq!(pp.interval_seconds, 0, "older agents do not run a cron policy as an interval");
    assert_eq!(
        (pp.tags.clone(), pp.iexcludes.clone(), pp.revision),
        (vec!["finance".to_string()], vec!["*.ISO".to_string()], 1)
    );
    // The agent has not reported this plan: it is listed as stale until it does.
    let stale = crate::plans::stale(&st.pool, &st.master, &st.ca.cert_pem, None).await.unwrap();
    assert_eq!(stale.iter().map(|s| s.machine_id).collect::<Vec<_>>(), vec![machine]);
    crate::machines::record_plan_version(&st.pool, machine, plan.version).await.unwrap();
    assert!(crate::plans::stale(&st.pool, &st.master, &st.ca.cert_pem, None).await.unwrap().is_empty());
}
