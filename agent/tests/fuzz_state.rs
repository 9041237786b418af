//! Bounded fuzzing of what the agent reads back from its state directory (#13): the stored plan
//! (`plan.pb`), spooled job events (`spool/*.pb`), the schedule's bookkeeping
//! (`schedule.json`), its identity (`identity.json`) and the enrollment token it is given.
//! Whatever bytes are found there — a disk error, a truncated write from an older agent, a hand
//! edit — reading them ends in a value or a clear refusal, never a panic, and never a silently
//! wrong value where one can be checked:
//! - a decoded plan or spooled event encodes back to itself, and the plan runs through the
//!   scheduler, `status` and `restic-env` without a panic, scheduling only its own policies;
//! - a spooled event is delivered under the name it is stored as (so its acknowledgement
//!   removes it), an unreadable one is moved aside, never deleted, and bounding it for sending
//!   is idempotent and within the controller's limit;
//! - a schedule never holds a time in the future after loading, and survives a save and load.
//!
//! Every target first replays the checked-in corpus (`tests/corpus/<target>/`: real files as
//! this agent writes them, and truncated ones), then mutations of it (bit flips, byte
//! overwrites, insertions, cuts, splices) and raw bytes. Cases are bounded so each target runs
//! in a few seconds in a debug build. `cargo test -p cofre-agent --test fuzz_state -- --ignored
//! write_corpus` rewrites the corpus from the values in `seeds` below.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cofre_agent::scheduler::{Clock, Scheduler};
use cofre_agent::spool::Spool;
use cofre_agent::state::StateDir;
use cofre_proto::agent::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message as _;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target)
}

/// The corpus files of a target, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus {target}: {e}"))
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the {target} corpus is empty");
    files
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// Copies a range of the input over another place (a plausible field in a wrong place).
    Splice(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..7).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        2 => (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), Just(0x80), any::<u8>()]).prop_map(|(at, b)| Edit::Set(at, b)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Edit::Insert(at, b)),
        1 => (any::<usize>(), 1usize..32).prop_map(|(at, n)| Edit::Remove(at, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), any::<usize>(), 1usize..24).prop_map(|(from, to, n)| Edit::Splice(from, to, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        let len = b.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match e {
            Edit::Flip(i, bit) if len > 0 => b[at(*i)] ^= 1 << bit,
            Edit::Set(i, v) if len > 0 => b[at(*i)] = *v,
            Edit::Insert(i, bytes) => {
                let i = if len == 0 { 0 } else { i % (len + 1) };
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(i, n) if len > 0 => {
                let i = at(*i);
                b.drain(i..(i + n).min(len));
            }
            Edit::Truncate(i) => b.truncate(if len == 0 { 0 } else { i % len }),
            Edit::Splice(from, to, n) if len > 0 => {
                let (from, to) = (at(*from), at(*to));
                let piece: Vec<u8> = b[from..(from + n).min(len)].to_vec();
                let end = (to + piece.len()).min(len);
                b.splice(to..end, piece);
            }
            _ => {}
        }
    }
    b
}

/// Inputs for a target: a corpus file mutated (mostly), or raw bytes.
fn inputs(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    let mutated = (proptest::sample::select(seeds), proptest::collection::vec(edit(), 1..4))
        .prop_map(|(seed, edits)| apply(&seed, &edits));
    prop_oneof![6 => mutated, 1 => proptest::collection::vec(any::<u8>(), 0..256)]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a\0b".to_string()),
        Just("é".repeat(300)),
        Just("../../etc/passwd".to_string()),
        ".{0,24}",
    ]
}

