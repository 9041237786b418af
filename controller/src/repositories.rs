//! Repositories: where backups go. An admin defines a repository (REST URL, storage
//! credentials, optional private CA); with `per_machine` (the default) every machine that uses
//! it gets its own restic repository at `url/<path_template>`, with its own repository password
//! generated here, initialised here (the agent never initialises) and its restic id recorded.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::maintenance::MaintenanceIdentity;
use crate::seal::{MasterKey, Place};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRepository {
    pub name: String,
    pub url: String,
    #[serde(default = "default_true")]
    pub per_machine: bool,
    pub path_template: Option<String>,
    pub username: Option<String>,
    /// Write-only: never returned.
    pub password: Option<SecretString>,
    pub ca_certificate_pem: Option<String>,
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Repository {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub per_machine: bool,
    pub path_template: String,
    pub username: Option<String>,
    pub has_password: bool,
    pub ca_certificate_pem: Option<String>,
    pub allow_insecure_http: bool,
    pub created_at: DateTime<Utc>,
}

const SELECT: &str =
    "select id, name, url, per_machine, path_template, username, sealed_password is not null as has_password,
    ca_certificate_pem, allow_insecure_http, created_at from repositories";

fn validate(req: &NewRepository) -> Result<url::Url> {
    if req.name.trim().is_empty() || req.name.len() > 100 {
        return Err(Error::field("name", "1 to 100 characters"));
    }
    let url = url::Url::parse(&req.url).map_err(|e| Error::field("url", e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::field("url", "put credentials in username/password, not in the URL"));
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback && !req.allow_insecure_http {
                return Err(Error::field(
                    "url",
                    "plain http sends credentials and data unencrypted: use https, or set allow_insecure_http",
                ));
            }
        }
        other => return Err(Error::field("url", format!("scheme {other} is not supported: use https"))),
    }
    if let Some(t) = &req.path_template {
        check_template(t)?;
    }
    if let Some(pem) = &req.ca_certificate_pem {
        crate::pki::pem_to_der(pem).map_err(|e| Error::field("ca_certificate_pem", e.to_string()))?;
    }
    if req.password.is_some() && req.username.is_none() {
        return Err(Error::field("username", "required when a password is given"));
    }
    Ok(url)
}

fn check_template(t: &str) -> Result<()> {
    let stripped = t.replace("{machine}", "").replace("{group}", "").replace("{hostname}", "");
    if stripped.contains(['{', '}']) || t.contains("..") || t.starts_with('/') || t.trim().is_empty() {
        return Err(Error::field(
            "path_template",
            "use / separated parts with {machine}, {group} and {hostname}; no '..', no leading /",
        ));
    }
    if !t.contains("{machine}") {
        return Err(Error::field(
            "path_template",
            "must contain {machine} so machines never share a repository",
        ));
    }
    Ok(())
}

pub async fn create(
    pool: &PgPool,
    master: &MasterKey,
    actor: &Actor,
    req: NewRepository,
) -> Result<Repository> {
    let url = validate(&req)?;
    let id = Uuid::now_v7();
    let sealed = req.password.as_ref().map(|p| {
        master.seal(
            &Place { table: "repositories", column: "sealed_password", row: &id.to_string() },
            p.expose_secret().as_bytes(),
        )
    });
    let template = req.path_template.clone().unwrap_or_else(|| "{machine}".into());
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into repositories (id, name, url, per_machine, path_template, username, sealed_password, ca_certificate_pem, allow_insecure_http)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(req.name.trim())
    .bind(url.as_str().trim_end_matches('/'))
    .bind(req.per_machine)
    .bind(&template)
    .bind(&req.username)
    .bind(sealed)
    .bind(&req.ca_certificate_pem)
    .bind(req.allow_insecure_http)
    .execute(&mut *tx)
    .await?;
    if !req.per_machine {
        insert_restic_repository(&mut tx, master, id, None, url.as_str().trim_end_matches('/')).await?;
    }
    audit::record(
        &mut tx,
        actor,
        "repository.create",
        "repository",
        &id.to_string(),
        serde_json::json!({"name": req.name, "url": url.as_str(), "per_machine": req.per_machine,
                           "path_template": template, "username": req.username}),
    )
    .await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    get(pool, id).await
}

pub async fn list(pool: &PgPool) -> Result<Vec<Repository>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} order by name"))).fetch_all(pool).await?)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Repository> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound("repository".into()))
}

