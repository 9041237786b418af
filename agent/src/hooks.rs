//! Hooks: a policy names a hook, and the agent runs it only if an executable of that name
//! exists in its own hook directory (default `/etc/cofre-agent/hooks`) and that directory and
//! file can only have been put there by root (or by the user the agent runs as). A policy
//! never carries a command line, so whoever controls the controller cannot make a machine run
//! anything its administrator did not install.
//!
//! The hook runs with a clean environment (PATH and `COFRE_*` variables only), in `/`, with no
//! input, in its own process group (killed whole on timeout); its output is captured (capped)
//! into the job's log.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cofre_proto::agent::v1 as pb;
use tokio::io::AsyncReadExt as _;

/// Where hooks live unless `--hook-dir` says otherwise.
pub const DEFAULT_DIR: &str = "/etc/cofre-agent/hooks";

/// Output kept per stream.
const MAX_OUTPUT: usize = 32 * 1024;

/// How a hook run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    pub ok: bool,
    /// One line for the job's result: what ran and how it ended.
    pub summary: String,
    /// What it printed (capped), for the job's log.
    pub output: String,
}

/// Who may own the hook directory and files: root, and the user the agent runs as.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Checks that `path` (a directory or a file) is owned by a trusted user and writable by
/// nobody else.
fn check_owned(path: &Path, what: &str) -> Result<std::fs::Metadata, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!("{what} {} is a symbolic link; hooks must be real files", path.display()));
    }
    if !trusted_owner(meta.uid()) {
        return Err(format!("{what} {} is owned by uid {}, not root", path.display(), meta.uid()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!("{what} {} is writable by group or others", path.display()));
    }
    Ok(meta)
}

/// The executable for `name` in `dir`, if every rule holds.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if !cofre_policy::spec::valid_hook_name(name) {
        return Err(format!("hook name {name:?} is not a plain file name"));
    }
    let meta = check_owned(dir, "hook directory")?;
    if !meta.is_dir() {
        return Err(format!("hook directory {} is not a directory", dir.display()));
    }
    let file = dir.join(name);
    let meta = check_owned(&file, "hook")?;
    if !meta.is_file() {
        return Err(format!("hook {} is not a regular file", file.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("hook {} is not executable", file.display()));
    }
    Ok(file)
}

/// Runs hook `hook` from `dir` with `env` (`COFRE_*` variables) and waits up to its timeout.
pub async fn run(dir: &Path, hook: &pb::Hook, env: &[(&str, String)]) -> HookResult {
    let file = match resolve(dir, &hook.name) {
        Ok(f) => f,
        Err(e) => {
            return HookResult {
                ok: false,
                summary: format!("hook {}: {e}", hook.name),
                output: String::new(),
            };
        }
    };
    let mut cmd = tokio::process::Command::new(&file);
    cmd.env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match spawn(&mut cmd).await {
        Ok(c) => c,
        Err(e) => {
            return HookResult {
                ok: false,
                summary: format!("hook {}: cannot start: {e}", hook.name),
                output: String::new(),
            };
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let read = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let ra = async {
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut a).await;
            }
        };
        let rb = async {
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut b).await;
            }
        };
        tokio::join!(ra, rb);
        (a, b)
    };
    let timeout = Duration::from_secs(hook.timeout_seconds.max(1));
    let waited = tokio::time::timeout(timeout, async {
        let (a, b) = read.await;
        (child.wait().await, a, b)
    })
    .await;
    match waited {
        Ok((status, stdout, stderr)) => {
            let output = joined(&stdout, &stderr);
            match status {
                Ok(s) if s.success() => {
                    HookResult { ok: true, summary: format!("hook {} succeeded", hook.name), output }
                }
                Ok(s) => {
                    HookResult { ok: false, summary: format!("hook {} failed ({s})", hook.name), output }
                }
                Err(e) => HookResult { ok: false, summary: format!("hook {}: {e}", hook.name), output },
            }
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                // The whole group: a hook's own children must not outlive it.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            HookResult {
                ok: false,
                summary: format!("hook {} timed out after {} s and was killed", hook.name, timeout.as_secs()),
                output: String::new(),
            }
        }
    }
}

/// Starts the hook, retrying briefly while its file is "busy": a hook just written (by an admin's
/// deployment, or a test) can still be open for writing in a process another thread is forking,
/// and exec then fails with ETXTBSY for a moment.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

fn joined(stdout: &[u8], stderr: &[u8]) -> String {
    let clip = |b: &[u8]| {
        let s = String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
        if b.len() > MAX_OUTPUT { format!("{s}\n[… {} more bytes]", b.len() - MAX_OUTPUT) } else { s }
    };
    let mut out = clip(stdout);
    if !stderr.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&clip(stderr));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, timeout: u64) -> pb::Hook {
        pb::Hook { name: name.into(), timeout_seconds: timeout, on_failure: pb::HookOnFailure::Fail as i32 }
    }

    fn dir_with(script: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.path().join("h");
        std::fs::write(&f, script).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[tokio::test]
    async fn a_hook_runs_with_a_clean_environment_and_its_output_is_kept() {
        let d = dir_with("#!/bin/sh\necho \"policy=$COFRE_POLICY_ID home=${HOME:-unset}\"\necho oops >&2\n");
        let r = run(d.path(), &hook("h", 10), &[("COFRE_POLICY_ID", "p1".into())]).await;
        assert!(r.ok, "{r:?}");
        assert!(r.output.contains("policy=p1 home=unset"), "{}", r.output);
        assert!(r.output.contains("oops"));
        let failing = dir_with("#!/bin/sh\nexit 3\n");
        let r = run(failing.path(), &hook("h", 10), &[]).await;
        assert!(!r.ok && r.summary.contains("failed"), "{r:?}");
    }

    #[tokio::test]
    async fn a_hook_that_runs_too_long_is_killed_with_its_children() {
        let d = dir_with("#!/bin/sh\nsleep 60 &\nsleep 60\n");
        let started = std::time::Instant::now();
        let r = run(d.path(), &hook("h", 1), &[]).await;
        assert!(!r.ok && r.summary.contains("timed out"), "{r:?}");
        // Killed, not waited for: well before the children's 60 s (a bound, not a speed target).
        assert!(started.elapsed() < Duration::from_secs(45));
    }

    #[test]
    fn only_plain_names_of_safe_files_resolve() {
        let d = dir_with("#!/bin/sh\n");
        assert!(resolve(d.path(), "h").is_ok());
        for bad in ["../h", "/bin/sh", "a/b", "..", ".hidden", ""] {
            assert!(resolve(d.path(), bad).is_err(), "{bad}");
        }
        assert!(resolve(d.path(), "missing").unwrap_err().contains("missing"));
        let f = d.path().join("h");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(resolve(d.path(), "h").unwrap_err().contains("writable"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(resolve(d.path(), "h").unwrap_err().contains("not executable"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(resolve(d.path(), "h").unwrap_err().contains("directory"));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/bin/true", d.path().join("link")).unwrap();
        assert!(resolve(d.path(), "link").unwrap_err().contains("symbolic link"));
    }
}
