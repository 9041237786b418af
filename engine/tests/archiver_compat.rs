//! Backups by rustic_core's archiver and by the engine's own deduplicate against each other:
//! same chunk boundaries (restic's Rabin chunker with the repository's polynomial) and
//! byte-identical trees. Repositories that rustic's archiver filled keep deduplicating after the
//! switch, and back.

mod common;

use cofre_engine::{Archiver, BackupProgress, backup_with, init_repository};
use common::{RestServer, pseudo_random, request};

#[test]
fn rustic_and_engine_archivers_store_the_same_blobs_and_trees() {
    let server = RestServer::start(&["repo-x"]);
    let t = server.target("repo-x");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    // 12 MiB of random bytes: about a dozen content-defined chunks; and small files.
    let big = pseudo_random(12 << 20, 0x1234_5678);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    for i in 0..30 {
        std::fs::write(src.join(format!("small-{i}")), format!("small file {i}\n").repeat(i + 1)).unwrap();
    }

    let mut req = request(&id, &[&src]);
    req.hostname = "by-rustic".to_owned();
    // rustic_core's archiver reports its bytes through its progress hooks (files it does not).
    let progress = BackupProgress::default();
    let by_rustic = backup_with(&t, &req, Archiver::Rustic, &progress).unwrap();
    assert_eq!(by_rustic.files_new, 31, "{by_rustic:?}");
    let sample = progress.sample();
    assert_eq!((sample.files_done, sample.bytes_done), (0, by_rustic.bytes_processed), "{sample:?}");
    assert!(by_rustic.bytes_added > 12 << 20, "{by_rustic:?}");

    // Another host: no parent, so every file is read and chunked again.
    req.hostname = "by-engine".to_owned();
    let by_engine = backup_with(&t, &req, Archiver::Engine, &BackupProgress::default()).unwrap();
    assert_eq!(by_engine.files_new, 31, "{by_engine:?}");
    assert_eq!(by_engine.bytes_added, 0, "same chunks and same trees: nothing new to store ({by_engine:?})");

    // And the engine's snapshot is a parent rustic's archiver accepts.
    let progress = BackupProgress::default();
    let again = backup_with(&t, &req, Archiver::Rustic, &progress).unwrap();
    assert_eq!(progress.sample().bytes_done, again.bytes_processed, "unchanged files count too");
    assert_eq!((again.files_unmodified, again.bytes_added), (31, 0), "{again:?}");
    server.restic("repo-x", &["check", "--read-data"]);
}
