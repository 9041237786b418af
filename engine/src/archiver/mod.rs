//! Cofre's archiver: the backup pipeline, written for this engine on rustic_core's repository
//! types (open, key, index files, trees, snapshots) and its source walk (`source.rs`).
//!
//! rustic_core 0.13's own archiver spends most of a backup of many small files on per-file
//! overheads (a new Rabin chunker per file, a zstd context per blob, two thread hand-offs per
//! file and per blob, one serial uploader): see docs/benchmarks.md. This one is shaped for
//! that workload:
//!
//! * the **walker** (the calling thread) walks the source in restic's order, compares each
//!   file with the parent snapshot and takes unchanged files' content from it without reading
//!   them; new and changed files go to the workers in **batches** (up to 64 files or 1 MiB);
//! * **workers** (one per core) read, chunk (the chunker is built once), hash, deduplicate and
//!   compress (one zstd context each) and pack into their **own** pack: no hand-off per blob;
//! * the **assembler** builds the trees in order as results come back, packs tree blobs;
//! * **uploaders** (two) send finished packs and write an index file for every 50,000 blobs
//!   stored (so memory stays bounded, and an interrupted backup's packs are indexed and reused
//!   by the next one); the last index file, then the snapshot, are written only after every
//!   pack was stored, so a failed or interrupted backup leaves no snapshot.
//!
//! What it writes is the restic format (see `format.rs`); the engine's tests read it back with
//! restic and rustic.

mod chunker;
pub(crate) mod format;
pub(crate) mod index;
mod upload;

pub(crate) use upload::PackUploader;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use rustic_core::jiff::Zoned;
use rustic_core::repofile::{
    BlobType, ConfigFile, FileType, Metadata, Node, NodeType, SnapshotFile, SnapshotId, SnapshotSummary, Tree,
};
use rustic_core::{
    DataId, Id, OpenStatus, ReadSource as _, ReadSourceEntry, ReadSourceOpen as _, Repository, TreeId,
};
use rustic_core::{RusticError, WriteBackend};

use crate::progress::BackupProgress;
use crate::source::{WatchedOpen, WatchedSource};
use crate::warnings::Warnings;
use chunker::{Chunker, SplitError};
use format::{BlobKind, Hash, IndexJson, IndexPackJson, Key, PackedBlob, sha256};
use index::{IdSet, Index, TreeReader};

/// Why a backup failed.
pub(crate) enum Failure {
    /// A repository operation failed; `doing` says which.
    Rustic {
        doing: &'static str,
        err: Box<RusticError>,
    },
    /// A path asked for is not in the snapshot.
    NotFound(String),
    /// The request cannot be carried out as asked.
    Invalid(String),
    /// Already the engine's own error.
    Engine(crate::EngineError),
    Other(String),
}

impl Failure {
    /// The engine's error for it; `what` names the operation ("backing up", "restoring").
    pub(crate) fn into_engine(self, redactor: &crate::error::Redactor, what: &str) -> crate::EngineError {
        use crate::EngineError;
        match self {
            Self::Rustic { doing, err } => crate::error::from_rustic(&err, redactor, doing),
            Self::NotFound(what) => EngineError::NotFound(what),
            Self::Invalid(why) => EngineError::InvalidInput(why),
            Self::Engine(err) => err,
            Self::Other(why) => EngineError::Other(redactor.redact(&format!("{what}: {why}"))),
        }
    }
}

/// New and changed files go to the workers in batches of up to this many files…
const BATCH_FILES: usize = 64;
/// …or this many bytes.
const BATCH_BYTES: u64 = 1 << 20;
/// Walk events buffered between the walker and the assembler (the read-ahead).
const EVENTS_AHEAD: usize = 4096;
/// Pack uploads in parallel.
const UPLOADERS: usize = 2;
/// Scratch buffers larger than this are freed after use.
const SCRATCH_KEPT: usize = 4 << 20;
/// An index file is written once this many blobs are stored (restic's limit per index file):
/// bounds the memory of the pending index and of reading it back.
const BLOBS_PER_INDEX: usize = 50_000;

