//! Proves each harness piece against the real components it wraps: processes, PostgreSQL and
//! rustic-server here; the data set, tree comparison and the restic round trip in submodules.

mod data;
mod restic_roundtrip;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::harness::pg::PgCluster;
use crate::harness::pki::{TestPki, https_client};
use crate::harness::procs::{
    Proc, describe_status, find_workspace_bin, free_port, wait_until, wait_until_async,
};
use crate::harness::rest_server::RestServer;

#[test]
fn wait_until_polls_and_reports_the_last_error() {
    let mut calls = 0;
    let value = wait_until("the third call", Duration::from_secs(5), Duration::from_millis(1), || {
        calls += 1;
        if calls == 3 { Ok(calls) } else { Err(format!("call {calls}")) }
    })
    .expect("third call succeeds");
    assert_eq!(value, 3);

    let err = wait_until(
        "something that never happens",
        Duration::from_millis(100),
        Duration::from_millis(10),
        || Err::<(), _>("still not there"),
    )
    .expect_err("times out");
    let message = err.to_string();
    assert!(message.contains("something that never happens"), "{message}");
    assert!(message.contains("still not there"), "{message}");
    assert!(err.attempts >= 2, "{message}");

    assert_ne!(free_port(), 0);
}

#[test]
fn proc_captures_output_and_is_terminated_on_drop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("sh");
    // Markers computed by the shell: the log's first line quotes the command itself.
    cmd.args(["-c", "echo stdout-$((40+2)); echo stderr-$((40+3)) >&2; exec sleep 600"]);
    let proc = Proc::spawn("sleeper", cmd, dir.path())?;
    let pid = proc.pid();
    wait_until("both lines in the log", Duration::from_secs(10), Duration::from_millis(10), || {
        let log = proc.log();
        if log.contains("stdout-42") && log.contains("stderr-43") { Ok(()) } else { Err(log) }
    })?;
    drop(proc);
    // Reaped by Drop: the pid no longer names a live process of ours.
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.try_into()?), None).is_ok();
    assert!(!alive, "process {pid} still alive after Drop");
    assert!(std::fs::read_to_string(dir.path().join("sleeper.log"))?.contains("stderr-43"));
    Ok(())
}

#[test]
fn proc_escalates_to_sigkill_and_reports_exit_codes() -> Result<()> {
    let dir = tempfile::tempdir()?;

    // Ignores SIGTERM: terminate() must escalate after the grace period.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' TERM; echo armed-$((6*7)); while :; do sleep 0.05; done"]);
    let mut stubborn = Proc::spawn("stubborn", cmd, dir.path())?.with_grace(Duration::from_millis(300));
    wait_until("stubborn ready", Duration::from_secs(10), Duration::from_millis(10), || {
        stubborn.log().contains("armed-42").then_some(()).ok_or("not yet")
    })?;
    let status = stubborn.terminate()?;
    assert_eq!(describe_status(status), "killed by SIGKILL");

    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let mut victim = Proc::spawn("victim", cmd, dir.path())?;
    assert!(victim.is_running());
    assert_eq!(describe_status(victim.kill9()?), "killed by SIGKILL");
    assert!(!victim.is_running());

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exit 3"]);
    let mut quitter = Proc::spawn("quitter", cmd, dir.path())?;
    let status = quitter.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(3));
    Ok(())
}

