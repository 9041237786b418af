//! Compares two directory trees the way a sysadmin judges a restore, returning readable
//! differences: names (raw bytes), types, contents, link targets, modes, owners, xattrs,
//! mtimes and hard links.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

/// What kind of entry a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Everything compared about one path.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes actually allocated on disk (shows whether a file is sparse).
    pub allocated: u64,
    pub sha256: Option<[u8; 32]>,
    pub link_target: Option<OsString>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub inode: (u64, u64),
}

/// A scanned tree: relative path (raw bytes; the root itself is the empty path) → entry.
#[derive(Debug, Clone)]
pub struct TreeSnapshot {
    pub root: PathBuf,
    pub entries: BTreeMap<PathBuf, Entry>,
}

/// How precisely to compare times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeCheck {
    Nanos,
    Seconds,
    Ignore,
}

/// How to judge files that share an inode in the expected tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardlinkCheck {
    /// The names must share one inode in the actual tree too.
    SameInode,
    /// Each name must have the right content (checked anyway); separate inodes are fine.
    ContentOnly,
}

/// What [`compare`] looks at. The default checks everything a restore should preserve.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Relative paths left out of the comparison, with everything below them.
    pub exclude: Vec<PathBuf>,
    pub file_mtime: TimeCheck,
    pub dir_mtime: TimeCheck,
    pub symlink_mtime: TimeCheck,
    pub mode: bool,
    pub ownership: bool,
    pub xattrs: bool,
    pub hardlinks: HardlinkCheck,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            exclude: Vec::new(),
            file_mtime: TimeCheck::Nanos,
            dir_mtime: TimeCheck::Nanos,
            symlink_mtime: TimeCheck::Nanos,
            mode: true,
            ownership: true,
            xattrs: true,
            hardlinks: HardlinkCheck::SameInode,
        }
    }
}

impl CompareOptions {
    /// Leaves `path` (relative) and everything below it out.
    pub fn exclude(mut self, path: impl Into<PathBuf>) -> Self {
        self.exclude.push(path.into());
        self
    }
}

/// One difference between the expected and the actual tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: PathBuf,
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", show_path(&self.path), self.what)
    }
}

/// A list of differences that prints one per line (the first 200, then a count).
#[derive(Debug, Clone, Default)]
pub struct Differences(pub Vec<Difference>);

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The differences at `path` (relative).
    pub fn at(&self, path: impl AsRef<Path>) -> Vec<&Difference> {
        self.0.iter().filter(|d| d.path == path.as_ref()).collect()
    }

    /// Panics with the list when there is any difference.
    #[track_caller]
    pub fn assert_none(&self, context: &str) {
        assert!(self.is_empty(), "{context}: {} differences:\n{self}", self.len());
    }
}

