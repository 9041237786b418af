//! What the repository already holds: the data blob ids (for deduplication and to trust an
//! unchanged file's content) and where each tree blob is (to read the parent snapshot's trees).
//!
//! Loaded from the index files through rustic_core's repository (its local cache applies).
//! Blob ids are SHA-256 values, so the hash maps use their first 8 bytes as the hash instead of
//! running SipHash over 32 bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use rustic_core::repofile::{BlobType, IndexFile};
use rustic_core::{FileType, Id, OpenStatus, ReadBackend, Repository, WriteBackend};

use super::format::Key;

/// A hasher for SHA-256 ids: their first 8 bytes are already uniformly distributed.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            let mut first = [0u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(first);
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

pub(crate) type IdSet = HashSet<Id, BuildHasherDefault<IdHasher>>;
type IdMap<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;

/// Where a blob is stored.
#[derive(Clone, Copy)]
pub(crate) struct Location {
    /// Position in [`Index::packs`].
    pub(crate) pack: u32,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    /// 0: stored uncompressed.
    pub(crate) uncompressed_length: u32,
}

impl Location {
    /// The blob's plaintext length.
    pub(crate) fn plain_length(&self) -> u32 {
        if self.uncompressed_length > 0 { self.uncompressed_length } else { self.length.saturating_sub(32) }
    }
}

pub(crate) struct Index {
    /// Data blob ids (backups).
    data: IdSet,
    /// Data blob locations, sorted by id (restores; `data` stays empty): half the memory of a
    /// hash map, which matters at a million blobs.
    data_locations: Vec<(Id, Location)>,
    trees: IdMap<Location>,
    pub(crate) packs: Vec<Id>,
}

impl Index {
    /// The index; with `locate_data`, where each data blob is (for restores), else only
    /// which data blobs exist (for backups: less memory).
    pub(crate) fn load(
        repo: &Repository<OpenStatus>,
        locate_data: bool,
    ) -> Result<Self, Box<rustic_core::RusticError>> {
        let mut index = Self {
            data: IdSet::default(),
            data_locations: Vec::new(),
            trees: IdMap::default(),
            packs: Vec::new(),
        };
        for file in repo.stream_files::<IndexFile>()? {
            let (_, file) = file?;
            // `packs_to_delete` (rustic's pending prunes) are not counted as present.
            for pack in file.packs {
                let Ok(pack_no) = u32::try_from(index.packs.len()) else { break };
                index.packs.push(*pack.id);
                for blob in pack.blobs {
                    let loc = Location {
                        pack: pack_no,
                        offset: blob.location.offset,
                        length: blob.location.length,
                        uncompressed_length: blob.location.uncompressed_length.map_or(0, |n| n.get()),
                    };
                    match blob.tpe {
                        BlobType::Data if locate_data => {
                            index.data_locations.push((*blob.id, loc));
                        }
                        BlobType::Data => {
                            index.data.insert(*blob.id);
                        }
                        BlobType::Tree => {
                            index.trees.insert(*blob.id, loc);
                        }
                    }
                }
            }
        }
        index.data_locations.sort_unstable_by_key(|(id, _)| *id);
        index.data_locations.dedup_by_key(|(id, _)| *id);
        index.data_locations.shrink_to_fit();
        Ok(index)
    }

    pub(crate) fn has_data(&self, id: &Id) -> bool {
        self.data.contains(id) || self.data_location(id).is_some()
    }

    /// Where data blob `id` is (only when loaded with `locate_data`).
    pub(crate) fn data_location(&self, id: &Id) -> Option<Location> {
        self.data_locations.binary_search_by_key(id, |(i, _)| *i).ok().map(|i| self.data_locations[i].1)
    }

    pub(crate) fn has_tree(&self, id: &Id) -> bool {
        self.trees.contains_key(id)
    }
}

/// Tree packs kept in memory while reading the parent snapshot's trees.
const CACHED_TREE_PACKS: usize = 4;

/// Reads tree blobs of earlier snapshots (the parent's).
///
/// Whole tree packs are fetched and the last few kept: the walk visits directories in the
/// order their trees were written, so most trees come from a pack already here, and an
/// unchanged re-backup of 2,500 directories costs a handful of requests instead of 2,500.
pub(crate) struct TreeReader {
    be: Arc<dyn WriteBackend>,
    key: Key,
    index: Arc<Index>,
    packs: Mutex<VecDeque<(u32, Bytes)>>,
}

impl TreeReader {
    pub(crate) fn new(be: Arc<dyn WriteBackend>, key: Key, index: Arc<Index>) -> Self {
        Self { be, key, index, packs: Mutex::new(VecDeque::new()) }
    }

    /// The tree `id`, or why it cannot be read.
    pub(crate) fn read(&self, id: &Id) -> Result<rustic_core::repofile::Tree, String> {
        let loc = *self.index.trees.get(id).ok_or("not in the index")?;
        let pack = self.pack(loc.pack)?;
        let (start, end) = (loc.offset as usize, loc.offset as usize + loc.length as usize);
        let data = pack.get(start..end).ok_or("the index points past the end of its pack")?;
        let plain = self.key.decrypt(data)?;
        let plain = if loc.uncompressed_length > 0 {
            zstd::bulk::decompress(&plain, loc.uncompressed_length as usize).map_err(|e| e.to_string())?
        } else {
            plain
        };
        if Id::new(super::format::sha256(&plain)) != *id {
            return Err("its content does not match its id".to_owned());
        }
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }

    fn pack(&self, no: u32) -> Result<Bytes, String> {
        let mut packs = self.packs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, bytes)) = packs.iter().find(|(n, _)| *n == no) {
            return Ok(bytes.clone());
        }
        let id = self.index.packs[no as usize];
        let bytes = self.be.read_full(FileType::Pack, &id).map_err(|e| crate::error::describe_rustic(&e))?;
        if packs.len() == CACHED_TREE_PACKS {
            packs.pop_front();
        }
        packs.push_back((no, bytes.clone()));
        Ok(bytes)
    }
}