pub(crate) async fn insert_restic_repository(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    master: &MasterKey,
    repository: Uuid,
    machine: Option<Uuid>,
    url: &str,
) -> Result<()> {
    let id = Uuid::now_v7();
    let password = generate_repository_password();
    let row = id.to_string();
    let sealed = master.seal(&restic_password_place(&row), password.as_bytes());
    sqlx::query(
        "insert into restic_repositories (id, repository_id, machine_id, url, sealed_repository_password)
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(id)
    .bind(repository)
    .bind(machine)
    .bind(url)
    .bind(sealed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn restic_password_place(row: &str) -> Place<'_> {
    Place { table: "restic_repositories", column: "sealed_repository_password", row }
}

fn generate_repository_password() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn render_path(template: &str, machine: Uuid, group: Option<&str>, hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    template
        .replace("{machine}", &machine.to_string())
        .replace("{group}", group.unwrap_or("ungrouped"))
        .replace("{hostname}", &host)
}

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
}

impl std::fmt::Debug for ResticAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResticAccess").field("id", &self.id).field("url", &self.url).finish_non_exhaustive()
    }
}

type AccessRow = (
    Uuid,
    Uuid,
    String,
    Option<String>,
    Option<Vec<u8>>,
    Vec<u8>,
    Option<String>,
    Option<String>,
    bool,
    bool,
);

const ACCESS_SELECT: &str =
    "select rr.id, r.id, rr.url, r.username, r.sealed_password, rr.sealed_repository_password,
    rr.restic_id, r.ca_certificate_pem, r.allow_insecure_http,
    exists (select 1 from stores s where s.status <> 'revoked' and starts_with(rr.url, s.url)) as on_store
    from restic_repositories rr join repositories r on r.id = rr.repository_id";

fn open_access(master: &MasterKey, row: AccessRow) -> Result<ResticAccess> {
    let (rid, repo_id, url, username, sealed_pw, sealed_repo_pw, restic_id, ca, insecure, on_store) = row;
    let password = match sealed_pw {
        Some(s) => Some(SecretString::from(master.open_string(
            &Place { table: "repositories", column: "sealed_password", row: &repo_id.to_string() },
            &s,
        )?)),
        None => None,
    };
    let rid_s = rid.to_string();
    let repository_password =
        SecretString::from(master.open_string(&restic_password_place(&rid_s), &sealed_repo_pw)?);
    Ok(ResticAccess {
        id: rid,
        url,
        username,
        password,
        repository_password,
        restic_id,
        ca_certificate_pem: ca,
        allow_insecure_http: insecure,
        on_store,
    })
}

/// The initialised restic repository a machine uses for `repository`, if any.
pub async fn access_for(
    pool: &PgPool,
    master: &MasterKey,
    repository: Uuid,
    machine: Uuid,
) -> Result<Option<ResticAccess>> {
    let row: Option<AccessRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCESS_SELECT} where rr.repository_id = $1 and (rr.machine_id = $2 or (rr.machine_id is null and not r.per_machine))
         and rr.restic_id is not null"
    )))
    .bind(repository)
    .bind(machine)
    .fetch_optional(pool)
    .await?;
    row.map(|r| open_access(master, r)).transpose()
}

