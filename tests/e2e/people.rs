//! People through the CLI against a controller process: an admin creates a user (the password
//! is generated and shown once), the user logs in, sees who they are and makes an API token for
//! a script; once disabled, both their login token and their API token stop working at once.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;
use crate::harness::procs::workspace_bin;

fn json(out: &std::process::Output) -> Result<serde_json::Value> {
    anyhow::ensure!(out.status.success(), "cofre failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("cofre printed no JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_a_user_who_logs_in_and_is_cut_off_when_disabled() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "people")?;
    let admin = ctrl.admin().await?;
    let admin_token = admin.token().context("token")?.to_string();

    let created = json(&ctrl.cli(&admin_token, &["user", "create", "maria", "--role", "auditor"])?)?;
    let password = created["generated_password"].as_str().context("a generated password")?.to_string();
    let id = created["user"]["id"].as_str().context("id")?.to_string();

    let mut login = Command::new(workspace_bin("cofre"))
        .args(["login", "--username", "maria", "--print-token"])
        .env("COFRE_URL", ctrl.api_url())
        .env("XDG_CONFIG_HOME", tmp.path().join("maria-config"))
        .env_remove("COFRE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    login.stdin.take().context("stdin")?.write_all(password.as_bytes())?;
    let out = login.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "login: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout)?.trim().to_string();

    let me = json(&ctrl.cli(&token, &["me"])?)?;
    assert_eq!((me["username"].as_str(), me["role"].as_str()), (Some("maria"), Some("auditor")));
    // A script's token: read-only, made by maria, used by the CLI like any token.
    let pat = json(
        &ctrl.cli(&token, &["api-token", "create", "--name", "inventory", "--read-only", "--days", "30"])?,
    )?;
    let pat = pat["token"].as_str().context("the token, shown once")?.to_string();
    let me = json(&ctrl.cli(&pat, &["me"])?)?;
    assert_eq!(me["username"].as_str(), Some("maria"));
    let listed = json(&ctrl.cli(&token, &["api-token", "list"])?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert!(!listed.to_string().contains(&pat[pat.len() - 20..]), "the secret is never listed");
    let refused = ctrl.cli(&token, &["user", "list"])?;
    assert_eq!(refused.status.code(), Some(3), "an auditor cannot list users: exit status 3");
    // Logging out ends an access token at once.
    let session = admin.clone().with_token(admin_token.clone());
    let other_session = ctrl.admin().await?;
    let short = other_session.token().context("token")?.to_string();
    assert!(ctrl.cli(&short, &["logout"])?.status.success());
    assert!(!ctrl.cli(&short, &["me"])?.status.success(), "a logged-out token is refused");
    session.me().await?;

    json(&ctrl.cli(&admin_token, &["user", "disable", &id])?)?;
    let out = ctrl.cli(&token, &["me"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disabled"), "{err}");
    let out = ctrl.cli(&pat, &["me"])?;
    assert!(!out.status.success(), "her API token died with her account");
    let csv = ctrl.cli(&admin_token, &["user", "list", "--output", "csv"])?;
    let csv = String::from_utf8(csv.stdout)?;
    assert!(csv.starts_with("id,username,"), "{csv}");
    assert!(csv.lines().any(|l| l.contains(",maria,")), "{csv}");
    let table = String::from_utf8(ctrl.cli(&admin_token, &["user", "list", "-o", "table"])?.stdout)?;
    assert!(table.starts_with("ID ") && table.contains("USERNAME"), "{table}");
    let users = json(&ctrl.cli(&admin_token, &["user", "list"])?)?;
    let maria =
        users.as_array().context("array")?.iter().find(|u| u["username"] == "maria").context("listed")?;
    assert!(maria["disabled_at"].is_string(), "{maria}");
    Ok(())
}

/// `cofre` with no token: the session of `cofre login`, kept in `config`.
fn with_session(
    ctrl: &Controller,
    config: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> Result<std::process::Output> {
    let mut child = Command::new(workspace_bin("cofre"))
        .args(args)
        .env("COFRE_URL", ctrl.api_url())
        .env("XDG_CONFIG_HOME", config)
        .env_remove("COFRE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cofre_login_keeps_a_private_session_that_refreshes_itself_and_logout_ends_it() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "sessions")?;
    let config = tmp.path().join("config");
    let password = crate::harness::cofre::ADMIN_PASSWORD;

    let out = with_session(&ctrl, &config, &["login", "--username", "admin"], password)?;
    anyhow::ensure!(out.status.success(), "login: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "no token printed unless asked");
    let file = config.join("cofre/session.json");
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(config.join("cofre"))?.permissions().mode() & 0o777, 0o700);
    let me = json(&with_session(&ctrl, &config, &["me"], "")?)?;
    assert_eq!(me["username"], "admin");

    // The access token is about to expire: the next command refreshes it first, and the used
    // refresh token is replaced in the file.
    let mut stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    let first_refresh = stored["refresh_token"].clone();
    stored["access_expires_at"] = serde_json::json!("2000-01-01T00:00:00Z");
    std::fs::write(&file, serde_json::to_vec(&stored)?)?;
    let me = json(&with_session(&ctrl, &config, &["me"], "")?)?;
    assert_eq!(me["username"], "admin");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    assert_ne!(stored["refresh_token"], first_refresh, "rotated");
    let access = stored["access_token"].as_str().context("access token")?.to_string();

    // Logout ends the session on the controller and removes the file.
    let out = with_session(&ctrl, &config, &["logout"], "")?;
    anyhow::ensure!(out.status.success(), "logout: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!file.exists());
    assert!(!ctrl.cli(&access, &["me"])?.status.success(), "the session's access token is ended");
    let out = with_session(&ctrl, &config, &["me"], "")?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("cofre login"), "says what to do");
    Ok(())
}
