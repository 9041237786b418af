//! The workers: each reads the new and changed files of a batch, chunks, hashes,
//! deduplicates and compresses them into its own pack, and hands back each file's blob ids.

use super::*;

/// New and changed files for one worker.
pub(super) struct Batch {
    pub(super) no: u64,
    pub(super) files: Vec<(WatchedOpen, u64)>,
}

pub(super) fn worker(
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
pub(super) fn archive_file(
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
