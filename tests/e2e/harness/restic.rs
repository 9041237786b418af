//! The restic CLI (0.14, Debian) as the independent judge: whatever Cofre writes must be
//! readable and restorable by it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::procs::tail;
use super::rest_server::RestServer;

/// Exit code of `restic backup` when some source files could not be read: the snapshot exists
/// but is incomplete.
pub const EXIT_INCOMPLETE: i32 = 3;

/// One restic repository: password, repository string, CA certificate and a private cache dir.
#[derive(Debug, Clone)]
pub struct Restic {
    repository: String,
    password: String,
    cacert: Option<PathBuf>,
    cache_dir: PathBuf,
    client_cert: Option<PathBuf>,
}

/// What `restic backup --json` reported.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub snapshot_id: String,
    /// The `summary` message (files_new, files_changed, data_added, …).
    pub summary: Value,
    /// True when restic exited with [`EXIT_INCOMPLETE`].
    pub incomplete: bool,
    /// restic's stderr (warnings about unreadable or changing files land here).
    pub stderr: String,
}

impl Restic {
    /// A repository given as a full restic repository string (`rest:https://…`, a path, …).
    pub fn new(
        repository: impl Into<String>,
        password: impl Into<String>,
        cacert: Option<&Path>,
        cache_dir: &Path,
    ) -> Restic {
        Restic {
            repository: repository.into(),
            password: password.into(),
            cacert: cacert.map(Path::to_path_buf),
            cache_dir: cache_dir.to_path_buf(),
            client_cert: None,
        }
    }

    /// Presents this client certificate (certificate and key in one PEM file), as an agent
    /// does towards cofre-store.
    #[must_use]
    pub fn with_client_cert(mut self, bundle: &Path) -> Restic {
        self.client_cert = Some(bundle.to_path_buf());
        self
    }

    /// Repository `repo` on `server`, as its storage user, trusting the server's test CA.
    pub fn for_rest(server: &RestServer, repo: &str, password: &str, cache_dir: &Path) -> Restic {
        Restic::new(server.restic_repository(repo), password, Some(&server.ca_pem_path()), cache_dir)
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// A `restic` command with this repository's environment and flags, and nothing inherited
    /// that could change what it does (other `RESTIC_*` variables).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("restic");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RESTIC_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD", &self.password)
            .arg("--cache-dir")
            .arg(&self.cache_dir);
        if let Some(cacert) = &self.cacert {
            cmd.arg("--cacert").arg(cacert);
        }
        if let Some(cert) = &self.client_cert {
            cmd.arg("--tls-client-cert").arg(cert);
        }
        cmd
    }

    /// Runs restic with `args`; an error (with stderr) unless it exits 0.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self.run_unchecked(args)?;
        if !output.status.success() {
            bail!("{}", describe_failure(&output));
        }
        Ok(output)
    }

    /// Runs restic with `args` and returns its output whatever the exit status.
    pub fn run_unchecked<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        let shown = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
        cmd.output().with_context(|| format!("running restic {shown} (is restic installed?)"))
    }

    /// `restic init --repository-version 2` (compression needs version 2).
    pub fn init_v2(&self) -> Result<()> {
        self.run(["init", "--repository-version", "2"]).context("restic init")?;
        Ok(())
    }

    /// `restic backup --json <path>`; exit code 3 (incomplete) is not an error here, it is
    /// reported in [`BackupOutcome::incomplete`].
    pub fn backup(&self, path: &Path) -> Result<BackupOutcome> {
        self.backup_with(path, &[])
    }

    /// `restic backup --json <extra…> <path>`.
    pub fn backup_with(&self, path: &Path, extra: &[&str]) -> Result<BackupOutcome> {
        let mut args: Vec<&OsStr> = vec![OsStr::new("backup"), OsStr::new("--json")];
        args.extend(extra.iter().map(OsStr::new));
        args.push(path.as_os_str());
        let output = self.run_unchecked(&args)?;
        let incomplete = output.status.code() == Some(EXIT_INCOMPLETE);
        if !output.status.success() && !incomplete {
            bail!("restic backup {}: {}", path.display(), describe_failure(&output));
        }
        let summary = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|msg| msg["message_type"] == "summary")
            .with_context(|| format!("restic backup printed no summary: {}", describe_failure(&output)))?;
        let snapshot_id = summary["snapshot_id"].as_str().context("summary without snapshot_id")?.to_owned();
        Ok(BackupOutcome {
            snapshot_id,
            summary,
            incomplete,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// `restic snapshots --json`, oldest first.
    pub fn snapshots_json(&self) -> Result<Vec<Value>> {
        let output = self.run(["snapshots", "--json"])?;
        let snapshots: Vec<Value> =
            serde_json::from_slice(&output.stdout).context("parsing restic snapshots --json")?;
        Ok(snapshots)
    }

    /// `restic restore <snapshot> --target <target>`. restic recreates the snapshot's absolute
    /// paths below `target`: see [`restored_path`].
    pub fn restore(&self, snapshot_id: &str, target: &Path) -> Result<()> {
        self.run(["restore".as_ref(), snapshot_id.as_ref(), "--target".as_ref(), target.as_os_str()])
            .with_context(|| format!("restic restore {snapshot_id}"))?;
        Ok(())
    }

    /// `restic check` (with `--read-data` when asked: every pack downloaded and verified).
    pub fn check(&self, read_data: bool) -> Result<()> {
        let mut args = vec!["check"];
        if read_data {
            args.push("--read-data");
        }
        self.run(&args).context("restic check")?;
        Ok(())
    }
}

/// Where `restic restore --target <target>` puts the backed-up absolute path `source`.
pub fn restored_path(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap_or(source))
}

fn describe_failure(output: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}\n--- stdout ---\n{}",
        super::procs::describe_status(output.status),
        tail(&String::from_utf8_lossy(&output.stderr), 6000),
        tail(&String::from_utf8_lossy(&output.stdout), 2000)
    )
}
