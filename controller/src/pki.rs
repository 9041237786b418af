//! The controller's private CA: issuing the controller's own TLS certificate and agents'
//! identity-only client certificates from their CSRs.

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
    #[error("certificate authority: {0}")]
    Ca(String),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Ca(e.to_string())
    }
}

/// CA material as stored: the key (sealed by the caller) and the certificate.
#[derive(Clone)]
pub struct CaMaterial {
    pub key_pem: String,
    pub cert_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// Creates a new self-signed CA (ECDSA P-256, ten years).
/// How far back every certificate's notBefore is set: a client whose clock is up to this much
/// behind accepts a certificate issued this moment (an agent an hour off after a wrong time
/// zone or a DST mistake; a controller restart issues its server certificate anew, and a
/// store's is renewed in place). Before, five minutes: such an agent refused the controller for
/// the first 55 minutes after every restart (#13, docs/reliability.md).
pub const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::hours(3);

pub fn generate_ca() -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Cofre");
    dn.push(DnType::CommonName, format!("Cofre CA {}", &Uuid::new_v4().simple().to_string()[..8]));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + time::Duration::days(3650);
    params.serial_number = Some(random_serial().0);
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial { key_pem: key.serialize_pem(), cert_pem: cert.pem() })
}

/// SHA-256 of a certificate's DER, lowercase hex: the fingerprint carried in enrollment tokens.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The CA in use: signs certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

/// A freshly issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub serial: String,
    pub pem: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

impl Ca {
    pub fn load(material: &CaMaterial) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(&material.key_pem)?;
        let der = pem_to_der(&material.cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)?;
        Ok(Self { issuer, cert_pem: material.cert_pem.clone(), cert_der: der })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint_der(&self.cert_der)
    }

    /// The controller's TLS server certificate (new key each start, 90 days). Returns
    /// (chain PEM: leaf then CA, key PEM). The CA is in the chain so an enrolling agent can
    /// check it against the fingerprint in its token.
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(String, String), PkiError> {
        self.issue_server_cert_for(names, std::time::Duration::from_secs(90 * 24 * 3600))
    }

    /// [`Ca::issue_server_cert`] valid for `lifetime` (renewals in the running process).
    pub fn issue_server_cert_for(
        &self,
        names: &[String],
        lifetime: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        let mut dn = DistinguishedName::new();
        // The controller's role: agents and stores accept a server only with this CN
        // (`cofre_dial::CONTROLLER_CN`); no other certificate the CA issues may carry it.
        dn.push(DnType::CommonName, "Cofre controller");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after =
            now + time::Duration::try_from(lifetime).map_err(|e| PkiError::Ca(e.to_string()))?;
        params.serial_number = Some(random_serial().0);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((format!("{}{}", cert.pem(), self.cert_pem), key.serialize_pem()))
    }

    /// Issues an agent certificate for `machine_id` from a DER CSR. The CSR's signature is
    /// verified (proof of possession); its subject and extensions are ignored: the only
    /// identity in the certificate is the machine id (CN), EKU clientAuth.
    pub fn issue_agent_cert(
        &self,
        machine_id: Uuid,
        csr_der: &[u8],
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let key = CsrKey::from_csr(csr_der)?;
        self.issue_client_cert(&machine_id.to_string(), &key, lifetime)
    }

    /// A cofre-store's certificate: CN `cofre-store:<id>`, which is neither a machine id (so it
    /// opens no agent session) nor the maintenance identity (so it opens no repository).
    pub fn issue_store_cert(
        &self,
        store_id: Uuid,
        csr_der: &[u8],
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let key = CsrKey::from_csr(csr_der)?;
        self.issue_client_cert(&store_cn(store_id), &key, lifetime)
    }

    /// A cofre-store's TLS server certificate for `host` (its registered URL's host), for the
    /// key of the CSR (the same key as its client certificate). Returns the chain PEM (leaf
    /// then CA), so clients trusting the Cofre CA can verify it.
    pub fn issue_store_server_cert(
        &self,
        store_id: Uuid,
        csr_der: &[u8],
        host: &str,
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let key = CsrKey::from_csr(csr_der)?;
        let host = host.trim_matches(['[', ']']);
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_string().try_into()?),
        };
        let mut issued =
            self.sign(&store_cn(store_id), vec![san], ExtendedKeyUsagePurpose::ServerAuth, &key, lifetime)?;
        issued.pem.push_str(&self.cert_pem);
        Ok(issued)
    }

    /// The controller's maintenance identity towards cofre-store (CN [`MAINTENANCE_CN`]): a
    /// new key pair and certificate, kept only in this process's memory and renewed before it
    /// expires. Returns (certificate PEM, key PEM).
    pub fn issue_maintenance_identity(
        &self,
        lifetime: std::time::Duration,
    ) -> Result<(Issued, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issued = self.issue_client_cert(MAINTENANCE_CN, &key, lifetime)?;
        Ok((issued, key.serialize_pem()))
    }

    /// A certificate for the audit signing key (Ed25519, given as its raw 32-byte public key),
    /// CN `cofre-audit-signing`, extended key usage documentSigning (RFC 9336), for evidence
    /// packs: an auditor checks it against Cofre's CA with `openssl verify`.
    pub fn issue_audit_signing_cert(
        &self,
        public_key: &[u8],
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        spki.extend_from_slice(public_key);
        let key = rcgen::SubjectPublicKeyInfo::from_der(&spki)?;
        let document_signing = ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 36]);
        self.sign(AUDIT_SIGNING_CN, Vec::new(), document_signing, &key, lifetime)
    }

    fn issue_client_cert(
        &self,
        common_name: &str,
        key: &impl PublicKeyData,
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        self.sign(common_name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, key, lifetime)
    }

    /// A leaf certificate: CN, SANs, one extended key usage, notBefore
    /// [`CLOCK_SKEW_ALLOWANCE`] back, a random serial.
    fn sign(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        key: &impl PublicKeyData,
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after =
            now + time::Duration::try_from(lifetime).map_err(|e| PkiError::Ca(e.to_string()))?;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            serial: serial_hex,
            pem: cert.pem(),
            not_before: to_chrono(params.not_before),
            not_after: to_chrono(params.not_after),
        })
    }
}