/// The valid plan with hostile schedules, hooks and repositories: what a buggy or hostile
/// controller could have stored.
fn hostile_plan() -> impl Strategy<Value = Vec<u8>> {
    let cron = prop_oneof![
        Just("30 2 * * *".to_string()),
        Just("*/1 * * * *".to_string()),
        Just("0 0 31 2 *".to_string()),
        Just("59 23 29 2 *".to_string()),
        Just("* * * * * * *".to_string()),
        Just(String::new()),
        "[0-9*/,-]{1,3} [0-9*/,-]{1,3} [0-9*/,-]{1,3} [0-9*/,-]{1,3} [0-9*/,-]{1,3}",
        text(),
    ];
    let timezone = prop_oneof![
        Just("Europe/Lisbon".to_string()),
        Just("America/Sao_Paulo".to_string()),
        Just("Pacific/Kiritimati".to_string()),
        Just("UTC".to_string()),
        Just(String::new()),
        text(),
    ];
    let seconds = prop_oneof![
        Just(0u64),
        Just(1),
        Just(3600),
        Just(u64::from(u32::MAX)),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>()
    ];
    let window = prop_oneof![
        Just(String::new()),
        Just("01:00".to_string()),
        Just("23:59".to_string()),
        Just("24:00".to_string()),
        "[0-9:]{0,6}",
        text()
    ];
    let schedule = (cron, timezone, seconds.clone(), seconds.clone(), window.clone(), window).prop_map(
        |(cron, timezone, interval_seconds, jitter_seconds, window_start, window_end)| pb::Schedule {
            cron,
            timezone,
            interval_seconds,
            jitter_seconds,
            window_start,
            window_end,
        },
    );
    let hook = (text(), seconds.clone(), any::<i32>())
        .prop_map(|(name, timeout_seconds, on_failure)| pb::Hook { name, timeout_seconds, on_failure });
    let policy = (
        proptest::option::of(schedule),
        seconds,
        proptest::option::of(hook),
        text(),
        text(),
        proptest::collection::vec(text(), 0..3),
        any::<i64>(),
    );
    (proptest::collection::vec(policy, 0..4), text(), text(), any::<u64>()).prop_map(
        |(policies, repo_url, repo_id, version)| {
            let mut plan = seeds::plan();
            plan.version = version;
            plan.repositories[0].url = repo_url;
            plan.repositories[0].id = repo_id;
            let template = plan.policies[0].clone();
            for (i, (schedule, interval_seconds, hook, id, repository_id, paths, revision)) in
                policies.into_iter().enumerate()
            {
                plan.policies.push(pb::PlanPolicy {
                    id: if i % 2 == 0 { format!("p{i}") } else { id },
                    schedule,
                    interval_seconds,
                    before_hook: hook.clone(),
                    after_hook: hook,
                    repository_id,
                    paths,
                    revision,
                    ..template.clone()
                });
            }
            plan.encode_to_vec()
        },
    )
}

fn runner(cases: u32) -> TestRunner {
    // Fixed seed: the same cases every run, so CI is repeatable; a failure prints its input.
    TestRunner::new_with_rng(
        Config { cases, failure_persistence: None, ..Config::default() },
        proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    )
}

/// A clock standing still at a fixed instant (monotonic time still passes between calls, so
/// the scheduler sees no jump).
#[derive(Debug)]
struct At(jiff::Timestamp);

impl Clock for At {
    fn now(&self) -> jiff::Timestamp {
        self.0
    }

    fn mono(&self) -> Duration {
        Duration::from_secs(1_000)
    }
}

/// A state directory with an identity, so `status` gets as far as the plan.
fn state_dir(dir: &Path) -> StateDir {
    let state = StateDir::open(dir).unwrap();
    for (name, bytes) in corpus("identity") {
        if name == "identity.json" {
            std::fs::write(dir.join("identity.json"), bytes).unwrap();
        }
    }
    std::fs::write(
        dir.join("identity.pem"),
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    state
}

// ---- the stored plan ----

/// Checks one stored plan; whether it loaded.
fn check_plan(state: &StateDir, raw: &[u8]) -> bool {
    std::fs::write(state.root().join("plan.pb"), raw).unwrap();
    let Some(plan) = state.load_plan() else {
        assert!(pb::Plan::decode(raw).is_err(), "a plan that decodes is loaded");
        return false;
    };
    // A decoded plan encodes to bytes that decode to the same plan.
    let again = pb::Plan::decode(plan.encode_to_vec().as_slice()).expect("re-encoded plan decodes");
    assert_eq!(again, plan, "the plan reads back as itself");
    // The scheduler, at instants around the usual ones and at the ends of time.
    let ids: HashSet<&str> = plan.policies.iter().map(|p| p.id.as_str()).collect();
    for now in ["2026-12-02T03:30:00Z", "1970-01-01T00:00:00Z", "9999-12-30T00:00:00Z"] {
        let now: jiff::Timestamp = now.parse().unwrap();
        let schedule = std::fs::read(state.root().join("schedule.json")).ok();
        let mut sched = Scheduler::load(schedule.as_deref(), b"machine", now);
        let (due, _) = sched.due(&plan, &HashSet::new(), &At(now));
        for d in &due {
            assert!(ids.contains(d.policy_id.as_str()), "only the plan's own policies are due");
        }
        for p in &plan.policies {
            let _ = cofre_agent::scheduler::schedule_of(p);
            sched.record_run_now(p, now);
            sched.after_run(p, true, now);
        }
        let _ = sched.due(&plan, &HashSet::new(), &At(now));
    }
    let status = cofre_agent::status(state).expect("status with a loaded plan");
    assert!(status.contains(&format!("version {}", plan.version)), "{status}");
    let _ = cofre_agent::restic_env(state);
    true
}

#[test]
fn stored_plans_load_as_themselves_or_are_refused_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir(dir.path());
    for (name, raw) in corpus("plan") {
        let decoded = pb::Plan::decode(raw.as_slice());
        if name.starts_with("valid") {
            let plan = decoded.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(plan.encode_to_vec(), raw, "{name} is canonical");
        }
        check_plan(&state, &raw);
    }
    let loaded = std::cell::Cell::new(0);
    runner(3_000)
        .run(&prop_oneof![inputs("plan"), hostile_plan()], |raw| {
            loaded.set(loaded.get() + u32::from(check_plan(&state, &raw)));
            Ok(())
        })
        .unwrap();
    // Mutations must mostly stay decodable, or the scheduler is never reached.
    assert!(loaded.get() > 1_500, "only {} of 3,000 plans loaded", loaded.get());
}

