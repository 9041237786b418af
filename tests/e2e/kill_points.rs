//! The fault matrix's "kill -9 of the agent at 10 seeded points of a backup" (#13): one
//! controller, one REST server, one agent and one restic repository; ten backups, each cut
//! short by a SIGKILL of the agent's process group (the agent and its backup child) at a
//! point defined by what has happened, seen from outside: the job's running marker and spool
//! in the agent's state directory, objects appearing in the REST server's repository
//! directory, and two gate hooks that hold a job just before its backup and just after its
//! snapshot was saved. Which points, their parameters and their order come from a fixed seed
//! (`COFRE_KILL_SEED` overrides it, to explore).
//!
//! After each kill: `restic check` is clean on the repository as the crash left it; the agent
//! restarts; the cut job gets exactly one result (`interrupted`; its real outcome when that was
//! already spooled; or, when its snapshot was saved but its result not yet spooled, a success
//! with a warning naming the snapshot, which the agent finds again by the job's
//! `cofre-job:<id>` tag); the next run succeeds; and over the whole run no result is lost, none
//! is doubled and every snapshot in the repository is recorded (jobs, results and snapshots
//! counted in the controller's database and compared with what restic lists).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cofre_client::Client;
use cofre_proto::agent::v1 as pb;
use prost::Message;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use uuid::Uuid;

use crate::harness::cofre::{Agent, Controller};
use crate::harness::gate::Gates;
use crate::harness::pg::PgCluster;
use crate::harness::pki::TestPki;
use crate::harness::procs::wait_until_async;
use crate::harness::protect::{Protect, plan_repository_path, plan_restic};
use crate::harness::rest_server::RestServer;
use crate::harness::restic::Restic;

/// The seed the points are drawn from unless `COFRE_KILL_SEED` says otherwise.
const SEED: u64 = 13_0013;

/// New random data per round: 6 files of 8 MiB, about three 16 MiB data packs.
const ROUND_FILES: usize = 6;
const ROUND_FILE_MIB: usize = 8;

/// Where a backup is cut short.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    /// The job started (marker written, started event spooled) and its before-hook runs:
    /// nothing is in the repository yet.
    BeforeHook,
    /// The job's running marker has just appeared (the backup child is starting).
    Marker,
    /// The backup's restic lock is in the repository (the child recorded its id).
    LockTaken,
    /// `n` new data packs are in the repository.
    Packs(usize),
    /// A new index file is in the repository.
    Index,
    /// A fixed time after the running marker appeared.
    Elapsed(Duration),
    /// The snapshot is saved and the after-hook runs: the result is not spooled yet. The agent
    /// recovers the result from the snapshot's `cofre-job:<id>` tag at its restart.
    AfterHook,
    /// The result is spooled but the controller (stopped with SIGSTOP) has not acknowledged it.
    SpooledUndelivered,
    /// As `SpooledUndelivered`, with the job's running marker still there: the state a kill
    /// between writing the result and removing the marker leaves (the marker is put back).
    SpooledMarkerKept,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::BeforeHook => write!(f, "in the before-hook"),
            Point::Marker => write!(f, "running marker written"),
            Point::LockTaken => write!(f, "repository lock taken"),
            Point::Packs(n) => write!(f, "{n} data pack(s) uploaded"),
            Point::Index => write!(f, "index uploaded"),
            Point::Elapsed(d) => write!(f, "{} ms after the marker", d.as_millis()),
            Point::AfterHook => write!(f, "snapshot saved, in the after-hook"),
            Point::SpooledUndelivered => write!(f, "result spooled, not acknowledged"),
            Point::SpooledMarkerKept => write!(f, "result spooled, marker still there"),
        }
    }
}

/// The ten points for `seed`: every kind once (the second pack count, the elapsed offset and
/// the order drawn from the seed).
fn points(seed: u64) -> Vec<Point> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut points = vec![
        Point::BeforeHook,
        Point::Marker,
        Point::LockTaken,
        Point::Packs(1),
        Point::Packs(rng.gen_range(2..=3)),
        Point::Index,
        Point::Elapsed(Duration::from_millis(rng.gen_range(100..1500))),
        Point::AfterHook,
        Point::SpooledUndelivered,
        Point::SpooledMarkerKept,
    ];
    points.shuffle(&mut rng);
    points
}

