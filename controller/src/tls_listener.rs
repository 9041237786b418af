//! HTTPS for the REST API: the rustls configuration from PEM files and the handshake with its
//! deadline (`http_server` runs each in the connection's own task, so a slow or silent client
//! never blocks accepting), plus a listener handing axum already-handshaken TLS streams.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Loads a certificate chain and its key (PEM files) into a rustls server configuration.
pub fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<rustls::ServerConfig> {
    Ok(server_config_and_pin(cert_file, key_file)?.0)
}

/// [`server_config`], plus the pin of the key it serves (`sha256//…` of the first certificate's
/// SubjectPublicKeyInfo, [`crate::install::spki_pin`]): computed from the very chain loaded, so
/// the install line pins what this process serves even if the file is replaced later.
pub fn server_config_and_pin(
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<(rustls::ServerConfig, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("cannot read {}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_file.display());
    }
    let pin = crate::install::spki_pin(&certs[0])
        .with_context(|| format!("the first certificate in {}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("{} holds no PEM private key", key_file.display()))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, pin))
}

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the TLS handshake within [`HANDSHAKE_DEADLINE`]; `None` (logged) when it fails or is late.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A listener for `axum::serve`. `serve` uses [`crate::http_server`] instead, which bounds slow
/// and idle clients; this stays for `api::Peer`'s `Connected` implementation.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(tls) = handshake(&acceptor, stream, peer).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(Self { local, rx })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_https_with_the_configured_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, server_config(&cert, &key).unwrap()).unwrap();
        let port = axum::serve::Listener::local_addr(&listener).unwrap().port();
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        // A client that stalls in the handshake does not block others.
        let _silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
            .build()
            .unwrap();
        let body = client
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "ok");
        assert!(reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err(), "no plain HTTP");

        std::fs::write(&key, "not a key").unwrap();
        assert!(server_config(&cert, &key).unwrap_err().to_string().contains("no PEM private key"));
    }
}
