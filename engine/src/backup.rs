//! The backup job: validate the request, open the repository once, archive, report; and
//! finding a snapshot by its tags again (a backup whose report was lost with its process).
//!
//! Warnings (unreadable entries, files changed while being read) are collected by the source
//! wrapper in `source.rs`; no global logger is installed, so the engine composes with whatever
//! `log` bridge the caller has (the agent forwards `log` to `tracing`). Other rustic_core
//! warnings that only exist as log lines (xattrs that cannot be read, unknown uid/gid names,
//! parent-snapshot trouble) still reach that bridge, but are not part of the report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustic_core::{
    BackupOptions, Excludes, LocalSourceFilterOptions, LocalSourceSaveOptions, PathList, SnapshotOptions,
    repofile::SnapshotFile,
};

use crate::error::{EngineError, from_rustic};
use crate::progress::RusticBars;
use crate::repo::{self, OpenRepo, normalise_id};
use crate::source::WatchedSource;
use crate::warnings::Warnings;
use crate::{Archiver, BackupProgress, BackupReport, BackupRequest, RepoTarget};

/// The `command` recorded in the snapshot summary.
const SNAPSHOT_COMMAND: &str = "cofre backup";

/// See [`crate::backup`].
pub(crate) fn backup(
    target: &RepoTarget,
    req: &BackupRequest,
    archiver: Archiver,
    progress: &BackupProgress,
) -> Result<BackupReport, EngineError> {
    let started = Instant::now();
    let expected = normalise_id(&req.expected_restic_id, "expected repository id")?;
    let warnings = Warnings::default();
    let paths = check_paths(&req.paths, &warnings)?;
    let excludes = excludes(&req.excludes, &req.filters.iexcludes)?;
    let filter_opts = filter_options(&req.filters)?;
    let snapshot = snapshot_template(req)?;

    // rustic_core's archiver reports through its progress hooks; the engine's adds to
    // `progress` itself (and asks rustic for no bar).
    let open = repo::open_reporting(target, true, RusticBars(progress.clone()))?;
    let found = open.restic_id();
    if found != expected {
        return Err(EngineError::RepositoryIdMismatch { expected, found });
    }
    // restic's rule: backups hold a non-exclusive lock, so a prune waits for them (and they
    // for it). Released (removed) when this function returns, however it returns.
    let _lock =
        crate::lock::RepoLock::acquire(repo::lock_backend(target, &open)?, false, &username(), &req.lock)?;
    let OpenRepo { repo, prepared } = open;
    let error = |err: &rustic_core::RusticError, doing: &str| from_rustic(err, &prepared.redactor, doing);

    // xattrs are saved by default (`set_xattrs: None` means yes), ctime too; atime is stored as
    // the mtime (rustic's default: real atimes would change every tree on every run); the device
    // id is kept for hardlinked files only, which restic's restorer needs to relink them.
    let save_opts = LocalSourceSaveOptions::default();
    let opts = BackupOptions::default().no_scan(true).ignore_save_opts(save_opts).excludes(excludes.clone());
    let source = WatchedSource::new(save_opts, &excludes, &filter_opts, &paths, warnings.clone())
        .map_err(|err| error(&err, "preparing the backup source"))?;

    let snap = if archiver == Archiver::Rustic {
        let indexed = repo.to_indexed_ids().map_err(|err| error(&err, "reading the repository index"))?;
        // The totals come from the same scan as with the engine's archiver, alongside.
        let scan_stop = AtomicBool::new(false);
        let archived = std::thread::scope(|s| {
            s.spawn(|| progress.scan(&source, &scan_stop));
            let archived = indexed.archive(&opts, &source, snapshot, &paths);
            scan_stop.store(true, Ordering::Relaxed);
            archived
        });
        archived.map_err(|err| error(&err, "backing up"))?
    } else {
        let packs = crate::archiver::PackUploader::new(target, &prepared)?;
        crate::archiver::run(
            &repo,
            &prepared.backends.repository(),
            &packs,
            &source,
            snapshot,
            &paths,
            &warnings,
            progress,
        )
        .map_err(|failure| failure.into_engine(&prepared.redactor, "backing up"))?
    };

    Ok(report(&snap, &paths, started.elapsed(), warnings.take()))
}

