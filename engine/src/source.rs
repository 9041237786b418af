//! A backup source that records warnings: unreadable entries and files changed while read.
//!
//! rustic_core 0.13 skips what it cannot read and only *logs* it (`warn!("ignoring error: …")`
//! through the `log` crate); it does not notice files that change while being read at all. Rather
//! than capturing the process-wide logger, the engine wraps rustic's [`LocalSource`]:
//!
//! * walk errors (a directory that cannot be listed, metadata that cannot be read) come out of
//!   the entry iterator: they are recorded and the entry is dropped (as rustic would do);
//! * open and read errors of files are recorded by the wrapped opener and reader, then handed on
//!   to rustic, which skips the file;
//! * changes: every file is read through [`WatchedReader`], which delivers exactly the size that
//!   the walk recorded in the node, then `fstat`s the open file and compares size and mtime with
//!   the node. A difference is a warning. The cost is one `fstat` per file actually read (files
//!   unchanged since the parent snapshot are not read and not checked).
//!
//! Delivering exactly the recorded size keeps every node self-consistent (its `size` equals the
//! length of its content, which restic's restorer relies on): data appended during the read is
//! left for the next backup, and if the file shrank the missing tail is stored as zeros. Both
//! cases are reported. (rustic itself would store the bytes read with the old size.)
//!
//! It also supplies the directory nodes that rustic leaves out. `LocalSource`'s walker drops the
//! backup root itself (the depth-0 entry of the walk, when it is a directory), and rustic's tree
//! builder then invents a node for it — and for each of its ancestors (`/tmp`, `/tmp/x` for
//! `/tmp/x/source`) — with mode 0755 and no times, owner or xattrs: restic restores such a
//! directory with an mtime of -2147483648. restic stores the real metadata of the root and of
//! its ancestors. So the engine walks each backup path with its own `LocalSource` and emits,
//! before the walk of a path, the ancestors not emitted yet and the path itself, each mapped by
//! rustic's own [`LocalSourceSaveOptions::map_entry`] (same options, so the same metadata a
//! directory deeper in the tree gets). The tree builder uses a directory entry whose path is
//! the tree it enters instead of inventing one. (One walker per path also avoids a quirk of the
//! shared walker: it drops the first path's depth-0 entry by taking the next entry unchecked, so
//! an empty first directory let the second path's root through.)

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustic_core::jiff::Timestamp;
use rustic_core::{
    Excludes, LocalSource, LocalSourceFilterOptions, LocalSourceSaveOptions, ReadSource, ReadSourceEntry,
    ReadSourceOpen, RusticError, RusticResult,
};

use crate::error::describe_rustic;
use crate::warnings::Warnings;

type InnerOpen = <LocalSource as ReadSource>::Open;
type InnerIter = <LocalSource as ReadSource>::Iter;
type InnerEntry = ReadSourceEntry<InnerOpen>;

/// rustic's local source with warnings recorded and the directory nodes of the backup paths and
/// their ancestors supplied (see the module documentation).
pub(crate) struct WatchedSource {
    /// One rustic source per backup path, in the order of the (sorted, merged) paths.
    sources: Vec<(PathBuf, LocalSource)>,
    save_opts: LocalSourceSaveOptions,
    warnings: Warnings,
}

impl WatchedSource {
    /// `paths` must be sorted and merged (no path inside another), as `PathList::sanitize`
    /// leaves them.
    pub(crate) fn new(
        save_opts: LocalSourceSaveOptions,
        excludes: &Excludes,
        filter_opts: &LocalSourceFilterOptions,
        paths: &[PathBuf],
        warnings: Warnings,
    ) -> RusticResult<Self> {
        let sources = paths
            .iter()
            .map(|path| {
                let source = LocalSource::new(save_opts, excludes, filter_opts, std::slice::from_ref(path))?;
                Ok((path.clone(), source))
            })
            .collect::<RusticResult<_>>()?;
        Ok(Self { sources, save_opts, warnings })
    }

    /// rustic's source of each path, unwatched (for the progress scan, which reports nothing).
    pub(crate) fn walkers(&self) -> impl Iterator<Item = &LocalSource> {
        self.sources.iter().map(|(_, source)| source)
    }
}

