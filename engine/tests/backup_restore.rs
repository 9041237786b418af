//! Backups written by the engine, read back by the restic CLI 0.14 and by the engine itself.

mod common;

use std::path::Path;
use std::time::Instant;

use cofre_engine::{EngineError, RetryClass, backup, find_snapshot, init_repository, restore};
use common::tree::{assert_same_tree, assert_same_tree_restic_014, build_awkward_tree, odd_time};
use common::{REST_PASSWORD, RestServer, request, restic_snapshot_ids, target};

#[test]
fn restic_lists_and_restores_what_the_engine_backed_up() {
    let server = RestServer::start(&["repo-c"]);
    let t = server.target("repo-c");
    let id = init_repository(&t).unwrap();

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("data");
    std::fs::create_dir(&src).unwrap();
    build_awkward_tree(&src);
    let src = src.canonicalize().unwrap();

    let started = Instant::now();
    let report = backup(&t, &request(&id, &[&src])).expect("backup");
    eprintln!("first backup took {:?}: {report:?}", started.elapsed());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.snapshot_id.len(), 64);
    assert_eq!(report.hostname, "test-host");
    assert_eq!(report.paths, vec![src.to_str().unwrap().to_owned()]);
    assert!(report.files_new >= 13, "{report:?}");
    assert_eq!(report.files_changed + report.files_unmodified, 0, "{report:?}");
    assert!(report.bytes_processed > 8 << 20, "{report:?}");
    assert!(report.bytes_added_packed > 0 && report.bytes_added_packed < report.bytes_added);
    let age = chrono::Utc::now() - report.snapshot_time;
    assert!(age.num_seconds().abs() < 120, "{}", report.snapshot_time);

    // restic sees the same snapshot, with our host, path and tag.
    let snapshots = server.restic_json("repo-c", &["snapshots"]);
    let snap = &snapshots[0];
    assert_eq!(snapshots.as_array().unwrap().len(), 1);
    assert_eq!(snap["id"].as_str(), Some(report.snapshot_id.as_str()), "{snapshots}");
    assert_eq!(snap["hostname"].as_str(), Some("test-host"));
    assert_eq!(snap["paths"][0].as_str(), src.to_str());
    assert_eq!(snap["tags"][0].as_str(), Some("cofre-test"));
    let time = chrono::DateTime::parse_from_rfc3339(snap["time"].as_str().unwrap()).unwrap();
    assert_eq!(time.timestamp_nanos_opt(), report.snapshot_time.timestamp_nanos_opt());

    server.restic("repo-c", &["check", "--read-data"]);

    // restic restore recreates the absolute path under the target.
    let out = tempfile::tempdir().unwrap();
    server.restic("repo-c", &["restore", &report.snapshot_id, "--target", out.path().to_str().unwrap()]);
    let restored = out.path().join(src.strip_prefix("/").unwrap());
    assert_same_tree_restic_014(&src, &restored);

    // The engine restores a directory of the snapshot into a destination...
    let mine = tempfile::tempdir().unwrap();
    let dest = mine.path().join("restore here");
    restore(&t, &report.snapshot_id, Some(src.to_str().unwrap()), &dest).expect("restore");
    assert_same_tree(&src, &dest);

    // ... a single file by abbreviated snapshot id ...
    let single = mine.path().join("single");
    let file = src.join("sub dir/nested.bin");
    restore(&t, &report.snapshot_id[..8], Some(file.to_str().unwrap()), &single).unwrap();
    assert_eq!(std::fs::read(single.join("nested.bin")).unwrap(), std::fs::read(&file).unwrap());

    // ... and the whole snapshot like restic does.
    let whole = mine.path().join("whole");
    restore(&t, &report.snapshot_id, None, &whole).unwrap();
    assert_same_tree(&src, &whole.join(src.strip_prefix("/").unwrap()));

    let err = restore(&t, &report.snapshot_id, Some("/no/such/path"), &whole).unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err:?}");
    let err = restore(&t, "0123abcd", None, &whole).unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err:?}");
}

