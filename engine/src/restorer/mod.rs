//! Cofre's restorer: writes a snapshot's tree (or part of it) into a local directory.
//!
//! rustic_core 0.13's restorer always runs 20 reader threads, each holding a whole pack range
//! (1.0–1.5 GB peak for the benchmark's 1 GB restore, 5× restic's). This one:
//!
//! 1. walks the trees once (parent-first), creating directories, empty files, links and
//!    special files, and plans every file's blobs **grouped by pack**, in rounds of up to
//!    100,000 files so that memory stays bounded on large trees;
//! 2. lets a few workers (two per core) take one pack at a time: read the needed ranges,
//!    decrypt (the MAC authenticates each blob), decompress with a reused context, and write
//!    each blob at its place. A single-blob file (most small files) is created and written in
//!    one go by the worker; a file's metadata is set by whoever writes its last blob, so file
//!    creation, the kernel's share of a restore of many files, runs on every core;
//! 3. makes hard links, then sets the directories' metadata deepest first (creating entries
//!    changes a directory's mtime).
//!
//! Files: this one runs a restore (finds the start, the rounds, hard links, directory
//! metadata); `plan.rs` is step 1, `content.rs` step 2 (and the workers' scratch buffers),
//! `metadata.rs` how metadata is applied. The steps see this module's items through
//! `use super::*`; what one exposes to another is `pub(super)`.
//!
//! Metadata as restic restores it: owner and group by number (only when running as root),
//! permission bits (with setuid/setgid/sticky), extended attributes, then access and
//! modification times (symlinks: owner and times only).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustic_core::jiff::Timestamp;
use rustic_core::repofile::{FileType, Metadata, Node, NodeType};
use rustic_core::{Id, OpenStatus, Repository, WriteBackend};

mod content;
mod metadata;
mod plan;

use content::Content;
use metadata::{FileMeta, Kind, set_file_metadata, set_metadata};
use plan::{Plan, PlannedFile, Target};

use crate::archiver::Failure;
use crate::archiver::format::Key;
use crate::archiver::index::{Index, Location, TreeReader};
use crate::warnings::Capped;

/// Files planned before their content is written: bounds the plan's memory on large trees (a
/// pack holding files of two rounds is read in both). Debug builds (the tests) use rounds of
/// 100 files, so the engine's restore tests go through several rounds.
const PLAN_FILES: usize = if cfg!(debug_assertions) { 100 } else { 100_000 };
/// Ranges of a pack closer than this are read in one request.
const READ_GAP: u32 = 256 << 10;
/// At most this many bytes per read request.
const READ_MAX: u32 = 8 << 20;

/// What a restore did not manage, for the caller to report.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Entries whose content could not be written: the restore is incomplete. Bounded: the
    /// first 1,000 and a count (`warnings::Capped`).
    pub(crate) errors: Capped,
    /// Metadata that could not be set (the content is complete).
    pub(crate) warnings: Capped,
}

/// Restores the snapshot whose root tree is `root`: all of it when `path` is `None` (the
/// backed-up absolute paths are recreated under `dest`), else the node at `path` (a
/// directory: its contents go into `dest`; anything else: it goes to `dest/<name>`).
pub(crate) fn run(
    repo: &Repository<OpenStatus>,
    be: &Arc<dyn WriteBackend>,
    root: Id,
    path: Option<&str>,
    dest: &Path,
) -> Result<Outcome, Failure> {
    let key = Key::from_master(&repo.key()).map_err(Failure::Other)?;
    let index = Arc::new(
        Index::load(repo, true)
            .map_err(|err| Failure::Rustic { doing: "reading the repository index", err })?,
    );
    let trees = TreeReader::new(be.clone(), key.clone(), index.clone());
    let start = find(&trees, root, path)?;
    fs::create_dir_all(dest).map_err(|e| Failure::Other(format!("cannot create {}: {e}", dest.display())))?;

    let mut plan = Plan {
        index: &index,
        be: &**be,
        key: &key,
        files: Vec::new(),
        by_pack: HashMap::new(),
        dirs: Vec::new(),
        links: Vec::new(),
        hardlinks: Vec::new(),
        inodes: HashMap::new(),
        is_root: nix::unistd::geteuid().is_root(),
        outcome: Outcome::default(),
    };
    match start {
        Start::Tree(id) => plan.tree(&trees, id, dest)?,
        Start::Node(node) => {
            let mut pending = Vec::new();
            plan.node(*node, dest, &mut pending)?;
            if let Some((id, dir)) = pending.pop() {
                plan.tree(&trees, id, &dir)?;
            }
        }
    }
    plan.write_content();
    // Files whose content failed stay incomplete; the errors say so.

    let Plan { dirs, links, hardlinks, is_root, mut outcome, .. } = plan;
    for (link, first) in hardlinks {
        let _ = fs::remove_file(&link);
        if let Err(e) = fs::hard_link(&first, &link) {
            outcome.errors.push(format!("{}: cannot link to {}: {e}", link.display(), first.display()));
        }
    }
    for (path, kind, meta) in &links {
        set_metadata(path, meta, *kind, is_root, &mut outcome.warnings);
    }
    for (path, meta) in dirs.iter().rev() {
        set_metadata(path, meta, Kind::Dir, is_root, &mut outcome.warnings);
    }
    Ok(outcome)
}

