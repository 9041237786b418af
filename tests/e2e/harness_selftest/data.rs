//! The data set generator, the tree comparison and the change-while-reading writer.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::harness::dataset::{self, ChangeWhileReading, DatasetOptions};
use crate::harness::procs::wait_until;
use crate::harness::tree::{self, CompareOptions, TreeSnapshot};

#[test]
fn dataset_is_deterministic_and_tree_reports_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let options = DatasetOptions::default();
    let started = Instant::now();
    let first = dataset::generate(&tmp.path().join("a"), &options)?;
    eprintln!(
        "data set: {} files, {} dirs, {} symlinks, {} MB in {:.2?}",
        first.files,
        first.dirs,
        first.symlinks,
        first.bytes / 1_000_000,
        started.elapsed()
    );
    dataset::generate(&tmp.path().join("b"), &options)?;

    assert!(first.files >= 2000, "{} files", first.files);
    assert!(first.large_files.len() >= 4);
    assert!(first.xattrs);
    let a = TreeSnapshot::scan(&first.root)?;
    let deepest = a.entries.keys().map(|p| p.components().count()).max().unwrap_or(0);
    assert!(deepest >= 6, "depth {deepest}");
    for group in &first.hardlink_groups {
        let inodes: std::collections::BTreeSet<_> = group.iter().map(|p| a.get(p).map(|e| e.inode)).collect();
        assert_eq!(inodes.len(), 1, "{group:?} share one inode");
    }
    let entry = |path: &[u8]| {
        a.get(std::ffi::OsStr::from_bytes(path))
            .unwrap_or_else(|| panic!("{:?} missing", String::from_utf8_lossy(path)))
    };
    assert_eq!(entry(b"names/invalid-utf8-\xff\xfe.bin").kind, tree::Kind::File);
    assert_eq!(entry(b"names/new\nline.txt").kind, tree::Kind::File);
    assert_eq!(entry("names/🦀-crab.txt".as_bytes()).kind, tree::Kind::File);
    assert_eq!(entry(b"names/dir-\xc3\x28-invalid").kind, tree::Kind::Dir);
    assert_eq!(entry(b"modes/setgid-dir-2775").mode, 0o2775);
    assert_eq!(entry(b"modes/dir-0700").mode, 0o700);
    assert_eq!(entry(b"modes/readonly-dir-0555").mode, 0o555);
    assert_eq!(entry(b"modes/mode-0444.txt").mode, 0o444);
    assert_eq!(entry(b"modes/mode-0444.txt").mtime, (4_102_444_800, 123_456_789));
    assert_eq!(
        (entry(b"owners/uid-1234-gid-5678.txt").uid, entry(b"owners/uid-1234-gid-5678.txt").gid),
        (1234, 5678)
    );
    assert_eq!(entry(b"xattrs/with-xattrs.txt").xattrs.len(), 4);
    assert_eq!(
        entry(b"links/dangling-absolute").link_target.as_deref(),
        Some("/nonexistent/cofre-e2e/target".as_ref())
    );
    assert_eq!(entry(b"empty/empty-dir").kind, tree::Kind::Dir);
    let in_empty_dir = a.entries.keys().filter(|p| p.starts_with("empty/empty-dir"));
    assert_eq!(in_empty_dir.count(), 1, "empty/empty-dir has no children");
    let sparse = a.get(dataset::SPARSE_FILE).expect("sparse file");
    assert_eq!(sparse.size, dataset::SPARSE_SIZE);
    assert!(sparse.allocated < 1024 * 1024, "sparse file allocates {} bytes", sparse.allocated);

    let same = tree::compare_dirs(&first.root, &tmp.path().join("b"), &CompareOptions::default())?;
    same.assert_none("two data sets from one seed");

    let other = dataset::generate(&tmp.path().join("c"), &DatasetOptions { seed: 1, ..options })?;
    let differ = tree::compare_dirs(&first.root, &other.root, &CompareOptions::default())?;
    assert!(differ.len() > 1000, "another seed changes contents and times");

    let mutation: dataset::Mutation = dataset::mutate(&tmp.path().join("b"))?;
    let diffs = tree::compare_dirs(&first.root, &tmp.path().join("b"), &CompareOptions::default())?;
    for path in mutation.modified.iter().chain(&mutation.added).chain(&mutation.removed) {
        assert!(!diffs.at(path).is_empty(), "{} not reported:\n{diffs}", path.display());
    }
    let text = diffs.to_string();
    assert!(text.contains("\"docs/readme.txt\": content differs"), "{text}");
    assert!(text.contains("\"docs/added-after-first-backup.txt\": unexpected File"), "{text}");
    assert!(text.contains("\"tree/d2/d1/f005.bin\": File missing"), "{text}");
    // Exclusions hide a path and everything below it.
    let mut options = CompareOptions::default();
    for path in mutation.modified.iter().chain(&mutation.added).chain(&mutation.removed) {
        options = options.exclude(path);
    }
    // Directories whose entries changed have new mtimes: leave them out too.
    let rest = tree::compare_dirs(
        &first.root,
        &tmp.path().join("b"),
        &options.exclude("docs").exclude("tree/d2/d1"),
    )?;
    rest.assert_none("everything but the mutated paths");
    Ok(())
}

