//! TLS for the gRPC port with a server certificate that renews itself: the CA issues the
//! controller's certificate at start (90 days) and again at 2/3 of its lifetime, and new
//! handshakes use the new one at once (a certificate resolver holds the current one), so a
//! controller that runs for months never presents an expired certificate. Open connections
//! keep theirs. Client certificates stay optional and are verified against the CA (Enroll has
//! none; Session insists on one). Handshakes run in their own tasks with a deadline, so a
//! silent client never blocks accepting.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::Stream;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pki::Ca;

/// The lifetime of the controller's own server certificate.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a client may take to complete its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The gRPC port's TLS: the rustls configuration and the certificate it presents now.
pub struct GrpcTls {
    ca: Arc<Ca>,
    names: Vec<String>,
    lifetime: Duration,
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTls").field("names", &self.names).finish_non_exhaustive()
    }
}

/// The certificate handed to new handshakes, and when it was issued and expires.
#[derive(Debug)]
struct Current(RwLock<Presented>);

#[derive(Debug, Clone)]
struct Presented {
    key: Arc<CertifiedKey>,
    issued: SystemTime,
    not_after: SystemTime,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).key.clone())
    }
}

impl GrpcTls {
    /// Issues the first certificate for `names` (valid `lifetime`) and builds the configuration.
    pub fn new(ca: Arc<Ca>, names: Vec<String>, lifetime: Duration) -> anyhow::Result<Self> {
        let presented = issue(&ca, &names, lifetime)?;
        let current = Arc::new(Current(RwLock::new(presented)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der.clone())).context("the CA certificate is unusable")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .context("cannot build the client certificate verifier")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { ca, names, lifetime, current, config: Arc::new(config) })
    }

    /// The controller's TLS for `serve`: names from the settings, 90-day certificates, renewed
    /// in the background for as long as the process runs.
    pub fn start(state: &crate::state::AppState) -> anyhow::Result<Arc<Self>> {
        let tls = Arc::new(Self::new(state.ca.clone(), state.settings.tls_names(), SERVER_CERT_LIFETIME)?);
        tokio::spawn(tls.clone().renew_forever());
        Ok(tls)
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> SystemTime {
        self.presented().not_after
    }

    fn presented(&self) -> Presented {
        self.current.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether the certificate in use has reached 2/3 of its lifetime at `now`.
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        let p = self.presented();
        let lifetime = p.not_after.duration_since(p.issued).unwrap_or_default();
        now >= p.issued + lifetime * 2 / 3
    }

    /// Issues a new certificate (new key) and presents it in every handshake from now on.
    pub fn renew(&self) -> anyhow::Result<()> {
        let presented = issue(&self.ca, &self.names, self.lifetime)?;
        *self.current.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = presented;
        Ok(())
    }

    /// Renews whenever due, checking every 1/20 of the lifetime (at most hourly); a failure is
    /// retried a minute later (the old certificate still has a third of its life).
    async fn renew_forever(self: Arc<Self>) {
        let every = (self.lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            tokio::time::sleep(every).await;
            if !self.renewal_due(SystemTime::now()) {
                continue;
            }
            match self.renew() {
                Ok(()) => tracing::info!(not_after = ?self.not_after(), "gRPC server certificate renewed"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot renew the gRPC server certificate; retrying in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    }

    /// TLS connections accepted on `listener`, for `Server::serve_with_incoming_shutdown`.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + use<> {
        let acceptor = TlsAcceptor::from(self.config.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn issue(ca: &Ca, names: &[String], lifetime: Duration) -> anyhow::Result<Presented> {
    let issued = SystemTime::now();
    let (chain_pem, key_pem) = ca.issue_server_cert_for(names, lifetime)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the issued server certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the issued key is not PEM")?;
    let key = CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .context("the issued certificate and key do not match")?;
    Ok(Presented { key: Arc::new(key), issued, not_after: issued + lifetime })
}
