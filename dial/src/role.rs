//! Only the controller may answer as the controller. One CA signs every certificate of a Cofre
//! installation — the controller's, each store's, each agent's — so a certificate that merely
//! chains to the CA and names the right host is not enough: a store running on the
//! controller's host holds such a certificate. The controller's server certificate is the only
//! one the CA issues with the subject CN [`CONTROLLER_CN`] (agent and store subjects are set by
//! the CA, never taken from a request), so agents and stores accept a server only when its
//! chain verifies *and* its leaf carries that role. TLS is done here (tokio-rustls) rather than
//! by tonic, whose client TLS cannot take a custom verifier.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Channel, Endpoint, Uri};

/// The subject CN of the controller's server certificate: its role.
pub const CONTROLLER_CN: &str = "Cofre controller";

/// The subject CN of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// WebPKI verification against the Cofre CA, plus the controller's role on the leaf.
#[derive(Debug)]
struct ControllerOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ControllerOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        match common_name(end_entity.as_ref()) {
            Some(cn) if cn == CONTROLLER_CN => Ok(verified),
            other => Err(rustls::Error::General(format!(
                "this server's certificate is not the Cofre controller's (its subject is {:?}): another service \
                 holding a certificate of the same CA cannot stand in for the controller",
                other.unwrap_or_default()
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// TLS towards the controller: the CA in `ca_pem` as the only root, the controller's role
/// required of the server, and this client's certificate when it has one; HTTP/2 by ALPN.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("the controller's CA is not PEM")?)
            .context("the controller's CA is unusable")?;
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("cannot build the certificate verifier")?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ControllerOnly { inner }));
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("this client's certificate is not PEM")?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("this client's key is not PEM")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("this client's certificate and key do not match")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A gRPC channel to the controller at `url` (https) over [`client_config`]'s TLS.
pub async fn channel(url: &url::Url, config: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let host = url.host_str().context("the controller URL has no host")?.trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let server_name =
        ServerName::try_from(host.clone()).with_context(|| format!("{host} is not a valid server name"))?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let connector = Arc::new(tokio_rustls::TlsConnector::from(Arc::new(config)));
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, server_name, host) = (connector.clone(), server_name.clone(), host.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    // The scheme tonic sees is http: TLS is the connector's.
    Endpoint::from_shared(format!("http://{authority}"))?
        .connect_timeout(Duration::from_secs(15))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_with_connector(connect)
        .await
        .with_context(|| format!("cannot reach the controller at {url}"))
}

#[cfg(test)]
mod tests;
