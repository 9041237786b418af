//! The agent's process model: every backup runs in a child process, so killing that process
//! fails only its job (the agent lives on and the next backup works), and the agent that waits
//! for its next run stays small after a large job (its resident memory is printed: the target
//! is checked by the benchmark, not asserted here).

use std::time::Duration;

use anyhow::{Context, Result};

use crate::harness::procs::{wait_until, wait_until_async};
use crate::store::{fixture, protect, write_files};

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// Child processes of `parent` whose command line contains `needle`.
fn children_running(parent: u32, needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised name) is the parent pid.
            let ppid =
                stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backup_runs_in_a_child_process_that_can_die_alone() -> Result<()> {
    let f = fixture("agent_process").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 200, 1_000_000, 5)?;
    write_files(&source.join("small"), 3000, 2_000, 6)?;
    let p = protect(&f, &source).await?;
    let agent_pid = p.agent.pid().context("agent running")?;

    // A large first backup, then the agent waiting for its next run.
    let before = rss_kib(agent_pid)?;
    let job = f.admin.run_now(p.machine, p.policy, None).await?;
    let job = f.admin.wait_for_job(job.id, Duration::from_secs(300)).await?;
    assert_eq!(job.state, "succeeded", "{job:?}\n{}", p.agent.log());
    let after = rss_kib(agent_pid)?;
    eprintln!(
        "agent resident memory: {before} KiB before, {after} KiB after a backup of {} files / {} MB",
        job.stats.as_ref().and_then(|s| s["files_processed"].as_u64()).unwrap_or(0),
        job.stats.as_ref().and_then(|s| s["bytes_processed"].as_u64()).unwrap_or(0) / 1_000_000
    );

    // CPU while waiting: utime + stime over ten idle seconds (printed, not asserted).
    let ticks = |pid: u32| -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = stat.rsplit_once(") ").context("stat")?.1;
        let f: Vec<&str> = rest.split(' ').collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    };
    let (t0, w0) = (ticks(agent_pid)?, std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let used = (ticks(agent_pid)? - t0) as f64 / 100.0;
    eprintln!(
        "agent CPU while idle: {used:.2} s over {:.1} s ({:.3}% of a core; clock ticks of 10 ms)",
        w0.elapsed().as_secs_f64(),
        used / w0.elapsed().as_secs_f64() * 100.0
    );

    // Kill the job's process mid-backup: that job fails with a clear reason, the agent lives.
    write_files(&source.join("more"), 200, 1_000_000, 9)?;
    let job = f.admin.run_now(p.machine, p.policy, None).await?;
    let child =
        wait_until("the backup's child process", Duration::from_secs(60), Duration::from_millis(10), || {
            children_running(agent_pid, "backup-job").first().copied().ok_or("no child yet")
        })?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child as i32), nix::sys::signal::Signal::SIGKILL)?;
    let killed = f.admin.wait_for_job(job.id, Duration::from_secs(120)).await?;
    assert_eq!(killed.state, "failed", "{killed:?}");
    let msg = killed.error_message.clone().unwrap_or_default();
    assert!(msg.contains("killed"), "{msg}");
    assert_eq!(killed.retry_class.as_deref(), Some("temporary"), "{killed:?}");
    assert!(std::fs::metadata(format!("/proc/{agent_pid}")).is_ok(), "the agent survived");

    let ok = wait_until_async(
        "a backup after the killed one",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let admin = f.admin.clone();
            let (m, pol) = (p.machine, p.policy);
            async move {
                let j = admin.run_now(m, pol, None).await.map_err(|e| e.to_string())?;
                let j =
                    admin.wait_for_job(j.id, Duration::from_secs(300)).await.map_err(|e| e.to_string())?;
                if j.state == "succeeded" { Ok(j) } else { Err(format!("{j:?}")) }
            }
        },
    )
    .await?;
    assert!(ok.snapshot_id.is_some());
    assert!(children_running(agent_pid, "backup-job").is_empty(), "no child left behind");
    Ok(())
}
