//! The gRPC services over TLS: `cofre.agent.v1.AgentService` here and
//! `cofre.store.v1.StoreService` in `store.rs`. Enroll needs no client certificate; Session
//! requires one, verified against our CA by rustls and then checked against the database on
//! every open.

mod error;
mod limits;
mod session;
pub mod store;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use cofre_proto::agent::v1 as pb;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use tonic::{Request, Response, Status, Streaming};

pub use limits::Limits;
use limits::{EventLimiter, RateLimiter};
pub use tls::GrpcTls;

use crate::enrollment;
use crate::state::AppState;

pub struct AgentApi {
    state: AppState,
    limiter: RateLimiter,
    sessions: Arc<SessionLimits>,
}

/// What every session of this replica shares: the limits and the per-machine buckets of job
/// events and of session opens.
pub(crate) struct SessionLimits {
    pub(crate) limits: Limits,
    pub(crate) events: EventLimiter,
    pub(crate) opens: EventLimiter,
}

impl std::fmt::Debug for AgentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApi").finish_non_exhaustive()
    }
}

pub fn service(state: AppState) -> AgentServiceServer<AgentApi> {
    service_with(state, Limits::default())
}

/// The agent service with other limits (tests).
pub fn service_with(state: AppState, limits: Limits) -> AgentServiceServer<AgentApi> {
    let per_minute = state.settings.grpc.enroll_per_minute;
    let sessions = Arc::new(SessionLimits {
        limits,
        events: EventLimiter::new(&limits),
        opens: EventLimiter::with_rate(limits.sessions_burst, limits.sessions_per_minute),
    });
    AgentServiceServer::new(AgentApi { state, limiter: RateLimiter::new(per_minute), sessions })
        // tonic's default (4 MiB) ended the session of an agent whose result was larger, and
        // the agent sent that result first again after every reconnect.
        .max_decoding_message_size(limits.max_message_bytes)
}

/// Tonic's own TLS with a one-off server certificate, for tests that serve the services
/// directly. `serve` uses [`GrpcTls`] (same trust rules, and the certificate renews itself):
/// our CA-issued server certificate (chain includes the CA, so an enrolling agent can match it
/// to its token's fingerprint); client certificates optional at the TLS layer, verified
/// against our CA when presented.
#[cfg(test)]
pub(crate) fn tls_config(state: &AppState) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (chain, key) = state.ca.issue_server_cert(&state.settings.tls_names())?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(&state.ca.cert_pem))
        .client_auth_optional(true))
}

fn inventory(inv: Option<pb::Inventory>) -> enrollment::Inventory {
    let inv = inv.unwrap_or_default();
    // PostgreSQL's text holds no NUL.
    let clip = |s: String| s.chars().filter(|c| *c != '\0').take(255).collect::<String>();
    enrollment::Inventory {
        hostname: clip(inv.hostname),
        os: clip(inv.os),
        arch: clip(inv.arch),
        agent_version: clip(inv.agent_version),
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
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
        let inv = inventory(req.inventory);
        if inv.hostname.is_empty() {
            return Err(Status::invalid_argument("inventory.hostname is required"));
        }
        let st = &self.state;
        let lifetime = Duration::from_secs(st.settings.certificates.agent_lifetime_seconds);
        let again = !req.previous_certificate_pem.is_empty();
        if req.previous_certificate_pem.len() > 16 * 1024 {
            return Err(Status::invalid_argument("previous_certificate_pem is too long"));
        }
        let enrolled = if again {
            enrollment::reenroll(
                &st.pool,
                &st.ca,
                lifetime,
                &req.token,
                &req.csr_der,
                &req.previous_certificate_pem,
            )
            .await
        } else {
            enrollment::enroll(&st.pool, &st.ca, lifetime, &req.token, &req.csr_der, inv.clone()).await
        };
        match &enrolled {
            Ok(e) if again => {
                tracing::info!(machine.id = %e.machine_id, hostname = %inv.hostname, ?ip, "machine re-enrolled: same identity, new certificate");
            }
            Ok(e) => {
                tracing::info!(machine.id = %e.machine_id, hostname = %inv.hostname, ?ip, "machine enrolled");
            }
            Err(e) => tracing::warn!(error = %e, ?ip, "enrollment refused"),
        }
        let e = enrolled?;
        Ok(Response::new(pb::EnrollResponse {
            machine_id: e.machine_id.to_string(),
            certificate_pem: e.certificate_pem,
            ca_certificate_pem: st.ca.cert_pem.clone(),
            pending_approval: e.pending_approval,
        }))
    }

    type SessionStream = session::OutStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        session::open(self.state.clone(), self.sessions.clone(), req).await
    }
}

/// Why a session (agent or store) ends early.
pub(crate) enum End {
    /// The peer went away.
    Gone,
    /// Tell the peer why, then close.
    Refuse(Status),
}

impl From<crate::error::Error> for End {
    fn from(e: crate::error::Error) -> Self {
        End::Refuse(e.into())
    }
}

/// The first message of a session, which must arrive within 30 s.
pub(crate) async fn first_message<M>(inbound: &mut Streaming<M>) -> Result<M, End> {
    use tokio_stream::StreamExt as _;
    match tokio::time::timeout(Duration::from_secs(30), inbound.next()).await {
        Err(_) => Err(End::Refuse(Status::deadline_exceeded("no Hello within 30 s"))),
        Ok(Some(Ok(m))) => Ok(m),
        Ok(Some(Err(_)) | None) => Err(End::Gone),
    }
}

/// The refusal for a session whose first message is not Hello.
pub(crate) fn hello_first() -> End {
    End::Refuse(Status::invalid_argument("the first message must be Hello"))
}

#[cfg(test)]
mod tests;
