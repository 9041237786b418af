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
//!
//! Files: this one runs a backup (threads, shared state, the snapshot); `walker.rs`,
//! `worker.rs`, `assembler.rs` and `packer.rs` (packs, uploads, index files) are the stages
//! above; `chunker.rs`, `index.rs`, `format.rs` and `upload.rs` what they use. The stages see
//! this module's items through `use super::*`, and what one stage's types expose to another is
//! `pub(super)`.

mod assembler;
mod chunker;
pub(crate) mod format;
pub(crate) mod index;
mod packer;
mod upload;
mod walker;
mod worker;

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
use assembler::assemble;
use chunker::{Chunker, SplitError};
use format::{BlobKind, Hash, IndexJson, IndexPackJson, Key, PackedBlob, sha256};
use index::{IdSet, Index, TreeReader};
use packer::{IndexFiles, Pack, PackSettings, Packer, PendingIndex, upload};
use walker::{Change, Event, Frame, Walker};
use worker::{Batch, worker};

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
