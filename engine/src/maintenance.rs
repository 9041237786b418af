//! Repository maintenance for the controller's maintenance identity: removing the snapshots its
//! retention decided to forget, pruning unreferenced data and checking integrity — each under
//! an exclusive restic lock (waiting for running backups to finish first), with rustic_core's
//! prune and check, which write and verify restic's format.
//!
//! Deciding *which* snapshots to forget is not done here: the controller decides from the
//! snapshots it recorded from job results (`cofre_policy::retention`), and hands the list in.
//! This module only removes those that exist, and reports every snapshot file it saw, so the
//! controller can name the ones nobody recorded.

use std::collections::BTreeSet;

use rustic_core::{
    CheckOptions, FileType, Id, LimitOption, PruneOptions, ReadBackend as _, ReadSubsetOption,
};
use serde::{Deserialize, Serialize};

use crate::RepoTarget;
use crate::error::{EngineError, from_rustic};
use crate::lock::{LockOptions, RepoLock};
use crate::repo::{self, OpenRepo};

/// The user name written into maintenance locks.
const MAINTENANCE_USER: &str = "cofre-maintenance";

/// What forget did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForgetReport {
    /// Every snapshot file in the repository before anything was removed (full hex ids).
    pub present: Vec<String>,
    /// Snapshots removed now (with `dry_run`: that would be removed).
    pub removed: Vec<String>,
    /// Snapshots asked for that were not in the repository (already gone).
    pub missing: Vec<String>,
}

/// What prune did (rustic's plan statistics).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneReport {
    pub packs_removed: u64,
    pub packs_repacked: u64,
    pub packs_kept: u64,
    pub unreferenced_packs_removed: u64,
    pub bytes_removed: u64,
    pub bytes_repacked: u64,
    pub bytes_unused_after: u64,
    pub index_files_rebuilt: u64,
}

/// How much pack data a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadData {
    /// Structure only: index, packs' presence and sizes, trees.
    None,
    All,
    /// Part `n` of `of` (1-based): `of` runs with n = 1..of read every pack once.
    Part {
        n: u32,
        of: u32,
    },
    /// A random share of the packs, in percent.
    Percent(f64),
}

/// What check found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

fn lock_for(target: &RepoTarget, open: &OpenRepo, opts: &LockOptions) -> Result<RepoLock, EngineError> {
    RepoLock::acquire(crate::repo::lock_backend(target, open)?, true, MAINTENANCE_USER, opts)
}

/// Removes the snapshots `remove` (full hex ids) that exist, under an exclusive lock. With
/// `dry_run`, removes nothing and takes no lock: the report says what would go.
///
/// # Errors
/// [`EngineError::Locked`] when another lock did not go within `lock.wait`; network, credential
/// and input errors.
pub fn forget(
    target: &RepoTarget,
    remove: &[String],
    dry_run: bool,
    lock: &LockOptions,
) -> Result<ForgetReport, EngineError> {
    let open = repo::open(target, false)?;
    let _held = if dry_run { None } else { Some(lock_for(target, &open, lock)?) };
    let be = open.prepared.backends.repository();
    let fail = |doing: &'static str| {
        let redactor = open.prepared.redactor.clone();
        move |e: Box<rustic_core::RusticError>| from_rustic(&e, &redactor, doing)
    };
    let present: BTreeSet<String> = be
        .list(FileType::Snapshot)
        .map_err(fail("listing snapshots"))?
        .into_iter()
        .map(|id| id.to_hex().to_string())
        .collect();
    let mut report = ForgetReport { present: present.iter().cloned().collect(), ..Default::default() };
    for id in remove {
        let id = id.to_ascii_lowercase();
        if !present.contains(&id) {
            report.missing.push(id);
            continue;
        }
        let parsed: Id =
            id.parse().map_err(|_| EngineError::InvalidInput(format!("`{id}` is not a snapshot id")))?;
        if !dry_run {
            be.remove(FileType::Snapshot, &parsed, true).map_err(fail("removing a snapshot"))?;
        }
        report.removed.push(id);
    }
    Ok(report)
}

