//! Engine jobs in a child process of the same binary: the agent runs every backup this way
//! (`cofre-agent backup-job`), the controller every maintenance job (`cofre-controller
//! maintenance-job`). The parent stays small while it waits (the engine's index and buffers
//! live and die with the child), a crash or an out-of-memory kill fails that job instead of the
//! service, and a job can be stopped by killing its process.
//!
//! The parent writes the job (secrets included) to the child's stdin as JSON — never to argv,
//! the environment or disk — and reads one JSON result from its stdout; the child's logs go to
//! stderr, which it shares with the parent. Before its result a child may print progress
//! lines (`{"progress":…}` and a newline, [`report_progress_every`]) that the parent hands to
//! its caller as they come ([`run_json_reporting`]); a parent that asked for none gets none. The child dies with its parent (`PR_SET_PDEATHSIG`),
//! so nothing keeps writing to a repository after whoever started it is gone.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// Largest job a child reads from stdin.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Why a child produced no result.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{0}")]
    Failed(String),
    /// The caller's cancel future resolved: the child was killed.
    #[error("cancelled")]
    Cancelled,
}

/// Runs `cmd` (the same binary with a hidden subcommand, prepared by the caller), feeds it
/// `input` and returns the JSON result it prints. The child is killed when `cancel` resolves,
/// and when this future is dropped.
///
/// # Errors
/// [`ChildError::Cancelled`], or [`ChildError::Failed`] describing how the child ended without a
/// readable result.
pub async fn run_json<I: Serialize, R: DeserializeOwned>(
    cmd: tokio::process::Command,
    input: &I,
    max_output: u64,
    cancel: impl Future<Output = ()>,
) -> Result<R, ChildError> {
    run_json_reporting::<I, R, serde::de::IgnoredAny>(cmd, input, max_output, cancel, |_| {}).await
}

/// A progress line: `{"progress": …}` on a line of its own, nothing else in it (a result is
/// never mistaken for one: [`serve`] prints it without a newline, and with other fields).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressLine<P> {
    progress: P,
}

/// [`run_json`], handing every progress line the child prints before its result (see
/// [`report_progress_every`]) to `on_progress` as it arrives. Lines that are not progress are
/// the result; progress lines that do not parse as `P` are ignored.
///
/// # Errors
/// As [`run_json`].
pub async fn run_json_reporting<I: Serialize, R: DeserializeOwned, P: DeserializeOwned>(
    mut cmd: tokio::process::Command,
    input: &I,
    max_output: u64,
    cancel: impl Future<Output = ()>,
    mut on_progress: impl FnMut(P),
) -> Result<R, ChildError> {
    let fail = |m: String| ChildError::Failed(m);
    let input = serde_json::to_vec(input).map_err(|e| fail(format!("cannot encode the job: {e}")))?;
    let (key, value) = crate::job_process_env();
    cmd.env(key, value);
    cmd.env(PARENT_ENV, std::process::id().to_string());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start the job process: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin for the job process".into()))?;
    let stdout = child.stdout.take().ok_or_else(|| fail("no stdout for the job process".into()))?;
    // Feed the job and read the result concurrently, so neither pipe can fill up and block.
    let feed = async move {
        let r = stdin.write_all(&input).await;
        drop(stdin);
        r
    };
    let mut output = Vec::new();
    let mut limited = tokio::io::BufReader::new(stdout.take(max_output));
    let read = async {
        let mut line = Vec::new();
        loop {
            line.clear();
            if limited.read_until(b'\n', &mut line).await? == 0 {
                return Ok::<_, std::io::Error>(());
            }
            match line.ends_with(b"\n").then(|| serde_json::from_slice::<ProgressLine<P>>(&line).ok()) {
                Some(Some(p)) => on_progress(p.progress),
                _ => output.extend_from_slice(&line),
            }
        }
    };
    let work = async {
        let (fed, read) = tokio::join!(feed, read);
        (fed, read)
    };
    tokio::pin!(cancel);
    let (fed, read) = tokio::select! {
        r = work => r,
        () = &mut cancel => {
            let _ = child.kill().await;
            return Err(ChildError::Cancelled);
        }
    };
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| fail(format!("lost the job process: {e}")))?,
        () = &mut cancel => {
            let _ = child.kill().await;
            return Err(ChildError::Cancelled);
        }
    };
    if let Err(e) = fed {
        // A child killed before it read its job also breaks the pipe: say how it ended.
        if !status.success() {
            return Err(fail(format!("{} before it read its job", describe_exit(status))));
        }
        return Err(fail(format!("cannot hand the job to its process: {e}")));
    }
    read.map_err(|e| fail(format!("cannot read the job process's result: {e}")))?;
    serde_json::from_slice::<R>(&output).map_err(|_| fail(describe_exit(status)))
}

