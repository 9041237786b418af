//! The store's side of its session with the controller: enroll once with a token (the key
//! never leaves this machine, the controller's CA is pinned by the token), then dial out with
//! mutual TLS to one of the controller's addresses (its replicas, tried in turn from the one
//! that answered last, `cofre_dial::failover`), take the access list whenever it changes (stored on disk before it is applied),
//! report the inventory (everything after connecting, then what changed) and renew the
//! certificate at 2/3 of its lifetime. While the controller is away the store keeps serving
//! from the last access list it stored.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use cofre_dial::failover::{Failure, try_in_turn};
use cofre_proto::store::v1 as pb;
use pb::controller_message::Msg as In;
use pb::store_message::Msg as Out;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::StoreState;
use crate::access::{AccessList, GroupQuota, MachineGrant};
use crate::report::{MAX_REPORT_BYTES, MAX_REPORT_REPOSITORIES, batches, to_pb};
use crate::state::{Enrollment, StateDir};

/// Changes are reported at most this often.
const REPORT_DEBOUNCE: Duration = Duration::from_secs(2);

/// `cofre-store enroll`: exchanges a token from `cofre store add` for this store's certificate.
/// `controllers` are the controller's addresses (its replicas), tried in turn: the first
/// reachable one enrolls the store, a refusal is final. Every address is kept, in order.
pub async fn enroll(
    state: &StateDir,
    controllers: &[String],
    token: &str,
    force: bool,
) -> anyhow::Result<Enrollment> {
    if state.is_enrolled() && !force {
        bail!(
            "this store is already enrolled (state in {}); use --force to enroll again",
            state.root().display()
        );
    }
    let token = cofre_dial::parse_token(token)?;
    let urls = cofre_dial::controller_urls(controllers)?;
    let (key_pem, csr_der) = cofre_dial::new_key_and_csr()?;
    let ((resp, ca_pem), answered) = try_in_turn(controllers, 0, |i, _| {
        let (url, token, csr_der) = (&urls[i], &token, csr_der.clone());
        async move {
            let (channel, ca_pem) =
                cofre_dial::enrollment_channel(url, token).await.map_err(Failure::unreachable)?;
            let mut client = pb::store_service_client::StoreServiceClient::new(channel);
            let req = pb::EnrollRequest {
                token: token.whole.clone(),
                csr_der,
                store_version: env!("CARGO_PKG_VERSION").into(),
            };
            Failure::from_answer(client.enroll(req).await, "the controller refused enrollment")
                .map(|resp| (resp, ca_pem))
        }
    })
    .await?;
    cofre_dial::check_returned_ca(&resp.ca_certificate_pem, &ca_pem, &token)?;
    let e = Enrollment {
        store_id: resp.store_id,
        controller_url: controllers[0].clone(),
        controller_urls: if controllers.len() > 1 { controllers.to_vec() } else { Vec::new() },
        url: resp.url,
        ca_fingerprint: token.ca_fingerprint.clone(),
    };
    state.save_enrollment(&e, &ca_pem, &resp.certificate_pem, &resp.server_certificate_pem, &key_pem)?;
    cofre_dial::failover::save_answered(&state.last_controller_path(), &controllers[answered])?;
    Ok(e)
}

/// Converts the controller's list, skipping (and logging) malformed entries rather than
/// refusing the whole list.
pub fn access_list_from_pb(list: pb::AccessList) -> AccessList {
    let parse = |s: &str| Uuid::try_parse(s).ok();
    let machines = list
        .machines
        .into_iter()
        .filter_map(|m| {
            let Some(machine_id) = parse(&m.machine_id) else {
                tracing::warn!(machine = %m.machine_id, "ignoring an access-list entry with a malformed machine id");
                return None;
            };
            Some(MachineGrant {
                machine_id,
                group_id: parse(&m.group_id),
                repositories: m.repositories,
                quota_bytes: m.quota_bytes,
                revoked_serials: m.revoked_serials,
            })
        })
        .collect();
    let groups = list
        .groups
        .into_iter()
        .filter_map(|g| Some(GroupQuota { group_id: parse(&g.group_id)?, quota_bytes: g.quota_bytes }))
        .collect();
    AccessList { version: list.version, machines, groups }
}

/// Connects forever, with capped, jittered backoff between attempts; each attempt tries the
/// controller's addresses in turn, from the one that answered last.
pub async fn run_forever(store: StoreState, state: StateDir) {
    let mut backoff = cofre_dial::Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        match connect_once(&store, &state).await {
            Ok(()) => tracing::warn!("controller closed the session"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "session with the controller ended"),
        }
        let wait = backoff.after(started.elapsed());
        tracing::info!(retry_in_ms = wait.as_millis() as u64, "reconnecting to the controller later");
        tokio::time::sleep(wait).await;
    }
}

