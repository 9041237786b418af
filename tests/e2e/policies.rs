//! Policies reaching the fleet, end to end: an edit reaches twenty agents split across two
//! controller replicas (the time is printed: the target is one second), and a real agent runs a
//! cron policy on its own, with its hook from the local hook directory, Cofre's tags on the
//! snapshot, and a missing hook skipping the backup as the policy says.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cofre_client::{HookSpec, NewEnrollmentToken, NewRepository, OnFailure, PolicySpec, ScheduleSpec};

use crate::harness::cofre::Agent;
use crate::harness::procs::wait_until_async;
use crate::maintenance::auditor;
use crate::store::{fixture, protect, write_files};

const FLEET: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_twenty_agents_on_two_controllers_at_once() -> Result<()> {
    let f = fixture("fleet").await?;
    let second = f.ctrl.replica(&f.tmp.path().join("controller-2"))?;
    let group = f.admin.create_group("fleet").await?;
    let token = f
        .admin
        .create_enrollment_token(&NewEnrollmentToken {
            uses: Some(u32::try_from(FLEET)?),
            group_id: Some(group.id),
            ..Default::default()
        })
        .await?;
    // One shared repository (initialised once) so the policy is in every plan quickly.
    let repo = f
        .admin
        .create_repository(&NewRepository {
            name: "shared".into(),
            url: format!("{}shared", f.store.url()),
            per_machine: false,
            ca_certificate_pem: f.repository_ca(),
            ..Default::default()
        })
        .await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 1, 100, 1)?;
    let spec = PolicySpec::new("fleet", repo.id, vec![source.to_str().context("utf-8")?.into()]);
    let policy = f.admin.create_policy(&spec).await?;
    f.admin.assign_policy_to_group(policy.id, group.id).await?;
    let mut agents = Vec::new();
    for i in 0..FLEET {
        let mut agent = Agent::new(&f.tmp.path().join(format!("agent-{i:02}")));
        // Half the fleet dials each replica.
        let url = if i % 2 == 0 { f.ctrl.grpc_url() } else { second.grpc_url() };
        let out = agent.enroll(&url, &token.token)?;
        anyhow::ensure!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
        agent.start()?;
        agents.push(agent);
    }
    for a in &agents {
        a.wait_for_policy(policy.id, "every agent holds the policy").await.with_context(|| {
            format!("agent:\n{}\ncontroller:\n{}\nstore:\n{}", a.log(), f.ctrl.log(), f.store.log())
        })?;
    }

    // The edit goes through one replica; agents of both hear of it.
    let mut edited = spec.clone();
    edited.tags = vec!["edited".into()];
    let started = Instant::now();
    f.admin.update_policy(policy.id, &edited, Some(policy.revision)).await?;
    let mut arrivals = Vec::new();
    for a in &agents {
        let t = wait_until_async(
            "the edit reaches the agent",
            Duration::from_secs(60),
            Duration::from_millis(5),
            || {
                let plan = a.stored_plan();
                async move {
                    match plan {
                        Ok(p) if p.policies.iter().any(|x| x.revision == 2) => Ok(started.elapsed()),
                        Ok(_) => Err("older plan".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await?;
        arrivals.push(t);
    }
    arrivals.sort();
    let slowest = arrivals.last().copied().unwrap_or_default();
    eprintln!(
        "policy edit reached {FLEET} agents on 2 controllers: median {:.0} ms, slowest {:.0} ms (target: 1000 ms)",
        arrivals[FLEET / 2].as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0
    );
    // Every agent reports the plan it runs: none is left on a stale one.
    wait_until_async(
        "no machine runs a stale plan",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let admin = f.admin.clone();
            async move {
                let stale = admin.stale_plans().await.map_err(|e| e.to_string())?;
                if stale.is_empty() { Ok(()) } else { Err(format!("{} stale", stale.len())) }
            }
        },
    )
    .await?;
    let versions = f.admin.policy_versions(policy.id).await?;
    assert_eq!(versions.len(), 2);
    let diff = f.admin.policy_diff(policy.id, 1, 2).await?;
    assert_eq!(diff.changes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(), vec!["tags"]);
    Ok(())
}

/// A hook directory as an administrator would install it (root-owned, 0755) with `script`
/// as the hook `name`.
fn install_hook(dir: &std::path::Path, name: &str, script: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let file = dir.join(name);
    std::fs::write(&file, script)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_a_cron_policy_with_its_hook_and_tags_and_skips_when_the_hook_is_missing() -> Result<()>
{
    let f = fixture("schedule_hooks").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 5, 10_000, 1)?;
    let hooks = f.tmp.path().join("hooks");
    let dump = source.join("database.dump");
    install_hook(
        &hooks,
        "dump-database",
        &format!("#!/bin/sh\necho \"dumping for $COFRE_POLICY_NAME\"\necho dump > '{}'\n", dump.display()),
    )?;
    let mut p = protect(&f, &source).await?;
    let (machine, policy) = (p.machine, p.policy);
    p.agent.stop()?;
    p.agent.start_with(&["--hook-dir", hooks.to_str().context("utf-8")?])?;
    let current = f.admin.get_policy(policy).await?;
    let mut spec = current.spec.clone();
    // Every minute, in São Paulo's time, with the hook before each backup.
    spec.schedule = Some(ScheduleSpec {
        cron: Some("* * * * *".into()),
        timezone: Some("America/Sao_Paulo".into()),
        ..Default::default()
    });
    spec.tags = vec!["finance".into()];
    spec.hooks.before = Some(HookSpec {
        name: "dump-database".into(),
        timeout_seconds: 30,
        on_failure: OnFailure::SkipBackup,
    });
    let edited = f.admin.update_policy(policy, &spec, Some(current.revision)).await?;
    let job = wait_until_async(
        "a scheduled backup runs",
        Duration::from_secs(150),
        Duration::from_millis(500),
        || {
            let admin = f.admin.clone();
            async move {
                let jobs = admin.list_jobs(machine).await.map_err(|e| e.to_string())?;
                match jobs.into_iter().find(|j| j.trigger == "schedule" && j.kind == "backup" && j.is_final())
                {
                    Some(j) => Ok(j),
                    None => Err("no scheduled backup has ended yet".to_string()),
                }
            }
        },
    )
    .await
    .with_context(|| p.agent.log())?;
    assert_eq!(job.state, "succeeded", "{job:?}\n{}", p.agent.log());
    assert!(job.log.as_deref().unwrap_or_default().contains("dumping for documents"), "{job:?}");
    let snapshot = job.snapshot_id.clone().context("snapshot")?;
    let audit = auditor(&f, &p)?;
    let out = audit.run(["--no-lock", "snapshots", "--json", snapshot.as_str()])?;
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let tags: Vec<&str> =
        snaps[0]["tags"].as_array().context("tags")?.iter().filter_map(|t| t.as_str()).collect();
    for t in [format!("cofre-policy:{policy}"), format!("cofre-machine:{machine}"), "finance".into()] {
        assert!(tags.contains(&t.as_str()), "{t} in {tags:?}");
    }
    let ls = audit.run(["--no-lock", "ls", snapshot.as_str()])?;
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("database.dump"),
        "the hook's output is in the snapshot"
    );

    // A hook the machine does not have: the policy says skip, so nothing is backed up.
    let mut spec = edited.spec.clone();
    spec.schedule = None;
    spec.hooks.before = Some(HookSpec {
        name: "not-installed".into(),
        timeout_seconds: 30,
        on_failure: OnFailure::SkipBackup,
    });
    f.admin.update_policy(policy, &spec, Some(edited.revision)).await?;
    let skipped = wait_until_async(
        "the agent has the new plan",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let admin = f.admin.clone();
            async move {
                let job = admin.run_now(machine, policy, None).await.map_err(|e| e.to_string())?;
                let job =
                    admin.wait_for_job(job.id, Duration::from_secs(120)).await.map_err(|e| e.to_string())?;
                if job.state == "skipped" { Ok(job) } else { Err(format!("{job:?}")) }
            }
        },
    )
    .await?;
    let warnings = skipped.warnings.unwrap_or_default().join("\n");
    assert!(warnings.contains("not-installed"), "{warnings}");
    assert!(skipped.snapshot_id.is_none());
    Ok(())
}