/// See [`crate::find_snapshot`].
pub(crate) fn find_snapshot(
    target: &RepoTarget,
    expected_restic_id: &str,
    tags: &[String],
) -> Result<Option<BackupReport>, EngineError> {
    let started = Instant::now();
    let expected = normalise_id(expected_restic_id, "expected repository id")?;
    if tags.is_empty() || tags.iter().any(String::is_empty) {
        return Err(EngineError::InvalidInput(
            "a snapshot is looked for by at least one non-empty tag".to_owned(),
        ));
    }
    let open = repo::open(target, true)?;
    let found = open.restic_id();
    if found != expected {
        return Err(EngineError::RepositoryIdMismatch { expected, found });
    }
    // Snapshot files are small and immutable (and cached): no lock needed to read them.
    let snaps = open
        .repo
        .get_matching_snapshots(|s| tags.iter().all(|t| s.tags.contains(t)))
        .map_err(|err| from_rustic(&err, &open.prepared.redactor, "listing snapshots"))?;
    let newest = snaps.into_iter().max_by_key(|s| s.time.timestamp());
    Ok(newest.map(|snap| found_report(&snap, started.elapsed())))
}

/// The report of a snapshot found again: what the snapshot records (its summary's counts and
/// the backup's own duration when it has them); the backup's warnings are not recorded in it.
fn found_report(snap: &SnapshotFile, looking: Duration) -> BackupReport {
    let paths: Vec<PathBuf> = snap.paths.iter().map(PathBuf::from).collect();
    let duration = snap
        .summary
        .as_ref()
        .and_then(|s| Duration::try_from_secs_f64(s.total_duration).ok())
        .unwrap_or(looking);
    report(snap, &paths, duration, (Vec::new(), 0))
}

/// Checks and canonicalises the backup paths. Missing paths are skipped with a warning, like
/// restic does; if none is left the request is invalid.
fn check_paths(paths: &[PathBuf], warnings: &Warnings) -> Result<Vec<PathBuf>, EngineError> {
    if paths.is_empty() {
        return Err(EngineError::InvalidInput("no paths to back up".to_owned()));
    }
    let mut existing = Vec::new();
    for path in paths {
        if !path.is_absolute() {
            return Err(EngineError::InvalidInput(format!("backup path {} is not absolute", path.display())));
        }
        if path.to_str().is_none() {
            return Err(EngineError::InvalidInput(format!(
                "backup path {} is not valid UTF-8 (names inside it may be anything)",
                path.display()
            )));
        }
        match std::fs::symlink_metadata(path) {
            Ok(_) => existing.push(path.clone()),
            Err(err) => warnings.push(format!("{}: skipped, cannot be accessed: {err}", path.display())),
        }
    }
    if existing.is_empty() {
        return Err(EngineError::InvalidInput(
            "none of the backup paths exists or can be accessed".to_owned(),
        ));
    }
    // Resolves symlinks in the given paths and drops paths inside other given paths.
    let list = PathList::from_iter(existing)
        .sanitize()
        .map_err(|err| EngineError::InvalidInput(format!("cannot resolve the backup paths: {err}")))?;
    let resolved = list.paths();
    if let Some(bad) = resolved.iter().find(|p| p.to_str().is_none()) {
        return Err(EngineError::InvalidInput(format!(
            "backup path {} resolves to a name that is not valid UTF-8",
            bad.display()
        )));
    }
    Ok(resolved)
}

/// The name recorded in the lock file.
fn username() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::getuid().to_string(), |u| u.name)
}

/// restic's other exclude options, as rustic's filter options.
fn filter_options(f: &crate::SourceFilters) -> Result<LocalSourceFilterOptions, EngineError> {
    for name in &f.exclude_if_present {
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(EngineError::InvalidInput(format!(
                "exclude-if-present `{name}` must be a file name without '/'"
            )));
        }
    }
    let mut opts = LocalSourceFilterOptions::default()
        .exclude_if_present(f.exclude_if_present.clone())
        .one_file_system(f.one_file_system);
    if let Some(limit) = f.exclude_larger_than {
        opts = opts.exclude_larger_than(Some(bytesize::ByteSize::b(limit)));
    }
    Ok(opts)
}

/// restic-like `--exclude` and `--iexclude` globs, as ignore-overrides (`!pattern` means
/// "leave out").
fn excludes(patterns: &[String], ipatterns: &[String]) -> Result<Excludes, EngineError> {
    let negate = |patterns: &[String]| -> Result<Vec<String>, EngineError> {
        let mut globs = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let trimmed = pattern.trim();
            if trimmed.is_empty() || trimmed.starts_with('!') {
                return Err(EngineError::InvalidInput(format!(
                    "exclude pattern `{pattern}` is empty or starts with `!` (negation is not supported)"
                )));
            }
            globs.push(format!("!{trimmed}"));
        }
        Ok(globs)
    };
    let excludes = Excludes::default().globs(negate(patterns)?).iglobs(negate(ipatterns)?);
    excludes.as_override().map_err(|err| {
        EngineError::InvalidInput(format!("invalid exclude pattern: {}", crate::error::describe_rustic(&err)))
    })?;
    Ok(excludes)
}

