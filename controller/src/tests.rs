//! Database tests against a real PostgreSQL (`DATABASE_URL`, set by tests/run.sh): each test
//! gets a fresh database with the migrations applied.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cofre_proto::agent::v1 as pb;
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use crate::audit::Actor;
use crate::auth::{JwtKeys, Role};
use crate::config::Settings;
use crate::enrollment::{self, Inventory, NewToken};
use crate::error::Error;
use crate::seal::MasterKey;
use crate::state::AppState;

pub(crate) async fn state(pool: PgPool) -> AppState {
    let master = MasterKey::generate();
    crate::keys::ensure(&pool, &master).await.unwrap();
    crate::keys::use_test_audit_key(&pool, &master).await;
    let keys = crate::keys::load(&pool, &master).await.unwrap();
    let audit = crate::audit::install(&keys.audit).unwrap();
    let jwt = JwtKeys::new(&keys.jwt.current, keys.jwt.previous.as_ref().map(|p| p.as_slice()), 600);
    let events = crate::events::Events::local();
    AppState {
        pool,
        master,
        ca: Arc::new(keys.ca),
        jwt: Arc::new(jwt),
        settings: Arc::new(Settings::default()),
        events,
        audit,
        seen_tokens: Arc::default(),
        compliance: Arc::default(),
    }
}

/// A real user (every request re-reads its user) and an access token for it.
pub(crate) async fn user_token(st: &AppState, name: &str, role: Role, group: Option<Uuid>) -> String {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into users (id, username, password_hash, role, group_id) values ($1, $2, 'x', $3, $4)",
    )
    .bind(id)
    .bind(name)
    .bind(role.as_str())
    .bind(group)
    .execute(&st.pool)
    .await
    .unwrap();
    st.jwt.issue(id, name, role, group, None).unwrap()
}

/// A repository definition on a REST server nobody dials (tests that never reach it).
pub(crate) async fn test_repository(st: &AppState) -> Uuid {
    crate::repositories::create(
        &st.pool,
        &st.master,
        &Actor::System,
        serde_json::from_value::<cofre_api::repositories::NewRepository>(
            serde_json::json!({"name": "r", "url": "https://rest.example"}),
        )
        .unwrap()
        .into(),
    )
    .await
    .unwrap()
    .id
}

/// Creates `spec` and assigns it to `machine`; returns the policy's id.
pub(crate) async fn assigned_policy(
    st: &AppState,
    spec: cofre_policy::spec::PolicySpec,
    machine: Uuid,
) -> Uuid {
    let policy =
        crate::policies::create(&st.pool, &Actor::System, spec, crate::policies::HookRights::Allowed)
            .await
            .unwrap();
    crate::policies::assign(
        &st.pool,
        &Actor::System,
        policy.id,
        crate::policies::NewAssignment { machine_id: Some(machine), group_id: None },
    )
    .await
    .unwrap();
    policy.id
}

/// Creates the restic repository rows active machines' policies need and marks them
/// initialised (no REST server involved).
pub(crate) async fn initialise_repositories(st: &AppState) {
    crate::repositories::create_missing_rows(&st.pool, &st.master).await.unwrap();
    sqlx::query(
        "update restic_repositories set restic_id = $1, initialised_at = now() where restic_id is null",
    )
    .bind("ab".repeat(32))
    .execute(&st.pool)
    .await
    .unwrap();
}

pub(crate) fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().der().to_vec()
}

pub(crate) fn inv() -> Inventory {
    Inventory {
        hostname: "pc-01".into(),
        os: "Debian".into(),
        arch: "x86_64".into(),
        agent_version: "0.1.0".into(),
    }
}

/// An enrollment token with the given use count, lifetime and group (defaults otherwise).
pub(crate) async fn new_token(
    st: &AppState,
    uses: u32,
    ttl: Option<u64>,
    group: Option<Uuid>,
) -> enrollment::CreatedToken {
    enrollment::create_token(
        &st.pool,
        &Actor::System,
        &st.ca,
        &st.settings.enrollment,
        NewToken {
            description: String::new(),
            group_id: group,
            uses: Some(uses),
            ttl_seconds: ttl,
            requires_approval: false,
        },
    )
    .await
    .unwrap()
}

pub(crate) async fn token(st: &AppState, uses: u32, ttl: Option<u64>) -> String {
    new_token(st, uses, ttl, None).await.token
}

/// A new group with one enrolled machine in it: (group, machine).
pub(crate) async fn machine_in_new_group(st: &AppState, name: &str) -> (Uuid, Uuid) {
    let g = crate::groups::create(&st.pool, &Actor::System, crate::groups::NewGroup { name: name.into() })
        .await
        .unwrap();
    let t = new_token(st, 1, None, Some(g.id)).await;
    let machine =
        enrollment::enroll(&st.pool, &st.ca, LIFE, &t.token, &csr(), inv()).await.unwrap().machine_id;
    (g.id, machine)
}

