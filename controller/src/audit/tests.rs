//! The audit log against a real PostgreSQL: tampering as the superuser and as the app role, each
//! found at the exact event or checkpoint.

use sqlx::PgPool;

use super::checkpoints::{self, CheckpointFile};
use super::{ChainRule, chain};
use crate::tests::{app_pool, state, token};

/// `n` audited actions (each enrollment token writes one event).
async fn events(st: &crate::state::AppState, n: usize) {
    for _ in 0..n {
        token(st, 1, None).await;
    }
}

async fn verify(st: &crate::state::AppState, file: Option<&CheckpointFile>) -> super::Report {
    super::verify(&st.pool, &st.audit, file).await.unwrap()
}

fn problem(r: &super::Report) -> (i64, &str) {
    let p = r.problem.as_ref().unwrap_or_else(|| panic!("expected a problem: {r:?}"));
    (p.seq, p.kind.as_str())
}

type Row = (i64, chrono::DateTime<chrono::Utc>, String, String, String, String, serde_json::Value, Vec<u8>);

/// Rewrites the links from `from` on the way an attacker without the key would: unkeyed.
async fn relink_unkeyed(pool: &PgPool, st: &crate::state::AppState, from: i64) {
    let rows: Vec<Row> = sqlx::query_as(
        "select seq, at, actor, action, target_type, target_id, details, prev_hash from audit_events
         where seq >= $1 order by seq",
    )
    .bind(from)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut prev = rows[0].7.clone();
    for (seq, at, actor, action, tt, tid, details, _) in rows {
        let e = chain::Event {
            seq,
            at,
            actor: &actor,
            action: &action,
            target_type: &tt,
            target_id: &tid,
            details: &details,
        };
        let hash = ChainRule::Legacy.link(&st.audit, &prev, &e).unwrap();
        sqlx::query("update audit_events set prev_hash = $2, hash = $3 where seq = $1")
            .bind(seq)
            .bind(&prev)
            .bind(&hash)
            .execute(pool)
            .await
            .unwrap();
        prev = hash;
    }
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn an_untouched_log_verifies(pool: PgPool) {
    let st = state(pool).await;
    events(&st, 5).await;
    let r = verify(&st, None).await;
    assert!(r.ok, "{r:?}");
    assert_eq!((r.events_checked, r.head_seq, r.keyed_from_seq), (5, 5, 1));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_changed_event_is_named_even_when_every_later_link_is_recomputed(pool: PgPool) {
    let st = state(pool.clone()).await;
    events(&st, 6).await;
    sqlx::query("update audit_events set details = '{\"uses\": 99}' where seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(problem(&verify(&st, None).await), (3, "event"));
    relink_unkeyed(&pool, &st, 3).await;
    let r = verify(&st, None).await;
    assert_eq!(problem(&r), (3, "event"), "{r:?}");
    assert!(r.problem.unwrap().message.contains("does not verify"));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_deleted_or_reordered_event_is_named(pool: PgPool) {
    let st = state(pool.clone()).await;
    events(&st, 6).await;
    // Reorder: swap what events 2 and 3 say.
    sqlx::query(
        "update audit_events a set details = b.details, target_id = b.target_id, at = b.at
         from audit_events b where (a.seq, b.seq) in ((2, 3), (3, 2))",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(problem(&verify(&st, None).await), (2, "event"));

    sqlx::query("delete from audit_events where seq >= 2").execute(&pool).await.unwrap();
    events(&st, 4).await; // seq 2..5 again, correctly keyed
    assert!(verify(&st, None).await.ok);
    sqlx::query("delete from audit_events where seq = 4").execute(&pool).await.unwrap();
    let r = verify(&st, None).await;
    assert_eq!(problem(&r), (4, "event"), "{r:?}");
    assert!(r.problem.unwrap().message.contains("missing"));
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_forged_row_appended_with_the_app_role_is_named(pool: PgPool) {
    let st = state(pool.clone()).await;
    events(&st, 3).await;
    let app = app_pool(&pool).await;
    // The attacker holds the app role's password, reads the head and links a row the way the
    // code does, with every key it can find (the database holds none in clear).
    let (seq, prev): (i64, Vec<u8>) =
        sqlx::query_as("select seq, hash from audit_events order by seq desc limit 1")
            .fetch_one(&app)
            .await
            .unwrap();
    let at = chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap();
    let details = serde_json::json!({"note": "nothing happened"});
    let e = chain::Event {
        seq: seq + 1,
        at,
        actor: "system",
        action: "machine.approve",
        target_type: "machine",
        target_id: "x",
        details: &details,
    };
    let hash = ChainRule::Legacy.link(&st.audit, &prev, &e).unwrap();
    sqlx::query(
        "insert into audit_events (seq, at, actor, action, target_type, target_id, details, prev_hash, hash)
         values ($1, $2, 'system', 'machine.approve', 'machine', 'x', $3, $4, $5)",
    )
    .bind(seq + 1)
    .bind(at)
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(&app)
    .await
    .unwrap();
    let r = verify(&st, None).await;
    assert_eq!(problem(&r), (4, "event"), "{r:?}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_cut_tail_is_found_by_the_checkpoints_even_when_they_are_deleted_too(pool: PgPool) {
    let st = state(pool.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = CheckpointFile::new(dir.path().join("cp/checkpoints.jsonl"));
    events(&st, 4).await;
    let c = checkpoints::make(&pool, &st.audit, "t", std::time::Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(c.seq, 4);
    // The same head is not signed twice; an hourly run right after signs nothing new.
    events(&st, 3).await;
    let hourly =
        checkpoints::make(&pool, &st.audit, "t", std::time::Duration::from_secs(3600)).await.unwrap();
    assert!(hourly.is_none());
    assert_eq!(
        checkpoints::make(&pool, &st.audit, "t", std::time::Duration::ZERO).await.unwrap().unwrap().seq,
        7
    );
    assert_eq!(file.sync(&pool, &st.audit).await.unwrap(), 2);
    assert_eq!(file.sync(&pool, &st.audit).await.unwrap(), 0, "nothing appended twice");
    let r = verify(&st, Some(&file)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!((r.checkpoints_checked, r.newest_checkpoint_seq), (2, Some(7)));

    // The schema owner cuts the last three events: the checkpoint at 7 names it.
    sqlx::query("delete from audit_events where seq > 4").execute(&pool).await.unwrap();
    let r = verify(&st, Some(&file)).await;
    assert_eq!(problem(&r), (7, "checkpoint"), "{r:?}");
    assert!(r.problem.as_ref().unwrap().message.contains("ends at 4"), "{r:?}");
    // ...and the database's checkpoints too: the file still knows.
    sqlx::query("delete from audit_checkpoints where seq > 4").execute(&pool).await.unwrap();
    let r = verify(&st, Some(&file)).await;
    assert_eq!(problem(&r), (7, "checkpoint"), "{r:?}");
    // A forged checkpoint row is refused by its signature and not copied to the file.
    sqlx::query("insert into audit_checkpoints values (4, $1, now(), $2, 'forger') on conflict (seq) do update set signature = $2")
        .bind(vec![0u8; 32])
        .bind(vec![1u8; 64])
        .execute(&pool)
        .await
        .unwrap();
    let r = verify(&st, None).await;
    assert_eq!(problem(&r), (4, "checkpoint"), "{r:?}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn events_from_before_the_keyed_boundary_verify_under_their_old_rule(pool: PgPool) {
    let st = state(pool.clone()).await;
    // As a database migrated from the foundation: three unkeyed events, keys from 4 on.
    sqlx::query("update audit_chain_rules set keyed_from_seq = 4").execute(&pool).await.unwrap();
    events(&st, 3).await;
    relink_unkeyed(&pool, &st, 1).await;
    events(&st, 2).await;
    let r = verify(&st, None).await;
    assert!(r.ok, "{r:?}");
    assert_eq!((r.events_checked, r.keyed_from_seq), (5, 4));
    // After the boundary an unkeyed link is refused.
    relink_unkeyed(&pool, &st, 4).await;
    assert_eq!(problem(&verify(&st, None).await), (4, "event"));
}

/// The verification benchmark (#10: 1,000,000 events in ≤ 10 s). Prints numbers, asserts only
/// correctness. Run: `DATABASE_URL=… cargo test --release -p cofre-controller --lib --
/// --ignored --nocapture audit_verify_benchmark` (COFRE_BENCH_EVENTS to change the count).
#[sqlx::test(migrator = "crate::db::MIGRATOR")]
#[ignore = "benchmark: run by hand in release mode"]
async fn audit_verify_benchmark(pool: PgPool) {
    let st = state(pool.clone()).await;
    let n: i64 = std::env::var("COFRE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let mut prev = vec![0u8; 32];
    let base = chrono::Utc::now() - chrono::Duration::days(365);
    let batch = 20_000;
    let mut seq = 1i64;
    while seq <= n {
        let (
            mut seqs,
            mut ats,
            mut actors,
            mut actions,
            mut tts,
            mut tids,
            mut details,
            mut prevs,
            mut hashes,
        ) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..batch.min(n - seq + 1) {
            let at = chrono::DateTime::from_timestamp_micros(
                (base + chrono::Duration::seconds(seq)).timestamp_micros(),
            )
            .unwrap();
            let d = serde_json::json!({"job_id": uuid::Uuid::now_v7(), "outcome": "succeeded", "snapshot_id": "ab".repeat(32)});
            let actor = format!("machine:{}", uuid::Uuid::from_u128(u128::try_from(seq % 500).unwrap()));
            let tid = uuid::Uuid::now_v7().to_string();
            let e = chain::Event {
                seq,
                at,
                actor: &actor,
                action: "job.result",
                target_type: "job",
                target_id: &tid,
                details: &d,
            };
            let hash = ChainRule::Keyed.link(&st.audit, &prev, &e).unwrap();
            seqs.push(seq);
            ats.push(at);
            actors.push(actor);
            actions.push("job.result".to_string());
            tts.push("job".to_string());
            tids.push(tid);
            details.push(d);
            prevs.push(prev.clone());
            hashes.push(hash.clone());
            prev = hash;
            seq += 1;
        }
        sqlx::query(
            "insert into audit_events (seq, at, actor, action, target_type, target_id, details, prev_hash, hash)
             select * from unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::jsonb[], $8::bytea[], $9::bytea[])",
        )
        .bind(&seqs)
        .bind(&ats)
        .bind(&actors)
        .bind(&actions)
        .bind(&tts)
        .bind(&tids)
        .bind(&details)
        .bind(&prevs)
        .bind(&hashes)
        .execute(&pool)
        .await
        .unwrap();
    }
    eprintln!("wrote {n} linked events in {:.1} s", started.elapsed().as_secs_f64());
    sqlx::query("vacuum analyze audit_events").execute(&pool).await.unwrap();
    checkpoints::make(&pool, &st.audit, "bench", std::time::Duration::ZERO).await.unwrap();
    for run in 1..=3 {
        let t = std::time::Instant::now();
        let r = verify(&st, None).await;
        let secs = t.elapsed().as_secs_f64();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.events_checked, n);
        let rate = n as f64 / secs;
        eprintln!(
            "verify run {run}: {n} events and {} checkpoint(s) in {secs:.2} s ({rate:.0} events/s)",
            r.checkpoints_checked
        );
    }
}
