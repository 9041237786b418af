//! Cofre's backup engine: restic-format backups and restores, on rustic_core 0.13's repository
//! layer.
//!
//! The agent uses it for backups, the controller to initialise repositories. Every function
//! blocks (threads and blocking reqwest inside): call it from `spawn_blocking` or a dedicated
//! thread, never directly on an async runtime thread.
//!
//! Repositories live on a restic REST server (rustic_backend's REST backend, nothing else) and
//! are written in restic repository format version 2 with compression, so the restic CLI (0.14
//! and later) can read, check and restore them.
//!
//! rustic_core opens repositories (key, config), reads index and snapshot files through its
//! cache, walks the source (wrapped in `source.rs`) and provides the repository types. Backups
//! and restores are the engine's own (`archiver/`, `restorer/`): rustic_core 0.13's were several
//! times slower on many small files and its restorer used 5× restic's memory (ARCHITECTURE.md,
//! docs/benchmarks.md). Both write and read exactly what restic does; the engine's tests check
//! every backup with `restic check --read-data` and restic's restore.
//!
//! Each call opens the repository at most once. Before opening, a `HEAD config` probe with short
//! timeouts checks the server (see `probe.rs`), so a dead server fails within about a second
//! instead of rustic's default 31 s of retries, and refused credentials are not mistaken for a
//! missing repository.
//!
//! Backup warnings (unreadable entries, files changed while being read) are collected by the
//! source wrapper, not by capturing the global `log` logger: the engine installs no logger and
//! composes with the caller's `log` bridge. rustic's local cache goes to its default directory
//! unless [`set_cache_dir`] says otherwise.
//!
//! Modules: `target` (URL rules, backend options), `probe`, `repo` (open/init), `backup` with
//! `source`, `warnings` (bounded), `progress` (counters a running backup adds to) and
//! `archiver` (pipeline, restic format, pack uploads),
//! `restore` with `restorer`, `lock` (restic's repository locks), `maintenance` (forget, prune,
//! check for the controller), `error` (error mapping, redaction).
//!
//! Backups hold a non-exclusive restic lock and maintenance an exclusive one, so a backup and a
//! prune of the same repository never run at the same time: whichever comes second waits.

mod archiver;
mod backup;
pub mod child;
mod error;
mod keyfile;
mod lock;
pub mod maintenance;
mod probe;
mod progress;
mod repo;
mod rest;
mod restore;
mod restorer;
mod source;
mod target;
mod warnings;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{EngineError, RetryClass};
pub use lock::{LockOptions, recorded_ids as recorded_lock_ids};
pub use progress::{BackupProgress, ProgressSample};
pub use repo::set_cache_dir;
pub use target::{RepoTarget, WireTarget, check_repository_url};
pub use warnings::{MAX_WARNING_BYTES, MAX_WARNINGS, clip};

/// What to back up and how to label the snapshot.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// The restic id the repository must have; a different one fails with
    /// [`EngineError::RepositoryIdMismatch`] before anything is written. Never initialises.
    pub expected_restic_id: String,
    /// Absolute paths to back up (valid UTF-8; names *inside* them may be anything). Missing
    /// paths are skipped with a warning, as restic does; if none exists the request is invalid.
    pub paths: Vec<PathBuf>,
    /// Globs of entries to leave out, like restic's `--exclude`: a pattern without `/` matches a
    /// name anywhere, one starting with `/` is anchored at the file-system root
    /// (gitignore-style semantics of rustic's overrides). Negation (`!`) is not supported.
    pub excludes: Vec<String>,
    /// More ways to leave entries out.
    pub filters: SourceFilters,
    /// Host name recorded in the snapshot (also used to find the parent snapshot).
    pub hostname: String,
    /// Tags recorded in the snapshot (no commas).
    pub tags: Vec<String>,
    /// The repository lock the backup holds (non-exclusive, restic's rules): how long to wait
    /// for an exclusive one (a prune) to go, and where to record its id.
    pub lock: LockOptions,
}

/// restic's other exclude options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFilters {
    /// Like `excludes`, ignoring case (restic's `--iexclude`).
    pub iexcludes: Vec<String>,
    /// Directories holding a file of one of these names are left out (`--exclude-if-present`).
    pub exclude_if_present: Vec<String>,
    /// Files larger than this many bytes are left out (`--exclude-larger-than`).
    pub exclude_larger_than: Option<u64>,
    /// Stay on the file system of each backup path (`--one-file-system`).
    pub one_file_system: bool,
}