async fn connect_once(store: &StoreState, state: &StateDir) -> anyhow::Result<()> {
    let e = state.enrollment()?;
    let (cert_pem, key_pem) = state.certificate()?;
    let ca_pem = state.ca_pem()?;
    let controllers = controllers(store, &e);
    let (channel, answered) = cofre_dial::session_channel_remembered(
        &controllers,
        &state.last_controller_path(),
        &ca_pem,
        &cert_pem,
        &key_pem,
    )
    .await?;
    let controller = &controllers[answered];
    let mut client = pb::store_service_client::StoreServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::StoreMessage>(16);
    tx.send(pb::StoreMessage {
        msg: Some(Out::Hello(pb::Hello {
            access_list_version: store.access_list().version,
            store_version: env!("CARGO_PKG_VERSION").into(),
        })),
    })
    .await?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("the controller refused the session: {}", s.message()))?
        .into_inner();
    tracing::info!(controller = %controller, store.id = %e.store_id, "connected to the controller");
    let reporter = tokio::spawn(report(store.clone(), tx.clone()));
    let result = receive(store, state, &tx, &mut inbound, &cert_pem).await;
    reporter.abort();
    result
}

/// The controller's addresses: the configuration's `controllers` when it lists any, else the
/// enrollment's.
fn controllers(store: &StoreState, e: &Enrollment) -> Vec<String> {
    let configured = &store.settings().controllers;
    if configured.is_empty() { e.controllers() } else { configured.clone() }
}

/// Sends the whole inventory, then what changed (debounced), and heartbeats.
async fn report(store: StoreState, tx: mpsc::Sender<pb::StoreMessage>) {
    let send = |repositories: Vec<pb::RepositoryInventory>, full_sync_end: bool| {
        let tx = tx.clone();
        async move {
            tx.send(pb::StoreMessage {
                msg: Some(Out::Inventory(pb::InventoryReport { repositories, full_sync_end })),
            })
            .await
            .is_ok()
        }
    };
    let mut changes = store.subscribe_inventory();
    let mut sent: HashMap<String, pb::RepositoryInventory> = HashMap::new();
    let mut first = true;
    loop {
        let now: Vec<pb::RepositoryInventory> = store.inventory().iter().map(to_pb).collect();
        let changed: Vec<pb::RepositoryInventory> =
            now.into_iter().filter(|r| sent.get(&r.path) != Some(r)).collect();
        for r in &changed {
            sent.insert(r.path.clone(), r.clone());
        }
        let batches = batches(changed, MAX_REPORT_BYTES, MAX_REPORT_REPOSITORIES);
        let count = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let last = first && i + 1 == count;
            if !send(batch, last).await {
                return;
            }
        }
        if first && count == 0 && !send(Vec::new(), true).await {
            return;
        }
        first = false;
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(REPORT_DEBOUNCE).await;
            }
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                if tx.send(pb::StoreMessage { msg: Some(Out::Heartbeat(pb::Heartbeat {})) }).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn receive(
    store: &StoreState,
    state: &StateDir,
    tx: &mpsc::Sender<pb::StoreMessage>,
    inbound: &mut tonic::Streaming<pb::ControllerMessage>,
    cert_pem: &str,
) -> anyhow::Result<()> {
    let mut pending_key: Option<String> = None;
    let mut renewal = cofre_dial::Renewal::of(cert_pem, cofre_dial::mtime_secs(&state.identity_path()));
    let mut renew_check = tokio::time::interval(renewal.check_every);
    loop {
        tokio::select! {
            _ = renew_check.tick() => {
                if pending_key.is_none() && renewal.is_due() {
                    let (key, csr) = cofre_dial::new_key_and_csr()?;
                    pending_key = Some(key);
                    tracing::info!("certificate at 2/3 of its lifetime: requesting a new one");
                    tx.send(pb::StoreMessage { msg: Some(Out::Renew(pb::RenewCertificate { csr_der: csr })) }).await?;
                }
            }
            msg = inbound.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(status)) => bail!("controller: {} ({:?})", status.message(), status.code()),
                    None => return Ok(()),
                };
                match msg.msg {
                    Some(In::AccessList(list)) => {
                        let list = access_list_from_pb(list);
                        // On disk first: a restart serves the list the controller last sent.
                        state.save_access_list(&list)?;
                        store.set_access_list(list);
                    }
                    Some(In::CertificateRenewed(c)) => {
                        if let Some(key) = pending_key.take() {
                            // The server certificate first: a crash between the two writes
                            // leaves a usable pair in each file.
                            if let Some(pem) = state.save_server_certificate(&c.server_certificate_pem, &key)? {
                                store.set_server_certificate(&pem)?;
                            }
                            state.save_certificate(&c.certificate_pem, &key)?;
                            renewal = cofre_dial::Renewal::of(&c.certificate_pem, chrono::Utc::now().timestamp());
                            tracing::info!("certificate renewed; the next connection uses it");
                        }
                    }
                    None => {}
                }
            }
        }
    }
}
