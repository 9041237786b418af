//! Faults around maintenance, end to end: a backup cancelled mid-way (its child killed, its
//! lock removed, the next run fine), the maintenance process killed -9 mid-prune (a clean
//! repository, the next prune fine), and the controller replica holding a prune killed -9
//! while a second replica runs on the same PostgreSQL (the other one finishes it, once).

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use cofre_client::{PolicySpec, RetentionSpec};

use crate::harness::procs::wait_until_async;
use crate::maintenance::{
    as_machine, auditor, check_clean, lock_files, maintain, restic_repository, wait_running_with_lock,
};
use crate::store::{fixture, protect, write_files};

/// Processes whose parent is `parent` and whose command line contains `needle`.
fn children(parent: u32, needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent pid is the 2nd field after the command's closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// The files below `dirs` of a repository directory.
fn files_below(repo: &std::path::Path, dirs: &[&str]) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(|d| repo.join(d)).collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().filter_map(|e| e.ok()) {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) if !e.file_name().to_string_lossy().starts_with('.') => {
                    out.insert(e.path());
                }
                _ => {}
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_cancelled_mid_way_leaves_no_lock_and_the_next_run_succeeds() -> Result<()> {
    let f = fixture("cancel").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 240, 1_000_000, 1)?;
    let p = protect(&f, &source).await?;
    let job = f.admin.run_now(p.machine, p.policy, None).await?;
    wait_running_with_lock(&f, p.machine, job.id).await?;
    let asked = f.admin.cancel_job(job.id).await?;
    assert!(asked.cancel_requested_at.is_some());
    let ended = f.admin.wait_for_job(job.id, Duration::from_secs(120)).await?;
    assert_eq!(ended.state, "cancelled", "{ended:?}\nagent:\n{}", p.agent.log());
    assert!(ended.snapshot_id.is_none());
    wait_until_async(
        "the stopped backup's lock is removed",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let n = lock_files(&f, p.machine);
            async move { if n == 0 { Ok(()) } else { Err(format!("{n} lock files")) } }
        },
    )
    .await?;
    check_clean(&auditor(&f, &p)?, "after a cancelled backup")?;
    let again = f.admin.run_now(p.machine, p.policy, None).await?;
    let again = f.admin.wait_for_job(again.id, Duration::from_secs(600)).await?;
    assert_eq!(again.state, "succeeded", "{again:?}");
    // Cancelling what has ended is refused.
    let err = f.admin.cancel_job(again.id).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");
    check_clean(&auditor(&f, &p)?, "after the next backup")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_process_killed_mid_prune_leaves_a_clean_repository() -> Result<()> {
    let f = fixture("kill_prune").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 60, 1_000_000, 1)?;
    let p = protect(&f, &source).await?;
    let repo = restic_repository(&f.admin, p.machine).await?;
    let first = f.admin.run_now(p.machine, p.policy, None).await?;
    assert_eq!(f.admin.wait_for_job(first.id, Duration::from_secs(600)).await?.state, "succeeded");
    // Half the data goes away: after forgetting the first snapshot, prune has packs to
    // delete and to repack.
    for i in (0..60).step_by(2) {
        std::fs::remove_file(source.join(format!("file-1-{i:04}.bin")))?;
    }
    let second = f.admin.run_now(p.machine, p.policy, None).await?;
    assert_eq!(f.admin.wait_for_job(second.id, Duration::from_secs(600)).await?.state, "succeeded");
    let current = f.admin.get_policy(p.policy).await?;
    let mut spec: PolicySpec = current.spec;
    spec.retention = Some(RetentionSpec { keep_last: 1, ..Default::default() });
    spec.maintenance.max_unused_percent = 0;
    f.admin.update_policy(p.policy, &spec, Some(current.revision)).await?;
    assert_eq!(maintain(&f.admin, repo, "forget", false).await?.state, "succeeded");

    let repo_dir = f.store.data_dir().join(p.machine.to_string());
    let before = files_below(&repo_dir, &["data", "index"]);
    let prune = f.admin.run_maintenance(repo, "prune", false).await?;
    let controller = f.ctrl.pid().context("controller pid")?;
    // Killed in the middle of its work: once it holds its lock and has changed the first pack
    // or index file, but before it is done.
    let victim =
        wait_until_async("the prune is half-way", Duration::from_secs(120), Duration::from_millis(2), || {
            let locks = lock_files(&f, p.machine);
            let kids = children(controller, "maintenance-job");
            let changed = files_below(&repo_dir, &["data", "index"]) != before;
            async move {
                match kids.first() {
                    Some(pid) if locks > 0 && changed => Ok(*pid),
                    _ => Err(format!(
                        "{locks} locks, {} maintenance processes, changed: {changed}",
                        kids.len()
                    )),
                }
            }
        })
        .await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let ended = f.admin.wait_for_job(prune.id, Duration::from_secs(120)).await?;
    assert_eq!(ended.state, "failed", "{ended:?}");
    assert!(ended.error_message.as_deref().unwrap_or_default().contains("killed"), "{ended:?}");
    assert_eq!(ended.retry_class.as_deref(), Some("temporary"));
    assert_eq!(lock_files(&f, p.machine), 0, "the killed process's lock was removed");
    let audit = auditor(&f, &p)?;
    check_clean(&audit, "after a prune killed mid-way")?;
    let again = maintain(&f.admin, repo, "prune", false).await?;
    assert_eq!(again.state, "succeeded", "{again:?}");
    check_clean(&audit, "after the next prune")?;
    let restored = f.tmp.path().join("restored");
    audit.run(["--no-lock", "restore", "latest", "--target", restored.to_str().context("utf-8")?])?;
    crate::harness::tree::compare_dirs(
        &source,
        &crate::harness::restic::restored_path(&restored, &source),
        &crate::harness::tree::CompareOptions::default(),
    )?
    .assert_none("the kept snapshot restores after the prunes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_run_a_prune_once_and_the_survivor_finishes_it_when_its_holder_dies() -> Result<()> {
    let mut f = fixture("takeover").await?;
    let mut second = f.ctrl.replica(&f.tmp.path().join("controller-2"))?;
    let source = f.tmp.path().join("source");
    write_files(&source, 10, 100_000, 1)?;
    let p = protect(&f, &source).await?;
    let repo = restic_repository(&f.admin, p.machine).await?;
    let backup = f.admin.run_now(p.machine, p.policy, None).await?;
    assert_eq!(f.admin.wait_for_job(backup.id, Duration::from_secs(300)).await?.state, "succeeded");

    // A restic backup reading from a pipe we keep open holds a (non-exclusive) lock: the prune
    // must wait for it, which keeps it running long enough to kill its holder.
    let machine = as_machine(&f, &p)?;
    let mut holder = machine
        .command()
        .args(["backup", "--stdin", "--stdin-filename", "stream.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut pipe = holder.stdin.take().context("stdin")?;
    pipe.write_all(&[7u8; 4096])?;
    wait_until_async("restic holds its lock", Duration::from_secs(60), Duration::from_millis(50), || {
        let n = lock_files(&f, p.machine);
        async move { if n > 0 { Ok(()) } else { Err("no lock yet".to_string()) } }
    })
    .await?;

    let prune = f.admin.run_maintenance(repo, "prune", false).await?;
    let db = sqlx::PgPool::connect(&f.ctrl.db.owner_url).await?;
    let holder_name: String = wait_until_async(
        "a replica claims the prune",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let db = db.clone();
            async move {
                let h: Option<Option<String>> = sqlx::query_scalar("select holder from jobs where id = $1")
                    .bind(prune.id)
                    .fetch_optional(&db)
                    .await
                    .map_err(|e| e.to_string())?;
                h.flatten().ok_or_else(|| "not claimed".to_string())
            }
        },
    )
    .await?;
    let pid: u32 = holder_name.split(':').nth(1).context("holder pid")?.parse()?;
    // The holder dies without a word; the other replica's client is the one left.
    let survivor = if f.ctrl.pid() == Some(pid) {
        f.ctrl.kill9()?;
        second.admin().await?
    } else {
        anyhow::ensure!(second.pid() == Some(pid), "holder {holder_name} is neither controller");
        second.kill9()?;
        f.admin.clone()
    };
    drop(pipe);
    let status = holder.wait()?;
    assert!(status.success(), "restic's stdin backup finishes once its input ends");
    let ended = survivor.wait_for_job(prune.id, Duration::from_secs(180)).await?;
    assert_eq!(ended.state, "succeeded", "{ended:?}");
    let (attempts, results, new_holder): (i32, i64, Option<String>) = sqlx::query_as(
        "select attempts, (select count(*) from job_results where job_id = $1), holder from jobs where id = $1",
    )
    .bind(prune.id)
    .fetch_one(&db)
    .await?;
    assert_eq!((attempts, results), (2, 1), "claimed twice (the holder died), finished once");
    assert_ne!(new_holder.as_deref(), Some(holder_name.as_str()), "the survivor finished it");
    let jobs: i64 =
        sqlx::query_scalar("select count(*) from jobs where restic_repository_id = $1 and kind = 'prune'")
            .bind(repo)
            .fetch_one(&db)
            .await?;
    assert_eq!(jobs, 1, "exactly one prune job");
    db.close().await;
    check_clean(&auditor(&f, &p)?, "after a prune finished by the second replica")?;
    Ok(())
}
