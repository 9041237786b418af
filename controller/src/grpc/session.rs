//! One agent session: identity from the verified client certificate, a database check on
//! open and on every machine event, the plan on connect and whenever it changes, run-now
//! jobs, idempotent ingestion of results with acknowledgements after commit, and
//! certificate renewal.
//!
//! A machine awaiting approval writes nothing: its results are refused with a retry delay and
//! stay in its spool. Session opens and job events are limited per machine (token buckets) and
//! renewals to one per hour; over a limit the session is refused or ends with
//! `RESOURCE_EXHAUSTED` and a `retry-after`. The first session with a renewed certificate
//! revokes the machine's older ones.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cofre_proto::agent::v1 as pb;
use futures::Stream;
use pb::agent_message::Msg as In;
use pb::controller_message::Msg as Out;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use super::error::retry_later;
use super::{End, SessionLimits};
use crate::error::Error;
use crate::events::Event;
use crate::machines::{self, SessionStanding};
use crate::state::AppState;
use crate::{jobs, plans};

pub type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

/// The machine id (CN) and serial of the verified client certificate.
fn identity<T>(req: &Request<T>) -> Result<(Uuid, String), Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a client certificate is required: enroll this agent first")
    })?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or_else(|| Status::unauthenticated("client certificate has no machine id"))?;
    let id =
        Uuid::try_parse(cn).map_err(|_| Status::unauthenticated("client certificate has no machine id"))?;
    Ok((id, crate::pki::serial_hex(cert.raw_serial())))
}

/// How long a machine awaiting approval waits before it offers its results again.
const PENDING_RETRY: Duration = Duration::from_secs(60);

