//! cofre-store with several controller addresses (#13): a store enrolled with both replicas'
//! addresses (`cofre-store enroll --controller A --controller B`) is connected to A when A is
//! killed with SIGKILL; it keeps serving, moves to B within its reconnect backoff, sends B its
//! whole inventory, and a machine revoked through B is refused by the store.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::harness::pki::https_client;
use crate::harness::procs::wait_until_async;
use crate::harness::store::wait_until_refused;
use crate::store::{fixture_with_replica, protect, write_files};

/// The controller address of each "connected to the controller" line of a store's log, in
/// order (the log may carry colour codes: the address ends at the first space or escape).
/// What the store logs each time its session ends and it waits before the next try.
const RECONNECT: &str = "reconnecting to the controller later";

fn connections(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("connected to the controller"))
        .filter_map(|l| {
            let at = l.find("https://")?;
            let url = &l[at..];
            let end = url.find(|c: char| c.is_whitespace() || c == '\u{1b}').unwrap_or(url.len());
            Some(url[..end].to_string())
        })
        .collect()
}

/// The last reconnect delay the store logged, in milliseconds (`retry_in_ms=N`, maybe with
/// colour codes around the `=`).
fn last_backoff_ms(log: &str) -> Option<u64> {
    let line = log.lines().rfind(|l| l.contains(RECONNECT))?;
    let mut rest = &line[line.find("retry_in_ms")?..];
    rest = &rest[rest.find('=')? + 1..];
    while let Some(code) = rest.strip_prefix('\u{1b}') {
        rest = &code[code.find('m')? + 1..];
    }
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moves_to_the_surviving_replica_and_takes_its_revocations() -> Result<()> {
    let (mut f, mut b) = fixture_with_replica("store_failover").await?;
    let source = f.tmp.path().join("source");
    write_files(&source, 3, 10_000, 3)?;
    let p = protect(&f, &source).await?;
    let identity = p.agent.identity_pem()?;
    let http = https_client(&f.store.ca_pem(), Some(&identity))?;
    let config_url = format!("{}{}/config", f.store.url(), p.machine);
    assert_eq!(http.head(&config_url).send().await?.status(), 200);

    // The store is connected to the first address (it answered).
    let before_log = f.store.log();
    let before = connections(&before_log);
    let reconnects_before = before_log.matches(RECONNECT).count();
    assert_eq!(before.last(), Some(&f.ctrl.grpc_url()), "store log:\n{}", f.store.log());
    f.ctrl.kill9()?;
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();
    // It keeps serving from the access list it holds.
    assert_eq!(http.head(&config_url).send().await?.status(), 200, "store log:\n{}", f.store.log());

    let store = &f.store;
    let b_url = b.grpc_url();
    let moved_after = wait_until_async(
        "the store connects to the surviving replica",
        Duration::from_secs(90),
        Duration::from_millis(20),
        || {
            let now = connections(&store.log());
            let (seen, b_url) = (before.len(), b_url.clone());
            async move {
                if now.len() > seen && now.last() == Some(&b_url) {
                    Ok(killed.elapsed())
                } else {
                    Err(format!("connections: {now:?}"))
                }
            }
        },
    )
    .await
    .with_context(|| format!("store log:\n{}", store.log()))?;
    let log = store.log();
    let waited_ms = last_backoff_ms(&log).context("the store logged its reconnect delay")?;
    println!(
        "store failover: connected to the surviving replica {} ms after the kill (its backoff: {waited_ms} ms)",
        moved_after.as_millis()
    );
    // The move happened at the first try after that delay (counted, not timed: how long a
    // handshake takes on a loaded machine is not the property).
    let delays = log.matches(RECONNECT).count() - reconnects_before;
    assert_eq!(delays, 1, "moved after {delays} reconnect delays (the last {waited_ms} ms)\n{log}");
    let remembered = std::fs::read_to_string(store.state_dir().join("last-controller"))?;
    assert_eq!(remembered.trim(), b_url, "the store remembers the address that answered");

    // Its whole inventory reaches the survivor again.
    let admin_b = b.admin().await?;
    let store_id = f.store_id;
    let machine = p.machine.to_string();
    wait_until_async(
        "the survivor has the store's inventory",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (admin, machine) = (admin_b.clone(), machine.clone());
            async move {
                let inventory = admin.store_inventory(store_id).await.map_err(|e| e.to_string())?;
                match inventory.iter().find(|r| r.path == machine) {
                    Some(r) if r.reported_at > killed_at && r.has_config => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await?;

    // A revocation made through the survivor reaches the store.
    let started = Instant::now();
    admin_b.revoke_machine(p.machine).await?;
    wait_until_refused(&f.store, &http, &config_url).await.context("revoked through the survivor")?;
    println!(
        "store failover: the revocation made through the survivor reached the store in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    b.stop()?;
    Ok(())
}