/// Object counts in the restic repository's directory on the REST server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Objects {
    data: usize,
    index: usize,
    snapshots: usize,
    locks: usize,
}

impl Objects {
    fn of(repo: &Path) -> Objects {
        Objects {
            data: count_files(&repo.join("data")),
            index: count_files(&repo.join("index")),
            snapshots: count_files(&repo.join("snapshots")),
            locks: count_files(&repo.join("locks")),
        }
    }
}

impl std::fmt::Display for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} data, {} index, {} snapshots, {} locks",
            self.data, self.index, self.snapshots, self.locks
        )
    }
}

/// What the engine logs once it holds a repository lock (its upload answered, its recheck done).
const LOCK_TAKEN: &str = "took the repository lock";

/// Regular files below `dir` (restic's data directory has one level of subdirectories).
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Polls `probe` every 2 ms (blocking: the kill must follow the observation closely).
fn poll(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<String>) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Some(seen) = probe() {
            return Ok(seen);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes `n` files of `mib` MiB of incompressible data drawn from `seed`.
fn write_random_files(dir: &Path, n: usize, mib: usize, seed: u64) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
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

/// Whether the agent's spool holds the finished event of `job`.
fn result_spooled(agent: &Agent, job: Uuid) -> bool {
    let Ok(rd) = std::fs::read_dir(agent.state_dir.join("spool")) else { return false };
    rd.filter_map(|e| e.ok()).any(|e| {
        std::fs::read(e.path()).ok().and_then(|raw| pb::JobEvent::decode(raw.as_slice()).ok()).is_some_and(
            |ev| ev.job_id == job.to_string() && matches!(ev.kind, Some(pb::job_event::Kind::Finished(_))),
        )
    })
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), sig)
        .with_context(|| format!("sending {sig} to {pid}"))
}

/// Everything the run shares.
struct Rig {
    tmp: tempfile::TempDir,
    pg: PgCluster,
    _pki: TestPki,
    _rest: RestServer,
    ctrl: Controller,
    admin: Client,
    agent: Agent,
    machine: Uuid,
    policy: Uuid,
    gates: Gates,
    /// The restic repository's directory on the REST server.
    repo_dir: PathBuf,
    restic: Restic,
}

impl Rig {
    async fn start() -> Result<Rig> {
        let tmp = tempfile::Builder::new().prefix("cofre-e2e-killpoints-").tempdir()?;
        let pg = PgCluster::start()?;
        let pki = TestPki::new()?;
        let mut rest = RestServer::start(&pki.ca, &[])?;
        let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "killpoints")?;
        let admin = ctrl.admin().await?;

        let gates = Gates::new(tmp.path())?;

        let source = tmp.path().join("source");
        std::fs::create_dir_all(&source)?;
        let p = Protect::new(&admin, &mut rest, &ctrl.grpc_url(), &tmp.path().join("agent"), &source)
            .named("kill-points")
            .hooks(gates.hooks(), gates.hook_dir())
            .run()
            .await?;

