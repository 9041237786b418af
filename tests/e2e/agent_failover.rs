//! The fault matrix's "agents with several controller addresses" (#13): an agent enrolled with
//! both replicas' addresses (`--controller A --controller B`) is backing up through the one it
//! is connected to when that replica is killed with SIGKILL; it moves to the other within its
//! reconnect backoff, its result is stored exactly once and its schedule goes on through the
//! survivor.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use uuid::Uuid;

use crate::harness::cofre::{Agent, Controller};
use crate::harness::pg::PgCluster;
use crate::harness::pki::TestPki;
use crate::harness::procs::{wait_until_async, workspace_bin};
use crate::harness::protect::Protect;
use crate::harness::rest_server::RestServer;

/// `n` files of `mib` MiB of incompressible data: a backup that lasts a few seconds.
pub(crate) fn write_random_files(dir: &Path, n: usize, mib: usize) -> Result<()> {
    use rand::{RngCore, SeedableRng};
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..n {
        let mut f = std::fs::File::create(dir.join(format!("random-{i}.bin")))?;
        for _ in 0..mib {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf)?;
        }
    }
    Ok(())
}

/// The agent's log without terminal colour codes.
pub(crate) fn plain_log(agent: &Agent) -> String {
    let log = agent.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The controller URL named by each "connected to the controller" line, in order.
/// What the agent logs each time a session ends and it waits before the next try.
const RECONNECT: &str = "reconnecting to the controller later";

fn connections(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("connected to the controller"))
        .filter_map(|l| l.split("controller=").nth(1)?.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Runs `cofre-agent` with `args` against the agent's state directory.
pub(crate) fn agent_cmd(agent: &Agent, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(workspace_bin("cofre-agent"))
        .arg("--state-dir")
        .arg(&agent.state_dir)
        .args(args)
        .output()?)
}

fn count(pg: &PgCluster, db: &str, sql: &str) -> Result<i64> {
    Ok(pg.psql(db, sql)?.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moves_to_the_other_replica_within_its_backoff_and_loses_nothing() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-failover-").tempdir()?;
    let pg = PgCluster::start()?;
    let pki = TestPki::new()?;
    let mut rest = RestServer::start(&pki.ca, &[])?;
    let mut a = Controller::start(&pg, &tmp.path().join("a"), "failover")?;
    let mut b = a.replica(&tmp.path().join("b"))?;
    let admin = a.admin().await?;
    let source = tmp.path().join("bulk");
    write_random_files(&source, 3, 64)?;
    // Enrolled with both addresses. Every minute (the shortest interval): a new policy is due
    // at once, so the first backup starts as soon as the plan arrives and the next one a minute
    // later.
    let p = Protect::new(&admin, &mut rest, &a.grpc_url(), &tmp.path().join("agent"), &source)
        .controller(&b.grpc_url())
        .named("every-minute")
        .every(60)
        .run()
        .await?;
    let (mut agent, machine) = (p.agent, p.machine);

    // The first scheduled backup is running.
    let first: Uuid = wait_until_async(
        "the first scheduled backup runs",
        Duration::from_secs(90),
        Duration::from_millis(50),
        || {
            let admin = admin.clone();
            async move {
                let jobs = admin.list_jobs(machine).await.map_err(|e| e.to_string())?;
                match jobs.iter().find(|j| j.state == "running") {
                    Some(j) => Ok(j.id),
                    None => Err(format!("{:?}", jobs.iter().map(|j| &j.state).collect::<Vec<_>>())),
                }
            }
        },
    )
    .await?;

    // Kill -9 the replica the agent is connected to (the first address: it answered).
    let before_log = plain_log(&agent);
    let before = connections(&before_log);
    let reconnects_before = before_log.matches(RECONNECT).count();
    let connected = before.last().context("the agent logged its connection")?.clone();
    assert_eq!(connected, a.grpc_url(), "the first address answers first");
    assert_eq!(count(&pg, &a.db.name, "select count(*) from job_results")?, 0);
    a.kill9()?;
    let killed = Instant::now();

    let ag = &agent;
    let (moved_after, log) = wait_until_async(
        "the agent connects to the surviving replica",
        Duration::from_secs(90),
        Duration::from_millis(20),
        || {
            let log = plain_log(ag);
            let now = connections(&log);
            let b_url = b.grpc_url();
            let seen = before.len();
            async move {
                if now.len() > seen && now.last() == Some(&b_url) {
                    Ok((killed.elapsed(), log))
                } else {
                    Err(format!("connections: {now:?}"))
                }
            }
        },
    )
    .await?;
    // The delay it chose after the session ended; the move happened at the first try after it
    // (the dead address refused at once, the survivor answered): one reconnect delay, not more.
    // Counted, not timed: how long a handshake takes on a loaded machine is not the property.
    let waited_ms: u64 = log
        .lines()
        .rfind(|l| l.contains(RECONNECT))
        .and_then(|l| l.split("retry_in_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .context("the agent logged its reconnect delay")?;
    println!(
        "failover: moved to the surviving replica {} ms after the kill (its backoff: {waited_ms} ms)",
        moved_after.as_millis()
    );
    let delays = log.matches(RECONNECT).count() - reconnects_before;
    assert_eq!(delays, 1, "moved after {delays} reconnect delays (the last {waited_ms} ms)\n{log}");

    // The backup finishes and its result reaches the survivor, once.
    let admin_b = b.admin().await?;
    let done = admin_b.wait_for_job(first, Duration::from_secs(600)).await?;
    assert_eq!(done.state, "succeeded", "{done:?}\n{}", agent.log());
    let db = b.db.name.clone();
    assert_eq!(count(&pg, &db, &format!("select count(*) from job_results where job_id = '{first}'"))?, 1);

    // Its schedule goes on through the survivor: the next scheduled backup a minute later.
    let second = wait_until_async(
        "the next scheduled backup is stored through the survivor",
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            let admin = admin_b.clone();
            async move {
                let jobs = admin.list_jobs(machine).await.map_err(|e| e.to_string())?;
                match jobs.iter().find(|j| j.id != first && j.trigger == "schedule" && j.state == "succeeded")
                {
                    Some(j) => Ok(j.id),
                    None => {
                        Err(format!("{:?}", jobs.iter().map(|j| (&j.trigger, &j.state)).collect::<Vec<_>>()))
                    }
                }
            }
        },
    )
    .await?;
    assert_ne!(second, first);
    wait_until_async("the spool drains", Duration::from_secs(60), Duration::from_millis(100), || {
        let n = ag.spooled();
        async move { if n == 0 { Ok(()) } else { Err(format!("{n} spooled")) } }
    })
    .await?;
    agent.stop()?;
    // Nothing lost, nothing doubled: one result per finished backup, one snapshot per result.
    let of_machine = format!("(select id from jobs where machine_id = '{machine}' and kind = 'backup')");
    let results = count(&pg, &db, &format!("select count(*) from job_results where job_id in {of_machine}"))?;
    let distinct = count(
        &pg,
        &db,
        &format!("select count(distinct job_id) from job_results where job_id in {of_machine}"),
    )?;
    let jobs = count(
        &pg,
        &db,
        &format!(
            "select count(*) from jobs where machine_id = '{machine}' and kind = 'backup' and finished_at is not null"
        ),
    )?;
    let snapshots =
        count(&pg, &db, &format!("select count(*) from snapshots where machine_id = '{machine}'"))?;
    println!("failover: {jobs} backups finished, {results} results stored, {snapshots} snapshots");
    assert!(results >= 2, "{results} results");
    assert_eq!((results, distinct), (jobs, jobs), "one result per finished backup");
    assert_eq!(snapshots, results, "one snapshot per successful backup");

    // The agent remembers the address that answered and says so.
    let status = agent_cmd(&agent, &["status"])?;
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    let b_line = status.lines().find(|l| l.contains(&b.grpc_url())).unwrap_or_default();
    assert!(b_line.contains("answered last"), "{status}");
    if !status.contains(&a.grpc_url()) {
        bail!("status lists both addresses: {status}");
    }

    // The list is replaced on the enrolled agent (`set-controllers`): given only a new replica's
    // address, it connects there at its next start, as the same machine.
    let c = a.replica(&tmp.path().join("c"))?;
    let out = agent_cmd(&agent, &["set-controllers", "--controller", &c.grpc_url()])?;
    ensure!(out.status.success(), "set-controllers: {}", String::from_utf8_lossy(&out.stderr));
    let seen = connections(&plain_log(&agent)).len();
    agent.start()?;
    let ag = &agent;
    wait_until_async(
        "the agent connects to the new address",
        Duration::from_secs(90),
        Duration::from_millis(100),
        || {
            let now = connections(&plain_log(ag));
            let c_url = c.grpc_url();
            async move {
                match now.get(seen..) {
                    Some([first, ..]) if *first == c_url => Ok(()),
                    Some([first, ..]) => Err(format!("connected to {first} instead")),
                    _ => Err(format!("connections: {now:?}")),
                }
            }
        },
    )
    .await?;
    ensure!(agent.machine_id()? == machine, "the same machine");
    let status = agent_cmd(&agent, &["status"])?;
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    ensure!(
        status.contains(&c.grpc_url()) && !status.contains(&b.grpc_url()),
        "status lists only the new address: {status}"
    );
    agent.stop()?;
    b.stop()?;
    Ok(())
}