pub(crate) const LIFE: std::time::Duration = std::time::Duration::from_secs(3600);

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn tokens_are_single_use_and_refusals_are_clear(pool: PgPool) {
    let st = state(pool).await;
    let t = token(&st, 1, None).await;
    // A bad CSR is refused without consuming the token.
    let bad = enrollment::enroll(&st.pool, &st.ca, LIFE, &t, b"not a csr", inv()).await;
    assert!(matches!(bad, Err(Error::Invalid { .. })), "{bad:?}");
    let ok = enrollment::enroll(&st.pool, &st.ca, LIFE, &t, &csr(), inv()).await.unwrap();
    assert!(!ok.pending_approval);
    let again = enrollment::enroll(&st.pool, &st.ca, LIFE, &t, &csr(), inv()).await.unwrap_err();
    assert!(again.to_string().contains("used up"), "{again}");

    // Wrong secret, same id: not recognised.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[2] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let forged =
        enrollment::enroll(&st.pool, &st.ca, LIFE, &parts.join("."), &csr(), inv()).await.unwrap_err();
    assert!(forged.to_string().contains("not recognised"), "{forged}");

    // Another controller's fingerprint.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[3] = "00".repeat(32);
    let other =
        enrollment::enroll(&st.pool, &st.ca, LIFE, &parts.join("."), &csr(), inv()).await.unwrap_err();
    assert!(other.to_string().contains("another controller"), "{other}");

    // Expired.
    let t2 = token(&st, 1, Some(60)).await;
    sqlx::query("update enrollment_tokens set expires_at = now() - interval '1 second'")
        .execute(&st.pool)
        .await
        .unwrap();
    let expired = enrollment::enroll(&st.pool, &st.ca, LIFE, &t2, &csr(), inv()).await.unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn concurrent_enrollments_never_exceed_the_use_count(pool: PgPool) {
    let st = state(pool).await;
    let t = token(&st, 2, None).await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (st, t) = (st.clone(), t.clone());
        handles.push(tokio::spawn(async move {
            enrollment::enroll(&st.pool, &st.ca, LIFE, &t, &csr(), inv()).await
        }));
    }
    let mut ok = 0;
    for h in handles {
        if h.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 2);
    let machines: i64 =
        sqlx::query_scalar("select count(*) from machines").fetch_one(&st.pool).await.unwrap();
    assert_eq!(machines, 2);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn revoked_machines_lose_their_session(pool: PgPool) {
    let st = state(pool).await;
    let t = token(&st, 1, None).await;
    let e = enrollment::enroll(&st.pool, &st.ca, LIFE, &t, &csr(), inv()).await.unwrap();
    let der = crate::pki::pem_to_der(&e.certificate_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial = crate::pki::serial_hex(cert.raw_serial());
    let standing = crate::machines::session_standing(&st.pool, e.machine_id, &serial).await.unwrap();
    assert_eq!(standing, crate::machines::SessionStanding::Active);
    // A certificate presented for another machine id is refused.
    assert!(crate::machines::session_standing(&st.pool, Uuid::now_v7(), &serial).await.is_err());
    crate::machines::revoke(&st.pool, &Actor::System, e.machine_id).await.unwrap();
    let err = crate::machines::session_standing(&st.pool, e.machine_id, &serial).await.unwrap_err();
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
}

pub(crate) fn finished_event(job: Uuid, event: Uuid, repo: &str) -> pb::JobEvent {
    pb::JobEvent {
        event_id: event.to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
            policy_id: String::new(),
            trigger: pb::TriggerKind::Schedule as i32,
            outcome: pb::JobOutcome::Succeeded as i32,
            repository_id: repo.into(),
            stats: Some(pb::BackupStats {
                snapshot_id: "ab".repeat(32),
                hostname: "pc-01".into(),
                ..Default::default()
            }),
            finished_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
            ..Default::default()
        })),
    }
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_result_delivered_twice_is_stored_once(pool: PgPool) {
    let st = state(pool).await;
    let t = token(&st, 1, None).await;
    let e = enrollment::enroll(&st.pool, &st.ca, LIFE, &t, &csr(), inv()).await.unwrap();
    // A shared repository the machine may report snapshots for.
    let repo = crate::repositories::create(
        &st.pool,
        &st.master,
        &Actor::System,
        serde_json::from_value::<cofre_api::repositories::NewRepository>(
            serde_json::json!({"name": "r", "url": "https://rest.example", "per_machine": false}),
        )
        .unwrap()
        .into(),
    )
    .await
    .unwrap();
    let rr: Uuid = sqlx::query_scalar("select id from restic_repositories where repository_id = $1")
        .bind(repo.id)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    // The machine writes to it through an assigned policy.
    assigned_policy(
        &st,
        cofre_policy::spec::PolicySpec::new("p", repo.id, vec!["/srv".into()]),
        e.machine_id,
    )
    .await;
    let job = Uuid::now_v7();
    let ev = finished_event(job, Uuid::now_v7(), &rr.to_string());
    crate::jobs::ingest(&st.pool, e.machine_id, &ev).await.unwrap();
    crate::jobs::ingest(&st.pool, e.machine_id, &ev).await.unwrap();
    let results: i64 =
        sqlx::query_scalar("select count(*) from job_results").fetch_one(&st.pool).await.unwrap();
    let snaps: i64 = sqlx::query_scalar("select count(*) from snapshots").fetch_one(&st.pool).await.unwrap();
    assert_eq!((results, snaps), (1, 1));
    assert_eq!(crate::jobs::get(&st.pool, job).await.unwrap().state, "succeeded");
    // Another machine cannot report about this job.
    let t2 = token(&st, 1, None).await;
    let other = enrollment::enroll(&st.pool, &st.ca, LIFE, &t2, &csr(), inv()).await.unwrap();
    let foreign = finished_event(job, Uuid::now_v7(), &rr.to_string());
    assert!(matches!(
        crate::jobs::ingest(&st.pool, other.machine_id, &foreign).await,
        Err(Error::Forbidden(_))
    ));
}

/// An agent killed after spooling a result and before removing its job's running marker says
/// Hello with the job as interrupted, then delivers the real result, then the interrupted one
/// its recovery spooled (#13, tests/e2e/kill_points.rs): the real result decides the job's
/// state, and the late "interrupted" result is a no-op.
#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_result_after_a_hello_that_called_its_job_interrupted_decides_the_state(pool: PgPool) {
    let st = state(pool).await;
    let (_, machine) = machine_in_new_group(&st, "g").await;
    let repo = crate::repositories::create(
        &st.pool,
        &st.master,
        &Actor::System,
        serde_json::from_value::<cofre_api::repositories::NewRepository>(
            serde_json::json!({"name": "r", "url": "https://rest.example", "per_machine": false}),
        )
        .unwrap()
        .into(),
    )
    .await
    .unwrap();
    assigned_policy(&st, cofre_policy::spec::PolicySpec::new("p", repo.id, vec!["/srv".into()]), machine)
        .await;
    let rr: Uuid = sqlx::query_scalar("select id from restic_repositories where repository_id = $1")
        .bind(repo.id)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    let job = Uuid::now_v7();
    let started = pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: job.to_string(),
        kind: Some(pb::job_event::Kind::Started(pb::JobStarted {
            policy_id: String::new(),
            trigger: pb::TriggerKind::RunNow as i32,
            started_at: Some(prost_types::Timestamp { seconds: 1_799_999_000, nanos: 0 }),
        })),
    };
    crate::jobs::ingest(&st.pool, machine, &started).await.unwrap();
    crate::jobs::mark_interrupted(&st.pool, machine, &[job]).await.unwrap();
    assert_eq!(crate::jobs::get(&st.pool, job).await.unwrap().state, "interrupted");

    crate::jobs::ingest(&st.pool, machine, &finished_event(job, Uuid::now_v7(), &rr.to_string()))
        .await
        .unwrap();
    let mut interrupted = finished_event(job, Uuid::now_v7(), &rr.to_string());
    if let Some(pb::job_event::Kind::Finished(f)) = interrupted.kind.as_mut() {
        f.outcome = pb::JobOutcome::Interrupted as i32;
        f.stats = None;
    }
    crate::jobs::ingest(&st.pool, machine, &interrupted).await.unwrap();

    let j = crate::jobs::get(&st.pool, job).await.unwrap();
    assert_eq!(j.state, "succeeded", "the delivered result decides: {j:?}");
    let results: i64 = sqlx::query_scalar("select count(*) from job_results where job_id = $1")
        .bind(job)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    let snaps: i64 = sqlx::query_scalar("select count(*) from snapshots where job_id = $1")
        .bind(job)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!((results, snaps), (1, 1));

    // A job interrupted by its own result stays interrupted when a late result arrives.
    let cut = Uuid::now_v7();
    let mut first = finished_event(cut, Uuid::now_v7(), &rr.to_string());
    if let Some(pb::job_event::Kind::Finished(f)) = first.kind.as_mut() {
        f.outcome = pb::JobOutcome::Interrupted as i32;
        f.stats = None;
    }
    crate::jobs::ingest(&st.pool, machine, &first).await.unwrap();
    crate::jobs::ingest(&st.pool, machine, &finished_event(cut, Uuid::now_v7(), &rr.to_string()))
        .await
        .unwrap();
    assert_eq!(crate::jobs::get(&st.pool, cut).await.unwrap().state, "interrupted");
}

