//! Errors of the engine: the semantic cases callers act on, with messages meant for a sysadmin.
//!
//! rustic_core reports almost everything as a boxed [`RusticError`] whose top message is often
//! generic ("Backoff failed, please check the logs"), while the useful part (HTTP status, the
//! `io::Error` of a refused connection, a TLS verification failure) sits further down the
//! `source()` chain. [`from_rustic`] walks that chain, downcasts to the `reqwest` error type that
//! rustic_backend uses to find the HTTP status, and builds a one-line message. Every message goes
//! through a [`Redactor`] so that no password can leak even if a lower layer put one in a text.

use std::error::Error as StdError;
use std::fmt::Write as _;

use rustic_core::RusticError;

/// Whether retrying the same call later can succeed without anybody changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RetryClass {
    /// Network trouble, server errors, timeouts: retry with backoff.
    Temporary,
    /// Wrong configuration, credentials or input: retrying will fail the same way.
    Permanent,
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller passed something unusable (bad URL, plain http to a remote host, empty paths…).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// There is no repository config at the URL: the repository must be initialised first.
    #[error(
        "no restic repository exists at this URL (the REST server has no config file there); \
         it must be initialised first"
    )]
    NotInitialised,
    /// `init_repository` found an existing repository; its id when the password could open it.
    #[error("a restic repository already exists at this URL{}", match .restic_id {
        Some(id) => format!(" (restic repository id {id})"),
        None => " (its id could not be read with the given repository password)".to_owned(),
    })]
    AlreadyInitialised { restic_id: Option<String> },
    /// The repository at the URL is not the one the caller expects.
    #[error(
        "the repository at this URL has restic id {found}, but {expected} was expected; \
         refusing to use it"
    )]
    RepositoryIdMismatch { expected: String, found: String },
    /// The restic repository password matches no key of the repository.
    #[error("wrong repository password: no key of the repository matches it")]
    WrongPassword,
    /// HTTP 401/403 from the REST server.
    #[error(
        "the REST server refused the credentials or the access to this repository path \
         (HTTP {status}){}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) }
    )]
    AccessDenied { status: u16, detail: String },
    /// TLS to the REST server failed in a way retrying will not fix (unknown CA, wrong name…).
    #[error("TLS connection to the REST server failed (check the CA certificate and the host name): {0}")]
    Tls(String),
    /// Network or REST server trouble; `status` is the HTTP status when there was a response.
    #[error("REST server or network error{}: {message}", match .status {
        Some(s) => format!(" (HTTP {s})"),
        None => String::new(),
    })]
    Backend { status: Option<u16>, message: String },
    /// Someone else's lock stayed in the way longer than the caller was willing to wait.
    #[error("the repository is locked: {0}; giving up for now")]
    Locked(String),
    /// A snapshot or a path inside a snapshot does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else (local I/O, unexpected rustic_core failures).
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Whether retrying later makes sense.
    ///
    /// `Other` counts as temporary: it is mostly local I/O trouble or an unexpected failure
    /// inside rustic_core, and the next scheduled attempt is the right place to find out.
    #[must_use]
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::Backend { status, .. } => match status {
                None => RetryClass::Temporary,
                Some(408 | 425 | 429) => RetryClass::Temporary,
                Some(s) if (400..500).contains(s) => RetryClass::Permanent,
                Some(_) => RetryClass::Temporary,
            },
            Self::Other(_) | Self::Locked(_) => RetryClass::Temporary,
            Self::InvalidInput(_)
            | Self::NotInitialised
            | Self::AlreadyInitialised { .. }
            | Self::RepositoryIdMismatch { .. }
            | Self::WrongPassword
            | Self::AccessDenied { .. }
            | Self::Tls(_)
            | Self::NotFound(_) => RetryClass::Permanent,
        }
    }
}

