//! Pack uploads: `POST <repository>/data/<id>` with the whole pack as one body.
//!
//! rustic_backend 0.7 streams every upload from a reader through reqwest's blocking client,
//! which hands the body to its runtime thread 8 KiB at a time: two thread switches per 8 KiB,
//! ~170,000 for a 1 GB backup (measured with `/usr/bin/time -v`, 8% of the samples in reqwest's
//! thread). A body made of one `Bytes` buffer goes over in one piece. The client is built like
//! the probe's (same reqwest as rustic_backend, same CA and client identity); index and
//! snapshot files still go through rustic_backend.

use std::time::Duration;

use bytes::Bytes;
use reqwest_rustic::blocking::{Body, Client};
use secrecy::ExposeSecret as _;

use crate::error::{EngineError, Redactor, chain_message, from_transport};
use crate::target::Prepared;
use crate::{RepoTarget, RetryClass};

/// Time for one pack upload (rustic_backend's setting in the engine: it bounds whole uploads).
const TIMEOUT: Duration = Duration::from_secs(600);
/// Backoff before the 2nd and 3rd attempt of a temporary failure (rustic_backend's `retry = 3`).
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

pub(crate) struct PackUploader {
    client: Client,
    base: url::Url,
    user: Option<String>,
    password: Option<String>,
    redactor: Redactor,
}

impl PackUploader {
    pub(crate) fn new(target: &RepoTarget, prepared: &Prepared) -> Result<Self, EngineError> {
        Ok(Self {
            client: crate::probe::client(target, TIMEOUT)?,
            base: prepared.url.clone(),
            user: target.username.clone(),
            password: target.password.as_ref().map(|p| p.expose_secret().to_owned()),
            redactor: prepared.redactor.clone(),
        })
    }

    /// Stores pack `id` (64 hex digits), retrying temporary failures.
    pub(crate) fn put(&self, id: &str, bytes: &Bytes) -> Result<(), EngineError> {
        let url = self
            .base
            .join(&format!("data/{id}"))
            .map_err(|e| EngineError::Other(format!("cannot build the URL of pack {id}: {e}")))?;
        let mut backoff = BACKOFF.iter();
        loop {
            match self.put_once(&url, bytes.clone()) {
                Err(err) if err.retry_class() == RetryClass::Temporary => match backoff.next() {
                    Some(wait) => {
                        log::debug!("uploading pack {id} failed ({err}), retrying");
                        std::thread::sleep(*wait);
                    }
                    None => return Err(err),
                },
                other => return other,
            }
        }
    }

    fn put_once(&self, url: &url::Url, bytes: Bytes) -> Result<(), EngineError> {
        let mut request = self.client.post(url.as_str()).body(Body::from(bytes));
        if let Some(user) = &self.user {
            request = request.basic_auth(user, self.password.clone());
        }
        let what = format!("uploading a pack to {}", crate::probe::host_port(url));
        let response = request.send().map_err(|err| {
            from_transport(&err, self.redactor.redact(&format!("{what}: {}", chain_message(&err))))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = format!("{what}: the server answered {status}");
        Err(match status.as_u16() {
            401 | 403 => EngineError::AccessDenied { status: status.as_u16(), detail },
            code => EngineError::Backend { status: Some(code), message: detail },
        })
    }
}