/// Backs up `source` into the open repository and saves the snapshot `snap` (its host, tags
/// and command already set) for `paths`, counting what it processed in `progress`.
#[expect(clippy::too_many_arguments, reason = "the backup's inputs; a struct would only rename them")]
pub(crate) fn run(
    repo: &Repository<OpenStatus>,
    be: &Arc<dyn WriteBackend>,
    packs: &PackUploader,
    source: &WatchedSource,
    mut snap: SnapshotFile,
    paths: &[PathBuf],
    warnings: &Warnings,
    progress: &BackupProgress,
) -> Result<SnapshotFile, Failure> {
    let started = Instant::now();
    let backup_start = Zoned::now();
    let config = repo.config().clone();
    let key = Key::from_master(&repo.key()).map_err(Failure::Other)?;
    let compression =
        config.zstd().map_err(|err| Failure::Rustic { doing: "reading the repository config", err })?;
    let chunker = Chunker::from_config(&config).map_err(Failure::Other)?;
    let index = Arc::new(
        Index::load(repo, false)
            .map_err(|err| Failure::Rustic { doing: "reading the repository index", err })?,
    );

    for path in paths {
        snap.paths.add(path.to_string_lossy().into_owned());
    }
    let parent = find_parent(repo, &snap);
    let trees = TreeReader::new(be.clone(), key.clone(), index.clone());
    let parent_root = parent.as_ref().and_then(|p| match trees.read(&p.tree) {
        Ok(tree) => Some((*p.tree, tree)),
        Err(why) => {
            warnings.push(format!(
                "the parent snapshot {} cannot be read ({why}); every file is read again",
                p.id.to_hex().as_str()
            ));
            None
        }
    });

    let shared = Shared {
        index,
        added_data: Mutex::new(IdSet::default()),
        aborted: AtomicBool::new(false),
        failure: Mutex::new(None),
        written: Mutex::new(PendingIndex::default()),
        index_files: IndexFiles { be: &**be, key: &key, compression },
        stats: Stats::default(),
        progress,
    };
    let pack_settings = PackSettings { key: key.clone(), compression, verify: config.extra_verify() };
    let workers = std::thread::available_parallelism().map_or(2, usize::from).clamp(2, 8);
    let scan_stop = AtomicBool::new(false);

    let tree_summary = std::thread::scope(|s| {
        let (upload_tx, upload_rx) = bounded::<Pack>(0);
        for _ in 0..UPLOADERS {
            let rx = upload_rx.clone();
            let shared = &shared;
            s.spawn(move || upload(&rx, packs, shared));
        }
        drop(upload_rx);

        let (job_tx, job_rx) = bounded::<Batch>(workers * 2);
        let (result_tx, result_rx) = unbounded::<(u64, Vec<Option<Vec<DataId>>>)>();
        for _ in 0..workers {
            let (jobs, results, uploads) = (job_rx.clone(), result_tx.clone(), upload_tx.clone());
            let mut packer =
                Packer::new(BlobKind::Data, &pack_settings, pack_target(&config, BlobType::Data))
                    .map_err(Failure::Other)?;
            let (mut chunker, shared) = (chunker.clone(), &shared);
            s.spawn(move || worker(&jobs, &results, &uploads, &mut packer, &mut chunker, shared));
        }
        drop((job_rx, result_tx));

        let (event_tx, event_rx) = bounded::<Event>(EVENTS_AHEAD);
        let assembler = {
            let mut packer =
                Packer::new(BlobKind::Tree, &pack_settings, pack_target(&config, BlobType::Tree))
                    .map_err(Failure::Other)?;
            let uploads = upload_tx.clone();
            let (shared, root_parent) = (&shared, parent_root.as_ref().map(|(id, _)| *id));
            s.spawn(move || {
                let result = assemble(&event_rx, &result_rx, &mut packer, &uploads, shared, root_parent);
                if result.is_err() {
                    // Stop the walk and the workers: nothing more can make it into a snapshot.
                    shared.aborted.store(true, Ordering::SeqCst);
                }
                result
            })
        };
        drop(upload_tx);
        s.spawn(|| progress.scan(source, &scan_stop));

        let mut walker = Walker {
            stack: vec![Frame::new(PathBuf::from("/"), parent_root.map(|(_, tree)| tree))],
            batch: Vec::new(),
            batch_bytes: 0,
            batch_no: 0,
            jobs: job_tx,
            events: event_tx,
            trees: &trees,
            warnings,
            shared: &shared,
        };
        walker.walk(source);
        walker.flush();
        drop(walker);
        let assembled = assembler
            .join()
            .unwrap_or_else(|_| Err(Failure::Other("the tree assembler panicked".to_owned())));
        scan_stop.store(true, Ordering::Relaxed);
        assembled
    });

    if let Some(failure) = shared.failure.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(failure);
    }
    let (root, mut summary) = tree_summary?;

    let rest = shared.written.into_inner().unwrap_or_else(PoisonError::into_inner);
    shared.index_files.write(rest.packs)?;

    shared.stats.apply(&mut summary);
    summary.command = snap.summary.take().map(|s| s.command).unwrap_or_default();
    summary.backup_start = backup_start;
    summary.backup_end = Zoned::now();
    summary.backup_duration = started.elapsed().as_secs_f64();
    summary.total_duration = (summary.backup_end.timestamp().as_millisecond()
        - snap.time.timestamp().as_millisecond()) as f64
        / 1000.0;
    snap.summary = Some(summary);
    // What wrote it (rustic_core's default names rustic); newer restic versions show it.
    snap.program_version = concat!("cofre-engine ", env!("CARGO_PKG_VERSION")).to_owned();
    snap.tree = TreeId::from(root);
    snap.parent = parent.map(|p| p.id);
    let json = serde_json::to_vec(&snap).map_err(|e| Failure::Other(format!("snapshot: {e}")))?;
    let (bytes, id) = format::unpacked_file(&key, &json, compression).map_err(Failure::Other)?;
    let id = Id::new(id);
    be.write_bytes(FileType::Snapshot, &id, true, bytes.into())
        .map_err(|err| Failure::Rustic { doing: "saving the snapshot", err })?;
    snap.id = SnapshotId::from(id);
    Ok(snap)
}

