//! The job queue and its bookkeeping: a job accepted once, a busy policy not scheduled again,
//! the schedule kept across restarts, a cancel before a job's turn, and the tags a snapshot gets.

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
    assert!(req.lock.record.is_some());
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
