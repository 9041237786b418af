//! The job queue and its bookkeeping: a job accepted once, a busy policy not scheduled again,
//! the schedule kept across restarts, a cancel before a job's turn, the tags a snapshot gets, and
//! what a job stopped by the agent's crash is reported as.

use super::*;

/// Keeps the state dir and the job queue's receiver alive for the test's duration.
#[allow(dead_code, reason = "held only to be dropped at the end of the test")]
struct Held(tempfile::TempDir, mpsc::Receiver<JobRequest>);

fn agent() -> (Held, Arc<Agent>) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let (agent, rx) =
        Agent::new(state, Arc::new(crate::scheduler::SystemClock::default()), dir.path().join("hooks"));
    let plan = pb::Plan {
        version: 1,
        repositories: vec![],
        policies: vec![pb::PlanPolicy {
            id: "p1".into(),
            schedule: Some(pb::Schedule { interval_seconds: 3600, ..Default::default() }),
            ..Default::default()
        }],
    };
    agent.set_plan(plan).unwrap();
    (Held(dir, rx), agent)
}

fn job(id: Uuid) -> JobRequest {
    JobRequest { job_id: id, policy_id: "p1".into(), trigger: pb::TriggerKind::RunNow, window_end: None }
}

#[test]
fn a_policy_with_a_job_queued_is_not_scheduled_again() {
    let (_d, agent) = agent();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(agent.submit(job(a)));
    assert!(!agent.submit(job(a)), "the same job is accepted once");
    assert!(agent.submit(job(b)));
    assert!(agent.due_jobs().is_empty(), "busy");
    agent.done_with("p1");
    assert!(agent.due_jobs().is_empty(), "one job still queued");
    agent.done_with("p1");
    assert_eq!(agent.due_jobs().len(), 1);
    // The schedule survives a restart of the agent.
    let (again, _rx) =
        Agent::new(agent.state.clone(), Arc::new(crate::scheduler::SystemClock::default()), "/x".into());
    assert!(again.due_jobs().is_empty());
}

#[tokio::test]
async fn a_queued_job_cancelled_before_its_turn_ends_cancelled_without_running() {
    let (_d, agent) = agent();
    let id = Uuid::now_v7();
    assert!(agent.submit(job(id)));
    agent.cancel(id);
    let finished = agent.run_job(&job(id)).await.unwrap();
    assert_eq!(finished.outcome, pb::JobOutcome::Cancelled as i32);
    assert_eq!(agent.spool.pending().len(), 1, "the result is spooled");
    agent.cancel(Uuid::now_v7()); // unknown jobs are ignored
}

#[test]
fn snapshots_carry_the_policy_and_the_machine_as_tags() {
    let (_d, agent) = agent();
    {
        let mut plan = agent.plan.write().unwrap();
        let plan = plan.as_mut().unwrap();
        plan.repositories.push(pb::PlanRepository {
            id: "r".into(),
            url: "https://store.example/r".into(),
            restic_id: "ab".repeat(32),
            repository_password: "pw".into(),
            ..Default::default()
        });
        plan.policies[0].repository_id = "r".into();
        plan.policies[0].tags = vec!["finance".into()];
    }
    let (_, req, _) = agent.prepare("p1", Uuid::nil()).unwrap();
    assert!(req.tags.contains(&"cofre-policy:p1".to_string()));
    assert!(req.tags.iter().any(|t| t.starts_with("cofre-machine:")));
    assert!(req.tags.contains(&"finance".to_string()));
    let (_, req, _) = agent.prepare("p1", Uuid::from_u128(7)).unwrap();
    assert!(
        req.tags.contains(&"cofre-job:00000000-0000-0000-0000-000000000007".to_string()),
        "{:?}",
        req.tags
    );
    assert!(req.lock.record.is_some());
}

/// A plan whose policy writes to a repository nobody answers at (connection refused).
fn with_dead_repository(agent: &Agent) {
    let mut plan = agent.plan.write().unwrap();
    let plan = plan.as_mut().unwrap();
    plan.repositories.push(pb::PlanRepository {
        id: Uuid::from_u128(1).to_string(),
        url: "https://127.0.0.1:1/r".into(),
        restic_id: "ab".repeat(32),
        repository_password: "pw".into(),
        ..Default::default()
    });
    plan.policies[0].repository_id = Uuid::from_u128(1).to_string();
}

