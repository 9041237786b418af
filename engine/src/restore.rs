//! Restoring a snapshot, or one path of it, into a local directory.
//!
//! Semantics: the whole snapshot is restored like `restic restore ID --target DEST`, i.e. the
//! backed-up absolute paths are recreated under `dest`. A directory given as
//! `path_in_snapshot` has its *contents* restored into `dest` (like `restic restore ID:PATH`);
//! a single file is restored as `dest/<its name>`.

use std::ffi::OsStr;
use std::path::{Component, Path};

use rustic_core::repofile::{Node, SnapshotFile, SnapshotId};
use rustic_core::{IndexedFull, LocalDestination, LsOptions, Repository, RestoreOptions, RusticError};

use crate::RepoTarget;
use crate::error::{EngineError, from_rustic};
use crate::repo::{self, OpenRepo, normalise_id};

/// See [`crate::restore`].
pub(crate) fn restore(
    target: &RepoTarget,
    snapshot_id: &str,
    path_in_snapshot: Option<&str>,
    dest: &Path,
) -> Result<(), EngineError> {
    let wanted = normalise_id(snapshot_id, "snapshot id")?;
    let dest_text = dest.to_str().ok_or_else(|| {
        EngineError::InvalidInput(format!("restore destination {} is not valid UTF-8", dest.display()))
    })?;
    if dest_text.is_empty() {
        return Err(EngineError::InvalidInput("the restore destination is empty".to_owned()));
    }
    if dest.exists() && !dest.is_dir() {
        return Err(EngineError::InvalidInput(format!(
            "the restore destination {dest_text} exists and is not a directory"
        )));
    }

    let OpenRepo { repo, prepared } = repo::open(target, true)?;
    let error = |err: &RusticError, doing: &str| from_rustic(err, &prepared.redactor, doing);
    let snap_id =
        find_snapshot(&repo, &wanted).map_err(|e| e.or_else(|err| error(&err, "listing snapshots")))?;
    if std::env::var_os("COFRE_ENGINE_RESTORER").is_some_and(|v| v == "rustic") {
        return restore_with_rustic(repo, &prepared, &snap_id, path_in_snapshot, dest_text);
    }
    let snap =
        repo.get_snapshot_from_str(&snap_id, |_| true).map_err(|err| error(&err, "reading the snapshot"))?;
    let outcome =
        crate::restorer::run(&repo, &prepared.backends.repository(), *snap.tree, path_in_snapshot, dest)
            .map_err(|failure| match failure {
                crate::archiver::Failure::NotFound(path) => {
                    EngineError::NotFound(format!("{path} is not in snapshot {}", &snap_id[..8]))
                }
                other => other.into_engine(&prepared.redactor, "restoring"),
            })?;
    // At most 1,000 of each are kept (and logged); the rest are counted.
    for warning in outcome.warnings.iter() {
        log::warn!("restore: {warning}");
    }
    if outcome.warnings.more() > 0 {
        log::warn!("restore: … and {} more warnings, not listed", outcome.warnings.more());
    }
    if !outcome.errors.is_empty() {
        let shown: Vec<&str> = outcome.errors.iter().take(5).map(String::as_str).collect();
        return Err(EngineError::Other(format!(
            "the restore is incomplete: {} entries failed ({}{})",
            outcome.errors.len(),
            shown.join("; "),
            if outcome.errors.len() > shown.len() as u64 { "; …" } else { "" }
        )));
    }
    log::info!("restored {} files, {} bytes of content", outcome.files, outcome.bytes);
    Ok(())
}