impl ReadSource for WatchedSource {
    type Open = WatchedOpen;
    type Iter = WatchedIter;

    fn size(&self) -> RusticResult<Option<u64>> {
        let mut total = 0;
        for (_, source) in &self.sources {
            match source.size()? {
                Some(size) => total += size,
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    fn entries(&self) -> Self::Iter {
        let mut emitted = HashSet::new();
        let walks = self
            .sources
            .iter()
            .map(|(path, source)| Walk { dirs: dirs_to_emit(path, &mut emitted), entries: source.entries() })
            .collect();
        WatchedIter { walks, save_opts: self.save_opts, warnings: self.warnings.clone() }
    }
}

/// The directories to emit before the walk of `path`: its ancestors not emitted yet, outermost
/// first, then `path` itself. The file-system root has no node of its own (its entries are the
/// snapshot's top tree), so it is never emitted.
fn dirs_to_emit(path: &Path, emitted: &mut HashSet<PathBuf>) -> VecDeque<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        path.ancestors().filter(|dir| dir.file_name().is_some()).map(Path::to_path_buf).collect();
    dirs.reverse();
    dirs.retain(|dir| emitted.insert(dir.clone()));
    dirs.into()
}

/// One backup path: its directory entries, then rustic's walk (which leaves the path out).
struct Walk {
    dirs: VecDeque<PathBuf>,
    entries: InnerIter,
}

/// The walk, with errors turned into warnings and the directory nodes supplied.
pub(crate) struct WatchedIter {
    walks: VecDeque<Walk>,
    save_opts: LocalSourceSaveOptions,
    warnings: Warnings,
}

impl WatchedIter {
    fn watched(&self, entry: InnerEntry) -> ReadSourceEntry<WatchedOpen> {
        let ReadSourceEntry { path, node, open } = entry;
        let open = open.map(|inner| WatchedOpen {
            inner,
            path: path.clone(),
            size: node.meta.size,
            mtime: node.meta.mtime,
            warnings: self.warnings.clone(),
        });
        ReadSourceEntry { path, node, open }
    }
}

impl Iterator for WatchedIter {
    type Item = RusticResult<ReadSourceEntry<WatchedOpen>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let walk = self.walks.front_mut()?;
            if let Some(dir) = walk.dirs.pop_front() {
                match dir_entry(self.save_opts, &dir) {
                    Ok(Some(entry)) => return Some(Ok(self.watched(entry))),
                    // A backup path that is not a directory: rustic's walk yields it.
                    Ok(None) => {}
                    // rustic then invents the node, as it would without this wrapper.
                    Err(warning) => self.warnings.push(warning),
                }
                continue;
            }
            match walk.entries.next() {
                None => {
                    self.walks.pop_front();
                }
                Some(Err(err)) => self.warnings.push(walk_warning(&err)),
                Some(Ok(entry)) => return Some(Ok(self.watched(entry))),
            }
        }
    }
}

/// The entry of directory `dir`, mapped exactly as rustic maps the entries of its walk;
/// `None` if `dir` is not a directory.
fn dir_entry(save_opts: LocalSourceSaveOptions, dir: &Path) -> Result<Option<InnerEntry>, String> {
    let fail = |cause: &dyn std::fmt::Display| {
        format!("{}: metadata cannot be read, the directory is stored without it: {cause}", show(dir))
    };
    let entry = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .max_depth(Some(0))
        .build()
        .next()
        .ok_or_else(|| fail(&"not found"))?
        .map_err(|err| fail(&err))?;
    if !entry.file_type().is_some_and(|t| t.is_dir()) {
        return Ok(None);
    }
    save_opts.map_entry(entry).map(Some).map_err(|err| fail(&err))
}

/// Opens a file for the archiver and watches the open.
pub(crate) struct WatchedOpen {
    inner: InnerOpen,
    path: PathBuf,
    size: u64,
    mtime: Option<Timestamp>,
    warnings: Warnings,
}

impl ReadSourceOpen for WatchedOpen {
    type Reader = WatchedReader;