#[test]
fn second_backup_uses_the_parent_and_counts_changes() {
    let server = RestServer::start(&["repo-d"]);
    let t = server.target("repo-d");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let mut req = request(&id, &[&src]);
    // A name pattern, and an absolute path anchored at the file-system root.
    let cache = src.join("cache");
    req.excludes = vec!["*.tmp".to_owned(), cache.to_str().unwrap().to_owned()];
    std::fs::write(src.join("skip.tmp"), b"excluded").unwrap();
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(cache.join("cached"), b"excluded too").unwrap();

    let first = backup(&t, &req).unwrap();
    assert_eq!(first.files_new, 20, "{first:?}");

    std::fs::write(src.join("f3"), b"changed content, longer\n").unwrap();
    std::fs::write(src.join("new"), b"new\n").unwrap();
    let started = Instant::now();
    let second = backup(&t, &req).unwrap();
    eprintln!("second backup took {:?}: {second:?}", started.elapsed());
    assert_eq!((second.files_new, second.files_changed, second.files_unmodified), (1, 1, 19));
    assert_eq!(second.files_processed, 21);
    assert_ne!(first.snapshot_id, second.snapshot_id);

    let ids = restic_snapshot_ids(&server, "repo-d");
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&second.snapshot_id));
    let ls = server.restic("repo-d", &["ls", &second.snapshot_id]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.contains("/f3") && !listing.contains("skip.tmp") && !listing.contains("cache"),
        "{listing}"
    );
}

