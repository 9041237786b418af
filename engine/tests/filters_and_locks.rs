//! restic's other exclude options (case-insensitive globs, exclude-if-present, larger-than,
//! one file system) leave out what restic would, and the engine's repository locks follow
//! restic's rules: a backup waits for an exclusive lock (here: one a restic process holds) and
//! holds its own while it runs, and maintenance removes only what it is asked to.

mod common;

use std::time::{Duration, Instant};

use cofre_engine::maintenance::{ReadData, check, forget, lock_exclusively, prune};
use cofre_engine::{LockOptions, SourceFilters, backup, init_repository};
use common::{RestServer, request, restic_snapshot_ids};

#[test]
fn filters_leave_out_what_restic_would() {
    let server = RestServer::start(&["repo-f"]);
    let t = server.target("repo-f");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    std::fs::write(src.join("keep.txt"), b"kept").unwrap();
    std::fs::write(src.join("MOVIE.ISO"), b"left out by an iexclude").unwrap();
    std::fs::create_dir(src.join("cache")).unwrap();
    std::fs::write(src.join("cache/.nobackup"), b"").unwrap();
    std::fs::write(src.join("cache/blob"), b"left out: its directory has the marker").unwrap();
    std::fs::write(src.join("big.bin"), vec![1u8; 200_000]).unwrap();
    let mut req = request(&id, &[&src]);
    req.filters = SourceFilters {
        iexcludes: vec!["*.iso".into()],
        exclude_if_present: vec![".nobackup".into()],
        exclude_larger_than: Some(100_000),
        one_file_system: true,
    };
    let report = backup(&t, &req).unwrap();
    let ls = server.restic("repo-f", &["ls", &report.snapshot_id]);
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(listed.contains("/keep.txt"), "{listed}");
    for gone in ["MOVIE.ISO", "cache/blob", "big.bin"] {
        assert!(!listed.contains(gone), "{gone} should be left out:\n{listed}");
    }
    assert!(report.utc_offset_seconds.abs() <= 18 * 3600);
    assert!(report.tags.contains(&"cofre-test".to_string()));
}

#[test]
fn backups_and_maintenance_wait_for_each_other_by_restics_locks() {
    let server = RestServer::start(&["repo-l"]);
    let t = server.target("repo-l");
    let id = init_repository(&t).unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    std::fs::write(src.join("a"), common::pseudo_random(300_000, 1)).unwrap();
    let first = backup(&t, &request(&id, &[&src])).unwrap();
    let wait = |secs| LockOptions { wait: Duration::from_secs(secs), ..Default::default() };

    // The repository is locked exclusively: a backup waits for it instead of failing...
    let exclusive = lock_exclusively(&t, &wait(10)).unwrap();
    std::fs::write(src.join("b"), common::pseudo_random(300_000, 2)).unwrap();
    let (t2, id2, src2) = (t.clone(), id.clone(), src.clone());
    let waiting = std::thread::spawn(move || {
        let mut req = request(&id2, &[&src2]);
        req.lock = LockOptions { wait: Duration::from_secs(120), ..Default::default() };
        backup(&t2, &req)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!waiting.is_finished(), "the backup waits while the exclusive lock is held");
    // ...one that cannot wait long enough fails as temporary, naming the holder...
    let mut impatient = request(&id, &[&src]);
    impatient.lock = wait(1);
    let err = backup(&t, &impatient).unwrap_err();
    assert_eq!(err.retry_class(), cofre_engine::RetryClass::Temporary, "{err}");
    assert!(err.to_string().contains("exclusive lock by cofre-maintenance"), "{err}");
    // ...and the waiting one runs once the lock goes.
    let released = Instant::now();
    drop(exclusive);
    let second = waiting.join().unwrap().unwrap();
    eprintln!("the waiting backup went on {:?} after the lock was released", released.elapsed());

    // A restic backup reading from a pipe holds restic's own (non-exclusive) lock: the
    // engine's maintenance sees it and waits.
    let mut holder = server.restic_command("repo-l", &["backup", "--stdin", "--stdin-filename", "s.bin"]);
    let mut child =
        holder.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut pipe, b"streamed").unwrap();
    let until_locked = Instant::now();
    while String::from_utf8_lossy(&server.restic("repo-l", &["list", "locks", "--no-lock"]).stdout)
        .trim()
        .is_empty()
    {
        assert!(until_locked.elapsed() < Duration::from_secs(30), "restic never took its lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t3 = t.clone();
    let first_id = first.snapshot_id.clone();
    let forgetting = std::thread::spawn(move || {
        forget(&t3, &[first_id], false, &LockOptions { wait: Duration::from_secs(120), ..Default::default() })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!forgetting.is_finished(), "forget waits for restic's backup");
    drop(pipe);
    assert!(child.wait().unwrap().success());
    let done = forgetting.join().unwrap().unwrap();
    assert_eq!(done.removed, vec![first.snapshot_id.clone()]);

    // Forget removes exactly the ids given; a dry run removes nothing.
    let dry = forget(&t, std::slice::from_ref(&second.snapshot_id), true, &wait(60)).unwrap();
    assert_eq!(dry.removed, vec![second.snapshot_id.clone()]);
    let left = restic_snapshot_ids(&server, "repo-l");
    assert!(left.contains(&second.snapshot_id) && !left.contains(&first.snapshot_id), "{left:?}");
    let gone = forget(&t, &["ab".repeat(32)], false, &wait(60)).unwrap();
    assert_eq!(gone.missing, vec!["ab".repeat(32)]);
    let pruned = prune(&t, 0, &wait(60)).unwrap();
    eprintln!("{pruned:?}");
    let checked = check(&t, ReadData::All, &wait(60)).unwrap();
    assert!(checked.errors.is_empty(), "{checked:?}");
    server.restic("repo-l", &["check", "--read-data"]);
    // No lock is left behind by anyone.
    let locks = server.restic("repo-l", &["list", "locks", "--no-lock"]);
    assert!(
        String::from_utf8_lossy(&locks.stdout).trim().is_empty(),
        "locks left: {}",
        String::from_utf8_lossy(&locks.stdout)
    );
}