/// The latest snapshot of the same host and paths (rustic's and restic's default parent).
fn find_parent(repo: &Repository<OpenStatus>, snap: &SnapshotFile) -> Option<SnapshotFile> {
    let candidates = repo
        .get_matching_snapshots(|s| {
            s.hostname == snap.hostname && s.label == snap.label && s.paths == snap.paths
        })
        .ok()?;
    candidates.into_iter().max_by_key(|s| s.time.timestamp())
}

fn pack_target(config: &ConfigFile, blob: BlobType) -> usize {
    let (size, _, limit) = config.packsize(blob);
    size.min(limit) as usize
}

#[derive(Default)]
struct Stats {
    data_blobs: AtomicU64,
    data_added: AtomicU64,
    data_added_packed: AtomicU64,
    tree_blobs: AtomicU64,
    trees_added: AtomicU64,
    trees_added_packed: AtomicU64,
}

impl Stats {
    fn apply(&self, s: &mut SnapshotSummary) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.data_blobs = get(&self.data_blobs);
        s.tree_blobs = get(&self.tree_blobs);
        s.data_added_files = get(&self.data_added);
        s.data_added_files_packed = get(&self.data_added_packed);
        s.data_added_trees = get(&self.trees_added);
        s.data_added_trees_packed = get(&self.trees_added_packed);
        s.data_added = s.data_added_files + s.data_added_trees;
        s.data_added_packed = s.data_added_files_packed + s.data_added_trees_packed;
    }
}

/// What all threads share.
struct Shared<'a> {
    index: Arc<Index>,
    /// Data blobs packed by this backup (not in the index yet).
    added_data: Mutex<IdSet>,
    aborted: AtomicBool,
    failure: Mutex<Option<Failure>>,
    /// The index entries of every pack stored.
    written: Mutex<PendingIndex>,
    index_files: IndexFiles<'a>,
    stats: Stats,
    progress: &'a BackupProgress,
}

impl Shared<'_> {
    /// True if the data blob `id` is new and this caller is the one to store it.
    fn claim(&self, id: &Id) -> bool {
        !self.index.has_data(id) && self.added_data.lock().unwrap_or_else(PoisonError::into_inner).insert(*id)
    }

    fn fail(&self, failure: Failure) {
        self.aborted.store(true, Ordering::SeqCst);
        let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(failure);
        }
    }

    fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }
}

/// A finished pack file.
struct Pack {
    id: Hash,
    bytes: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

struct PackSettings {
    key: Key,
    compression: Option<i32>,
    verify: bool,
}

/// Collects blobs of one kind into a pack file.
struct Packer {
    kind: BlobKind,
    key: Key,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Set when blobs are verified after encryption (the repository's `extra_verify`).
    verifier: Option<zstd::bulk::Decompressor<'static>>,
    target: usize,
    buf: Vec<u8>,
    blobs: Vec<PackedBlob>,
    /// Scratch space reused for every blob: compressed, decrypted and decompressed bytes.
    compressed: Vec<u8>,
    decrypted: Vec<u8>,
    decompressed: Vec<u8>,
}

impl Packer {
    fn new(kind: BlobKind, settings: &PackSettings, target: usize) -> Result<Self, String> {
        let compressor = match settings.compression {
            Some(level) => Some(zstd::bulk::Compressor::new(level).map_err(|e| format!("zstd: {e}"))?),
            None => None,
        };
        let verifier = match settings.verify {
            true => Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?),
            false => None,
        };
        Ok(Self {
            kind,
            key: settings.key.clone(),
            compressor,
            verifier,
            target,
            buf: Vec::new(),
            blobs: Vec::new(),
            compressed: Vec::new(),
            decrypted: Vec::new(),
            decompressed: Vec::new(),
        })
    }