enum Start {
    /// Restore this tree's entries into the destination.
    Tree(Id),
    /// Restore this node into the destination.
    Node(Box<Node>),
}

/// What `path` names in the snapshot whose root tree is `root`.
fn find(trees: &TreeReader, root: Id, path: Option<&str>) -> Result<Start, Failure> {
    let Some(path) = path else { return Ok(Start::Tree(root)) };
    let mut tree = root;
    let mut walked = String::new();
    let names: Vec<&OsStr> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(Ok(name)),
            std::path::Component::ParentDir | std::path::Component::Prefix(_) => Some(Err(Failure::Invalid(
                format!("the path in the snapshot `{path}` must not contain `..`"),
            ))),
            _ => None,
        })
        .collect::<Result<_, _>>()?;
    let Some((last, parents)) = names.split_last() else { return Ok(Start::Tree(root)) };
    for name in parents.iter().chain(std::iter::once(last)) {
        walked.push('/');
        walked.push_str(&name.to_string_lossy());
        let nodes = trees
            .read(&tree)
            .map_err(|why| Failure::Other(format!("the tree of {walked} cannot be read: {why}")))?
            .nodes;
        let node =
            nodes.into_iter().find(|n| n.name() == *name).ok_or_else(|| Failure::NotFound(walked.clone()))?;
        if std::ptr::eq(name, last) {
            return Ok(match (node.is_dir(), node.subtree) {
                (true, Some(subtree)) => Start::Tree(*subtree),
                _ => Start::Node(Box::new(node)),
            });
        }
        tree = match node.subtree {
            Some(subtree) if node.is_dir() => *subtree,
            _ => return Err(Failure::NotFound(format!("{walked} (not a directory)"))),
        };
    }
    unreachable!("the loop returns at the last name")
}

#[cfg(test)]
mod tests {
    use super::metadata::{system_time, unix_permissions};
    use super::plan::check_name;
    use super::*;

    /// A restore whose metadata cannot be set anywhere (here: 3,000 paths that do not exist)
    /// keeps the first 1,000 warnings and counts the rest, as a backup does (#13).
    #[test]
    fn a_restore_keeps_the_first_warnings_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = FileMeta {
            mode: Some(0o640),
            uid: Some(1),
            gid: Some(1),
            atime: None,
            mtime: Some(Timestamp::UNIX_EPOCH),
            xattrs: Box::new([]),
        };
        let mut warnings = Capped::default();
        for i in 0..3_000 {
            set_metadata(&dir.path().join(format!("gone-{i}")), &meta, Kind::File, true, &mut warnings);
        }
        assert!(warnings.len() >= 3_000, "every failure counted: {}", warnings.len());
        assert_eq!(warnings.iter().count(), crate::MAX_WARNINGS, "the first 1,000 listed");
        assert!(warnings.iter().next().is_some_and(|w| w.contains("gone-0")), "in order");
        let mut outcome = Outcome::default();
        outcome.warnings.extend(warnings);
        assert_eq!(outcome.warnings.iter().count(), crate::MAX_WARNINGS, "merging stays bounded");
    }

    #[test]
    fn go_modes_map_to_unix_permissions() {
        assert_eq!(unix_permissions(0o644), 0o644);
        assert_eq!(unix_permissions((1 << 31) | 0o755), 0o755, "the directory bit is not a permission");
        assert_eq!(unix_permissions((1 << 23) | (1 << 22) | (1 << 20) | 0o750), 0o7750);
    }

    #[test]
    fn times_before_and_after_1970() {
        use rustic_core::jiff::Timestamp;
        let t = |s, n| system_time(Timestamp::new(s, n).unwrap());
        let secs = |st: std::time::SystemTime| match st.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        assert_eq!(secs(t(1_700_000_000, 500_000_000)), 1_700_000_000.5);
        assert_eq!(secs(t(-2, -500_000_000)), -2.5);
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(check_name(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert!(check_name(OsStr::new("ok name ..")).is_ok());
    }
}
