//! The provisioner: creates the per-machine restic repository rows that are missing and
//! initialises every repository that has no restic id yet, as the controller (the agent never
//! initialises). One replica at a time (advisory lock); failures are kept and retried.

use sqlx::PgPool;
use uuid::Uuid;

use super::access::{ACCESS_COLUMNS, ACCESS_FROM, AccessRow, ResticAccess, controller_target, engine_target};
use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::maintenance::MaintenanceIdentity;
use crate::seal::MasterKey;

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

/// Creates the per-machine restic repository rows that are missing for active machines and
/// initialises every repository that has no restic id yet; affected sessions hear of it
/// through a plans notification.
pub async fn provision(pool: &PgPool, master: &MasterKey, maintenance: &MaintenanceIdentity) -> Result<()> {
    create_missing_rows(pool, master).await?;
    initialise_pending(pool, master, maintenance).await
}

/// The per-machine restic repository rows active machines' policies need and do not have.
pub(crate) async fn create_missing_rows(pool: &PgPool, master: &MasterKey) -> Result<()> {
    // Missing rows: active machines whose policies write to a per-machine repository they do
    // not have yet (the view's restic repository is null).
    let missing: Vec<(Uuid, Uuid, String, String, Option<String>, String)> = sqlx::query_as(
        "select distinct r.id, m.id, r.url, r.path_template, g.name, m.hostname
         from machine_policy_repositories mpr
         join machines m on m.id = mpr.machine_id and m.status = 'active'
         left join groups g on g.id = m.group_id
         join repositories r on r.id = mpr.repository_id and r.per_machine
         where mpr.restic_repository_id is null",
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
        super::insert_restic_repository(&mut tx, master, repo, Some(machine), &url).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Initialises every restic repository that has no restic id yet.
async fn initialise_pending(
    pool: &PgPool,
    master: &MasterKey,
    maintenance: &MaintenanceIdentity,
) -> Result<()> {
    let pending: Vec<AccessRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {ACCESS_COLUMNS} from {ACCESS_FROM} where rr.restic_id is null order by rr.id"
    )))
    .fetch_all(pool)
    .await?;
    for row in pending {
        let access = row.open(master)?;
        let (id, url) = (access.id, access.url.clone());
        let target = controller_target(access, maintenance)?;
        let result = tokio::task::spawn_blocking(move || {
            init_restic(&target.access, target.identity_pem.as_deref().map(String::as_str))
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
                    "select distinct machine_id from machine_policy_repositories where restic_repository_id = $1",
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
