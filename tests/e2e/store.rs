//! cofre-store end to end: a store enrolled with the controller serves the per-machine
//! repositories; the controller initialises them with its maintenance identity, agents back
//! up with their own certificates (append-only), the restic CLI reads everything, revocation
//! reaches the store at once, the store serves from its stored access list while the
//! controller is away, a kill -9 mid-upload leaves no partial object, and quotas stop uploads.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cofre_client::{Client, NewEnrollmentToken, NewRepository};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::harness::cofre::{Agent, Controller};
use crate::harness::pg::PgCluster;
use crate::harness::pki::{TestPki, https_client};
use crate::harness::procs::wait_until_async;
use crate::harness::protect::Protect;
pub(crate) use crate::harness::protect::Protected;
use crate::harness::restic::{Restic, restored_path};
use crate::harness::store::{CofreStore, StoreUser, wait_until_refused};
use crate::harness::tree::{self, CompareOptions};

const AUDITOR: &str = "auditor";
const AUDITOR_PASSWORD: &str = "auditor-password";

pub(crate) struct Fixture {
    pub tmp: tempfile::TempDir,
    _pg: PgCluster,
    pki: TestPki,
    pub ctrl: Controller,
    pub admin: Client,
    pub store: CofreStore,
    pub store_id: Uuid,
}

/// Controller, store (registered, enrolled, running) with a read-only `auditor` user and a
/// certificate from the test CA.
pub(crate) async fn fixture(name: &str) -> Result<Fixture> {
    fixture_with(name, true, "").await
}

/// Like [`fixture`], with more controller configuration (whole TOML tables).
pub(crate) async fn fixture_configured(name: &str, extra_toml: &str) -> Result<Fixture> {
    fixture_with(name, true, extra_toml).await
}

/// Like [`fixture`]; without `own_certificate` the store serves with the certificate Cofre's
/// CA issues it at enrollment.
async fn fixture_with(name: &str, own_certificate: bool, extra_toml: &str) -> Result<Fixture> {
    Ok(fixture_replicated(name, own_certificate, extra_toml, false).await?.0)
}

/// Like [`fixture`] plus a second controller replica on the same database; the store is
/// enrolled with both addresses, the first replica's first.
pub(crate) async fn fixture_with_replica(name: &str) -> Result<(Fixture, Controller)> {
    let (f, replica) = fixture_replicated(name, true, "", true).await?;
    Ok((f, replica.context("the replica")?))
}

async fn fixture_replicated(
    name: &str,
    own_certificate: bool,
    extra_toml: &str,
    replica: bool,
) -> Result<(Fixture, Option<Controller>)> {
    let tmp = tempfile::Builder::new().prefix(&format!("cofre-e2e-{name}-")).tempdir()?;
    let pg = PgCluster::start()?;
    let pki = TestPki::new()?;
    let ctrl = Controller::start_with(&pg, &tmp.path().join("controller"), name, extra_toml)?;
    let replica = if replica { Some(ctrl.replica(&tmp.path().join("replica"))?) } else { None };
    let admin = ctrl.admin().await?;
    let mut store = CofreStore::with_tls(
        own_certificate.then_some(&pki.ca),
        &[StoreUser { name: AUDITOR, password: AUDITOR_PASSWORD, mode: "read-only", repositories: &["*"] }],
    )?;
    let mut urls = vec![ctrl.grpc_url()];
    urls.extend(replica.as_ref().map(Controller::grpc_url));
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let store_id = store.register_with(&admin, &urls).await?;
    store.start()?;
    Ok((Fixture { tmp, _pg: pg, pki, ctrl, admin, store, store_id }, replica))
}

impl Fixture {
    /// The CA a repository on this store must name: the test CA when the store serves the
    /// test CA's certificate; none when it serves the one Cofre's CA issued (the controller
    /// adds its own CA then).
    pub(crate) fn repository_ca(&self) -> Option<String> {
        (!self.store.uses_cofre_certificate()).then(|| self.pki.ca.cert_pem().into())
    }
}

