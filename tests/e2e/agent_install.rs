//! The one-line agent install (#14 item 1) against a real controller: the script it serves at
//! `/install.sh` downloads the agent from `/downloads/…`, refuses a binary whose SHA-256 is not
//! the one on the line, installs into a prefix, enrolls once, upgrades in place keeping the
//! machine id, and uninstalls. Plain HTTP on loopback (the only plain HTTP the script accepts)
//! and `--no-systemd`: no unit is written here.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, ensure};
use cofre_client::NewEnrollmentToken;

use crate::harness::cofre::Controller;
use crate::harness::pg::PgCluster;
use crate::harness::procs::workspace_bin;

/// Runs `curl -fsS API/install.sh | sh -s -- ARGS`, as the pasted line does.
fn pasted_line(api: &str, args: &[&str]) -> Result<Output> {
    let script =
        Command::new("curl").args(["-fsS", "--proto", "=http", &format!("{api}/install.sh")]).output()?;
    ensure!(script.status.success(), "curl install.sh: {}", String::from_utf8_lossy(&script.stderr));
    let mut sh = Command::new("sh")
        .args(["-s", "--"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut sh.stdin.take().context("stdin")?, &script.stdout)?;
    Ok(sh.wait_with_output()?)
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum");
    Ok(String::from_utf8(out.stdout)?.split_whitespace().next().context("a hash")?.to_string())
}

/// The machine id in the identity the agent stored at enrollment.
fn machine_id(state: &Path) -> Result<uuid::Uuid> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("identity.json"))?)?;
    Ok(uuid::Uuid::parse_str(v["machine_id"].as_str().context("machine_id")?)?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_script_installs_refuses_a_wrong_hash_upgrades_in_place_and_uninstalls() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cofre-e2e-agent-install-").tempdir()?;
    let pg = PgCluster::start()?;
    let ctrl = Controller::start(&pg, &tmp.path().join("controller"), "agent_install")?;
    let admin = ctrl.admin().await?;
    let api = ctrl.api_url();
    let prefix = tmp.path().join("prefix");
    let state = tmp.path().join("state");
    let binary = prefix.join("bin/cofre-agent");
    let (prefix_s, state_s) = (prefix.display().to_string(), state.display().to_string());

    // What the controller serves is the agent beside it, and its published hash.
    let expected = sha256(&workspace_bin("cofre-agent"))?;
    let http = reqwest::Client::new();
    let sum = http.get(format!("{api}/downloads/cofre-agent-linux-x86_64.sha256")).send().await?;
    assert!(sum.status().is_success());
    assert_eq!(sum.text().await?, format!("{expected}  cofre-agent-linux-x86_64\n"));
    let other = http.get(format!("{api}/downloads/cofre-agent-linux-aarch64")).send().await?;
    assert_eq!(other.status(), 404);
    let why = other.text().await?;
    assert!(why.contains("cofre-agent-linux-x86_64") && why.contains("not available"), "{why}");

    let token =
        admin.create_enrollment_token(&NewEnrollmentToken { uses: Some(1), ..Default::default() }).await?;
    let base = |sha: &str| -> Vec<String> {
        [
            "--api",
            &api,
            "--controller",
            &ctrl.grpc_url(),
            "--token",
            &token.token,
            "--sha256",
            sha,
            "--prefix",
            &prefix_s,
            "--state-dir",
            &state_s,
            "--no-systemd",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: &[String]| pasted_line(&api, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // (2) A download whose hash is not the one on the line is refused and nothing is installed.
    let wrong = format!("{}{}", &expected[..63], if expected.ends_with('0') { '1' } else { '0' });
    let refused = run(&base(&wrong))?;
    assert!(!refused.status.success(), "a wrong hash was accepted: {}", stderr(&refused));
    assert!(stderr(&refused).contains("nothing was installed"), "{}", stderr(&refused));
    assert!(!binary.exists(), "a binary with the wrong hash was installed");
    let leftovers: Vec<_> = std::fs::read_dir(prefix.join("bin"))?.collect();
    assert!(leftovers.is_empty(), "the refused download was left behind: {leftovers:?}");
    assert!(!state.join("identity.json").exists(), "it enrolled anyway");
    // Plain http to anything but loopback is refused outright.
    let mut remote = base(&expected);
    remote[1] = "http://cofre.example:8080".into();
    let out = run(&remote)?;
    assert!(!out.status.success() && stderr(&out).contains("https://"), "{}", stderr(&out));

    // (1) The pasted line installs the served binary and enrolls: the controller lists the machine.
    let first = run(&base(&expected))?;
    assert!(first.status.success(), "install failed: {}", stderr(&first));
    assert_eq!(sha256(&binary)?, expected);
    let machine = machine_id(&state)?;
    let listed = admin.list_machines().await?;
    assert!(listed.iter().any(|m| m.id == machine), "the controller does not list {machine}");

    // (3) A second run replaces the binary (a new file) and keeps the machine id, without
    // enrolling again (the token was for one use: a second enrollment would fail).
    let inode = |p: &Path| -> Result<u64> { Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p)?)) };
    let before = inode(&binary)?;
    let second = run(&base(&expected))?;
    assert!(second.status.success(), "upgrade failed: {}", stderr(&second));
    assert!(stderr(&second).contains("kept this machine's identity"), "{}", stderr(&second));
    assert_ne!(inode(&binary)?, before, "the binary was not replaced");
    assert_eq!(machine_id(&state)?, machine);
    let status = Command::new(&binary).arg("--state-dir").arg(&state).arg("status").output()?;
    assert!(String::from_utf8_lossy(&status.stdout).contains(&machine.to_string()), "{status:?}");
    assert_eq!(admin.list_machines().await?.len(), listed.len(), "a second machine was enrolled");

    // (4) Uninstall removes the binary and keeps the identity; --purge removes that too.
    let gone = ["--uninstall", "--prefix", &prefix_s, "--state-dir", &state_s, "--no-systemd"];
    let out = pasted_line(&api, &gone)?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!binary.exists(), "uninstall left the binary");
    assert!(state.join("identity.json").exists(), "uninstall without --purge removed the identity");
    let out = pasted_line(&api, &[&gone[..], &["--purge"]].concat())?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!state.exists(), "--purge left the state dir");
    Ok(())
}