/// The outcome of a successful backup. Serialisable: the agent runs each job in a child
/// process, which hands its report back as JSON.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupReport {
    /// Full hex id, as `restic snapshots --json` prints in `"id"`.
    pub snapshot_id: String,
    pub snapshot_time: chrono::DateTime<chrono::Utc>,
    /// The backed-up paths as stored in the snapshot (canonical, symlinks resolved).
    pub paths: Vec<String>,
    pub hostname: String,
    /// The UTC offset of the snapshot's time as recorded in it (its local time zone).
    #[serde(default)]
    pub utc_offset_seconds: i32,
    #[serde(default)]
    pub tags: Vec<String>,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub files_processed: u64,
    pub bytes_processed: u64,
    /// Bytes of new data blobs before compression.
    pub bytes_added: u64,
    /// Bytes of new data blobs as stored (compressed, encrypted).
    pub bytes_added_packed: u64,
    /// Wall time of the whole call, opening the repository included.
    pub duration: Duration,
    /// Unreadable entries (skipped), files that changed while being read, missing paths: the
    /// first [`MAX_WARNINGS`] distinct ones, each at most [`MAX_WARNING_BYTES`] long.
    pub warnings: Vec<String>,
    /// How many more warnings there were than `warnings` lists.
    #[serde(default)]
    pub warnings_dropped: u64,
}

/// Initialises a new repository (restic format version 2, compression on) and returns its
/// restic repository id (64 hex digits).
///
/// # Errors
/// [`EngineError::AlreadyInitialised`] if a config already exists at the URL (with its id when
/// the repository password opens it); network, credential and input errors otherwise.
pub fn init_repository(target: &RepoTarget) -> Result<String, EngineError> {
    repo::init_repository(target)
}

/// Opens the repository and returns its restic id (64 hex digits).
///
/// # Errors
/// [`EngineError::NotInitialised`] if there is no config at the URL,
/// [`EngineError::WrongPassword`], network, credential and input errors.
pub fn repository_id(target: &RepoTarget) -> Result<String, EngineError> {
    repo::repository_id(target)
}

/// Backs up `req.paths` into the repository, which must have id `req.expected_restic_id`.
///
/// Unreadable entries are skipped and reported in [`BackupReport::warnings`], as are files that
/// changed while being read; they do not fail the backup.
///
/// # Errors
/// [`EngineError::RepositoryIdMismatch`] (nothing written), [`EngineError::NotInitialised`],
/// [`EngineError::WrongPassword`], network, credential and input errors.
///
/// The engine's own archiver does the work, unless the environment variable
/// `COFRE_ENGINE_ARCHIVER=rustic` asks for rustic_core's (see [`Archiver`]).
pub fn backup(target: &RepoTarget, req: &BackupRequest) -> Result<BackupReport, EngineError> {
    backup_with_progress(target, req, &BackupProgress::unobserved())
}

/// [`backup`], counting what it processed in `progress` as it goes (sample it from another
/// thread; see [`BackupProgress`]).
///
/// # Errors
/// As [`backup`].
pub fn backup_with_progress(
    target: &RepoTarget,
    req: &BackupRequest,
    progress: &BackupProgress,
) -> Result<BackupReport, EngineError> {
    let archiver = match std::env::var_os("COFRE_ENGINE_ARCHIVER") {
        Some(v) if v == "rustic" => Archiver::Rustic,
        _ => Archiver::Engine,
    };
    backup::backup(target, req, archiver, progress)
}

/// The newest snapshot carrying every one of `tags`, as a [`BackupReport`] (its counts from the
/// snapshot's summary, no warnings: a snapshot does not record them), or `None`. For a backup
/// whose process was killed after it saved its snapshot and before its report reached anyone:
/// the agent tags each backup with its job's id and looks for it after a crash.
///
/// Reads snapshot files only (through rustic's cache when one is set), without a lock.
///
/// # Errors
/// [`EngineError::RepositoryIdMismatch`] when the repository is not `expected_restic_id`,
/// [`EngineError::InvalidInput`] without tags, [`EngineError::NotInitialised`],
/// [`EngineError::WrongPassword`], network and credential errors.
pub fn find_snapshot(
    target: &RepoTarget,
    expected_restic_id: &str,
    tags: &[String],
) -> Result<Option<BackupReport>, EngineError> {
    backup::find_snapshot(target, expected_restic_id, tags)
}

