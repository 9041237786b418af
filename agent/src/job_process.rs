//! Each backup runs in a child process (`cofre-agent backup-job`, the same binary, through
//! `cofre_engine::child`): the agent that waits for its next run never holds the engine's index
//! and buffers, a crash or an out-of-memory kill of the engine fails that job instead of the
//! agent, and a job is cancelled by killing its process.
//!
//! A killed backup leaves its repository consistent (packs are only referenced once an index
//! names them, and the snapshot is written last) but may leave its restic lock behind: the
//! child records the lock's id in a file beside the job's running marker, and the agent removes
//! that lock after the child ends without doing so itself — also at the next start after a
//! crash — so nobody ever has to unlock a repository by hand.
//!
//! While it runs, the child prints the engine's progress every [`progress_every`] (progress
//! lines before its result, `cofre_engine::child`), which [`run`] hands to its caller.

use std::path::PathBuf;
use std::time::Duration;

use cofre_engine::child::{ChildError, report_progress_every, run_json_reporting};
use cofre_engine::{
    BackupProgress, BackupReport, BackupRequest, LockOptions, ProgressSample, RepoTarget, RetryClass,
    SourceFilters, WireTarget,
};
use serde::{Deserialize, Serialize};

/// The hidden subcommand that runs one job.
pub const SUBCOMMAND: &str = "backup-job";

/// Largest result a child may print (warnings can be many).
const MAX_RESULT_BYTES: u64 = 64 * 1024 * 1024;

/// How long a backup waits for the controller's maintenance (an exclusive lock) to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// How often a running backup's progress is sampled and sent: 10,000 machines backing up at
/// once make about 670 small updates a second, each one UPDATE of one row.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// [`PROGRESS_EVERY`], or what `COFRE_AGENT_PROGRESS_SECONDS` says (1 to 3,600; for tests that
/// cannot wait for several samples).
pub fn progress_every() -> Duration {
    std::env::var("COFRE_AGENT_PROGRESS_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .map_or(PROGRESS_EVERY, Duration::from_secs)
}

/// Everything a child needs for one backup. Debug shows no secrets.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildJob {
    pub target: WireTarget,
    pub expected_restic_id: String,
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    #[serde(default)]
    pub iexcludes: Vec<String>,
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    #[serde(default)]
    pub exclude_larger_than: Option<u64>,
    #[serde(default)]
    pub one_file_system: bool,
    pub hostname: String,
    pub tags: Vec<String>,
    pub cache_dir: Option<PathBuf>,
    /// Where the child records the id of the repository lock it holds.
    pub lock_record: Option<PathBuf>,
    pub lock_wait_seconds: u64,
    /// How often the child prints its progress; none when absent (a parent from before).
    #[serde(default)]
    pub progress_seconds: Option<u64>,
}

impl ChildJob {
    pub fn new(target: &RepoTarget, req: &BackupRequest, cache_dir: Option<PathBuf>) -> Self {
        ChildJob {
            target: WireTarget::from(target),
            expected_restic_id: req.expected_restic_id.clone(),
            paths: req.paths.clone(),
            excludes: req.excludes.clone(),
            iexcludes: req.filters.iexcludes.clone(),
            exclude_if_present: req.filters.exclude_if_present.clone(),
            exclude_larger_than: req.filters.exclude_larger_than,
            one_file_system: req.filters.one_file_system,
            hostname: req.hostname.clone(),
            tags: req.tags.clone(),
            cache_dir,
            lock_record: req.lock.record.clone(),
            lock_wait_seconds: req.lock.wait.as_secs(),
            progress_seconds: Some(progress_every().as_secs()),
        }
    }

    fn progress_every(&self) -> Option<Duration> {
        self.progress_seconds.filter(|s| *s > 0).map(Duration::from_secs)
    }

    fn into_engine(self) -> (RepoTarget, BackupRequest, Option<PathBuf>) {
        let req = BackupRequest {
            expected_restic_id: self.expected_restic_id,
            paths: self.paths,
            excludes: self.excludes,
            filters: SourceFilters {
                iexcludes: self.iexcludes,
                exclude_if_present: self.exclude_if_present,
                exclude_larger_than: self.exclude_larger_than,
                one_file_system: self.one_file_system,
            },
            hostname: self.hostname,
            tags: self.tags,
            lock: LockOptions {
                wait: Duration::from_secs(self.lock_wait_seconds),
                record: self.lock_record,
                stale: Vec::new(),
            },
        };
        (self.target.into(), req, self.cache_dir)
    }
}

/// What a child prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ChildResult {
    Succeeded { report: Box<BackupReport> },
    Failed { message: String, retry_class: RetryClass },
}

/// A failed job as the agent reports it.
#[derive(Debug)]
pub struct JobFailure {
    pub message: String,
    pub retry_class: RetryClass,
    pub cancelled: bool,
}