/// The last good backup per machine and policy (what compliance reads) follows every result the
/// application role stores: good outcomes move it forward, failures and late results of older
/// jobs do not move it back, and it always equals the maximum over all results.
#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn the_last_good_backup_follows_every_stored_result(pool: PgPool) {
    let st = state(pool).await;
    let (_, machine) = machine_in_new_group(&st, "g").await;
    let repo = test_repository(&st).await;
    let policy =
        assigned_policy(&st, cofre_policy::spec::PolicySpec::new("p", repo, vec!["/srv".into()]), machine)
            .await;
    let app = app_pool(&st.pool).await;
    let last = || async {
        let kept: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "select received_at from last_good_backups where machine_id = $1 and policy_id = $2",
        )
        .bind(machine)
        .bind(policy)
        .fetch_optional(&st.pool)
        .await
        .unwrap();
        let defined: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "select max(r.received_at) from jobs j join job_results r on r.job_id = j.id
             where j.machine_id = $1 and j.policy_id = $2 and j.kind = 'backup' and r.outcome in ('succeeded', 'warning')",
        )
        .bind(machine)
        .bind(policy)
        .fetch_one(&st.pool)
        .await
        .unwrap();
        assert_eq!(kept, defined, "the kept value is the definition's");
        kept.map(|t| t.to_rfc3339())
    };
    for (outcome, received, expected) in [
        ("failed", "2026-01-01T00:00:00Z", None),
        ("succeeded", "2026-01-02T00:00:00Z", Some("2026-01-02T00:00:00+00:00")),
        ("failed", "2026-02-01T00:00:00Z", Some("2026-01-02T00:00:00+00:00")),
        ("warning", "2026-03-01T00:00:00Z", Some("2026-03-01T00:00:00+00:00")),
        // A late result of an older job does not move it back.
        ("succeeded", "2026-02-15T00:00:00Z", Some("2026-03-01T00:00:00+00:00")),
    ] {
        let job = Uuid::now_v7();
        sqlx::query(
            "insert into jobs (id, machine_id, policy_id, kind, trigger, state) values ($1, $2, $3, 'backup', 'schedule', $4)",
        )
        .bind(job)
        .bind(machine)
        .bind(policy)
        .bind(outcome)
        .execute(&app)
        .await
        .unwrap();
        sqlx::query(
            "insert into job_results (job_id, event_id, outcome, finished_at, received_at)
             values ($1, $2, $3, $4::timestamptz, $4::timestamptz)",
        )
        .bind(job)
        .bind(Uuid::now_v7())
        .bind(outcome)
        .bind(received)
        .execute(&app)
        .await
        .unwrap();
        assert_eq!(last().await.as_deref(), expected, "after a {outcome} result received {received}");
    }
}

