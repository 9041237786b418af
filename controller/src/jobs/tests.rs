//! Database tests of a running backup's progress (#11): it lands on the running job only, as
//! one UPDATE without an audit row, and a sample arriving after the result changes nothing.

use cofre_proto::agent::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::tests::{machine_in_new_group, state};

fn event(job: Uuid, kind: pb::job_event::Kind) -> pb::JobEvent {
    pb::JobEvent { event_id: Uuid::now_v7().to_string(), job_id: job.to_string(), kind: Some(kind) }
}

fn progress(job: Uuid, bytes_done: u64, totals: Option<(u64, u64)>) -> pb::JobEvent {
    event(
        job,
        pb::job_event::Kind::Progress(pb::JobProgress {
            files_done: bytes_done / 100,
            bytes_done,
            files_total: totals.map(|t| t.0),
            bytes_total: totals.map(|t| t.1),
            sampled_at: None,
        }),
    )
}

async fn audit_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from audit_events").fetch_one(pool).await.unwrap()
}

async fn wire(pool: &PgPool, job: Uuid) -> cofre_api::jobs::Job {
    cofre_api::jobs::Job::from(super::get(pool, job).await.unwrap())
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn progress_updates_the_running_job_only(pool: PgPool) {
    let st = state(pool).await;
    let (_, machine) = machine_in_new_group(&st, "g").await;
    let (_, other) = machine_in_new_group(&st, "h").await;
    let job = Uuid::now_v7();
    let started = pb::JobStarted { trigger: pb::TriggerKind::Schedule as i32, ..Default::default() };
    super::ingest(&st.pool, machine, &event(job, pb::job_event::Kind::Started(started))).await.unwrap();
    let started = wire(&st.pool, job).await;
    assert_eq!(started.progress, None, "no sample yet");
    let host: String = sqlx::query_scalar("select hostname from machines where id = $1")
        .bind(machine)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    assert_eq!(started.hostname, Some(host), "a job names its machine's host");

    let audited = audit_rows(&st.pool).await;
    super::ingest(&st.pool, machine, &progress(job, 1000, None)).await.unwrap();
    let first = wire(&st.pool, job).await.progress.expect("progress on the running job");
    assert_eq!(
        (first.files_done, first.bytes_done, first.files_total, first.bytes_total),
        (10, 1000, None, None)
    );
    super::ingest(&st.pool, machine, &progress(job, 5000, Some((300, 30_000)))).await.unwrap();
    let second = wire(&st.pool, job).await.progress.expect("progress");
    assert_eq!((second.bytes_done, second.files_total, second.bytes_total), (5000, Some(300), Some(30_000)));
    assert!(second.at >= first.at);
    assert_eq!(second.percent(), Some(16));
    assert_eq!(audit_rows(&st.pool).await, audited, "progress is never audited");

    // Another machine cannot move this job's progress.
    super::ingest(&st.pool, other, &progress(job, 9000, None)).await.unwrap();
    assert_eq!(wire(&st.pool, job).await.progress.map(|p| p.bytes_done), Some(5000));

    // The result ends the job: its progress goes, and a late sample changes nothing.
    let done = pb::JobFinished {
        outcome: pb::JobOutcome::Cancelled as i32,
        trigger: pb::TriggerKind::Schedule as i32,
        finished_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        ..Default::default()
    };
    super::ingest(&st.pool, machine, &event(job, pb::job_event::Kind::Finished(done))).await.unwrap();
    super::ingest(&st.pool, machine, &progress(job, 7000, None)).await.unwrap();
    let ended = wire(&st.pool, job).await;
    assert_eq!((ended.state.as_str(), ended.progress), ("cancelled", None));
    let stored: (Option<serde_json::Value>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("select progress, progress_at from jobs where id = $1")
            .bind(job)
            .fetch_one(&st.pool)
            .await
            .unwrap();
    assert_eq!(stored, (None, None), "cleared with the result, not written after it");
    let p = super::ingest::Progress { files_done: 1, bytes_done: 1, files_total: None, bytes_total: None };
    assert!(!super::ingest::progress(&st.pool, machine, job, &p).await.unwrap());
    // A job nobody started (unknown here) gets nothing either.
    assert!(!super::ingest::progress(&st.pool, machine, Uuid::now_v7(), &p).await.unwrap());
}
