//! The session with the controller: dial out with mutual TLS, say Hello, deliver the spool,
//! take plans, run-now requests, acknowledgements and renewed certificates; reconnect with
//! capped, jittered backoff. Everything else keeps working while disconnected.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cofre_proto::agent::v1 as pb;
use pb::agent_message::Msg as Out;
use pb::controller_message::Msg as In;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use uuid::Uuid;

use crate::runner::{Agent, JobRequest};

/// SHA-256 of the first certificate in a PEM, lowercase hex.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

/// (not_before, not_after) of a PEM certificate, as RFC 3339 text, for people.
pub fn certificate_validity(pem: &str) -> Option<(String, String)> {
    let (nb, na) = validity(pem)?;
    let fmt = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
    Some((fmt(nb), fmt(na)))
}

/// (not_before, not_after) of a PEM certificate, as Unix seconds.
fn validity(pem: &str) -> Option<(i64, i64)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// When to renew: at 2/3 of the certificate's lifetime as this agent received it. The
/// controller backdates notBefore by a few minutes for clock skew, so the lifetime is counted
/// from when the certificate was stored here (the identity file's mtime), not from notBefore.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    due_at: i64,
    check_every: Duration,
}

impl Renewal {
    fn of(cert_pem: &str, received_at: i64) -> Renewal {
        match validity(cert_pem) {
            Some((nb, na)) => {
                let start = received_at.clamp(nb, na);
                let lifetime = na - start;
                Renewal {
                    due_at: start + lifetime * 2 / 3,
                    check_every: Duration::from_secs(
                        u64::try_from(lifetime / 20).unwrap_or(3600).clamp(1, 3600),
                    ),
                }
            }
            None => Renewal { due_at: 0, check_every: Duration::from_secs(60) },
        }
    }

    fn is_due(&self) -> bool {
        chrono::Utc::now().timestamp() >= self.due_at
    }
}

fn mtime_secs(path: &std::path::Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Connects forever, with capped, jittered exponential backoff between attempts.
pub async fn run_forever(agent: Arc<Agent>, interrupted: Vec<String>) {
    let mut backoff = Duration::from_secs(1);
    let mut interrupted = interrupted;
    loop {
        let started = tokio::time::Instant::now();
        match connect_once(&agent, std::mem::take(&mut interrupted)).await {
            Ok(()) => tracing::warn!("controller closed the session"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "session with the controller ended"),
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter);
        tracing::info!(retry_in_ms = wait.as_millis() as u64, "reconnecting to the controller later");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn connect_once(agent: &Arc<Agent>, interrupted: Vec<String>) -> anyhow::Result<()> {
    let id = agent.state.identity()?;
    let (cert_pem, key_pem) = agent.state.certificate()?;
    let ca_pem = agent.state.ca_pem()?;
    let url = url::Url::parse(&id.controller_url)?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .identity(Identity::from_pem(&cert_pem, &key_pem))
        .domain_name(host);
    let channel = Endpoint::from_shared(id.controller_url.clone())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach the controller at {}", id.controller_url))?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    tx.send(pb::AgentMessage {
        msg: Some(Out::Hello(pb::Hello {
            plan_version: agent.plan_version(),
            inventory: Some(crate::enroll::inventory()),
            interrupted_job_ids: interrupted,
        })),
    })
    .await?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("the controller refused the session: {}", s.message()))?
        .into_inner();
    tracing::info!(controller = %id.controller_url, machine.id = %id.machine_id, "connected to the controller");
    let sender = tokio::spawn(deliver(agent.clone(), tx.clone()));
    let result = receive(agent, &tx, &mut inbound, &cert_pem).await;
    sender.abort();
    result
}

/// Sends spooled events (all of them after connecting, then each new one) and heartbeats.
async fn deliver(agent: Arc<Agent>, tx: mpsc::Sender<pb::AgentMessage>) {
    let mut sent: HashSet<String> = HashSet::new();
    loop {
        let notified = agent.spool.added.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        for ev in agent.spool.pending() {
            if sent.insert(ev.event_id.clone())
                && tx.send(pb::AgentMessage { msg: Some(Out::JobEvent(ev)) }).await.is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                if tx.send(pb::AgentMessage { msg: Some(Out::Heartbeat(pb::Heartbeat {})) }).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn receive(
    agent: &Arc<Agent>,
    tx: &mpsc::Sender<pb::AgentMessage>,
    inbound: &mut tonic::Streaming<pb::ControllerMessage>,
    cert_pem: &str,
) -> anyhow::Result<()> {
    // A key generated for a renewal in flight; it becomes ours only with its certificate.
    let mut pending_key: Option<String> = None;
    let mut renewal = Renewal::of(cert_pem, mtime_secs(&agent.state.identity_pem_path()));
    let mut renew_check = tokio::time::interval(renewal.check_every);
    loop {
        tokio::select! {
            _ = renew_check.tick() => {
                if pending_key.is_none() && renewal.is_due() {
                    let (key, csr) = crate::enroll::new_key_and_csr()?;
                    pending_key = Some(key);
                    tracing::info!("certificate at 2/3 of its lifetime: requesting a new one");
                    tx.send(pb::AgentMessage { msg: Some(Out::Renew(pb::RenewCertificate { csr_der: csr })) }).await?;
                }
            }
            msg = inbound.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(status)) => anyhow::bail!("controller: {} ({:?})", status.message(), status.code()),
                    None => return Ok(()),
                };
                match msg.msg {
                    Some(In::Plan(plan)) => agent.set_plan(plan)?,
                    Some(In::RunNow(r)) => {
                        let Ok(job_id) = Uuid::try_parse(&r.job_id) else {
                            tracing::warn!(job = %r.job_id, "ignoring run-now with a malformed job id");
                            continue;
                        };
                        if agent.submit(JobRequest { job_id, policy_id: r.policy_id.clone(), trigger: pb::TriggerKind::RunNow }) {
                            tracing::info!(job.id = %job_id, policy = %r.policy_id, "run-now accepted");
                        }
                    }
                    Some(In::Ack(a)) => {
                        for id in &a.event_ids {
                            agent.spool.ack(id);
                        }
                    }
                    Some(In::CertificateRenewed(c)) => {
                        if let Some(key) = pending_key.take() {
                            agent.state.save_certificate(&c.certificate_pem, &key)?;
                            renewal = Renewal::of(&c.certificate_pem, chrono::Utc::now().timestamp());
                            tracing::info!("certificate renewed; the next connection uses it");
                        }
                    }
                    Some(In::PendingApproval(_)) => {
                        tracing::warn!("this machine is waiting for an administrator's approval; no plan yet");
                    }
                    None => {}
                }
            }
        }
    }
}
