//! Policy as code end to end: `cofre apply -f fleet.toml` against a controller process. A dry
//! run changes nothing, the first run creates everything, a second run is a no-op, an edited
//! file updates the policy (the plan names the changed field) and its assignments, nothing is
//! removed without --prune, and secrets stay references that never appear in the plan.

use anyhow::{Context, Result};

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;

const PASSWORD: &str = "store-password-never-printed";

fn fleet(paths: &str, groups: &str, password_file: &std::path::Path) -> String {
    format!(
        r#"
[[groups]]
name = "obras"

[[groups]]
name = "saude"

[[repositories]]
name = "store"
url = "https://backup.prefeitura.example:8443/"
username = "cofre"
password_file = "{}"

[[policies]]
name = "servidores"
repository = "store"
paths = {paths}
schedule = {{ cron = "0 19 * * *", timezone = "America/Sao_Paulo" }}
retention = {{ keep_daily = 7, keep_weekly = 4 }}
assign_groups = {groups}
"#,
        password_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_file_is_applied_idempotently_and_never_prunes_unasked() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "apply")?;
    let admin = ctrl.admin().await?;
    let token = admin.token().context("token")?.to_string();
    let secret = tmp.path().join("store.pass");
    std::fs::write(&secret, format!("{PASSWORD}\n"))?;
    let file = tmp.path().join("fleet.toml");
    std::fs::write(&file, fleet(r#"["/srv"]"#, r#"["obras"]"#, &secret))?;
    let f = file.to_str().context("path")?;
    let apply = |args: &[&str]| -> Result<Vec<serde_json::Value>> {
        let mut all = vec!["apply", "-f", f];
        all.extend_from_slice(args);
        let out = ctrl.cli(&token, &all)?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        anyhow::ensure!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.contains(PASSWORD), "the plan never shows a secret");
        Ok(serde_json::from_str::<Vec<serde_json::Value>>(&stdout)?)
    };
    let actions = |plan: &[serde_json::Value]| -> Vec<String> {
        plan.iter()
            .map(|s| {
                format!(
                    "{} {} {}",
                    s["action"].as_str().unwrap_or(""),
                    s["kind"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };

    let dry = apply(&["--dry-run"])?;
    assert_eq!(
        actions(&dry),
        [
            "create group obras",
            "create group saude",
            "create repository store",
            "create policy servidores",
            "assign policy servidores → group obras"
        ]
    );
    assert!(admin.list_groups().await?.is_empty(), "a dry run changes nothing");

    let first = apply(&[])?;
    assert!(actions(&first).contains(&"assign policy servidores → group obras".to_string()), "{first:?}");
    let policies = admin.list_policies().await?;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].spec.paths, ["/srv"]);
    let repo = admin.list_repositories().await?;
    assert!(repo[0].has_password, "the password was read from its file");

    let again = apply(&[])?;
    assert!(again.iter().all(|s| s["action"] == "unchanged"), "a second run is a no-op: {again:?}");

    // Edited: one more path, the policy moves from obras to saude.
    std::fs::write(&file, fleet(r#"["/srv", "/etc"]"#, r#"["saude"]"#, &secret))?;
    let plan = apply(&["--dry-run"])?;
    let update = plan.iter().find(|s| s["action"] == "update").context("an update")?;
    assert!(update["changes"].to_string().contains("paths"), "{update}");
    assert_eq!(admin.list_policies().await?[0].spec.paths, ["/srv"], "still a dry run");
    let applied = apply(&[])?;
    assert!(
        applied
            .iter()
            .any(|s| s["action"] == "extra" && s["name"].as_str().is_some_and(|n| n.contains("servidores"))),
        "{applied:?}"
    );
    let policy = &admin.list_policies().await?[0];
    assert_eq!(policy.spec.paths, ["/srv", "/etc"]);
    assert_eq!(admin.list_assignments(policy.id).await?.len(), 2, "obras kept without --prune");
    let pruned = apply(&["--prune"])?;
    assert!(pruned.iter().any(|s| s["action"] == "unassign"), "{pruned:?}");
    assert_eq!(admin.list_assignments(policy.id).await?.len(), 1);
    assert!(apply(&["--prune"])?.iter().all(|s| s["action"] == "unchanged"));

    // The storage password went in sealed: it is in no API answer, no log line, no dump.
    let answers = format!(
        "{:?}{:?}{:?}",
        admin.list_repositories().await?,
        admin.get_repository(repo[0].id).await?,
        admin.audit_events(&cofre_client::AuditFilter::default()).await?
    );
    let dump = pg.dump(&ctrl.db.name)?;
    assert!(dump.contains("sealed_password"), "the dump holds the repositories table");
    for (place, text) in
        [("an API answer", &answers), ("the controller log", &ctrl.log()), ("pg_dump", &dump)]
    {
        assert!(!text.contains(PASSWORD), "the storage password leaked into {place}");
    }

    // Secrets inline are refused before anything is done.
    std::fs::write(
        &file,
        "[[repositories]]\nname = \"x\"\nurl = \"https://x.example/\"\npassword = \"inline\"\n",
    )?;
    let out = ctrl.cli(&token, &["apply", "-f", f])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password is inline"));
    Ok(())
}