    fn open(self) -> RusticResult<Self::Reader> {
        match self.inner.open() {
            Ok(file) => Ok(WatchedReader {
                file,
                path: self.path,
                size: self.size,
                mtime: self.mtime,
                delivered: 0,
                zero_fill_from: None,
                done: false,
                warnings: self.warnings,
            }),
            Err(err) => {
                let cause = std::error::Error::source(&*err)
                    .map_or_else(|| describe_rustic(&err), crate::error::chain_message);
                self.warnings.push(format!("{}: cannot be opened, file skipped: {cause}", show(&self.path)));
                Err(err)
            }
        }
    }
}

/// Reads a file for the archiver: exactly the size recorded by the walk, then checks for changes.
pub(crate) struct WatchedReader {
    file: File,
    path: PathBuf,
    size: u64,
    mtime: Option<Timestamp>,
    delivered: u64,
    /// Set when the file ended early: the offset from which zeros are delivered.
    zero_fill_from: Option<u64>,
    done: bool,
    warnings: Warnings,
}

impl WatchedReader {
    /// Called once the recorded size has been delivered: compare with the file as it is now.
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let now = match self.file.metadata() {
            Ok(meta) => meta,
            Err(err) => {
                self.warnings.push(format!("{}: cannot be checked after reading: {err}", show(&self.path)));
                return;
            }
        };
        let now_mtime = now.modified().ok().and_then(|t| Timestamp::try_from(t).ok());
        let mut changes = Vec::new();
        if now.len() != self.size {
            changes.push(format!("size {} → {} bytes", self.size, now.len()));
        }
        if now_mtime != self.mtime {
            changes.push("modification time changed".to_owned());
        }
        if let Some(offset) = self.zero_fill_from {
            changes.push(format!(
                "it ended at byte {offset}, the missing {} bytes were stored as zeros",
                self.size - offset
            ));
        }
        if !changes.is_empty() {
            self.warnings.push(format!(
                "{}: file changed while being read ({}); the snapshot may hold an inconsistent \
                 copy of it",
                show(&self.path),
                changes.join(", ")
            ));
        }
    }
}

impl Read for WatchedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.size - self.delivered;
        if buf.is_empty() {
            return Ok(0);
        }
        if remaining == 0 {
            self.finish();
            return Ok(0);
        }
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = if self.zero_fill_from.is_some() {
            buf[..want].fill(0);
            want
        } else {
            match self.file.read(&mut buf[..want]) {
                Ok(0) => {
                    self.zero_fill_from = Some(self.delivered);
                    buf[..want].fill(0);
                    want
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
                Err(err) => {
                    if !self.done {
                        self.done = true;
                        self.warnings.push(format!("{}: read error, file skipped: {err}", show(&self.path)));
                    }
                    return Err(err);
                }
            }
        };
        self.delivered += n as u64;
        Ok(n)
    }
}

