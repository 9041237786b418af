//! `cofre-store`: an identity-aware restic REST server. It serves repositories from a data dir
//! laid out exactly as rest-server lays it out, knows its callers (agents and the maintenance
//! identity by client certificate, htpasswd users by password), keeps machines append-only and
//! within their quotas, and reports an inventory of what it holds.

pub mod access;
pub mod config;
mod download;
pub mod error;
pub mod htpasswd;
mod idle;
pub mod inventory;
pub mod layout;
mod limits;
mod owners;
mod protocol;
pub mod quota;
mod report;
mod server;
pub mod session;
mod slots;
pub mod state;
pub mod tls;
mod upload;

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio::sync::watch;

pub use access::{AccessList, GroupQuota, Identity, MachineGrant};
pub use config::Settings;
pub use error::StoreError;
pub use inventory::{ObjectCounts, RepoInventory};
pub use protocol::router;
pub use server::{ConnInfo, Store};

/// File in `state_dir` holding the Cofre CA (client certificates are verified against it).
pub const CA_FILE: &str = "ca.pem";
/// File in `state_dir` holding the server certificate chain Cofre's CA issued, and its key.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// File in `state_dir` holding the last access list received from the controller (JSON).
pub const ACCESS_LIST_FILE: &str = "access-list.json";

/// The store's shared state; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct StoreState(Arc<Shared>);

pub(crate) struct Shared {
    pub settings: Settings,
    pub layout: layout::Layout,
    pub catalog: Arc<inventory::Catalog>,
    pub access: RwLock<Arc<AccessList>>,
    pub users: access::UserPolicies,
    pub htpasswd: htpasswd::Htpasswd,
    pub tls: Option<tls::Tls>,
    /// The server certificate is the one Cofre's CA issued (renewals replace it).
    pub tls_from_cofre: bool,
    pub owners: owners::LockOwners,
    /// Uploads in progress per identity (`max_uploads_per_identity`).
    pub uploads: Arc<slots::UploadSlots>,
}

impl StoreState {
    /// Creates missing dirs, scans the data dir (sweeping upload temp files), and loads
    /// `state_dir/access-list.json` and `state_dir/ca.pem` if present, the TLS files and htpasswd.
    pub async fn open(settings: Settings) -> anyhow::Result<StoreState> {
        for (key, dir) in [("data_dir", &settings.data_dir), ("state_dir", &settings.state_dir)] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("{key}: cannot create {}", dir.display()))?;
        }
        let layout = layout::Layout::new(&settings.data_dir);
        let scan_layout = layout.clone();
        let catalog = tokio::task::spawn_blocking(move || inventory::Catalog::scan(&scan_layout))
            .await?
            .with_context(|| format!("data_dir: cannot scan {}", settings.data_dir.display()))?;
        let access = load_access_list(&settings.state_dir.join(ACCESS_LIST_FILE));
        let ca_path = settings.state_dir.join(CA_FILE);
        let ca = match std::fs::read(&ca_path) {
            Ok(pem) => Some(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!("no {} yet: client certificates are not accepted", ca_path.display());
                None
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", ca_path.display())),
        };
        // The operator's certificate files, else the certificate Cofre's CA issued at enrollment
        // (chain and key in one file, replaced whole on renewal), else plain HTTP if allowed.
        let cofre_server_pem = settings.state_dir.join(SERVER_CERT_FILE);
        let (tls_files, tls_from_cofre) = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => (Some((cert.clone(), key.clone())), false),
            _ if settings.allow_plain_http => (None, false),
            _ if cofre_server_pem.exists() => (Some((cofre_server_pem.clone(), cofre_server_pem)), true),
            _ => anyhow::bail!(
                "no TLS certificate: set tls_cert and tls_key, or enroll this store first (`cofre-store \
                 enroll`): Cofre's CA then issues one for the store's URL"
            ),
        };
        let tls = match &tls_files {
            Some((cert, key)) => Some(match tls::Tls::load(cert, key, ca.as_deref()) {
                Ok(t) => t,
                // A bad CA file must not keep the server (and its htpasswd users) down.
                Err(e) if ca.is_some() => {
                    tracing::error!(error = format!("{e:#}"), file = %ca_path.display(), "client CA unusable");
                    tls::Tls::load(cert, key, None)?
                }
                Err(e) => return Err(e),
            }),
            None => None,
        };
        let htpasswd = htpasswd::Htpasswd::load(
            settings.htpasswd_file.as_deref(),
            settings.bcrypt_concurrency as usize,
            settings.bcrypt_queue as usize,
        )?;
        Ok(StoreState(Arc::new(Shared {
            users: access::UserPolicies::new(&settings.users),
            uploads: slots::UploadSlots::new(settings.max_uploads_per_identity as usize),
            settings,
            layout,
            catalog: Arc::new(catalog),
            access: RwLock::new(Arc::new(access)),
            htpasswd,
            tls,
            tls_from_cofre,
            owners: owners::LockOwners::default(),
        })))
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Replaces the access list; every later request (on open connections too) is judged by it.
    /// Persisting it is the caller's business.
    pub fn set_access_list(&self, list: AccessList) {
        tracing::info!(version = list.version, machines = list.machines.len(), "access list applied");
        *self.0.access.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }

    /// The access list in force.
    pub fn access_list(&self) -> Arc<AccessList> {
        Arc::clone(&self.0.access.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Verifies client certificates against `ca_pem` (the Cofre CA, PEM) from the next TLS
    /// handshake on. Without TLS (plain HTTP) there are no client certificates: a no-op.
    pub fn set_client_ca(&self, ca_pem: &[u8]) -> anyhow::Result<()> {
        match &self.0.tls {
            Some(tls) => tls.set_client_ca(Some(ca_pem)),
            None => Ok(()),
        }
    }

    /// Serves with a renewed certificate from Cofre's CA (chain then key, PEM) from the next
    /// handshake on; a no-op when the operator's certificate files are in use.
    pub fn set_server_certificate(&self, chain_and_key_pem: &[u8]) -> anyhow::Result<()> {
        match &self.0.tls {
            Some(tls) if self.0.tls_from_cofre => tls.set_server_cert(chain_and_key_pem),
            _ => Ok(()),
        }
    }

    /// Every repository: bytes, object counts, newest snapshot time, snapshot ids.
    pub fn inventory(&self) -> Vec<RepoInventory> {
        self.0.catalog.inventory()
    }

    /// Changes whenever a repository's content changes (a counter; debounce on your side).
    pub fn subscribe_inventory(&self) -> watch::Receiver<u64> {
        self.0.catalog.subscribe()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.0
    }

    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        Arc::clone(&self.0)
    }
}

/// A missing file is an empty list; a broken one too, loudly (no machine gets in, which is safe).
fn load_access_list(path: &Path) -> AccessList {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable access list: no machine is admitted");
                AccessList::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => AccessList::default(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the access list: no machine is admitted");
            AccessList::default()
        }
    }
}

/// Binds `settings.listen` and serves until `shutdown` completes.
pub async fn serve(settings: Settings, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    Store::bind(settings).await?.run(shutdown).await
}

/// Logs to stderr, `pretty` or `json`, with `filter` (overridden by `RUST_LOG`).
pub fn init_tracing(format: &str, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}
