//! The agent's state directory: identity (certificate + key in one 0600 PEM file, also what
//! the REST backend presents for mTLS), the CA, the last plan (0600: it holds repository
//! secrets), schedule bookkeeping, the result spool and running-job markers. Every write is
//! atomic (temp file, fsync, rename), so a crash never leaves half a file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cofre_proto::agent::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Who this agent is, written at enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub machine_id: String,
    /// The first controller address (the only one before agents knew several; kept so an older
    /// agent reads this file).
    pub controller_url: String,
    /// Every address of the controller, in the order given (`--controller` repeated): its
    /// replicas, each reachable on its own. Empty in files written before: then
    /// `controller_url` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_urls: Vec<String>,
    pub ca_fingerprint: String,
}

impl Identity {
    /// The controller's addresses, in the order to try them.
    pub fn controllers(&self) -> Vec<String> {
        if self.controller_urls.is_empty() {
            vec![self.controller_url.clone()]
        } else {
            self.controller_urls.clone()
        }
    }
}

pub use cofre_dial::files::write_atomic;

impl StateDir {
    /// Opens (creating with mode 0700) the state directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create state dir {}", root.display()))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        for sub in ["spool", "running", "rest-ca"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn identity_pem_path(&self) -> PathBuf {
        self.root.join("identity.pem")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    pub fn running_dir(&self) -> PathBuf {
        self.root.join("running")
    }

    pub fn is_enrolled(&self) -> bool {
        self.root.join("identity.json").exists()
    }

    pub fn save_enrollment(
        &self,
        id: &Identity,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<()> {
        write_atomic(&self.ca_path(), ca_pem.as_bytes())?;
        self.save_certificate(cert_pem, key_pem)?;
        write_atomic(&self.root.join("identity.json"), &serde_json::to_vec_pretty(id)?)?;
        Ok(())
    }

    /// Replaces certificate and key together (one file, one rename).
    pub fn save_certificate(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        cofre_dial::files::write_identity(&self.identity_pem_path(), cert_pem, key_pem)
    }

    pub fn identity(&self) -> anyhow::Result<Identity> {
        let p = self.root.join("identity.json");
        let raw = std::fs::read(&p).with_context(|| {
            format!("this agent is not enrolled ({} missing): run `cofre-agent enroll` first", p.display())
        })?;
        serde_json::from_slice(&raw).with_context(|| format!("{} is corrupt", p.display()))
    }

    /// Replaces the controller's addresses of an enrolled agent (same machine, same CA pinned).
    pub fn save_controllers(&self, urls: &[String]) -> anyhow::Result<Identity> {
        let mut id = self.identity()?;
        id.controller_url = urls.first().cloned().context("no controller address given")?;
        id.controller_urls = urls.to_vec();
        write_atomic(&self.root.join("identity.json"), &serde_json::to_vec_pretty(&id)?)?;
        Ok(id)
    }

    /// Where the controller address that answered last is kept (tried first next time; see
    /// `cofre_dial::failover`).
    pub fn last_controller_path(&self) -> PathBuf {
        self.root.join("last-controller")
    }

    /// The controller address that answered last, if it is still one of `urls`.
    pub fn last_controller(&self, urls: &[String]) -> Option<usize> {
        cofre_dial::failover::last_answered(&self.last_controller_path(), urls)
    }

    /// Remembers the controller address that answered.
    pub fn save_last_controller(&self, url: &str) -> anyhow::Result<()> {
        cofre_dial::failover::save_answered(&self.last_controller_path(), url)?;
        Ok(())
    }

    /// (certificate PEM, key PEM) from the identity file.
    pub fn certificate(&self) -> anyhow::Result<(String, String)> {
        cofre_dial::files::read_identity(&self.identity_pem_path())
    }

    /// When this agent's certificate stops being valid (Unix seconds), if it can be read.
    pub fn certificate_not_after(&self) -> Option<i64> {
        let (cert, _) = self.certificate().ok()?;
        cofre_dial::not_after(&cert)
    }

    /// When this agent's certificate expired (RFC 3339), if it has by `now` (Unix seconds): it
    /// then needs re-enrollment. None while it is valid or cannot be read (reading it later
    /// reports that).
    pub fn expired_certificate(&self, now: i64) -> Option<String> {
        let not_after = self.certificate_not_after()?;
        (not_after <= now).then(|| {
            chrono::DateTime::from_timestamp(not_after, 0).map(|t| t.to_rfc3339()).unwrap_or_default()
        })
    }

    pub fn ca_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(self.ca_path())
            .with_context(|| format!("cannot read {}", self.ca_path().display()))
    }

    pub fn save_plan(&self, plan: &pb::Plan) -> anyhow::Result<()> {
        write_atomic(&self.root.join("plan.pb"), &plan.encode_to_vec())?;
        Ok(())
    }

    /// The last plan received, if any. A corrupt file is reported, not fatal: the agent keeps
    /// running and receives the plan again on its next connection.
    pub fn load_plan(&self) -> Option<pb::Plan> {
        let p = self.root.join("plan.pb");
        let raw = std::fs::read(&p).ok()?;
        match pb::Plan::decode(raw.as_slice()) {
            Ok(plan) => Some(plan),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "stored plan is corrupt; waiting for the controller");
                None
            }
        }
    }

    /// The local schedule's state (`scheduler::Scheduler` reads and writes its format).
    pub fn load_schedule(&self) -> Option<Vec<u8>> {
        std::fs::read(self.root.join("schedule.json")).ok()
    }

    pub fn save_schedule(&self, raw: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.root.join("schedule.json"), raw)?;
        Ok(())
    }

    /// Writes a REST server CA for a repository where the engine can read it.
    pub fn rest_ca_file(&self, repository_id: &str, pem: &str) -> anyhow::Result<PathBuf> {
        let safe: String = repository_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let p = self.root.join("rest-ca").join(format!("{safe}.pem"));
        if std::fs::read_to_string(&p).ok().as_deref() != Some(pem) {
            write_atomic(&p, pem.as_bytes())?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_addresses_are_kept_in_order_and_the_one_that_answered_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        // A file written before agents knew several addresses.
        let old = br#"{"machine_id":"m","controller_url":"https://a:7443","ca_fingerprint":"f"}"#;
        std::fs::write(dir.path().join("identity.json"), old).unwrap();
        assert_eq!(state.identity().unwrap().controllers(), ["https://a:7443"]);
        assert_eq!(state.last_controller(&["https://a:7443".into()]), None);

        let both = ["https://a:7443".to_string(), "https://b:7443".to_string()];
        let id = state.save_controllers(&both).unwrap();
        assert_eq!((id.controller_url.as_str(), id.controllers()), ("https://a:7443", both.to_vec()));
        assert_eq!(state.identity().unwrap().machine_id, "m", "the identity is kept");
        state.save_last_controller("https://b:7443").unwrap();
        assert_eq!(state.last_controller(&both), Some(1));
        // An address no longer listed is not tried first.
        assert_eq!(state.last_controller(&both[..1]), None);
    }
}
