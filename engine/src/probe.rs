//! A quick look at the REST server before rustic_core touches it: is there a config file?
//!
//! rustic_backend 0.7 answers "is there a config?" with a `HEAD config` request and treats *any*
//! non-success status as "no config": a 401/403 (wrong REST credentials) or a 500 would look
//! exactly like an empty repository, and `init` would then try to create one. It also has no
//! connect timeout, so an unreachable (black-holed) server costs minutes. This module sends the
//! same `HEAD config` itself, with short timeouts, and turns the answer into a precise result:
//! present, absent (404), refused credentials, server error, or network/TLS failure.
//!
//! It uses the reqwest version rustic_backend already links, configured the same way (extra root
//! CA, optional client identity), so what passes here also passes in rustic.

use std::time::Duration;

use reqwest_rustic::StatusCode;
use reqwest_rustic::blocking::Client;
use secrecy::ExposeSecret;

use crate::RepoTarget;
use crate::error::{EngineError, Redactor, chain_message, from_transport};

/// Time to establish a TCP (and TLS) connection to the REST server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the whole probe request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts for temporary failures (connection trouble, 5xx), one second apart.
const ATTEMPTS: u32 = 2;

/// Whether the repository has a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigState {
    Present,
    Absent,
}

/// Sends `HEAD <url>/config` and classifies the answer.
pub(crate) fn probe_config(
    target: &RepoTarget,
    url: &url::Url,
    redactor: &Redactor,
) -> Result<ConfigState, EngineError> {
    let client = build_client(target)?;
    let config_url = url
        .join("config")
        .map_err(|err| EngineError::InvalidInput(format!("cannot build the config URL from {url}: {err}")))?;

    let mut attempt = 1;
    loop {
        let result = probe_once(&client, target, &config_url, redactor);
        match result {
            Err(err) if attempt < ATTEMPTS && err.retry_class() == crate::RetryClass::Temporary => {
                log::debug!("probing {config_url} failed ({err}), retrying");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

fn probe_once(
    client: &Client,
    target: &RepoTarget,
    config_url: &url::Url,
    redactor: &Redactor,
) -> Result<ConfigState, EngineError> {
    let mut request = client.head(config_url.as_str());
    if let Some(user) = &target.username {
        request = request.basic_auth(user, target.password.as_ref().map(|p| p.expose_secret().to_owned()));
    }
    let response = match request.send() {
        Ok(response) => response,
        Err(err) => {
            let message = redactor.redact(&format!(
                "cannot reach the REST server at {}: {}",
                host_port(config_url),
                chain_message(&err)
            ));
            return Err(from_transport(&err, message));
        }
    };
    let status = response.status();
    match status {
        s if s.is_success() => Ok(ConfigState::Present),
        StatusCode::NOT_FOUND => Ok(ConfigState::Absent),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(EngineError::AccessDenied {
            status: status.as_u16(),
            detail: format!("HEAD {config_url} answered {status}"),
        }),
        _ => Err(EngineError::Backend {
            status: Some(status.as_u16()),
            message: format!("HEAD {config_url} answered {status}"),
        }),
    }
}

pub(crate) fn host_port(url: &url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => url.to_string(),
    }
}

fn build_client(target: &RepoTarget) -> Result<Client, EngineError> {
    client(target, REQUEST_TIMEOUT)
}

/// An HTTP client for the REST server, configured as rustic_backend's (extra root CA, client
/// identity), with `timeout` per request.
pub(crate) fn client(target: &RepoTarget, timeout: Duration) -> Result<Client, EngineError> {
    let mut builder = Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .user_agent(concat!("cofre-engine/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &target.ca_cert_file {
        let pem = read_pem(path, "CA certificate")?;
        let cert = reqwest_rustic::Certificate::from_pem(&pem).map_err(|err| {
            EngineError::InvalidInput(format!(
                "the CA certificate file {} is not a PEM certificate: {}",
                path.display(),
                chain_message(&err)
            ))
        })?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some(path) = &target.client_identity_file {
        let pem = read_pem(path, "client identity")?;
        let identity = reqwest_rustic::Identity::from_pem(&pem).map_err(|err| {
            EngineError::InvalidInput(format!(
                "the client identity file {} must hold a PEM certificate and its private key: {}",
                path.display(),
                chain_message(&err)
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|err| EngineError::Other(format!("cannot set up the HTTP client: {}", chain_message(&err))))
}

/// Reads a PEM file and checks that it holds what it should: reqwest accepts a file without any
/// PEM block silently (and then simply trusts no extra CA / presents no certificate).
fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, EngineError> {
    let pem = std::fs::read(path).map_err(|err| {
        EngineError::InvalidInput(format!("cannot read the {what} file {}: {err}", path.display()))
    })?;
    let text = String::from_utf8_lossy(&pem);
    let has_cert = text.contains("-----BEGIN CERTIFICATE-----");
    let needs_key = what == "client identity";
    let has_key = text.contains("PRIVATE KEY-----");
    if !has_cert || (needs_key && !has_key) {
        return Err(EngineError::InvalidInput(format!(
            "the {what} file {} holds no PEM certificate{}",
            path.display(),
            if needs_key { " and private key" } else { "" }
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn target(url: &str) -> RepoTarget {
        RepoTarget {
            url: url.to_owned(),
            username: Some("u".to_owned()),
            password: Some(SecretString::from("pw-1234".to_owned())),
            repository_password: SecretString::from("repo-pw".to_owned()),
            ca_cert_file: None,
            client_identity_file: None,
            allow_insecure_http: false,
        }
    }

    #[test]
    fn refused_connection_is_temporary_and_fast() {
        // Bind then drop a listener: the port is then very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = target(&format!("http://127.0.0.1:{port}/repo"));
        let prepared = t.prepare().unwrap();
        let started = std::time::Instant::now();
        let err = probe_config(&t, &prepared.url, &prepared.redactor).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(err.retry_class(), crate::RetryClass::Temporary, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("pw-1234"), "{text}");
    }

    #[test]
    fn bad_ca_file_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut t = target("https://127.0.0.1:1/repo");
        t.ca_cert_file = Some(ca);
        let err = build_client(&t).map(|_| ()).unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput(_)), "{err:?}");
    }
}
