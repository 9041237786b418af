//! The session with the controller: dial out with mutual TLS (to the first reachable of the
//! controller's addresses, starting with the one that answered last), say Hello, deliver the spool,
//! take plans, run-now requests, acknowledgements and renewed certificates; reconnect with
//! capped, jittered backoff, or later when the controller says so (a `retry-after` on the
//! status it ended the session with: a machine awaiting approval, too many results at once, a
//! renewal too soon). Everything else keeps working while disconnected, and nothing in the
//! spool is dropped because of a refusal. The session's answer carries the controller's time
//! (its `date` header): a machine clock more than a minute off follows the controller's. A
//! certificate that expired while the controller was out of reach can never be renewed over a
//! session: the agent then says it needs re-enrollment and waits for a new certificate
//! (`cofre-agent enroll --reenroll`), backing up and spooling meanwhile.

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
    let mut expired_said: Option<tokio::time::Instant> = None;
    loop {
        if let Some(expired_at) = agent.certificate_expired() {
            // No controller can accept it, and no session can renew it: say so clearly (at once,
            // then hourly) and wait for `cofre-agent enroll --reenroll` to put a new one in place.
            if expired_said.is_none_or(|t| t.elapsed() >= NEEDS_REENROLLMENT_REPEAT) {
                tracing::error!(
                    expired_at = %expired_at,
                    "this machine's certificate expired while the controller was out of reach: it needs \
                     re-enrollment. Backups go on from the stored plan and results stay in the spool. Ask an \
                     administrator for a new enrollment token and run `cofre-agent enroll --reenroll --token \
                     <token>`: the machine keeps its identity, repository and unsent results"
                );
                expired_said = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(REENROLLMENT_CHECK).await;
            continue;
        }
        if expired_said.take().is_some() {
            tracing::info!("a new certificate is in place (re-enrolled): connecting to the controller");
            backoff = cofre_dial::Backoff::default();
        }
        let started = tokio::time::Instant::now();
        let ended = connect_once(&agent, std::mem::take(&mut interrupted)).await;
        match &ended {
            Ok(()) => tracing::warn!("controller closed the session"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "session with the controller ended"),
        }
        let mut wait = reconnect_delay(&mut backoff, started.elapsed(), ended.as_ref().err());
        // Not past the certificate's end: an expiry is said when it happens, not a backoff later.
        if let Some(left) = agent.certificate_seconds_left() {
            wait = wait.min(Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1));
        }
        tracing::info!(retry_in_ms = wait.as_millis() as u64, "reconnecting to the controller later");
        tokio::time::sleep(wait).await;
    }
}

/// How often the agent says it is there when it has nothing else to send.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// How often an agent whose certificate expired looks for a re-enrolled one.
const REENROLLMENT_CHECK: Duration = Duration::from_secs(2);

/// How often it repeats that it needs re-enrollment.
const NEEDS_REENROLLMENT_REPEAT: Duration = Duration::from_secs(3600);

/// The controller's refusal of a session or end of it, as a status (code, message, metadata).
#[derive(Debug, thiserror::Error)]
#[error("{} ({:?})", .0.message(), .0.code())]
pub struct Ended(pub tonic::Status);

/// The most a controller may make an agent wait before it tries again.
const MAX_ASKED_DELAY: Duration = Duration::from_secs(3600);

/// How long to wait before connecting again: the backoff, or longer if the controller asked for
/// it (status metadata `retry-after`, in seconds, at most an hour).
pub fn reconnect_delay(
    backoff: &mut cofre_dial::Backoff,
    lasted: Duration,
    error: Option<&anyhow::Error>,
) -> Duration {
    let wait = backoff.after(lasted);
    let asked = error
        .and_then(|e| e.downcast_ref::<Ended>())
        .and_then(|Ended(status)| status.metadata().get("retry-after")?.to_str().ok()?.trim().parse().ok())
        .map_or(Duration::ZERO, |secs: u64| Duration::from_secs(secs).min(MAX_ASKED_DELAY));
    wait.max(asked)
}