// ---- the spool ----

/// The valid result with hostile contents: many and long warnings, NULs, huge logs, odd ids.
fn hostile_event() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![
        4 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => text(),
    ];
    let warnings = prop_oneof![
        proptest::collection::vec(text(), 0..8),
        (0usize..1_200, 0usize..2_500)
            .prop_map(|(n, len)| (0..n).map(|i| format!("{i} {}", "w".repeat(len))).collect()),
    ];
    let big = prop_oneof![text(), (0usize..300_000).prop_map(|n| "x\0".repeat(n / 2))];
    (id, warnings, big.clone(), big, proptest::collection::vec(text(), 0..4)).prop_map(
        |(event_id, warnings, log, message, paths)| {
            let mut ev = seeds::finished();
            ev.event_id = event_id;
            if let Some(pb::job_event::Kind::Finished(f)) = &mut ev.kind {
                f.warnings = warnings;
                f.log = log;
                f.error = Some(pb::JobError { message, retry_class: 7 });
                if let Some(s) = &mut f.stats {
                    s.paths.extend(paths);
                }
            }
            ev.encode_to_vec()
        },
    )
}

fn spool_name(i: usize) -> String {
    // UUIDv7-shaped and sorted by position, like the agent's own event ids.
    let u = uuid::Uuid::from_u128((0x0190_0000_0000_7000_8000_0000_0000_0000_u128) + ((i as u128) << 80));
    u.to_string()
}

/// Writes `files` into a fresh spool under the names they would have (the file name is the
/// event id of the seed they came from), reads the spool back and checks every property.
fn check_spool(files: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for (i, raw) in files.iter().enumerate() {
        // Store under the event's own id when it has one (as the agent does), else a fresh one.
        let name = match pb::JobEvent::decode(raw.as_slice()) {
            Ok(ev) if uuid::Uuid::try_parse(&ev.event_id).is_ok() && !names.contains(&ev.event_id) => {
                ev.event_id
            }
            _ => spool_name(i),
        };
        std::fs::write(dir.path().join(format!("{name}.pb")), raw).unwrap();
        names.push(name);
    }
    let spool = Spool::new(dir.path().to_path_buf());
    let pending = spool.pending();
    let mut seen = HashSet::new();
    for ev in &pending {
        // Delivered under the name it is stored as: its acknowledgement removes it.
        assert!(
            dir.path().join(format!("{}.pb", ev.event_id)).exists(),
            "a spooled event's id names its file: {:?}",
            ev.event_id
        );
        assert!(seen.insert(ev.event_id.clone()), "each event once");
        let again = pb::JobEvent::decode(ev.encode_to_vec().as_slice()).expect("re-encoded event decodes");
        assert_eq!(&again, ev, "a spooled event reads back as itself");
        // What the session sends: bounded, within the limit, and bounding twice changes nothing.
        let mut once = ev.clone();
        cofre_agent::bounds::job_event(&mut once);
        assert!(once.encoded_len() <= cofre_agent::bounds::MAX_EVENT_BYTES);
        let mut twice = once.clone();
        cofre_agent::bounds::job_event(&mut twice);
        assert_eq!(twice, once, "bounding is idempotent");
    }
    // Nothing is deleted: every file is pending, or moved aside as corrupt.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let corrupt = left.iter().filter(|n| n.ends_with(".corrupt")).count();
    assert_eq!(pending.len() + corrupt, files.len(), "every file kept: {left:?}");
    // Acknowledging every pending event empties the spool of them.
    for ev in &pending {
        spool.ack(&ev.event_id);
    }
    assert!(spool.pending().is_empty(), "every delivered event can be acknowledged away");
}

