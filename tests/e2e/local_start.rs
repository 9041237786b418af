//! `cofre-controller up`, as the README's first set-up command runs it: its own PostgreSQL and
//! master key on the first run, the admin password and an enrollment line printed, everything
//! stopped on Ctrl-C, and the same data reused by a second run.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::harness::block_on_isolated;
use crate::harness::procs::{Proc, free_port, wait_until, workspace_bin};

fn up(data: &std::path::Path, http: u16, grpc: u16) -> Command {
    let mut c = Command::new(workspace_bin("cofre-controller"));
    c.arg("up")
        .arg("--data-dir")
        .arg(data)
        .env("COFRE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("COFRE_GRPC__LISTEN", format!("127.0.0.1:{grpc}"))
        .env("COFRE_GRPC__PUBLIC_URL", format!("https://localhost:{grpc}"))
        .env_remove("COFRE_MASTER_KEY")
        .env_remove("COFRE_CONFIG");
    c
}

fn wait_for_banner(p: &mut Proc) -> Result<String> {
    Ok(wait_until("up prints where to log in", Duration::from_secs(180), Duration::from_millis(200), || {
        let log = p.log();
        if log.contains("Press Ctrl-C") {
            Ok(log)
        } else if !p.is_running() {
            Err(format!("up exited:\n{log}"))
        } else {
            Err("not yet".to_string())
        }
    })?)
}

fn login(http: u16, password: &str) -> Result<()> {
    block_on_isolated(async {
        let mut c = cofre_client::Client::new(&format!("http://127.0.0.1:{http}"))?;
        c.login("admin", password).await?;
        c.list_machines().await?;
        anyhow::Ok(())
    })
}

fn stop(mut p: Proc, data: &std::path::Path) -> Result<()> {
    p.signal(Signal::SIGINT)?;
    let status = p.wait_exit(Duration::from_secs(60))?;
    assert!(status.success(), "up exits cleanly on Ctrl-C: {status:?}\n{}", p.log());
    assert!(p.log().contains("PostgreSQL stopped."), "{}", p.log());
    assert!(!data.join("postgres/postmaster.pid").exists(), "PostgreSQL is still running");
    Ok(())
}

#[test]
fn up_runs_cofre_on_its_own_postgres_and_a_second_up_reuses_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // PostgreSQL runs as the postgres user when we are root: it must reach the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))?;
    let data = tmp.path().join("cofre");
    let (http, grpc) = (free_port(), free_port());

    let mut first =
        Proc::spawn("up-1", up(&data, http, grpc), tmp.path())?.with_grace(Duration::from_secs(30));
    let banner = wait_for_banner(&mut first)?;
    let password = banner
        .lines()
        .find_map(|l| l.split("password ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("the first run prints the admin password")?
        .to_string();
    let key = data.join("master.key");
    assert!(banner.contains(&key.display().to_string()) && banner.contains("BACK IT UP"), "{banner}");
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    let enroll_line = banner.lines().find(|l| l.contains("enroll --controller")).context("an enroll line")?;
    assert!(enroll_line.contains(&format!("https://localhost:{grpc} --token cofre1.")), "{enroll_line}");
    // The same token as a one-line service install, pinned to the agent binary it serves.
    let install = banner.lines().find(|l| l.contains("/install.sh")).context("an install line")?;
    let sum = Command::new("sha256sum").arg(workspace_bin("cofre-agent")).output()?;
    let sha = String::from_utf8(sum.stdout)?.split_whitespace().next().context("sha256sum")?.to_string();
    assert!(
        install.contains(&format!("--sha256 {sha}"))
            && install.contains(&format!("--api http://127.0.0.1:{http} ")),
        "{install}"
    );
    login(http, &password)?;
    // The portal answers where the banner says.
    let portal = banner.lines().find(|l| l.contains("Portal:")).context("a portal line")?;
    assert!(portal.contains(&format!("http://127.0.0.1:{http}/")), "{portal}");
    let page = block_on_isolated(async {
        anyhow::Ok(reqwest::get(format!("http://127.0.0.1:{http}/login")).await?.text().await?)
    })?;
    assert!(page.contains("action=\"/login\""), "the portal's login page is served: {page}");

    // The printed line enrolls an agent as it is.
    let state = tmp.path().join("agent");
    let args: Vec<&str> = enroll_line.split_whitespace().skip(1).collect();
    let out =
        Command::new(workspace_bin("cofre-agent")).arg("--state-dir").arg(&state).args(&args).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    stop(first, &data)?;

    let mut second =
        Proc::spawn("up-2", up(&data, http, grpc), tmp.path())?.with_grace(Duration::from_secs(30));
    let banner = wait_for_banner(&mut second)?;
    assert!(!banner.contains(&password), "the password is shown on the first run only");
    login(http, &password)?;
    let machines = block_on_isolated(async {
        let mut c = cofre_client::Client::new(&format!("http://127.0.0.1:{http}"))?;
        c.login("admin", &password).await?;
        anyhow::Ok(c.list_machines().await?)
    })?;
    assert_eq!(machines.len(), 1, "the second run has the first run's data");
    // The audit log is checkpointed outside PostgreSQL too, in the data directory.
    let checkpoints = data.join("audit-checkpoints.jsonl");
    crate::harness::procs::wait_until(
        "a checkpoint file",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            std::fs::read_to_string(&checkpoints)
                .ok()
                .filter(|t| t.contains("\"signature\""))
                .ok_or("not yet")
        },
    )?;
    stop(second, &data)?;
    Ok(())
}

#[test]
fn up_in_a_private_directory_names_what_postgres_cannot_enter() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: PostgreSQL runs as another user only when up runs as root");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))?;
    let data = tmp.path().join("cofre");
    let out = up(&data, free_port(), free_port()).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot enter")
            && err.contains(&tmp.path().display().to_string())
            && err.contains("chmod o+x"),
        "names the directory and the way out: {err}"
    );
    assert!(!data.join("postgres/PG_VERSION").exists(), "initdb was not even tried");
    Ok(())
}

#[test]
fn the_master_key_never_reaches_postgres_and_role_passwords_are_never_logged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711))?;
    let data = tmp.path().join("cofre");
    let key = "ab".repeat(32);
    let mut cmd = up(&data, free_port(), free_port());
    // Even with every statement sqlx runs logged.
    cmd.env("COFRE_MASTER_KEY", &key).env("COFRE_LOG", "info,sqlx=debug");
    let mut p = Proc::spawn("up-env", cmd, tmp.path())?.with_grace(Duration::from_secs(30));
    let log = wait_for_banner(&mut p)?;
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("up.json"))?)?;
    for role in ["superuser_password", "owner_password", "app_password"] {
        let secret = state[role].as_str().context("a role password")?;
        assert!(!log.contains(secret), "{role} is in up's log");
    }
    assert!(log.contains("sqlx"), "statements are logged in this test: {log}");
    let pid = std::fs::read_to_string(data.join("postgres/postmaster.pid"))?;
    let pid = pid.lines().next().context("postmaster.pid")?.trim().to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    assert!(!environ.is_empty(), "the postmaster's environment is readable");
    assert!(
        !String::from_utf8_lossy(&environ).contains(&key),
        "PostgreSQL (a child of up) was given COFRE_MASTER_KEY"
    );
    stop(p, &data)
}