    /// Adds a blob; returns its stored size, and the pack when it is full.
    fn add(&mut self, id: Hash, plain: &[u8]) -> Result<(u64, Option<Pack>), String> {
        let mut uncompressed_length = None;
        if let Some(c) = &mut self.compressor {
            self.compressed.clear();
            self.compressed.reserve(zstd::zstd_safe::compress_bound(plain.len()));
            c.compress_to_buffer(plain, &mut self.compressed)
                .map_err(|e| format!("compression failed: {e}"))?;
            if self.compressed.len() < plain.len() {
                uncompressed_length = Some(len32(plain.len())?);
            }
        }
        let payload = if uncompressed_length.is_some() { &self.compressed[..] } else { plain };
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.target + payload.len() + 64);
        }
        let offset = self.buf.len();
        let length = self.key.encrypt_into(payload, &mut self.buf)?;
        self.verify(plain, offset, length, uncompressed_length)?;
        self.blobs.push(PackedBlob {
            kind: self.kind,
            id,
            offset: len32(offset)?,
            length: len32(length)?,
            uncompressed_length,
        });
        // Scratch space beyond a typical blob is given back: with the job process's malloc
        // settings (`crate::job_process_env`) large buffers are mapped and unmapped, so a few
        // 8 MiB chunks do not pin 8 MiB per buffer and worker for the rest of the backup.
        for scratch in [&mut self.compressed, &mut self.decrypted, &mut self.decompressed] {
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::new();
            }
        }
        let full = if self.buf.len() >= self.target { self.finish()? } else { None };
        Ok((length as u64, full))
    }

    /// Verification before upload (rustic's `extra_verify`, on by default; restic does the
    /// same since 0.17): the stored bytes must decrypt and decompress to the blob's plaintext
    /// again, which catches memory faults and library bugs before they reach the repository.
    /// Compared byte for byte with the plaintext still in hand (cheaper than hashing again).
    fn verify(
        &mut self,
        plain: &[u8],
        offset: usize,
        length: usize,
        ulen: Option<u32>,
    ) -> Result<(), String> {
        let Some(decompressor) = &mut self.verifier else { return Ok(()) };
        self.key.decrypt_into(&self.buf[offset..offset + length], &mut self.decrypted)?;
        let stored = match ulen {
            Some(n) => {
                self.decompressed.clear();
                self.decompressed.reserve(n as usize);
                decompressor
                    .decompress_to_buffer(&self.decrypted[..], &mut self.decompressed)
                    .map_err(|e| e.to_string())?;
                &self.decompressed
            }
            None => &self.decrypted,
        };
        if stored[..] == *plain {
            Ok(())
        } else {
            Err("a blob did not verify after encryption (memory or library fault); nothing was stored"
                .to_owned())
        }
    }

    /// The pack so far, completed with its header; `None` if it is empty.
    fn finish(&mut self) -> Result<Option<Pack>, String> {
        if self.blobs.is_empty() {
            return Ok(None);
        }
        let header = format::pack_header(&self.blobs);
        let header_start = self.buf.len();
        let header_len = self.key.encrypt_into(&header, &mut self.buf)?;
        if self.verifier.is_some() {
            self.key.decrypt_into(&self.buf[header_start..], &mut self.decrypted)?;
            if self.decrypted != header {
                return Err("a pack header did not verify after encryption; nothing was stored".to_owned());
            }
        }
        self.buf.extend_from_slice(&len32(header_len)?.to_le_bytes());
        let bytes = std::mem::take(&mut self.buf);
        let id = sha256(&bytes);
        Ok(Some(Pack { id, bytes, blobs: std::mem::take(&mut self.blobs) }))
    }
}

fn len32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| "a blob or pack exceeds 4 GiB".to_owned())
}