#[test]
fn spooled_events_read_back_as_themselves_or_are_moved_aside_never_a_panic() {
    let seeds: Vec<Vec<u8>> = corpus("spool").into_iter().map(|(_, b)| b).collect();
    check_spool(&seeds);
    for (name, raw) in corpus("spool") {
        if name.starts_with("valid") {
            let ev = pb::JobEvent::decode(raw.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ev.encode_to_vec(), raw, "{name} is canonical");
        }
        check_spool(&[raw]);
    }
    runner(1_500)
        .run(&proptest::collection::vec(inputs("spool"), 1..5), |files| {
            check_spool(&files);
            Ok(())
        })
        .unwrap();
}

/// Every event the spool accepts is stored bounded and read back as exactly that.
#[test]
fn a_pushed_event_reads_back_as_its_bounded_self() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::new(dir.path().to_path_buf());
    let decoded = std::cell::Cell::new(0);
    runner(900)
        .run(&prop_oneof![2 => inputs("spool"), 1 => hostile_event()], |raw| {
            let Ok(ev) = pb::JobEvent::decode(raw.as_slice()) else { return Ok(()) };
            decoded.set(decoded.get() + 1);
            let mut bounded = ev.clone();
            cofre_agent::bounds::job_event(&mut bounded);
            match spool.push(&ev) {
                Ok(pushed) => {
                    assert_eq!(pushed, cofre_agent::spool::Pushed::Written);
                    let pending = spool.pending();
                    assert_eq!(pending, vec![bounded], "stored as bounded, read back as stored");
                    spool.ack(&ev.event_id);
                }
                Err(e) => {
                    assert!(uuid::Uuid::try_parse(&ev.event_id).is_err(), "refused only for its id: {e}");
                }
            }
            assert!(spool.pending().is_empty());
            Ok(())
        })
        .unwrap();
    assert!(decoded.get() > 350, "only {} of 900 events decoded", decoded.get());
}

// ---- the schedule's bookkeeping ----

fn check_schedule(raw: &[u8]) {
    let now: jiff::Timestamp = "2026-12-02T03:30:00Z".parse().unwrap();
    let sched = Scheduler::load(Some(raw), b"machine", now);
    let saved = sched.to_json();
    let value: serde_json::Value = serde_json::from_slice(&saved).expect("the saved schedule is JSON");
    let policies = value["policies"].as_object().expect("policies");
    for id in policies.keys() {
        let s = sched.state(id).expect("listed policies have a state");
        assert!(s.first_seen <= now && s.last_slot.is_none_or(|t| t <= now), "no time in the future");
    }
    let again = Scheduler::load(Some(&saved), b"machine", now);
    assert_eq!(again.to_json(), saved, "the schedule survives a save and a load");
}

#[test]
fn schedules_load_without_future_times_and_survive_a_save_never_a_panic() {
    for (_, raw) in corpus("schedule") {
        check_schedule(&raw);
    }
    runner(3_000)
        .run(&inputs("schedule"), |raw| {
            check_schedule(&raw);
            Ok(())
        })
        .unwrap();
}

// ---- identity and enrollment token ----

#[test]
fn identities_and_tokens_are_read_or_refused_clearly_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(dir.path()).unwrap();
    let check_identity = |raw: &[u8]| {
        std::fs::write(dir.path().join("identity.json"), raw).unwrap();
        match state.identity() {
            Ok(id) => {
                let again: cofre_agent::state::Identity =
                    serde_json::from_slice(&serde_json::to_vec(&id).unwrap()).unwrap();
                assert_eq!(again.machine_id, id.machine_id);
            }
            Err(e) => assert!(format!("{e:#}").contains("identity.json"), "the error names the file: {e:#}"),
        }
    };
    let check_token = |raw: &[u8]| {
        let s = String::from_utf8_lossy(raw);
        match cofre_dial::parse_token(&s) {
            Ok(t) => {
                assert_eq!(t.ca_fingerprint.len(), 64);
                assert!(t.ca_fingerprint.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                assert_eq!(t.whole, s.trim());
            }
            Err(e) => assert!(e.to_string().contains("enrollment token"), "{e}"),
        }
    };
    for (_, raw) in corpus("identity") {
        check_identity(&raw);
    }
    for (_, raw) in corpus("token") {
        check_token(&raw);
    }
    runner(3_000)
        .run(&(inputs("identity"), inputs("token")), |(identity, token)| {
            check_identity(&identity);
            check_token(&token);
            Ok(())
        })
        .unwrap();
}

