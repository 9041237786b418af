//! Repositories: where backups go. An admin defines a repository (REST URL, storage
//! credentials, optional private CA, optional controller-only maintenance endpoint); with
//! `per_machine` (the default) every machine that uses it gets its own restic repository at
//! `url/<path_template>`, with its own repository password generated here, initialised here
//! (the agent never initialises, see `provision.rs`) and its restic id recorded. How to open
//! one is `access.rs`.

mod access;
mod change;
mod provision;

pub use change::{delete, update};

pub(crate) use access::{ACCESS_COLUMNS, AccessRow, access_by_id, restic_password_place};
pub use access::{ControllerTarget, ResticAccess, controller_target, engine_target};
#[cfg(test)]
pub(crate) use provision::create_missing_rows;
pub use provision::{provision, spawn_provisioner};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::seal::{MasterKey, Place};

#[derive(Debug)]
pub struct NewRepository {
    pub name: String,
    pub url: String,
    pub per_machine: bool,
    pub path_template: Option<String>,
    pub username: Option<String>,
    /// Write-only: never returned.
    pub password: Option<SecretString>,
    pub ca_certificate_pem: Option<String>,
    pub allow_insecure_http: bool,
    /// A plain rest-server's controller-only instance serving the same data (the agents' one
    /// runs `--append-only`): init, forget, prune and check go there. Not for cofre-store,
    /// which knows the controller's maintenance identity.
    pub maintenance_url: Option<String>,
    pub maintenance_username: Option<String>,
    /// Write-only: never returned.
    pub maintenance_password: Option<SecretString>,
}

#[derive(Debug, sqlx::FromRow)]
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
    pub maintenance_url: Option<String>,
    pub maintenance_username: Option<String>,
    pub has_maintenance_password: bool,
    pub created_at: DateTime<Utc>,
}

const SELECT: &str =
    "select id, name, url, per_machine, path_template, username, sealed_password is not null as has_password,
    ca_certificate_pem, allow_insecure_http, maintenance_url, maintenance_username,
    sealed_maintenance_password is not null as has_maintenance_password, created_at from repositories";

fn validate(req: &NewRepository) -> Result<url::Url> {
    if req.name.trim().is_empty() || req.name.len() > 100 {
        return Err(Error::field("name", "1 to 100 characters"));
    }
    if let Some(m) = &req.maintenance_url {
        check_url("maintenance_url", m, req.allow_insecure_http)?;
    }
    if req.maintenance_password.is_some() && req.maintenance_username.is_none() {
        return Err(Error::field("maintenance_username", "required when a maintenance password is given"));
    }
    if req.maintenance_username.is_some() && req.maintenance_url.is_none() {
        return Err(Error::field("maintenance_url", "required with maintenance credentials"));
    }
    let url = check_url("url", &req.url, req.allow_insecure_http)?;
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

/// A REST URL we will send credentials to: https, or plain http only on loopback unless the
/// admin accepts it; never credentials inside it.
fn check_url(field: &str, raw: &str, allow_insecure_http: bool) -> Result<url::Url> {
    let url = url::Url::parse(raw).map_err(|e| Error::field(field, e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::field(field, "put credentials in username/password, not in the URL"));
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
            if !loopback && !allow_insecure_http {
                return Err(Error::field(
                    field,
                    "plain http sends credentials and data unencrypted: use https, or set allow_insecure_http",
                ));
            }
        }
        other => return Err(Error::field(field, format!("scheme {other} is not supported: use https"))),
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
    let seal = |column: &'static str, secret: &Option<SecretString>| {
        secret.as_ref().map(|p| {
            master.seal(
                &Place { table: "repositories", column, row: &id.to_string() },
                p.expose_secret().as_bytes(),
            )
        })
    };
    let sealed = seal("sealed_password", &req.password);
    let sealed_maintenance = seal("sealed_maintenance_password", &req.maintenance_password);
    let maintenance_url = req.maintenance_url.as_deref().map(|u| u.trim_end_matches('/').to_string());
    let template = req.path_template.clone().unwrap_or_else(|| "{machine}".into());
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into repositories (id, name, url, per_machine, path_template, username, sealed_password, ca_certificate_pem,
         allow_insecure_http, maintenance_url, maintenance_username, sealed_maintenance_password)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
    .bind(&maintenance_url)
    .bind(&req.maintenance_username)
    .bind(sealed_maintenance)
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
                           "path_template": template, "username": req.username,
                           "maintenance_url": maintenance_url, "maintenance_username": req.maintenance_username}),
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

fn generate_repository_password() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