/// Removes repository locks `ids` (ones a stopped job left) without blocking the runtime.
///
/// # Errors
/// As [`crate::maintenance::remove_locks`].
pub async fn remove_locks(target: &crate::RepoTarget, ids: Vec<String>) -> Result<(), crate::EngineError> {
    let target = target.clone();
    tokio::task::spawn_blocking(move || crate::maintenance::remove_locks(&target, &ids))
        .await
        .map_err(|e| crate::EngineError::Other(format!("removing a lock: {e}")))?
}

/// Removes the locks whose ids a job recorded in `record` (see [`crate::LockOptions::record`])
/// and that it did not remove itself (it was killed), then the record. `Ok(false)`: nothing
/// was recorded.
///
/// # Errors
/// As [`remove_locks`]; the record is kept then.
pub async fn remove_recorded_lock(
    target: &crate::RepoTarget,
    record: &Path,
) -> Result<bool, crate::EngineError> {
    let Ok(text) = std::fs::read_to_string(record) else { return Ok(false) };
    let ids = crate::lock::recorded_ids(&text);
    if !ids.is_empty() {
        remove_locks(target, ids).await?;
    }
    let _ = std::fs::remove_file(record);
    let _ = std::fs::remove_file(crate::lock::record_in_progress(record));
    Ok(true)
}

/// The child's side of progress: runs `work`, printing `sample()` as a progress line every
/// `every` meanwhile (from a thread of its own, stopped before `work`'s result is returned, so
/// every progress line comes before the result). `None`: no progress lines.
pub fn report_progress_every<P: Serialize, T>(
    every: Option<Duration>,
    sample: impl Fn() -> P + Sync,
    work: impl FnOnce() -> T,
) -> T {
    let Some(every) = every else { return work() };
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let sample = &sample;
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let mut out = std::io::stdout().lock();
                let line = ProgressLine { progress: sample() };
                // Best effort: a parent that stopped reading ends the job through its own means.
                let _ = serde_json::to_writer(&mut out, &line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush());
            }
        });
        let result = work();
        drop(stop);
        result
    })
}

/// How a child ended without a result, for a person.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (_, Some(9)) => "the job process was killed (signal 9: out of memory, or stopped by hand)".into(),
        (_, Some(sig)) => format!("the job process died on signal {sig}"),
        (Some(code), _) => format!("the job process exited with status {code} without a result"),
        _ => "the job process ended without a result".into(),
    }
}

/// The environment variable carrying the parent's pid to the job process.
const PARENT_ENV: &str = "COFRE_JOB_PARENT";

/// Whether the process that started this job process died before the death signal was armed
/// (a parent killed between `fork` and `prctl`): the child was then adopted, by init or by a
/// subreaper (systemd, a container's init, a CI runner), so its parent is no longer the pid the
/// parent handed down. Without that pid, adoption by init is all that can be seen.
fn parent_gone() -> bool {
    let parent = nix::unistd::getppid().as_raw();
    match std::env::var(PARENT_ENV).ok().and_then(|v| v.parse::<i32>().ok()) {
        Some(expected) => parent != expected,
        None => parent == 1,
    }
}