/// A short warning for a walk error. rustic's top message is generic ("Failed to map directory
/// entry…") and a middle one is a `Debug` dump; the deepest message naming a path comes from the
/// `ignore` crate: "P: IO error for operation on P: <OS error>", shortened here to
/// "P: cannot be read, skipped: <OS error>".
fn walk_warning(err: &RusticError) -> String {
    let mut best = None;
    let mut current = std::error::Error::source(err);
    while let Some(e) = current {
        let text = e.to_string();
        if text.contains('/') && !text.contains(" { ") {
            best = Some(text);
        }
        current = e.source();
    }
    let Some(text) = best else {
        return format!("skipped (cannot be read): {}", describe_rustic(err));
    };
    // "P: IO error for operation on P: cause" or "IO error for operation on P: cause".
    let short = match text.split_once("IO error for operation on ") {
        Some((prefix, rest)) => {
            let prefix = prefix.trim_end_matches(": ");
            if prefix.is_empty() || rest.starts_with(prefix) { rest.to_owned() } else { text.clone() }
        }
        None => text.clone(),
    };
    match short.rsplit_once(": ") {
        Some((path, cause)) => format!("{path}: cannot be read, skipped: {cause}"),
        None => format!("skipped (cannot be read): {short}"),
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Displays like `ignore::Error::WithPath` around an I/O error.
    #[derive(Debug)]
    struct Ignore(&'static str, std::io::Error);

    impl std::fmt::Display for Ignore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: IO error for operation on {}: {}", self.0, self.0, self.1)
        }
    }

    impl std::error::Error for Ignore {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    fn reader_for(file: &Path, recorded_size: u64, warnings: &Warnings) -> WatchedReader {
        let meta = std::fs::metadata(file).unwrap();
        WatchedReader {
            file: File::open(file).unwrap(),
            path: file.to_path_buf(),
            size: recorded_size,
            mtime: meta.modified().ok().and_then(|t| Timestamp::try_from(t).ok()),
            delivered: 0,
            zero_fill_from: None,
            done: false,
            warnings: warnings.clone(),
        }
    }

    #[test]
    fn reader_delivers_exactly_the_recorded_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, [7u8; 100]).unwrap();
        let w = Warnings::default();

        // Unchanged: all bytes, no warning.
        let mut out = Vec::new();
        reader_for(&file, 100, &w).read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![7u8; 100]);
        assert!(w.take().0.is_empty());

        // The walk saw 60 bytes, the file has 100 now: 60 bytes are stored, with a warning.
        let mut out = Vec::new();
        reader_for(&file, 60, &w).read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![7u8; 60]);
        let warnings = w.take().0;
        assert!(warnings[0].contains("size 60 → 100 bytes"), "{warnings:?}");

        // The walk saw 150 bytes, the file has 100: zeros fill the missing tail.
        let mut out = Vec::new();
        reader_for(&file, 150, &w).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 150);
        assert_eq!(&out[..100], &[7u8; 100][..]);
        assert!(out[100..].iter().all(|b| *b == 0));
        let warnings = w.take().0;
        assert!(warnings[0].contains("missing 50 bytes were stored as zeros"), "{warnings:?}");
    }

    #[test]
    fn ancestors_are_emitted_once_and_the_root_never() {
        let mut emitted = HashSet::new();
        let dirs = |path: &str, emitted: &mut HashSet<PathBuf>| -> Vec<PathBuf> {
            dirs_to_emit(Path::new(path), emitted).into()
        };
        let paths = |list: &[&str]| list.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(dirs("/a/b/c", &mut emitted), paths(&["/a", "/a/b", "/a/b/c"]));
        assert_eq!(dirs("/a/b/d", &mut emitted), paths(&["/a/b/d"]));
        assert_eq!(dirs("/e", &mut emitted), paths(&["/e"]));
        assert!(dirs("/", &mut HashSet::new()).is_empty());
    }

    #[test]
    fn the_walk_includes_each_path_and_its_ancestors_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().canonicalize().unwrap();
        // An empty first path: rustic's shared walker would let the second root through.
        let (a, b) = (top.join("a"), top.join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("f"), b"f").unwrap();
        let source = WatchedSource::new(
            LocalSourceSaveOptions::default(),
            &Excludes::default(),
            &LocalSourceFilterOptions::default(),
            &[a.clone(), b.clone()],
            Warnings::default(),
        )
        .unwrap();
        let entries: Vec<_> = source.entries().map(Result::unwrap).collect();
        let got: Vec<_> = entries.iter().map(|e| e.path.clone()).collect();
        let mut want: Vec<_> =
            top.ancestors().filter(|p| p.file_name().is_some()).map(Path::to_path_buf).collect();
        want.reverse();
        want.extend([a, b.clone(), b.join("f")]);
        assert_eq!(got, want);
        for entry in &entries[..entries.len() - 1] {
            assert!(entry.node.is_dir(), "{:?}", entry.path);
            let meta = std::fs::metadata(&entry.path).unwrap();
            let mtime = Timestamp::try_from(meta.modified().unwrap()).unwrap();
            assert_eq!(entry.node.meta.mtime, Some(mtime), "{:?}", entry.path);
            assert!(entry.node.meta.uid.is_some(), "{:?}", entry.path);
        }
        assert_eq!(entries[want.len() - 3].node.name(), std::ffi::OsStr::new("a"));
    }

    #[test]
    fn walk_warnings_are_short() {
        let io = std::io::Error::from_raw_os_error(36);
        let err = RusticError::with_source(
            rustic_core::ErrorKind::Internal,
            "Failed to map Directory entry to ReadSourceEntry.",
            Ignore("/a/b c", io),
        );
        let text = walk_warning(&err);
        assert!(text.starts_with("/a/b c: cannot be read, skipped: "), "{text}");
        assert!(text.contains("os error 36") && !text.contains("IO error"), "{text}");
    }
}
