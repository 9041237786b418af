//! How to open one restic repository: its URL and secrets (opened from their sealed columns),
//! for an agent's plan or for the controller's own work (init, forget, prune, check) — the
//! latter through the repository's maintenance endpoint when it has one.

use secrecy::SecretString;
use uuid::Uuid;

use crate::error::Result;
use crate::seal::{MasterKey, Place};

/// Everything an agent or the controller needs to open one restic repository.
pub struct ResticAccess {
    pub id: Uuid,
    pub url: String,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub repository_password: SecretString,
    pub restic_id: Option<String>,
    pub ca_certificate_pem: Option<String>,
    pub allow_insecure_http: bool,
    /// The repository is served by an enrolled cofre-store: clients authenticate with their
    /// certificate, and REST credentials are not used.
    pub on_store: bool,
    /// The same repository through the controller-only maintenance instance of a plain
    /// rest-server (None: the controller uses `url`).
    pub maintenance_url: Option<String>,
    pub maintenance_username: Option<String>,
    pub maintenance_password: Option<SecretString>,
}

impl std::fmt::Debug for ResticAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResticAccess").field("id", &self.id).field("url", &self.url).finish_non_exhaustive()
    }
}

/// The columns of [`ACCESS_FROM`] as one row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AccessRow {
    rr_id: Uuid,
    r_id: Uuid,
    rr_url: String,
    r_username: Option<String>,
    r_sealed_password: Option<Vec<u8>>,
    rr_sealed_repository_password: Vec<u8>,
    rr_restic_id: Option<String>,
    r_ca_certificate_pem: Option<String>,
    r_allow_insecure_http: bool,
    on_store: bool,
    r_maintenance_url: Option<String>,
    r_maintenance_username: Option<String>,
    r_sealed_maintenance_password: Option<Vec<u8>>,
}

/// The access columns, for any query that joins `restic_repositories rr` with
/// `repositories r`. A maintenance URL keeps the repository's path below the base URL.
pub(crate) const ACCESS_COLUMNS: &str = "rr.id as rr_id, r.id as r_id, rr.url as rr_url,
    r.username as r_username, r.sealed_password as r_sealed_password,
    rr.sealed_repository_password as rr_sealed_repository_password, rr.restic_id as rr_restic_id,
    r.ca_certificate_pem as r_ca_certificate_pem, r.allow_insecure_http as r_allow_insecure_http,
    exists (select 1 from stores s where s.status <> 'revoked' and starts_with(rr.url, s.url)) as on_store,
    case when r.maintenance_url is not null
         then r.maintenance_url || substr(rr.url, length(r.url) + 1) end as r_maintenance_url,
    r.maintenance_username as r_maintenance_username,
    r.sealed_maintenance_password as r_sealed_maintenance_password";

pub(crate) const ACCESS_FROM: &str = "restic_repositories rr join repositories r on r.id = rr.repository_id";

pub(crate) fn restic_password_place(row: &str) -> Place<'_> {
    Place { table: "restic_repositories", column: "sealed_repository_password", row }
}

impl AccessRow {
    /// Opens the sealed secrets.
    pub(crate) fn open(self, master: &MasterKey) -> Result<ResticAccess> {
        let repo_row = self.r_id.to_string();
        let open_opt = |column: &'static str, sealed: Option<Vec<u8>>| -> Result<Option<SecretString>> {
            match sealed {
                Some(s) => Ok(Some(SecretString::from(
                    master.open_string(&Place { table: "repositories", column, row: &repo_row }, &s)?,
                ))),
                None => Ok(None),
            }
        };
        let password = open_opt("sealed_password", self.r_sealed_password)?;
        let maintenance_password =
            open_opt("sealed_maintenance_password", self.r_sealed_maintenance_password)?;
        let rid = self.rr_id.to_string();
        let repository_password = SecretString::from(
            master.open_string(&restic_password_place(&rid), &self.rr_sealed_repository_password)?,
        );
        Ok(ResticAccess {
            id: self.rr_id,
            url: self.rr_url,
            username: self.r_username,
            password,
            repository_password,
            restic_id: self.rr_restic_id,
            ca_certificate_pem: self.r_ca_certificate_pem,
            allow_insecure_http: self.r_allow_insecure_http,
            on_store: self.on_store,
            maintenance_url: self.r_maintenance_url,
            maintenance_username: self.r_maintenance_username,
            maintenance_password,
        })
    }
}

/// The access to one restic repository by its id.
pub(crate) async fn access_by_id(
    pool: &sqlx::PgPool,
    master: &MasterKey,
    restic_repository: Uuid,
) -> Result<Option<ResticAccess>> {
    let row: Option<AccessRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {ACCESS_COLUMNS} from {ACCESS_FROM} where rr.id = $1"
    )))
    .bind(restic_repository)
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.open(master)).transpose()
}

/// The identity the controller presents for its own work on a repository: on a cofre-store,
/// the maintenance certificate (whose CA it trusts when the repository names none); elsewhere
/// the maintenance endpoint and credentials when configured, else the repository's own.
pub struct ControllerTarget {
    pub access: ResticAccess,
    pub identity_pem: Option<std::sync::Arc<String>>,
}

pub fn controller_target(
    mut access: ResticAccess,
    maintenance: &crate::maintenance::MaintenanceIdentity,
) -> Result<ControllerTarget> {
    if access.on_store {
        if access.ca_certificate_pem.is_none() {
            // The store may serve with the certificate Cofre's CA issued it.
            access.ca_certificate_pem = Some(maintenance.ca_pem().to_string());
        }
        let identity = maintenance.bundle_pem().map_err(crate::error::Error::internal)?;
        return Ok(ControllerTarget { access, identity_pem: Some(identity) });
    }
    if let Some(url) = access.maintenance_url.take() {
        access.url = url;
        access.username = access.maintenance_username.take();
        access.password = access.maintenance_password.take();
    }
    Ok(ControllerTarget { access, identity_pem: None })
}

/// Builds the engine's target; a private CA and the maintenance identity (for repositories on
/// a cofre-store) are written into `scratch`, a private temp dir (the engine takes files).
pub fn engine_target(
    access: &ResticAccess,
    scratch: &std::path::Path,
    identity_pem: Option<&str>,
) -> std::result::Result<cofre_engine::RepoTarget, cofre_engine::EngineError> {
    let other = |e: std::io::Error| cofre_engine::EngineError::Other(e.to_string());
    let client_identity_file = match identity_pem {
        Some(pem) => {
            let p = scratch.join("maintenance.pem");
            write_private(&p, pem).map_err(other)?;
            Some(p)
        }
        None => None,
    };
    let (username, password) =
        if access.on_store { (None, None) } else { (access.username.clone(), access.password.clone()) };
    let ca_cert_file = match &access.ca_certificate_pem {
        Some(pem) => {
            let p = scratch.join("rest-ca.pem");
            std::fs::write(&p, pem).map_err(other)?;
            Some(p)
        }
        None => None,
    };
    Ok(cofre_engine::RepoTarget {
        url: access.url.clone(),
        username,
        password,
        repository_password: access.repository_password.clone(),
        ca_cert_file,
        client_identity_file,
        allow_insecure_http: access.allow_insecure_http,
    })
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())
}
