//! Test trees: a source tree full of awkward entries, and a strict comparison of two trees.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

/// A fixed, odd modification time (with nanoseconds) to check that mtimes survive.
pub fn odd_time(offset_secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(981_173_106 + offset_secs, 123_456_789)
}

fn set_mtime(path: &Path, offset_secs: u64) {
    let file = File::open(path).unwrap();
    file.set_times(FileTimes::new().set_modified(odd_time(offset_secs)).set_accessed(odd_time(1))).unwrap();
}

/// Builds the awkward tree under `root` (which must exist and be empty).
pub fn build_awkward_tree(root: &Path) {
    let write = |name: &OsStr, content: &[u8], mode: u32| {
        let path = root.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&path, 10);
    };
    write(OsStr::new("file.txt"), b"hello, cofre\n", 0o644);
    write(OsStr::new("empty.txt"), b"", 0o644);
    write(OsStr::new("script.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(OsStr::new("private.key"), b"secret-ish\n", 0o600);
    write(OsStr::from_bytes(b"not-utf8-\xff\xfe-name"), b"latin-1 name\n", 0o644);
    write(OsStr::new("new\nline"), b"newline in the name\n", 0o644);
    write(OsStr::new("emoji 🎉 ü ß.txt"), b"unicode\n", 0o644);
    write(OsStr::new("back\\slash \"quoted\" \ttab"), b"escapes\n", 0o644);

    let sub = root.join("sub dir");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("nested.bin"), (0..=255u8).cycle().take(300_000).collect::<Vec<_>>()).unwrap();
    set_mtime(&sub.join("nested.bin"), 20);
    fs::create_dir(root.join("empty dir")).unwrap();

    symlink("file.txt", root.join("link-to-file")).unwrap();
    symlink("/nonexistent/target", root.join("dangling-link")).unwrap();
    symlink(OsStr::from_bytes(b"odd-\xff-target"), root.join("link-non-utf8")).unwrap();

    fs::write(root.join("hard-1"), b"hardlinked content\n").unwrap();
    fs::hard_link(root.join("hard-1"), root.join("hard-2")).unwrap();

    // Sparse: 8 MiB with a few bytes in the middle.
    let mut sparse = File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.seek(SeekFrom::Start(4 << 20)).unwrap();
    sparse.write_all(b"middle").unwrap();
    drop(sparse);

    fs::write(root.join("xattr.txt"), b"has xattrs\n").unwrap();
    xattr::set(root.join("xattr.txt"), "user.cofre", b"kept \x00 binary").unwrap();

    let fifo = root.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());

    // Directory mtimes last, once their contents exist.
    set_mtime(&sub, 30);
    set_mtime(&root.join("empty dir"), 40);
}

/// What is compared of an entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<(i64, i64)>,
    content: Option<Vec<u8>>,
    link: Option<OsString>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Names (relative) of the other entries sharing this inode.
    hardlinks: usize,
}

fn describe(root: &Path) -> BTreeMap<OsString, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, usize> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            if meta.is_file() {
                *inodes.entry(meta.ino()).or_default() += 1;
            }
            all.push((path, meta));
        }
    }
    for (path, meta) in all {
        let rel = path.strip_prefix(root).unwrap().as_os_str().to_owned();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let xattrs = if ft.is_symlink() {
            BTreeMap::new()
        } else {
            xattr::list(&path)
                .unwrap()
                .filter(|n| n.as_bytes().starts_with(b"user."))
                .map(|n| {
                    let v = xattr::get(&path, &n).unwrap().unwrap_or_default();
                    (n, v)
                })
                .collect()
        };
        let entry = Entry {
            kind,
            mode: if ft.is_symlink() { 0 } else { meta.mode() & 0o7777 },
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (ft.is_file() || ft.is_dir()).then(|| (meta.mtime(), meta.mtime_nsec())),
            content: ft.is_file().then(|| fs::read(&path).unwrap()),
            link: ft.is_symlink().then(|| fs::read_link(&path).unwrap().into_os_string()),
            xattrs,
            hardlinks: if ft.is_file() { inodes[&meta.ino()] } else { 0 },
        };
        out.insert(rel, entry);
    }
    out
}

/// Asserts that `restored` holds exactly what `source` holds (names, types, modes, owners,
/// mtimes of files and dirs, contents, link targets, user xattrs, hardlink groups).
pub fn assert_same_tree(source: &Path, restored: &Path) {
    compare(source, restored, false);
}

/// Like [`assert_same_tree`], but symlink targets that are not valid UTF-8 only need to match
/// lossily: restic 0.14 ignores the `linktarget_raw` field (its own backups lose such targets
/// the same way; newer restic versions read the field).
pub fn assert_same_tree_restic_014(source: &Path, restored: &Path) {
    compare(source, restored, true);
}

fn compare(source: &Path, restored: &Path, lossy_links: bool) {
    let mut a = describe(source);
    let b = describe(restored);
    if lossy_links {
        for entry in a.values_mut() {
            if let Some(link) = &entry.link {
                entry.link = Some(OsString::from(link.to_string_lossy().into_owned()));
            }
        }
    }
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "entry names differ");
    for (name, entry) in &a {
        let other = &b[name];
        assert_eq!(entry, other, "entry {name:?} differs");
    }
}