fn snapshot_template(req: &BackupRequest) -> Result<SnapshotFile, EngineError> {
    let host = req.hostname.trim();
    if host.is_empty() || host.chars().any(char::is_control) {
        return Err(EngineError::InvalidInput(
            "the hostname must be non-empty and contain no control characters".to_owned(),
        ));
    }
    let mut opts = SnapshotOptions::default().host(host.to_owned()).command(SNAPSHOT_COMMAND.to_owned());
    for tag in &req.tags {
        if tag.is_empty() || tag.contains(',') || tag.chars().any(char::is_control) {
            return Err(EngineError::InvalidInput(format!(
                "tag `{tag}` is empty or contains a comma or a control character"
            )));
        }
        opts = opts
            .add_tags(tag)
            .map_err(|err| EngineError::InvalidInput(crate::error::describe_rustic(&err)))?;
    }
    SnapshotFile::from_options(&opts)
        .map_err(|err| EngineError::InvalidInput(crate::error::describe_rustic(&err)))
}

fn report(
    snap: &SnapshotFile,
    paths: &[PathBuf],
    duration: Duration,
    (warnings, warnings_dropped): (Vec<String>, u64),
) -> BackupReport {
    let summary = snap.summary.clone().unwrap_or_default();
    let utc_offset_seconds = snap.time.offset().seconds();
    let ts = snap.time.timestamp();
    let snapshot_time =
        chrono::DateTime::from_timestamp(ts.as_second(), u32::try_from(ts.subsec_nanosecond()).unwrap_or(0))
            .unwrap_or_default();
    BackupReport {
        snapshot_id: snap.id.to_hex().to_string(),
        snapshot_time,
        paths: paths.iter().map(|p| display(p)).collect(),
        hostname: snap.hostname.clone(),
        utc_offset_seconds,
        tags: snap.tags.iter().map(ToString::to_string).collect(),
        files_new: summary.files_new,
        files_changed: summary.files_changed,
        files_unmodified: summary.files_unmodified,
        dirs_new: summary.dirs_new,
        dirs_changed: summary.dirs_changed,
        dirs_unmodified: summary.dirs_unmodified,
        files_processed: summary.total_files_processed,
        bytes_processed: summary.total_bytes_processed,
        bytes_added: summary.data_added,
        bytes_added_packed: summary.data_added_packed,
        duration,
        warnings,
        warnings_dropped,
    }
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        let w = Warnings::default();
        assert!(check_paths(&[], &w).is_err());
        assert!(check_paths(&[PathBuf::from("relative")], &w).is_err());
        assert!(check_paths(&[PathBuf::from("/nonexistent/cofre")], &w).is_err());
        w.take();
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let got =
            check_paths(&[inner, dir.path().to_path_buf(), PathBuf::from("/nonexistent/cofre")], &w).unwrap();
        assert_eq!(got, vec![dir.path().canonicalize().unwrap()]);
        assert_eq!(w.take().0.len(), 1);
    }

    #[test]
    fn excludes_are_checked() {
        assert_eq!(excludes(&["*.tmp".to_owned()], &[]).unwrap().globs, vec!["!*.tmp".to_owned()]);
        assert_eq!(excludes(&[], &["*.ISO".to_owned()]).unwrap().iglobs, vec!["!*.ISO".to_owned()]);
        assert!(excludes(&[String::new()], &[]).is_err());
        assert!(excludes(&["!x".to_owned()], &[]).is_err());
        assert!(excludes(&["a[".to_owned()], &[]).is_err());
        assert!(excludes(&[], &["a[".to_owned()]).is_err());
    }

    #[test]
    fn tags_and_host_are_checked() {
        let req = |host: &str, tags: &[&str]| BackupRequest {
            expected_restic_id: "00".to_owned(),
            hostname: host.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        };
        let snap = snapshot_template(&req("web-1", &["daily", "cofre"])).unwrap();
        assert_eq!(snap.hostname, "web-1");
        assert!(snapshot_template(&req("", &[])).is_err());
        assert!(snapshot_template(&req("h", &["a,b"])).is_err());
        assert!(snapshot_template(&req("h", &[""])).is_err());
    }
}
