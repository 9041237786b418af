//! Real processes for tests: a kill-on-drop guard with a log file, workspace binary lookup,
//! free ports and polling waits (tests wait by polling, never by sleeping a fixed time).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long `Drop`/`terminate` waits after SIGTERM before sending SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// A child process in its own process group, with stdout and stderr appended to one log file.
///
/// Dropping it sends SIGTERM to the whole group, waits up to the grace period, then SIGKILLs.
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and output appended to `<log_dir>/<name>.log`.
    ///
    /// Appending (not truncating) keeps the earlier output when a process is restarted under the
    /// same name, which is what one wants to read when a restart scenario fails.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
        let log_path = log_dir.join(format!("{name}.log"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        writeln!(log, "=== cofre-e2e: spawning {name}: {cmd:?}")?;
        let stderr = log.try_clone()?;
        // A process group of its own: signals reach the grandchildren too, and a Ctrl-C aimed
        // at `cargo test` does not race our orderly shutdown.
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(stderr)).process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Proc { name: name.to_owned(), child, log_path, grace: DEFAULT_GRACE, status: None })
    }

    /// Changes the SIGTERM → SIGKILL grace period used by `terminate` and `Drop`.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log so far (lossy UTF-8), for assertions and error messages.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends a signal to the process group (ignored when the process already exited).
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        let pgid = Pid::from_raw(i32::try_from(self.child.id())?);
        match killpg(pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("sending {signal} to {}", self.name)),
        }
    }

    /// SIGKILLs the process group and reaps it: a crash, as far as the process can tell.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGTERM, then SIGKILL if it has not exited after the grace period.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        match self.wait_exit(self.grace) {
            Ok(status) => Ok(status),
            Err(_) => self.kill9(),
        }
    }

    /// Waits for the process to exit by itself (polling), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), timeout, Duration::from_millis(20), || {
            self.try_status().ok_or("still running")
        })
        .with_context(|| format!("log of {name}:\n{}", tail(&self.log(), 4000)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.terminate();
        }
    }
}

/// Describes an exit status the way a person reads it: "exit code 3" or "killed by SIGKILL".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => format!("{status}"),
    }
}

/// The error `wait_until` returns when the condition never held.
#[derive(Debug)]
pub struct WaitTimeout {
    pub what: String,
    pub waited: Duration,
    pub attempts: u32,
    pub last_error: String,
}

impl std::fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:.1?} ({} attempts) waiting for {}; last error: {}",
            self.waited, self.attempts, self.what, self.last_error
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// Polls `probe` every `interval` until it returns `Ok`, or fails after `timeout` with the
/// last error the probe gave (so a failing test says *why* it never became ready).
pub fn wait_until<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> std::result::Result<T, E>,
) -> std::result::Result<T, WaitTimeout> {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last_error = match probe() {
            Ok(value) => return Ok(value),
            Err(err) => err.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(WaitTimeout { what: what.to_owned(), waited: start.elapsed(), attempts, last_error });
        }
        std::thread::sleep(interval.min(timeout.saturating_sub(start.elapsed())));
    }
}

/// `wait_until` for async probes (the runtime keeps running between attempts).
pub async fn wait_until_async<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> std::result::Result<T, WaitTimeout>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last_error = match probe().await {
            Ok(value) => return Ok(value),
            Err(err) => err.to_string(),
        };
        if start.elapsed() >= timeout {
            return Err(WaitTimeout { what: what.to_owned(), waited: start.elapsed(), attempts, last_error });
        }
        tokio::time::sleep(interval.min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; we release it at once,
/// so a tiny race with other processes remains: servers that fail to bind should be retried).
/// Never the same port twice in one test run, so two tests starting at once cannot be handed
/// one port between them.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("binding 127.0.0.1:0 to find a free port");
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Path of one of the workspace's binaries (`cofre-controller`, `cofre-agent`, …).
///
/// Panics with instructions when it has not been built: the tests run what `cargo build`
/// produced, they do not build it themselves.
pub fn workspace_bin(name: &str) -> PathBuf {
    match find_workspace_bin(name) {
        Ok(path) => path,
        Err(err) => panic!("{err:#}"),
    }
}

/// Like [`workspace_bin`], but an error instead of a panic.
pub fn find_workspace_bin(name: &str) -> Result<PathBuf> {
    let candidates = bin_dir_candidates();
    for dir in &candidates {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    let searched: Vec<String> = candidates.iter().map(|dir| format!("  {}", dir.display())).collect();
    bail!(
        "binary `{name}` not found; build them first with cargo build --workspace --bins\n\
         searched:\n{}",
        searched.join("\n")
    )
}

/// `$CARGO_TARGET_DIR/debug` (relative to the workspace when relative), else
/// `<workspace>/target/debug`; as a last resort the directory this test binary was built
/// into (`<target>/<profile>/deps/..`), which also covers `--release` and `build.target-dir`.
fn bin_dir_candidates() -> Vec<PathBuf> {
    let workspace = workspace_root();
    let mut dirs = Vec::new();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        dirs.push(workspace.join(target).join("debug"));
    } else {
        dirs.push(workspace.join("target").join("debug"));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile_dir) = deps.parent()
        && !dirs.iter().any(|d| d == profile_dir)
    {
        dirs.push(profile_dir.to_path_buf());
    }
    dirs
}

/// The workspace root (this crate lives in `<workspace>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives one level below the workspace root")
        .to_path_buf()
}

/// Reads a file as lossy UTF-8; an unreadable file reads as a note saying so.
pub fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("<could not read {}: {err}>", path.display()),
    }
}

/// The last `max` bytes of a log (at a char boundary), for error messages.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
