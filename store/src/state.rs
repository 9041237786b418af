//! What cofre-store keeps in its state directory once enrolled: the Cofre CA (`ca.pem`, which
//! also verifies agents' client certificates), its own certificate and key (`identity.pem`,
//! 0600), who it is (`store.json`) and the last access list the controller sent
//! (`access-list.json`), which it serves from while the controller is away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::access::AccessList;
use crate::{ACCESS_LIST_FILE, CA_FILE, SERVER_CERT_FILE};

/// Who this store is, as enrollment made it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub store_id: String,
    /// The first controller address (the only one before stores knew several; kept so an
    /// older store reads this file).
    pub controller_url: String,
    /// Every address of the controller (its replicas), in the order given (`--controller`
    /// repeated). Empty in files written before: then `controller_url` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controller_urls: Vec<String>,
    /// The URL the controller registered for this store.
    pub url: String,
    pub ca_fingerprint: String,
}

impl Enrollment {
    /// The controller's addresses, in the order to try them.
    pub fn controllers(&self) -> Vec<String> {
        cofre_dial::failover::addresses(&self.controller_url, &self.controller_urls)
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

const IDENTITY_FILE: &str = "identity.pem";
const ENROLLMENT_FILE: &str = "store.json";
/// The controller address that answered last (tried first next time).
const LAST_CONTROLLER_FILE: &str = "last-controller";

pub use cofre_dial::files::write_atomic;

impl StateDir {
    /// Opens (creating it, 0700) the state directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", root.display()))?;
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_enrolled(&self) -> bool {
        self.root.join(ENROLLMENT_FILE).exists()
    }

    pub fn identity_path(&self) -> PathBuf {
        self.root.join(IDENTITY_FILE)
    }

    /// Where the controller address that answered last is kept.
    pub fn last_controller_path(&self) -> PathBuf {
        self.root.join(LAST_CONTROLLER_FILE)
    }

    /// Replaces the controller's addresses of an enrolled store (same store, same CA pinned);
    /// a running store uses them from its next connection.
    pub fn save_controllers(&self, urls: &[String]) -> anyhow::Result<Enrollment> {
        let mut e = self.enrollment()?;
        e.controller_url = urls.first().cloned().context("no controller address given")?;
        e.controller_urls = if urls.len() > 1 { urls.to_vec() } else { Vec::new() };
        write_atomic(&self.root.join(ENROLLMENT_FILE), &serde_json::to_vec_pretty(&e)?)?;
        Ok(e)
    }

    pub fn save_enrollment(
        &self,
        e: &Enrollment,
        ca_pem: &str,
        cert_pem: &str,
        server_chain_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<()> {
        write_atomic(&self.root.join(CA_FILE), ca_pem.as_bytes())?;
        self.save_server_certificate(server_chain_pem, key_pem)?;
        self.save_certificate(cert_pem, key_pem)?;
        write_atomic(&self.root.join(ENROLLMENT_FILE), &serde_json::to_vec_pretty(e)?)?;
        Ok(())
    }

    /// Replaces certificate and key together (one file, one rename).
    pub fn save_certificate(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        cofre_dial::files::write_identity(&self.identity_path(), cert_pem, key_pem)
    }

    /// The server certificate chain Cofre's CA issued, with its key (one file, one rename).
    /// Returns what was written. An empty chain (an older controller) writes nothing.
    pub fn save_server_certificate(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if chain_pem.trim().is_empty() {
            return Ok(None);
        }
        let both = format!("{chain_pem}{key_pem}").into_bytes();
        write_atomic(&self.root.join(SERVER_CERT_FILE), &both)?;
        Ok(Some(both))
    }

    pub fn enrollment(&self) -> anyhow::Result<Enrollment> {
        let p = self.root.join(ENROLLMENT_FILE);
        let raw = std::fs::read(&p).with_context(|| {
            format!("this store is not enrolled ({} missing): run `cofre-store enroll` first", p.display())
        })?;
        serde_json::from_slice(&raw).with_context(|| format!("{} is corrupt", p.display()))
    }

    /// (certificate PEM, key PEM).
    pub fn certificate(&self) -> anyhow::Result<(String, String)> {
        cofre_dial::files::read_identity(&self.identity_path())
    }

    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let p = self.root.join(CA_FILE);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    }

    pub fn save_access_list(&self, list: &AccessList) -> anyhow::Result<()> {
        write_atomic(&self.root.join(ACCESS_LIST_FILE), &serde_json::to_vec_pretty(list)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(&dir.path().join("state")).unwrap();
        let e = Enrollment {
            store_id: "s".into(),
            controller_url: "https://c:7443".into(),
            controller_urls: Vec::new(),
            url: "https://s:8443/".into(),
            ca_fingerprint: "ab".into(),
        };
        st.save_enrollment(&e, "CA", "CERT\n", "SERVER\n", "-----BEGIN PRIVATE KEY-----\nK\n").unwrap();
        assert!(st.is_enrolled());
        for f in [st.identity_path(), st.root().join(SERVER_CERT_FILE)] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let (cert, key) = st.certificate().unwrap();
        assert_eq!(cert, "CERT\n");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let names: Vec<_> = std::fs::read_dir(st.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn one_address_files_stay_valid_and_a_list_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        // A store.json written before stores kept several addresses.
        let old =
            br#"{"store_id":"s","controller_url":"https://a:7443","url":"https://s/","ca_fingerprint":"f"}"#;
        std::fs::write(st.root().join(ENROLLMENT_FILE), old).unwrap();
        assert_eq!(st.enrollment().unwrap().controllers(), ["https://a:7443"]);
        let both = ["https://a:7443".to_string(), "https://b:7443".to_string()];
        let e = st.save_controllers(&both).unwrap();
        assert_eq!((e.controller_url.as_str(), e.controllers()), ("https://a:7443", both.to_vec()));
        assert_eq!(st.enrollment().unwrap().controllers(), both);
        let written = std::fs::read_to_string(st.root().join(ENROLLMENT_FILE)).unwrap();
        assert!(
            written.contains("\"controller_url\": \"https://a:7443\""),
            "older stores still read it: {written}"
        );
    }
}
