//! Packs: blobs of one kind collected into a pack file (compressed, encrypted, verified when
//! the repository asks), the uploaders that store finished packs, and the index files written
//! for every 50,000 blobs stored and at the end.

use super::*;

/// A finished pack file.
pub(super) struct Pack {
    pub(super) id: Hash,
    pub(super) bytes: Vec<u8>,
    pub(super) blobs: Vec<PackedBlob>,
}

pub(super) struct PackSettings {
    pub(super) key: Key,
    pub(super) compression: Option<i32>,
    pub(super) verify: bool,
}

/// Collects blobs of one kind into a pack file.
pub(super) struct Packer {
    kind: BlobKind,
    pub(super) key: Key,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Set when blobs are verified after encryption (the repository's `extra_verify`).
    verifier: Option<zstd::bulk::Decompressor<'static>>,
    target: usize,
    pub(super) buf: Vec<u8>,
    pub(super) blobs: Vec<PackedBlob>,
    /// Scratch space reused for every blob: compressed, decrypted and decompressed bytes.
    compressed: Vec<u8>,
    decrypted: Vec<u8>,
    decompressed: Vec<u8>,
}

impl Packer {
    pub(super) fn new(kind: BlobKind, settings: &PackSettings, target: usize) -> Result<Self, String> {
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
    pub(super) fn add(&mut self, id: Hash, plain: &[u8]) -> Result<(u64, Option<Pack>), String> {
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
    pub(super) fn verify(
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
    pub(super) fn finish(&mut self) -> Result<Option<Pack>, String> {
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

pub(super) fn len32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| "a blob or pack exceeds 4 GiB".to_owned())
}

/// Stored packs not yet in an index file.
#[derive(Default)]
pub(super) struct PendingIndex {
    pub(super) packs: Vec<IndexPackJson>,
    blobs: usize,
}

/// An uploader: stores packs until the channel closes; writes an index file whenever enough
/// blobs are pending.
pub(super) fn upload(packs: &Receiver<Pack>, uploader: &PackUploader, shared: &Shared) {
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
pub(super) struct IndexFiles<'a> {
    pub(super) be: &'a dyn WriteBackend,
    pub(super) key: &'a Key,
    pub(super) compression: Option<i32>,
}

impl IndexFiles<'_> {
    /// One index file for `packs` (nothing if there are none).
    pub(super) fn write(&self, packs: Vec<IndexPackJson>) -> Result<(), Failure> {
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
