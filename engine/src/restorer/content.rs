//! File content: the workers take one pack at a time, read the ranges the plan needs, decrypt
//! and decompress each blob and write it at its place (a single-blob file in one go).

use super::*;

/// The content phase: workers take packs in turn.
pub(super) struct Content<'a> {
    pub(super) be: &'a dyn WriteBackend,
    pub(super) key: &'a Key,
    pub(super) index: &'a Index,
    pub(super) files: &'a [PlannedFile],
    pub(super) packs: &'a [(u32, Vec<Target>)],
    pub(super) next: AtomicUsize,
    pub(super) is_root: bool,
    pub(super) outcome: Mutex<Outcome>,
}

impl Content<'_> {
    pub(super) fn work(&self) {
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
pub(super) fn write_blob(file: &PlannedFile, plain: &[u8], offset: u64) -> io::Result<File> {
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
pub(super) struct Scratch {
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
