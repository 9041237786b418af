//! restic 0.14 backs up the data set through rustic-server (TLS + htpasswd) and restores it.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use crate::harness::dataset::{self, CHANGING_FILE, ChangeWhileReading, DatasetOptions};
use crate::harness::pki::TestPki;
use crate::harness::rest_server::RestServer;
use crate::harness::restic::{Restic, restored_path};
use crate::harness::tree::{self, CompareOptions};

/// What restic 0.14 cannot restore from the data set: a symlink target that is not valid UTF-8
/// comes back with U+FFFD replacement characters (names themselves survive byte for byte).
const RESTIC_014_LOSES: &[(&str, &str)] = &[(
    "links/non-utf8-target",
    "symlink target \"target-\u{fffd}\u{fffd}\", expected \"target-\\xFF\\xFE\"",
)];

fn assert_only_known_restic_losses(diffs: &tree::Differences, context: &str) {
    let unexpected: Vec<String> = diffs
        .0
        .iter()
        .filter(|d| !RESTIC_014_LOSES.iter().any(|(path, what)| d.path == Path::new(path) && d.what == *what))
        .map(ToString::to_string)
        .collect();
    assert!(unexpected.is_empty(), "{context}: restore differs from the source:\n{}", unexpected.join("\n"));
    assert_eq!(diffs.len(), RESTIC_014_LOSES.len(), "{context}: known restic 0.14 losses changed:\n{diffs}");
}

#[test]
fn restic_backup_restore_roundtrip_through_rest_server() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("source");
    let t = Instant::now();
    let ds = dataset::generate(&source, &DatasetOptions::default())?;
    eprintln!("roundtrip: generate {} files, {} MB: {:.2?}", ds.files, ds.bytes / 1_000_000, t.elapsed());

    let pki = TestPki::new()?;
    let server = RestServer::start(&pki.ca, &["roundtrip"])?;
    let restic =
        Restic::for_rest(&server, "roundtrip", "correct horse battery staple", &tmp.path().join("cache"));
    let t = Instant::now();
    restic.init_v2()?;
    eprintln!("roundtrip: restic init: {:.2?}", t.elapsed());
    assert!(server.data_dir().join("roundtrip/config").is_file());

    // First backup and full restore: everything comes back.
    let t = Instant::now();
    let first = restic.backup(&source)?;
    eprintln!("roundtrip: backup 1: {:.2?}", t.elapsed());
    assert!(!first.incomplete, "{}", first.stderr);
    assert_eq!(first.summary["files_new"], ds.files + ds.hardlink_names);
    let snapshots = restic.snapshots_json()?;
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0]["paths"][0], source.to_str().expect("utf-8 temp path"));
    assert!(
        first.snapshot_id.len() >= 8
            && snapshots[0]["id"].as_str().unwrap_or_default().starts_with(&first.snapshot_id)
    );

    let target = tmp.path().join("restore-1");
    let t = Instant::now();
    restic.restore(&first.snapshot_id, &target)?;
    eprintln!("roundtrip: restore 1: {:.2?}", t.elapsed());
    let restored = restored_path(&target, &source);
    let t = Instant::now();
    let diffs = tree::compare_dirs(&source, &restored, &CompareOptions::default())?;
    eprintln!("roundtrip: compare: {:.2?}", t.elapsed());
    assert_only_known_restic_losses(&diffs, "restore of snapshot 1");
    eprintln!(
        "roundtrip: sparse file allocates {} bytes in the source, {} after restore",
        tree::allocated_bytes(&source.join(dataset::SPARSE_FILE))?,
        tree::allocated_bytes(&restored.join(dataset::SPARSE_FILE))?
    );

    // Second backup of a mutated tree while one large file keeps changing.
    let mutation: dataset::Mutation = dataset::mutate(&source)?;
    let changer = ChangeWhileReading::start(&source.join(CHANGING_FILE))?;
    let t = Instant::now();
    let second = restic.backup(&source);
    let writes = changer.stop()?;
    let second = second?;
    eprintln!("roundtrip: backup 2 (with {writes} concurrent writes): {:.2?}", t.elapsed());
    assert_eq!(second.summary["files_new"], mutation.added.len());
    assert!(second.summary["files_changed"].as_u64() >= Some(mutation.modified.len() as u64));
    assert_eq!(restic.snapshots_json()?.len(), 2);

    let target = tmp.path().join("restore-2");
    restic.restore(&second.snapshot_id, &target)?;
    let restored = restored_path(&target, &source);
    let diffs = tree::compare_dirs(&source, &restored, &CompareOptions::default().exclude(CHANGING_FILE))?;
    assert_only_known_restic_losses(&diffs, "restore of snapshot 2");
    let changing = std::fs::metadata(restored.join(CHANGING_FILE))?;
    assert!(changing.len() >= 12 * 1024 * 1024, "{} bytes", changing.len());

    let t = Instant::now();
    restic.check(true)?;
    eprintln!("roundtrip: check --read-data: {:.2?}", t.elapsed());
    Ok(())
}
