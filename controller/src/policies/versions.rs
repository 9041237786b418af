//! Policy versions: every change of a policy is kept as an immutable version (the app role may
//! insert versions, never change them), listed by the API and compared field by field.

use chrono::{DateTime, Utc};
use cofre_policy::spec::Change;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Actor;
use crate::error::{Error, Result};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyVersion {
    pub policy_id: Uuid,
    pub revision: i64,
    pub changed_by: String,
    pub changed_at: DateTime<Utc>,
    pub spec: serde_json::Value,
}

pub(super) async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    policy: Uuid,
    revision: i64,
    spec: &serde_json::Value,
    actor: &Actor,
) -> Result<()> {
    sqlx::query(
        "insert into policy_versions (policy_id, revision, spec, changed_by) values ($1, $2, $3, $4)",
    )
    .bind(policy)
    .bind(revision)
    .bind(spec)
    .bind(actor.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every version of a policy, newest first.
pub async fn list_versions(pool: &PgPool, policy: Uuid) -> Result<Vec<PolicyVersion>> {
    super::get(pool, policy).await?;
    Ok(sqlx::query_as(
        "select policy_id, revision, changed_by, changed_at, spec from policy_versions
         where policy_id = $1 order by revision desc",
    )
    .bind(policy)
    .fetch_all(pool)
    .await?)
}

async fn version(pool: &PgPool, policy: Uuid, revision: i64, field: &str) -> Result<serde_json::Value> {
    sqlx::query_scalar("select spec from policy_versions where policy_id = $1 and revision = $2")
        .bind(policy)
        .bind(revision)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::field(field, format!("this policy has no revision {revision}")))
}

/// What changed from revision `from` to revision `to`, field by field.
pub async fn diff(pool: &PgPool, policy: Uuid, from: i64, to: i64) -> Result<Vec<Change>> {
    super::get(pool, policy).await?;
    let old = version(pool, policy, from, "from").await?;
    let new = version(pool, policy, to, "to").await?;
    Ok(cofre_policy::spec::diff(&old, &new))
}
