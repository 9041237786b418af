//! First contact with the controller: the TLS chain must carry a CA whose SHA-256 is the one in
//! the enrollment token. There is no insecure mode.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

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
pub async fn fetch_pinned_ca(url: &url::Url, fingerprint: &str) -> anyhow::Result<Vec<u8>> {
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
