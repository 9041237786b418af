//! Maintenance owned by the controller, end to end on cofre-store with the restic CLI as the
//! judge: Cofre's forget keeps exactly what `restic forget` keeps (on snapshots made with
//! `restic backup --time` over two years), prune and `check --read-data` leave a clean
//! repository, agents cannot delete while the controller's maintenance identity can, planted
//! snapshots are reported and never counted, and a prune waits for a running backup.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use cofre_client::{Client, Job, PolicySpec, RetentionSpec};
use uuid::Uuid;

use crate::harness::procs::wait_until_async;
use crate::harness::restic::{Restic, restored_path};
use crate::harness::tree::{self, CompareOptions};
use crate::store::{Fixture, Protected, auditor_restic, fixture, protect, write_files};

/// The restic repository (Cofre's id) a machine backs up to.
pub(crate) async fn restic_repository(admin: &Client, machine: Uuid) -> Result<Uuid> {
    let repos = admin.list_restic_repositories(Some(machine)).await?;
    Ok(repos.first().context("the machine has a restic repository")?.id)
}

/// Queues maintenance now and waits for it to end.
pub(crate) async fn maintain(admin: &Client, repo: Uuid, kind: &str, dry_run: bool) -> Result<Job> {
    let job = admin.run_maintenance(repo, kind, dry_run).await?;
    Ok(admin.wait_for_job(job.id, Duration::from_secs(600)).await?)
}

/// restic as the machine (its certificate: append-only on the store).
pub(crate) fn as_machine(f: &Fixture, p: &Protected) -> Result<Restic> {
    let plan = p.agent.stored_plan()?;
    let repo = plan.repositories.first().context("plan has a repository")?;
    Ok(Restic::new(
        f.store.restic_repository_cert(&p.machine.to_string()),
        &repo.repository_password,
        Some(&f.store.ca_pem_path()),
        &f.tmp.path().join("restic-cache-machine"),
    )
    .with_client_cert(&p.agent.state_dir.join("identity.pem")))
}

/// restic as the store's read-only auditor (always `--no-lock`).
pub(crate) fn auditor(f: &Fixture, p: &Protected) -> Result<Restic> {
    let plan = p.agent.stored_plan()?;
    let repo = plan.repositories.first().context("plan has a repository")?;
    Ok(auditor_restic(f, p.machine, &repo.repository_password))
}

pub(crate) fn snapshot_ids(r: &Restic) -> Result<BTreeSet<String>> {
    let out = r.run(["--no-lock", "snapshots", "--json"])?;
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    Ok(snaps.iter().filter_map(|s| s["id"].as_str().map(String::from)).collect())
}

/// `restic check --read-data` must pass (as the auditor: read-only, no lock).
pub(crate) fn check_clean(r: &Restic, what: &str) -> Result<()> {
    r.run(["--no-lock", "check", "--read-data"])
        .with_context(|| format!("restic check --read-data {what}"))?;
    Ok(())
}

async fn run_backup(f: &Fixture, p: &Protected) -> Result<Job> {
    let job = f.admin.run_now(p.machine, p.policy, None).await?;
    Ok(f.admin.wait_for_job(job.id, Duration::from_secs(300)).await?)
}

async fn set_retention(admin: &Client, policy: Uuid, retention: RetentionSpec) -> Result<()> {
    let current = admin.get_policy(policy).await?;
    let mut spec: PolicySpec = current.spec;
    spec.retention = Some(retention);
    admin.update_policy(policy, &spec, Some(current.revision)).await?;
    Ok(())
}

/// restic 0.14's `forget --dry-run --json` verdict with `options`: the ids it would remove.
fn restic_would_remove(r: &Restic, options: &[&str]) -> Result<BTreeSet<String>> {
    let mut args = vec!["--no-lock", "forget", "--dry-run", "--json"];
    args.extend_from_slice(options);
    let out = r.run(args)?;
    let groups: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let mut remove = BTreeSet::new();
    for g in groups {
        for s in g["remove"].as_array().into_iter().flatten() {
            remove.insert(s["id"].as_str().context("snapshot id")?.to_string());
        }
    }
    Ok(remove)
}