/// The child's side: dies with its parent, reads the job from stdin, runs `work`, prints the
/// result. A job that does not parse is answered with `malformed(message)`. Exits 0 whenever
/// it could print a result (the result says whether the job worked).
pub fn serve<I: DeserializeOwned, R: Serialize>(
    name: &str,
    malformed: impl FnOnce(String) -> R,
    work: impl FnOnce(I) -> R,
) -> std::process::ExitCode {
    // Die with the parent: a job nobody waits for would only race the next one.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if parent_gone() {
        eprintln!("{name}: the parent is gone; not starting");
        return std::process::ExitCode::FAILURE;
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_INPUT_BYTES).read_to_end(&mut input) {
        eprintln!("{name}: cannot read the job from stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match serde_json::from_slice::<I>(&input) {
        Err(e) => malformed(format!("the parent sent a malformed job: {e}")),
        Ok(job) => work(job),
    };
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer(&mut out, &result).map_err(std::io::Error::from).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: cannot hand the result back: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_child_is_described() {
        use std::os::unix::process::ExitStatusExt as _;
        let killed = describe_exit(std::process::ExitStatus::from_raw(9));
        assert!(killed.contains("killed"), "{killed}");
        let exited = describe_exit(std::process::ExitStatus::from_raw(3 << 8));
        assert!(exited.contains("status 3"), "{exited}");
    }

    #[tokio::test]
    async fn results_come_back_and_cancel_kills() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "cat >/dev/null; echo '{\"ok\":1}'"]);
        let v: serde_json::Value =
            run_json(cmd, &serde_json::json!({"x": 1}), 1024, std::future::pending()).await.unwrap();
        assert_eq!(v["ok"], 1);
        let mut slow = tokio::process::Command::new("sh");
        slow.args(["-c", "sleep 30"]);
        let cancel = tokio::time::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        let r: Result<serde_json::Value, _> = run_json(slow, &1, 1024, cancel).await;
        assert!(matches!(r, Err(ChildError::Cancelled)));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn progress_lines_come_before_the_result_and_are_handed_over() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args([
            "-c",
            "cat >/dev/null; echo '{\"progress\":1}'; echo 'not progress'; echo '{\"progress\":2}'; \
             printf '{\"ok\":1}'",
        ]);
        let mut seen = Vec::new();
        let r: Result<serde_json::Value, _> =
            run_json_reporting(cmd, &1, 1024, std::future::pending(), |p: u64| seen.push(p)).await;
        // A stray line is part of the result, which then does not parse.
        assert!(r.is_err(), "{r:?}");
        assert_eq!(seen, [1, 2]);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "cat >/dev/null; echo '{\"progress\":7}'; echo '{\"ok\":1}'"]);
        let mut seen = Vec::new();
        let v: serde_json::Value =
            run_json_reporting(cmd, &1, 1024, std::future::pending(), |p: u64| seen.push(p)).await.unwrap();
        assert_eq!((v["ok"].as_u64(), seen), (Some(1), vec![7]));
    }

    #[test]
    fn a_child_reports_progress_only_when_asked() {
        let calls = std::sync::atomic::AtomicU64::new(0);
        let sample = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(report_progress_every(None, sample, || 5), 5);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
        let r = report_progress_every(Some(Duration::from_millis(10)), sample, || {
            std::thread::sleep(Duration::from_millis(100));
            6
        });
        assert_eq!(r, 6);
        assert!(calls.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    }

    #[tokio::test]
    async fn a_child_killed_before_it_reads_its_job_is_described_as_killed() {
        // A job larger than a pipe's buffer: the write fails with EPIPE once the child is gone.
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "kill -9 $$"]);
        let big = "x".repeat(1 << 20);
        let r: Result<serde_json::Value, _> = run_json(cmd, &big, 1024, std::future::pending()).await;
        let Err(ChildError::Failed(msg)) = r else { panic!("{r:?}") };
        assert!(msg.contains("killed") && msg.contains("before it read its job"), "{msg}");
    }
}
