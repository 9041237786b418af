//! The store-facing gRPC service (`cofre.store.v1.StoreService`): a store enrolls with its
//! one-time token, then keeps a session open on which it receives its access list (on connect
//! and whenever it changes) and reports its inventory.

use std::pin::Pin;
use std::time::Duration;

use chrono::Utc;
use cofre_proto::store::v1 as pb;
use futures::Stream;
use pb::controller_message::Msg as Out;
use pb::store_message::Msg as In;
use pb::store_service_server::{StoreService, StoreServiceServer};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use super::End;
use super::RateLimiter;
use crate::error::Error;
use crate::events::Event;
use crate::state::AppState;
use crate::stores;

pub struct StoreApi {
    state: AppState,
    limiter: RateLimiter,
}

impl std::fmt::Debug for StoreApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreApi").finish_non_exhaustive()
    }
}

pub fn service(state: AppState) -> StoreServiceServer<StoreApi> {
    let per_minute = state.settings.grpc.enroll_per_minute;
    StoreServiceServer::new(StoreApi { state, limiter: RateLimiter::new(per_minute) })
        .max_decoding_message_size(16 * 1024 * 1024)
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

/// The store id (from CN `cofre-store:<id>`) and serial of the verified client certificate.
fn identity<T>(req: &Request<T>) -> Result<(Uuid, String), Status> {
    let refuse = || Status::unauthenticated("a store certificate is required: enroll this store first");
    let leaf = req.peer_certs().and_then(|c| c.first().cloned()).ok_or_else(refuse)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| refuse())?;
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).ok_or_else(refuse)?;
    let id = cn.strip_prefix("cofre-store:").and_then(|s| Uuid::try_parse(s).ok()).ok_or_else(refuse)?;
    Ok((id, crate::pki::serial_hex(cert.raw_serial())))
}

#[tonic::async_trait]
impl StoreService for StoreApi {
    async fn enroll(&self, req: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let ip = req.remote_addr().map(|a| a.ip());
        if let Some(ip) = ip
            && !self.limiter.allow(ip)
        {
            return Err(Status::resource_exhausted(
                "too many enrollment attempts from this address; wait a minute",
            ));
        }
        let req = req.into_inner();
        if req.csr_der.is_empty() || req.csr_der.len() > 16 * 1024 {
            return Err(Status::invalid_argument("csr_der must be a DER PKCS#10 request"));
        }
        let st = &self.state;
        let lifetime = Duration::from_secs(st.settings.certificates.agent_lifetime_seconds);
        let enrolled =
            stores::enroll(&st.pool, &st.ca, lifetime, &req.token, &req.csr_der, &req.store_version).await;
        match &enrolled {
            Ok(e) => tracing::info!(store.id = %e.store_id, url = %e.url, ?ip, "store enrolled"),
            Err(e) => tracing::warn!(error = %e, ?ip, "store enrollment refused"),
        }
        let e = enrolled?;
        Ok(Response::new(pb::EnrollResponse {
            store_id: e.store_id.to_string(),
            certificate_pem: e.certificate_pem,
            ca_certificate_pem: st.ca.cert_pem.clone(),
            url: e.url,
            server_certificate_pem: e.server_certificate_pem,
        }))
    }

    type SessionStream = OutStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::StoreMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let (store, serial) = identity(&req)?;
        let url = stores::session_check(&self.state.pool, store, &serial).await?;
        let events = self.state.events.subscribe();
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::ControllerMessage, Status>>(16);
        let session = Session { state: self.state.clone(), store, serial, url, tx, sent: None };
        tokio::spawn(
            session.run(inbound, events).instrument(tracing::info_span!("store_session", store.id = %store)),
        );
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

struct Session {
    state: AppState,
    store: Uuid,
    serial: String,
    url: String,
    tx: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    /// Version of the access list the store holds.
    sent: Option<u64>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::StoreMessage>, mut events: broadcast::Receiver<Event>) {
        match self.drive(&mut inbound, &mut events).await {
            Ok(()) | Err(End::Gone) => tracing::debug!(store.id = %self.store, "store session closed"),
            Err(End::Refuse(status)) => {
                tracing::info!(store.id = %self.store, reason = %status.message(), "store session closed by controller");
                let _ = self.tx.send(Err(status)).await;
            }
        }
    }

