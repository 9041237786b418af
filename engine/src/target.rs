//! Where a repository lives: URL checks, secrets handling and the rustic REST backend options.
//!
//! The URL a caller gives never holds credentials; they are put into the `rest:` location that
//! rustic_backend parses (percent-encoded by the `url` crate). reqwest moves them from the URL into
//! an `Authorization` header before sending, so its error messages show the URL without them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustic_backend::BackendOptions;
use rustic_core::RepositoryBackends;
use secrecy::{ExposeSecret, SecretString};
use url::{Host, Url};

use crate::error::{EngineError, Redactor, describe_rustic};

/// Retries of one REST request after the first attempt. rustic_backend backs off exponentially
/// from 1 s (1 + 2 + 4 = 7 s in all); its default of 5 retries waits 31 s on a dead server.
const REST_RETRIES: &str = "3";

/// Time limit of one REST request, body included. Pack files can be large (rustic grows data
/// packs with the repository size), so this stays at rustic's own default of ten minutes; a dead
/// or unreachable server is caught quickly by the probe in `probe.rs` instead.
const REST_TIMEOUT: &str = "600s";

/// Where a repository lives and how to open it. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct RepoTarget {
    /// `https://host:port/path` of the repository on a REST server; no credentials in it.
    pub url: String,
    /// HTTP basic auth user for the REST server.
    pub username: Option<String>,
    /// HTTP basic auth password for the REST server.
    pub password: Option<SecretString>,
    /// The restic repository password.
    pub repository_password: SecretString,
    /// PEM file of a private CA that signed the REST server's certificate.
    pub ca_cert_file: Option<PathBuf>,
    /// One PEM file holding a client certificate and its private key (mutual TLS).
    pub client_identity_file: Option<PathBuf>,
    /// Allow plain `http://` to hosts other than loopback ones.
    pub allow_insecure_http: bool,
}

impl fmt::Debug for RepoTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoTarget")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("repository_password", &"[redacted]")
            .field("ca_cert_file", &self.ca_cert_file)
            .field("client_identity_file", &self.client_identity_file)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

/// Checks a repository URL before anything else is done with it.
///
/// Only `https://` and `http://` are accepted; the URL must name a host and hold no credentials,
/// query or fragment. Plain `http://` is refused unless the host is a loopback one
/// (127.0.0.0/8, ::1, `localhost`) or `allow_insecure_http` is set.
pub fn check_repository_url(url: &str, allow_insecure_http: bool) -> Result<(), EngineError> {
    parse_repository_url(url, allow_insecure_http).map(|_| ())
}