/// The running marker a job leaves while it runs, as a killed agent leaves it behind.
fn leave_marker(agent: &Agent, id: Uuid) -> PathBuf {
    let path = agent.state.running_dir().join(format!("{id}.json"));
    let marker = RunningMarker {
        job_id: id,
        policy_id: "p1".into(),
        trigger: pb::TriggerKind::RunNow as i32,
        started_at: Utc::now(),
    };
    std::fs::write(&path, serde_json::to_vec(&marker).unwrap()).unwrap();
    path
}

fn finished_of(ev: &pb::JobEvent) -> &pb::JobFinished {
    match &ev.kind {
        Some(pb::job_event::Kind::Finished(f)) => f,
        other => panic!("not a result: {other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_job_whose_repository_cannot_be_searched_is_reported_interrupted() {
    let (_d, agent) = agent();
    with_dead_repository(&agent);
    let id = Uuid::now_v7();
    let marker = leave_marker(&agent, id);
    let started = std::time::Instant::now();
    assert_eq!(agent.recover_interrupted().await, vec![id.to_string()], "listed in Hello");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(!marker.exists());
    let pending = agent.spool.pending();
    assert_eq!(pending.len(), 1);
    let f = finished_of(&pending[0]);
    assert_eq!(f.outcome, pb::JobOutcome::Interrupted as i32);
    let message = &f.error.as_ref().unwrap().message;
    assert!(message.contains("stopped") && message.contains("could not be searched"), "{message}");
    // Nothing left to recover at the next start.
    assert!(agent.recover_interrupted().await.is_empty());
    assert_eq!(agent.spool.pending().len(), 1);
}

#[tokio::test]
async fn a_stopped_job_whose_result_was_spooled_gets_no_second_result() {
    let (_d, agent) = agent();
    with_dead_repository(&agent);
    let id = Uuid::now_v7();
    let result = pb::JobFinished {
        policy_id: "p1".into(),
        outcome: pb::JobOutcome::Succeeded as i32,
        ..Default::default()
    };
    agent.spool.push_durable(&finished_event(id, result)).unwrap();
    let marker = leave_marker(&agent, id);
    assert!(agent.recover_interrupted().await.is_empty(), "not interrupted");
    assert!(!marker.exists());
    let pending = agent.spool.pending();
    assert_eq!(pending.len(), 1, "the spooled result only");
    assert_eq!(finished_of(&pending[0]).outcome, pb::JobOutcome::Succeeded as i32);
}

#[test]
fn a_snapshot_found_after_a_crash_is_reported_as_a_success_that_says_so() {
    let started_at = Utc::now() - chrono::Duration::minutes(10);
    let marker = RunningMarker {
        job_id: Uuid::now_v7(),
        policy_id: "p1".into(),
        trigger: pb::TriggerKind::Schedule as i32,
        started_at,
    };
    let report = cofre_engine::BackupReport {
        snapshot_id: "cd".repeat(32),
        snapshot_time: started_at + chrono::Duration::seconds(2),
        paths: vec!["/srv".into()],
        hostname: "pc-01".into(),
        utc_offset_seconds: 3600,
        tags: vec!["cofre".into(), format!("cofre-job:{}", marker.job_id)],
        files_new: 3,
        files_changed: 0,
        files_unmodified: 0,
        dirs_new: 1,
        dirs_changed: 0,
        dirs_unmodified: 0,
        files_processed: 3,
        bytes_processed: 300,
        bytes_added: 300,
        bytes_added_packed: 200,
        duration: std::time::Duration::from_secs(5),
        warnings: vec![],
        warnings_dropped: 0,
    };
    let now = Utc::now();
    let f = recover::recovered_result(&marker, "repo".into(), &report, now);
    assert_eq!(f.outcome, pb::JobOutcome::SucceededWithWarnings as i32);
    assert_eq!(f.repository_id, "repo");
    assert_eq!(f.trigger, pb::TriggerKind::Schedule as i32);
    assert_eq!(f.started_at, Some(ts(started_at)));
    assert_eq!(f.finished_at, Some(ts(started_at + chrono::Duration::seconds(7))), "the snapshot's end");
    let stats = f.stats.as_ref().unwrap();
    assert_eq!((stats.snapshot_id.as_str(), stats.files_new), (report.snapshot_id.as_str(), 3));
    assert_eq!(stats.tags, report.tags);
    assert_eq!(f.warnings.len(), 1);
    assert!(
        f.warnings[0].starts_with(recover::RECOVERED) && f.warnings[0].contains("cdcdcdcd"),
        "{:?}",
        f.warnings
    );
    assert!(f.error.is_none());
    // A snapshot clock ahead of the agent's: the finish is never after now.
    let ahead = cofre_engine::BackupReport { snapshot_time: now + chrono::Duration::hours(1), ..report };
    let f = recover::recovered_result(&marker, "repo".into(), &ahead, now);
    assert_eq!(f.finished_at, Some(ts(now)));
}

/// A real full filesystem: a small tmpfs mounted over a temporary directory and filled to the
/// last byte, until [`FullDisk::free`]. Needs the right to mount (root in the test container);
/// elsewhere the tests using it say so and pass without running.
pub(crate) struct FullDisk {
    dir: tempfile::TempDir,
    filler: Option<std::path::PathBuf>,
}

impl FullDisk {
    pub(crate) fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "cofre-full-test"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); the disk-full test needs one");
            return None;
        }
        Some(Self { dir, filler: None })
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the filesystem: every further write fails with ENOSPC.
    pub(crate) fn fill(&mut self) {
        use std::io::Write as _;
        let p = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8]);
        while f.write_all(&[0u8]).is_ok() {}
        let _ = f.flush();
        self.filler = Some(p);
    }

    /// Space returns.
    pub(crate) fn free(&mut self) {
        if let Some(p) = self.filler.take() {
            std::fs::remove_file(p).unwrap();
        }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Agent spool disk full (#13): a job that ends while the state directory's filesystem is
/// full keeps its result (delivered from memory), and writes it when space returns.
#[tokio::test]
async fn a_result_that_finds_the_disk_full_is_not_lost() {
    let Some(mut disk) = FullDisk::mount() else { return };
    let state = StateDir::open(&disk.path().join("state")).unwrap();
    let (agent, _rx) =
        Agent::new(state, Arc::new(crate::scheduler::SystemClock::default()), disk.path().join("hooks"));
    // A policy whose repository is missing: the job fails at once, without the engine.
    let plan = pb::Plan {
        version: 1,
        repositories: vec![],
        policies: vec![pb::PlanPolicy {
            id: "p1".into(),
            repository_id: "gone".into(),
            ..Default::default()
        }],
    };
    agent.set_plan(plan).unwrap();
    disk.fill();
    let id = Uuid::now_v7();
    let finished = agent.run_job(&job(id)).await;
    assert!(finished.is_ok(), "the job is recorded even with the disk full: {:?}", finished.err());
    let pending = agent.spool.pending();
    assert_eq!(
        pending.len(),
        1,
        "the result waits (in memory) to be delivered; the progress event is dropped"
    );
    assert!(matches!(pending[0].kind, Some(pb::job_event::Kind::Finished(_))));
    assert_eq!(agent.spool.dropped_progress(), 1, "the started event, counted");
    disk.free();
    agent.spool.retry_held();
    let on_disk: Vec<_> =
        std::fs::read_dir(agent.state.spool_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(on_disk.len(), 1, "written once space returns, and no temporary file left: {on_disk:?}");
    assert_eq!(agent.spool.pending(), pending, "the same result, once");
}

/// Log lines captured from `tracing` for the duration of a test (on this thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&lock(&self.0)).lines().map(String::from).collect()
    }
}

/// Agent spool disk full (#13), the whole rule on a real full filesystem: progress events are
/// dropped and counted, results are kept (delivered from memory, their job markers kept until
/// they are safe), one clear error names the directory and the space left, and everything is
/// written, with one line saying so, once space returns.
#[test]
fn on_a_full_disk_progress_is_dropped_and_counted_results_are_kept_and_written_when_space_returns() {
    let Some(mut disk) = FullDisk::mount() else { return };
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let state = StateDir::open(&disk.path().join("state")).unwrap();
    let spool = Spool::new(state.spool_dir());
    let marker = state.running_dir().join("job.json");
    std::fs::write(&marker, b"{}").unwrap();
    let event = |kind| pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: Uuid::now_v7().to_string(),
        kind: Some(kind),
    };
    let started = || event(pb::job_event::Kind::Started(pb::JobStarted::default()));
    let result = || {
        event(pb::job_event::Kind::Finished(pb::JobFinished {
            warnings: vec!["w".repeat(2_000); 20],
            ..Default::default()
        }))
    };
    disk.fill();

    let first = result();
    assert_eq!(spool.push_with_marker(&first, Some(marker.clone())).unwrap(), crate::spool::Pushed::Held);
    for _ in 0..3 {
        assert_eq!(spool.push(&started()).unwrap(), crate::spool::Pushed::Dropped);
    }
    let second = result();
    assert_eq!(spool.push(&second).unwrap(), crate::spool::Pushed::Held);
    spool.retry_held(); // a scheduler tick with the disk still full
    assert_eq!(
        (spool.dropped_progress(), spool.held()),
        (3, 2),
        "progress dropped and counted, results held"
    );
    let ids: Vec<String> = spool.pending().into_iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids,
        vec![first.event_id.clone(), second.event_id.clone()],
        "results are delivered from memory"
    );
    assert!(marker.exists(), "the job's marker stays while its result is only in memory");
    let files: Vec<_> = std::fs::read_dir(spool.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(files.is_empty(), "no partial or temporary file holds space: {files:?}");

    let errors: Vec<String> = logs.lines().into_iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error for the whole failure: {errors:#?}");
    let dir = spool.dir().display().to_string();
    assert!(
        errors[0].contains(&format!("cannot write the result spool in {dir} (0 bytes free there)"))
            && errors[0].contains("No space left on device"),
        "the error names the directory, the free space and the cause: {}",
        errors[0]
    );

    // The controller acknowledges the second result from memory: gone, nothing written.
    spool.ack(&second.event_id);
    disk.free();
    spool.retry_held();
    assert_eq!(spool.held(), 0);
    let pending = spool.pending();
    assert_eq!(pending.len(), 1, "the first result, written once");
    assert_eq!(pending[0].event_id, first.event_id);
    assert!(spool.dir().join(format!("{}.pb", first.event_id)).exists(), "now on disk");
    assert!(!marker.exists(), "its marker removed once it is safe");
    let again: Vec<String> =
        logs.lines().into_iter().filter(|l| l.contains("can be written again")).collect();
    assert_eq!(again.len(), 1, "{:#?}", logs.lines());
    assert!(again[0].contains("progress_events_dropped=3"), "{}", again[0]);
    // Writing works normally again, and a later failure is reported again.
    assert_eq!(spool.push(&started()).unwrap(), crate::spool::Pushed::Written);
}

#[test]
fn a_certificates_expiry_is_judged_on_the_controllers_clock() {
    let (_d, agent) = agent();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["m".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::minutes(30);
    let cert = params.self_signed(&key).unwrap();
    agent.state.save_certificate(&cert.pem(), &key.serialize_pem()).unwrap();
    assert_eq!(agent.certificate_expired(), None, "valid for 30 more minutes here");
    assert!(agent.certificate_seconds_left().is_some_and(|s| (1700..=1800).contains(&s)));
    // The controller's clock is an hour ahead of this machine's: there, it has expired.
    let local = jiff::Timestamp::now();
    agent.learn_controller_time(local + jiff::SignedDuration::from_hours(1), local);
    assert!(agent.certificate_expired().is_some(), "expired on the controller's clock");
    assert!(agent.certificate_seconds_left().is_some_and(|s| s < 0));
}
