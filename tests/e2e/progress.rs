//! A running backup's progress (#11), end to end: a backup long enough to be watched (a
//! sparse file of 64 GiB: its holes read as zeros, so it costs no disk, but the engine still
//! reads and chunks every byte) reports through the agent (sampling every 2 s here instead of
//! 15) to the API while it runs, its bytes growing, its totals known once the agent's scan has
//! counted them; the portal's overview shows it as a `<progress>` bar with its words. The job is
//! then cancelled: its progress goes with it, and nothing about it was spooled. A smaller backup
//! then succeeds after several samples, its result intact behind them.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use crate::harness::browser::Browser;
use crate::harness::cofre::{ADMIN_PASSWORD, Controller};
use crate::harness::pg::PgCluster;
use crate::harness::pki::TestPki;
use crate::harness::procs::wait_until_async;
use crate::harness::protect::{Protect, Protected};
use crate::harness::rest_server::RestServer;

/// The sparse file's apparent size: far more than a debug build chunks in a minute.
const BIG: u64 = 64 << 30;

/// A second backup's file: a few seconds of chunking, several samples.
const SMALLER: u64 = 2 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backup_shows_growing_progress_in_the_api_and_the_portal() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-progress-").tempdir()?;
    let pg = PgCluster::start()?;
    let pki = TestPki::new()?;
    let mut rest = RestServer::start(&pki.ca, &[])?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "progress")?;
    let admin = ctrl.admin().await?;

    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("a.txt"), "a small file first\n")?;
    std::fs::File::create(source.join("big.img"))?.set_len(BIG)?;
    let Protected { mut agent, machine, policy } =
        Protect::new(&admin, &mut rest, &ctrl.grpc_url(), &tmp.path().join("agent"), &source).run().await?;
    // Samples every 2 s instead of 15, so a test sees several.
    agent.stop()?;
    agent.start_with_env(&[], &[("COFRE_AGENT_PROGRESS_SECONDS", "2")])?;

    let job = admin.run_now(machine, policy, None).await?;
    let started = Instant::now();
    // The first sample.
    let first = wait_until_async(
        "the job reports progress",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let admin = admin.clone();
            async move {
                let j = admin.get_job(job.id).await.map_err(|e| e.to_string())?;
                match j.progress {
                    Some(p) if j.state == "running" && p.bytes_done > 0 => Ok(p),
                    _ => Err(format!("{} without progress yet", j.state)),
                }
            }
        },
    )
    .await?;
    eprintln!("first progress after {:?}: {first:?}", started.elapsed());

    // Growing, with its totals once counted, and still running 20 s into the backup.
    let mut last = first.clone();
    let mut samples = 1;
    while started.elapsed() < Duration::from_secs(22) || samples < 3 || last.bytes_total.is_none() {
        ensure!(started.elapsed() < Duration::from_secs(120), "no growing progress: {last:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let j = admin.get_job(job.id).await?;
        ensure!(j.state == "running", "the backup ended before it could be watched: {j:?}\n{}", agent.log());
        let p = j.progress.context("a running job keeps its progress")?;
        if p.at > last.at {
            ensure!(
                p.bytes_done >= last.bytes_done && p.files_done >= last.files_done,
                "{last:?} then {p:?}"
            );
            samples += 1;
            last = p;
        }
    }
    ensure!(last.bytes_done > first.bytes_done, "bytes grew: {first:?} then {last:?}");
    assert_eq!(
        (last.files_total, last.bytes_total),
        (Some(2), Some(BIG + 19)),
        "the scan's totals: {last:?}"
    );
    ensure!(last.percent().is_some_and(|p| p < 100), "{last:?}");
    eprintln!("{samples} samples in {:?}; the last: {last:?}", started.elapsed());

    // The portal's overview shows it: a bar and its words.
    let b = Browser::start(tmp.path(), "en-US").await?;
    b.goto(&format!("{}/login", ctrl.api_url())).await?;
    b.fill("#username", "admin").await?;
    b.fill("#password", ADMIN_PASSWORD).await?;
    b.click("form[action='/login'] button[type=submit]").await?;
    ensure!(b.path().await? == "/", "after login the overview opens");
    ensure!(b.has("#running progress[max='100'][value]").await?, "{}", b.source().await?);
    let words = b.text("#running .progress-text").await?;
    ensure!(words.contains(" of 64.0 GiB, ") && words.ends_with('%'), "{words}");
    let label = b
        .eval("return document.querySelector('#running progress').getAttribute('aria-label')", vec![])
        .await?;
    assert_eq!(label.as_str(), Some(words.as_str()), "the bar says the same in words");
    let axe = std::fs::read_to_string(crate::portal::guards::axe_path()?)?;
    let violations = crate::portal::guards::axe_violations(&b, &axe).await?;
    assert!(violations.is_empty(), "accessibility of the overview with a running backup: {violations:?}");
    b.goto(&format!("{}/jobs?state=running", ctrl.api_url())).await?;
    ensure!(b.has("table.jobs progress").await?, "the jobs list shows it too");
    b.close().await?;

    // Cancelled: the job ends, its progress goes, and no progress was ever spooled.
    admin.cancel_job(job.id).await?;
    let done = admin.wait_for_job(job.id, Duration::from_secs(60)).await?;
    assert_eq!((done.state.as_str(), done.progress), ("cancelled", None), "{}", agent.log());
    let spooled = std::fs::read_dir(agent.state_dir.join("spool"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for file in spooled {
        let raw = std::fs::read(&file)?;
        let ev = <cofre_proto::agent::v1::JobEvent as prost::Message>::decode(raw.as_slice())?;
        ensure!(
            !matches!(ev.kind, Some(cofre_proto::agent::v1::job_event::Kind::Progress(_))),
            "progress spooled: {file:?}"
        );
    }

    // A backup that ends well after several progress lines: its result still comes through
    // the child's stdout after them, and its progress goes with it.
    std::fs::File::options().write(true).open(source.join("big.img"))?.set_len(SMALLER)?;
    let job = admin.run_now(machine, policy, None).await?;
    let mut seen = 0;
    let done = loop {
        let j = admin.get_job(job.id).await?;
        if j.is_final() {
            break j;
        }
        seen += usize::from(j.progress.is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!((done.state.as_str(), &done.progress), ("succeeded", &None), "{done:?}\n{}", agent.log());
    let stat = |k: &str| done.stats.as_ref().and_then(|s| s[k].as_u64());
    assert_eq!((stat("files_processed"), stat("bytes_processed")), (Some(2), Some(SMALLER + 19)), "{done:?}");
    ensure!(seen > 0, "progress was shown while it ran");
    agent.stop()?;
    Ok(())
}