/// [`check_repository_url`] returning the parsed URL, with a trailing `/` added to its path.
pub(crate) fn parse_repository_url(raw: &str, allow_insecure_http: bool) -> Result<Url, EngineError> {
    let invalid = |why: String| EngineError::InvalidInput(why);
    let mut url = Url::parse(raw.trim()).map_err(|err| {
        // The text may hold credentials despite the rules, so it is not echoed back.
        invalid(format!("the repository URL cannot be parsed ({err})"))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "the repository URL must not contain credentials; pass the REST server's \
             username and password separately"
                .to_owned(),
        ));
    }
    let scheme = url.scheme().to_owned();
    if scheme != "https" && scheme != "http" {
        return Err(invalid(format!(
            "unsupported URL scheme `{scheme}` in {url}: only https:// (or http:// to a loopback \
             host) is allowed"
        )));
    }
    let Some(host) = url.host() else {
        return Err(invalid(format!("the repository URL {url} names no host")));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!("the repository URL {url} must not have a query or a fragment")));
    }
    if scheme == "http" && !allow_insecure_http && !is_loopback(&host) {
        return Err(invalid(format!(
            "plain http:// is refused for the non-loopback host `{host}` (passwords and backups \
             would cross the network unencrypted): use https://, or allow insecure http explicitly"
        )));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// Everything derived from a [`RepoTarget`] that one engine call needs.
pub(crate) struct Prepared {
    /// The repository URL without credentials, ending with `/`.
    pub(crate) url: Url,
    pub(crate) redactor: Redactor,
    pub(crate) backends: RepositoryBackends,
}

impl RepoTarget {
    /// Checks the target and builds rustic's backend (no network access yet).
    pub(crate) fn prepare(&self) -> Result<Prepared, EngineError> {
        let url = parse_repository_url(&self.url, self.allow_insecure_http)?;
        let mut redactor = Redactor::default();
        redactor.add(self.repository_password.expose_secret());

        let mut with_credentials = url.clone();
        match (&self.username, &self.password) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(EngineError::InvalidInput(
                    "a REST server password is set but no username".to_owned(),
                ));
            }
            (Some(user), password) => {
                if user.is_empty() || user.contains(':') {
                    return Err(EngineError::InvalidInput(
                        "the REST server username must be non-empty and contain no `:`".to_owned(),
                    ));
                }
                let bad = || EngineError::InvalidInput("the URL cannot carry credentials".to_owned());
                with_credentials.set_username(&percent_encode(user)).map_err(|()| bad())?;
                if let Some(password) = password {
                    let password = password.expose_secret();
                    let encoded = percent_encode(password);
                    redactor.add(password);
                    redactor.add(&encoded);
                    with_credentials.set_password(Some(&encoded)).map_err(|()| bad())?;
                }
            }
        }

        let mut options = BTreeMap::new();
        options.insert("retry".to_owned(), REST_RETRIES.to_owned());
        options.insert("timeout".to_owned(), REST_TIMEOUT.to_owned());
        if let Some(path) = &self.ca_cert_file {
            options.insert("cacert".to_owned(), utf8_file(path, "CA certificate")?);
        }
        if let Some(path) = &self.client_identity_file {
            options.insert("tls-client-cert".to_owned(), utf8_file(path, "client identity")?);
        }

        let backends = BackendOptions::default()
            .repository(format!("rest:{with_credentials}"))
            .options(options)
            .to_backends()
            .map_err(|err| {
                // Nothing goes over the network yet: failures are about local files (CA,
                // client identity) and option values.
                let text = describe_rustic(&err);
                EngineError::InvalidInput(redactor.redact(&format!("cannot set up the REST backend: {text}")))
            })?;
        Ok(Prepared { url, redactor, backends })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters. The `url` crate leaves `%`
/// alone in user info, and reqwest percent-decodes what it finds there, so a password like
/// `ab%41` must become `ab%2541` here to arrive intact.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A file path given as a backend option: must exist and be valid UTF-8.
fn utf8_file(path: &Path, what: &str) -> Result<String, EngineError> {
    let text = path.to_str().ok_or_else(|| {
        EngineError::InvalidInput(format!("the {what} file path {} is not valid UTF-8", path.display()))
    })?;
    std::fs::metadata(path)
        .map_err(|err| EngineError::InvalidInput(format!("cannot use the {what} file {text}: {err}")))?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> RepoTarget {
        RepoTarget {
            url: url.to_owned(),
            username: Some("machine-1".to_owned()),
            password: Some(SecretString::from("p@ss:w/rd%".to_owned())),
            repository_password: SecretString::from("repo-secret".to_owned()),
            ca_cert_file: None,
            client_identity_file: None,
            allow_insecure_http: false,
        }
    }

    #[test]
    fn url_rules() {
        assert!(check_repository_url("https://backup.example.org:8000/m1", false).is_ok());
        assert!(check_repository_url("http://127.0.0.1:8000/m1", false).is_ok());
        assert!(check_repository_url("http://127.1.2.3/m1", false).is_ok());
        assert!(check_repository_url("http://[::1]:8000/m1", false).is_ok());
        assert!(check_repository_url("http://LocalHost:8000/m1", false).is_ok());
        assert!(check_repository_url("http://backup.example.org/m1", true).is_ok());
        let err = check_repository_url("http://backup.example.org/m1", false).unwrap_err();
        assert!(matches!(&err, EngineError::InvalidInput(m) if m.contains("plain http")), "{err}");
        for bad in [
            "ftp://host/x",
            "rest:https://host/x",
            "https://u:secretpw@host/x",
            "https://host/x?a=b",
            "not a url",
            "file:///tmp/repo",
        ] {
            let err = check_repository_url(bad, true).unwrap_err();
            assert!(matches!(err, EngineError::InvalidInput(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("secretpw"), "{err}");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = format!("{:?}", target("https://h/x"));
        assert!(!text.contains("p@ss") && !text.contains("repo-secret"), "{text}");
        assert!(text.contains("machine-1"), "{text}");
    }

    #[test]
    fn backend_options_are_accepted() {
        // Builds rustic's REST backend with our option values: catches renamed options or
        // unparsable durations without any network access.
        let prepared = target("https://backup.example.org:8000/m1").prepare().unwrap();
        assert_eq!(prepared.url.as_str(), "https://backup.example.org:8000/m1/");
        assert_eq!(prepared.redactor.redact("x p@ss:w/rd% y"), "x *** y");
        assert_eq!(prepared.redactor.redact("p%40ss%3Aw%2Frd%25"), "***");

        let mut missing = target("https://backup.example.org/m1");
        missing.ca_cert_file = Some(PathBuf::from("/nonexistent/ca.pem"));
        let err = missing.prepare().map(|_| ()).unwrap_err();
        assert!(matches!(&err, EngineError::InvalidInput(m) if m.contains("CA certificate")));
    }
}

/// A [`RepoTarget`] with its secrets as plain strings, to hand a job to a child process over a
/// pipe (never argv, the environment or disk). `Debug` shows no secrets.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct WireTarget {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub repository_password: String,
    pub ca_cert_file: Option<PathBuf>,
    pub client_identity_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
}

impl fmt::Debug for WireTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireTarget").field("url", &self.url).finish_non_exhaustive()
    }
}

impl From<&RepoTarget> for WireTarget {
    fn from(t: &RepoTarget) -> Self {
        Self {
            url: t.url.clone(),
            username: t.username.clone(),
            password: t.password.as_ref().map(|p| p.expose_secret().to_owned()),
            repository_password: t.repository_password.expose_secret().to_owned(),
            ca_cert_file: t.ca_cert_file.clone(),
            client_identity_file: t.client_identity_file.clone(),
            allow_insecure_http: t.allow_insecure_http,
        }
    }
}

impl From<WireTarget> for RepoTarget {
    fn from(t: WireTarget) -> Self {
        Self {
            url: t.url,
            username: t.username,
            password: t.password.map(SecretString::from),
            repository_password: SecretString::from(t.repository_password),
            ca_cert_file: t.ca_cert_file,
            client_identity_file: t.client_identity_file,
            allow_insecure_http: t.allow_insecure_http,
        }
    }
}