/// Stored packs not yet in an index file.
#[derive(Default)]
struct PendingIndex {
    packs: Vec<IndexPackJson>,
    blobs: usize,
}

/// An uploader: stores packs until the channel closes; writes an index file whenever enough
/// blobs are pending.
fn upload(packs: &Receiver<Pack>, uploader: &PackUploader, shared: &Shared) {
    for pack in packs {
        if shared.aborted() {
            continue;
        }
        let entry = IndexPackJson::new(pack.id, &pack.blobs);
        if let Err(err) = uploader.put(&hex::encode(pack.id), &pack.bytes.into()) {
            shared.fail(Failure::Engine(err));
            continue;
        }
        let full = {
            let mut pending = shared.written.lock().unwrap_or_else(PoisonError::into_inner);
            pending.blobs += pack.blobs.len();
            pending.packs.push(entry);
            (pending.blobs >= BLOBS_PER_INDEX).then(|| std::mem::take(&mut *pending))
        };
        if let Some(full) = full
            && let Err(failure) = shared.index_files.write(full.packs)
        {
            shared.fail(failure);
        }
    }
}

/// Writes index files.
struct IndexFiles<'a> {
    be: &'a dyn WriteBackend,
    key: &'a Key,
    compression: Option<i32>,
}

impl IndexFiles<'_> {
    /// One index file for `packs` (nothing if there are none).
    fn write(&self, packs: Vec<IndexPackJson>) -> Result<(), Failure> {
        if packs.is_empty() {
            return Ok(());
        }
        let json =
            serde_json::to_vec(&IndexJson { packs }).map_err(|e| Failure::Other(format!("index: {e}")))?;
        let (bytes, id) = format::unpacked_file(self.key, &json, self.compression).map_err(Failure::Other)?;
        self.be
            .write_bytes(FileType::Index, &Id::new(id), true, bytes.into())
            .map_err(|err| Failure::Rustic { doing: "saving the index", err })
    }
}

/// New and changed files for one worker.
struct Batch {
    no: u64,
    files: Vec<(WatchedOpen, u64)>,
}

fn worker(
    jobs: &Receiver<Batch>,
    results: &Sender<(u64, Vec<Option<Vec<DataId>>>)>,
    uploads: &Sender<Pack>,
    packer: &mut Packer,
    chunker: &mut Chunker,
    shared: &Shared,
) {
    let mut buf = Vec::new();
    for batch in jobs {
        if buf.capacity() > 2 * SCRATCH_KEPT {
            buf = Vec::new();
        }
        let mut out = Vec::with_capacity(batch.files.len());
        for (open, size) in batch.files {
            if shared.aborted() {
                out.push(None);
                continue;
            }
            out.push(archive_file(open, size, &mut buf, packer, chunker, uploads, shared));
            shared.progress.file_done(0);
        }
        if results.send((batch.no, out)).is_err() {
            return;
        }
    }
    match packer.finish() {
        Ok(Some(pack)) => {
            let _ = uploads.send(pack);
        }
        Ok(None) => {}
        Err(e) => shared.fail(Failure::Other(e)),
    }
}

/// Reads, chunks and stores one file; its content ids, or `None` if it was skipped (the
/// reason is already a warning).
fn archive_file(
    open: WatchedOpen,
    size: u64,
    buf: &mut Vec<u8>,
    packer: &mut Packer,
    chunker: &mut Chunker,
    uploads: &Sender<Pack>,
    shared: &Shared,
) -> Option<Vec<DataId>> {
    let mut reader = open.open().ok()?;
    let mut content = Vec::new();
    let mut add = |chunk: &[u8]| -> Result<(), String> {
        shared.progress.add_bytes(chunk.len() as u64);
        let hash = sha256(chunk);
        let id = Id::new(hash);
        content.push(DataId::from(id));
        if shared.claim(&id) {
            let (stored, full) = packer.add(hash, chunk)?;
            shared.stats.data_blobs.fetch_add(1, Ordering::Relaxed);
            shared.stats.data_added.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            shared.stats.data_added_packed.fetch_add(stored, Ordering::Relaxed);
            if let Some(pack) = full {
                uploads.send(pack).map_err(|_| "the uploaders stopped".to_owned())?;
            }
        }
        Ok(())
    };
    let result = if size <= chunker.single_chunk_limit() as u64 {
        buf.clear();
        buf.reserve(usize::try_from(size).unwrap_or(0));
        match std::io::Read::read_to_end(&mut reader, buf) {
            Ok(_) if buf.is_empty() => Ok(()),
            Ok(_) => add(buf).map_err(SplitError::Emit),
            Err(_) => Err(SplitError::Read),
        }
    } else {
        chunker.split(&mut reader, buf, add)
    };
    match result {
        Ok(()) => Some(content),
        // The reader recorded the warning; the file is left out, as restic and rustic do.
        Err(SplitError::Read) => None,
        Err(SplitError::Emit(e)) => {
            shared.fail(Failure::Other(e));
            None
        }
    }
}