/// `cofre-agent backup-job`: reads a [`ChildJob`] from stdin, runs it, prints a [`ChildResult`].
pub fn child_main() -> std::process::ExitCode {
    cofre_engine::child::serve(
        SUBCOMMAND,
        |message| ChildResult::Failed { message, retry_class: RetryClass::Permanent },
        |job: ChildJob| {
            let every = job.progress_every();
            let (target, req, cache_dir) = job.into_engine();
            cofre_engine::set_cache_dir(cache_dir);
            let progress = BackupProgress::default();
            let outcome = report_progress_every(
                every,
                || progress.sample(),
                || cofre_engine::backup_with_progress(&target, &req, &progress),
            );
            match outcome {
                Ok(report) => ChildResult::Succeeded { report: Box::new(report) },
                Err(e) => ChildResult::Failed { message: e.to_string(), retry_class: e.retry_class() },
            }
        },
    )
}

/// Runs one backup in a child process and waits for it, or until `cancel` resolves (the child
/// is then killed). The child is also killed if this future is dropped (agent shutdown). Its
/// progress goes to `on_progress` as the child prints it.
pub async fn run(
    job: &ChildJob,
    cancel: impl std::future::Future<Output = ()>,
    on_progress: impl FnMut(ProgressSample),
) -> Result<BackupReport, JobFailure> {
    let fail = |message: String| JobFailure { message, retry_class: RetryClass::Temporary, cancelled: false };
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("cannot find the agent's own binary: {e}")))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg(SUBCOMMAND);
    if crate::LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        cmd.env("COFRE_AGENT_LOG_JSON", "1");
    }
    let result =
        run_json_reporting::<_, ChildResult, _>(cmd, job, MAX_RESULT_BYTES, cancel, on_progress).await;
    let outcome = match result {
        Ok(ChildResult::Succeeded { report }) => Ok(*report),
        Ok(ChildResult::Failed { message, retry_class }) => {
            Err(JobFailure { message, retry_class, cancelled: false })
        }
        Err(ChildError::Cancelled) => Err(JobFailure {
            message: "cancelled on request".into(),
            retry_class: RetryClass::Permanent,
            cancelled: true,
        }),
        Err(ChildError::Failed(m)) => Err(fail(m.replace("job process", "backup process"))),
    };
    if let Some(record) = &job.lock_record {
        remove_left_lock(&job.target.clone().into(), record).await;
    }
    outcome
}

/// Removes the repository lock a child recorded and did not remove itself (it was killed).
pub async fn remove_left_lock(target: &RepoTarget, record: &std::path::Path) {
    match cofre_engine::child::remove_recorded_lock(target, record).await {
        Ok(true) => tracing::info!("removed the repository lock a stopped backup left behind"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove the lock a stopped backup left; restic ignores it after 30 minutes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::{ExposeSecret, SecretString};

    #[test]
    fn the_job_round_trips_and_hides_its_secrets_from_debug() {
        let target = RepoTarget {
            url: "https://store.example/r".into(),
            username: None,
            password: Some(SecretString::from("storage-secret".to_string())),
            repository_password: SecretString::from("repo-secret".to_string()),
            ca_cert_file: None,
            client_identity_file: Some("/var/lib/cofre-agent/identity.pem".into()),
            allow_insecure_http: false,
        };
        let req = BackupRequest {
            expected_restic_id: "ab".repeat(32),
            paths: vec!["/etc".into()],
            excludes: vec!["*.tmp".into()],
            filters: SourceFilters {
                iexcludes: vec!["*.ISO".into()],
                one_file_system: true,
                ..Default::default()
            },
            hostname: "pc-01".into(),
            tags: vec!["cofre".into()],
            lock: LockOptions {
                wait: Duration::from_secs(60),
                record: Some("/run/lock.id".into()),
                stale: vec![],
            },
        };
        let job = ChildJob::new(&target, &req, Some("/cache".into()));
        let debug = format!("{job:?}");
        assert!(!debug.contains("secret"), "{debug}");
        let back: ChildJob = serde_json::from_slice(&serde_json::to_vec(&job).unwrap()).unwrap();
        let (t, r, cache) = back.into_engine();
        assert_eq!(t.repository_password.expose_secret(), "repo-secret");
        assert_eq!(t.password.unwrap().expose_secret(), "storage-secret");
        assert_eq!(t.client_identity_file, target.client_identity_file);
        assert_eq!(r.paths, req.paths);
        assert_eq!(r.filters, req.filters);
        assert_eq!(r.lock.record, req.lock.record);
        assert_eq!(r.lock.wait, Duration::from_secs(60));
        assert_eq!(cache.as_deref(), Some(std::path::Path::new("/cache")));
    }
}