#[test]
fn tree_compare_reports_each_kind_of_difference() -> Result<()> {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    let tmp = tempfile::tempdir()?;
    let make = |root: &Path| -> Result<()> {
        std::fs::create_dir_all(root.join("dir"))?;
        std::fs::write(root.join("dir/file"), "content")?;
        std::fs::write(root.join("a"), "linked")?;
        std::fs::hard_link(root.join("a"), root.join("b"))?;
        symlink("dir/file", root.join("link"))?;
        xattr::set(root.join("dir/file"), "user.test", b"v")?;
        std::os::unix::fs::lchown(root.join("a"), Some(1000), Some(1000))?;
        for path in ["dir/file", "a", "link", "dir", ""] {
            dataset::set_mtime(&root.join(path), 1_000_000_000, 5)?;
        }
        Ok(())
    };
    let (expected, actual) = (tmp.path().join("expected"), tmp.path().join("actual"));
    make(&expected)?;
    make(&actual)?;
    tree::compare_dirs(&expected, &actual, &CompareOptions::default())?.assert_none("identical trees");

    // Break the hard link (same content, mode, owner and time), change one of everything else.
    std::fs::remove_file(actual.join("b"))?;
    std::fs::write(actual.join("b"), "linked")?;
    std::os::unix::fs::lchown(actual.join("b"), Some(1000), Some(1000))?;
    std::fs::set_permissions(actual.join("dir/file"), std::fs::Permissions::from_mode(0o600))?;
    xattr::remove(actual.join("dir/file"), "user.test")?;
    std::fs::remove_file(actual.join("link"))?;
    symlink("elsewhere", actual.join("link"))?;
    std::os::unix::fs::lchown(actual.join("a"), Some(0), Some(0))?;
    std::fs::write(actual.join(std::ffi::OsStr::from_bytes(b"extra-\xff")), "")?;
    for path in ["dir/file", "b", "link", ""] {
        dataset::set_mtime(&actual.join(path), 1_000_000_000, 5)?;
    }
    dataset::set_mtime(&actual.join("dir"), 1_000_000_000, 6)?;

    let diffs = tree::compare_dirs(&expected, &actual, &CompareOptions::default())?;
    let text = diffs.to_string();
    for expected_line in [
        "\"a\": hard links not preserved: \"a\", \"b\" share one inode in the expected tree, 2 distinct inodes in the actual tree",
        "\"a\": owner 0:0, expected 1000:1000",
        "\"dir\": mtime 1000000000.000000006, expected 1000000000.000000005",
        "\"dir/file\": mode 0600, expected 0644",
        "\"dir/file\": xattr user.test missing",
        "\"extra-\\xFF\": unexpected File",
        "\"link\": symlink target \"elsewhere\", expected \"dir/file\"",
    ] {
        assert!(text.contains(expected_line), "missing {expected_line:?} in:\n{text}");
    }
    assert_eq!(diffs.len(), 7, "{text}");

    // Coarser options hide what they should.
    let lenient = CompareOptions {
        dir_mtime: tree::TimeCheck::Seconds,
        mode: false,
        ownership: false,
        xattrs: false,
        hardlinks: tree::HardlinkCheck::ContentOnly,
        ..CompareOptions::default()
    };
    let diffs = tree::compare_dirs(&expected, &actual, &lenient.exclude("link"))?;
    assert_eq!(diffs.len(), 1, "{diffs}");
    Ok(())
}

#[test]
fn change_while_reading_keeps_changing_the_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("large.bin");
    std::fs::write(&path, vec![7u8; 1024 * 1024])?;
    let before = TreeSnapshot::scan(tmp.path())?;
    let changer = ChangeWhileReading::start(&path)?;
    wait_until("20 writes", Duration::from_secs(10), Duration::from_millis(5), || {
        (changer.writes() >= 20).then_some(()).ok_or("fewer")
    })?;
    let writes = changer.stop()?;
    assert!(writes >= 20);
    let after = TreeSnapshot::scan(tmp.path())?;
    let diffs = tree::compare(&before, &after, &CompareOptions::default());
    assert!(!diffs.at("large.bin").is_empty(), "{diffs}");
    Ok(())
}
