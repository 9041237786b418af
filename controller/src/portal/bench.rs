//! The portal's speed with a city's fleet: 10,000 machines in 20 departments and a year of
//! daily backups (3.6 million jobs with their results), every page rendered through the real
//! router, server time only (no socket, no browser). Prints p50/p95 per page; never asserts a
//! time. Fleet-wide pages read the compliance recorder's verdicts, so it records once first and
//! prints what a round costs. Run (release, against the DATABASE_URL cluster; seeding takes a
//! few minutes):
//!
//! ```text
//! cargo test --release -p cofre-controller portal_pages -- --ignored --nocapture
//! ```
//!
//! `COFRE_BENCH_MACHINES` and `COFRE_BENCH_DAYS` change the fleet's size and history.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

use crate::audit::Actor;
use crate::tests::{initialise_repositories, state, test_repository};

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn seed(st: &crate::state::AppState, machines: i64, days: i64) -> Uuid {
    let pool = &st.pool;
    let t = Instant::now();
    sqlx::query("insert into groups (id, name) select gen_random_uuid(), 'secretaria-' || lpad(g::text, 2, '0') from generate_series(1, 20) g")
        .execute(pool)
        .await
        .expect("groups");
    sqlx::query(
        "insert into machines (id, hostname, os, arch, agent_version, group_id, status, enrolled_at, approved_at, last_seen_at)
         select gen_random_uuid(), 'pc-' || lpad(i::text, 5, '0'), 'Debian GNU/Linux 12', 'x86_64', '0.1.0',
                (array(select id from groups order by name))[1 + i % 20],
                case when i % 500 = 0 then 'pending' else 'active' end,
                now() - interval '400 days', now() - interval '399 days',
                now() - (i % 50) * interval '1 hour'
         from generate_series(1, $1) i",
    )
    .bind(machines)
    .execute(pool)
    .await
    .expect("machines");
    let repo = test_repository(st).await;
    let spec: cofre_policy::spec::PolicySpec = serde_json::from_value(serde_json::json!({
        "name": "documentos", "repository_id": repo, "paths": ["/home"],
        "schedule": {"cron": "0 22 * * *", "timezone": "America/Sao_Paulo"}, "rpo_seconds": 129_600,
    }))
    .expect("spec");
    let policy = crate::policies::create(pool, &Actor::System, spec, crate::policies::HookRights::Allowed)
        .await
        .expect("policy");
    let groups: Vec<(Uuid,)> = sqlx::query_as("select id from groups").fetch_all(pool).await.expect("groups");
    for (g,) in groups {
        crate::policies::assign(
            pool,
            &Actor::System,
            policy.id,
            crate::policies::NewAssignment { machine_id: None, group_id: Some(g) },
        )
        .await
        .expect("assign");
    }
    initialise_repositories(st).await;
    // One scheduled backup a day per active machine; 3% fail; the last days of one machine in
    // 40 are missing (they show as not protected).
    sqlx::query(
        "insert into jobs (id, machine_id, policy_id, kind, trigger, state, created_at, started_at, finished_at)
         select gen_random_uuid(), m.id, $1, 'backup', 'schedule',
                case when random() < 0.03 then 'failed' else 'succeeded' end,
                now() - d * interval '1 day', now() - d * interval '1 day' + interval '1 minute',
                now() - d * interval '1 day' + interval '9 minutes'
         from machines m cross join generate_series(1, $2) d
         where m.status = 'active' and (d > 3 or hashtext(m.hostname) % 40 <> 0)",
    )
    .bind(policy.id)
    .bind(days)
    .execute(pool)
    .await
    .expect("jobs");
    sqlx::query(
        "insert into job_results (job_id, event_id, outcome, stats, started_at, finished_at, received_at)
         select id, gen_random_uuid(), state, '{\"files_processed\": 1234, \"bytes_added\": 56789}', started_at,
                finished_at, finished_at
         from jobs",
    )
    .execute(pool)
    .await
    .expect("results");
    sqlx::query("analyze").execute(pool).await.expect("analyze");
    let (jobs,): (i64,) = sqlx::query_as("select count(*) from jobs").fetch_one(pool).await.expect("count");
    println!("seeded {machines} machines, {jobs} jobs with results in {:.0?}", t.elapsed());
    policy.id
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
#[ignore = "benchmark (minutes of seeding): cargo test --release -p cofre-controller portal_pages -- --ignored --nocapture"]
async fn portal_pages_with_a_city_fleet(pool: PgPool) {
    let st = state(pool).await;
    let machines = env_or("COFRE_BENCH_MACHINES", 10_000);
    let days = env_or("COFRE_BENCH_DAYS", 365);
    seed(&st, machines, days).await;
    // What the recorder costs: one round over the whole fleet (every evaluate_seconds), and one
    // over the 100 machines that reported within the same second. Pages read what it records.
    let t = Instant::now();
    crate::compliance::record(&st, chrono::Utc::now()).await.expect("record");
    println!("recorder: the whole fleet judged and written in {:.0?} (first round)", t.elapsed());
    let t = Instant::now();
    crate::compliance::record(&st, chrono::Utc::now()).await.expect("record");
    println!("recorder: the whole fleet judged and written in {:.0?} (a later round)", t.elapsed());
    let some: Vec<Uuid> = sqlx::query_scalar("select id from machines order by id limit 100")
        .fetch_all(&st.pool)
        .await
        .expect("machines");
    let t = Instant::now();
    crate::compliance::record_machines(&st, &some, chrono::Utc::now()).await.expect("record");
    println!("recorder: 100 marked machines judged and written in {:.0?}", t.elapsed());
    // A real login and a real portal ticket.
    let hash = crate::auth::hash_password("bench-password").expect("hash");
    sqlx::query("insert into users (id, username, password_hash, role) values ($1, 'chefe', $2, 'admin')")
        .bind(Uuid::now_v7())
        .bind(hash)
        .execute(&st.pool)
        .await
        .expect("user");
    let tokens =
        crate::auth::login(&st.pool, &st.jwt, 3600, "chefe", "bench-password", None).await.expect("login");
    let ticket = cofre_web::Backend::open(&super::Tickets { state: st.clone() }, &tokens.access_token)
        .expect("ticket");
    let cookie = format!("cofre_session={}; cofre_lang=pt-BR", ticket.value);
    let router = super::router(st.clone());
    let (one,): (Uuid,) =
        sqlx::query_as("select id from machines where status = 'active' order by hostname limit 1 offset $1")
            .bind(machines * 2 / 5)
            .fetch_one(&st.pool)
            .await
            .expect("a machine");
    let pages = [
        "/".to_string(),
        "/machines".into(),
        "/machines?q=pc-042&sort=backup".into(),
        "/machines?status=non_compliant&page=2".into(),
        format!("/machines/{one}"),
        "/jobs".into(),
        "/jobs?state=failed".into(),
        "/compliance".into(),
        "/audit".into(),
        "/enrollment".into(),
        "/maintenance".into(),
        // What the fleet-wide pages read, alone (the REST API, with the same session's token).
        "/api/v1/compliance/summary".into(),
        "/api/v1/compliance".into(),
        "/api/v1/compliance?status=non_compliant".into(),
        "/api/v1/compliance/days".into(),
        "/api/v1/compliance?sort=status&limit=15".into(),
        "/api/v1/jobs?state=running&limit=20".into(),
        "/api/v1/machines?status=pending&limit=1000".into(),
    ];
    println!("{:<42} {:>9} {:>9} {:>9}", "page", "p50", "p95", "bytes");
    for page in pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        // 20 samples after 3 warm-ups; 5 when a page takes seconds.
        let mut runs = 23;
        let mut i = 0;
        while i < runs {
            let req = if page.starts_with("/api/") {
                Request::get(&page).header("authorization", format!("Bearer {}", tokens.access_token))
            } else {
                Request::get(&page).header("cookie", &cookie)
            };
            let req = req.header("host", "cofre.example").body(Body::empty()).expect("request");
            let t = Instant::now();
            let resp = router.clone().oneshot(req).await.expect("answer");
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            let took = t.elapsed();
            assert_eq!(status, StatusCode::OK, "{page}: {}", String::from_utf8_lossy(&body));
            bytes = body.len();
            if i == 0 && took > Duration::from_millis(500) {
                runs = 6;
            }
            if i >= 1 && (runs == 6 || i >= 3) {
                times.push(took);
            }
            i += 1;
        }
        times.sort();
        println!(
            "{:<42} {:>7.1}ms {:>7.1}ms {:>9}",
            page,
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.95).as_secs_f64() * 1000.0,
            bytes
        );
    }
}
