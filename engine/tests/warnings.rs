//! Entries that cannot be read and files that change while being read become warnings.
//!
//! The tests run as root, so `chmod 000` does not make anything unreadable. Real cases used:
//! a directory nested deeper than PATH_MAX (4096 bytes: the walk cannot list or stat it), a
//! write-only sysfs attribute (opening it for reading fails with EACCES even for root; used
//! when the machine has one), and a file that a writer keeps appending to during the backup.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cofre_engine::{backup, init_repository};
use common::{RestServer, request, restic_snapshot_ids};

/// Creates `depth` nested directories with 200-byte names below `base` (a shell walks into
/// them one by one: no path given to the kernel is too long), with a file at the bottom.
fn make_too_deep(base: &Path, depth: usize) {
    let name = "d".repeat(200);
    let script = format!(
        "set -P; cd \"$1\" && for i in $(seq {depth}); do mkdir {name} && cd {name} || exit 1; \
         done && echo deep > file"
    );
    // bash with `set -P` changes directory relatively; dash rebuilds the absolute path and fails.
    let status = Command::new("bash").args(["-c", &script, "bash"]).arg(base).status().unwrap();
    assert!(status.success());
}

/// A write-only sysfs attribute, if this machine has one that root cannot open for reading.
fn write_only_sysfs_file() -> Option<PathBuf> {
    ["/sys/bus/pci/rescan", "/sys/class/zram-control/hot_remove", "/sys/kernel/mm/ksm/run_never"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists() && std::fs::File::open(p).is_err())
}

#[test]
fn unreadable_entries_are_warnings_not_failures() {
    let server = RestServer::start(&["repo-w"]);
    let t = server.target("repo-w");
    let id = init_repository(&t).unwrap();

    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    std::fs::write(src.join("fine.txt"), b"readable\n").unwrap();
    std::fs::create_dir(src.join("deep")).unwrap();
    make_too_deep(&src.join("deep"), 22);

    let sysfs = write_only_sysfs_file();
    let mut paths: Vec<&Path> = vec![&src];
    if let Some(p) = &sysfs {
        paths.push(p);
    } else {
        eprintln!("no write-only sysfs attribute here: the open-failure case is not exercised");
    }

    let report = backup(&t, &request(&id, &paths)).expect("the backup itself must succeed");
    eprintln!("warnings: {:#?}", report.warnings);
    assert!(
        report.warnings.iter().any(|w| w.contains("skipped") && w.contains("ddddd")),
        "{:?}",
        report.warnings
    );
    if let Some(p) = &sysfs {
        let name = p.to_str().unwrap();
        assert!(
            report.warnings.iter().any(|w| w.starts_with(name) && w.contains("cannot be opened")),
            "{:?}",
            report.warnings
        );
    }
    assert_eq!(restic_snapshot_ids(&server, "repo-w"), vec![report.snapshot_id.clone()]);
    let ls = server.restic("repo-w", &["ls", &report.snapshot_id]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("/fine.txt"));
    server.restic("repo-w", &["check", "--read-data"]);
}

/// Cheap deterministic pseudo-random bytes (incompressible enough to take real time).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn a_file_growing_during_the_backup_is_reported_and_stays_consistent() {
    let server = RestServer::start(&["repo-g"]);
    let t = server.target("repo-g");
    let id = init_repository(&t).unwrap();

    let work = tempfile::tempdir().unwrap();
    let src = work.path().canonicalize().unwrap();
    let log = src.join("growing.log");
    std::fs::write(&log, noise(24 << 20)).unwrap();
    std::fs::write(src.join("quiet.txt"), b"nobody touches me\n").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let log = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(Ordering::Relaxed) {
                file.write_all(&[b'x'; 4096]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let result = backup(&t, &request(&id, &[&src]));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let report = result.expect("backup");
    eprintln!("warnings: {:#?}", report.warnings);

    let log_text = log.to_str().unwrap();
    assert!(
        report.warnings.iter().any(|w| w.starts_with(log_text) && w.contains("changed while being read")),
        "{:?}",
        report.warnings
    );
    assert!(!report.warnings.iter().any(|w| w.contains("quiet.txt")), "{:?}", report.warnings);

    // The stored node is self-consistent: restic's check and restore accept it, and the
    // restored file is the prefix that existed when the walk saw it.
    server.restic("repo-g", &["check", "--read-data"]);
    let out = tempfile::tempdir().unwrap();
    server.restic("repo-g", &["restore", &report.snapshot_id, "--target", out.path().to_str().unwrap()]);
    let restored = std::fs::read(out.path().join(log.strip_prefix("/").unwrap())).unwrap();
    let now = std::fs::read(&log).unwrap();
    assert!(restored.len() >= 24 << 20 && restored.len() < now.len(), "{}", restored.len());
    assert_eq!(&now[..restored.len()], &restored[..]);
}