#[test]
fn workspace_bins_are_looked_up_with_a_helpful_error() {
    let err = find_workspace_bin("cofre-no-such-binary").expect_err("does not exist");
    let message = format!("{err:#}");
    assert!(message.contains("cargo build --workspace --bins"), "{message}");
    assert!(message.contains("target"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_with_production_roles() -> Result<()> {
    use sqlx::{Connection as _, PgConnection};

    let started = Instant::now();
    let cluster = PgCluster::start()?;
    let db = cluster.create_database("cofre_selftest")?;
    // A second database in the same cluster: `cofre_app` exists already, that is fine.
    let other = cluster.create_database("cofre_other")?;
    eprintln!("postgres cluster + 2 databases in {:.2?}", started.elapsed());

    let mut app = PgConnection::connect(&db.app_url).await?;
    let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut app).await?;
    assert_eq!(one, 1);
    let member: bool = sqlx::query_scalar("select pg_has_role(current_user, 'cofre_app', 'member')")
        .fetch_one(&mut app)
        .await?;
    assert!(member, "{} must be a member of cofre_app", db.app_user);

    // The owner runs migrations: creates tables, may create roles, grants to the group role.
    let mut owner = PgConnection::connect(&db.owner_url).await?;
    sqlx::query("create table machines (id int primary key)").execute(&mut owner).await?;
    sqlx::query("create role cofre_selftest_migration_probe nologin").execute(&mut owner).await?;
    sqlx::query("grant select, insert on machines to cofre_app").execute(&mut owner).await?;
    sqlx::query("insert into machines values (1)").execute(&mut app).await?;
    let count: i64 = sqlx::query_scalar("select count(*) from machines").fetch_one(&mut app).await?;
    assert_eq!(count, 1);
    // …and the app role itself may not.
    assert!(sqlx::query("create table nope (id int)").execute(&mut app).await.is_err());
    assert!(sqlx::query("create role nope").execute(&mut app).await.is_err());

    let wrong = db.app_url.replace(&db.app_password, "wrong-password");
    assert!(PgConnection::connect(&wrong).await.is_err(), "a wrong password must be refused");
    let mut admin = PgConnection::connect(&cluster.admin_url(&other.name)).await?;
    let owner_name: String = sqlx::query_scalar(
        "select pg_get_userbyid(datdba) from pg_database where datname = current_database()",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(owner_name, other.owner_user);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_server_requires_tls_and_credentials() -> Result<()> {
    let pki = TestPki::new()?;
    let started = Instant::now();
    let mut server = RestServer::start(&pki.ca, &["repo-a"])?;
    eprintln!("rustic-server ready in {:.2?}", started.elapsed());
    let client = server.client()?;
    let base = server.url();
    let create = |repo: &str| format!("{base}/{repo}/?create=true");

    let health = client.get(format!("{}/health/live", server.url())).send().await?;
    assert!(health.status().is_success());

    let anonymous = client.post(create("repo-a")).send().await?;
    assert!(matches!(anonymous.status().as_u16(), 401 | 403), "anonymous: {}", anonymous.status());
    let wrong =
        client.post(create("repo-a")).basic_auth(server.username(), Some("wrong-password")).send().await?;
    assert!(matches!(wrong.status().as_u16(), 401 | 403), "wrong password: {}", wrong.status());
    let unknown_user =
        client.post(create("repo-a")).basic_auth("intruder", Some(server.password())).send().await?;
    assert!(matches!(unknown_user.status().as_u16(), 401 | 403), "unknown user: {}", unknown_user.status());
    // A list request without credentials must be refused, not crash the server.
    let list = client.get(format!("{}/keys/", server.repo_url("repo-a"))).send().await?;
    assert!(matches!(list.status().as_u16(), 401 | 403), "anonymous list: {}", list.status());
    assert!(server.is_running());

    let ok =
        client.post(create("repo-a")).basic_auth(server.username(), Some(server.password())).send().await?;
    assert!(ok.status().is_success(), "storage user: {}", ok.status());

    // Any single-level name works once allowed (the server restarts on the same port).
    let machine = uuid::Uuid::new_v4().to_string();
    let before =
        client.post(create(&machine)).basic_auth(server.username(), Some(server.password())).send().await?;
    assert_eq!(before.status().as_u16(), 403, "not yet allowed");
    let restarted = Instant::now();
    server.allow_repo(&machine)?;
    eprintln!("rustic-server restart for a new repository in {:.2?}", restarted.elapsed());
    let after =
        client.post(create(&machine)).basic_auth(server.username(), Some(server.password())).send().await?;
    assert!(after.status().is_success(), "after allow_repo: {}", after.status());
    assert!(server.data_dir().join(&machine).join("data").is_dir());
    // The first repository survived the restart.
    assert!(server.data_dir().join("repo-a").join("keys").is_dir());

    // A client that trusts another CA refuses the server's certificate.
    let other_ca = TestPki::unrelated_ca()?;
    let stranger = https_client(other_ca.cert_pem(), None)?;
    let refused = stranger.get(format!("{}/health/live", server.url())).send().await;
    assert!(refused.is_err(), "a certificate from another CA must not be trusted");

    // Plain HTTP is not served.
    let plain =
        reqwest::Client::new().get(format!("http://127.0.0.1:{}/health/live", server.port())).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // Polling helper for async tests.
    let polled = wait_until_async("health", Duration::from_secs(5), Duration::from_millis(20), || async {
        client.get(format!("{}/health/live", server.url())).send().await?.error_for_status()
    })
    .await?;
    assert!(polled.status().is_success());
    Ok(())
}