// ---- the corpus ----

mod seeds {
    use super::*;

    pub fn plan() -> pb::Plan {
        let repo = pb::PlanRepository {
            id: "0190a1b2-0000-7000-8000-00000000000a".into(),
            url: "https://store.example.org:8000/finance/0190a1b2".into(),
            username: String::new(),
            password: String::new(),
            repository_password: "k7Qm1x…repository-password".into(),
            restic_id: "5f1c0a7e".repeat(8),
            ca_certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            allow_insecure_http: false,
            client_certificate: true,
        };
        let hook = |name: &str, on_failure| pb::Hook { name: name.into(), timeout_seconds: 600, on_failure };
        let nightly = pb::PlanPolicy {
            id: "0190a1b2-0000-7000-8000-0000000000b1".into(),
            name: "nightly".into(),
            repository_id: repo.id.clone(),
            paths: vec!["/etc".into(), "/home".into()],
            excludes: vec!["*.tmp".into()],
            schedule: Some(pb::Schedule {
                cron: "30 2 * * *".into(),
                timezone: "Europe/Lisbon".into(),
                jitter_seconds: 900,
                window_start: "01:00".into(),
                window_end: "06:00".into(),
                ..Default::default()
            }),
            iexcludes: vec!["*.ISO".into()],
            exclude_if_present: vec![".nobackup".into()],
            exclude_larger_than_bytes: 1 << 30,
            one_file_system: true,
            tags: vec!["finance".into()],
            before_hook: Some(hook("dump-db", pb::HookOnFailure::Fail as i32)),
            after_hook: Some(hook("notify", pb::HookOnFailure::Continue as i32)),
            revision: 3,
            ..Default::default()
        };
        let hourly = pb::PlanPolicy {
            id: "0190a1b2-0000-7000-8000-0000000000b2".into(),
            name: "hourly".into(),
            repository_id: repo.id.clone(),
            paths: vec!["/srv".into()],
            schedule: Some(pb::Schedule { interval_seconds: 3600, ..Default::default() }),
            revision: 1,
            ..Default::default()
        };
        pb::Plan { version: 0x1234_5678_9abc, repositories: vec![repo], policies: vec![nightly, hourly] }
    }

    /// A plan from a controller older than schedules: the interval on the policy itself.
    pub fn legacy_plan() -> pb::Plan {
        let mut plan = plan();
        for p in &mut plan.policies {
            p.schedule = None;
            p.interval_seconds = 86_400;
        }
        plan
    }