/// rustic_core's restorer (`COFRE_ENGINE_RESTORER=rustic`): for comparisons, and as a way back
/// should the engine's restorer misbehave on some machine.
fn restore_with_rustic(
    repo: Repository<rustic_core::OpenStatus>,
    prepared: &crate::target::Prepared,
    snap_id: &str,
    path_in_snapshot: Option<&str>,
    dest_text: &str,
) -> Result<(), EngineError> {
    let error = |err: &RusticError, doing: &str| from_rustic(err, &prepared.redactor, doing);
    let repo = repo.to_indexed().map_err(|err| error(&err, "reading the repository index"))?;
    let snap =
        repo.get_snapshot_from_str(snap_id, |_| true).map_err(|err| error(&err, "reading the snapshot"))?;
    let node = find_node(&repo, &snap, path_in_snapshot)
        .map_err(|e| e.or_else(|err| error(&err, "reading the snapshot's trees")))?;

    // A trailing `/` makes rustic treat the destination as a directory even when it is new.
    let dest_dir = if dest_text.ends_with('/') { dest_text.to_owned() } else { format!("{dest_text}/") };
    let destination = LocalDestination::new(&dest_dir, true, false)
        .map_err(|err| error(&err, "preparing the restore destination"))?;
    let opts = RestoreOptions::default();
    let nodes = repo.ls(&node, &LsOptions::default()).map_err(|err| error(&err, "listing the snapshot"))?;
    let plan = repo
        .prepare_restore(&opts, nodes.clone(), &destination, false)
        .map_err(|err| error(&err, "planning the restore"))?;
    repo.restore(plan, &opts, nodes, &destination).map_err(|err| error(&err, "restoring"))?;
    Ok(())
}

/// Either our own error, or a rustic error still to be mapped by the caller.
enum Failure {
    Engine(EngineError),
    Rustic(Box<RusticError>),
}

impl Failure {
    fn or_else(self, map: impl FnOnce(Box<RusticError>) -> EngineError) -> EngineError {
        match self {
            Self::Engine(err) => err,
            Self::Rustic(err) => map(err),
        }
    }
}

impl From<Box<RusticError>> for Failure {
    fn from(err: Box<RusticError>) -> Self {
        Self::Rustic(err)
    }
}

/// Resolves a (possibly abbreviated) snapshot id to the full id.
fn find_snapshot<S: rustic_core::Open>(repo: &Repository<S>, wanted: &str) -> Result<String, Failure> {
    let matches: Vec<String> = repo
        .list::<SnapshotId>()?
        .map(|id| id.to_hex().to_string())
        .filter(|id| id.starts_with(wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::Engine(EngineError::NotFound(format!(
            "no snapshot with id {wanted} in this repository"
        )))),
        _ => Err(Failure::Engine(EngineError::InvalidInput(format!(
            "the snapshot id {wanted} is ambiguous ({} snapshots start with it)",
            matches.len()
        )))),
    }
}

/// The node of `path` in the snapshot (its root tree when `path` is `None` or `/`).
fn find_node<S: IndexedFull>(
    repo: &Repository<S>,
    snap: &SnapshotFile,
    path: Option<&str>,
) -> Result<Node, Failure> {
    let mut node = repo.node_from_snapshot_and_path(snap, "")?;
    let Some(path) = path else { return Ok(node) };
    let mut walked = String::new();
    for component in Path::new(path).components() {
        let name: &OsStr = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Failure::Engine(EngineError::InvalidInput(format!(
                    "the path in the snapshot `{path}` must not contain `..`"
                ))));
            }
        };
        walked.push('/');
        walked.push_str(&name.to_string_lossy());
        let Some(subtree) = node.subtree else {
            return Err(Failure::Engine(EngineError::NotFound(format!(
                "{walked} is not in snapshot {} (a parent is not a directory)",
                &*snap.id.to_hex()
            ))));
        };
        let tree = repo.get_tree(&subtree)?;
        node = tree.nodes.into_iter().find(|n| n.name() == name).ok_or_else(|| {
            Failure::Engine(EngineError::NotFound(format!(
                "{walked} is not in snapshot {}",
                &*snap.id.to_hex()
            )))
        })?;
    }
    Ok(node)
}