        let plan = p.agent.stored_plan()?;
        let repo_dir = rest.data_dir().join(plan_repository_path(&plan)?);
        ensure!(repo_dir.join("config").is_file(), "no repository at {}", repo_dir.display());
        let restic = plan_restic(&rest, &plan, &tmp.path().join("restic-cache"))?;
        Ok(Rig {
            tmp,
            pg,
            _pki: pki,
            _rest: rest,
            ctrl,
            admin,
            agent: p.agent,
            machine: p.machine,
            policy: p.policy,
            gates,
            repo_dir,
            restic,
        })
    }

    fn source(&self) -> PathBuf {
        self.tmp.path().join("source")
    }

    fn sql(&self, query: &str) -> Result<String> {
        Ok(self.pg.psql(&self.ctrl.db.name, query)?.trim().to_string())
    }

    fn count(&self, query: &str) -> Result<i64> {
        self.sql(query)?.parse::<i64>().with_context(|| format!("a count from {query}"))
    }

    fn restart_agent(&mut self) -> Result<()> {
        let hooks = self.gates.hook_dir().to_str().context("utf-8")?.to_string();
        self.agent.start_with(&["--hook-dir", &hooks])
    }

    /// The job that reached gate `name`, if any.
    fn reached(&self, name: &str) -> Option<String> {
        self.gates.reached(name)
    }

    fn hold(&self, name: &str, on: bool) -> Result<()> {
        self.gates.hold(name, on)
    }

    /// Waits until `job` has its (one) result in the database and returns the job.
    async fn settled(&self, job: Uuid, timeout: Duration) -> Result<cofre_client::Job> {
        // Final first (Hello may mark it interrupted before its result arrives), then the result.
        self.admin.wait_for_job(job, timeout).await?;
        let query = format!("select count(*) from job_results where job_id = '{job}'");
        wait_until_async("the job's result is stored", timeout, Duration::from_millis(100), || {
            let n = self.count(&query);
            async move {
                match n {
                    Ok(1) => Ok(()),
                    Ok(n) => Err(format!("{n} results")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await?;
        // The job as the API shows it once the result is in.
        Ok(self.admin.get_job(job).await?)
    }
}

/// What one point did, for the report.
struct Outcome {
    point: Point,
    seen: String,
    at_kill: Objects,
    job_state: String,
    /// The result was recovered from the snapshot's job tag at the restart.
    recovered: bool,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_ten_seeded_points_of_a_backup_loses_and_doubles_nothing() -> Result<()> {
    let seed = std::env::var("COFRE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let points = points(seed);
    eprintln!(
        "kill points (seed {seed}): {}",
        points.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    );
    let started = Instant::now();
    let mut rig = Rig::start().await?;
    eprintln!("set-up: {:.1?}", started.elapsed());
    let mut outcomes = Vec::new();

    for (round, point) in points.iter().copied().enumerate() {
        let t0 = Instant::now();
        let source = rig.source().join(format!("round-{round}"));
        write_random_files(&source, ROUND_FILES, ROUND_FILE_MIB, seed ^ (round as u64 + 1))?;
        let before = Objects::of(&rig.repo_dir);
        let gate = match point {
            Point::BeforeHook => Some("gate-before"),
            Point::AfterHook | Point::SpooledUndelivered | Point::SpooledMarkerKept => Some("gate-after"),
            _ => None,
        };
        if let Some(g) = gate {
            rig.hold(g, true)?;
        }

        let log_before = rig.agent.log();
        let job = rig.admin.run_now(rig.machine, rig.policy, None).await?;
        let marker = rig.agent.state_dir.join("running").join(format!("{}.json", job.id));
        let job_id = job.id.to_string();
        let repo_dir = rig.repo_dir.clone();
        let timeout = Duration::from_secs(120);
        let mut marker_copy = None;
        let seen = match point {
            Point::BeforeHook | Point::AfterHook => {
                let g = gate.context("gate")?;
                poll(&format!("{g} reached"), timeout, || {
                    (rig.reached(g)? == job_id).then(|| format!("{g} reached"))
                })?
            }
            Point::Marker => {
                poll("the running marker", timeout, || marker.exists().then(|| "marker".into()))?
            }
            Point::LockTaken => {
                // The lock is stored once the server has answered its upload; the engine says
                // so after its recheck ("took the repository lock"). A file merely seen in
                // `locks/` may be an upload the server drops when the connection dies.
                let taken = |log: &str| log.matches(LOCK_TAKEN).count();
                let seen = taken(&log_before);
                poll("the lock taken", timeout, || {
                    (taken(&rig.agent.log()) > seen).then(|| "lock taken".into())
                })?
            }
            Point::Packs(n) => poll(&format!("{n} new packs"), timeout, || {
                let now = Objects::of(&repo_dir).data;
                (now >= before.data + n).then(|| format!("{} new packs", now - before.data))
            })?,
            Point::Index => poll("a new index", timeout, || {
                (Objects::of(&repo_dir).index > before.index).then(|| "index".into())
            })?,
            Point::Elapsed(d) => {
                poll("the running marker", timeout, || marker.exists().then(String::new))?;
                std::thread::sleep(d);
                format!("{} ms", d.as_millis())
            }
            Point::SpooledUndelivered | Point::SpooledMarkerKept => {
                poll("gate-after reached", timeout, || {
                    (rig.reached("gate-after")? == job_id).then(String::new)
                })?;
                marker_copy =
                    Some(std::fs::read(&marker).context("the running marker during the after-hook")?);
                // The controller stops answering (frozen, not dead); the hook lets go; the result
                // is spooled and stays there.
                signal(rig.ctrl.pid().context("controller pid")?, nix::sys::signal::Signal::SIGSTOP)?;
                rig.hold("gate-after", false)?;
                poll("the result spooled", timeout, || {
                    (!marker.exists() && result_spooled(&rig.agent, job.id)).then(|| "result spooled".into())
                })?
            }
        };
        rig.agent.kill9()?;
        let at_kill = Objects::of(&rig.repo_dir);
        if let Some(g) = gate {
            rig.hold(g, false)?;
        }
        if matches!(point, Point::SpooledUndelivered | Point::SpooledMarkerKept) {
            signal(rig.ctrl.pid().context("controller pid")?, nix::sys::signal::Signal::SIGCONT)?;
        }
        if point == Point::SpooledMarkerKept {
            std::fs::write(&marker, marker_copy.as_deref().context("marker copy")?)?;
        }
        let snapshot_saved = at_kill.snapshots > before.snapshots;
        if point == Point::LockTaken {
            ensure!(at_kill.locks > before.locks, "{point}: the lock is in the repository ({at_kill})");
        }

        // restic, on the repository exactly as the crash left it (the killed backup's lock may
        // still be there: the agent removes it when it restarts, so no lock is taken here).
        rig.restic
            .run(["check", "--no-lock"])
            .with_context(|| format!("restic check after a kill at {point}"))?;

        // What the crash left: was the result already out (spooled, or stored by the controller;
        // asked after the check, so a delivery in flight at the kill has been committed)?
        let result_out = result_spooled(&rig.agent, job.id)
            || rig.count(&format!("select count(*) from job_results where job_id = '{}'", job.id))? > 0;

        rig.restart_agent()?;
        let done = rig.settled(job.id, Duration::from_secs(120)).await?;
        let recovered = !result_out && snapshot_saved;
        if point == Point::AfterHook {
            ensure!(
                recovered,
                "{point}: the snapshot is saved and the result not spooled at the kill ({at_kill})"
            );
        }
        if recovered {
            // The agent found the job's snapshot by its tag and reported it, saying so.
            ensure!(
                done.state == "warning",
                "{point}: a job whose snapshot was saved is a success (with a warning), not interrupted: {done:?}\n{}",
                rig.agent.log()
            );
            let tag = format!("cofre-job:{}", job.id);
            let tagged = rig.restic.run(["snapshots", "--json", "--tag", tag.as_str()])?;
            let tagged: Vec<serde_json::Value> = serde_json::from_slice(&tagged.stdout)?;
            ensure!(tagged.len() == 1, "{point}: restic lists one snapshot tagged with the job: {tagged:?}");
            ensure!(
                done.snapshot_id.as_deref() == tagged[0]["id"].as_str(),
                "{point}: the result names the job's snapshot: {done:?} vs {tagged:?}"
            );
            let warnings = done.warnings.clone().unwrap_or_default();
            ensure!(
                warnings.iter().any(|w| w.starts_with("recovered after the agent stopped")),
                "{point}: the result says it was recovered: {warnings:?}"
            );
            ensure!(done.stats.is_some(), "{point}: the snapshot's counts are reported: {done:?}");
            let recorded = rig.count(&format!(
                "select count(*) from snapshots where job_id = '{}' and snapshot_id = '{}'",
                job.id,
                tagged[0]["id"].as_str().unwrap_or_default()
            ))?;
            ensure!(recorded == 1, "{point}: the controller records the job's snapshot once ({recorded})");
        } else if result_out {
            ensure!(
                matches!(done.state.as_str(), "succeeded" | "warning"),
                "{point}: a spooled result is delivered as it was: {done:?}\n{}",
                rig.agent.log()
            );
            ensure!(done.snapshot_id.is_some(), "{point}: the delivered result names its snapshot: {done:?}");
        } else {
            ensure!(done.state == "interrupted", "{point}: the cut job is reported interrupted: {done:?}");
            ensure!(
                done.error_message.as_deref().unwrap_or_default().contains("stopped"),
                "{point}: {done:?}"
            );
        }
        ensure!(!marker.exists(), "{point}: the marker is gone once the job is reported");
        ensure!(
            Objects::of(&rig.repo_dir).locks == 0,
            "{point}: the agent removed the killed backup's lock at its restart ({})\n{}",
            Objects::of(&rig.repo_dir),
            rig.agent.log()
        );

        // The next run succeeds.
        let next = rig.admin.run_now(rig.machine, rig.policy, None).await?;
        let next = rig.settled(next.id, Duration::from_secs(300)).await?;
        ensure!(next.state == "succeeded", "{point}: the next run: {next:?}\n{}", rig.agent.log());
        std::fs::remove_dir_all(&source)?;

        // Nothing lost, nothing doubled: every job of this machine final with exactly one
        // result; one recorded snapshot per successful job; every recorded snapshot in the
        // repository, and every snapshot in the repository recorded.
        let m = rig.machine;
        let jobs = rig.count(&format!("select count(*) from jobs where machine_id = '{m}'"))?;
        let expected_jobs = 2 * (round as i64 + 1);
        ensure!(jobs == expected_jobs, "{point}: {jobs} jobs, expected {expected_jobs}");
        let results = rig.count(&format!(
            "select count(*) from job_results r join jobs j on j.id = r.job_id where j.machine_id = '{m}'"
        ))?;
        ensure!(results == jobs, "{point}: {results} results for {jobs} jobs");
        let mismatched = rig.sql(&format!(
            "select coalesce(string_agg(j.id || ' ' || j.state || '/' || r.outcome, ', '), '') \
             from jobs j join job_results r on r.job_id = j.id where j.machine_id = '{m}' \
             and j.state <> r.outcome"
        ))?;
        ensure!(mismatched.is_empty(), "{point}: jobs whose state contradicts their result: {mismatched}");
        let good = rig.count(&format!(
            "select count(*) from job_results r join jobs j on j.id = r.job_id \
             where j.machine_id = '{m}' and r.outcome in ('succeeded', 'warning')"
        ))?;
        let recorded: Vec<String> = rig
            .sql(&format!("select snapshot_id from snapshots where machine_id = '{m}' order by snapshot_id"))?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        ensure!(
            recorded.len() as i64 == good,
            "{point}: {} snapshots recorded for {good} good results",
            recorded.len()
        );
        let doubled = rig.count(&format!(
            "select count(*) from (select job_id from snapshots where machine_id = '{m}' group by job_id having count(*) > 1) d"
        ))?;
        ensure!(doubled == 0, "{point}: a job with two snapshots");
        let in_restic: Vec<String> = rig
            .restic
            .snapshots_json()?
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect();
        for id in &recorded {
            ensure!(in_restic.contains(id), "{point}: recorded snapshot {id} is not in the repository");
        }
        let unrecorded: Vec<&String> = in_restic.iter().filter(|id| !recorded.contains(id)).collect();
        ensure!(
            unrecorded.is_empty(),
            "{point}: snapshots in the repository that no result names: {unrecorded:?}"
        );

        let took = t0.elapsed();
        eprintln!(
            "point {}: {point}: saw {seen}; at the kill {at_kill} (before {before}); job {}{}; {:.1?}",
            round + 1,
            done.state,
            if recovered { " (its snapshot found by its job tag at the restart)" } else { "" },
            took
        );
        outcomes.push(Outcome { point, seen, at_kill, job_state: done.state, recovered, took });
    }

    let t = Instant::now();
    rig.restic.check(true).context("restic check --read-data at the end")?;
    eprintln!("restic check --read-data at the end: {:.1?}", t.elapsed());
    eprintln!("| # | point | seen | repository at the kill | job | took |");
    for (i, o) in outcomes.iter().enumerate() {
        eprintln!(
            "| {} | {} | {} | {} | {}{} | {:.1?} |",
            i + 1,
            o.point,
            o.seen,
            o.at_kill,
            o.job_state,
            if o.recovered { " (recovered from its snapshot)" } else { "" },
            o.took
        );
    }
    eprintln!("total: {:.1?}", started.elapsed());
    Ok(())
}