/// An enrolled, running agent with one policy backing `source` up to its own repository on
/// the store (initialised by the controller through the store).
pub(crate) async fn protect(f: &Fixture, source: &Path) -> Result<Protected> {
    let repository = NewRepository {
        name: "store".into(),
        url: f.store.url(),
        per_machine: true,
        ca_certificate_pem: f.repository_ca(),
        ..Default::default()
    };
    Protect::new(&f.admin, repository, &f.ctrl.grpc_url(), &f.tmp.path().join("agent"), source)
        .run()
        .await
        .with_context(|| format!("store log:\n{}\ncontroller log:\n{}", f.store.log(), f.ctrl.log()))
}

pub(crate) fn write_files(dir: &Path, count: usize, size: usize, seed: u8) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..count {
        let mut content = vec![0u8; size];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (u64::from(seed) << 32) ^ i as u64;
        for b in &mut content {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(dir.join(format!("file-{seed}-{i:04}.bin")), content)?;
    }
    Ok(())
}

/// restic as the read-only auditor (`--no-lock`: it may not write a lock file).
pub(crate) fn auditor_restic(f: &Fixture, machine: Uuid, repository_password: &str) -> Restic {
    Restic::new(
        f.store.restic_repository(AUDITOR, AUDITOR_PASSWORD, &machine.to_string()),
        repository_password,
        Some(&f.store.ca_pem_path()),
        &f.tmp.path().join("restic-cache-auditor"),
    )
}

/// restic as the machine itself: its certificate, as someone with root on it could.
pub(crate) fn machine_restic(
    f: &Fixture,
    p: &Protected,
    repository_password: &str,
) -> Result<std::process::Command> {
    let r = Restic::new(
        f.store.restic_repository_cert(&p.machine.to_string()),
        repository_password,
        Some(&f.store.ca_pem_path()),
        &f.tmp.path().join("restic-cache-machine"),
    );
    let mut cmd = r.command();
    cmd.arg("--tls-client-cert").arg(p.agent.state_dir.join("identity.pem"));
    Ok(cmd)
}

