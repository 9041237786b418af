//! Proves each harness piece against the real components it wraps.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::harness::dataset::{self, CHANGING_FILE, ChangeWhileReading, DatasetOptions};
use crate::harness::pg::PgCluster;
use crate::harness::pki::{TestPki, https_client};
use crate::harness::procs::{
    Proc, describe_status, find_workspace_bin, free_port, wait_until, wait_until_async,
};
use crate::harness::rest_server::RestServer;
use crate::harness::restic::{Restic, restored_path};
use crate::harness::tree::{self, CompareOptions, TreeSnapshot};

#[test]
fn wait_until_polls_and_reports_the_last_error() {
    let start = Instant::now();
    let mut calls = 0;
    let value = wait_until(
        "the third call",
        Duration::from_secs(5),
        Duration::from_millis(1),
        || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        },
    )
    .expect("third call succeeds");
    assert_eq!(value, 3);
    assert!(start.elapsed() < Duration::from_secs(1));

    let err = wait_until(
        "something that never happens",
        Duration::from_millis(100),
        Duration::from_millis(10),
        || Err::<(), _>("still not there"),
    )
    .expect_err("times out");
    let message = err.to_string();
    assert!(
        message.contains("something that never happens"),
        "{message}"
    );
    assert!(message.contains("still not there"), "{message}");
    assert!(err.attempts >= 2, "{message}");

    assert_ne!(free_port(), 0);
}

#[test]
fn proc_captures_output_and_is_terminated_on_drop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo to-stdout; echo to-stderr >&2; exec sleep 600"]);
    let proc = Proc::spawn("sleeper", cmd, dir.path())?;
    let pid = proc.pid();
    wait_until(
        "both lines in the log",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            let log = proc.log();
            if log.contains("to-stdout") && log.contains("to-stderr") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )?;
    drop(proc);
    // Reaped by Drop: the pid no longer names a live process of ours.
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.try_into()?), None).is_ok();
    assert!(!alive, "process {pid} still alive after Drop");
    assert!(std::fs::read_to_string(dir.path().join("sleeper.log"))?.contains("to-stderr"));
    Ok(())
}

#[test]
fn proc_escalates_to_sigkill_and_reports_exit_codes() -> Result<()> {
    let dir = tempfile::tempdir()?;

    // Ignores SIGTERM: terminate() must escalate after the grace period.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    let mut stubborn =
        Proc::spawn("stubborn", cmd, dir.path())?.with_grace(Duration::from_millis(300));
    wait_until(
        "stubborn ready",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            stubborn
                .log()
                .contains("ready")
                .then_some(())
                .ok_or("not yet")
        },
    )?;
    let status = stubborn.terminate()?;
    assert_eq!(describe_status(status), "killed by SIGKILL");

    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let mut victim = Proc::spawn("victim", cmd, dir.path())?;
    assert!(victim.is_running());
    assert_eq!(describe_status(victim.kill9()?), "killed by SIGKILL");
    assert!(!victim.is_running());

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exit 3"]);
    let mut quitter = Proc::spawn("quitter", cmd, dir.path())?;
    let status = quitter.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(3));
    Ok(())
}