/// Removes data no snapshot references any more (restic's prune; packs are deleted at once,
/// which restic's locking makes safe), leaving at most `max_unused_percent` unused.
///
/// # Errors
/// As [`forget`].
pub fn prune(
    target: &RepoTarget,
    max_unused_percent: u32,
    lock: &LockOptions,
) -> Result<PruneReport, EngineError> {
    let open = repo::open(target, false)?;
    let _held = lock_for(target, &open, lock)?;
    let error = |e: &rustic_core::RusticError, doing: &str| from_rustic(e, &open.prepared.redactor, doing);
    let opts = PruneOptions::default()
        .instant_delete(true)
        .max_unused(LimitOption::Percentage(u64::from(max_unused_percent.min(100))));
    let plan = open.repo.prune_plan(&opts).map_err(|e| error(&e, "planning the prune"))?;
    let s = &plan.stats;
    let size = s.size_sum();
    let report = PruneReport {
        packs_removed: s.packs.unused,
        packs_repacked: s.packs.repack,
        packs_kept: s.packs.keep,
        unreferenced_packs_removed: s.packs_unref,
        bytes_removed: size.remove + s.size_unref,
        bytes_repacked: size.repack,
        bytes_unused_after: size.unused.saturating_sub(size.remove + size.repackrm),
        index_files_rebuilt: s.index_files_rebuild,
    };
    open.repo.prune(&opts, plan).map_err(|e| error(&e, "pruning"))?;
    Ok(report)
}

/// Checks the repository's integrity; `read_data` says how much pack data is read and
/// verified. Findings are returned, not raised: a damaged repository is a result.
///
/// # Errors
/// As [`forget`] (the check itself could not run).
pub fn check(
    target: &RepoTarget,
    read_data: ReadData,
    lock: &LockOptions,
) -> Result<CheckReport, EngineError> {
    let open = repo::open(target, false)?;
    let _held = lock_for(target, &open, lock)?;
    let subset = match read_data {
        ReadData::None | ReadData::All => ReadSubsetOption::All,
        ReadData::Part { n, of } => ReadSubsetOption::IdSubSet((n, of)),
        ReadData::Percent(p) => ReadSubsetOption::Percentage(p),
    };
    let opts = CheckOptions::default().read_data(read_data != ReadData::None).read_data_subset(subset);
    let results = open
        .repo
        .check(opts)
        .map_err(|e| from_rustic(&e, &open.prepared.redactor, "checking the repository"))?;
    let mut report = CheckReport::default();
    for (level, finding) in results.0 {
        let text = open.prepared.redactor.redact(&finding.to_string());
        // rustic_core 0.13 does not export the level's type; its Debug names the variant.
        if format!("{level:?}") == "Error" {
            report.errors.push(text);
        } else {
            report.warnings.push(text);
        }
    }
    Ok(report)
}

/// The repository's exclusive lock, held until dropped: backups (and every restic that follows
/// restic's locking rules) wait meanwhile. For a maintenance window a person opens by hand, and
/// for tests that need a repository to stay locked.
pub struct ExclusiveLock {
    _lock: RepoLock,
}

impl std::fmt::Debug for ExclusiveLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExclusiveLock").finish_non_exhaustive()
    }
}

/// Takes the repository's exclusive lock (waiting up to `lock.wait` for others to go).
///
/// # Errors
/// As [`forget`].
pub fn lock_exclusively(target: &RepoTarget, lock: &LockOptions) -> Result<ExclusiveLock, EngineError> {
    let open = repo::open(target, false)?;
    Ok(ExclusiveLock { _lock: lock_for(target, &open, lock)? })
}

/// Removes lock files by id without opening the repository (a killed backup's or maintenance
/// job's lock, recorded by whoever started it). Locks already gone are fine.
///
/// # Errors
/// Network and credential errors.
pub fn remove_locks(target: &RepoTarget, ids: &[String]) -> Result<(), EngineError> {
    let prepared = target.prepare()?;
    let files = crate::rest::RestFiles::new(target, &prepared, std::time::Duration::from_secs(60))?;
    for id in ids {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::InvalidInput(format!("`{id}` is not a lock id")));
        }
        files.delete("locks", id)?;
    }
    Ok(())
}
