//! A running backup's progress: files and bytes processed so far, and the totals once the scan
//! has counted them. A handful of atomics the archiver's threads add to (no lock, no
//! allocation per file) and anyone holding the [`BackupProgress`] may sample at any time.
//!
//! The engine's archiver does not scan before it starts (restic's scan, rustic's
//! `no_scan(false)`, would delay the first byte by a whole walk); a scan thread walks the same
//! source alongside the backup instead and publishes the totals when it is done, so a sampler
//! sees "unknown" totals at first ("scanning") and both totals afterwards. Files are counted as
//! the snapshot's summary counts them (every entry but directories: links and special files
//! too) with their sizes as `lstat` reports them, so a finished backup's counters equal its
//! report's `files_processed` and `bytes_processed`.
//!
//! rustic_core's own archiver (the escape hatch, `COFRE_ENGINE_ARCHIVER=rustic`) reports through
//! its progress hooks ([`RusticBars`], given to the repository when it is opened): its "backing
//! up" bar counts bytes (chunks read, unchanged files' sizes) and never files, so with it
//! `files_done` stays 0; the same scan supplies the totals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustic_core::ReadSourceEntry;

/// rustic_core's progress hooks, fed into a [`BackupProgress`]: the archiver's bytes bar adds
/// to `bytes_done`; every other bar (index reads, snapshot lists) is hidden.
#[derive(Debug)]
pub(crate) struct RusticBars(pub(crate) BackupProgress);

impl rustic_core::ProgressBars for RusticBars {
    fn progress(&self, kind: rustic_core::ProgressType, prefix: &str) -> rustic_core::Progress {
        match kind {
            // rustic's backup asks for "backing up..." (its only bytes bar during a backup).
            rustic_core::ProgressType::Bytes if prefix.starts_with("backing up") => {
                rustic_core::Progress::new(BytesBar(self.0.clone()))
            }
            _ => rustic_core::Progress::hidden(),
        }
    }
}

#[derive(Debug)]
struct BytesBar(BackupProgress);

impl rustic_core::RusticProgress for BytesBar {
    fn is_hidden(&self) -> bool {
        // Shown, but rustic only scans first when asked (the engine never asks: `no_scan`).
        false
    }
    fn set_length(&self, _len: u64) {}
    fn set_title(&self, _title: &str) {}
    fn inc(&self, inc: u64) {
        self.0.add_bytes(inc);
    }
    fn finish(&self) {}
}

/// A total not known yet.
const UNKNOWN: u64 = u64::MAX;

/// Counters of one backup, shared by the archiver and whoever samples them. Cloning shares.
#[derive(Clone, Debug)]
pub struct BackupProgress(Arc<Counters>);

#[derive(Debug)]
struct Counters {
    /// Whether anyone samples these counters: without a sampler the totals are never read, and
    /// the scan that counts them (a second walk of the source) is skipped.
    observed: bool,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
}

/// One reading of a [`BackupProgress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressSample {
    /// Files (all but directories) processed (read, or taken unchanged from the parent snapshot).
    pub files_done: u64,
    /// Their bytes (a file being read counts as far as it was read).
    pub bytes_done: u64,
    /// All files the backup will process, once the scan has counted them.
    pub files_total: Option<u64>,
    /// Their bytes, once the scan has counted them.
    pub bytes_total: Option<u64>,
}

impl Default for BackupProgress {
    /// Counters someone samples (the scan counts the totals).
    fn default() -> Self {
        Self::new(true)
    }
}

impl BackupProgress {
    /// Counters nobody samples: the backup counts as it goes, and no scan counts the totals.
    #[must_use]
    pub fn unobserved() -> Self {
        Self::new(false)
    }

    fn new(observed: bool) -> Self {
        Self(Arc::new(Counters {
            observed,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_total: AtomicU64::new(UNKNOWN),
            bytes_total: AtomicU64::new(UNKNOWN),
        }))
    }