#[test]
fn workspace_bins_are_looked_up_with_a_helpful_error() {
    let err = find_workspace_bin("cofre-no-such-binary").expect_err("does not exist");
    let message = format!("{err:#}");
    assert!(
        message.contains("cargo build --workspace --bins"),
        "{message}"
    );
    assert!(message.contains("target"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_with_production_roles() -> Result<()> {
    use sqlx::{Connection as _, PgConnection};

    let started = Instant::now();
    let cluster = PgCluster::start()?;
    let db = cluster.create_database("cofre_selftest")?;
    // A second database in the same cluster: `cofre_app` exists already, that is fine.
    let other = cluster.create_database("cofre_other")?;
    eprintln!(
        "postgres cluster + 2 databases in {:.2?}",
        started.elapsed()
    );

    let mut app = PgConnection::connect(&db.app_url).await?;
    let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut app).await?;
    assert_eq!(one, 1);
    let member: bool =
        sqlx::query_scalar("select pg_has_role(current_user, 'cofre_app', 'member')")
            .fetch_one(&mut app)
            .await?;
    assert!(member, "{} must be a member of cofre_app", db.app_user);

    // The owner runs migrations: creates tables, may create roles, grants to the group role.
    let mut owner = PgConnection::connect(&db.owner_url).await?;
    sqlx::query("create table machines (id int primary key)")
        .execute(&mut owner)
        .await?;
    sqlx::query("create role cofre_selftest_migration_probe nologin")
        .execute(&mut owner)
        .await?;
    sqlx::query("grant select, insert on machines to cofre_app")
        .execute(&mut owner)
        .await?;
    sqlx::query("insert into machines values (1)")
        .execute(&mut app)
        .await?;
    let count: i64 = sqlx::query_scalar("select count(*) from machines")
        .fetch_one(&mut app)
        .await?;
    assert_eq!(count, 1);
    // …and the app role itself may not.
    assert!(
        sqlx::query("create table nope (id int)")
            .execute(&mut app)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("create role nope")
            .execute(&mut app)
            .await
            .is_err()
    );

    let wrong = db.app_url.replace(&db.app_password, "wrong-password");
    assert!(
        PgConnection::connect(&wrong).await.is_err(),
        "a wrong password must be refused"
    );
    let mut admin = PgConnection::connect(&cluster.admin_url(&other.name)).await?;
    let owner_name: String = sqlx::query_scalar(
        "select pg_get_userbyid(datdba) from pg_database where datname = current_database()",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(owner_name, other.owner_user);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_server_requires_tls_and_credentials() -> Result<()> {
    let pki = TestPki::new()?;
    let started = Instant::now();
    let mut server = RestServer::start(&pki.ca, &["repo-a"])?;
    eprintln!("rustic-server ready in {:.2?}", started.elapsed());
    let client = server.client()?;
    let base = server.url();
    let create = |repo: &str| format!("{base}/{repo}/?create=true");

    let health = client
        .get(format!("{}/health/live", server.url()))
        .send()
        .await?;
    assert!(health.status().is_success());

    let anonymous = client.post(create("repo-a")).send().await?;
    assert!(
        matches!(anonymous.status().as_u16(), 401 | 403),
        "anonymous: {}",
        anonymous.status()
    );
    let wrong = client
        .post(create("repo-a"))
        .basic_auth(server.username(), Some("wrong-password"))
        .send()
        .await?;
    assert!(
        matches!(wrong.status().as_u16(), 401 | 403),
        "wrong password: {}",
        wrong.status()
    );
    let unknown_user = client
        .post(create("repo-a"))
        .basic_auth("intruder", Some(server.password()))
        .send()
        .await?;
    assert!(
        matches!(unknown_user.status().as_u16(), 401 | 403),
        "unknown user: {}",
        unknown_user.status()
    );
    // A list request without credentials must be refused, not crash the server.
    let list = client
        .get(format!("{}/keys/", server.repo_url("repo-a")))
        .send()
        .await?;
    assert!(
        matches!(list.status().as_u16(), 401 | 403),
        "anonymous list: {}",
        list.status()
    );
    assert!(server.is_running());

    let ok = client
        .post(create("repo-a"))
        .basic_auth(server.username(), Some(server.password()))
        .send()
        .await?;
    assert!(ok.status().is_success(), "storage user: {}", ok.status());

    // Any single-level name works once allowed (the server restarts on the same port).
    let machine = uuid::Uuid::new_v4().to_string();
    let before = client
        .post(create(&machine))
        .basic_auth(server.username(), Some(server.password()))
        .send()
        .await?;
    assert_eq!(before.status().as_u16(), 403, "not yet allowed");
    let restarted = Instant::now();
    server.allow_repo(&machine)?;
    eprintln!(
        "rustic-server restart for a new repository in {:.2?}",
        restarted.elapsed()
    );
    let after = client
        .post(create(&machine))
        .basic_auth(server.username(), Some(server.password()))
        .send()
        .await?;
    assert!(
        after.status().is_success(),
        "after allow_repo: {}",
        after.status()
    );
    assert!(server.data_dir().join(&machine).join("data").is_dir());
    // The first repository survived the restart.
    assert!(server.data_dir().join("repo-a").join("keys").is_dir());

    // A client that trusts another CA refuses the server's certificate.
    let other_ca = TestPki::unrelated_ca()?;
    let stranger = https_client(other_ca.cert_pem(), None)?;
    let refused = stranger
        .get(format!("{}/health/live", server.url()))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must not be trusted"
    );

    // Plain HTTP is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/health/live", server.port()))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // Polling helper for async tests.
    let polled = wait_until_async(
        "health",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            client
                .get(format!("{}/health/live", server.url()))
                .send()
                .await?
                .error_for_status()
        },
    )
    .await?;
    assert!(polled.status().is_success());
    Ok(())
}

#[test]
fn dataset_is_deterministic_and_tree_reports_changes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let options = DatasetOptions::default();
    let started = Instant::now();
    let first = dataset::generate(&tmp.path().join("a"), &options)?;
    eprintln!("data set generated in {:.2?}: {first:?}", started.elapsed());
    dataset::generate(&tmp.path().join("b"), &options)?;

    assert!(first.files >= 2000, "{} files", first.files);
    assert!(first.large_files.len() >= 4);
    assert!(first.xattrs);
    let a = TreeSnapshot::scan(&first.root)?;
    let deepest = a
        .entries
        .keys()
        .map(|p| p.components().count())
        .max()
        .unwrap_or(0);
    assert!(deepest >= 6, "depth {deepest}");
    for group in &first.hardlink_groups {
        let inodes: std::collections::BTreeSet<_> =
            group.iter().map(|p| a.get(p).map(|e| e.inode)).collect();
        assert_eq!(inodes.len(), 1, "{group:?} share one inode");
    }
    let sparse = a.get(dataset::SPARSE_FILE).expect("sparse file");
    assert_eq!(sparse.size, dataset::SPARSE_SIZE);
    assert!(
        sparse.allocated < 1024 * 1024,
        "sparse file allocates {} bytes",
        sparse.allocated
    );

    let same = tree::compare_dirs(
        &first.root,
        &tmp.path().join("b"),
        &CompareOptions::default(),
    )?;
    same.assert_none("two data sets from one seed");

    let other = dataset::generate(
        &tmp.path().join("c"),
        &DatasetOptions { seed: 1, ..options },
    )?;
    let differ = tree::compare_dirs(&first.root, &other.root, &CompareOptions::default())?;
    assert!(
        differ.len() > 1000,
        "another seed changes contents and times"
    );

    let mutation = dataset::mutate(&tmp.path().join("b"))?;
    let diffs = tree::compare_dirs(
        &first.root,
        &tmp.path().join("b"),
        &CompareOptions::default(),
    )?;
    for path in mutation
        .modified
        .iter()
        .chain(&mutation.added)
        .chain(&mutation.removed)
    {
        assert!(
            !diffs.at(path).is_empty(),
            "{} not reported:\n{diffs}",
            path.display()
        );
    }
    let text = diffs.to_string();
    assert!(
        text.contains("\"docs/readme.txt\": content differs"),
        "{text}"
    );
    assert!(
        text.contains("\"docs/added-after-first-backup.txt\": unexpected File"),
        "{text}"
    );
    assert!(
        text.contains("\"tree/d2/d1/f005.bin\": File missing"),
        "{text}"
    );
    // Exclusions hide a path and everything below it.
    let mut options = CompareOptions::default();
    for path in mutation
        .modified
        .iter()
        .chain(&mutation.added)
        .chain(&mutation.removed)
    {
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
    tree::compare_dirs(&expected, &actual, &CompareOptions::default())?
        .assert_none("identical trees");

    // Break the hard link (same content, mode, owner and time), change one of everything else.
    std::fs::remove_file(actual.join("b"))?;
    std::fs::write(actual.join("b"), "linked")?;
    std::os::unix::fs::lchown(actual.join("b"), Some(1000), Some(1000))?;
    std::fs::set_permissions(
        actual.join("dir/file"),
        std::fs::Permissions::from_mode(0o600),
    )?;
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
        assert!(
            text.contains(expected_line),
            "missing {expected_line:?} in:\n{text}"
        );
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
    wait_until(
        "20 writes",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || (changer.writes() >= 20).then_some(()).ok_or("fewer"),
    )?;
    let writes = changer.stop()?;
    assert!(writes >= 20);
    let after = TreeSnapshot::scan(tmp.path())?;
    let diffs = tree::compare(&before, &after, &CompareOptions::default());
    assert!(!diffs.at("large.bin").is_empty(), "{diffs}");
    Ok(())
}

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
        .filter(|d| {
            !RESTIC_014_LOSES
                .iter()
                .any(|(path, what)| d.path == Path::new(path) && d.what == *what)
        })
        .map(ToString::to_string)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{context}: restore differs from the source:\n{}",
        unexpected.join("\n")
    );
    assert_eq!(
        diffs.len(),
        RESTIC_014_LOSES.len(),
        "{context}: known restic 0.14 losses changed:\n{diffs}"
    );
}