/// Connects to this test's database as a fresh login role in `cofre_app`, as `serve` does.
pub(crate) async fn app_pool(pool: &PgPool) -> PgPool {
    let db: String = sqlx::query_scalar("select current_database()").fetch_one(pool).await.unwrap();
    let role = format!("app_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create role {role} login password 'pw' in role cofre_app")))
        .execute(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let mut url = url::Url::parse(&base).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("pw")).unwrap();
    url.set_path(&db);
    PgPool::connect(url.as_str()).await.unwrap()
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn the_app_role_cannot_rewrite_history(pool: PgPool) {
    let st = state(pool.clone()).await;
    token(&st, 1, None).await; // writes an audit event
    let app = app_pool(&pool).await;
    // It may append...
    let app_state = AppState { pool: app.clone(), ..st.clone() };
    token(&app_state, 1, None).await;
    // ...but not rewrite or erase.
    for sql in [
        "update audit_events set actor = 'x'",
        "delete from audit_events",
        "truncate audit_events",
        "update job_results set outcome = 'failed'",
        "delete from job_results",
        "delete from server_keys",
        "update audit_checkpoints set seq = 1",
        "delete from audit_checkpoints",
        "truncate audit_checkpoints",
        "update audit_chain_rules set keyed_from_seq = 1000",
        "insert into audit_chain_rules (keyed_from_seq) values (5)",
        "delete from audit_chain_rules",
        "update compliance_changes set status = 'compliant'",
        "delete from compliance_changes",
        "update compliance_daily set worst_status = 'compliant'",
        "delete from compliance_daily",
        "update alerts set kind = 'x'",
        "delete from alerts",
        "delete from alert_routing",
        "delete from alert_deliveries",
    ] {
        let err = sqlx::query(sql).execute(&app).await.unwrap_err();
        let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
    assert!(crate::db::connected_as_owner(&pool).await.unwrap());
    assert!(!crate::db::connected_as_owner(&app).await.unwrap());
}

async fn call(st: &AppState, method: &axum::http::Method, path: &str, token: Option<&str>) -> StatusCode {
    let body =
        if *method == axum::http::Method::GET || *method == axum::http::Method::DELETE { "" } else { "{}" };
    request(st, method.as_str(), path, token, &[], body).await.0
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn every_route_enforces_its_access_level(pool: PgPool) {
    let st = state(pool).await;
    let foreign = JwtKeys::new(b"some-other-controller-secret-xyz", None, 600)
        .issue(Uuid::now_v7(), "a", Role::Admin, None, None)
        .unwrap();
    let some_group =
        crate::groups::create(&st.pool, &Actor::System, crate::groups::NewGroup { name: "somegroup".into() })
            .await
            .unwrap()
            .id;
    // Tokens that must never pass, whatever the route: expired, tampered, `alg: none`, a
    // disabled user's, a revoked API token; and a read-only API token of an admin.
    let (expired, tampered, alg_none, disabled, revoked, read_only) = hostile_tokens(&st).await;
    let routes = crate::api::routes();
    assert!(routes.len() >= 20, "route table looks truncated");
    // Fresh users and tokens per route: a route may end its caller's session (logout).
    for (i, r) in routes.into_iter().enumerate() {
        let admin = user_token(&st, &format!("a{i}"), Role::Admin, None).await;
        let auditor = user_token(&st, &format!("u{i}"), Role::Auditor, None).await;
        let operator = user_token(&st, &format!("o{i}"), Role::Operator, None).await;
        let grouped = user_token(&st, &format!("g{i}"), Role::Admin, Some(some_group)).await;
        let grouped_operator = user_token(&st, &format!("go{i}"), Role::Operator, Some(some_group)).await;
        let path = r
            .path
            .replace("{id}", &Uuid::now_v7().to_string())
            .replace("{assignment}", &Uuid::now_v7().to_string());
        let denied = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
        let anon = call(&st, &r.method, &path, None).await;
        let forged = call(&st, &r.method, &path, Some(&foreign)).await;
        let as_admin = call(&st, &r.method, &path, Some(&admin)).await;
        let as_auditor = call(&st, &r.method, &path, Some(&auditor)).await;
        let as_operator = call(&st, &r.method, &path, Some(&operator)).await;
        let what = format!("{} {}", r.method, r.path);
        if r.access == crate::api::Access::Public {
            assert_ne!(anon, StatusCode::FORBIDDEN, "{what}");
            continue;
        }
        assert_eq!(anon, StatusCode::UNAUTHORIZED, "{what} without a token");
        assert_eq!(forged, StatusCode::UNAUTHORIZED, "{what} with another controller's token");
        assert!(!denied.contains(&as_admin), "{what} as admin: {as_admin}");
        let auditor_allowed = r.access == crate::api::Access::Read;
        assert_eq!(!denied.contains(&as_auditor), auditor_allowed, "{what} as auditor: {as_auditor}");
        let operator_allowed = r.access != crate::api::Access::Admin;
        assert_eq!(!denied.contains(&as_operator), operator_allowed, "{what} as operator: {as_operator}");
        // An admin limited to one group: fleet-only records and fleet-wide changes are refused.
        let as_grouped = call(&st, &r.method, &path, Some(&grouped)).await;
        let grouped_allowed = match r.scope {
            crate::api::Scope::Group => true,
            crate::api::Scope::Fleet => r.access == crate::api::Access::Read,
            crate::api::Scope::FleetOnly => false,
        };
        assert_eq!(!denied.contains(&as_grouped), grouped_allowed, "{what} as a group's admin: {as_grouped}");
        // An operator of another group: both limits at once.
        let as_grouped_operator = call(&st, &r.method, &path, Some(&grouped_operator)).await;
        assert_eq!(
            !denied.contains(&as_grouped_operator),
            grouped_allowed && operator_allowed,
            "{what} as another group's operator: {as_grouped_operator}"
        );
        for (who, token) in [
            ("an expired JWT", &expired),
            ("a tampered JWT", &tampered),
            ("an alg:none JWT", &alg_none),
            ("a disabled user's JWT", &disabled),
            ("a revoked API token", &revoked),
        ] {
            assert_eq!(
                call(&st, &r.method, &path, Some(token)).await,
                StatusCode::UNAUTHORIZED,
                "{what} with {who}"
            );
        }
        let as_read_only = call(&st, &r.method, &path, Some(&read_only)).await;
        let reads = r.method == axum::http::Method::GET;
        assert_eq!(
            !denied.contains(&as_read_only),
            reads,
            "{what} with an admin's read-only API token: {as_read_only}"
        );
    }
}

/// (expired JWT, tampered JWT, `alg: none` JWT, a disabled user's JWT, a revoked API token, an
/// admin's read-only API token), all for real users of `st`.
async fn hostile_tokens(st: &AppState) -> (String, String, String, String, String, String) {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let owner = user_token(st, "hostile-owner", Role::Admin, None).await;
    let claims = st.jwt.verify(&owner).unwrap();
    let (header, _) = owner.split_once('.').unwrap();
    // Expired: the same key, an `exp` long past (beyond the leeway).
    let keys = st.jwt.clone();
    let mut old = serde_json::to_value(&claims).unwrap();
    old["exp"] = serde_json::json!(chrono::Utc::now().timestamp() - 3600);
    old["iat"] = serde_json::json!(chrono::Utc::now().timestamp() - 7200);
    let expired = keys.sign_raw(header, &b64(&old));
    // Forged right: the same claims signed the same way verify; only the expiry fails.
    assert!(keys.verify(&keys.sign_raw(header, &b64(&serde_json::to_value(&claims).unwrap()))).is_ok());
    assert!(matches!(keys.verify(&expired), Err(Error::Unauthenticated(m)) if m.contains("expired")));
    let mut parts: Vec<String> = owner.split('.').map(str::to_string).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{flipped}{}", &sig[1..]);
    let tampered = parts.join(".");
    let none_header = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
    let alg_none = format!("{none_header}.{}.", b64(&serde_json::to_value(&claims).unwrap()));
    let disabled = user_token(st, "hostile-disabled", Role::Admin, None).await;
    let disabled_id = st.jwt.verify(&disabled).unwrap().sub;
    sqlx::query("update users set disabled_at = now() where id = $1")
        .bind(disabled_id)
        .execute(&st.pool)
        .await
        .unwrap();
    let (_, t) = call_json(st, "POST", "/api/v1/api-tokens", &owner, r#"{"name":"to revoke"}"#).await;
    let revoked = t["token"].as_str().unwrap().to_string();
    let id = t["api_token"]["id"].as_str().unwrap();
    call_json(st, "DELETE", &format!("/api/v1/api-tokens/{id}"), &owner, "").await;
    let (_, t) =
        call_json(st, "POST", "/api/v1/api-tokens", &owner, r#"{"name":"reader","read_only":true}"#).await;
    let read_only = t["token"].as_str().unwrap().to_string();
    (expired, tampered, alg_none, disabled, revoked, read_only)
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn hostile_payloads_get_problem_json(pool: PgPool) {
    let st = state(pool).await;
    let admin = user_token(&st, "a", Role::Admin, None).await;
    let router = crate::api::router(st.clone());
    let cases: [(&str, &str); 5] = [
        ("/api/v1/policies", "{not json"),
        (
            "/api/v1/policies",
            r#"{"name":"x","repository_id":"00000000-0000-0000-0000-000000000000","paths":["relative"]}"#,
        ),
        ("/api/v1/repositories", r#"{"name":"r","url":"http://10.0.0.1:8000"}"#),
        ("/api/v1/repositories", r#"{"name":"r","url":"https://x","unknown_field":1}"#),
        ("/api/v1/enrollment-tokens", r#"{"uses":0}"#),
    ];
    for (path, body) in cases {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {admin}"))
            .body(Body::from(body))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert!(resp.status().is_client_error(), "{path} {body}: {}", resp.status());
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{path} {body}");
    }
    let nothing: i64 =
        sqlx::query_scalar("select count(*) from repositories").fetch_one(&st.pool).await.unwrap();
    assert_eq!(nothing, 0);
    // Malformed query strings are problem+json too.
    for uri in
        ["/api/v1/jobs?limit=many", "/api/v1/audit/events?from=yesterday", "/api/v1/compliance?unknown=1"]
    {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {admin}"))
            .body(Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{uri}");
    }
}

/// One request through the whole router (middleware included): status, headers, JSON body
/// (null when it is not JSON). The tests' one way to call the REST API.
pub(crate) async fn request(
    st: &AppState,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(if body.is_empty() { Body::empty() } else { Body::from(body.to_string()) }).unwrap();
    let resp = crate::api::router(st.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

pub(crate) async fn call_json(
    st: &AppState,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let body = if method == "GET" { "" } else { body };
    let (status, _, json) = request(st, method, path, Some(token), &[], body).await;
    (status, json)
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_user_limited_to_a_group_sees_and_acts_on_its_machines_only(pool: PgPool) {
    let st = state(pool).await;
    let (finance, mine) = machine_in_new_group(&st, "finance").await;
    let (_health, theirs) = machine_in_new_group(&st, "health").await;
    let op = user_token(&st, "op", Role::Operator, Some(finance)).await;
    let (s, body) = call_json(&st, "GET", "/api/v1/machines", &op, "").await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> =
        body["items"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![mine.to_string()]);
    assert_eq!(call_json(&st, "GET", &format!("/api/v1/machines/{mine}"), &op, "").await.0, StatusCode::OK);
    for path in [
        format!("/api/v1/machines/{theirs}"),
        format!("/api/v1/machines/{theirs}/jobs"),
        format!("/api/v1/machines/{theirs}/snapshots"),
    ] {
        assert_eq!(call_json(&st, "GET", &path, &op, "").await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let run = format!(r#"{{"policy_id":"{}"}}"#, Uuid::now_v7());
    assert_eq!(
        call_json(&st, "POST", &format!("/api/v1/machines/{theirs}/jobs"), &op, &run).await.0,
        StatusCode::NOT_FOUND
    );
    // On its own machine the request gets as far as the business rule (policy not assigned).
    assert_eq!(
        call_json(&st, "POST", &format!("/api/v1/machines/{mine}/jobs"), &op, &run).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // A group-limited admin may read fleet configuration but not change it.
    let admin = user_token(&st, "ga", Role::Admin, Some(finance)).await;
    assert_eq!(call_json(&st, "GET", "/api/v1/policies", &admin, "").await.0, StatusCode::OK);
    let (s, body) = call_json(&st, "POST", "/api/v1/groups", &admin, r#"{"name":"x"}"#).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        call_json(&st, "POST", &format!("/api/v1/machines/{theirs}/revoke"), &admin, "{}").await.0,
        StatusCode::NOT_FOUND
    );
    let (s, body) = call_json(&st, "POST", &format!("/api/v1/machines/{mine}/revoke"), &admin, "{}").await;
    assert_eq!((s, body["status"].as_str()), (StatusCode::OK, Some("revoked")));
    let theirs_now = crate::machines::get(&st.pool, theirs).await.unwrap();
    assert_eq!(theirs_now.status, "active", "the other group's machine is untouched");

    // A policy on both groups' machines: each group sees only its own assignments, and the
    // compliance report, summary and alerts only its own machines.
    let repo = test_repository(&st).await;
    let policy = assigned_policy(
        &st,
        cofre_policy::spec::PolicySpec::new("shared", repo, vec!["/srv".into()]),
        theirs,
    )
    .await;
    crate::policies::assign(
        &st.pool,
        &Actor::System,
        policy,
        crate::policies::NewAssignment { machine_id: Some(mine), group_id: None },
    )
    .await
    .unwrap();
    let path = format!("/api/v1/policies/{policy}/assignments");
    let (s, body) = call_json(&st, "GET", &path, &op, "").await;
    assert_eq!(s, StatusCode::OK);
    let named: Vec<&str> =
        body["items"].as_array().unwrap().iter().filter_map(|a| a["machine_id"].as_str()).collect();
    assert_eq!(named, vec![mine.to_string()], "no other group's machine: {body}");
    let fleet = user_token(&st, "f", Role::Auditor, None).await;
    assert_eq!(call_json(&st, "GET", &path, &fleet, "").await.1["items"].as_array().unwrap().len(), 2);
    let (_, report) = call_json(&st, "GET", "/api/v1/compliance", &op, "").await;
    let ids: Vec<&str> =
        report["items"].as_array().unwrap().iter().map(|m| m["machine_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![mine.to_string()]);
    let (s, _) = call_json(&st, "GET", &format!("/api/v1/compliance?group={_health}"), &op, "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another group's report");
    let (_, summary) = call_json(&st, "GET", "/api/v1/compliance/summary", &op, "").await;
    assert_eq!(summary["fleet"]["machines"], 1);
    assert_eq!(call_json(&st, "GET", "/api/v1/audit/events", &op, "").await.0, StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn plan_changes_notify_exactly_the_machines_they_reach(pool: PgPool) {
    use crate::events::Event;
    let st = state(pool).await;
    let (sales, inside) = machine_in_new_group(&st, "sales").await;
    let t = token(&st, 1, None).await;
    let outside = enrollment::enroll(&st.pool, &st.ca, LIFE, &t, &csr(), inv()).await.unwrap().machine_id;
    let repo = test_repository(&st).await;
    let policy = crate::policies::create(
        &st.pool,
        &Actor::System,
        cofre_policy::spec::PolicySpec::new("p", repo, vec!["/srv".into()]),
        crate::policies::HookRights::Allowed,
    )
    .await
    .unwrap();

    let mut listener = sqlx::postgres::PgListener::connect_with(&st.pool).await.unwrap();
    listener.listen(crate::events::CHANNEL).await.unwrap();
    crate::policies::assign(
        &st.pool,
        &Actor::System,
        policy.id,
        crate::policies::NewAssignment { machine_id: None, group_id: Some(sales) },
    )
    .await
    .unwrap();
    let mut plans = None;
    while plans.is_none() {
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
        if let Ok(Event::Plans { machines }) = serde_json::from_str::<Event>(n.payload()) {
            plans = Some(machines);
        }
    }
    drop(listener); // an open LISTEN connection would hold up the test database's cleanup
    let machines = plans.unwrap().expect("the group's machines are named");
    assert!(machines.contains(&inside) && !machines.contains(&outside), "{machines:?}");

    let many: Vec<Uuid> = (0..101).map(|_| Uuid::now_v7()).collect();
    assert_eq!(Event::plans_for(many), Event::Plans { machines: None }, "too many to name in one NOTIFY");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn policy_edits_need_the_current_etag_and_revoked_tokens_enroll_nothing(pool: PgPool) {
    let st = state(pool).await;
    let admin = user_token(&st, "a", Role::Admin, None).await;
    let (s, repo) = call_json(
        &st,
        "POST",
        "/api/v1/repositories",
        &admin,
        r#"{"name":"r","url":"https://rest.example"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{repo}");
    let body = format!(
        r#"{{"name":"p","repository_id":"{}","paths":["/srv"],"schedule":{{"interval_seconds":3600}}}}"#,
        repo["id"].as_str().unwrap()
    );
    let (s, pol) = call_json(&st, "POST", "/api/v1/policies", &admin, &body).await;
    assert_eq!(s, StatusCode::CREATED);
    let path = format!("/api/v1/policies/{}", pol["id"].as_str().unwrap());
    let put = |etag: &'static str| {
        Request::builder()
            .method("PUT")
            .uri(&path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {admin}"))
            .header("if-match", etag)
            .body(Body::from(body.replace("3600", "7200")))
            .unwrap()
    };
    let router = crate::api::router(st.clone());
    let stale = router.clone().oneshot(put("\"rev-7\"")).await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let ok = router.clone().oneshot(put("\"rev-1\"")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["etag"], "\"rev-2\"");
    let again = router.clone().oneshot(put("\"rev-1\"")).await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::PRECONDITION_FAILED,
        "a second edit from the same old copy loses nothing"
    );

    // A revoked token enrolls nothing.
    let created = new_token(&st, 5, None, None).await;
    let (s, _) =
        call_json(&st, "DELETE", &format!("/api/v1/enrollment-tokens/{}", created.info.id), &admin, "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let err = enrollment::enroll(&st.pool, &st.ca, LIFE, &created.token, &csr(), inv()).await.unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn the_first_use_of_each_access_token_is_audited_once(pool: PgPool) {
    let st = state(pool).await;
    let token = user_token(&st, "ana", Role::Auditor, None).await;
    let other = st.jwt.issue(st.jwt.verify(&token).unwrap().sub, "ana", Role::Auditor, None, None).unwrap();
    for t in [&token, &token, &other] {
        let (status, _) = call_json(&st, "GET", "/api/v1/groups", t, "").await;
        assert_eq!(status, StatusCode::OK);
    }
    let uses: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "select actor, details from audit_events where action = 'auth.token_use' order by seq",
    )
    .fetch_all(&st.pool)
    .await
    .unwrap();
    assert_eq!(uses.len(), 2, "one per token: {uses:?}");
    assert!(uses[0].0.ends_with(":ana"));
    assert_eq!(uses[0].1["first_request"], "GET /api/v1/groups");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn failed_logins_are_limited_per_user_and_per_address(pool: PgPool) {
    use crate::auth::login;
    let st = state(pool).await;
    let pw: secrecy::SecretString = "right-password".to_string().into();
    crate::auth::ensure_first_admin(&st.pool, "admin", Some(&pw)).await.unwrap();
    let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    for i in 0..5 {
        let r = login(&st.pool, &st.jwt, 3600, "admin", "wrong", ip(&format!("192.0.2.{i}"))).await;
        assert!(matches!(r, Err(Error::Unauthenticated(_))), "{r:?}");
    }
    // The sixth, even with the right password, is refused before any password is checked.
    match login(&st.pool, &st.jwt, 3600, "admin", "right-password", ip("192.0.2.99")).await {
        Err(Error::TooManyRequests(_, Some(wait))) => assert!((850..=900).contains(&wait), "{wait}"),
        other => panic!("{other:?}"),
    }
    // Per address: five names tried from one address.
    for i in 0..5 {
        let _ = login(&st.pool, &st.jwt, 3600, &format!("guess{i}"), "x", ip("198.51.100.7")).await;
    }
    let r = login(&st.pool, &st.jwt, 3600, "someone", "x", ip("198.51.100.7")).await;
    assert!(matches!(r, Err(Error::TooManyRequests(..))), "{r:?}");
    let r = login(&st.pool, &st.jwt, 3600, "someone", "x", ip("198.51.100.8")).await;
    assert!(matches!(r, Err(Error::Unauthenticated(_))), "another address is not limited: {r:?}");
    // A burst of concurrent attempts on one name: at most five passwords are checked.
    let attempts = (0..20).map(|i| {
        let st = st.clone();
        async move { login(&st.pool, &st.jwt, 3600, "burst", "x", ip(&format!("203.0.113.{i}"))).await }
    });
    let results = futures::future::join_all(attempts).await;
    let checked = results.iter().filter(|r| matches!(r, Err(Error::Unauthenticated(_)))).count();
    let limited = results.iter().filter(|r| matches!(r, Err(Error::TooManyRequests(..)))).count();
    assert!(checked <= 5 && checked + limited == 20, "checked {checked}, limited {limited}");
    // Over HTTP: 429 with Retry-After, as problem+json.
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"username":"admin","password":"right-password"}"#))
        .unwrap();
    let resp = crate::api::router(st.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let failures: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'auth.login_failed'")
            .fetch_one(&st.pool)
            .await
            .unwrap();
    assert!(failures <= 5 + 5 + 1 + 5, "refused attempts are not written: {failures}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn admins_manage_people_and_changes_take_effect_on_tokens_at_once(pool: PgPool) {
    let st = state(pool).await;
    let pw: secrecy::SecretString = "first-admin-password".to_string().into();
    crate::auth::ensure_first_admin(&st.pool, "admin", Some(&pw)).await.unwrap();
    let admin = crate::auth::login(&st.pool, &st.jwt, 3600, "admin", "first-admin-password", None)
        .await
        .unwrap()
        .access_token;
    let (group, machine) = machine_in_new_group(&st, "obras").await;

    // Create: a generated password is shown once; bad fields are named, nothing is stored.
    let (s, body) =
        call_json(&st, "POST", "/api/v1/users", &admin, r#"{"username":"maria","role":"operator"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let password = body["generated_password"].as_str().unwrap().to_string();
    let maria = body["user"]["id"].as_str().unwrap().to_string();
    let (s, body) = call_json(
        &st,
        "POST",
        "/api/v1/users",
        &admin,
        r#"{"username":"bad name","role":"boss","password":"short"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["username", "role", "password"]);
    let (_, list) = call_json(&st, "GET", "/api/v1/users", &admin, "").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Maria operates; demoted to auditor, the same token cannot operate any more.
    let token =
        crate::auth::login(&st.pool, &st.jwt, 3600, "maria", &password, None).await.unwrap().access_token;
    let approve = format!("/api/v1/machines/{machine}/approve");
    assert_eq!(call_json(&st, "POST", &approve, &token, "{}").await.0, StatusCode::OK);
    let (s, _) =
        call_json(&st, "PUT", &format!("/api/v1/users/{maria}"), &admin, r#"{"role":"auditor"}"#).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(call_json(&st, "POST", &approve, &token, "{}").await.0, StatusCode::FORBIDDEN);
    // Limited to a group: other groups' machines disappear from her view at once.
    let (_, other) = machine_in_new_group(&st, "saude").await;
    let body = format!(r#"{{"group_id":"{group}"}}"#);
    assert_eq!(
        call_json(&st, "PUT", &format!("/api/v1/users/{maria}"), &admin, &body).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call_json(&st, "GET", &format!("/api/v1/machines/{other}"), &token, "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(call_json(&st, "GET", "/api/v1/users", &token, "").await.0, StatusCode::FORBIDDEN);
    // Disabled: the token stops working and she cannot log in; enabled: she logs in again, but
    // the sessions the disable ended stay ended.
    assert_eq!(
        call_json(&st, "POST", &format!("/api/v1/users/{maria}/disable"), &admin, "{}").await.0,
        StatusCode::OK
    );
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &token, "").await.0, StatusCode::UNAUTHORIZED);
    let r = crate::auth::login(&st.pool, &st.jwt, 3600, "maria", &password, None).await;
    assert!(matches!(r, Err(Error::Unauthenticated(ref m)) if m.contains("disabled")), "{r:?}");
    assert_eq!(
        call_json(&st, "POST", &format!("/api/v1/users/{maria}/enable"), &admin, "{}").await.0,
        StatusCode::OK
    );
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &token, "").await.0, StatusCode::UNAUTHORIZED);
    let token =
        crate::auth::login(&st.pool, &st.jwt, 3600, "maria", &password, None).await.unwrap().access_token;
    let (s, me) = call_json(&st, "GET", "/api/v1/me", &token, "").await;
    assert_eq!((s, me["role"].as_str()), (StatusCode::OK, Some("auditor")));
    // A reset password replaces the old one.
    let (s, body) = call_json(&st, "POST", &format!("/api/v1/users/{maria}/password"), &admin, "{}").await;
    assert_eq!(s, StatusCode::OK);
    let new_password = body["generated_password"].as_str().unwrap();
    assert!(crate::auth::login(&st.pool, &st.jwt, 3600, "maria", &password, None).await.is_err());
    assert!(crate::auth::login(&st.pool, &st.jwt, 3600, "maria", new_password, None).await.is_ok());

    // The last fleet-wide admin cannot be disabled or demoted.
    let admin_id = st.jwt.verify(&admin).unwrap().sub;
    for (method, path, body) in [
        ("POST", format!("/api/v1/users/{admin_id}/disable"), "{}"),
        ("PUT", format!("/api/v1/users/{admin_id}"), r#"{"role":"operator"}"#),
    ] {
        assert_eq!(call_json(&st, method, &path, &admin, body).await.0, StatusCode::CONFLICT, "{path}");
    }
    let actions: Vec<String> =
        sqlx::query_scalar("select action from audit_events where action like 'user.%' order by seq")
            .fetch_all(&st.pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            "user.create",
            "user.create",
            "user.update",
            "user.update",
            "user.disable",
            "user.enable",
            "user.password_reset"
        ]
    );
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn api_tokens_are_scoped_expiring_revocable_and_die_with_their_creator(pool: PgPool) {
    let st = state(pool).await;
    let (group, mine) = machine_in_new_group(&st, "obras").await;
    let (_, other) = machine_in_new_group(&st, "saude").await;
    let op = user_token(&st, "op", Role::Operator, None).await;
    let op_id = st.jwt.verify(&op).unwrap().sub;
    let new = |body: &str| {
        let (st, op, body) = (st.clone(), op.clone(), body.to_string());
        async move {
            let (s, v) = call_json(&st, "POST", "/api/v1/api-tokens", &op, &body).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            (v["token"].as_str().unwrap().to_string(), v["api_token"]["id"].as_str().unwrap().to_string())
        }
    };
    let approve = format!("/api/v1/machines/{mine}/approve");

    // Read-only: reads, never writes.
    let (ro, ro_id) = new(r#"{"name":"inventory","read_only":true}"#).await;
    assert!(ro.starts_with("cofre_pat_"));
    assert_eq!(call_json(&st, "GET", "/api/v1/machines", &ro, "").await.0, StatusCode::OK);
    assert_eq!(call_json(&st, "POST", &approve, &ro, "{}").await.0, StatusCode::FORBIDDEN);
    // Never more than its creator; narrowed to a group, other groups' machines are not there.
    let (s, body) = call_json(&st, "POST", "/api/v1/api-tokens", &op, r#"{"name":"x","role":"admin"}"#).await;
    assert_eq!((s, body["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("role")));
    let (narrow, narrow_id) = new(&format!(r#"{{"name":"obras","group_id":"{group}"}}"#)).await;
    assert_eq!(
        call_json(&st, "GET", &format!("/api/v1/machines/{other}"), &narrow, "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(call_json(&st, "POST", &approve, &narrow, "{}").await.0, StatusCode::OK);
    // A token cannot mint tokens; the secret is stored only as its SHA-256.
    let (s, _) = call_json(&st, "POST", "/api/v1/api-tokens", &narrow, r#"{"name":"child"}"#).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let secret = narrow.strip_prefix("cofre_pat_").unwrap().split_once('_').unwrap().1;
    let stored: Vec<u8> = sqlx::query_scalar("select secret_hash from api_tokens where id = $1::uuid")
        .bind(&narrow_id)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    use sha2::Digest as _;
    assert_eq!(stored, sha2::Sha256::digest(secret.as_bytes()).to_vec());
    // A tampered secret, a revoked token, an expired one: 401.
    let last = if narrow.ends_with('x') { "y" } else { "x" };
    let tampered = format!("{}{last}", &narrow[..narrow.len() - 1]);
    assert_eq!(call_json(&st, "GET", "/api/v1/machines", &tampered, "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call_json(&st, "DELETE", &format!("/api/v1/api-tokens/{ro_id}"), &op, "").await.0,
        StatusCode::OK
    );
    assert_eq!(call_json(&st, "GET", "/api/v1/machines", &ro, "").await.0, StatusCode::UNAUTHORIZED);
    sqlx::query("update api_tokens set expires_at = now() - interval '1 second' where id = $1::uuid")
        .bind(&narrow_id)
        .execute(&st.pool)
        .await
        .unwrap();
    assert_eq!(call_json(&st, "GET", "/api/v1/machines", &narrow, "").await.0, StatusCode::UNAUTHORIZED);
    // The creator demoted: the token follows; disabled: it dies.
    let (full, _) = new(r#"{"name":"ops"}"#).await;
    assert_eq!(call_json(&st, "POST", &approve, &full, "{}").await.0, StatusCode::OK);
    sqlx::query("update users set role = 'auditor' where id = $1")
        .bind(op_id)
        .execute(&st.pool)
        .await
        .unwrap();
    assert_eq!(call_json(&st, "POST", &approve, &full, "{}").await.0, StatusCode::FORBIDDEN);
    sqlx::query("update users set disabled_at = now() where id = $1")
        .bind(op_id)
        .execute(&st.pool)
        .await
        .unwrap();
    assert_eq!(call_json(&st, "GET", "/api/v1/machines", &full, "").await.0, StatusCode::UNAUTHORIZED);
    let audited: Vec<String> =
        sqlx::query_scalar("select action from audit_events where action like 'api_token.%' order by seq")
            .fetch_all(&st.pool)
            .await
            .unwrap();
    assert_eq!(audited, ["api_token.create", "api_token.create", "api_token.revoke", "api_token.create"]);
    let used: i64 = sqlx::query_scalar("select count(*) from api_tokens where last_used_at is not null")
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!(used, 3);
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn logout_ends_the_token_at_once(pool: PgPool) {
    let st = state(pool).await;
    let a = user_token(&st, "a", Role::Auditor, None).await;
    let b = st.jwt.issue(st.jwt.verify(&a).unwrap().sub, "a", Role::Auditor, None, None).unwrap();
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &a, "").await.0, StatusCode::OK);
    assert_eq!(call_json(&st, "POST", "/api/v1/auth/logout", &a, "{}").await.0, StatusCode::NO_CONTENT);
    let (s, body) = call_json(&st, "GET", "/api/v1/me", &a, "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(call_json(&st, "GET", "/api/v1/me", &b, "").await.0, StatusCode::OK, "other sessions go on");
    let (s, body) = call_json(&st, "POST", "/api/v1/api-tokens", &b, r#"{"name":"s"}"#).await;
    let pat = body["token"].as_str().unwrap().to_string();
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        call_json(&st, "POST", "/api/v1/auth/logout", &pat, "{}").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn jobs_are_listed_fleet_wide_with_filters_and_pages(pool: PgPool) {
    let st = state(pool).await;
    let (g1, m1) = machine_in_new_group(&st, "obras").await;
    let (_, m2) = machine_in_new_group(&st, "saude").await;
    let repo = test_repository(&st).await;
    let p1 =
        assigned_policy(&st, cofre_policy::spec::PolicySpec::new("p1", repo, vec!["/a".into()]), m1).await;
    let p2 =
        assigned_policy(&st, cofre_policy::spec::PolicySpec::new("p2", repo, vec!["/b".into()]), m2).await;
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    for (i, (m, p)) in [(m1, p1), (m1, p1), (m2, p2)].into_iter().enumerate() {
        sqlx::query(
            "insert into jobs (id, machine_id, policy_id, kind, trigger, state, created_at)
             values ($1, $2, $3, 'backup', 'schedule', 'succeeded', $4)",
        )
        .bind(Uuid::now_v7())
        .bind(m)
        .bind(p)
        .bind(t0 + chrono::Duration::hours(i64::try_from(i).unwrap()))
        .execute(&st.pool)
        .await
        .unwrap();
    }
    let admin = user_token(&st, "admin2", Role::Admin, None).await;
    let count = |v: &serde_json::Value| v["items"].as_array().map_or(0, Vec::len);
    assert_eq!(count(&call_json(&st, "GET", "/api/v1/jobs", &admin, "").await.1), 3);
    assert_eq!(count(&call_json(&st, "GET", &format!("/api/v1/jobs?policy={p2}"), &admin, "").await.1), 1);
    let from = (t0 + chrono::Duration::minutes(30)).to_rfc3339().replace('+', "%2B");
    assert_eq!(count(&call_json(&st, "GET", &format!("/api/v1/jobs?from={from}"), &admin, "").await.1), 2);
    let (_, page) = call_json(&st, "GET", "/api/v1/jobs?limit=2", &admin, "").await;
    assert_eq!(count(&page), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    assert_eq!(
        count(&call_json(&st, "GET", &format!("/api/v1/jobs?limit=2&cursor={cursor}"), &admin, "").await.1),
        1
    );
    // A user limited to obras sees obras' jobs only, and another group's machine is not there.
    let op = user_token(&st, "op-obras", Role::Operator, Some(g1)).await;
    assert_eq!(count(&call_json(&st, "GET", "/api/v1/jobs", &op, "").await.1), 2);
    assert_eq!(
        call_json(&st, "GET", &format!("/api/v1/jobs?machine={m2}"), &op, "").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call_json(&st, "GET", "/api/v1/jobs?kind=nonsense", &admin, "").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_machine_moved_to_another_group_takes_that_groups_policies(pool: PgPool) {
    let st = state(pool).await;
    let (obras, m) = machine_in_new_group(&st, "obras").await;
    let (saude, _) = machine_in_new_group(&st, "saude").await;
    let repo = test_repository(&st).await;
    let policy = crate::policies::create(
        &st.pool,
        &Actor::System,
        cofre_policy::spec::PolicySpec::new("saude-policy", repo, vec!["/srv".into()]),
        crate::policies::HookRights::Allowed,
    )
    .await
    .unwrap();
    crate::policies::assign(
        &st.pool,
        &Actor::System,
        policy.id,
        crate::policies::NewAssignment { machine_id: None, group_id: Some(saude) },
    )
    .await
    .unwrap();
    initialise_repositories(&st).await;
    let plan = |st: AppState| async move {
        crate::plans::compute(&st.pool, &st.master, &st.ca.cert_pem, m).await.unwrap()
    };
    assert!(plan(st.clone()).await.policies.is_empty());

    let admin = user_token(&st, "admin3", Role::Admin, None).await;
    let obras_admin = user_token(&st, "obras-admin", Role::Admin, Some(obras)).await;
    let path = format!("/api/v1/machines/{m}");
    // A group's admin may rename its machine but not move it out of the group.
    let (s, body) = call_json(&st, "PUT", &path, &obras_admin, r#"{"display_name":"Recepção"}"#).await;
    assert_eq!((s, body["display_name"].as_str()), (StatusCode::OK, Some("Recepção")));
    let out = format!(r#"{{"group_id":"{saude}"}}"#);
    let (s, body) = call_json(&st, "PUT", &path, &obras_admin, &out).await;
    assert_eq!(
        (s, body["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("group_id"))
    );
    // A fleet admin moves it: saude's policy reaches it, obras no longer sees it.
    let (s, body) = call_json(&st, "PUT", &path, &admin, &out).await;
    assert_eq!((s, body["group_name"].as_str()), (StatusCode::OK, Some("saude")));
    initialise_repositories(&st).await;
    let p = plan(st.clone()).await;
    assert_eq!(p.policies.len(), 1, "{p:?}");
    assert_eq!(call_json(&st, "GET", &path, &obras_admin, "").await.0, StatusCode::NOT_FOUND);
    let audited: i64 =
        sqlx::query_scalar("select count(*) from audit_events where action = 'machine.update'")
            .fetch_one(&st.pool)
            .await
            .unwrap();
    assert_eq!(audited, 2);
}
