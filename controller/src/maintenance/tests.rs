//! Database tests of maintenance: what forget removes (recorded snapshots only, never future
//! ones), when work is due, exactly-once claims with takeover, cancellation.

use chrono::{Duration, Utc};
use cofre_policy::spec::{PolicySpec, RetentionSpec};
use sqlx::PgPool;
use uuid::Uuid;

use super::schedule;
use crate::audit::Actor;
use crate::tests::{assigned_policy, initialise_repositories, machine_in_new_group, state, test_repository};

/// A machine with a policy (keep-last 2) on its own restic repository: (machine, policy,
/// restic repository).
async fn setup(st: &crate::state::AppState) -> (Uuid, Uuid, Uuid) {
    let (_g, machine) = machine_in_new_group(st, "finance").await;
    let mut spec = PolicySpec::new("docs", test_repository(st).await, vec!["/home".into()]);
    spec.retention = Some(RetentionSpec { keep_last: 2, ..Default::default() });
    let policy = assigned_policy(st, spec, machine).await;
    initialise_repositories(st).await;
    let rr: Uuid = sqlx::query_scalar("select id from restic_repositories where machine_id = $1")
        .bind(machine)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    (machine, policy, rr)
}

async fn record(pool: &PgPool, rr: Uuid, machine: Uuid, policy: Option<Uuid>, id: &str, days_ago: i64) {
    sqlx::query(
        "insert into snapshots (restic_repository_id, snapshot_id, machine_id, time, hostname, paths, policy_id)
         values ($1, $2, $3, $4, 'pc', '{/home}', $5)",
    )
    .bind(rr)
    .bind(id)
    .bind(machine)
    .bind(Utc::now() - Duration::days(days_ago))
    .bind(policy)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn forget_counts_only_recorded_past_snapshots_of_known_policies(pool: PgPool) {
    let st = state(pool).await;
    let (machine, policy, rr) = setup(&st).await;
    for (i, days) in [5, 4, 3, 2, 1].iter().enumerate() {
        record(&st.pool, rr, machine, Some(policy), &format!("{i:064}"), *days).await;
    }
    // Dated a year ahead: not counted (it would be "the latest"), not removed.
    record(&st.pool, rr, machine, Some(policy), &"f".repeat(64), -365).await;
    // Of no known policy: kept.
    record(&st.pool, rr, machine, None, &"e".repeat(64), 30).await;
    let plan = super::forget::plan(&st.pool, rr, Utc::now()).await.unwrap();
    let mut removed = plan.remove.clone();
    removed.sort();
    assert_eq!(removed, vec![format!("{:064}", 0), format!("{:064}", 1), format!("{:064}", 2)]);
    assert_eq!(plan.future, vec!["f".repeat(64)]);
    assert_eq!(plan.keep, 3, "two newest + the one of no policy");
    assert!(plan.recorded.contains(&"e".repeat(64)));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn due_maintenance_is_queued_once_and_claimed_by_exactly_one_replica(pool: PgPool) {
    let st = state(pool).await;
    let (_machine, _policy, rr) = setup(&st).await;
    // A new repository's maintenance is due an interval after it was first seen.
    assert_eq!(schedule::enqueue_due(&st.pool).await.unwrap(), 0, "nothing at once");
    let n = sqlx::query("update maintenance_schedule set since = since - interval '8 days'")
        .execute(&st.pool)
        .await
        .unwrap();
    assert_eq!(n.rows_affected(), 3, "one schedule row per kind");
    assert_eq!(schedule::enqueue_due(&st.pool).await.unwrap(), 3, "forget, prune and check");
    assert_eq!(schedule::enqueue_due(&st.pool).await.unwrap(), 0, "nothing twice");
    let identity = std::sync::Arc::new(super::MaintenanceIdentity::new(st.ca.clone()));
    let settings = crate::config::MaintenanceSettings::default();
    let a = super::worker(st.pool.clone(), st.master.clone(), identity.clone(), settings.clone());
    let b = super::worker(st.pool.clone(), st.master.clone(), identity, settings);
    let candidates = a.candidates().await.unwrap();
    assert_eq!(candidates.len(), 3);
    let (job, repo) = candidates[0];
    assert_eq!(repo, rr);
    let (conn_a, claimed) = a.claim(job, repo).await.unwrap().expect("the first replica gets it");
    assert_eq!(claimed.attempts, 1);
    assert!(b.claim(job, repo).await.unwrap().is_none(), "held: the second gets nothing");
    // Another job of the same repository waits while one runs there.
    assert!(b.claim(candidates[1].0, repo).await.unwrap().is_none(), "one job per repository at a time");
    // The holder dies: its connection closes and its heartbeat goes stale.
    sqlx::Connection::close(conn_a).await.unwrap();
    sqlx::query("update jobs set heartbeat_at = now() - interval '1 minute' where id = $1")
        .bind(job)
        .execute(&st.pool)
        .await
        .unwrap();
    let (_conn_b, taken) = b.claim(job, repo).await.unwrap().expect("taken over");
    assert_eq!(taken.attempts, 2);
    let holder: String = sqlx::query_scalar("select holder from jobs where id = $1")
        .bind(job)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!(holder, b.replica);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn maintenance_and_backups_can_be_cancelled_until_they_end(pool: PgPool) {
    let st = state(pool).await;
    let (machine, policy, rr) = setup(&st).await;
    let queued = super::run_now(
        &st.pool,
        &Actor::System,
        rr,
        super::RunMaintenance { kind: "prune".into(), dry_run: false },
    )
    .await
    .unwrap();
    assert!(matches!(
        super::run_now(
            &st.pool,
            &Actor::System,
            rr,
            super::RunMaintenance { kind: "prune".into(), dry_run: false }
        )
        .await,
        Err(crate::error::Error::Conflict(_))
    ));
    assert!(matches!(
        super::run_now(
            &st.pool,
            &Actor::System,
            rr,
            super::RunMaintenance { kind: "defrag".into(), dry_run: false }
        )
        .await,
        Err(crate::error::Error::Invalid { .. })
    ));
    let cancelled = crate::jobs::cancel(&st.pool, &Actor::System, queued.id).await.unwrap();
    assert_eq!(cancelled.state, "cancelled", "a queued job ends at once");
    assert!(matches!(
        crate::jobs::cancel(&st.pool, &Actor::System, queued.id).await,
        Err(crate::error::Error::Conflict(_))
    ));
    // A backup: the session passes the cancel on until the agent reports a result.
    let job = crate::jobs::run_now(
        &st.pool,
        &Actor::System,
        machine,
        crate::jobs::RunNow { policy_id: policy },
        None,
    )
    .await
    .unwrap();
    crate::jobs::cancel(&st.pool, &Actor::System, job.id).await.unwrap();
    assert_eq!(crate::jobs::cancels_for(&st.pool, machine).await.unwrap(), vec![job.id]);
    assert!(crate::jobs::queued_for(&st.pool, machine).await.unwrap().is_empty(), "not sent to run any more");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn restic_repositories_come_in_pages_with_their_machines_names(pool: PgPool) {
    use axum::http::StatusCode;
    let st = state(pool.clone()).await;
    let mut hosts = Vec::new();
    let repo = test_repository(&st).await;
    for i in 0..3 {
        let (_, machine) = machine_in_new_group(&st, &format!("g{i}")).await;
        assigned_policy(&st, PolicySpec::new(format!("p{i}"), repo, vec!["/home".into()]), machine).await;
        let host = format!("pc-{i}");
        sqlx::query("update machines set hostname = $2 where id = $1")
            .bind(machine)
            .bind(&host)
            .execute(&pool)
            .await
            .unwrap();
        hosts.push(host);
    }
    initialise_repositories(&st).await;
    let admin = crate::tests::user_token(&st, "a", crate::auth::Role::Admin, None).await;
    let get = |q: &'static str| {
        let (st, admin) = (st.clone(), admin.clone());
        async move {
            crate::tests::call_json(&st, "GET", &format!("/api/v1/restic-repositories{q}"), &admin, "").await
        }
    };
    let names = |b: &serde_json::Value| -> Vec<String> {
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["hostname"].as_str().map(str::to_string))
            .collect()
    };
    let (_, all) = get("").await;
    let mut every = names(&all);
    every.sort();
    assert_eq!(every, hosts, "each per-machine repository names its machine: {all}");
    let (_, first) = get("?limit=2").await;
    let (_, rest) = get("?limit=2&offset=2").await;
    assert_eq!((names(&first).len(), names(&rest).len()), (2, 1));
    let mut paged = [names(&first), names(&rest)].concat();
    paged.sort();
    assert_eq!(paged, hosts, "pages cover every repository once");
    for q in ["?limit=0", "?limit=1001", "?offset=-1"] {
        assert_eq!(get(q).await.0, StatusCode::UNPROCESSABLE_ENTITY, "{q}");
    }
}
