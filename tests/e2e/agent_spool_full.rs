//! The fault matrix's "agent spool disk full", with real processes: the agent's state
//! directory is a small tmpfs, filled to the last byte while the agent runs. A backup run then
//! still reaches the controller (its result held in the agent's memory and delivered from
//! there), the agent logs one clear error naming the spool directory and the space left, and
//! once space returns it writes and delivers normally again, without a restart.
//!
//! Needs the right to mount a tmpfs (root, as in CI's container); says SKIPPED otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;
use crate::harness::pki::TestPki;
use crate::harness::procs::wait_until_async;
use crate::harness::protect::{Protect, Protected};
use crate::harness::rest_server::RestServer;

/// A tmpfs mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "cofre-e2e-spool"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    /// Writes until the filesystem refuses: every later write fails with ENOSPC.
    fn fill(&self) -> Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join("filler"))?;
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        Ok(())
    }

    fn free(&self) -> Result<()> {
        Ok(std::fs::remove_file(self.0.join("filler"))?)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_loses_no_result_and_says_so_once() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-spool-full-").tempdir()?;
    let agent_dir = tmp.path().join("agent");
    let Some(disk) = Tmpfs::mount(&agent_dir.join("state"), "32m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return Ok(());
    };
    let pg = PgCluster::start()?;
    let pki = TestPki::new()?;
    let mut rest = RestServer::start(&pki.ca, &[])?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "spool_full")?;
    let admin = ctrl.admin().await?;
    let db = ctrl.db.name.clone();
    let sql = |q: &str| -> Result<String> { Ok(pg.psql(&db, q)?.trim().to_string()) };

    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("a.txt"), "some data to back up\n")?;
    // The agent's state, and so its spool, is on the small disk.
    let Protected { mut agent, machine, policy } =
        Protect::new(&admin, &mut rest, &ctrl.grpc_url(), &agent_dir, &source).run().await?;

    // The session's answer carries the controller's clock (the agent follows it when its own
    // is more than a minute off; here both are the same clock).
    let log = agent.log();
    assert!(log.contains("compared this machine's clock with the controller's"), "{log}");

    // The disk fills while the agent runs; a backup is asked for.
    disk.fill()?;
    let job = admin.run_now(machine, policy, None).await?;
    let done = admin.wait_for_job(job.id, Duration::from_secs(180)).await?;
    assert!(done.is_final(), "{done:?}");
    let stored = sql(&format!("select count(*) from job_results where job_id = '{}'", job.id))?;
    assert_eq!(stored, "1", "the result reached the controller from the agent's memory\n{}", agent.log());
    let log = agent.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("cannot write the result spool")).collect();
    assert_eq!(errors.len(), 1, "one error for the whole failure:\n{log}");
    let spool_dir = agent.state_dir.join("spool").display().to_string();
    assert!(
        errors[0].contains(&format!("cannot write the result spool in {spool_dir} (0 bytes free there)"))
            && errors[0].contains("No space left on device"),
        "{}",
        errors[0]
    );
    eprintln!("the agent said: {}", errors[0]);
    eprintln!("the job ended {} ({:?})", done.state, done.error_message);

    // Space returns: the next backup is written and delivered as usual, and the agent says so.
    disk.free()?;
    let again = admin.run_now(machine, policy, None).await?;
    let done = admin.wait_for_job(again.id, Duration::from_secs(180)).await?;
    assert_eq!(done.state, "succeeded", "{done:?}\n{}", agent.log());
    wait_until_async("the spool drains", Duration::from_secs(30), Duration::from_millis(100), || {
        let n = agent.spooled();
        async move { if n == 0 { Ok(()) } else { Err(format!("{n} spooled")) } }
    })
    .await?;
    let log = agent.log();
    assert!(log.contains("can be written again"), "{log}");
    assert_eq!(log.matches("cannot write the result spool").count(), 1, "no second error");
    agent.stop()?;
    Ok(())
}
