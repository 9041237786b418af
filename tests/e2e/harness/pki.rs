//! A private test CA (rcgen): CA certificate, server and client certificates as PEM files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate authority whose key lives only in this process, with its certificate written
/// to `<dir>/ca.pem`. Certificates it issues are written into the same temp dir, which lives
/// as long as the `TestCa`.
pub struct TestCa {
    dir: TempDir,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_path: PathBuf,
    serial: AtomicU32,
}

/// PEM files of one issued certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Certificate followed by its private key in one file (restic's `--tls-client-cert` and
    /// reqwest's `Identity::from_pem` want this form).
    pub bundle_path: PathBuf,
}

impl TestCa {
    /// A new CA named `common_name` ("Cofre test CA", "Unrelated CA", …).
    pub fn new(common_name: &str) -> Result<TestCa> {
        let dir = tempfile::Builder::new().prefix("cofre-pki-").tempdir()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, &cert_pem)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            dir,
            name: common_name.to_owned(),
            cert_pem,
            cert_path,
            serial: AtomicU32::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate PEM file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The temp dir holding the CA and every certificate it issued.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A TLS server certificate for `localhost` and `127.0.0.1`.
    pub fn issue_localhost_server(&self) -> Result<IssuedCert> {
        self.issue_server_cert("localhost", &["localhost", "127.0.0.1"])
    }

    /// A TLS server certificate with the given SANs (IP addresses become IP SANs).
    pub fn issue_server_cert(&self, common_name: &str, sans: &[&str]) -> Result<IssuedCert> {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = dn(common_name);
        // ECDSA keys sign; they never encipher, so DigitalSignature is the only usage.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue("server", &params)
    }

    /// A TLS client certificate whose subject CN is `common_name` (no SANs).
    pub fn issue_client_cert(&self, common_name: &str) -> Result<IssuedCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue("client", &params)
    }

    fn issue(&self, kind: &str, params: &CertificateParams) -> Result<IssuedCert> {
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing a {kind} certificate with {}", self.name))?;
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let base = self.dir.path().join(format!("{kind}-{n}"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let cert_path = base.with_extension("crt.pem");
        let key_path = base.with_extension("key.pem");
        let bundle_path = base.with_extension("bundle.pem");
        std::fs::write(&cert_path, &cert_pem)?;
        std::fs::write(&key_path, &key_pem)?;
        std::fs::write(&bundle_path, format!("{cert_pem}{key_pem}"))?;
        Ok(IssuedCert { cert_pem, key_pem, cert_path, key_path, bundle_path })
    }
}

/// The usual test set: a CA and a `localhost`/`127.0.0.1` server certificate it signed.
pub struct TestPki {
    pub ca: TestCa,
    pub server: IssuedCert,
}

impl TestPki {
    pub fn new() -> Result<TestPki> {
        let ca = TestCa::new("Cofre test CA")?;
        let server = ca.issue_localhost_server()?;
        Ok(TestPki { ca, server })
    }

    /// A CA unrelated to this one, for "certificate from another CA" tests.
    pub fn unrelated_ca() -> Result<TestCa> {
        TestCa::new("Unrelated test CA")
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Cofre end-to-end tests");
    dn
}

/// A reqwest client that trusts only `ca_pem` (no system roots), optionally presenting a
/// client certificate bundle (certificate + key PEM).
pub fn https_client(ca_pem: &str, identity_pem: Option<&str>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .timeout(std::time::Duration::from_secs(30));
    if let Some(identity) = identity_pem {
        builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes())?);
    }
    Ok(builder.build()?)
}