    /// The counters now. Totals are published together (bytes first), so a sample with both
    /// totals has a consistent pair; `done` may pass a total when files grew after the scan.
    #[must_use]
    pub fn sample(&self) -> ProgressSample {
        let total = |a: &AtomicU64| Some(a.load(Ordering::Acquire)).filter(|v| *v != UNKNOWN);
        let files_total = total(&self.0.files_total);
        ProgressSample {
            files_done: self.0.files_done.load(Ordering::Relaxed),
            bytes_done: self.0.bytes_done.load(Ordering::Relaxed),
            files_total,
            bytes_total: files_total.and(total(&self.0.bytes_total)),
        }
    }

    /// Bytes of a file read (called per chunk by the workers).
    pub(crate) fn add_bytes(&self, bytes: u64) {
        self.0.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A file processed; `bytes` not counted through [`Self::add_bytes`] (an unchanged file).
    pub(crate) fn file_done(&self, bytes: u64) {
        if bytes > 0 {
            self.0.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        }
        self.0.files_done.fetch_add(1, Ordering::Relaxed);
    }

    fn set_totals(&self, files: u64, bytes: u64) {
        self.0.bytes_total.store(bytes.min(UNKNOWN - 1), Ordering::Release);
        self.0.files_total.store(files.min(UNKNOWN - 1), Ordering::Release);
    }

    /// Counts the files (all but directories) of `source` and their sizes, then publishes them as the totals;
    /// gives up without publishing when `stop` is set (the backup ended first).
    /// rustic's own walkers are used, not the watched source's, so the scan adds no warnings.
    pub(crate) fn scan(&self, source: &crate::source::WatchedSource, stop: &AtomicBool) {
        if !self.0.observed {
            return;
        }
        let (mut files, mut bytes) = (0u64, 0u64);
        for entry in source.walkers().flat_map(rustic_core::ReadSource::entries) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // Walk errors are the backup's to report; the scan skips them.
            let Ok(ReadSourceEntry { node, .. }) = entry else { continue };
            if !node.is_dir() {
                files += 1;
                bytes = bytes.saturating_add(node.meta.size);
            }
        }
        self.set_totals(files, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_totals_come_as_a_pair() {
        let p = BackupProgress::default();
        assert_eq!(p.sample(), ProgressSample::default());
        let shared = p.clone();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        shared.add_bytes(3);
                        shared.file_done(0);
                    }
                });
            }
        });
        p.file_done(10);
        let got = p.sample();
        assert_eq!((got.files_done, got.bytes_done), (4001, 12_010));
        assert_eq!((got.files_total, got.bytes_total), (None, None));
        p.set_totals(5000, 20_000);
        assert_eq!((p.sample().files_total, p.sample().bytes_total), (Some(5000), Some(20_000)));
    }

    #[test]
    fn the_scan_counts_files_and_links_and_their_sizes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 1000]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![2u8; 24]).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        let paths = [dir.path().to_path_buf()];
        let source = crate::source::WatchedSource::new(
            rustic_core::LocalSourceSaveOptions::default(),
            &rustic_core::Excludes::default(),
            &rustic_core::LocalSourceFilterOptions::default(),
            &paths,
            crate::warnings::Warnings::default(),
        )
        .unwrap();
        let p = BackupProgress::default();
        p.scan(&source, &AtomicBool::new(true));
        assert_eq!(p.sample().files_total, None, "a stopped scan publishes nothing");
        p.scan(&source, &AtomicBool::new(false));
        assert_eq!((p.sample().files_total, p.sample().bytes_total), (Some(3), Some(1025)));
        // Counters nobody samples get no scan (it would walk the source a second time).
        let unobserved = BackupProgress::unobserved();
        unobserved.scan(&source, &AtomicBool::new(false));
        assert_eq!(unobserved.sample().files_total, None);
    }
}
