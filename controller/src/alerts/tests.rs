//! Alerts: which change raises which alert (table-driven), and the outbox against a real
//! PostgreSQL and a real HTTP receiver on loopback: signed, retried after failures, delivered
//! once by two concurrent senders, and a failed job's result raises one.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use chrono::{Duration, Utc};
use cofre_api::compliance::{Finding, MachineCompliance, Rule, Status};
use sqlx::PgPool;
use uuid::Uuid;

use super::channels::{Channel, signature};
use super::{Previous, decide};
use crate::config::{AlertSettings, ChannelKind, ChannelSettings};
use crate::tests::state;

fn finding(rule: Rule, status: Status) -> Finding {
    Finding {
        rule,
        status,
        policy_id: None,
        policy_name: None,
        reason: format!("{} failed", rule.as_str()),
        since: None,
        why: None,
    }
}

fn machine(status: Status, findings: Vec<Finding>) -> MachineCompliance {
    MachineCompliance {
        machine_id: Uuid::nil(),
        hostname: "pc-01".into(),
        group_id: None,
        group_name: None,
        status,
        status_since: None,
        last_seen_at: None,
        last_good_backup_at: None,
        findings,
    }
}

fn prev(status: Option<Status>, findings: &[&Finding], alerted_ago: Option<i64>) -> Previous {
    Previous {
        status,
        keys: findings.iter().map(|f| crate::compliance::rules::key(f)).collect(),
        alerted_at: alerted_ago.map(|h| Utc::now() - Duration::hours(h)),
    }
}

#[test]
fn one_alert_per_change_and_a_reminder() {
    use Status::*;
    let silent = finding(Rule::Heartbeat, NonCompliant);
    let overdue = finding(Rule::BackupAge, NonCompliant);
    let late = finding(Rule::BackupAge, AtRisk);
    let missed = finding(Rule::RunOnTime, AtRisk);
    let day = Some(Duration::hours(24));
    let now = Utc::now();
    let kind = |p: &Previous, m: &MachineCompliance| decide(p, m, now, day).map(|d| (d.0, d.1));
    let cases: Vec<(&str, Previous, MachineCompliance, Option<&str>)> = vec![
        ("first evaluation, compliant", prev(None, &[], None), machine(Compliant, vec![]), None),
        (
            "goes silent",
            prev(Some(Compliant), &[], None),
            machine(NonCompliant, vec![silent.clone()]),
            Some("machine.silent"),
        ),
        (
            "two problems at once",
            prev(Some(Compliant), &[], None),
            machine(NonCompliant, vec![silent.clone(), overdue.clone()]),
            Some("machine.non_compliant"),
        ),
        (
            "already out, a new problem",
            prev(Some(NonCompliant), &[&silent], Some(1)),
            machine(NonCompliant, vec![silent.clone(), overdue]),
            Some("backup.overdue"),
        ),
        (
            "already out, nothing new, alerted an hour ago",
            prev(Some(NonCompliant), &[&silent], Some(1)),
            machine(NonCompliant, vec![silent.clone()]),
            None,
        ),
        (
            "still out a day later: reminder",
            prev(Some(NonCompliant), &[&silent], Some(25)),
            machine(NonCompliant, vec![silent.clone()]),
            Some("machine.reminder"),
        ),
        (
            "recovers",
            prev(Some(NonCompliant), &[&silent], Some(1)),
            machine(Compliant, vec![]),
            Some("machine.recovered"),
        ),
        ("at risk only: no alert", prev(Some(Compliant), &[], None), machine(AtRisk, vec![late]), None),
        (
            "a missed run",
            prev(Some(Compliant), &[], None),
            machine(AtRisk, vec![missed.clone()]),
            Some("run.missed"),
        ),
        (
            "the same missed run again",
            prev(Some(AtRisk), &[&missed], Some(0)),
            machine(AtRisk, vec![missed]),
            None,
        ),
    ];
    for (what, p, m, expected) in cases {
        assert_eq!(kind(&p, &m).map(|k| k.0), expected.map(str::to_string), "{what}");
    }
    let no_reminders = decide(
        &prev(Some(NonCompliant), &[&silent], Some(100)),
        &machine(NonCompliant, vec![silent]),
        now,
        None,
    );
    assert!(no_reminders.is_none());
}

/// An HTTP receiver on loopback answering `status` and keeping what it got.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn receiver() -> Receiver {
    let status = Arc::new(AtomicU16::new(200));
    let got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let (s, g) = (status.clone(), got.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                let code = s.load(Ordering::SeqCst);
                if code == 200 {
                    g.lock().unwrap().push((headers, body));
                }
                axum::http::StatusCode::from_u16(code).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, status, got }
}

fn webhook(url: &str) -> ChannelSettings {
    ChannelSettings {
        name: "ops".into(),
        kind: ChannelKind::Webhook,
        groups: Vec::new(),
        alert_kinds: Vec::new(),
        url: Some(url.into()),
        secret: Some("s3cret".to_string().into()),
        ca_file: None,
        smtp_host: None,
        smtp_port: None,
        smtp_security: None,
        smtp_username: None,
        smtp_password: None,
        from: None,
        to: Vec::new(),
    }
}

