//! An agent (or store) clock one hour off still accepts the certificates Cofre's CA issues at
//! this very moment (#13): the controller's server certificate (issued anew at every start),
//! a store's server certificate (renewed in place) and a CA created by a fresh install. The
//! client's clock is injected: rustls verifies against the `now` it is given, exactly as the
//! agent's handshake does with its own clock (no faketime on this machine, and processes cannot
//! fake time otherwise). The controller judges agent certificates with its own clock, which is
//! right, so only the client side is at risk.
//!
//! Fails with the former five-minute back-dating: an agent an hour behind got
//! `NotValidYet` for the first 55 minutes after every controller restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cofre_controller::pki::{Ca, generate_ca};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls_pki_types::pem::PemObject as _;

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

/// Whether a client whose clock reads `skew` seconds off the true time accepts `chain_pem`
/// (leaf first) for `host`, trusting only `ca_pem`.
fn accepted(ca_pem: &str, chain_pem: &str, host: &str, skew: i64) -> Result<(), rustls::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in ders(ca_pem) {
        roots.add(c).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots)).build().unwrap();
    let chain = ders(chain_pem);
    let true_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let client_now = true_now.checked_add_signed(skew).unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(host.to_string()).unwrap(),
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(client_now)),
        )
        .map(|_| ())
}

#[test]
fn a_client_clock_an_hour_off_accepts_certificates_issued_this_moment() {
    let material = generate_ca().unwrap();
    let ca = Ca::load(&material).unwrap();
    let (controller_chain, _key) = ca.issue_server_cert(&["cofre.example.org".to_string()]).unwrap();
    let store_key = rcgen::KeyPair::generate().unwrap();
    let csr =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&store_key).unwrap();
    let store = ca
        .issue_store_server_cert(
            uuid::Uuid::new_v4(),
            csr.der(),
            "store.example.org",
            Duration::from_secs(30 * 86_400),
        )
        .unwrap();
    for (what, skew) in
        [("an hour behind", -3_600), ("an hour ahead", 3_600), ("on time", 0), ("2 h 59 min behind", -10_740)]
    {
        accepted(&material.cert_pem, &controller_chain, "cofre.example.org", skew)
            .unwrap_or_else(|e| panic!("a client {what} refuses the controller's new certificate: {e}"));
        accepted(&material.cert_pem, &store.pem, "store.example.org", skew)
            .unwrap_or_else(|e| panic!("a client {what} refuses a store's new certificate: {e}"));
    }
    // The allowance is a bound, not a hole: a clock far enough behind still refuses.
    let far = accepted(&material.cert_pem, &controller_chain, "cofre.example.org", -4 * 3_600);
    assert!(format!("{far:?}").contains("NotValidYet"), "{far:?}");
}
