//! The controller's maintenance identity towards cofre-store: a client certificate with CN
//! `cofre-maintenance` that may create and delete in every repository on a store. It lives only
//! in this process's memory (a new key per process), lasts a day and is replaced after half of
//! that, so a copy that leaks from a crash dump is soon useless.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pki::{Ca, PkiError};

const LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct MaintenanceIdentity {
    ca: Arc<Ca>,
    current: Mutex<Option<(Instant, Arc<String>)>>,
}

impl std::fmt::Debug for MaintenanceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintenanceIdentity").finish_non_exhaustive()
    }
}

impl MaintenanceIdentity {
    pub fn new(ca: Arc<Ca>) -> Self {
        Self { ca, current: Mutex::new(None) }
    }

    /// The Cofre CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The certificate followed by its private key, one PEM (what the REST backend's
    /// `tls-client-cert` option takes).
    pub fn bundle_pem(&self) -> Result<Arc<String>, PkiError> {
        let mut cur = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, pem)) = cur.as_ref()
            && at.elapsed() < LIFETIME / 2
        {
            return Ok(pem.clone());
        }
        let (issued, key) = self.ca.issue_maintenance_identity(LIFETIME)?;
        let pem = Arc::new(format!("{}{}", issued.pem, key));
        *cur = Some((Instant::now(), pem.clone()));
        Ok(pem)
    }
}
