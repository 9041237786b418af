//! Metadata as restic restores it: owner and group by number (as root), permission bits,
//! extended attributes, then access and modification times (symlinks: owner and times).

use super::*;

/// What the restorer keeps of a node's metadata until it sets it (a restore of a million files
/// holds a million of these).
pub(super) struct FileMeta {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) atime: Option<Timestamp>,
    pub(super) mtime: Option<Timestamp>,
    /// Extended attributes: name and value.
    pub(super) xattrs: Box<[(String, Vec<u8>)]>,
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
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub(super) fn of(node: &Node) -> Self {
        match node.node_type {
            NodeType::File => Self::File,
            NodeType::Dir => Self::Dir,
            NodeType::Symlink { .. } => Self::Symlink,
            _ => Self::Other,
        }
    }
}

/// Go's `fs.FileMode` bits that restic stores, mapped back to `chmod` bits.
pub(super) fn unix_permissions(go_mode: u32) -> u32 {
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
pub(super) fn set_file_metadata(
    file: &File,
    path: &Path,
    meta: &FileMeta,
    is_root: bool,
    warnings: &mut Capped,
) {
    apply_metadata(Via::Handle(file), path, meta, is_root, warnings);
}

/// Sets the metadata of the entry at `path` (a symlink's own, not its target's).
pub(super) fn set_metadata(path: &Path, meta: &FileMeta, kind: Kind, is_root: bool, warnings: &mut Capped) {
    let via = if kind == Kind::Symlink { Via::Symlink } else { Via::Path };
    apply_metadata(via, path, meta, is_root, warnings);
}

/// How metadata reaches an entry.
#[derive(Clone, Copy)]
pub(super) enum Via<'a> {
    /// Through an open file (no path look-ups).
    Handle(&'a File),
    /// By path.
    Path,
    /// By path, not following the link: owner and times only.
    Symlink,
}

/// Owner (as root), permissions and extended attributes (not for symlinks), then times: the
/// order restic uses (`chown` clears setuid bits; setting anything else changes times).
pub(super) fn apply_metadata(
    via: Via<'_>,
    path: &Path,
    meta: &FileMeta,
    is_root: bool,
    warnings: &mut Capped,
) {
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

pub(super) fn system_time(t: rustic_core::jiff::Timestamp) -> std::time::SystemTime {
    let ns = t.as_nanosecond();
    let abs = ns.unsigned_abs();
    let span = std::time::Duration::new(
        u64::try_from(abs / 1_000_000_000).unwrap_or(u64::MAX),
        u32::try_from(abs % 1_000_000_000).unwrap_or(0),
    );
    if ns >= 0 { std::time::UNIX_EPOCH + span } else { std::time::UNIX_EPOCH - span }
}
