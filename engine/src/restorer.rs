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

/// A blob to write: where it is in its pack and where it goes.
struct Target {
    offset: u32,
    length: u32,
    uncompressed_length: u32,
    file: u32,
    file_offset: u64,
}

struct PlannedFile {
    path: Box<Path>,
    meta: FileMeta,
    /// Blobs still to write; whoever writes the last one sets the metadata.
    remaining: AtomicU32,
    /// More than one blob: the file was created (at its size) while planning.
    multi: bool,
}

struct Plan<'a> {
    index: &'a Index,
    be: &'a dyn WriteBackend,
    key: &'a Key,
    files: Vec<PlannedFile>,
    by_pack: HashMap<u32, Vec<Target>>,
    dirs: Vec<(PathBuf, FileMeta)>,
    /// Symlinks and special files: metadata set at the end.
    links: Vec<(PathBuf, Kind, FileMeta)>,
    hardlinks: Vec<(PathBuf, PathBuf)>,
    /// First path restored for each (device, inode) of a hard-linked file.
    inodes: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
    outcome: Outcome,
}

impl Plan<'_> {
    /// Plans the tree `id` into the directory `dir`, which exists; depth-first with an
    /// explicit stack (a hostile snapshot cannot exhaust the thread's stack).
    fn tree(&mut self, trees: &TreeReader, id: Id, dir: &Path) -> Result<(), Failure> {
        let mut pending = vec![(id, dir.to_path_buf())];
        while let Some((id, dir)) = pending.pop() {
            let tree = trees.read(&id).map_err(|why| {
                Failure::Other(format!("the tree of {} cannot be read: {why}", dir.display()))
            })?;
            for node in tree.nodes {
                self.node(node, &dir, &mut pending)?;
            }
            if self.files.len() >= PLAN_FILES {
                self.write_content();
            }
        }
        Ok(())
    }

    /// The content phase for the files planned so far: workers take their packs in turn.
    fn write_content(&mut self) {
        let files = std::mem::take(&mut self.files);
        let mut packs: Vec<(u32, Vec<Target>)> = std::mem::take(&mut self.by_pack).into_iter().collect();
        packs.sort_unstable_by_key(|(pack, _)| *pack);
        let content = Content {
            be: self.be,
            key: self.key,
            index: self.index,
            files: &files,
            packs: &packs,
            next: AtomicUsize::new(0),
            is_root: self.is_root,
            outcome: Mutex::new(Outcome::default()),
        };
        let workers = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 4) * 2;
        std::thread::scope(|s| {
            for _ in 0..workers.min(packs.len()) {
                s.spawn(|| content.work());
            }
        });
        let done = content.outcome.into_inner().unwrap_or_else(PoisonError::into_inner);
        self.outcome.files += done.files;
        self.outcome.bytes += done.bytes;
        self.outcome.errors.extend(done.errors);
        self.outcome.warnings.extend(done.warnings);
    }

    fn node(&mut self, node: Node, dir: &Path, pending: &mut Vec<(Id, PathBuf)>) -> Result<(), Failure> {
        let name = node.name();
        check_name(&name)?;
        let path = dir.join(&*name);
        match &node.node_type {
            NodeType::Dir => {
                if let Err(e) = make_dir(&path) {
                    self.outcome.errors.push(format!("{}: cannot create the directory: {e}", path.display()));
                    return Ok(());
                }
                if let Some(subtree) = node.subtree {
                    pending.push((*subtree, path.clone()));
                }
                self.dirs.push((path, node.meta.into()));
            }
            NodeType::File => self.file(node, path),
            NodeType::Symlink { .. } => {
                let _ = fs::remove_file(&path);
                match std::os::unix::fs::symlink(node.node_type.to_link(), &path) {
                    Ok(()) => self.links.push((path, Kind::of(&node), node.meta.into())),
                    Err(e) => {
                        self.outcome.errors.push(format!("{}: cannot create the link: {e}", path.display()));
                    }
                }
            }
            NodeType::Fifo => {
                let _ = fs::remove_file(&path);
                match nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                    Ok(()) => self.links.push((path, Kind::of(&node), node.meta.into())),
                    Err(e) => {
                        self.outcome.errors.push(format!("{}: cannot create the FIFO: {e}", path.display()));
                    }
                }
            }
            NodeType::Dev { device } | NodeType::Chardev { device } => {
                let kind = if matches!(node.node_type, NodeType::Dev { .. }) {
                    nix::sys::stat::SFlag::S_IFBLK
                } else {
                    nix::sys::stat::SFlag::S_IFCHR
                };
                if !self.is_root {
                    self.outcome
                        .warnings
                        .push(format!("{}: device node not restored (needs root)", path.display()));
                    return Ok(());
                }
                let _ = fs::remove_file(&path);
                let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
                match nix::sys::stat::mknod(&path, kind, mode, *device) {
                    Ok(()) => self.links.push((path, Kind::of(&node), node.meta.into())),
                    Err(e) => {
                        self.outcome
                            .errors
                            .push(format!("{}: cannot create the device: {e}", path.display()));
                    }
                }
            }
            // restic does not restore sockets either: a socket is only meaningful to the
            // process that listens on it.
            NodeType::Socket => {}
        }
        Ok(())
    }

    fn file(&mut self, mut node: Node, path: PathBuf) {
        if node.meta.links > 1 && node.meta.inode != 0 {
            let key = (node.meta.device_id, node.meta.inode);
            if let Some(first) = self.inodes.get(&key) {
                self.hardlinks.push((path, first.clone()));
                return;
            }
            self.inodes.insert(key, path.clone());
        }
        let content = node.content.take().unwrap_or_default();
        let mut targets = Vec::with_capacity(content.len());
        let mut offset = 0u64;
        for id in &content {
            let Some(loc) = self.index.data_location(id) else {
                self.outcome.errors.push(format!(
                    "{}: not restored, blob {} is missing from the repository (run `restic check`)",
                    path.display(),
                    id.to_hex().as_str()
                ));
                return;
            };
            targets.push((loc, offset));
            offset += u64::from(loc.plain_length());
        }
        let file_no = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        let multi = targets.len() > 1;
        if targets.len() != 1 {
            // Empty files and files of several blobs are created here; a single-blob file is
            // created by the worker that writes it.
            let _ = fs::remove_file(&path);
            let file = match File::create(&path).and_then(|f| f.set_len(offset).map(|()| f)) {
                Ok(file) => file,
                Err(e) => {
                    self.outcome.errors.push(format!("{}: cannot create the file: {e}", path.display()));
                    return;
                }
            };
            if targets.is_empty() {
                self.outcome.files += 1;
                set_file_metadata(&file, &path, &node.meta.into(), self.is_root, &mut self.outcome.warnings);
                return;
            }
        }
        for (loc, file_offset) in &targets {
            self.by_pack.entry(loc.pack).or_default().push(target(loc, file_no, *file_offset));
        }
        let remaining = AtomicU32::new(u32::try_from(targets.len()).unwrap_or(u32::MAX));
        self.files.push(PlannedFile {
            path: path.into_boxed_path(),
            meta: node.meta.into(),
            remaining,
            multi,
        });
    }
}