async fn run_backup(f: &Fixture, p: &Protected) -> Result<cofre_client::Job> {
    let job = f.admin.run_now(p.machine, p.policy, None).await?;
    Ok(f.admin.wait_for_job(job.id, Duration::from_secs(300)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_write_to_their_own_repository_on_cofre_store_and_cannot_erase_history() -> Result<()> {
    let f = fixture("store_backup").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 50, 40_000, 1)?;
    write_files(&source.join("nested/deeper"), 20, 3_000, 2)?;
    let p = protect(&f, &source).await?;
    let plan = p.agent.stored_plan()?;
    let repo = plan.repositories.first().context("plan has a repository")?;
    assert!(repo.client_certificate, "the plan tells the agent to use its certificate: {repo:?}");
    assert!(repo.username.is_empty() && repo.password.is_empty(), "no shared credential in the plan");

    let job = run_backup(&f, &p).await?;
    assert_eq!(job.state, "succeeded", "{job:?}\nagent:\n{}\nstore:\n{}", p.agent.log(), f.store.log());
    let snapshot = job.snapshot_id.clone().context("snapshot id")?;

    // The restic CLI, as the read-only auditor, sees and restores exactly that snapshot.
    let auditor = auditor_restic(&f, p.machine, &repo.repository_password);
    let out = auditor.run(["--no-lock", "snapshots", "--json"])?;
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"].as_str(), Some(snapshot.as_str()));
    auditor.run(["--no-lock", "check", "--read-data"])?;
    let target = f.tmp.path().join("restore");
    auditor.run([
        "--no-lock",
        "restore",
        snapshot.as_str(),
        "--target",
        target.to_str().context("utf-8")?,
    ])?;
    let diffs = tree::compare_dirs(&source, &restored_path(&target, &source), &CompareOptions::default())?;
    diffs.assert_none("restore through cofre-store");
    // ...and may not write.
    let denied = auditor.run_unchecked(["backup", source.to_str().context("utf-8")?])?;
    assert!(!denied.status.success(), "a read-only user cannot back up");

    // The machine's own certificate cannot erase history, even in the hands of root on it.
    let forget =
        machine_restic(&f, &p, &repo.repository_password)?.args(["forget", snapshot.as_str()]).output()?;
    assert!(!forget.status.success(), "forget with the machine's certificate must fail");
    let out = auditor.run(["--no-lock", "snapshots", "--json"])?;
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(snaps.len(), 1, "the snapshot is still there");
    // Another enrolled machine's certificate reaches nothing of this machine's.
    let token =
        f.admin.create_enrollment_token(&NewEnrollmentToken { uses: Some(1), ..Default::default() }).await?;
    let other = Agent::new(&f.tmp.path().join("other-agent"));
    let out = other.enroll(&f.ctrl.grpc_url(), &token.token)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let http = https_client(&f.store.ca_pem(), Some(&other.identity_pem()?))?;
    let config_url = format!("{}{}/config", f.store.url(), p.machine);
    let resp = http.head(&config_url).send().await?;
    assert!(resp.status() == 403 || resp.status() == 404, "another machine: {}", resp.status());
    let resp = http.delete(format!("{}{}/snapshots/{snapshot}", f.store.url(), p.machine)).send().await?;
    assert!(resp.status() == 403 || resp.status() == 404, "another machine: {}", resp.status());
    // A certificate from another CA does not even complete the TLS handshake usefully.
    let stranger = f.pki.ca.issue_client_cert(&p.machine.to_string())?;
    let http = https_client(&f.store.ca_pem(), Some(&std::fs::read_to_string(&stranger.bundle_path)?))?;
    match http.head(&config_url).send().await {
        Ok(r) => assert!(r.status().is_client_error(), "foreign CA: {}", r.status()),
        Err(e) => eprintln!("foreign CA refused at TLS: {e}"),
    }

    // A snapshot written outside Cofre (restic by hand, with the machine's certificate: append
    // is allowed) shows up in the inventory as unrecorded.
    let extra = f.tmp.path().join("by-hand");
    write_files(&extra, 3, 1000, 3)?;
    let by_hand = machine_restic(&f, &p, &repo.repository_password)?
        .args(["backup", "--json", extra.to_str().context("utf-8")?])
        .output()?;
    assert!(by_hand.status.success(), "{}", String::from_utf8_lossy(&by_hand.stderr));
    let out = auditor.run(["--no-lock", "snapshots", "--json"])?;
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let unrecorded: String = snaps
        .iter()
        .filter_map(|s| s["id"].as_str())
        .find(|id| *id != snapshot)
        .context("second")?
        .to_string();
    let path = p.machine.to_string();
    let inv = wait_until_async(
        "the inventory shows the unrecorded snapshot",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let admin = f.admin.clone();
            let (path, unrecorded, id) = (path.clone(), unrecorded.clone(), f.store_id);
            async move {
                let items = admin.store_inventory(id).await.map_err(|e| e.to_string())?;
                match items.into_iter().find(|i| i.path == path) {
                    Some(i) if i.unrecorded_snapshots == vec![unrecorded] => Ok(i),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await?;
    assert_eq!(inv.machine_id, Some(p.machine));
    assert_eq!(inv.snapshot_objects, 2);
    assert!(inv.size_bytes > 2_000_000 && inv.data_objects > 0 && inv.has_config, "{inv:?}");
    assert!(inv.last_snapshot_at.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_store_at_once_and_the_store_serves_while_the_controller_is_away() -> Result<()>
{
    let mut f = fixture_with("store_revoke", false, "").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 5, 10_000, 1)?;
    let p = protect(&f, &source).await?;
    let identity = p.agent.identity_pem()?;
    let http = https_client(&f.store.ca_pem(), Some(&identity))?;
    let config_url = format!("{}{}/config", f.store.url(), p.machine);
    assert_eq!(http.head(&config_url).send().await?.status(), 200);

    // Controller gone, store restarted: it serves from the access list it stored.
    f.ctrl.kill9()?;
    f.store.kill9()?;
    f.store.start()?;
    let job = f.admin.run_now(p.machine, p.policy, None).await.err();
    assert!(job.is_some(), "the controller is down");
    assert_eq!(http.head(&config_url).send().await?.status(), 200, "store log:\n{}", f.store.log());

    // Controller back: wait until the store has reconnected, then revoke the machine.
    let back = chrono::Utc::now();
    f.ctrl.restart()?;
    let admin = f.ctrl.admin().await?;
    wait_until_async("the store reconnects", Duration::from_secs(120), Duration::from_millis(200), || {
        let admin = admin.clone();
        let id = f.store_id;
        async move {
            match admin.get_store(id).await {
                Ok(s) if s.last_seen_at.is_some_and(|t| t > back) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    let started = Instant::now();
    admin.revoke_machine(p.machine).await?;
    wait_until_refused(&f.store, &http, &config_url).await?;
    eprintln!("revocation reached cofre-store in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

/// Every object file below `dir` is complete: its SHA-256 is its name. No temp file remains.
fn assert_objects_whole(dir: &Path) -> Result<usize> {
    let mut checked = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_dir() {
                stack.push(e.path());
                continue;
            }
            assert!(!name.starts_with('.'), "a temp file remains: {}", e.path().display());
            if name == "config" {
                continue;
            }
            let digest = hex::encode(Sha256::digest(std::fs::read(e.path())?));
            assert_eq!(digest, name, "partial or corrupt object {}", e.path().display());
            checked += 1;
        }
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_mid_upload_keeps_only_whole_objects_and_quotas_stop_uploads() -> Result<()> {
    let mut f = fixture("store_crash").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 120, 1_000_000, 7)?;
    let p = protect(&f, &source).await?;
    let repo_dir = f.store.data_dir().join(p.machine.to_string());

    // kill -9 as soon as pack files are arriving.
    let job = f.admin.run_now(p.machine, p.policy, None).await?;
    let data = repo_dir.join("data");
    crate::harness::procs::wait_until(
        "uploads in progress",
        Duration::from_secs(120),
        Duration::from_millis(5),
        || {
            let packs = walk_count(&data);
            if packs >= 1 { Ok(()) } else { Err(format!("{packs} packs")) }
        },
    )?;
    f.store.kill9()?;
    f.store.start()?;
    let first = f.admin.wait_for_job(job.id, Duration::from_secs(300)).await?;
    eprintln!("job during the crash: {} {:?}", first.state, first.error_message);
    let objects = assert_objects_whole(&repo_dir)?;
    assert!(objects > 0);

    // The next backup succeeds and the repository checks clean.
    let job = run_backup(&f, &p).await?;
    assert_eq!(job.state, "succeeded", "{job:?}\n{}", p.agent.log());
    let plan = p.agent.stored_plan()?;
    let password = plan.repositories[0].repository_password.clone();
    let auditor = auditor_restic(&f, p.machine, &password);
    auditor.run(["--no-lock", "check", "--read-data"])?;
    assert_objects_whole(&repo_dir)?;

    // A machine quota below what new data needs: the upload is refused, nothing partial stays.
    let before = walk_count(&data);
    let quota = dir_size(&repo_dir) + 200_000;
    // Read before the change: the controller may push the new list before a read after it.
    let version_before = f.admin.get_store(f.store_id).await?.access_list_version;
    f.admin.set_machine_quota(p.machine, Some(quota)).await?;
    wait_until_async("the store gets the quota", Duration::from_secs(30), Duration::from_millis(100), || {
        let admin = f.admin.clone();
        let id = f.store_id;
        async move {
            match admin.get_store(id).await {
                Ok(s) if s.access_list_version != version_before => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    write_files(&source.join("new"), 10, 1_000_000, 8)?;
    let refused = run_backup(&f, &p).await?;
    assert_eq!(refused.state, "failed", "{refused:?}");
    let msg = refused.error_message.clone().unwrap_or_default();
    assert!(msg.contains("507") || msg.to_lowercase().contains("insufficient storage"), "{msg}");
    assert_objects_whole(&repo_dir)?;
    assert!(dir_size(&repo_dir) <= quota, "the repository stays within its quota");
    auditor.run(["--no-lock", "check"])?;
    eprintln!("quota refusal: {msg} ({} packs before, {} after)", before, walk_count(&data));

    // Quota lifted: the backup goes through.
    f.admin.set_machine_quota(p.machine, None).await?;
    let ok = wait_until_async(
        "backup after the quota is lifted",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let f = &f;
            let p = &p;
            async move {
                let j = run_backup(f, p).await.map_err(|e| e.to_string())?;
                if j.state == "succeeded" { Ok(j) } else { Err(format!("{j:?}")) }
            }
        },
    )
    .await?;
    assert!(ok.snapshot_id.is_some());
    auditor.run(["--no-lock", "check", "--read-data"])?;
    Ok(())
}

fn walk_count(dir: &Path) -> usize {
    walk(dir).len()
}

fn dir_size(dir: &Path) -> u64 {
    walk(dir).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}