    pub fn finished() -> pb::JobEvent {
        pb::JobEvent {
            event_id: "0190a1b2-0000-7000-8000-0000000000e1".into(),
            job_id: "0190a1b2-0000-7000-8000-0000000000f1".into(),
            kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
                policy_id: "0190a1b2-0000-7000-8000-0000000000b1".into(),
                trigger: pb::TriggerKind::Schedule as i32,
                started_at: Some(prost_types::Timestamp { seconds: 1_796_176_800, nanos: 125_000_000 }),
                finished_at: Some(prost_types::Timestamp { seconds: 1_796_177_100, nanos: 0 }),
                outcome: pb::JobOutcome::SucceededWithWarnings as i32,
                stats: Some(pb::BackupStats {
                    snapshot_id: "9e".repeat(32),
                    files_new: 12,
                    files_changed: 3,
                    files_unmodified: 2_800,
                    dirs_new: 1,
                    dirs_changed: 2,
                    dirs_unmodified: 300,
                    files_processed: 2_815,
                    bytes_processed: 221_000_000,
                    bytes_added: 1_048_576,
                    bytes_added_packed: 524_288,
                    snapshot_time: Some(prost_types::Timestamp { seconds: 1_796_176_801, nanos: 0 }),
                    paths: vec!["/etc".into(), "/home".into()],
                    hostname: "finance-01".into(),
                    utc_offset_seconds: 3600,
                    tags: vec!["cofre".into(), "finance".into()],
                }),
                warnings: vec![
                    "/home/a/locked.db: permission denied".into(),
                    "… and 3 more warnings, not listed".into(),
                ],
                error: None,
                repository_id: "0190a1b2-0000-7000-8000-00000000000a".into(),
                overran_window: false,
                log: "== before hook dump-db: exit 0 in 2.1 s\ndumped 3 databases\n".into(),
            })),
        }
    }

    pub fn failed() -> pb::JobEvent {
        pb::JobEvent {
            event_id: "0190a1b2-0000-7000-8000-0000000000e2".into(),
            job_id: "0190a1b2-0000-7000-8000-0000000000f2".into(),
            kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
                policy_id: "0190a1b2-0000-7000-8000-0000000000b2".into(),
                trigger: pb::TriggerKind::RunNow as i32,
                started_at: Some(prost_types::Timestamp { seconds: 1_796_180_000, nanos: 0 }),
                finished_at: Some(prost_types::Timestamp { seconds: 1_796_180_031, nanos: 0 }),
                outcome: pb::JobOutcome::Failed as i32,
                error: Some(pb::JobError {
                    message: "cannot reach the repository: connection refused".into(),
                    retry_class: pb::RetryClass::Temporary as i32,
                }),
                repository_id: "0190a1b2-0000-7000-8000-00000000000a".into(),
                ..Default::default()
            })),
        }
    }

    pub fn started() -> pb::JobEvent {
        pb::JobEvent {
            event_id: "0190a1b2-0000-7000-8000-0000000000e3".into(),
            job_id: "0190a1b2-0000-7000-8000-0000000000f1".into(),
            kind: Some(pb::job_event::Kind::Started(pb::JobStarted {
                policy_id: "0190a1b2-0000-7000-8000-0000000000b1".into(),
                trigger: pb::TriggerKind::Schedule as i32,
                started_at: Some(prost_types::Timestamp { seconds: 1_796_176_800, nanos: 125_000_000 }),
            })),
        }
    }

    pub fn schedule_v2() -> &'static str {
        r#"{
  "version": 2,
  "policies": {
    "0190a1b2-0000-7000-8000-0000000000b1": {
      "first_seen": "2026-11-01T10:00:00Z",
      "last_slot": "2026-12-01T02:30:00Z"
    },
    "0190a1b2-0000-7000-8000-0000000000b2": {
      "first_seen": "2026-11-01T10:00:00Z",
      "last_slot": null
    }
  }
}"#
    }

    pub fn half(b: &[u8]) -> Vec<u8> {
        b[..b.len() / 2].to_vec()
    }
}

#[test]
#[ignore = "rewrites the checked-in corpus; run by hand after changing a seed"]
fn write_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let plan = seeds::plan().encode_to_vec();
    write("plan", "valid.pb", &plan);
    write("plan", "valid-legacy-interval.pb", &seeds::legacy_plan().encode_to_vec());
    write("plan", "valid-empty.pb", &[]);
    write("plan", "truncated.pb", &seeds::half(&plan));
    for (name, ev) in [
        ("valid-finished", seeds::finished()),
        ("valid-failed", seeds::failed()),
        ("valid-started", seeds::started()),
    ] {
        write("spool", &format!("{name}.pb"), &ev.encode_to_vec());
    }
    write("spool", "truncated-finished.pb", &seeds::half(&seeds::finished().encode_to_vec()));
    write("schedule", "v2.json", seeds::schedule_v2().as_bytes());
    write("schedule", "v1.json", br#"{"0190a1b2-0000-7000-8000-0000000000b2":"2026-12-01T09:00:00Z"}"#);
    write("schedule", "future.json", seeds::schedule_v2().replace("2026-12-01", "2031-12-01").as_bytes());
    write("schedule", "truncated.json", &seeds::half(seeds::schedule_v2().as_bytes()));
    write(
        "identity",
        "identity.json",
        br#"{
  "machine_id": "0190a1b2-0000-7000-8000-000000000001",
  "controller_url": "https://cofre.example.org:7443",
  "ca_fingerprint": "3b1f6a0e9d2c4b5a6978e1f0d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f"
}"#,
    );
    write(
        "token",
        "valid.txt",
        b"cofre1.0190a1b2-0000-7000-8000-0000000000c1.s3cr3t-Zm9vYmFy.3B1F6A0E9D2C4B5A6978E1F0D2C3B4A5968778695A4B3C2D1E0F1A2B3C4D5E6F\n",
    );
    write("token", "truncated.txt", b"cofre1.0190a1b2-0000-7000-8000-0000000000c1.s3cr3t");
}