fn target(loc: &Location, file: u32, file_offset: u64) -> Target {
    Target {
        offset: loc.offset,
        length: loc.length,
        uncompressed_length: loc.uncompressed_length,
        file,
        file_offset,
    }
}

/// Names come from the repository (authenticated by its key), but a damaged or hostile
/// snapshot must still not write outside the destination.
fn check_name(name: &OsStr) -> Result<(), Failure> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(Failure::Other(format!(
            "the snapshot holds an invalid file name {:?}; refusing to restore it",
            name.to_string_lossy()
        )));
    }
    Ok(())
}

fn make_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path)?.is_dir() {
                Ok(())
            } else {
                fs::remove_file(path)?;
                fs::create_dir(path)
            }
        }
        other => other,
    }
}

/// The content phase: workers take packs in turn.
struct Content<'a> {
    be: &'a dyn WriteBackend,
    key: &'a Key,
    index: &'a Index,
    files: &'a [PlannedFile],
    packs: &'a [(u32, Vec<Target>)],
    next: AtomicUsize,
    is_root: bool,
    outcome: Mutex<Outcome>,
}

impl Content<'_> {
    fn work(&self) {
        let mut scratch = Scratch::default();
        let mut local = Outcome::default();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some((pack, targets)) = self.packs.get(i) else { break };
            if let Err(why) = self.pack(*pack, targets, &mut scratch, &mut local) {
                for t in targets {
                    let file = &self.files[t.file as usize];
                    local.errors.push(format!("{}: not restored completely: {why}", file.path.display()));
                }
            }
        }
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        outcome.files += local.files;
        outcome.bytes += local.bytes;
        outcome.errors.append(&mut local.errors);
        outcome.warnings.append(&mut local.warnings);
    }

    fn pack(
        &self,
        pack: u32,
        targets: &[Target],
        scratch: &mut Scratch,
        out: &mut Outcome,
    ) -> Result<(), String> {
        let mut order: Vec<&Target> = targets.iter().collect();
        order.sort_unstable_by_key(|t| t.offset);
        let id = self.index.packs[pack as usize];
        let mut i = 0;
        while i < order.len() {
            // One read for the blobs that lie close together.
            let start = order[i].offset;
            let mut end = start + order[i].length;
            let mut j = i + 1;
            while j < order.len()
                && order[j].offset <= end + READ_GAP
                && order[j].offset + order[j].length - start <= READ_MAX
            {
                end = end.max(order[j].offset + order[j].length);
                j += 1;
            }
            let data = self
                .be
                .read_partial(FileType::Pack, &id, false, start, end - start)
                .map_err(|e| crate::error::describe_rustic(&e))?;
            for t in &order[i..j] {
                let at = (t.offset - start) as usize;
                let blob = data.get(at..at + t.length as usize).ok_or("the server returned a short range")?;
                let plain = scratch.open(self.key, blob, t.uncompressed_length)?;
                let file = &self.files[t.file as usize];
                let handle = match write_blob(file, plain, t.file_offset) {
                    Ok(handle) => handle,
                    Err(e) => {
                        out.errors.push(format!("{}: cannot write: {e}", file.path.display()));
                        continue;
                    }
                };
                out.bytes += plain.len() as u64;
                if file.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    out.files += 1;
                    set_file_metadata(&handle, &file.path, &file.meta, self.is_root, &mut out.warnings);
                }
            }
            i = j;
        }
        Ok(())
    }
}