fn ids_of(job: &Job, field: &str) -> BTreeSet<String> {
    job.stats
        .as_ref()
        .and_then(|s| s[field].as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cofre_forgets_exactly_what_restic_forgets_and_prune_leaves_a_clean_repository() -> Result<()> {
    let f = fixture("retention").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 3, 2_000, 1)?;
    let p = protect(&f, &source).await?;
    let repo = restic_repository(&f.admin, p.machine).await?;
    let machine = as_machine(&f, &p)?;
    let src = source.to_str().context("utf-8")?;

    // Two years of history, made with `restic backup --time` (as the machine may: append-only),
    // then recorded as the controller records job results.
    let now = chrono::Utc::now();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
    for i in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Dense recently, sparse long ago, a few on the same day.
        let days =
            if i < 16 { i64::try_from(x % 30).unwrap_or(0) } else { i64::try_from(x % 730).unwrap_or(0) };
        let secs = i64::try_from((x >> 20) % 86_400).unwrap_or(0);
        times.push(now - chrono::Duration::days(days + 1) + chrono::Duration::seconds(secs));
    }
    for (i, t) in times.iter().enumerate() {
        let mut cmd = machine.command();
        cmd.env("TZ", "UTC")
            .args(["backup", "--json", "--host", "pc-retention", "--time"])
            .arg(t.format("%Y-%m-%d %H:%M:%S").to_string());
        if i % 9 == 0 {
            cmd.args(["--tag", "keep"]);
        }
        let out = cmd.arg(src).output()?;
        anyhow::ensure!(
            out.status.success(),
            "restic backup --time: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let audit = auditor(&f, &p)?;
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&audit.run(["--no-lock", "snapshots", "--json"])?.stdout)?;
    assert_eq!(listed.len(), 64);
    let db = sqlx::PgPool::connect(&f.ctrl.db.owner_url).await?;
    for s in &listed {
        let time: chrono::DateTime<chrono::Utc> = s["time"].as_str().context("time")?.parse()?;
        let tags: Vec<String> =
            s["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect();
        let paths: Vec<String> = s["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(String::from))
            .collect();
        sqlx::query(
            "insert into snapshots (restic_repository_id, snapshot_id, machine_id, time, hostname, paths, tags, policy_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(repo)
        .bind(s["id"].as_str().context("id")?)
        .bind(p.machine)
        .bind(time)
        .bind(s["hostname"].as_str().context("hostname")?)
        .bind(&paths)
        .bind(&tags)
        .bind(p.policy)
        .execute(&db)
        .await?;
    }
    db.close().await;

    let combined = RetentionSpec {
        keep_last: 3,
        keep_daily: 7,
        keep_weekly: 5,
        keep_monthly: 12,
        keep_within: Some("10d".into()),
        keep_within_weekly: Some("2m".into()),
        keep_tags: vec!["keep".into()],
        ..Default::default()
    };
    let sets: Vec<(RetentionSpec, Vec<&str>)> = vec![
        (RetentionSpec { keep_last: 5, ..Default::default() }, vec!["--keep-last", "5"]),
        (
            RetentionSpec { keep_daily: 7, keep_weekly: 5, keep_monthly: 12, ..Default::default() },
            vec!["--keep-daily", "7", "--keep-weekly", "5", "--keep-monthly", "12"],
        ),
        (
            RetentionSpec {
                keep_within: Some("3m".into()),
                keep_within_daily: Some("1y".into()),
                ..Default::default()
            },
            vec!["--keep-within", "3m", "--keep-within-daily", "1y"],
        ),
        (RetentionSpec { keep_tags: vec!["keep".into()], ..Default::default() }, vec!["--keep-tag", "keep"]),
        (
            combined.clone(),
            vec![
                "--keep-last",
                "3",
                "--keep-daily",
                "7",
                "--keep-weekly",
                "5",
                "--keep-monthly",
                "12",
                "--keep-within",
                "10d",
                "--keep-within-weekly",
                "2m",
                "--keep-tag",
                "keep",
            ],
        ),
    ];
    for (retention, options) in &sets {
        set_retention(&f.admin, p.policy, retention.clone()).await?;
        let job = maintain(&f.admin, repo, "forget", true).await?;
        assert_eq!(job.state, "succeeded", "{job:?}");
        let ours = ids_of(&job, "would_remove");
        let restic = restic_would_remove(&audit, options)?;
        assert_eq!(
            ours,
            restic,
            "{options:?}: Cofre would remove {} snapshots, restic {}",
            ours.len(),
            restic.len()
        );
        assert!(!restic.is_empty() && restic.len() < 64, "{options:?} removes some, not all");
        eprintln!("retention {options:?}: Cofre and restic both remove {} of 64", ours.len());
    }
    assert_eq!(snapshot_ids(&audit)?.len(), 64, "dry runs removed nothing");

    // For real, with everything combined: what is left is what restic keeps.
    let expected_removed = restic_would_remove(&audit, &sets[4].1)?;
    let job = maintain(&f.admin, repo, "forget", false).await?;
    assert_eq!(job.state, "succeeded", "{job:?}\ncontroller:\n{}", f.ctrl.log());
    assert_eq!(job.kind, "forget");
    let left = snapshot_ids(&audit)?;
    assert!(left.is_disjoint(&expected_removed) && left.len() + expected_removed.len() == 64, "{left:?}");
    let recorded = f.admin.list_snapshots(p.machine).await?;
    assert_eq!(recorded.len(), left.len(), "forgotten snapshots leave the controller's list too");

    let prune = maintain(&f.admin, repo, "prune", false).await?;
    assert_eq!(prune.state, "succeeded", "{prune:?}");
    check_clean(&audit, "after forget and prune")?;
    let check = maintain(&f.admin, repo, "check", false).await?;
    assert_eq!(check.state, "succeeded", "{check:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_delete_and_a_planted_future_snapshot_is_reported_never_counted() -> Result<()> {
    let f = fixture("append_only").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 20, 30_000, 1)?;
    let p = protect(&f, &source).await?;
    let repo = restic_repository(&f.admin, p.machine).await?;
    let first = run_backup(&f, &p).await?;
    write_files(&source.join("more"), 5, 30_000, 2)?;
    let second = run_backup(&f, &p).await?;
    assert_eq!((first.state.as_str(), second.state.as_str()), ("succeeded", "succeeded"));
    let (old, new) = (first.snapshot_id.context("id")?, second.snapshot_id.context("id")?);

    // The agent's certificate cannot delete: not a snapshot, not by hand.
    let machine = as_machine(&f, &p)?;
    let denied = machine.run_unchecked(["forget", old.as_str()])?;
    assert!(!denied.status.success(), "the machine's certificate must not delete");
    // ...but it can plant a snapshot dated in the future, to push real history out of a
    // retention that trusted the repository.
    let planted = machine
        .command()
        .env("TZ", "UTC")
        .args(["backup", "--json", "--time", "2099-06-01 12:00:00", source.to_str().context("utf-8")?])
        .output()?;
    assert!(planted.status.success(), "{}", String::from_utf8_lossy(&planted.stderr));
    let audit = auditor(&f, &p)?;
    let all = snapshot_ids(&audit)?;
    let planted_id = all.iter().find(|id| **id != old && **id != new).context("planted")?.clone();

    set_retention(&f.admin, p.policy, RetentionSpec { keep_last: 1, ..Default::default() }).await?;
    let job = maintain(&f.admin, repo, "forget", false).await?;
    assert_eq!(job.state, "warning", "{job:?}");
    let warnings = job.warnings.clone().unwrap_or_default().join("\n");
    assert!(warnings.contains(&planted_id), "the planted snapshot is reported: {warnings}");
    let stats = job.stats.clone().unwrap_or_default();
    assert_eq!((stats["removed"].as_u64(), stats["unrecorded"].as_u64()), (Some(1), Some(1)), "{stats}");
    let left = snapshot_ids(&audit)?;
    assert_eq!(
        left,
        [new.clone(), planted_id.clone()].into_iter().collect(),
        "the newest recorded one stays, and the planted one is not Cofre's to delete"
    );

    let prune = maintain(&f.admin, repo, "prune", false).await?;
    assert_eq!(prune.state, "succeeded", "{prune:?}");
    check_clean(&audit, "after the controller's forget and prune")?;
    let restored = f.tmp.path().join("restored");
    audit.run(["--no-lock", "restore", new.as_str(), "--target", restored.to_str().context("utf-8")?])?;
    tree::compare_dirs(&source, &restored_path(&restored, &source), &CompareOptions::default())?
        .assert_none("the kept snapshot restores");
    Ok(())
}

/// Lock files the store holds for a machine's repository.
pub(crate) fn lock_files(f: &Fixture, machine: Uuid) -> usize {
    std::fs::read_dir(f.store.data_dir().join(machine.to_string()).join("locks"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()).filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count()
        })
        .unwrap_or(0)
}

/// Waits until a job is running and holds its repository lock (a lock file exists).
pub(crate) async fn wait_running_with_lock(f: &Fixture, machine: Uuid, job: Uuid) -> Result<()> {
    wait_until_async(
        "the job runs and holds its lock",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || {
            let admin = f.admin.clone();
            let locks = lock_files(f, machine);
            async move {
                match admin.get_job(job).await {
                    Ok(j) if j.state == "running" && locks > 0 => Ok(()),
                    Ok(j) if j.is_final() => Err(format!("ended before: {j:?}")),
                    Ok(j) => Err(format!("{} with {locks} locks", j.state)),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_started_during_a_backup_waits_for_it_and_both_finish() -> Result<()> {
    let f = fixture("prune_backup").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 8, 200_000, 1)?;
    let p = protect(&f, &source).await?;
    let repo = restic_repository(&f.admin, p.machine).await?;
    run_backup(&f, &p).await?;
    // Enough new data that the next backup takes a while.
    write_files(&source.join("big"), 240, 1_000_000, 2)?;
    let backup = f.admin.run_now(p.machine, p.policy, None).await?;
    wait_running_with_lock(&f, p.machine, backup.id).await?;
    let prune = f.admin.run_maintenance(repo, "prune", false).await?;
    let backup = f.admin.wait_for_job(backup.id, Duration::from_secs(600)).await?;
    let prune = f.admin.wait_for_job(prune.id, Duration::from_secs(600)).await?;
    assert_eq!(backup.state, "succeeded", "{backup:?}\nagent:\n{}", p.agent.log());
    assert_eq!(prune.state, "succeeded", "{prune:?}\ncontroller:\n{}", f.ctrl.log());
    let (b_end, p_start, p_end) = (
        backup.finished_at.context("backup end")?,
        prune.started_at.context("prune start")?,
        prune.finished_at.context("prune end")?,
    );
    assert!(p_start < b_end && p_end >= b_end, "the prune started during the backup and waited for it");
    eprintln!(
        "prune waited {:.1} s for the backup's lock",
        (b_end - p_start).num_milliseconds() as f64 / 1000.0
    );
    let audit = auditor(&f, &p)?;
    check_clean(&audit, "after a prune that waited for a backup")?;
    let restored = f.tmp.path().join("restored");
    let snapshot = backup.snapshot_id.context("snapshot")?;
    audit.run([
        "--no-lock",
        "restore",
        snapshot.as_str(),
        "--target",
        restored.to_str().context("utf-8")?,
    ])?;
    tree::compare_dirs(&source, &restored_path(&restored, &source), &CompareOptions::default())?
        .assert_none("the backup made during the prune restores identically");
    assert_eq!(lock_files(&f, p.machine), 0, "no lock is left behind");
    Ok(())
}
