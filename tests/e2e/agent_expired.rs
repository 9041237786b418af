//! The fault matrix's "agent away longer than its certificate lifetime" (#13): with 60-second
//! agent certificates, the controller is away (killed) until the agent's certificate has
//! expired. The agent keeps backing up from its stored plan and spooling; when the controller
//! is back it says it needs re-enrollment (log and `status`) instead of knocking with a dead
//! certificate; after `cofre-agent enroll --reenroll` with a new token it is the same machine,
//! with the same repository, and every spooled result is stored once.

use std::time::Duration;

use anyhow::{Context, Result};
use cofre_client::NewEnrollmentToken;

use crate::agent_failover::{agent_cmd, plain_log};
use crate::harness::cofre::{Agent, Controller};
use crate::harness::pg::PgCluster;
use crate::harness::pki::TestPki;
use crate::harness::procs::wait_until_async;
use crate::harness::protect::{Protect, plan_restic};
use crate::harness::rest_server::RestServer;

fn count(pg: &PgCluster, db: &str, sql: &str) -> Result<i64> {
    Ok(pg.psql(db, sql)?.trim().parse()?)
}

/// When the agent's certificate expires (Unix seconds), as `cofre-agent status` shows it.
fn not_after(agent: &Agent) -> Result<i64> {
    let status = String::from_utf8_lossy(&agent_cmd(agent, &["status"])?.stdout).to_string();
    let line =
        status.lines().find(|l| l.starts_with("certificate:")).context("status shows the certificate")?;
    let end = line.rsplit(' ').next().context("its end")?;
    Ok(chrono::DateTime::parse_from_rfc3339(end).with_context(|| line.to_string())?.timestamp())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_certificate_expired_away_backs_up_says_so_and_comes_back_as_itself() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-expired-").tempdir()?;
    let pg = PgCluster::start()?;
    let pki = TestPki::new()?;
    let mut rest = RestServer::start(&pki.ca, &[])?;
    let mut ctrl = Controller::start_with(
        &pg,
        &tmp.path().join("controller"),
        "expired",
        "[certificates]\nagent_lifetime_seconds = 60\n",
    )?;
    let admin = ctrl.admin().await?;
    let source = tmp.path().join("docs");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("contrato.txt"), "contrato de prestação de serviços")?;
    let p = Protect::new(&admin, &mut rest, &ctrl.grpc_url(), &tmp.path().join("agent"), &source)
        .named("every-minute")
        .every(60)
        .run()
        .await?;
    let (mut agent, machine) = (p.agent, p.machine);
    let plan_before = agent.stored_plan()?;
    let a = &agent;
    wait_until_async(
        "the first backup is stored",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let admin = admin.clone();
            async move {
                let jobs = admin.list_jobs(machine).await.map_err(|e| e.to_string())?;
                if jobs.iter().any(|j| j.state == "succeeded") { Ok(()) } else { Err(format!("{jobs:?}")) }
            }
        },
    )
    .await?;

    // The controller goes away for longer than the agent's certificate lives.
    ctrl.kill9()?;
    let expires = not_after(&agent)?;
    let restic = plan_restic(&rest, &plan_before, &tmp.path().join("cache"))?;
    let wait_expiry = u64::try_from(expires - chrono::Utc::now().timestamp()).unwrap_or(0) + 1;
    println!("expired: certificate expires in {wait_expiry} s");
    tokio::time::sleep(Duration::from_secs(wait_expiry)).await;
    let at_expiry = restic.snapshots_json()?.len();

    // It says so at once (not a backoff later), and keeps backing up.
    let said = wait_until_async(
        "the agent says it needs re-enrollment",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let log = plain_log(a);
            async move {
                match log.lines().find(|l| l.contains("needs re-enrollment")) {
                    Some(l) => Ok(l.to_string()),
                    None => Err("not yet"),
                }
            }
        },
    )
    .await?;
    println!("expired: the agent's log: {said}");
    assert!(said.contains("ERROR") && said.contains("cofre-agent enroll --reenroll"), "{said}");
    let status = String::from_utf8_lossy(&agent_cmd(&agent, &["status"])?.stdout).to_string();
    assert!(status.contains("EXPIRED") && status.contains("needs re-enrollment"), "{status}");
    let running = agent.state_dir.join("running");
    wait_until_async(
        "a backup after the expiry is spooled",
        Duration::from_secs(150),
        Duration::from_millis(250),
        || {
            let n = restic.snapshots_json().map(|s| s.len()).unwrap_or(0);
            let idle = std::fs::read_dir(&running).map(|rd| rd.count() == 0).unwrap_or(false);
            let spooled = a.spooled();
            async move {
                if n > at_expiry && idle && spooled > 0 {
                    Ok(())
                } else {
                    Err(format!("{n} snapshots ({at_expiry} at expiry), {spooled} spooled"))
                }
            }
        },
    )
    .await?;

    // The controller is back; the agent does not knock with its dead certificate.
    ctrl.restart()?;
    let connected = |log: &str| log.matches("connected to the controller").count();
    let before = connected(&plain_log(&agent));
    let spooled = agent.spooled();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(connected(&plain_log(&agent)), before, "no session with an expired certificate");
    assert_eq!(agent.spooled(), spooled, "results stay spooled");
    let stored_while_away = count(&pg, &ctrl.db.name, "select count(*) from job_results")?;

    // Re-enrollment with a new token, the agent running.
    let token2 =
        admin.create_enrollment_token(&NewEnrollmentToken { uses: Some(1), ..Default::default() }).await?;
    // Whoever has the certificate (it is not secret) but not the machine's key is refused, and
    // the token is not used up by it.
    let thief = Agent::new(&tmp.path().join("thief"));
    std::fs::create_dir_all(&thief.state_dir)?;
    for f in ["identity.json", "ca.pem"] {
        std::fs::copy(agent.state_dir.join(f), thief.state_dir.join(f))?;
    }
    let cert = agent.identity_pem()?;
    let cert = &cert[..cert.find("-----BEGIN PRIVATE KEY-----").context("identity holds a key")?];
    std::fs::write(
        thief.state_dir.join("identity.pem"),
        format!("{cert}{}", rcgen::KeyPair::generate()?.serialize_pem()),
    )?;
    let out = agent_cmd(&thief, &["enroll", "--reenroll", "--token", &token2.token])?;
    let refused = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && refused.contains("previous certificate's key"), "{refused}");
    let out = agent_cmd(&agent, &["enroll", "--reenroll", "--token", &token2.token])?;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "re-enroll: {printed}{}", String::from_utf8_lossy(&out.stderr));
    println!("expired: {}", printed.trim());
    assert!(printed.contains(&machine.to_string()), "{printed}");
    assert_eq!(agent.machine_id()?, machine, "the same machine");
    assert!(not_after(&agent)? > chrono::Utc::now().timestamp(), "a valid certificate");

    let reenrolled = std::time::Instant::now();
    wait_until_async("the spool drains", Duration::from_secs(60), Duration::from_millis(100), || {
        let n = a.spooled();
        async move { if n == 0 { Ok(()) } else { Err(format!("{n} spooled")) } }
    })
    .await?;
    println!("expired: spool drained {} ms after re-enrollment", reenrolled.elapsed().as_millis());

    let db = ctrl.db.name.clone();
    assert_eq!(count(&pg, &db, "select count(*) from machines")?, 1, "no second machine");
    assert_eq!(
        count(
            &pg,
            &db,
            &format!("select count(*) from machines where id = '{machine}' and status = 'active'")
        )?,
        1
    );
    let audited = count(&pg, &db, "select count(*) from audit_events where action = 'machine.reenroll'")?;
    assert_eq!(audited, 1);
    // Same repository, and every result stored once: one per finished backup, one snapshot each,
    // as many as restic holds.
    let plan_after = agent.stored_plan()?;
    assert_eq!(
        plan_after.repositories.iter().map(|r| &r.id).collect::<Vec<_>>(),
        plan_before.repositories.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    // Its schedule goes on: a backup started after the re-enrollment is stored.
    let since = chrono::Utc::now();
    wait_until_async(
        "a scheduled backup after re-enrollment",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            let admin = admin.clone();
            async move {
                let jobs = admin.list_jobs(machine).await.map_err(|e| e.to_string())?;
                let after = jobs.iter().any(|j| {
                    j.trigger == "schedule"
                        && j.state == "succeeded"
                        && j.started_at.is_some_and(|t| t > since)
                });
                if after { Ok(()) } else { Err(format!("{} jobs", jobs.len())) }
            }
        },
    )
    .await?;
    wait_until_async("the spool drains again", Duration::from_secs(60), Duration::from_millis(100), || {
        let n = a.spooled();
        async move { if n == 0 { Ok(()) } else { Err(format!("{n} spooled")) } }
    })
    .await?;
    agent.stop()?;
    let results = count(&pg, &db, "select count(*) from job_results")?;
    let distinct = count(&pg, &db, "select count(distinct job_id) from job_results")?;
    let jobs =
        count(&pg, &db, "select count(*) from jobs where kind = 'backup' and finished_at is not null")?;
    let snapshots = count(&pg, &db, "select count(*) from snapshots")?;
    let in_restic = i64::try_from(restic.snapshots_json()?.len())?;
    println!(
        "expired: {stored_while_away} result(s) stored before the outage, {results} after re-enrollment; {jobs} \
         backups, {snapshots} snapshots recorded, {in_restic} in restic"
    );
    assert!(results > stored_while_away + 1, "the offline backups arrive");
    assert_eq!((results, distinct), (jobs, jobs));
    assert_eq!((snapshots, in_restic), (results, results));
    ctrl.stop()?;
    Ok(())
}