/// Writes a blob where it belongs; returns the open file (for its metadata).
fn write_blob(file: &PlannedFile, plain: &[u8], offset: u64) -> io::Result<File> {
    if file.multi {
        let handle = OpenOptions::new().write(true).open(&file.path)?;
        handle.write_all_at(plain, offset)?;
        return Ok(handle);
    }
    // A new file; an existing one is replaced, not written through (it may be a hard link of
    // something else).
    let create = || OpenOptions::new().write(true).create_new(true).open(&file.path);
    let mut handle = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&file.path)?;
            create()?
        }
        other => other?,
    };
    handle.write_all(plain)?;
    Ok(handle)
}

/// Per-worker buffers for decrypted and decompressed blobs.
#[derive(Default)]
struct Scratch {
    decrypted: Vec<u8>,
    plain: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl Scratch {
    fn open(&mut self, key: &Key, blob: &[u8], uncompressed_length: u32) -> Result<&[u8], String> {
        key.decrypt_into(blob, &mut self.decrypted)?;
        if uncompressed_length == 0 {
            return Ok(&self.decrypted);
        }
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            None => self.decompressor.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        self.plain.clear();
        self.plain.reserve(uncompressed_length as usize);
        decompressor.decompress_to_buffer(&self.decrypted[..], &mut self.plain).map_err(|e| e.to_string())?;
        if self.plain.len() != uncompressed_length as usize {
            return Err("a blob decompressed to the wrong length".to_owned());
        }
        Ok(&self.plain)
    }
}

/// What the restorer keeps of a node's metadata until it sets it (a restore of a million files
/// holds a million of these).
struct FileMeta {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    atime: Option<Timestamp>,
    mtime: Option<Timestamp>,
    /// Extended attributes: name and value.
    xattrs: Box<[(String, Vec<u8>)]>,
}

impl From<Metadata> for FileMeta {
    fn from(m: Metadata) -> Self {
        Self {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            atime: m.atime,
            mtime: m.mtime,
            xattrs: m
                .extended_attributes
                .into_iter()
                .map(|a| (a.name, a.value.unwrap_or_default()))
                .collect(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    fn of(node: &Node) -> Self {
        match node.node_type {
            NodeType::File => Self::File,
            NodeType::Dir => Self::Dir,
            NodeType::Symlink { .. } => Self::Symlink,
            _ => Self::Other,
        }
    }
}

/// Go's `fs.FileMode` bits that restic stores, mapped back to `chmod` bits.
fn unix_permissions(go_mode: u32) -> u32 {
    let mut mode = go_mode & 0o777;
    if go_mode & (1 << 23) != 0 {
        mode |= 0o4000;
    }
    if go_mode & (1 << 22) != 0 {
        mode |= 0o2000;
    }
    if go_mode & (1 << 20) != 0 {
        mode |= 0o1000;
    }
    mode
}

/// [`set_metadata`] for a regular file through its open handle: no path look-ups.
fn set_file_metadata(file: &File, path: &Path, meta: &FileMeta, is_root: bool, warnings: &mut Capped) {
    apply_metadata(Via::Handle(file), path, meta, is_root, warnings);
}

/// Sets the metadata of the entry at `path` (a symlink's own, not its target's).
fn set_metadata(path: &Path, meta: &FileMeta, kind: Kind, is_root: bool, warnings: &mut Capped) {
    let via = if kind == Kind::Symlink { Via::Symlink } else { Via::Path };
    apply_metadata(via, path, meta, is_root, warnings);
}

/// How metadata reaches an entry.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// Through an open file (no path look-ups).
    Handle(&'a File),
    /// By path.
    Path,
    /// By path, not following the link: owner and times only.
    Symlink,
}

/// Owner (as root), permissions and extended attributes (not for symlinks), then times: the
/// order restic uses (`chown` clears setuid bits; setting anything else changes times).
fn apply_metadata(via: Via<'_>, path: &Path, meta: &FileMeta, is_root: bool, warnings: &mut Capped) {
    let mut warn =
        |what: &str, e: &dyn std::fmt::Display| warnings.push(format!("{}: {what}: {e}", path.display()));
    if is_root {
        let owned = match via {
            Via::Handle(file) => std::os::unix::fs::fchown(file, meta.uid, meta.gid),
            Via::Path | Via::Symlink => std::os::unix::fs::lchown(path, meta.uid, meta.gid),
        };
        if let Err(e) = owned {
            warn("cannot set the owner", &e);
        }
    }
    if !matches!(via, Via::Symlink) {
        if let Some(mode) = meta.mode {
            let perms = fs::Permissions::from_mode(unix_permissions(mode));
            let set = match via {
                Via::Handle(file) => file.set_permissions(perms),
                _ => fs::set_permissions(path, perms),
            };
            if let Err(e) = set {
                warn("cannot set the permissions", &e);
            }
        }
        for (name, value) in &meta.xattrs {
            if let Err(e) = xattr::set(path, name, value) {
                warn(&format!("cannot set the extended attribute {name}"), &e);
            }
        }
    }
    let Some(mtime) = meta.mtime else { return };
    let atime = meta.atime.unwrap_or(mtime);
    let set = match via {
        Via::Handle(file) => file.set_times(
            fs::FileTimes::new().set_accessed(system_time(atime)).set_modified(system_time(mtime)),
        ),
        Via::Path | Via::Symlink => {
            let spec =
                |t: Timestamp| nix::sys::time::TimeSpec::new(t.as_second(), i64::from(t.subsec_nanosecond()));
            nix::sys::stat::utimensat(
                None,
                path,
                &spec(atime),
                &spec(mtime),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io::Error::from)
        }
    };
    if let Err(e) = set {
        warn("cannot set the times", &e);
    }
}

fn system_time(t: rustic_core::jiff::Timestamp) -> std::time::SystemTime {
    let ns = t.as_nanosecond();
    let abs = ns.unsigned_abs();
    let span = std::time::Duration::new(
        u64::try_from(abs / 1_000_000_000).unwrap_or(u64::MAX),
        u32::try_from(abs % 1_000_000_000).unwrap_or(0),
    );
    if ns >= 0 { std::time::UNIX_EPOCH + span } else { std::time::UNIX_EPOCH - span }
}

#[cfg(test)]
mod tests {
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