/// Backoffs far longer than any test: a delivery is due again only when a test says so
/// (`make_due`), never because a slow machine let a second pass.
fn settings() -> AlertSettings {
    AlertSettings { retry_initial_seconds: 3600, retry_max_seconds: 7200, ..Default::default() }
}

/// Every pending delivery's backoff is over.
async fn make_due(pool: &PgPool) {
    sqlx::query("update alert_deliveries set next_attempt_at = now() where state = 'pending'")
        .execute(pool)
        .await
        .unwrap();
}

async fn raise_one(pool: &PgPool, kind: &str) -> Uuid {
    let m = machine(Status::NonCompliant, vec![finding(Rule::Heartbeat, Status::NonCompliant)]);
    let a = super::about_machine(
        &m,
        (kind.into(), cofre_api::alerts::Severity::Critical, "pc-01 is silent".into()),
        Utc::now(),
    );
    let a = cofre_api::alerts::Alert { machine: None, ..a };
    let mut tx = pool.begin().await.unwrap();
    super::raise(&mut tx, &a).await.unwrap();
    tx.commit().await.unwrap();
    a.id
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_webhook_gets_each_alert_once_signed_even_after_failures(pool: PgPool) {
    let _st = state(pool.clone()).await;
    let r = receiver().await;
    let s = settings();
    let ch = vec![Channel::build(&webhook(&r.url), std::time::Duration::from_secs(5)).unwrap()];
    // The receiver is failing when the alert is raised.
    r.status.store(503, Ordering::SeqCst);
    let id = raise_one(&pool, "machine.silent").await;
    assert_eq!(super::route_new(&pool, &ch, "a").await.unwrap(), 1);
    assert_eq!(super::route_new(&pool, &ch, "b").await.unwrap(), 0, "routed once");
    assert_eq!(super::deliver_due(&pool, &ch, &s, "a").await.unwrap(), 1);
    let rec = super::list(&pool, None, None, 10).await.unwrap();
    let d = &rec[0].deliveries[0];
    assert_eq!((d.state.as_str(), d.attempts), ("pending", 1), "{d:?}");
    assert!(d.last_error.as_deref().unwrap_or_default().contains("503"), "{d:?}");
    // Not due again before its backoff.
    assert_eq!(super::deliver_due(&pool, &ch, &s, "a").await.unwrap(), 0);

    // It comes back: two senders at once deliver it exactly once.
    r.status.store(200, Ordering::SeqCst);
    make_due(&pool).await;
    let (x, y) =
        tokio::join!(super::deliver_due(&pool, &ch, &s, "a"), super::deliver_due(&pool, &ch, &s, "b"));
    assert_eq!(x.unwrap() + y.unwrap(), 1);
    let got = r.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert_eq!(headers["x-cofre-alert-id"], id.to_string());
    assert_eq!(headers["x-cofre-signature"], format!("sha256={}", signature(b"s3cret", body)));
    let alert: cofre_api::alerts::Alert = serde_json::from_slice(body).unwrap();
    assert_eq!((alert.id, alert.kind.as_str()), (id, "machine.silent"));
    let rec = super::list(&pool, None, None, 10).await.unwrap();
    assert_eq!((rec[0].deliveries[0].state.as_str(), rec[0].deliveries[0].attempts), ("sent", 2));
    // Raised alerts are audited.
    let audited: i64 = sqlx::query_scalar("select count(*) from audit_events where action = 'alert.raise'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn channels_take_only_their_groups_and_kinds(pool: PgPool) {
    let _st = state(pool.clone()).await;
    let r = receiver().await;
    let mut only_jobs = webhook(&r.url);
    only_jobs.alert_kinds = vec!["job.failed".into()];
    let mut only_obras = webhook(&r.url);
    only_obras.name = "obras".into();
    only_obras.groups = vec!["obras".into()];
    let t = std::time::Duration::from_secs(5);
    let ch = vec![Channel::build(&only_jobs, t).unwrap(), Channel::build(&only_obras, t).unwrap()];
    // Each channel takes what it names, and only that.
    let m = machine(Status::NonCompliant, vec![finding(Rule::Heartbeat, Status::NonCompliant)]);
    let silent = super::about_machine(
        &m,
        ("machine.silent".into(), cofre_api::alerts::Severity::Critical, "s".into()),
        Utc::now(),
    );
    let in_obras = cofre_api::alerts::Alert {
        group: Some(cofre_api::alerts::AlertGroup { id: Uuid::nil(), name: "obras".into() }),
        ..silent.clone()
    };
    let failed_job = cofre_api::alerts::Alert { kind: "job.failed".into(), ..silent.clone() };
    assert_eq!((ch[0].takes(&failed_job), ch[1].takes(&failed_job)), (true, false));
    assert_eq!((ch[0].takes(&in_obras), ch[1].takes(&in_obras)), (false, true));
    assert_eq!((ch[0].takes(&silent), ch[1].takes(&silent)), (false, false));
    // Routed for real: an alert neither takes gets no delivery; one that a channel takes, one.
    raise_one(&pool, "machine.silent").await;
    super::route_new(&pool, &ch, "a").await.unwrap();
    let rec = super::list(&pool, None, None, 10).await.unwrap();
    assert!(rec[0].deliveries.is_empty(), "neither channel takes it: {:?}", rec[0].deliveries);
    let job = raise_one(&pool, "job.failed").await;
    super::route_new(&pool, &ch, "a").await.unwrap();
    let rec = super::list(&pool, None, None, 10).await.unwrap();
    let routed = rec.iter().find(|r| r.alert.id == job).unwrap();
    assert_eq!(routed.deliveries.iter().map(|d| d.channel.as_str()).collect::<Vec<_>>(), ["ops"]);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_failed_backup_result_raises_one_alert(pool: PgPool) {
    let st = state(pool.clone()).await;
    let (_, m) = crate::tests::machine_in_new_group(&st, "obras").await;
    let job = Uuid::now_v7();
    let mut ev = crate::tests::finished_event(job, Uuid::now_v7(), "");
    if let Some(cofre_proto::agent::v1::job_event::Kind::Finished(f)) = &mut ev.kind {
        f.outcome = cofre_proto::agent::v1::JobOutcome::Failed as i32;
        f.stats = None;
        f.error = Some(cofre_proto::agent::v1::JobError {
            message: "repository unreachable".into(),
            retry_class: cofre_proto::agent::v1::RetryClass::Permanent as i32,
        });
    }
    crate::jobs::ingest(&pool, m, &ev).await.unwrap();
    crate::jobs::ingest(&pool, m, &ev).await.unwrap(); // redelivered: no second alert
    let rec = super::list(&pool, None, None, 10).await.unwrap();
    assert_eq!(rec.len(), 1, "{rec:#?}");
    let a = &rec[0].alert;
    assert_eq!((a.kind.as_str(), a.severity), ("job.failed", cofre_api::alerts::Severity::Critical));
    assert_eq!(a.reasons, ["repository unreachable"]);
    assert_eq!(a.group.as_ref().map(|g| g.name.as_str()), Some("obras"));
    assert_eq!(a.job.as_ref().map(|j| j.id), Some(job));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_repository_that_triples_in_a_day_raises_one_alert(pool: PgPool) {
    let st = state(pool.clone()).await;
    let (_, m) = crate::tests::machine_in_new_group(&st, "obras").await;
    let repo = crate::tests::test_repository(&st).await;
    crate::tests::assigned_policy(
        &st,
        cofre_policy::spec::PolicySpec::new("p", repo, vec!["/srv".into()]),
        m,
    )
    .await;
    crate::tests::initialise_repositories(&st).await;
    let (rr, url): (Uuid, String) =
        sqlx::query_as("select id, url from restic_repositories where machine_id = $1")
            .bind(m)
            .fetch_one(&pool)
            .await
            .unwrap();
    let store = Uuid::now_v7();
    sqlx::query(
        "insert into stores (id, name, url, status) values ($1, 's1', 'https://rest.example/', 'active')",
    )
    .bind(store)
    .execute(&pool)
    .await
    .unwrap();
    let path = url.strip_prefix("https://rest.example/").unwrap().trim_end_matches('/').to_string();
    let gib: i64 = 1 << 30;
    sqlx::query(
        "insert into store_inventory (store_id, path, size_bytes, data_objects, index_objects, snapshot_objects,
             key_objects, lock_objects, has_config, snapshot_ids) values ($1, $2, $3, 1, 1, 0, 1, 0, true, '{}')",
    )
    .bind(store)
    .bind(&path)
    .bind(3 * gib)
    .execute(&pool)
    .await
    .unwrap();
    let today = Utc::now().date_naive();
    sqlx::query("insert into repository_sizes values ($1, $2, $3)")
        .bind(rr)
        .bind(today - Duration::days(1))
        .bind(gib)
        .execute(&pool)
        .await
        .unwrap();
    let sizes = |day: chrono::NaiveDate| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let n = super::record_sizes(&mut tx, day, 50, 1 << 30).await.unwrap();
            tx.commit().await.unwrap();
            n
        }
    };
    assert_eq!(sizes(today).await, 1);
    assert_eq!(sizes(today).await, 0, "once a day");
    let rec = super::list(&pool, None, None, 10).await.unwrap();
    let a = &rec[0].alert;
    assert_eq!(a.kind, "repository.growth");
    assert_eq!(a.machine.as_ref().map(|x| x.id), Some(m));
    assert!(a.summary.contains("1.00 GiB to 3.00 GiB"), "{}", a.summary);
    // The next day it grew 0.5 GiB (17%): no alert.
    sqlx::query("update store_inventory set size_bytes = $1")
        .bind(3 * gib + gib / 2)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(sizes(today + Duration::days(1)).await, 0);
}
