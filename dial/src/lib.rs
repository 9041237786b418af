//! The client side of a connection to the Cofre controller, shared by the agent and cofre-store:
//! enrollment tokens, pinning the controller's CA on first contact, several addresses of one
//! controller tried in turn (`failover`), key pairs and CSRs,
//! certificate renewal timing and the reconnect backoff.

pub mod failover;
pub mod files;
mod pinning;
mod role;

use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

pub use failover::{session_channel_any, session_channel_remembered};
pub use pinning::fetch_pinned_ca;
pub use role::CONTROLLER_CN;

/// The parts of a `cofre1.<id>.<secret>.<ca sha256>` token a client needs.
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

/// Checks the controller URL given to an `enroll` command: https only.
pub fn controller_url(controller: &str) -> anyhow::Result<url::Url> {
    let url =
        url::Url::parse(controller).context("--controller must be a URL like https://cofre.example:7443")?;
    if url.scheme() != "https" {
        bail!("--controller must be an https:// URL: Cofre only talks to the controller over TLS");
    }
    Ok(url)
}

/// Checks the controller addresses given with `--controller` (repeated, each an https URL, in the
/// order to try them): at least one, none twice.
pub fn controller_urls(controllers: &[String]) -> anyhow::Result<Vec<url::Url>> {
    if controllers.is_empty() {
        bail!("give at least one --controller URL");
    }
    let mut urls: Vec<url::Url> = Vec::with_capacity(controllers.len());
    for c in controllers {
        let url = controller_url(c)?;
        if urls.contains(&url) {
            bail!("--controller {c} is given twice");
        }
        urls.push(url);
    }
    Ok(urls)
}

/// A gRPC channel to the controller for enrollment: server-authenticated TLS against the CA
/// found by [`fetch_pinned_ca`], the server holding the controller's role. Returns the channel
/// and the CA's PEM.
pub async fn enrollment_channel(url: &url::Url, token: &Token) -> anyhow::Result<(Channel, String)> {
    let ca_der = fetch_pinned_ca(url, &token.ca_fingerprint).await?;
    let ca_pem = der_to_pem(&ca_der);
    let channel = role::channel(url, role::client_config(&ca_pem, None)?).await?;
    Ok((channel, ca_pem))
}

/// A mutual-TLS gRPC channel to the controller with this client's certificate; only the
/// controller's certificate is accepted (not a store's of the same CA).
pub async fn session_channel(
    controller_url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Channel> {
    let url = url::Url::parse(controller_url)?;
    role::channel(&url, role::client_config(ca_pem, Some((cert_pem, key_pem)))?).await
}

/// Checks that the CA the controller returned at enrollment is the one the token pinned.
pub fn check_returned_ca(returned_pem: &str, pinned_pem: &str, token: &Token) -> anyhow::Result<()> {
    if returned_pem.trim() != pinned_pem.trim()
        && pem_fingerprint(returned_pem).as_deref() != Some(token.ca_fingerprint.as_str())
    {
        bail!("the controller returned a CA that does not match the token");
    }
    Ok(())
}

/// A new ECDSA P-256 key and a CSR for it: (key PEM, CSR DER).
pub fn new_key_and_csr() -> anyhow::Result<(String, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = rcgen::CertificateParams::default();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// A CSR for an existing key (PEM): re-enrollment proves with it that the client still holds
/// the key of its previous certificate. Returns the CSR's DER.
pub fn csr_for_key(key_pem: &str) -> anyhow::Result<Vec<u8>> {
    let key = rcgen::KeyPair::from_pem(key_pem).context("this client's key is not a usable PEM key")?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok(csr.der().to_vec())
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

/// SHA-256 of the first certificate in a PEM, lowercase hex.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

/// (not_before, not_after) of a PEM certificate, as RFC 3339 text, for people.
pub fn certificate_validity(pem: &str) -> Option<(String, String)> {
    let (nb, na) = validity(pem)?;
    let fmt = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
    Some((fmt(nb), fmt(na)))
}

/// When a PEM certificate stops being valid (Unix seconds), if it is readable.
pub fn not_after(pem: &str) -> Option<i64> {
    validity(pem).map(|(_, na)| na)
}

/// (not_before, not_after) of a PEM certificate, as Unix seconds.
fn validity(pem: &str) -> Option<(i64, i64)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// When to renew: at 2/3 of the certificate's lifetime as this client received it. The
/// controller backdates notBefore by a few minutes for clock skew, so the lifetime is counted
/// from when the certificate was stored here (`received_at`, e.g. the file's mtime), not from
/// notBefore.
#[derive(Debug, Clone, Copy)]
pub struct Renewal {
    due_at: i64,
    pub check_every: Duration,
}

impl Renewal {
    pub fn of(cert_pem: &str, received_at: i64) -> Renewal {
        match validity(cert_pem) {
            Some((nb, na)) => {
                let start = received_at.clamp(nb, na);
                let lifetime = na - start;
                Renewal {
                    due_at: start + lifetime * 2 / 3,
                    check_every: Duration::from_secs(
                        u64::try_from(lifetime / 20).unwrap_or(3600).clamp(1, 3600),
                    ),
                }
            }
            None => Renewal { due_at: 0, check_every: Duration::from_secs(60) },
        }
    }

    pub fn is_due(&self) -> bool {
        chrono::Utc::now().timestamp() >= self.due_at
    }
}

/// A file's modification time in Unix seconds (0 when unknown).
pub fn mtime_secs(path: &std::path::Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Capped, jittered exponential backoff between connection attempts: 1 s doubling to 60 s,
/// back to 1 s after a session that lasted more than a minute.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_secs(1) }
    }
}

impl Backoff {
    /// How long to wait after a session that lasted `lasted`.
    pub fn after(&mut self, lasted: Duration) -> Duration {
        if lasted > Duration::from_secs(60) {
            self.next = Duration::from_secs(1);
        }
        let wait = self.next.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
        self.next = (self.next * 2).min(Duration::from_secs(60));
        wait
    }
}