impl fmt::Display for Differences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        for diff in self.0.iter().take(SHOWN) {
            writeln!(f, "  {diff}")?;
        }
        if self.0.len() > SHOWN {
            writeln!(f, "  … and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// A path for humans: Rust's debug form of the raw bytes (`"dir-\xFF/new\nline"`), `.` for
/// the root.
pub fn show_path(path: &Path) -> String {
    if path.as_os_str().is_empty() { ".".to_owned() } else { format!("{:?}", path.as_os_str()) }
}

impl TreeSnapshot {
    /// Walks `root` without following symlinks, hashing every regular file.
    pub fn scan(root: &Path) -> Result<TreeSnapshot> {
        let mut entries = BTreeMap::new();
        scan_into(root, Path::new(""), &mut entries)?;
        Ok(TreeSnapshot { root: root.to_path_buf(), entries })
    }

    pub fn get(&self, relative: impl AsRef<Path>) -> Option<&Entry> {
        self.entries.get(relative.as_ref())
    }
}

/// Scans both trees and compares them.
pub fn compare_dirs(expected: &Path, actual: &Path, options: &CompareOptions) -> Result<Differences> {
    let expected =
        TreeSnapshot::scan(expected).with_context(|| format!("scanning {}", expected.display()))?;
    let actual = TreeSnapshot::scan(actual).with_context(|| format!("scanning {}", actual.display()))?;
    Ok(compare(&expected, &actual, options))
}

/// Every way `actual` differs from `expected`, in path order.
pub fn compare(expected: &TreeSnapshot, actual: &TreeSnapshot, options: &CompareOptions) -> Differences {
    let excluded = |path: &Path| options.exclude.iter().any(|ex| path.starts_with(ex));
    let mut diffs = Vec::new();
    let mut push = |path: &Path, what: String| {
        diffs.push(Difference { path: path.to_path_buf(), what });
    };

    let paths: BTreeSet<&PathBuf> = expected.entries.keys().chain(actual.entries.keys()).collect();
    for path in paths {
        if excluded(path) {
            continue;
        }
        let (exp, act) = match (expected.entries.get(path), actual.entries.get(path)) {
            (Some(exp), Some(act)) => (exp, act),
            (Some(exp), None) => {
                push(path, format!("{:?} missing", exp.kind));
                continue;
            }
            (None, Some(act)) => {
                push(path, format!("unexpected {:?}", act.kind));
                continue;
            }
            (None, None) => unreachable!("path came from one of the maps"),
        };
        if exp.kind != act.kind {
            push(path, format!("type {:?}, expected {:?}", act.kind, exp.kind));
            continue;
        }
        if exp.kind == Kind::File && (exp.size != act.size || exp.sha256 != act.sha256) {
            push(
                path,
                format!(
                    "content differs ({} bytes, sha256 {}…; expected {} bytes, sha256 {}…)",
                    act.size,
                    short_hash(act.sha256),
                    exp.size,
                    short_hash(exp.sha256)
                ),
            );
        }
        if exp.link_target != act.link_target {
            push(
                path,
                format!(
                    "symlink target {:?}, expected {:?}",
                    act.link_target.as_deref().unwrap_or_default(),
                    exp.link_target.as_deref().unwrap_or_default()
                ),
            );
        }
        // Symlink permission bits are meaningless on Linux (always 0777).
        if options.mode && exp.kind != Kind::Symlink && exp.mode != act.mode {
            push(path, format!("mode {:04o}, expected {:04o}", act.mode, exp.mode));
        }
        if options.ownership && (exp.uid, exp.gid) != (act.uid, act.gid) {
            push(path, format!("owner {}:{}, expected {}:{}", act.uid, act.gid, exp.uid, exp.gid));
        }
        if options.xattrs && exp.xattrs != act.xattrs {
            push(path, describe_xattr_diff(&exp.xattrs, &act.xattrs));
        }
        let check = match exp.kind {
            Kind::Dir => options.dir_mtime,
            Kind::Symlink => options.symlink_mtime,
            _ => options.file_mtime,
        };
        let differs = match check {
            TimeCheck::Nanos => exp.mtime != act.mtime,
            TimeCheck::Seconds => exp.mtime.0 != act.mtime.0,
            TimeCheck::Ignore => false,
        };
        if differs {
            push(path, format!("mtime {}, expected {}", show_time(act.mtime), show_time(exp.mtime)));
        }
    }

    if options.hardlinks == HardlinkCheck::SameInode {
        for group in hardlink_groups(expected) {
            let group: Vec<&PathBuf> = group.into_iter().filter(|p| !excluded(p)).collect();
            let inodes: BTreeSet<(u64, u64)> =
                group.iter().filter_map(|p| actual.entries.get(*p)).map(|e| e.inode).collect();
            if group.len() > 1 && inodes.len() > 1 {
                let names: Vec<String> = group.iter().map(|p| show_path(p)).collect();
                push(
                    group[0],
                    format!(
                        "hard links not preserved: {} share one inode in the expected tree, \
                         {} distinct inodes in the actual tree",
                        names.join(", "),
                        inodes.len()
                    ),
                );
            }
        }
    }
    Differences(diffs)
}

/// Groups of paths (two or more) that share an inode, in path order.
pub fn hardlink_groups(tree: &TreeSnapshot) -> Vec<Vec<&PathBuf>> {
    let mut by_inode: BTreeMap<(u64, u64), Vec<&PathBuf>> = BTreeMap::new();
    for (path, entry) in &tree.entries {
        if entry.kind == Kind::File && entry.nlink > 1 {
            by_inode.entry(entry.inode).or_default().push(path);
        }
    }
    let mut groups: Vec<Vec<&PathBuf>> = by_inode.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    groups
}

/// Bytes allocated on disk for `path` (`st_blocks * 512`): far below the size for a sparse file.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    Ok(fs::symlink_metadata(path)?.blocks() * 512)
}

fn scan_into(root: &Path, relative: &Path, entries: &mut BTreeMap<PathBuf, Entry>) -> Result<()> {
    let abs = if relative.as_os_str().is_empty() { root.to_path_buf() } else { root.join(relative) };
    let meta = fs::symlink_metadata(&abs).with_context(|| format!("lstat {}", abs.display()))?;
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_file() {
        Kind::File
    } else if file_type.is_fifo() {
        Kind::Fifo
    } else if file_type.is_socket() {
        Kind::Socket
    } else if file_type.is_char_device() {
        Kind::CharDevice
    } else {
        Kind::BlockDevice
    };
    let sha256 = match kind {
        Kind::File => Some(hash_file(&abs)?),
        _ => None,
    };
    let link_target = match kind {
        Kind::Symlink => Some(fs::read_link(&abs)?.into_os_string()),
        _ => None,
    };
    let mut xattrs = BTreeMap::new();
    // `xattr::list`/`get` do not follow symlinks.
    match xattr::list(&abs) {
        Ok(names) => {
            for name in names {
                if let Some(value) = xattr::get(&abs, &name)? {
                    xattrs.insert(name, value);
                }
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {}
        Err(err) => return Err(err).with_context(|| format!("listxattr {}", abs.display())),
    }
    entries.insert(
        relative.to_path_buf(),
        Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            allocated: meta.blocks() * 512,
            sha256,
            link_target,
            xattrs,
            mtime: (meta.mtime(), meta.mtime_nsec()),
            nlink: meta.nlink(),
            inode: (meta.dev(), meta.ino()),
        },
    );
    if kind == Kind::Dir {
        let mut children: Vec<OsString> = fs::read_dir(&abs)
            .with_context(|| format!("reading directory {}", abs.display()))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        children.sort();
        for child in children {
            scan_into(root, &relative.join(child), entries)?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<[u8; 32]> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

fn short_hash(hash: Option<[u8; 32]>) -> String {
    hash.map(|h| hex::encode(&h[..6])).unwrap_or_default()
}

fn show_time((secs, nanos): (i64, i64)) -> String {
    format!("{secs}.{nanos:09}")
}

fn describe_xattr_diff(exp: &BTreeMap<OsString, Vec<u8>>, act: &BTreeMap<OsString, Vec<u8>>) -> String {
    let mut parts = Vec::new();
    let names: BTreeSet<&OsString> = exp.keys().chain(act.keys()).collect();
    for name in names {
        let shown = String::from_utf8_lossy(OsStr::as_bytes(name));
        match (exp.get(name), act.get(name)) {
            (Some(_), None) => parts.push(format!("xattr {shown} missing")),
            (None, Some(_)) => parts.push(format!("unexpected xattr {shown}")),
            (Some(e), Some(a)) if e != a => parts.push(format!(
                "xattr {shown} is {} bytes {:?}…, expected {} bytes {:?}…",
                a.len(),
                String::from_utf8_lossy(&a[..a.len().min(16)]),
                e.len(),
                String::from_utf8_lossy(&e[..e.len().min(16)])
            )),
            _ => {}
        }
    }
    parts.join("; ")
}