/// Creates the per-machine restic repository rows that are missing for active machines and
/// initialises every repository that has no restic id yet; affected sessions hear of it
/// through a plans notification.
pub async fn provision(pool: &PgPool, master: &MasterKey, maintenance: &MaintenanceIdentity) -> Result<()> {
    // Missing rows: active machines with a per-machine repository through an assigned policy.
    let missing: Vec<(Uuid, Uuid, String, String, Option<String>, String)> = sqlx::query_as(
        "select distinct r.id, m.id, r.url, r.path_template, g.name, m.hostname
         from machines m
         left join groups g on g.id = m.group_id
         join policy_assignments a on a.machine_id = m.id or a.group_id = m.group_id
         join policies p on p.id = a.policy_id
         join repositories r on r.id = p.repository_id and r.per_machine
         where m.status = 'active'
           and not exists (select 1 from restic_repositories rr where rr.repository_id = r.id and rr.machine_id = m.id)",
    )
    .fetch_all(pool)
    .await?;
    for (repo, machine, base, template, group, hostname) in missing {
        let url = format!(
            "{}/{}",
            base.trim_end_matches('/'),
            render_path(&template, machine, group.as_deref(), &hostname)
        );
        let mut tx = pool.begin().await?;
        insert_restic_repository(&mut tx, master, repo, Some(machine), &url).await?;
        tx.commit().await?;
    }
    let pending: Vec<AccessRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCESS_SELECT} where rr.restic_id is null order by rr.id"
    )))
    .fetch_all(pool)
    .await?;
    for row in pending {
        let access = open_access(master, row)?;
        let id = access.id;
        let url = access.url.clone();
        let identity =
            if access.on_store { Some(maintenance.bundle_pem().map_err(Error::internal)?) } else { None };
        let mut access = access;
        if access.on_store && access.ca_certificate_pem.is_none() {
            // The store may serve with the certificate Cofre's CA issued it.
            access.ca_certificate_pem = Some(maintenance.ca_pem().to_string());
        }
        let result = tokio::task::spawn_blocking(move || {
            init_restic(&access, identity.as_deref().map(String::as_str))
        })
        .await
        .map_err(Error::internal)?;
        let mut tx = pool.begin().await?;
        match result {
            Ok(restic_id) => {
                sqlx::query("update restic_repositories set restic_id = $2, init_error = null, initialised_at = now() where id = $1 and restic_id is null")
                    .bind(id)
                    .bind(&restic_id)
                    .execute(&mut *tx)
                    .await?;
                audit::record(
                    &mut tx,
                    &Actor::System,
                    "restic_repository.init",
                    "restic_repository",
                    &id.to_string(),
                    serde_json::json!({"url": url, "restic_id": restic_id}),
                )
                .await?;
                // The machines whose plans now include this repository.
                let m: Vec<Uuid> = sqlx::query_scalar(
                    "select distinct m.id from machines m
                     join policy_assignments a on a.machine_id = m.id or (a.group_id is not null and a.group_id = m.group_id)
                     join policies p on p.id = a.policy_id
                     join restic_repositories rr on rr.repository_id = p.repository_id
                     where rr.id = $1 and (rr.machine_id is null or rr.machine_id = m.id)",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                events::notify(&mut tx, &Event::plans_for(m)).await?;
                tracing::info!(restic_repository = %id, %url, %restic_id, "initialised restic repository");
            }
            Err(e) => {
                tracing::warn!(restic_repository = %id, %url, error = %e, "cannot initialise restic repository; will retry");
                sqlx::query("update restic_repositories set init_error = $2 where id = $1")
                    .bind(id)
                    .bind(e.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
    }
    Ok(())
}

fn init_restic(
    access: &ResticAccess,
    identity_pem: Option<&str>,
) -> std::result::Result<String, cofre_engine::EngineError> {
    let dir = tempfile::tempdir().map_err(|e| cofre_engine::EngineError::Other(e.to_string()))?;
    let target = engine_target(access, dir.path(), identity_pem)?;
    cofre_engine::init_repository(&target)
}

/// Builds the engine's target; a private CA and the maintenance identity (for repositories on
/// a cofre-store) are written into `scratch`, a private temp dir (the engine takes files).
pub fn engine_target(
    access: &ResticAccess,
    scratch: &std::path::Path,
    identity_pem: Option<&str>,
) -> std::result::Result<cofre_engine::RepoTarget, cofre_engine::EngineError> {
    let client_identity_file = match identity_pem {
        Some(pem) => {
            let p = scratch.join("maintenance.pem");
            write_private(&p, pem).map_err(|e| cofre_engine::EngineError::Other(e.to_string()))?;
            Some(p)
        }
        None => None,
    };
    let (username, password) =
        if access.on_store { (None, None) } else { (access.username.clone(), access.password.clone()) };
    let ca_cert_file = match &access.ca_certificate_pem {
        Some(pem) => {
            let p = scratch.join("rest-ca.pem");
            std::fs::write(&p, pem).map_err(|e| cofre_engine::EngineError::Other(e.to_string()))?;
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

/// Runs the provisioner: on `Provision` events and every 30 s (to retry failures), under an
/// advisory lock so exactly one replica works at a time.
pub fn spawn_provisioner(
    pool: PgPool,
    master: MasterKey,
    events: crate::events::Events,
    maintenance: std::sync::Arc<MaintenanceIdentity>,
) {
    tokio::spawn(async move {
        let mut rx = events.subscribe();
        loop {
            match try_provision(&pool, &master, &maintenance).await {
                Ok(()) => {}
                Err(e) => {
                    crate::error::log_internal(&e);
                    tracing::warn!(error = %e, "repository provisioning failed; will retry");
                }
            }
            let wait = tokio::time::sleep(std::time::Duration::from_secs(30));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    ev = rx.recv() => match ev {
                        Ok(Event::Provision | Event::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }
    });
}

async fn try_provision(pool: &PgPool, master: &MasterKey, maintenance: &MaintenanceIdentity) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(crate::db::locks::PROVISIONER)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(());
    }
    let res = provision(pool, master, maintenance).await;
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(crate::db::locks::PROVISIONER)
        .execute(&mut *conn)
        .await?;
    res
}