#[test]
fn restic_backup_restore_roundtrip_through_rest_server() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("source");
    let t = Instant::now();
    let ds = dataset::generate(&source, &DatasetOptions::default())?;
    eprintln!(
        "roundtrip: generate {} files, {} MB: {:.2?}",
        ds.files,
        ds.bytes / 1_000_000,
        t.elapsed()
    );

    let pki = TestPki::new()?;
    let server = RestServer::start(&pki.ca, &["roundtrip"])?;
    let restic = Restic::for_rest(
        &server,
        "roundtrip",
        "correct horse battery staple",
        &tmp.path().join("cache"),
    );
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
    assert_eq!(
        snapshots[0]["paths"][0],
        source.to_str().expect("utf-8 temp path")
    );
    assert!(
        first.snapshot_id.len() >= 8
            && snapshots[0]["id"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&first.snapshot_id)
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
    let mutation = dataset::mutate(&source)?;
    let changer = ChangeWhileReading::start(&source.join(CHANGING_FILE))?;
    let t = Instant::now();
    let second = restic.backup(&source);
    let writes = changer.stop()?;
    let second = second?;
    eprintln!(
        "roundtrip: backup 2 (with {writes} concurrent writes): {:.2?}",
        t.elapsed()
    );
    assert_eq!(second.summary["files_new"], mutation.added.len());
    assert!(second.summary["files_changed"].as_u64() >= Some(mutation.modified.len() as u64));
    assert_eq!(restic.snapshots_json()?.len(), 2);

    let target = tmp.path().join("restore-2");
    restic.restore(&second.snapshot_id, &target)?;
    let restored = restored_path(&target, &source);
    let diffs = tree::compare_dirs(
        &source,
        &restored,
        &CompareOptions::default().exclude(CHANGING_FILE),
    )?;
    assert_only_known_restic_losses(&diffs, "restore of snapshot 2");
    let changing = std::fs::metadata(restored.join(CHANGING_FILE))?;
    assert!(
        changing.len() >= 12 * 1024 * 1024,
        "{} bytes",
        changing.len()
    );

    let t = Instant::now();
    restic.check(true)?;
    eprintln!("roundtrip: check --read-data: {:.2?}", t.elapsed());
    Ok(())
}