/// A backup whose report was lost (its agent was killed after the snapshot was saved) is
/// found again by its job's tag, with the counts its snapshot recorded; restic reads the tag.
#[test]
fn a_snapshot_is_found_again_by_its_tags() {
    let server = RestServer::start(&["repo-f"]);
    let t = server.target("repo-f");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    for i in 0..5 {
        std::fs::write(src.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let tagged = |job: &str| {
        let mut req = request(&id, &[&src]);
        req.tags.push(format!("cofre-job:{job}"));
        req
    };
    let first = backup(&t, &tagged("one")).unwrap();
    std::fs::write(src.join("f0"), b"changed\n").unwrap();
    let second = backup(&t, &tagged("two")).unwrap();

    let tags = |job: &str| vec![format!("cofre-job:{job}"), "cofre-test".to_owned()];
    let found = find_snapshot(&t, &id, &tags("one")).unwrap().expect("the first job's snapshot");
    assert_eq!(found.snapshot_id, first.snapshot_id);
    assert_eq!(found.snapshot_time, first.snapshot_time);
    assert_eq!(found.paths, first.paths);
    assert_eq!(found.hostname, first.hostname);
    assert_eq!(found.tags, first.tags);
    assert_eq!(
        (found.files_new, found.files_processed, found.bytes_processed, found.bytes_added),
        (first.files_new, first.files_processed, first.bytes_processed, first.bytes_added)
    );
    assert!(found.warnings.is_empty());
    let found = find_snapshot(&t, &id, &tags("two")).unwrap().expect("the second job's snapshot");
    assert_eq!((found.snapshot_id.as_str(), found.files_changed), (second.snapshot_id.as_str(), 1));
    assert!(find_snapshot(&t, &id, &tags("three")).unwrap().is_none());
    // Every tag must be there.
    let both = vec!["cofre-job:one".to_owned(), "cofre-job:two".to_owned()];
    assert!(find_snapshot(&t, &id, &both).unwrap().is_none());
    assert!(matches!(find_snapshot(&t, &id, &[]), Err(EngineError::InvalidInput(_))));
    let err = find_snapshot(&t, &"ab".repeat(32), &tags("one")).unwrap_err();
    assert!(matches!(err, EngineError::RepositoryIdMismatch { .. }), "{err:?}");

    // restic lists the snapshot by the same tag.
    let listed = server.restic_json("repo-f", &["snapshots", "--tag", "cofre-job:one"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"].as_str(), Some(first.snapshot_id.as_str()));
}

#[test]
fn refuses_a_repository_with_another_id_and_writes_nothing() {
    let server = RestServer::start(&["repo-e"]);
    let t = server.target("repo-e");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a"), b"a").unwrap();

    let other = "ab".repeat(32);
    let err = backup(&t, &request(&other, &[work.path()])).unwrap_err();
    match &err {
        EngineError::RepositoryIdMismatch { expected, found } => {
            assert_eq!(expected, &other);
            assert_eq!(found, &id);
        }
        other => panic!("expected RepositoryIdMismatch, got {other:?}"),
    }
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    assert!(restic_snapshot_ids(&server, "repo-e").is_empty());
    let packs = server.restic("repo-e", &["list", "packs"]);
    assert!(packs.stdout.is_empty(), "{}", String::from_utf8_lossy(&packs.stdout));

    // A wrong repository password is reported as such, and nothing is written either.
    let wrong = target(&server.url("repo-e"), REST_PASSWORD, "wrong password");
    let err = backup(&wrong, &request(&id, &[work.path()])).unwrap_err();
    assert!(matches!(err, EngineError::WrongPassword), "{err:?}");

    // A path that is not initialised is never initialised by a backup.
    let server2 = RestServer::start(&["fresh"]);
    let err = backup(&server2.target("fresh"), &request(&id, &[work.path()])).unwrap_err();
    assert!(matches!(err, EngineError::NotInitialised), "{err:?}");
    assert!(!Path::new(&server2.dir.path().join("data/fresh/config")).exists());
}

#[test]
fn a_server_refusing_writes_fails_the_backup_with_its_status() {
    // Read-only access: the probe and the open succeed, writing the first pack is refused
    // (403): the error carries the status and no credentials.
    let server = RestServer::start(&["ro=Read"]);
    let repo_dir = server.dir.path().join("data/ro");
    let init = std::process::Command::new("restic")
        .env("RESTIC_PASSWORD", common::REPO_PASSWORD)
        .args(["init", "--repository-version", "2", "-r"])
        .arg(&repo_dir)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let t = server.target("ro");
    let id = cofre_engine::repository_id(&t).expect("reading is allowed");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a"), b"some data").unwrap();
    let started = Instant::now();
    let err = backup(&t, &request(&id, &[work.path()])).unwrap_err();
    eprintln!("refused write after {:?}: {err}", started.elapsed());
    assert!(matches!(err, EngineError::AccessDenied { status: 403, .. }), "{err:?}");
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    assert!(!err.to_string().contains(REST_PASSWORD), "{err}");
}

#[test]
fn the_backup_root_directory_keeps_its_own_metadata() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let server = RestServer::start(&["repo-root"]);
    let t = server.target("repo-root");
    let id = init_repository(&t).unwrap();

    // work/parent (mode 0711, odd mtime) / source (mode 0750, an xattr, another odd mtime).
    let work = tempfile::tempdir().unwrap();
    let parent = work.path().canonicalize().unwrap().join("parent");
    let src = parent.join("source");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), b"content\n").unwrap();
    xattr::set(&src, "user.cofre-root", b"root dir xattr").unwrap();
    let set_dir = |dir: &Path, mode: u32, offset: u64| {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let times = std::fs::FileTimes::new().set_modified(odd_time(offset));
        std::fs::File::open(dir).unwrap().set_times(times).unwrap();
    };
    set_dir(&src, 0o750, 50);
    set_dir(&parent, 0o711, 60);

    let report = backup(&t, &request(&id, &[&src])).expect("backup");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let out = tempfile::tempdir().unwrap();
    server.restic("repo-root", &["restore", &report.snapshot_id, "--target", out.path().to_str().unwrap()]);
    let restored = out.path().join(src.strip_prefix("/").unwrap());
    assert_same_tree_restic_014(&src, &restored);

    // The root itself: mtime to the nanosecond, mode, owner, xattrs.
    let (want, got) = (std::fs::metadata(&src).unwrap(), std::fs::metadata(&restored).unwrap());
    assert_eq!(
        (got.mtime(), got.mtime_nsec()),
        (want.mtime(), want.mtime_nsec()),
        "mtime of the restored backup root"
    );
    assert_eq!(got.mode() & 0o7777, 0o750, "mode of the restored backup root");
    assert_eq!((got.uid(), got.gid()), (want.uid(), want.gid()));
    assert_eq!(xattr::get(&restored, "user.cofre-root").unwrap().as_deref(), Some(&b"root dir xattr"[..]));

    // Its ancestors carry their real metadata too, as in restic's own snapshots.
    let restored_parent = restored.parent().unwrap();
    let (want, got) = (std::fs::metadata(&parent).unwrap(), std::fs::metadata(restored_parent).unwrap());
    assert_eq!(
        (got.mtime(), got.mtime_nsec()),
        (want.mtime(), want.mtime_nsec()),
        "mtime of the restored parent of the backup root"
    );
    assert_eq!(got.mode() & 0o7777, 0o711, "mode of the restored parent");

    // The parent snapshot still matches: nothing is read again.
    let second = backup(&t, &request(&id, &[&src])).expect("second backup");
    assert_eq!((second.files_new, second.files_changed, second.files_unmodified), (0, 0, 1), "{second:?}");
}
