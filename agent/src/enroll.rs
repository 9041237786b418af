//! `cofre-agent enroll`: generate a key pair on this machine (it never leaves it), prove the
//! controller is the one the token names (its TLS chain must end at a CA whose SHA-256 is in
//! the token: there is no insecure mode), and exchange the token and a CSR for a certificate.

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use cofre_proto::agent::v1 as pb;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::state::{Identity, StateDir};

/// The parts of a `cofre1.<id>.<secret>.<ca sha256>` token the agent needs.
pub struct Token {
    pub whole: String,
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("ca_fingerprint", &self.ca_fingerprint).finish_non_exhaustive()
    }
}

pub fn parse_token(s: &str) -> anyhow::Result<Token> {
    let s = s.trim();
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 || parts[0] != "cofre1" {
        bail!("malformed enrollment token: expected cofre1.<id>.<secret>.<fingerprint>");
    }
    let fp = parts[3].to_ascii_lowercase();
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed enrollment token: the fingerprint part is not a SHA-256");
    }
    Ok(Token { whole: s.to_string(), ca_fingerprint: fp })
}

/// Accepts the server only if its chain carries a CA with the pinned fingerprint and the leaf
/// verifies against that CA for the server name. Records the CA it found.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    found: Arc<Mutex<Option<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
            rustls::Error::General(
                "the controller's certificate authority does not match the fingerprint in the token".into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        *self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ca.to_vec());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects once with the pinned verifier and returns the controller's CA certificate (DER).
async fn fetch_pinned_ca(url: &url::Url, fingerprint: &str) -> anyhow::Result<Vec<u8>> {
    let host = url.host_str().context("controller URL has no host")?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let found = Arc::new(Mutex::new(None));
    let verifier = PinnedCaVerifier {
        fingerprint: fingerprint.to_string(),
        found: found.clone(),
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous() // a custom verifier that is *stricter* than the default: pinned CA
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .context("timed out connecting to the controller")?
    .with_context(|| format!("cannot connect to the controller at {host}:{port}"))?;
    let name = ServerName::try_from(host.clone()).context("invalid controller host name")?;
    connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with the controller at {host}:{port} failed"))?;
    let ca = found.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    ca.context("the controller did not present its CA certificate")
}

pub fn inventory() -> pb::Inventory {
    pb::Inventory {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
        os: os_name(),
        arch: std::env::consts::ARCH.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// A new ECDSA P-256 key and a CSR for it: (key PEM, CSR DER).
pub fn new_key_and_csr() -> anyhow::Result<(String, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = rcgen::CertificateParams::default();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub async fn enroll(
    state: &StateDir,
    controller: &str,
    token: &str,
    force: bool,
) -> anyhow::Result<Identity> {
    if state.is_enrolled() && !force {
        bail!(
            "this agent is already enrolled (state in {}); use --force to enroll again as a new machine",
            state.root().display()
        );
    }
    let token = parse_token(token)?;
    let url =
        url::Url::parse(controller).context("--controller must be a URL like https://cofre.example:7443")?;
    if url.scheme() != "https" {
        bail!("--controller must be an https:// URL: agents only talk to the controller over TLS");
    }
    let ca_der = fetch_pinned_ca(&url, &token.ca_fingerprint).await?;
    let ca_pem = der_to_pem(&ca_der);
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)).domain_name(host);
    let channel = Endpoint::from_shared(controller.to_string())?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(15))
        .connect()
        .await
        .context("cannot connect to the controller")?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let (key_pem, csr_der) = new_key_and_csr()?;
    let resp = client
        .enroll(pb::EnrollRequest { token: token.whole.clone(), csr_der, inventory: Some(inventory()) })
        .await
        .map_err(|s| anyhow::anyhow!("the controller refused enrollment: {}", s.message()))?
        .into_inner();
    if resp.ca_certificate_pem.trim() != ca_pem.trim()
        && crate::session::pem_fingerprint(&resp.ca_certificate_pem).as_deref()
            != Some(token.ca_fingerprint.as_str())
    {
        bail!("the controller returned a CA that does not match the token");
    }
    let id = Identity {
        machine_id: resp.machine_id.clone(),
        controller_url: controller.to_string(),
        ca_fingerprint: token.ca_fingerprint.clone(),
    };
    state.save_enrollment(&id, &ca_pem, &resp.certificate_pem, &key_pem)?;
    if resp.pending_approval {
        println!(
            "Enrolled as machine {}; an administrator must approve it before it receives a plan.",
            id.machine_id
        );
    } else {
        println!("Enrolled as machine {}.", id.machine_id);
    }
    println!("Start the agent with: cofre-agent run --state-dir {}", state.root().display());
    Ok(id)
}
