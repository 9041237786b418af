//! A real TLS handshake on loopback: a server whose certificate chains to the pinned CA and
//! names the host is still refused unless it carries the controller's role.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;

use super::{CONTROLLER_CN, client_config};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    Ca { issuer: Issuer::new(params, key), pem }
}

/// (chain PEM, key PEM) of a server certificate for 127.0.0.1 with this CN.
fn server_cert(ca: &Ca, cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (format!("{}{}", cert.pem(), ca.pem), key.serialize_pem())
}

/// A TLS server on loopback presenting (chain, key); returns its port.
async fn serve(chain_pem: &str, key_pem: &str) -> u16 {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    port
}

async fn handshake(ca_pem: &str, port: u16) -> Result<(), String> {
    let config = client_config(ca_pem, None).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_the_controllers_certificate_answers_as_the_controller() {
    let ca = new_ca();
    let (chain, key) = server_cert(&ca, CONTROLLER_CN);
    let controller = serve(&chain, &key).await;
    assert_eq!(handshake(&ca.pem, controller).await, Ok(()));

    // A store's certificate from the same CA, valid for the same address: refused.
    let (chain, key) = server_cert(&ca, "cofre-store:0b7e0d2c-5f3a-4f0e-9a55-3f6b1b1e7d10");
    let store = serve(&chain, &key).await;
    let err = handshake(&ca.pem, store).await.unwrap_err();
    assert!(err.contains("not the Cofre controller"), "{err}");

    // The controller's role from another CA: refused too.
    let other = new_ca();
    let (chain, key) = server_cert(&other, CONTROLLER_CN);
    let impostor = serve(&chain, &key).await;
    assert!(handshake(&ca.pem, impostor).await.is_err());
}