/// How a file or directory compares with the parent snapshot.
#[derive(Clone, Copy)]
enum Change {
    New,
    Changed,
    Unmodified,
}

enum Event {
    /// A directory starts; its parent snapshot's tree id, if it had one there.
    Enter {
        node: Node,
        parent: Option<Id>,
    },
    /// A node whose content is known.
    Ready {
        node: Node,
        change: Change,
    },
    /// A file being read by a worker: result `idx` of batch `batch`.
    Pending {
        node: Node,
        change: Change,
        batch: u64,
        idx: usize,
    },
    Leave,
}

/// A directory of the walk and the parent snapshot's tree for it.
struct Frame {
    path: PathBuf,
    parent: Option<Tree>,
    sorted: bool,
}

impl Frame {
    fn new(path: PathBuf, parent: Option<Tree>) -> Self {
        let sorted = parent.as_ref().is_none_or(|t| t.nodes.is_sorted_by(|a, b| a.name() <= b.name()));
        Self { path, parent, sorted }
    }

    fn parent_node(&self, name: &OsStr) -> Option<&Node> {
        let nodes = &self.parent.as_ref()?.nodes;
        if self.sorted {
            nodes.binary_search_by(|n| AsRef::<OsStr>::as_ref(&n.name()).cmp(name)).ok().map(|i| &nodes[i])
        } else {
            nodes.iter().find(|n| n.name() == name)
        }
    }
}

struct Walker<'a> {
    stack: Vec<Frame>,
    batch: Vec<(WatchedOpen, u64)>,
    batch_bytes: u64,
    batch_no: u64,
    jobs: Sender<Batch>,
    events: Sender<Event>,
    trees: &'a TreeReader,
    warnings: &'a Warnings,
    shared: &'a Shared<'a>,
}

