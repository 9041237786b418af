//! The session with the controller: dial out with mutual TLS, say Hello, deliver the spool,
//! take plans, run-now requests, acknowledgements and renewed certificates; reconnect with
//! capped, jittered backoff. Everything else keeps working while disconnected.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cofre_proto::agent::v1 as pb;
use pb::agent_message::Msg as Out;
use pb::controller_message::Msg as In;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::runner::{Agent, JobRequest};

/// Connects forever, with capped, jittered exponential backoff between attempts.
pub async fn run_forever(agent: Arc<Agent>, interrupted: Vec<String>) {
    let mut backoff = cofre_dial::Backoff::default();
    let mut interrupted = interrupted;
    loop {
        let started = tokio::time::Instant::now();
        match connect_once(&agent, std::mem::take(&mut interrupted)).await {
            Ok(()) => tracing::warn!("controller closed the session"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "session with the controller ended"),
        }
        let wait = backoff.after(started.elapsed());
        tracing::info!(retry_in_ms = wait.as_millis() as u64, "reconnecting to the controller later");
        tokio::time::sleep(wait).await;
    }
}

async fn connect_once(agent: &Arc<Agent>, interrupted: Vec<String>) -> anyhow::Result<()> {
    let id = agent.state.identity()?;
    let (cert_pem, key_pem) = agent.state.certificate()?;
    let ca_pem = agent.state.ca_pem()?;
    let channel = cofre_dial::session_channel(&id.controller_url, &ca_pem, &cert_pem, &key_pem).await?;
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
                let hb = pb::Heartbeat { plan_version: agent.plan_version() };
                if tx.send(pb::AgentMessage { msg: Some(Out::Heartbeat(hb)) }).await.is_err() {
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
    let mut renewal =
        cofre_dial::Renewal::of(cert_pem, cofre_dial::mtime_secs(&agent.state.identity_pem_path()));
    let mut renew_check = tokio::time::interval(renewal.check_every);
    loop {
        tokio::select! {
            _ = renew_check.tick() => {
                if pending_key.is_none() && renewal.is_due() {
                    let (key, csr) = cofre_dial::new_key_and_csr()?;
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
                    Some(In::Plan(plan)) => {
                        let version = plan.version;
                        agent.set_plan(plan)?;
                        // Tell the controller at once which plan this machine runs now.
                        tx.send(pb::AgentMessage { msg: Some(Out::Heartbeat(pb::Heartbeat { plan_version: version })) }).await?;
                    }
                    Some(In::Cancel(c)) => match Uuid::try_parse(&c.job_id) {
                        Ok(job) => agent.cancel(job),
                        Err(_) => tracing::warn!(job = %c.job_id, "ignoring a cancel with a malformed job id"),
                    },
                    Some(In::RunNow(r)) => {
                        let Ok(job_id) = Uuid::try_parse(&r.job_id) else {
                            tracing::warn!(job = %r.job_id, "ignoring run-now with a malformed job id");
                            continue;
                        };
                        if agent.submit(JobRequest { job_id, policy_id: r.policy_id.clone(), trigger: pb::TriggerKind::RunNow, window_end: None }) {
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
                            renewal = cofre_dial::Renewal::of(&c.certificate_pem, chrono::Utc::now().timestamp());
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
