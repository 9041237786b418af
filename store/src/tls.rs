//! TLS: the rustls server configuration (ring provider) with OPTIONAL client certificates
//! verified against the Cofre CA, which can be swapped at run time, and the mapping from a
//! verified client certificate's CN to an identity.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

use crate::access::Identity;

/// The CN of the controller's maintenance certificate.
pub const MAINTENANCE_CN: &str = "cofre-maintenance";

pub struct Tls {
    material: std::sync::Mutex<Material>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

/// What the server configuration is built from; either part can be replaced at run time.
struct Material {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Vec<u8>>,
}

impl Tls {
    /// Loads the server's chain and key; `client_ca_pem` (the Cofre CA) enables client
    /// certificates, which stay optional so htpasswd users can connect without one.
    pub fn load(cert_file: &Path, key_file: &Path, client_ca_pem: Option<&[u8]>) -> anyhow::Result<Tls> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .with_context(|| format!("tls_cert: cannot read {}", cert_file.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("tls_cert: {} is not a PEM certificate chain", cert_file.display()))?;
        if certs.is_empty() {
            anyhow::bail!("tls_cert: {} holds no certificate", cert_file.display());
        }
        let key = PrivateKeyDer::from_pem_file(key_file)
            .with_context(|| format!("tls_key: {} holds no PEM private key", key_file.display()))?;
        let config = build(&certs, &key, client_ca_pem)?;
        let material = Material { certs, key, client_ca: client_ca_pem.map(<[u8]>::to_vec) };
        Ok(Tls { material: std::sync::Mutex::new(material), current: RwLock::new(Arc::new(config)) })
    }

    /// Replaces the CA client certificates are verified against (None: accept none). Takes
    /// effect for the next handshakes; open connections keep the identity they proved.
    pub fn set_client_ca(&self, pem: Option<&[u8]>) -> anyhow::Result<()> {
        let mut m = self.material.lock().unwrap_or_else(|e| e.into_inner());
        let config = build(&m.certs, &m.key, pem)?;
        m.client_ca = pem.map(<[u8]>::to_vec);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Replaces the server's certificate chain and key (a renewed certificate from Cofre's CA)
    /// for the next handshakes. Nothing changes if they do not form a usable pair.
    pub fn set_server_cert(&self, chain_and_key_pem: &[u8]) -> anyhow::Result<()> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_and_key_pem)
            .collect::<Result<_, _>>()
            .context("the server certificate is not PEM")?;
        let key = PrivateKeyDer::from_pem_slice(chain_and_key_pem)
            .context("no private key for the server certificate")?;
        let mut m = self.material.lock().unwrap_or_else(|e| e.into_inner());
        let config = build(&certs, &key, m.client_ca.as_deref())?;
        m.certs = certs;
        m.key = key;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }
}

fn build(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    client_ca_pem: Option<&[u8]>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.context("the client CA is not valid PEM")?).context("unusable client CA")?;
            }
            if roots.is_empty() {
                anyhow::bail!("the client CA PEM holds no certificate");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .context("cannot build the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs.to_vec(), key.clone_key())
        .context("tls_cert and tls_key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The identity a VERIFIED client certificate proves: CN `cofre-maintenance` is the
/// maintenance identity, a CN that is a UUID is that machine, anything else proves nothing.
pub fn identity_from_certificate(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    if cn == MAINTENANCE_CN {
        return Some(Identity::Maintenance);
    }
    Uuid::parse_str(cn).ok().map(Identity::Machine)
}

/// The serial of a certificate as the controller records it: lowercase hex, leading zero
/// bytes dropped.
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let raw: Vec<u8> = cert.raw_serial().iter().copied().skip_while(|b| *b == 0).collect();
    Some(hex::encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_names_map_to_identities() {
        let id = Uuid::new_v4();
        assert_eq!(identity_from_certificate(&cert_with_cn(&id.to_string())), Some(Identity::Machine(id)));
        assert_eq!(identity_from_certificate(&cert_with_cn(MAINTENANCE_CN)), Some(Identity::Maintenance));
        assert_eq!(identity_from_certificate(&cert_with_cn("alice")), None);
        assert_eq!(identity_from_certificate(b"garbage"), None);
    }
}