impl Walker<'_> {
    fn walk(&mut self, source: &WatchedSource) {
        for entry in source.entries() {
            if self.shared.aborted() {
                return;
            }
            // Walk errors are already warnings (source.rs).
            let Ok(ReadSourceEntry { path, node, open }) = entry else { continue };
            let dir = if node.is_dir() {
                path.clone()
            } else {
                path.parent().map_or_else(PathBuf::new, Path::to_path_buf)
            };
            while self.stack.len() > 1 && !dir.starts_with(&self.top().path) {
                self.stack.pop();
                self.send(Event::Leave);
            }
            let missing: Vec<OsString> = dir
                .strip_prefix(&self.top().path)
                .map(|rest| {
                    rest.components()
                        .filter_map(|c| match c {
                            Component::Normal(name) => Some(name.to_owned()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut dir_node = node.is_dir().then_some(node.clone());
            let count = missing.len();
            for (i, name) in missing.into_iter().enumerate() {
                let node = match dir_node.take() {
                    Some(node) if i + 1 == count => node,
                    other => {
                        dir_node = other;
                        // As restic and rustic do for directories the walk did not describe.
                        let meta = Metadata { mode: Some(0o755), ..Metadata::default() };
                        Node::new_node(&name, NodeType::Dir, meta)
                    }
                };
                self.enter(&name, node);
            }
            if node.is_dir() {
                continue;
            }
            self.file(node, open);
        }
    }

    fn top(&self) -> &Frame {
        self.stack.last().expect("the root frame is never popped")
    }

    fn enter(&mut self, name: &OsStr, node: Node) {
        let subtree = self.top().parent_node(name).and_then(|p| p.subtree).map(|id| *id);
        let parent_tree = subtree.and_then(|id| match self.trees.read(&id) {
            Ok(tree) => Some(tree),
            Err(why) => {
                self.warnings.push(format!(
                    "{}: its tree in the parent snapshot cannot be read ({why}); its files are read again",
                    self.top().path.join(name).display()
                ));
                None
            }
        });
        let path = self.top().path.join(name);
        self.send(Event::Enter { node, parent: subtree });
        self.stack.push(Frame::new(path, parent_tree));
    }

    fn file(&mut self, mut node: Node, open: Option<WatchedOpen>) {
        let name = node.name().into_owned();
        let size = node.meta.size;
        let progress = self.shared.progress;
        let change = match self.top().parent_node(&name) {
            None => Change::New,
            Some(p) if unchanged(p, &node) && self.content_known(p) => {
                node.content.clone_from(&p.content);
                Change::Unmodified
            }
            Some(_) => Change::Changed,
        };
        let open = match (node.is_file(), change, open) {
            (true, Change::New | Change::Changed, Some(open)) if size > 0 => open,
            (true, Change::New | Change::Changed, _) => {
                progress.file_done(size);
                node.content = Some(Vec::new());
                return self.send(Event::Ready { node, change });
            }
            // Unchanged files, links and special files: counted as the snapshot's summary does.
            _ => {
                progress.file_done(size);
                return self.send(Event::Ready { node, change });
            }
        };
        let idx = self.batch.len();
        self.batch.push((open, size));
        self.batch_bytes += size;
        self.send(Event::Pending { node, change, batch: self.batch_no, idx });
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// An unchanged file's content can be reused only if the repository still has it.
    fn content_known(&self, parent: &Node) -> bool {
        parent.content.iter().flatten().all(|id| self.shared.index.has_data(id))
    }

    /// Sends an event; before waiting for room, hands the open batch to the workers (the
    /// assembler may be waiting for it).
    fn send(&mut self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.flush();
                let _ = self.events.send(event);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.batch);
        let _ = self.jobs.send(Batch { no: self.batch_no, files });
        self.batch_no += 1;
        self.batch_bytes = 0;
    }
}

/// restic's and rustic's change detection: same type, size, mtime, ctime and inode.
fn unchanged(parent: &Node, node: &Node) -> bool {
    let (p, m) = (&parent.meta, &node.meta);
    parent.node_type == node.node_type
        && p.size == m.size
        && p.mtime == m.mtime
        && p.ctime.zip(m.ctime).is_none_or(|(a, b)| a == b)
        && (p.inode == 0 || m.inode == 0 || p.inode == m.inode)
}

/// One directory being assembled.
struct Open {
    node: Node,
    parent: Option<Id>,
    nodes: Vec<Node>,
}

fn assemble(
    events: &Receiver<Event>,
    results: &Receiver<(u64, Vec<Option<Vec<DataId>>>)>,
    packer: &mut Packer,
    uploads: &Sender<Pack>,
    shared: &Shared,
    root_parent: Option<Id>,
) -> Result<(Id, SnapshotSummary), Failure> {
    let mut a =
        Assembler { summary: SnapshotSummary::default(), added: IdSet::default(), packer, uploads, shared };
    let mut arrived: HashMap<u64, Vec<Option<Vec<DataId>>>> = HashMap::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Vec<Node> = Vec::new();
    for event in events {
        match event {
            Event::Enter { node, parent } => stack.push(Open { node, parent, nodes: Vec::new() }),
            Event::Ready { node, change } => {
                a.count_file(&node, change);
                stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
            }
            Event::Pending { mut node, change, batch, idx } => {
                let outcome = loop {
                    if let Some(files) = arrived.get_mut(&batch) {
                        let outcome = files[idx].take();
                        if idx + 1 == files.len() {
                            arrived.remove(&batch);
                        }
                        break outcome;
                    }
                    match results.recv() {
                        Ok((no, files)) => {
                            arrived.insert(no, files);
                        }
                        Err(_) => return Err(a.stopped()),
                    }
                };
                if let Some(content) = outcome {
                    node.content = Some(content);
                    a.count_file(&node, change);
                    stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
                }
            }
            Event::Leave => {
                let Some(open) = stack.pop() else { continue };
                let node = a.close(open)?;
                stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
            }
        }
    }
    if shared.aborted() {
        return Err(a.stopped());
    }
    while let Some(open) = stack.pop() {
        let node = a.close(open)?;
        stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
    }
    let root_id = a.save_tree(root, root_parent)?;
    match a.packer.finish() {
        Ok(Some(pack)) => a.uploads.send(pack).map_err(|_| a.stopped())?,
        Ok(None) => {}
        Err(e) => return Err(Failure::Other(e)),
    }
    Ok((root_id, a.summary))
}

struct Assembler<'a> {
    summary: SnapshotSummary,
    added: IdSet,
    packer: &'a mut Packer,
    uploads: &'a Sender<Pack>,
    shared: &'a Shared<'a>,
}

impl Assembler<'_> {
    fn stopped(&self) -> Failure {
        Failure::Other("the backup stopped early (see the first error)".to_owned())
    }

    fn count_file(&mut self, node: &Node, change: Change) {
        let s = &mut self.summary;
        match change {
            Change::New => s.files_new += 1,
            Change::Changed => s.files_changed += 1,
            Change::Unmodified => s.files_unmodified += 1,
        }
        s.total_files_processed += 1;
        s.total_bytes_processed += node.meta.size;
    }

    fn close(&mut self, open: Open) -> Result<Node, Failure> {
        let Open { mut node, parent, nodes } = open;
        node.subtree = Some(TreeId::from(self.save_tree(nodes, parent)?));
        Ok(node)
    }

    /// Serialises and stores (if new) the tree of `nodes`; returns its id.
    fn save_tree(&mut self, mut nodes: Vec<Node>, parent: Option<Id>) -> Result<Id, Failure> {
        if !nodes.is_sorted_by(|a, b| a.name() <= b.name()) {
            nodes.sort_by(|a, b| a.name().cmp(&b.name()));
        }
        let tree = Tree { nodes };
        let (bytes, _) =
            tree.serialize().map_err(|e| Failure::Other(format!("a tree cannot be serialised: {e}")))?;
        let hash = sha256(&bytes);
        let id = Id::new(hash);
        let s = &mut self.summary;
        s.total_dirs_processed += 1;
        s.total_dirsize_processed += bytes.len() as u64;
        match parent {
            None => s.dirs_new += 1,
            Some(p) if p == id => s.dirs_unmodified += 1,
            Some(_) => s.dirs_changed += 1,
        }
        if !self.shared.index.has_tree(&id) && self.added.insert(id) {
            let (stored, full) = self.packer.add(hash, &bytes).map_err(Failure::Other)?;
            let stats = &self.shared.stats;
            stats.tree_blobs.fetch_add(1, Ordering::Relaxed);
            stats.trees_added.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            stats.trees_added_packed.fetch_add(stored, Ordering::Relaxed);
            if let Some(pack) = full {
                self.uploads.send(pack).map_err(|_| self.stopped())?;
            }
        }
        Ok(id)
    }
}

/// Deterministic random-looking bytes (xorshift64) for the engine's unit tests.
#[cfg(test)]
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packer(verify: bool) -> Packer {
        let settings = PackSettings {
            key: Key::from_master(&rustic_core::repofile::MasterKey::new()).unwrap(),
            compression: Some(3),
            verify,
        };
        Packer::new(BlobKind::Data, &settings, 1 << 20).unwrap()
    }

    #[test]
    fn verification_catches_damage_between_encryption_and_upload() {
        let blob = b"log line that compresses well\n".repeat(100);
        let mut p = packer(true);
        let (stored, full) = p.add(sha256(&blob), &blob).unwrap();
        assert!(full.is_none() && (stored as usize) < blob.len(), "compressed: {stored}");
        // The same check on a damaged copy of what was just encrypted fails.
        let length = p.buf.len();
        p.buf[length / 2] ^= 0x10;
        assert!(p.verify(&blob, 0, length, p.blobs[0].uncompressed_length).is_err());
        // Without verification the packer trusts its libraries.
        assert!(packer(false).verify(&blob, 0, 0, None).is_ok());
    }

    #[test]
    fn packs_close_at_their_target_size_with_a_header() {
        let mut p = packer(true);
        let mut packs = Vec::new();
        for i in 0u32..40 {
            // Random-looking blobs of 64 KiB: stored as they are (zstd cannot shrink them).
            let blob = pseudo_random(65_536, u64::from(i));
            if let (_, Some(pack)) = p.add(sha256(&blob), &blob).unwrap() {
                packs.push(pack);
            }
        }
        packs.extend(p.finish().unwrap());
        assert!(packs.len() >= 2, "{} packs", packs.len());
        for pack in &packs {
            assert_eq!(pack.id, sha256(&pack.bytes), "a pack is named by its hash");
            let n = pack.bytes.len();
            let header_len = u32::from_le_bytes(pack.bytes[n - 4..].try_into().unwrap()) as usize;
            let header = p.key.decrypt(&pack.bytes[n - 4 - header_len..n - 4]).unwrap();
            assert_eq!(header, format::pack_header(&pack.blobs));
            let last = pack.blobs.last().unwrap();
            assert_eq!((last.offset + last.length) as usize, n - 4 - header_len, "blobs, then the header");
        }
    }
}