/// The common name of the audit signing key's certificate.
pub const AUDIT_SIGNING_CN: &str = "cofre-audit-signing";

/// The common name of the controller's maintenance identity towards cofre-store.
pub const MAINTENANCE_CN: &str = "cofre-maintenance";

/// The common name in a cofre-store's certificate.
pub fn store_cn(store_id: Uuid) -> String {
    format!("cofre-store:{store_id}")
}

fn to_chrono(t: time::OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).unwrap_or_default()
}

/// 16 random bytes, high bit cleared (positive), never all zero. Also returns its hex form,
/// which is how serials are stored and compared.
fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] = (b[0] & 0x7f) | 0x01;
    (SerialNumber::from_slice(&b), hex::encode(b))
}

/// Normalises a serial as found in a parsed certificate to our stored hex form.
pub fn serial_hex(raw: &[u8]) -> String {
    let trimmed: Vec<u8> = raw.iter().copied().skip_while(|b| *b == 0).collect();
    hex::encode(trimmed)
}

pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Ca(format!("bad certificate PEM: {e}")))
}

/// The public key of a verified CSR, usable by rcgen as the subject key.
struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl CsrKey {
    fn from_csr(der: &[u8]) -> Result<Self, PkiError> {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::prelude::FromDer;
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| PkiError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCsr("trailing data after the request".into()));
        }
        csr.verify_signature().map_err(|_| PkiError::BadCsr("signature does not verify".into()))?;
        let spki = &csr.certification_request_info.subject_pki;
        let alg_oid = spki.algorithm.algorithm.to_id_string();
        let alg = match alg_oid.as_str() {
            "1.3.101.112" => &rcgen::PKCS_ED25519,
            "1.2.840.10045.2.1" => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                if curve.as_deref() != Some("1.2.840.10045.3.1.7") {
                    return Err(PkiError::BadCsr("only the P-256 curve is accepted".into()));
                }
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
            other => {
                return Err(PkiError::BadCsr(format!(
                    "unsupported key algorithm {other}: use ECDSA P-256 or Ed25519"
                )));
            }
        };
        Ok(Self { raw: spki.subject_public_key.data.to_vec(), alg })
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(subject_cn: &str) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, subject_cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let req = p.serialize_request(&key).unwrap();
        (key, req.der().to_vec())
    }

    #[test]
    fn agent_cert_carries_only_the_machine_id() {
        let ca = Ca::load(&generate_ca().unwrap()).unwrap();
        let (_k, der) = csr("admin");
        let id = Uuid::new_v4();
        let issued = ca.issue_agent_cert(id, &der, std::time::Duration::from_secs(86400)).unwrap();
        let cert_der = pem_to_der(&issued.pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let cn: Vec<_> = cert.subject().iter_common_name().map(|c| c.as_str().unwrap()).collect();
        assert_eq!(cn, vec![id.to_string()]);
        assert!(!cert.is_ca(), "CSR asked for CA, must be ignored");
        assert!(cert.subject_alternative_name().unwrap().is_none(), "CSR SANs must be ignored");
        assert_eq!(serial_hex(cert.raw_serial()), issued.serial);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(cert.validity().not_before.timestamp() <= chrono::Utc::now().timestamp() - 290);
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = Ca::load(&generate_ca().unwrap()).unwrap();
        let (_k, mut der) = csr("x");
        let n = der.len();
        der[n - 5] ^= 0xff; // inside the signature
        let err = ca.issue_agent_cert(Uuid::new_v4(), &der, std::time::Duration::from_secs(60));
        assert!(matches!(err, Err(PkiError::BadCsr(_))), "{err:?}");
    }
}
