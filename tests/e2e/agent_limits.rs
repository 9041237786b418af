//! What an agent's spool survives, with the real controller and agent processes: a result
//! larger than gRPC's default message limit (as an older agent spooled it) no longer blocks
//! every later result, and a machine awaiting approval keeps its results until it is approved
//! instead of writing them.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use cofre_client::NewEnrollmentToken;
use cofre_proto::agent::v1 as pb;
use prost::Message as _;
use uuid::Uuid;

use crate::harness::cofre::{Agent, Controller};
use crate::harness::pg::PgCluster;
use crate::harness::procs::wait_until_async;

/// Puts a job event in the agent's spool, as the agent writes it before sending.
fn spool(state_dir: &Path, ev: &pb::JobEvent) -> Result<()> {
    let dir = state_dir.join("spool");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{}.pb", ev.event_id)), ev.encode_to_vec())?;
    Ok(())
}

fn finished(warnings: Vec<String>, log: String) -> pb::JobEvent {
    pb::JobEvent {
        event_id: Uuid::now_v7().to_string(),
        job_id: Uuid::now_v7().to_string(),
        kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
            trigger: pb::TriggerKind::Schedule as i32,
            outcome: pb::JobOutcome::SucceededWithWarnings as i32,
            warnings,
            log,
            ..Default::default()
        })),
    }
}

async fn enrolled_agent(
    ctrl: &Controller,
    admin: &cofre_client::Client,
    dir: &Path,
    approval: bool,
) -> Result<(Agent, Uuid)> {
    let token = admin
        .create_enrollment_token(&NewEnrollmentToken { requires_approval: approval, ..Default::default() })
        .await?;
    let agent = Agent::new(dir);
    let out = agent.enroll(&ctrl.grpc_url(), &token.token)?;
    anyhow::ensure!(out.status.success(), "enroll: {out:?}");
    let machine = agent.machine_id()?;
    Ok((agent, machine))
}

async fn wait_spool_empty(agent: &Agent, what: &str, timeout: Duration) -> Result<()> {
    wait_until_async(what, timeout, Duration::from_millis(200), || {
        let n = agent.spooled();
        async move { if n == 0 { Ok(()) } else { Err(format!("{n} events spooled")) } }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_and_one_awaiting_approval_never_block_a_spool() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-agent-limits-").tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "agent_limits")?;
    let admin = ctrl.admin().await?;
    let db = ctrl.db.name.clone();
    let sql = |q: &str| -> Result<String> { Ok(pg.psql(&db, q)?.trim().to_string()) };

    // An older agent spooled a 6 MiB result (3,000 warnings of 2 KiB and a log with a NUL
    // byte) before a small one: the first went over the controller's message limit, ended the
    // session, and came first again after every reconnect.
    let (mut agent, machine) = enrolled_agent(&ctrl, &admin, &tmp.path().join("a"), false).await?;
    let warnings = (0..3_000).map(|i| format!("/srv/{i:05}: {}", "x".repeat(2_048))).collect();
    let big = finished(warnings, "hook said \0 and more\n".repeat(10_000));
    spool(&agent.state_dir, &big)?;
    let small = finished(vec![], String::new());
    spool(&agent.state_dir, &small)?;
    agent.start()?;
    wait_spool_empty(&agent, "both results are delivered", Duration::from_secs(60)).await?;
    let stored = sql(&format!(
        "select count(*), max(coalesce(array_length(warnings, 1), 0)) from job_results r join jobs j on j.id = r.job_id
         where j.machine_id = '{machine}'"
    ))?;
    assert_eq!(stored, "2|1000", "both stored; the big one with 999 warnings and the count of the rest");
    let last = sql(&format!("select warnings[1000] from job_results where event_id = '{}'", big.event_id))?;
    assert_eq!(last, "… and 2001 more warnings, not listed");
    agent.stop()?;

    // A machine awaiting approval: its result is refused (retry-after 60 s), stays spooled and
    // writes nothing; once approved, the agent delivers it on its next attempt.
    let (mut pending, machine) = enrolled_agent(&ctrl, &admin, &tmp.path().join("b"), true).await?;
    spool(&pending.state_dir, &finished(vec!["one".into()], String::new()))?;
    pending.start()?;
    let p = &pending;
    wait_until_async(
        "the agent is told to retry later",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let log = p.log();
            async move { if log.contains("awaits an administrator") { Ok(()) } else { Err("not yet") } }
        },
    )
    .await?;
    assert_eq!(pending.spooled(), 1, "the result stays in the spool");
    let written = sql(&format!(
        "select (select count(*) from jobs where machine_id = '{machine}')
              + (select count(*) from audit_events where actor = 'machine:{machine}' and action <> 'machine.enroll')"
    ))?;
    assert_eq!(written, "0", "a pending machine writes nothing");
    admin.approve_machine(machine).await?;
    wait_spool_empty(&pending, "the approved machine's result is delivered", Duration::from_secs(150))
        .await?;
    let stored = sql(&format!(
        "select count(*) from job_results r join jobs j on j.id = r.job_id where j.machine_id = '{machine}'"
    ))?;
    assert_eq!(stored, "1");
    pending.stop()?;
    Ok(())
}
