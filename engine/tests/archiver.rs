//! The engine's own archiver (src/archiver) on a tree shaped to stress it: hundreds of small
//! files with duplicate contents, a file over several chunks and packs, compressible and random
//! data, empty files, links; then a re-backup with changes. restic 0.14 checks every byte and
//! restores both snapshots.

mod common;

use std::path::Path;

use cofre_engine::{BackupProgress, BackupReport, backup, backup_with_progress, init_repository, restore};
use common::tree::{assert_same_tree, assert_same_tree_restic_014};
use common::{RestServer, pseudo_random, request};

/// Deterministic bytes: random-looking, or log-like text that compresses well.
fn bytes(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    if !compressible {
        return pseudo_random(len, seed);
    }
    let mut n = seed;
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        out.extend_from_slice(
            format!("2026-11-27 10:{:02} INFO request {} ok\n", (n >> 33) % 60, (n >> 40) % 1000).as_bytes(),
        );
    }
    out.truncate(len);
    out
}

fn build(root: &Path) -> usize {
    let mut files = 0;
    for d in 0..12 {
        let dir = root.join(format!("dir {d}")).join(format!("sub{}", d % 3));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            // Every fifth file has the same content as a file in another directory.
            let seed = if f % 5 == 0 { f as u64 } else { (d * 100 + f) as u64 };
            let len = (seed as usize * 397) % 40_000;
            std::fs::write(dir.join(format!("f{f}.txt")), bytes(len, seed, f % 2 == 0)).unwrap();
            files += 1;
        }
    }
    std::fs::write(root.join("random.bin"), bytes(21 << 20, 7, false)).unwrap();
    std::fs::write(root.join("log.txt"), bytes(6 << 20, 8, true)).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("dir 0/sub0/f1.txt", root.join("link")).unwrap();
    std::fs::hard_link(root.join("log.txt"), root.join("log hardlink")).unwrap();
    files + 5
}

fn check_and_restore(server: &RestServer, repo: &str, report: &BackupReport, src: &Path) {
    server.restic(repo, &["check", "--read-data"]);
    let out = tempfile::tempdir().unwrap();
    server.restic(repo, &["restore", &report.snapshot_id, "--target", out.path().to_str().unwrap()]);
    assert_same_tree_restic_014(src, &out.path().join(src.strip_prefix("/").unwrap()));
    // The engine's restorer: files over several packs, shared blobs, hard links.
    let mine = tempfile::tempdir().unwrap();
    restore(&server.target(repo), &report.snapshot_id, Some(src.to_str().unwrap()), mine.path()).unwrap();
    assert_same_tree(src, mine.path());
}

#[test]
fn restic_reads_every_byte_the_archiver_wrote_and_changes_are_detected() {
    let server = RestServer::start(&["repo-a"]);
    let t = server.target("repo-a");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let src = src.canonicalize().unwrap();
    let files = build(&src);
    let req = request(&id, &[&src]);

    let progress = BackupProgress::default();
    let first = backup_with_progress(&t, &req, &progress).unwrap();
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    assert_progress_done(&progress, &first);
    assert_eq!(
        (first.files_new, first.files_changed, first.files_unmodified),
        (files as u64, 0, 0),
        "{first:?}"
    );
    // Duplicates and the hard link are stored once, and the text compresses.
    assert!(first.bytes_added < first.bytes_processed - (6 << 20), "{first:?}");
    assert!(first.bytes_added_packed < first.bytes_added, "{first:?}");
    let packs = server.restic("repo-a", &["list", "packs"]);
    assert!(
        String::from_utf8_lossy(&packs.stdout).lines().count() >= 3,
        "data over several packs, trees apart"
    );
    check_and_restore(&server, "repo-a", &first, &src);

    // Nothing changed: no file is read. Only the trees of the ancestors may be new: /tmp
    // changed its mtime when the restore above made a temporary directory in it.
    let progress = BackupProgress::default();
    let same = backup_with_progress(&t, &req, &progress).unwrap();
    assert_progress_done(&progress, &same);
    assert_eq!((same.files_new, same.files_changed, same.files_unmodified), (0, 0, files as u64), "{same:?}");
    assert_eq!(same.dirs_new, 0, "{same:?}");
    assert!(same.dirs_changed <= 2 && same.bytes_added < 2048, "{same:?}");

    // Five files change (one in the middle of the large one), one appears, one goes.
    for f in [1, 2, 3] {
        std::fs::write(src.join(format!("dir 4/sub1/f{f}.txt")), bytes(1000 + f, 99 + f as u64, true))
            .unwrap();
    }
    std::fs::write(src.join("dir 5/sub2/f7.txt"), b"").unwrap();
    let mut big = std::fs::read(src.join("random.bin")).unwrap();
    big[10 << 20..(10 << 20) + 4096].copy_from_slice(&bytes(4096, 5, false));
    std::fs::write(src.join("random.bin"), &big).unwrap();
    std::fs::write(src.join("dir 0/new file"), b"new").unwrap();
    std::fs::remove_file(src.join("dir 1/sub1/f9.txt")).unwrap();
    let second = backup(&t, &req).unwrap();
    assert_eq!((second.files_new, second.files_changed), (1, 5), "{second:?}");
    assert_eq!(second.files_unmodified, files as u64 - 6, "{second:?}");
    // Only the chunks around the change in the large file are new.
    assert!(second.bytes_added < 6 << 20, "{second:?}");
    check_and_restore(&server, "repo-a", &second, &src);
}

/// After a backup its progress counted every file and byte it processed (unchanged files
/// too), and the scan's totals, when it finished first, are the same.
fn assert_progress_done(progress: &BackupProgress, report: &BackupReport) {
    let got = progress.sample();
    assert_eq!((got.files_done, got.bytes_done), (report.files_processed, report.bytes_processed), "{got:?}");
    if let Some(files) = got.files_total {
        assert_eq!(
            (Some(files), got.bytes_total),
            (Some(report.files_processed), Some(report.bytes_processed))
        );
    }
}

#[test]
fn a_missing_pack_makes_the_restore_fail_and_say_which_files() {
    let server = RestServer::start(&["repo-m"]);
    let t = server.target("repo-m");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    // Two large random files: at least two data packs.
    std::fs::write(src.join("one.bin"), bytes(20 << 20, 1, false)).unwrap();
    std::fs::write(src.join("two.bin"), bytes(20 << 20, 2, false)).unwrap();
    let report = backup(&t, &request(&id, &[&src])).unwrap();

    // Remove one data pack behind the repository's back.
    let data = server.dir.path().join("data/repo-m/data");
    // Data packs are the large ones (the tree pack is a few hundred bytes).
    let packs: Vec<_> = walk(&data).into_iter().filter(|p| p.metadata().unwrap().len() > 1 << 20).collect();
    assert!(packs.len() >= 2, "{packs:?}");
    std::fs::remove_file(&packs[0]).unwrap();

    let out = tempfile::tempdir().unwrap();
    let err = restore(&t, &report.snapshot_id, Some(src.to_str().unwrap()), out.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the restore is incomplete") && text.contains(".bin"), "{text}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
