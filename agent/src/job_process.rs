//! Each backup runs in a child process (`cofre-agent backup-job`, the same binary): the agent
//! that waits for its next run never holds the engine's index and buffers (it stays small when
//! idle, also right after a large job), a crash or an out-of-memory kill of the engine fails
//! that job instead of the agent, and a job can be stopped by killing its process.
//!
//! The parent writes the job (secrets included) to the child's stdin — never to argv, the
//! environment or disk — and reads one JSON result from its stdout; the child's logs go to
//! stderr, which it shares with the agent. The child starts with the engine's malloc settings
//! (`cofre_engine::job_process_env`), which keep its peak memory down.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::Stdio;

use cofre_engine::{BackupReport, BackupRequest, RepoTarget, RetryClass};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The hidden subcommand that runs one job.
pub const SUBCOMMAND: &str = "backup-job";

/// Largest result a child may print (warnings can be many).
const MAX_RESULT_BYTES: u64 = 64 * 1024 * 1024;

/// Everything a child needs for one backup. Debug shows no secrets.
#[derive(Serialize, Deserialize)]
pub struct ChildJob {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub repository_password: String,
    pub ca_cert_file: Option<PathBuf>,
    pub client_identity_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
    pub expected_restic_id: String,
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    pub hostname: String,
    pub tags: Vec<String>,
    pub cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for ChildJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildJob").field("url", &self.url).field("paths", &self.paths).finish_non_exhaustive()
    }
}

impl ChildJob {
    pub fn new(target: &RepoTarget, req: &BackupRequest, cache_dir: Option<PathBuf>) -> Self {
        ChildJob {
            url: target.url.clone(),
            username: target.username.clone(),
            password: target.password.as_ref().map(|p| p.expose_secret().to_string()),
            repository_password: target.repository_password.expose_secret().to_string(),
            ca_cert_file: target.ca_cert_file.clone(),
            client_identity_file: target.client_identity_file.clone(),
            allow_insecure_http: target.allow_insecure_http,
            expected_restic_id: req.expected_restic_id.clone(),
            paths: req.paths.clone(),
            excludes: req.excludes.clone(),
            hostname: req.hostname.clone(),
            tags: req.tags.clone(),
            cache_dir,
        }
    }

    fn into_engine(self) -> (RepoTarget, BackupRequest, Option<PathBuf>) {
        let target = RepoTarget {
            url: self.url,
            username: self.username,
            password: self.password.map(SecretString::from),
            repository_password: SecretString::from(self.repository_password),
            ca_cert_file: self.ca_cert_file,
            client_identity_file: self.client_identity_file,
            allow_insecure_http: self.allow_insecure_http,
        };
        let req = BackupRequest {
            expected_restic_id: self.expected_restic_id,
            paths: self.paths,
            excludes: self.excludes,
            hostname: self.hostname,
            tags: self.tags,
        };
        (target, req, self.cache_dir)
    }
}

/// What a child prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ChildResult {
    Succeeded { report: BackupReport },
    Failed { message: String, retry_class: RetryClass },
}

/// A failed job as the agent reports it.
#[derive(Debug)]
pub struct JobFailure {
    pub message: String,
    pub retry_class: RetryClass,
}

/// `cofre-agent backup-job`: reads a [`ChildJob`] from stdin, runs it, prints a [`ChildResult`].
/// Exits 0 whenever it could print a result (the result says whether the backup worked).
pub fn child_main() -> std::process::ExitCode {
    // Die with the agent: a backup nobody waits for would only race the next one.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        eprintln!("backup-job: the agent is gone; not starting");
        return std::process::ExitCode::FAILURE;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(16 * 1024 * 1024).read_to_end(&mut input) {
        eprintln!("backup-job: cannot read the job from stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match serde_json::from_slice::<ChildJob>(&input) {
        Err(e) => ChildResult::Failed {
            message: format!("the agent sent a malformed job: {e}"),
            retry_class: RetryClass::Permanent,
        },
        Ok(job) => {
            let (target, req, cache_dir) = job.into_engine();
            cofre_engine::set_cache_dir(cache_dir);
            match cofre_engine::backup(&target, &req) {
                Ok(report) => ChildResult::Succeeded { report },
                Err(e) => ChildResult::Failed { message: e.to_string(), retry_class: e.retry_class() },
            }
        }
    };
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &result).map_err(std::io::Error::from).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backup-job: cannot hand the result back: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one backup in a child process and waits for it. The child is killed if this future
/// is dropped (agent shutdown).
pub async fn run(job: &ChildJob) -> Result<BackupReport, JobFailure> {
    let fail = |message: String| JobFailure { message, retry_class: RetryClass::Temporary };
    let exe =
        std::env::current_exe().map_err(|e| fail(format!("cannot find the agent's own binary: {e}")))?;
    let mut cmd = tokio::process::Command::new(&exe);
    let (key, value) = cofre_engine::job_process_env();
    cmd.env(key, value);
    if crate::LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        cmd.env("COFRE_AGENT_LOG_JSON", "1");
    }
    let mut child = cmd
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start the backup process {}: {e}", exe.display())))?;
    let input = serde_json::to_vec(job).map_err(|e| fail(format!("cannot encode the job: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin for the backup process".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| fail("no stdout for the backup process".into()))?;
    // Feed the job and read the result concurrently, so neither pipe can fill up and block.
    let feed = async move {
        let r = stdin.write_all(&input).await;
        drop(stdin);
        r
    };
    let mut output = Vec::new();
    let mut limited = stdout.take(MAX_RESULT_BYTES);
    let read = limited.read_to_end(&mut output);
    let (fed, read) = tokio::join!(feed, read);
    let status = child.wait().await.map_err(|e| fail(format!("lost the backup process: {e}")))?;
    if let Err(e) = fed {
        return Err(fail(format!("cannot hand the job to the backup process: {e}")));
    }
    read.map_err(|e| fail(format!("cannot read the backup process's result: {e}")))?;
    match serde_json::from_slice::<ChildResult>(&output) {
        Ok(ChildResult::Succeeded { report }) => Ok(report),
        Ok(ChildResult::Failed { message, retry_class }) => Err(JobFailure { message, retry_class }),
        Err(_) => Err(fail(describe_exit(status))),
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (_, Some(9)) => "the backup process was killed (signal 9: out of memory, or stopped by hand)".into(),
        (_, Some(sig)) => format!("the backup process died on signal {sig}"),
        (Some(code), _) => format!("the backup process exited with status {code} without a result"),
        _ => "the backup process ended without a result".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            hostname: "pc-01".into(),
            tags: vec!["cofre".into()],
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
        assert_eq!(cache.as_deref(), Some(std::path::Path::new("/cache")));
    }

    #[test]
    fn a_dead_child_is_described() {
        use std::os::unix::process::ExitStatusExt as _;
        let killed = describe_exit(std::process::ExitStatus::from_raw(9));
        assert!(killed.contains("killed"), "{killed}");
        let exited = describe_exit(std::process::ExitStatus::from_raw(3 << 8));
        assert!(exited.contains("status 3"), "{exited}");
    }
}
