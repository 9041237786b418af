//! Bounded fuzzing of the agent → controller edge (#13): whatever an agent sends, the
//! conversion of a `JobEvent` into a domain report ends in a report or a refusal, never a panic,
//! and an accepted report holds only what PostgreSQL stores: timestamps within 1970–9999, no NUL
//! in any text, lengths bounded. Two generators: raw bytes decoded as protobuf (as they arrive),
//! and structured events whose fields range over the hostile values that matter (garbage and
//! valid UUIDs, timestamps at the ends of i64, unknown enum values, NULs, long texts). Cases
//! are bounded so CI stays fast; a failure prints the minimal failing case, to be added to the
//! fixed seeds in `text()` and `timestamp()` (the checked-in corpus).

use cofre_proto::agent::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use super::ingest::{JobReport, ReportKind};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0b7e0d2c-5f3a-4f0e-9a55-3f6b1b1e7d10".to_string()),
        Just("a\0b".to_string()),
        Just("f".repeat(64)),
        Just("é".repeat(5_000)),
        ".{0,40}",
    ]
}

/// Mostly a valid UUID (so events get past the first checks), sometimes anything.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![4 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()), 1 => text()]
}

/// Mostly a known enum value, sometimes anything.
fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0i32..8, 1 => any::<i32>()]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let seconds = prop_oneof![
        6 => 0i64..4_102_444_800,
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-62_135_596_800i64), Just(253_402_300_800i64), any::<i64>()],
    ];
    proptest::option::of(
        (seconds, any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn event() -> impl Strategy<Value = pb::JobEvent> {
    let started = (id(), enum_value(), timestamp()).prop_map(|(policy_id, trigger, started_at)| {
        pb::job_event::Kind::Started(pb::JobStarted { policy_id, trigger, started_at })
    });
    let snapshot_id = prop_oneof![3 => "[0-9a-f]{64}", 1 => text()];
    let stats = (
        snapshot_id,
        timestamp(),
        any::<i32>(),
        proptest::collection::vec(text(), 0..4),
        text(),
        any::<u64>(),
    )
        .prop_map(|(snapshot_id, snapshot_time, utc_offset_seconds, paths, hostname, bytes_added)| {
            pb::BackupStats {
                snapshot_id,
                snapshot_time,
                utc_offset_seconds,
                paths: paths.clone(),
                tags: paths,
                hostname,
                bytes_added,
                bytes_processed: bytes_added.rotate_left(7),
                ..Default::default()
            }
        });
    let finished = (
        (id(), enum_value(), timestamp(), timestamp(), enum_value()),
        proptest::option::of(stats),
        proptest::collection::vec(text(), 0..5),
        proptest::option::of((text(), enum_value())),
        (id(), any::<bool>(), text()),
    )
        .prop_map(
            |(
                (policy_id, trigger, started_at, finished_at, outcome),
                stats,
                warnings,
                error,
                (repository_id, overran_window, log),
            )| {
                pb::job_event::Kind::Finished(pb::JobFinished {
                    policy_id,
                    trigger,
                    started_at,
                    finished_at,
                    outcome,
                    stats,
                    warnings,
                    error: error.map(|(message, retry_class)| pb::JobError { message, retry_class }),
                    repository_id,
                    overran_window,
                    log,
                })
            },
        );
    let progress = (any::<u64>(), any::<u64>(), any::<Option<u64>>(), any::<Option<u64>>(), timestamp())
        .prop_map(|(files_done, bytes_done, files_total, bytes_total, sampled_at)| {
            pb::job_event::Kind::Progress(pb::JobProgress {
                files_done,
                bytes_done,
                files_total,
                bytes_total,
                sampled_at,
            })
        });
    (id(), id(), proptest::option::of(prop_oneof![started, finished, progress]))
        .prop_map(|(event_id, job_id, kind)| pb::JobEvent { event_id, job_id, kind })
}

fn storable(t: &chrono::DateTime<chrono::Utc>) -> bool {
    (1970..=9999).contains(&chrono::Datelike::year(t))
}

fn check(report: &JobReport) {
    match &report.kind {
        ReportKind::Started { started_at, .. } => assert!(started_at.as_ref().is_none_or(storable)),
        ReportKind::Finished(f) => {
            assert!(storable(&f.finished_at) && f.started_at.as_ref().is_none_or(storable));
            let mut texts: Vec<&str> = f.warnings.iter().map(String::as_str).collect();
            texts.extend(f.log.as_deref());
            texts.extend(f.error.as_ref().map(|e| e.0.as_str()));
            if let Some(s) = &f.snapshot {
                assert!(storable(&s.time));
                assert!(s.bytes_added >= 0 && s.bytes_processed >= 0);
                texts.push(&s.hostname);
                texts.extend(s.paths.iter().chain(&s.tags).map(String::as_str));
            }
            for t in texts {
                assert!(!t.contains('\0'), "a NUL would make PostgreSQL refuse the row");
                assert!(t.len() <= 64 * 1024, "{} bytes", t.len());
            }
        }
        ReportKind::Progress(p) => {
            let fits = |v: u64| i64::try_from(v).is_ok();
            assert!(fits(p.files_done) && fits(p.bytes_done), "{p:?}");
            assert!(p.files_total.is_some() == p.bytes_total.is_some(), "{p:?}");
            assert!(p.files_total.into_iter().chain(p.bytes_total).all(fits), "{p:?}");
        }
    }
}

/// Runs `property` over `cases` values of `strategy` on a thread with a roomy stack (the
/// composed strategies are deep in a debug build).
fn run<S>(cases: u32, strategy: S, property: fn(S::Value))
where
    S: Strategy + Send + 'static,
    S::Value: std::fmt::Debug,
{
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let mut runner =
                proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
            if let Err(e) = runner.run(&strategy, |v| {
                property(v);
                Ok(())
            }) {
                panic!("{e}");
            }
        })
        .expect("a fuzzing thread")
        .join()
        .expect("no property fails");
}

#[test]
fn any_bytes_an_agent_sends_convert_or_are_refused() {
    run(3_000, proptest::collection::vec(any::<u8>(), 0..600), |bytes| {
        if let Ok(ev) = pb::JobEvent::decode(bytes.as_slice())
            && let Ok(report) = JobReport::try_from(&ev)
        {
            check(&report);
        }
    });
}

#[test]
fn hostile_events_convert_to_storable_reports_or_are_refused() {
    run(3_000, event(), |ev| {
        if let Ok(report) = JobReport::try_from(&ev) {
            check(&report);
        }
    });
}