    async fn send(&self, msg: Out) -> Result<(), End> {
        self.tx.send(Ok(pb::ControllerMessage { msg: Some(msg) })).await.map_err(|_| End::Gone)
    }

    async fn drive(
        &mut self,
        inbound: &mut Streaming<pb::StoreMessage>,
        events: &mut broadcast::Receiver<Event>,
    ) -> Result<(), End> {
        let Some(In::Hello(hello)) = super::first_message(inbound).await?.msg else {
            return Err(super::hello_first());
        };
        let sync_started = Utc::now();
        stores::record_hello(&self.state.pool, self.store, &hello.store_version, hello.access_list_version)
            .await?;
        tracing::info!(store.id = %self.store, version = %hello.store_version, "store connected");
        self.sent = Some(hello.access_list_version);
        self.sync().await?;
        let mut recheck = tokio::time::interval(Duration::from_secs(60));
        recheck.tick().await;
        let mut last_touch = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(m)) => {
                        self.on_message(m, sync_started).await?;
                        if last_touch.elapsed() > Duration::from_secs(30) {
                            stores::touch(&self.state.pool, self.store).await?;
                            last_touch = tokio::time::Instant::now();
                        }
                    }
                    Some(Err(_)) | None => return Err(End::Gone),
                },
                ev = events.recv() => match ev {
                    Ok(Event::Shutdown) | Err(broadcast::error::RecvError::Closed) => {
                        return Err(End::Refuse(Status::unavailable("controller shutting down")));
                    }
                    // Jobs, provisioning and maintenance requests change no access list.
                    Ok(Event::Jobs { .. } | Event::Provision | Event::Maintenance) => {}
                    Ok(Event::Stores | Event::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.recheck().await?;
                    }
                    Ok(Event::Machine { .. } | Event::Plans { .. }) => self.sync().await?,
                },
                _ = recheck.tick() => self.recheck().await?,
                () = self.tx.closed() => return Err(End::Gone),
            }
        }
    }

    async fn recheck(&mut self) -> Result<(), End> {
        self.url = stores::session_check(&self.state.pool, self.store, &self.serial).await?;
        self.sync().await
    }

    /// Sends the access list when the store does not hold the current one.
    async fn sync(&mut self) -> Result<(), End> {
        let list = stores::access::compute(&self.state.pool, &self.url).await?;
        if self.sent != Some(list.version) {
            let v = list.version;
            let machines = list.machines.len();
            self.send(Out::AccessList(list)).await?;
            self.sent = Some(v);
            stores::record_access_list_sent(&self.state.pool, self.store, v).await?;
            tracing::info!(store.id = %self.store, access_list_version = v, machines, "access list sent");
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        m: pb::StoreMessage,
        sync_started: chrono::DateTime<Utc>,
    ) -> Result<(), End> {
        match m.msg {
            Some(In::Heartbeat(_)) => Ok(()),
            Some(In::Hello(_)) => Err(End::Refuse(Status::invalid_argument("Hello may only be sent once"))),
            Some(In::Inventory(report)) => {
                match stores::inventory::ingest(&self.state.pool, self.store, &report, sync_started).await {
                    Ok(()) => Ok(()),
                    Err(e @ Error::Invalid { .. }) => {
                        tracing::warn!(store.id = %self.store, error = %e, "discarding invalid inventory report");
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Some(In::Renew(r)) => {
                let st = &self.state;
                let lifetime = Duration::from_secs(st.settings.certificates.agent_lifetime_seconds);
                let issued = st
                    .ca
                    .issue_store_cert(self.store, &r.csr_der, lifetime)
                    .map_err(|e| End::Refuse(Status::invalid_argument(e.to_string())))?;
                let host = stores::url_host(&self.url)?;
                let server = st
                    .ca
                    .issue_store_server_cert(self.store, &r.csr_der, &host, lifetime)
                    .map_err(|e| End::Refuse(Status::invalid_argument(e.to_string())))?;
                stores::record_certificate(&st.pool, self.store, &issued).await?;
                tracing::info!(store.id = %self.store, serial = %issued.serial, "store certificate renewed");
                self.send(Out::CertificateRenewed(pb::CertificateRenewed {
                    certificate_pem: issued.pem,
                    server_certificate_pem: server.pem,
                }))
                .await
            }
            None => Err(End::Refuse(Status::invalid_argument("empty message"))),
        }
    }
}