pub async fn open(
    state: AppState,
    limits: Arc<SessionLimits>,
    req: Request<Streaming<pb::AgentMessage>>,
) -> Result<Response<OutStream>, Status> {
    let (machine, serial) = identity(&req)?;
    // Before any database work: a machine reconnecting in a loop costs a bucket lookup.
    if let Err(wait) = limits.opens.take(machine, std::time::Instant::now()) {
        tracing::warn!(machine.id = %machine, retry_after_s = wait.as_secs(), "session refused: too many opened by this machine");
        return Err(retry_later(
            Status::resource_exhausted("too many sessions opened by this machine; try again later"),
            wait,
        ));
    }
    let standing = machines::session_standing(&state.pool, machine, &serial).await?;
    let retired = machines::retire_predecessors(&state.pool, machine, &serial).await?;
    if !retired.is_empty() {
        tracing::info!(machine.id = %machine, serial = %serial, ?retired, "renewed certificate in use; older ones revoked");
    }
    let events = state.events.subscribe();
    let inbound = req.into_inner();
    let (tx, rx) = mpsc::channel::<Result<pb::ControllerMessage, Status>>(64);
    let session = Session {
        state,
        limits,
        machine,
        serial,
        standing,
        tx,
        sent_plan: None,
        held_plan: 0,
        sent_jobs: HashSet::new(),
        sent_cancels: HashSet::new(),
    };
    tokio::spawn(
        session.run(inbound, events).instrument(tracing::info_span!("session", machine.id = %machine)),
    );
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

struct Session {
    state: AppState,
    limits: Arc<SessionLimits>,
    machine: Uuid,
    serial: String,
    standing: SessionStanding,
    tx: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    sent_plan: Option<u64>,
    /// The plan version the agent last reported holding (recorded in `machines.plan_version`).
    held_plan: u64,
    sent_jobs: HashSet<Uuid>,
    sent_cancels: HashSet<Uuid>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::AgentMessage>, mut events: broadcast::Receiver<Event>) {
        let result = self.drive(&mut inbound, &mut events).await;
        match result {
            Ok(()) | Err(End::Gone) => tracing::debug!(machine.id = %self.machine, "session closed"),
            Err(End::Refuse(status)) => {
                tracing::info!(machine.id = %self.machine, reason = %status.message(), "session closed by controller");
                let _ = self.tx.send(Err(status)).await;
            }
        }
    }

    async fn send(&self, msg: Out) -> Result<(), End> {
        self.tx.send(Ok(pb::ControllerMessage { msg: Some(msg) })).await.map_err(|_| End::Gone)
    }

    async fn drive(
        &mut self,
        inbound: &mut Streaming<pb::AgentMessage>,
        events: &mut broadcast::Receiver<Event>,
    ) -> Result<(), End> {
        let Some(In::Hello(hello)) = super::first_message(inbound).await?.msg else {
            return Err(super::hello_first());
        };
        self.on_hello(hello).await?;
        let mut recheck = tokio::time::interval(Duration::from_secs(60));
        recheck.tick().await;
        let mut last_touch = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => {
                        self.on_message(m).await?;
                        if last_touch.elapsed() > Duration::from_secs(30) {
                            machines::touch(&self.state.pool, self.machine).await?;
                            last_touch = tokio::time::Instant::now();
                        }
                    }
                    Some(Err(_)) | None => return Err(End::Gone),
                },
                ev = events.recv() => match ev {
                    Ok(Event::Shutdown) => return Err(End::Refuse(Status::unavailable("controller shutting down"))),
                    Ok(ev) if ev.concerns(self.machine) => self.on_event(&ev).await?,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.on_event(&Event::Resync).await?,
                    Err(broadcast::error::RecvError::Closed) => return Err(End::Refuse(Status::unavailable("controller shutting down"))),
                },
                _ = recheck.tick() => self.on_event(&Event::Resync).await?,
                () = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    async fn on_hello(&mut self, hello: pb::Hello) -> Result<(), End> {
        let inv = super::inventory(hello.inventory);
        machines::record_hello(&self.state.pool, self.machine, &inv, hello.plan_version).await?;
        let interrupted: Vec<Uuid> =
            hello.interrupted_job_ids.iter().filter_map(|s| Uuid::try_parse(s).ok()).collect();
        if self.standing == SessionStanding::Active {
            jobs::mark_interrupted(&self.state.pool, self.machine, &interrupted).await?;
        }
        tracing::info!(machine.id = %self.machine, agent_version = %inv.agent_version, plan_version = hello.plan_version, "agent connected");
        self.state.compliance.machine(self.machine);
        self.sent_plan = Some(hello.plan_version);
        self.held_plan = hello.plan_version;
        self.sync().await
    }

    /// Sends what the agent should have: pending notice, or the plan (if changed) and jobs.
    async fn sync(&mut self) -> Result<(), End> {
        if self.standing == SessionStanding::Pending {
            return self.send(Out::PendingApproval(pb::PendingApproval {})).await;
        }
        let plan =
            plans::compute(&self.state.pool, &self.state.master, &self.state.ca.cert_pem, self.machine)
                .await?;
        let in_plan: HashSet<String> = plan.policies.iter().map(|p| p.id.clone()).collect();
        if self.sent_plan != Some(plan.version) {
            let v = plan.version;
            self.send(Out::Plan(plan)).await?;
            self.sent_plan = Some(v);
            tracing::info!(machine.id = %self.machine, plan_version = v, "plan sent");
        }
        // A job whose policy is not in the plan yet (its repository is still being
        // initialised) stays queued; it is sent with the plan that includes it.
        for (job, policy) in jobs::queued_for(&self.state.pool, self.machine).await? {
            if in_plan.contains(&policy.to_string()) && self.sent_jobs.insert(job) {
                self.send(Out::RunNow(pb::RunNow { job_id: job.to_string(), policy_id: policy.to_string() }))
                    .await?;
            }
        }
        for job in jobs::cancels_for(&self.state.pool, self.machine).await? {
            if self.sent_cancels.insert(job) {
                self.send(Out::Cancel(pb::Cancel { job_id: job.to_string() })).await?;
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: &Event) -> Result<(), End> {
        if matches!(ev, Event::Machine { .. } | Event::Resync) {
            self.standing = machines::session_standing(&self.state.pool, self.machine, &self.serial).await?;
        }
        self.sync().await
    }

    async fn on_message(&mut self, m: pb::AgentMessage) -> Result<(), End> {
        match m.msg {
            Some(In::Heartbeat(h)) => {
                // What the agent runs, for the API's stale-plan report.
                if h.plan_version != 0 && h.plan_version != self.held_plan {
                    machines::record_plan_version(&self.state.pool, self.machine, h.plan_version).await?;
                    self.held_plan = h.plan_version;
                    self.state.compliance.machine(self.machine);
                }
                Ok(())
            }
            Some(In::Hello(_)) => Err(End::Refuse(Status::invalid_argument("Hello may only be sent once"))),
            Some(In::JobEvent(ev)) => self.on_job_event(ev).await,
            Some(In::Renew(r)) => self.on_renew(r).await,
            None => Err(End::Refuse(Status::invalid_argument("empty message"))),
        }
    }

    async fn on_job_event(&mut self, ev: pb::JobEvent) -> Result<(), End> {
        if self.standing != SessionStanding::Active {
            // Nothing is written for a machine nobody approved; the agent keeps the event.
            let status = Status::failed_precondition(
                "this machine awaits an administrator's approval: its results stay in its spool until then",
            );
            return Err(End::Refuse(retry_later(status, PENDING_RETRY)));
        }
        if let Some(pb::job_event::Kind::Progress(_)) = &ev.kind {
            return self.on_progress(&ev).await;
        }
        if let Err(wait) = self.limits.events.take(self.machine, std::time::Instant::now()) {
            tracing::warn!(machine.id = %self.machine, retry_in_s = wait.as_secs(), "too many job events; session ended");
            let status = Status::resource_exhausted(
                "too many job events from this machine: the rest stay in its spool",
            );
            return Err(End::Refuse(retry_later(status, wait)));
        }
        match jobs::ingest(&self.state.pool, self.machine, &ev).await {
            Ok(()) => self.state.compliance.machine(self.machine),
            // Retrying will not make a malformed or foreign event acceptable: log it and ack, so
            // it does not block the agent's spool forever.
            Err(e @ (Error::Invalid { .. } | Error::Forbidden(_))) => {
                tracing::warn!(machine.id = %self.machine, event_id = %ev.event_id, error = %e, "discarding invalid job event");
            }
            // Data PostgreSQL refuses (class 22, data exception) will be refused again: the
            // same, rather than the agent redelivering it first after every reconnect.
            Err(Error::Db(sqlx::Error::Database(db))) if db.code().is_some_and(|c| c.starts_with("22")) => {
                tracing::warn!(machine.id = %self.machine, event_id = %ev.event_id, error = %db, "discarding a job event the database cannot store");
            }
            // Not stored: close, so the agent reconnects later and delivers it again.
            Err(e) => return Err(e.into()),
        }
        self.send(Out::Ack(pb::Ack { event_ids: vec![ev.event_id] })).await
    }

    /// A running backup's progress: best effort. Stored on the running job or dropped (over the
    /// machine's event rate, malformed, a job already ended), never acknowledged (the agent
    /// never spooled it) and it never ends the session.
    async fn on_progress(&mut self, ev: &pb::JobEvent) -> Result<(), End> {
        if self.limits.events.take(self.machine, std::time::Instant::now()).is_err() {
            tracing::debug!(machine.id = %self.machine, "progress over the machine's event rate: dropped");
            return Ok(());
        }
        match jobs::ingest(&self.state.pool, self.machine, ev).await {
            Ok(()) => {}
            Err(Error::Db(e)) => {
                tracing::warn!(machine.id = %self.machine, error = %e, "cannot store a backup's progress; dropped");
            }
            Err(e) => {
                tracing::debug!(machine.id = %self.machine, error = %e, "ignoring a malformed progress event");
            }
        }
        Ok(())
    }

    async fn on_renew(&mut self, r: pb::RenewCertificate) -> Result<(), End> {
        if self.standing != SessionStanding::Active {
            return Err(End::Refuse(Status::permission_denied("machine is not active")));
        }
        let st = &self.state;
        let lifetime = Duration::from_secs(st.settings.certificates.agent_lifetime_seconds);
        let limits = &self.limits.limits;
        // Half the lifetime at most, so short test lifetimes still renew at 2/3.
        let interval = limits.renewal_interval.min(lifetime / 2);
        let limit = machines::RenewalLimit {
            interval,
            near_expiry_interval: limits.near_expiry_interval.min(interval),
        };
        let issue = || {
            st.ca
                .issue_agent_cert(self.machine, &r.csr_der, lifetime)
                .map_err(|e| Error::invalid(e.to_string()))
        };
        let issued = machines::renew_certificate(&st.pool, self.machine, &self.serial, limit, issue).await?;
        tracing::info!(machine.id = %self.machine, serial = %issued.serial, "certificate renewed");
        self.send(Out::CertificateRenewed(pb::CertificateRenewed { certificate_pem: issued.pem })).await
    }
}
