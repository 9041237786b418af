//! https to a REST server whose certificate comes from a private CA (`ca_cert_file`), with and
//! without a client identity file; certificates are made with the openssl CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cofre_engine::{EngineError, RetryClass, backup, init_repository, repository_id};
use common::{RestServer, Tls, request};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `name.pem` (certificate) and `name.key` signed by the CA in `dir`.
fn leaf(dir: &Path, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (key, csr, pem, extfile) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client identity (certificate + key in one
/// PEM file, as `client_identity_file` expects).
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cofre test CA",
        ],
    );
    leaf(
        dir,
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    leaf(
        dir,
        "client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    let identity = dir.join("client-identity.pem");
    let mut both = std::fs::read(dir.join("client.pem")).unwrap();
    both.extend(std::fs::read(dir.join("client.key")).unwrap());
    std::fs::write(&identity, both).unwrap();
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"), identity)
}

#[test]
fn private_ca_and_client_identity() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key, identity) = make_pki(pki.path());
    let server = RestServer::start_with(&["tls-repo"], Some(Tls { cacert: &ca, cert: &cert, key: &key }));

    // With the private CA (and a client identity the server does not ask for) all works, and
    // restic agrees on the id.
    let mut t = server.target("tls-repo");
    t.client_identity_file = Some(identity);
    let id = init_repository(&t).expect("init over https");
    let config = server.restic_json("tls-repo", &["cat", "config"]);
    assert_eq!(config["id"].as_str(), Some(id.as_str()));
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), b"over tls").unwrap();
    let report = backup(&t, &request(&id, &[data.path()])).expect("backup over https");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // Without the CA the certificate is unknown: a permanent TLS error, quickly.
    let mut no_ca = server.target("tls-repo");
    no_ca.ca_cert_file = None;
    let started = Instant::now();
    let err = repository_id(&no_ca).unwrap_err();
    eprintln!("unknown CA: {err}");
    // A bound on retrying a permanent error, not a speed target.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(matches!(err, EngineError::Tls(_)), "{err:?}");
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");

    // A client identity file without its private key is rejected before any connection.
    let mut no_key = server.target("tls-repo");
    no_key.client_identity_file = Some(pki.path().join("client.pem"));
    let err = repository_id(&no_key).unwrap_err();
    eprintln!("identity without key: {err}");
    assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
}
