//! Changing and deleting a repository definition. What can change is what can change without
//! moving backups: its name, the storage credentials (rotation), the CA, the maintenance
//! endpoint. Where the backups live cannot change. A definition is deleted only when nothing
//! depends on it: no policy uses it and no restic repository was ever initialised from it
//! (their passwords exist only in Cofre).

use cofre_api::repositories::UpdateRepository;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use super::{NewRepository, Repository, get, validate};
use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::seal::{MasterKey, Place};

/// Stands for a secret that stays as it is (only its presence is validated).
fn kept(present: bool) -> Option<SecretString> {
    present.then(|| SecretString::from("kept"))
}

pub async fn update(
    pool: &PgPool,
    master: &MasterKey,
    actor: &Actor,
    id: Uuid,
    req: UpdateRepository,
) -> Result<Repository> {
    let before = get(pool, id).await?;
    for (field, changed) in [
        ("url", req.url.as_ref().is_some_and(|u| u.trim_end_matches('/') != before.url)),
        ("per_machine", req.per_machine.is_some_and(|p| p != before.per_machine)),
        ("path_template", req.path_template.as_ref().is_some_and(|t| *t != before.path_template)),
    ] {
        if changed {
            return Err(Error::field(
                field,
                "cannot change: the restic repositories already live there; define a new repository and move the policies",
            ));
        }
    }
    // The definition as it will be, checked as a new one would be.
    let after = NewRepository {
        name: req.name.clone().unwrap_or_else(|| before.name.clone()),
        url: before.url.clone(),
        per_machine: before.per_machine,
        path_template: Some(before.path_template.clone()),
        username: req.username.clone().unwrap_or_else(|| before.username.clone()),
        password: match &req.password {
            Some(p) => p.clone().map(SecretString::from),
            None => kept(before.has_password),
        },
        ca_certificate_pem: req
            .ca_certificate_pem
            .clone()
            .unwrap_or_else(|| before.ca_certificate_pem.clone()),
        allow_insecure_http: req.allow_insecure_http.unwrap_or(before.allow_insecure_http),
        maintenance_url: req.maintenance_url.clone().unwrap_or_else(|| before.maintenance_url.clone()),
        maintenance_username: req
            .maintenance_username
            .clone()
            .unwrap_or_else(|| before.maintenance_username.clone()),
        maintenance_password: match &req.maintenance_password {
            Some(p) => p.clone().map(SecretString::from),
            None => kept(before.has_maintenance_password),
        },
    };
    validate(&after)?;
    let seal = |column: &'static str, secret: &Option<Option<String>>| -> (bool, Option<Vec<u8>>) {
        match secret {
            None => (false, None),
            Some(None) => (true, None),
            Some(Some(p)) => (
                true,
                Some(
                    master.seal(&Place { table: "repositories", column, row: &id.to_string() }, p.as_bytes()),
                ),
            ),
        }
    };
    let (set_password, sealed) = seal("sealed_password", &req.password);
    let (set_maintenance, sealed_maintenance) =
        seal("sealed_maintenance_password", &req.maintenance_password);
    let maintenance_url = after.maintenance_url.as_deref().map(|u| u.trim_end_matches('/').to_string());
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update repositories set name = $2, username = $3, ca_certificate_pem = $4, allow_insecure_http = $5,
           maintenance_url = $6, maintenance_username = $7,
           sealed_password = case when $8 then $9 else sealed_password end,
           sealed_maintenance_password = case when $10 then $11 else sealed_maintenance_password end
         where id = $1",
    )
    .bind(id)
    .bind(after.name.trim())
    .bind(&after.username)
    .bind(&after.ca_certificate_pem)
    .bind(after.allow_insecure_http)
    .bind(&maintenance_url)
    .bind(&after.maintenance_username)
    .bind(set_password)
    .bind(sealed)
    .bind(set_maintenance)
    .bind(sealed_maintenance)
    .execute(&mut *tx)
    .await?;
    // What changed, never a secret's value.
    let secret = |s: &Option<Option<String>>| match s {
        None => None,
        Some(None) => Some("removed"),
        Some(Some(_)) => Some("replaced"),
    };
    let details = serde_json::json!({
        "name": req.name, "username": req.username, "password": secret(&req.password),
        "ca_certificate_changed": req.ca_certificate_pem.is_some(), "allow_insecure_http": req.allow_insecure_http,
        "maintenance_url": req.maintenance_url, "maintenance_username": req.maintenance_username,
        "maintenance_password": secret(&req.maintenance_password),
    });
    audit::record(&mut tx, actor, "repository.update", "repository", &id.to_string(), details).await?;
    // Agents get the new credentials with their next plan; maintenance uses them at once.
    events::notify(&mut tx, &Event::Plans { machines: None }).await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Deletes a definition nothing depends on (a mistake, never used). 409 otherwise, saying why.
pub async fn delete(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    let name: String = sqlx::query_scalar("select name from repositories where id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound("repository".into()))?;
    let policies: i64 = sqlx::query_scalar("select count(*) from policies where repository_id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if policies > 0 {
        return Err(Error::Conflict(format!(
            "repository {name} is used by {policies} polic{}: point them at another repository first",
            if policies == 1 { "y" } else { "ies" }
        )));
    }
    let initialised: i64 = sqlx::query_scalar(
        "select count(*) from restic_repositories where repository_id = $1 and (restic_id is not null or initialised_at is not null)",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if initialised > 0 {
        return Err(Error::Conflict(format!(
            "repository {name} holds {initialised} restic repositor{} whose passwords only Cofre keeps: it is never deleted",
            if initialised == 1 { "y" } else { "ies" }
        )));
    }
    sqlx::query("delete from restic_repositories where repository_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from repositories where id = $1").bind(id).execute(&mut *tx).await.map_err(|e| {
        match Error::from(e) {
            Error::Invalid { .. } => Error::Conflict(format!("repository {name} is still referred to")),
            other => other,
        }
    })?;
    audit::record(
        &mut tx,
        actor,
        "repository.delete",
        "repository",
        &id.to_string(),
        serde_json::json!({"name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