/// The environment a process that runs [`backup`] should be started with: glibc's malloc
/// tunables that hand large buffers back to the system as soon as they are freed
/// (`mmap_threshold` of 1 MiB, instead of glibc's threshold that grows to 32 MiB and keeps
/// freed pack and chunk buffers resident). Measured on the benchmark's initial backup: peak RSS
/// 143 → 93 MiB, no measurable time cost (docs/benchmarks.md). An existing `GLIBC_TUNABLES` is
/// kept, with ours appended. Tunables are read at process start, so this is for the parent
/// that spawns the job process (the agent's `backup-job`, `cofre-bench engine-backup`).
#[must_use]
pub fn job_process_env() -> (&'static str, std::ffi::OsString) {
    const OURS: &str = "glibc.malloc.mmap_threshold=1048576";
    let value = match std::env::var_os("GLIBC_TUNABLES") {
        Some(existing) if !existing.is_empty() => {
            let mut v = existing;
            v.push(":");
            v.push(OURS);
            v
        }
        _ => OURS.into(),
    };
    ("GLIBC_TUNABLES", value)
}

/// Which backup pipeline writes the snapshot. Both write the same format, chunk alike and
/// produce byte-identical trees, so they deduplicate against each other and each accepts the
/// other's snapshots as parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archiver {
    /// The engine's own (`src/archiver`): the default, several times lighter on small files.
    Engine,
    /// rustic_core 0.13's: for comparisons, and as a way back should the engine's archiver
    /// misbehave on some machine (`COFRE_ENGINE_ARCHIVER=rustic`).
    Rustic,
}

/// [`backup_with_progress`] with an explicit [`Archiver`] (rustic_core's counts bytes only).
///
/// # Errors
/// As [`backup`].
pub fn backup_with(
    target: &RepoTarget,
    req: &BackupRequest,
    archiver: Archiver,
    progress: &BackupProgress,
) -> Result<BackupReport, EngineError> {
    backup::backup(target, req, archiver, progress)
}

/// Restores snapshot `snapshot_id` (full id or unique prefix) into `dest`.
///
/// With `path_in_snapshot == None` the whole snapshot is restored, recreating the absolute
/// backed-up paths under `dest` (like `restic restore ID --target DEST`). With a directory
/// path, its contents go into `dest`; with a file path, the file goes to `dest/<name>`.
///
/// # Errors
/// [`EngineError::NotFound`] for an unknown snapshot or path, network, credential and local
/// I/O errors.
pub fn restore(
    target: &RepoTarget,
    snapshot_id: &str,
    path_in_snapshot: Option<&str>,
    dest: &Path,
) -> Result<(), EngineError> {
    restore::restore(target, snapshot_id, path_in_snapshot, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn target(url: &str) -> RepoTarget {
        RepoTarget {
            url: url.to_owned(),
            username: None,
            password: None,
            repository_password: SecretString::from("pw".to_owned()),
            ca_cert_file: None,
            client_identity_file: None,
            allow_insecure_http: false,
        }
    }

    #[test]
    fn insecure_http_is_refused_before_any_network_access() {
        let t = target("http://192.0.2.10:8000/repo");
        for err in [
            init_repository(&t).unwrap_err(),
            repository_id(&t).unwrap_err(),
            restore(&t, "abcd", None, Path::new("/tmp/x")).unwrap_err(),
        ] {
            assert!(matches!(&err, EngineError::InvalidInput(m) if m.contains("plain http")), "{err}");
            assert_eq!(err.retry_class(), RetryClass::Permanent);
        }
    }

    #[test]
    fn backup_validates_the_request_first() {
        let t = target("https://backup.invalid/repo");
        let req = BackupRequest {
            expected_restic_id: "not hex".to_owned(),
            paths: vec![PathBuf::from("/")],
            hostname: "h".to_owned(),
            ..Default::default()
        };
        assert!(matches!(backup(&t, &req), Err(EngineError::InvalidInput(_))));
    }
}
