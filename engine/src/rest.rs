//! The engine's own REST client for restic's REST protocol, beside rustic_backend's: whole-body
//! pack uploads (rustic_backend streams them 8 KiB per thread hand-off) and lock files
//! (rustic_core 0.13 has no lock file type at all). Built like the probe's client: the same
//! reqwest as rustic_backend, the same CA and client identity, credentials as basic auth.

use std::time::Duration;

use bytes::Bytes;
use reqwest_rustic::blocking::{Body, Client, Response};
use secrecy::ExposeSecret as _;

use crate::error::{EngineError, Redactor, chain_message, from_transport};
use crate::target::Prepared;
use crate::{RepoTarget, RetryClass};

/// Backoff before the 2nd and 3rd attempt of a temporary failure (rustic_backend's `retry = 3`).
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

/// restic's REST API v2 listing (names with sizes).
const V2: &str = "application/vnd.x.restic.rest.v2";

/// Files of one repository over restic's REST protocol.
#[derive(Clone)]
pub(crate) struct RestFiles {
    client: Client,
    base: url::Url,
    user: Option<String>,
    password: Option<String>,
    redactor: Redactor,
}

impl RestFiles {
    /// `timeout` bounds a whole request, body included.
    pub(crate) fn new(
        target: &RepoTarget,
        prepared: &Prepared,
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        Ok(Self {
            client: crate::probe::client(target, timeout)?,
            base: prepared.url.clone(),
            user: target.username.clone(),
            password: target.password.as_ref().map(|p| p.expose_secret().to_owned()),
            redactor: prepared.redactor.clone(),
        })
    }

    fn url(&self, path: &str) -> Result<url::Url, EngineError> {
        self.base.join(path).map_err(|e| EngineError::Other(format!("cannot build the URL of {path}: {e}")))
    }

    /// Sends one request, retrying temporary failures; `Ok(None)` for a 404 when `allow_404`.
    fn send(
        &self,
        what: &str,
        allow_404: bool,
        build: impl Fn(&Client) -> reqwest_rustic::blocking::RequestBuilder,
    ) -> Result<Option<Response>, EngineError> {
        let mut backoff = BACKOFF.iter();
        loop {
            let mut request = build(&self.client);
            if let Some(user) = &self.user {
                request = request.basic_auth(user, self.password.clone());
            }
            let what = format!("{what} on {}", crate::probe::host_port(&self.base));
            let result = match request.send() {
                Err(err) => Err(from_transport(
                    &err,
                    self.redactor.redact(&format!("{what}: {}", chain_message(&err))),
                )),
                Ok(r) if r.status().is_success() => Ok(Some(r)),
                Ok(r) if allow_404 && r.status().as_u16() == 404 => Ok(None),
                Ok(r) => {
                    let status = r.status();
                    let detail = format!("{what}: the server answered {status}");
                    Err(match status.as_u16() {
                        401 | 403 => EngineError::AccessDenied { status: status.as_u16(), detail },
                        code => EngineError::Backend { status: Some(code), message: detail },
                    })
                }
            };
            match result {
                Err(err) if err.retry_class() == RetryClass::Temporary => match backoff.next() {
                    Some(wait) => {
                        log::debug!("{err}; retrying");
                        std::thread::sleep(*wait);
                    }
                    None => return Err(err),
                },
                other => return other,
            }
        }
    }

    /// Stores `dir/id` with `bytes` as one body.
    pub(crate) fn put(&self, dir: &str, id: &str, bytes: &Bytes) -> Result<(), EngineError> {
        let url = self.url(&format!("{dir}/{id}"))?;
        self.send(&format!("storing {dir}/{}", short(id)), false, |c| {
            c.post(url.as_str()).body(Body::from(bytes.clone()))
        })?;
        Ok(())
    }

    /// The content of `dir/id` (None: not there).
    pub(crate) fn get(&self, dir: &str, id: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let url = self.url(&format!("{dir}/{id}"))?;
        let Some(r) = self.send(&format!("reading {dir}/{}", short(id)), true, |c| c.get(url.as_str()))?
        else {
            return Ok(None);
        };
        let bytes = r.bytes().map_err(|e| EngineError::Backend {
            status: None,
            message: self.redactor.redact(&format!("reading {dir}/{}: {}", short(id), chain_message(&e))),
        })?;
        Ok(Some(bytes.to_vec()))
    }

    /// Removes `dir/id`; one already gone is fine.
    pub(crate) fn delete(&self, dir: &str, id: &str) -> Result<(), EngineError> {
        let url = self.url(&format!("{dir}/{id}"))?;
        self.send(&format!("removing {dir}/{}", short(id)), true, |c| c.delete(url.as_str()))?;
        Ok(())
    }

    /// The names in `dir` (REST v2 listing, or v1's plain names).
    pub(crate) fn list(&self, dir: &str) -> Result<Vec<String>, EngineError> {
        let url = self.url(&format!("{dir}/"))?;
        let Some(r) =
            self.send(&format!("listing {dir}"), true, |c| c.get(url.as_str()).header("Accept", V2))?
        else {
            return Ok(Vec::new());
        };
        let body = r.bytes().map_err(|e| EngineError::Backend {
            status: None,
            message: self.redactor.redact(&format!("listing {dir}: {}", chain_message(&e))),
        })?;
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Entry {
            V2 { name: String },
            V1(String),
        }
        let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(|e| EngineError::Backend {
            status: None,
            message: format!("listing {dir}: unreadable answer: {e}"),
        })?;
        Ok(entries
            .into_iter()
            .map(|e| match e {
                Entry::V2 { name } | Entry::V1(name) => name,
            })
            .collect())
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