async fn connect_once(agent: &Arc<Agent>, interrupted: Vec<String>) -> anyhow::Result<()> {
    let id = agent.state.identity()?;
    let (cert_pem, key_pem) = agent.state.certificate()?;
    let ca_pem = agent.state.ca_pem()?;
    let controllers = id.controllers();
    let (channel, answered) = cofre_dial::failover::session_channel_remembered(
        &controllers,
        &agent.state.last_controller_path(),
        &ca_pem,
        &cert_pem,
        &key_pem,
    )
    .await?;
    let controller = &controllers[answered];
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
    let answer = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::Error::new(Ended(s)).context("the controller refused the session"))?;
    // The controller's clock (its HTTP/2 `date` header): an agent whose clock is off follows it.
    match answer.metadata().get("date").and_then(|v| http_date(v.to_str().ok()?)) {
        Some(controller) => {
            let local = agent.local_now();
            let applied = agent.learn_controller_time(controller, local);
            tracing::debug!(
                measured_s = controller.duration_since(local).as_secs(),
                applied_s = applied.as_secs(),
                "compared this machine's clock with the controller's"
            );
        }
        None => tracing::debug!("the controller's answer carries no date: keeping this machine's clock"),
    }
    let mut inbound = answer.into_inner();
    tracing::info!(controller = %controller, machine.id = %id.machine_id, "connected to the controller");
    let sender = tokio::spawn(deliver(agent.clone(), tx.clone()));
    let result = receive(agent, &tx, &mut inbound, &cert_pem).await;
    sender.abort();
    result
}

/// Sends spooled events (all of them after connecting, then each new one), the running
/// backup's progress as it is sampled (the latest one at once after connecting; never spooled,
/// never acknowledged) and heartbeats.
async fn deliver(agent: Arc<Agent>, tx: mpsc::Sender<pb::AgentMessage>) {
    let mut sent: HashSet<String> = HashSet::new();
    let mut progress = agent.progress.subscribe();
    progress.mark_changed();
    // Its own timer: progress every 15 s must not keep postponing the heartbeat.
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notified = agent.spool.added.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        for mut ev in agent.spool.pending() {
            // Spooled by an older agent, it may be larger than the controller takes.
            crate::bounds::job_event(&mut ev);
            if sent.insert(ev.event_id.clone())
                && tx.send(pb::AgentMessage { msg: Some(Out::JobEvent(ev)) }).await.is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = &mut notified => {}
            changed = progress.changed() => {
                let latest = progress.borrow_and_update().clone();
                if changed.is_err() {
                    return;
                }
                if let Some(ev) = latest
                    && tx.send(pb::AgentMessage { msg: Some(Out::JobEvent(ev)) }).await.is_err()
                {
                    return;
                }
            }
            _ = heartbeat.tick() => {
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
                    Some(Err(status)) => return Err(anyhow::Error::new(Ended(status)).context("the controller ended the session")),
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

/// An HTTP date (`Wed, 02 Dec 2026 08:30:00 GMT`, RFC 9110's IMF-fixdate).
fn http_date(value: &str) -> Option<jiff::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    jiff::Timestamp::from_second(t.timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_date_header_is_read() {
        assert_eq!(http_date("Wed, 02 Dec 2026 08:30:00 GMT"), "2026-12-02T08:30:00Z".parse().ok());
        assert_eq!(http_date("yesterday"), None);
    }

    #[test]
    fn the_agent_waits_as_long_as_the_controller_asks_within_an_hour() {
        let refusal = |secs: &str| {
            let mut status = tonic::Status::resource_exhausted("too many job events");
            status.metadata_mut().insert("retry-after", secs.parse().unwrap());
            anyhow::Error::new(Ended(status)).context("the controller ended the session")
        };
        let mut backoff = cofre_dial::Backoff::default();
        let quick = Duration::from_secs(1);
        assert!(reconnect_delay(&mut backoff, quick, None) < Duration::from_secs(2));
        let asked = reconnect_delay(&mut backoff, quick, Some(&refusal("90")));
        assert_eq!(asked, Duration::from_secs(90));
        let capped = reconnect_delay(&mut backoff, quick, Some(&refusal("86400")));
        assert_eq!(capped, MAX_ASKED_DELAY);
        let other = anyhow::anyhow!("connection refused");
        assert!(reconnect_delay(&mut backoff, quick, Some(&other)) <= Duration::from_secs(90));
        assert!(reconnect_delay(&mut backoff, quick, Some(&refusal("nonsense"))) <= Duration::from_secs(90));
    }
}
