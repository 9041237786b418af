//! The CLI over every resource against a real controller process: `cofre <resource> <verb>`
//! creates, lists, shows, updates and deletes, answers parse as JSON (and CSV), refusals carry
//! their exit status — and the storage passwords used, first and rotated, appear nowhere in
//! clear: not in any answer, not in the controller's log, not in a pg_dump of its database.

use anyhow::{Context, Result};

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;

const FIRST: &str = "first-storage-secret-4b1d";
const ROTATED: &str = "rotated-storage-secret-77ae";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_through_the_cli_and_no_secret_in_clear_anywhere() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "cli")?;
    let admin = ctrl.admin().await?;
    let token = admin.token().context("token")?.to_string();
    let mut seen = String::new();
    let mut run = |args: &[&str], env: &[(&str, &str)]| -> Result<(Option<i32>, String)> {
        let mut cmd = std::process::Command::new(crate::harness::procs::workspace_bin("cofre"));
        cmd.args(args)
            .env("COFRE_URL", ctrl.api_url())
            .env("COFRE_TOKEN", &token)
            .env_remove("COFRE_CA_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        seen.push_str(&text);
        Ok((out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let json = |(code, out): (Option<i32>, String)| -> Result<serde_json::Value> {
        anyhow::ensure!(code == Some(0), "cofre failed ({code:?}): {out}");
        serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
    };

    // Groups.
    let group = json(run(&["group", "create", "obras"], &[])?)?;
    let group_id = group["id"].as_str().context("group id")?.to_string();
    let groups = json(run(&["group", "list"], &[])?)?;
    assert!(groups.as_array().is_some_and(|g| g.iter().any(|g| g["name"] == "obras")), "{groups}");

    // A repository: the password from an environment variable, then rotated.
    let repo = json(run(
        &[
            "repository",
            "create",
            "--name",
            "main",
            "--url",
            "https://backup.example:8000",
            "--username",
            "cofre",
            "--password-env",
            "PW",
        ],
        &[("PW", FIRST)],
    )?)?;
    let repo_id = repo["id"].as_str().context("repository id")?.to_string();
    assert_eq!(repo["has_password"], true);
    let rotated = json(run(
        &["repository", "update", &repo_id, "--name", "main-2026", "--password-env", "PW"],
        &[("PW", ROTATED)],
    )?)?;
    assert_eq!(
        (rotated["name"].as_str(), rotated["has_password"].as_bool()),
        (Some("main-2026"), Some(true))
    );
    let shown = json(run(&["repository", "show", &repo_id], &[])?)?;
    assert_eq!(shown["username"], "cofre");
    let (code, _) = run(&["repository", "update", &repo_id, "--url", "https://elsewhere.example"], &[])?;
    assert_ne!(code, Some(0), "--url is not a flag of update: where backups live cannot change");

    // A policy on it, assigned to the group; the repository is then in use.
    let policy = json(run(
        &[
            "policy",
            "create",
            "--name",
            "docs",
            "--repository",
            &repo_id,
            "--path",
            "/srv",
            "--interval-seconds",
            "3600",
        ],
        &[],
    )?)?;
    let policy_id = policy["id"].as_str().context("policy id")?.to_string();
    let assignment = json(run(&["policy", "assign", &policy_id, "--group", &group_id], &[])?)?;
    assert_eq!(assignment["group_id"].as_str(), Some(group_id.as_str()));
    let (code, _) = run(&["repository", "delete", &repo_id], &[])?;
    assert_eq!(code, Some(5), "a repository in use is kept: exit status 5 (409)");
    let (code, _) = run(&["group", "delete", &group_id], &[])?;
    assert_eq!(code, Some(5), "a group with an assignment is kept");

    // Enrollment tokens: created (printed once), listed without secret, revoked.
    let created = json(run(&["enrollment-token", "create", "--group", &group_id, "--uses", "3"], &[])?)?;
    let secret = created["token"].as_str().context("the token, once")?.to_string();
    // The CLI shows the same one-line install as the portal and `up` (one function makes it).
    let line = created["install_line"].as_str().context("the install line")?;
    assert!(line.contains("/install.sh") && line.contains(&format!("--token {secret}")), "{line}");
    let listed = json(run(&["enrollment-token", "list"], &[])?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(!listed.to_string().contains(&secret));
    let (code, _) = run(&["enrollment-token", "revoke", created["id"].as_str().context("id")?], &[])?;
    assert_eq!(code, Some(0));

    // Machines, jobs, stores: empty lists parse; CSV has its header; unknown ids are exit 4.
    assert_eq!(json(run(&["machine", "list"], &[])?)?, serde_json::json!([]));
    assert_eq!(json(run(&["job", "list"], &[])?)?, serde_json::json!([]));
    assert_eq!(json(run(&["store", "list"], &[])?)?, serde_json::json!([]));
    let (code, csv) = run(&["group", "list", "-o", "csv"], &[])?;
    assert_eq!(code, Some(0));
    assert!(csv.starts_with("id,name,created_at") || csv.starts_with("created_at,id,name"), "{csv}");
    let (code, _) = run(&["machine", "show", "00000000-0000-0000-0000-000000000000"], &[])?;
    assert_eq!(code, Some(4));

    // Unused things go.
    let spare = json(run(&["group", "create", "spare"], &[])?)?;
    let (code, _) = run(&["group", "delete", spare["id"].as_str().context("id")?], &[])?;
    assert_eq!(code, Some(0));

    // No secret in clear: every answer the CLI printed, the controller's log, the database.
    let log = ctrl.log();
    let dump = pg.dump(&ctrl.db.name)?;
    for (what, text) in [("the CLI's answers", &seen), ("the controller's log", &log), ("pg_dump", &dump)] {
        for secret in [FIRST, ROTATED] {
            assert!(!text.contains(secret), "{what} holds a storage password in clear");
        }
    }
    Ok(())
}