/// Removes secrets from texts that end up in error messages and warnings.
#[derive(Default, Clone)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Registers a secret (empty strings are ignored).
    pub(crate) fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_owned());
            // Longest first, so that a secret containing another one is removed whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// The messages of an error and all its sources, joined with ": ", skipping repetitions.
pub(crate) fn chain_message(err: &(dyn StdError + 'static)) -> String {
    let mut msg = String::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        let text = text.trim();
        if !text.is_empty() && !msg.contains(text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(text);
        }
        current = e.source();
    }
    msg
}

/// One line describing a rustic error: its guidance with context, then every cause.
pub(crate) fn describe_rustic(err: &RusticError) -> String {
    // rustic's guidance texts may span several lines; messages here are one line.
    let log = err.display_log().replace('\n', " ");
    let mut msg = log.strip_prefix("Error: ").unwrap_or(&log).to_owned();
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !text.trim().is_empty() && !msg.contains(text.trim()) {
            let _ = write!(msg, ": {}", text.trim());
        }
        current = e.source();
    }
    msg
}

/// What the source chain says about the transport.
struct Transport {
    status: Option<u16>,
    tls: bool,
    http: bool,
}

fn inspect_chain(err: &(dyn StdError + 'static)) -> Transport {
    let mut found = Transport { status: None, tls: false, http: false };
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(re) = e.downcast_ref::<reqwest_rustic::Error>() {
            found.http = true;
            if let Some(status) = re.status() {
                found.status = Some(status.as_u16());
            }
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("handshake") {
            found.tls = true;
        }
        current = e.source();
    }
    found
}

/// Classifies a transport-level error (from rustic's REST backend or from our own probe).
pub(crate) fn from_transport(err: &(dyn StdError + 'static), message: String) -> EngineError {
    let t = inspect_chain(err);
    match t.status {
        Some(status @ (401 | 403)) => EngineError::AccessDenied { status, detail: message },
        Some(status) => EngineError::Backend { status: Some(status), message },
        None if t.tls => EngineError::Tls(message),
        None => EngineError::Backend { status: None, message },
    }
}

/// Maps a rustic error to the semantic cases. `doing` says what the engine was doing.
pub(crate) fn from_rustic(err: &RusticError, redactor: &Redactor, doing: &str) -> EngineError {
    if err.is_incorrect_password() {
        return EngineError::WrongPassword;
    }
    let message = redactor.redact(&format!("{doing}: {}", describe_rustic(err)));
    if inspect_chain(err).http {
        return from_transport(err, message);
    }
    EngineError::Other(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classes() {
        let backend = |status| EngineError::Backend { status, message: String::new() };
        assert_eq!(backend(None).retry_class(), RetryClass::Temporary);
        assert_eq!(backend(Some(503)).retry_class(), RetryClass::Temporary);
        assert_eq!(backend(Some(429)).retry_class(), RetryClass::Temporary);
        assert_eq!(backend(Some(400)).retry_class(), RetryClass::Permanent);
        assert_eq!(EngineError::WrongPassword.retry_class(), RetryClass::Permanent);
        let denied = EngineError::AccessDenied { status: 401, detail: String::new() };
        assert_eq!(denied.retry_class(), RetryClass::Permanent);
        assert!(denied.to_string().contains("refused the credentials"));
    }

    #[test]
    fn redactor_removes_secrets() {
        let mut r = Redactor::default();
        r.add("s3cr3t");
        r.add("s3cr3t%40x");
        r.add("");
        assert_eq!(r.redact("a s3cr3t%40x b s3cr3t"), "a *** b ***");
    }

    #[test]
    fn chain_is_walked() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let top = RusticError::with_source(rustic_core::ErrorKind::Backend, "Backoff failed", io);
        let msg = describe_rustic(&top);
        assert!(msg.contains("Backoff failed") && msg.contains("refused"), "{msg}");
        let mapped = from_rustic(&top, &Redactor::default(), "opening");
        assert!(matches!(mapped, EngineError::Other(_)), "{mapped:?}");
    }
}
