//! Policies: what a machine backs up, when, how long its history is kept and how its
//! repository is maintained. A policy is its specification (`cofre_policy::spec::PolicySpec`),
//! validated before anything is written; every change makes an immutable version
//! (`versions.rs`) and notifies the affected sessions so plans are pushed at once. Assignments
//! to machines and groups are in `assignments.rs`.

mod assignments;
#[cfg(test)]
mod tests;
mod versions;

use chrono::{DateTime, Utc};
use cofre_policy::spec::PolicySpec;
use sqlx::PgPool;
use uuid::Uuid;

pub use assignments::{Assignment, NewAssignment, assign, list_assignments, unassign};
pub use versions::{PolicyVersion, diff, list_versions};

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};

/// A policy as the API returns it: its spec's fields with its id and revision.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: Uuid,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub spec: PolicySpec,
}

type Row = (Uuid, i64, DateTime<Utc>, DateTime<Utc>, serde_json::Value);

const SELECT: &str = "select id, revision, created_at, updated_at, spec from policies";

/// A stored spec was validated when written; one that no longer parses means the schema and
/// the code disagree: an internal error, not the caller's.
pub(crate) fn stored_spec(v: serde_json::Value) -> Result<PolicySpec> {
    PolicySpec::from_json(v).map_err(|e| {
        Error::internal(anyhow::anyhow!(
            "stored policy spec does not parse: {}: {}",
            e[0].field,
            e[0].message
        ))
    })
}

fn from_row((id, revision, created_at, updated_at, spec): Row) -> Result<Policy> {
    Ok(Policy { id, revision, created_at, updated_at, spec: stored_spec(spec)? })
}

/// Whether the caller may set hooks: only admins may make agents run a hook, even once other
/// roles may edit policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookRights {
    Allowed,
    Denied,
}

/// Validates a spec the API received as JSON: shape first (unknown fields, types, negative
/// counts), then every rule, each problem naming its field.
pub fn parse_spec(body: serde_json::Value) -> Result<PolicySpec> {
    let spec = PolicySpec::from_json(body).map_err(Error::fields)?;
    spec.validate().map_err(Error::fields)?;
    Ok(spec)
}

fn check_hooks(old: Option<&PolicySpec>, new: &PolicySpec, rights: HookRights) -> Result<()> {
    if rights == HookRights::Denied && old.map(|o| &o.hooks) != Some(&new.hooks) && !new.hooks.is_empty() {
        return Err(Error::Forbidden("only admins may set hooks".into()));
    }
    Ok(())
}

async fn repository_exists(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: Uuid) -> Result<()> {
    let found: Option<Uuid> = sqlx::query_scalar("select id from repositories where id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(Error::field("repository_id", "no such repository")),
    }
}

fn spec_json(spec: &PolicySpec) -> Result<serde_json::Value> {
    serde_json::to_value(spec).map_err(Error::internal)
}

pub async fn create(pool: &PgPool, actor: &Actor, spec: PolicySpec, rights: HookRights) -> Result<Policy> {
    spec.validate().map_err(Error::fields)?;
    check_hooks(None, &spec, rights)?;
    let id = Uuid::now_v7();
    let json = spec_json(&spec)?;
    let mut tx = pool.begin().await?;
    repository_exists(&mut tx, spec.repository_id).await?;
    let row: Row = sqlx::query_as(
        "insert into policies (id, name, repository_id, spec) values ($1, $2, $3, $4)
         returning id, revision, created_at, updated_at, spec",
    )
    .bind(id)
    .bind(spec.name.trim())
    .bind(spec.repository_id)
    .bind(&json)
    .fetch_one(&mut *tx)
    .await
    .map_err(name_taken)?;
    versions::record(&mut tx, id, row.1, &json, actor).await?;
    audit::record(
        &mut tx,
        actor,
        "policy.create",
        "policy",
        &id.to_string(),
        serde_json::json!({"spec": json}),
    )
    .await?;
    tx.commit().await?;
    from_row(row)
}

/// A duplicate name is the caller's to fix: say which field.
fn name_taken(e: sqlx::Error) -> Error {
    match Error::from(e) {
        Error::Conflict(m) if m.contains("policies_name_key") => {
            Error::field("name", "a policy with this name exists already")
        }
        other => other,
    }
}

pub async fn list(pool: &PgPool) -> Result<Vec<Policy>> {
    let rows: Vec<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} order by name"))).fetch_all(pool).await?;
    rows.into_iter().map(from_row).collect()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Policy> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    from_row(row.ok_or_else(|| Error::NotFound("policy".into()))?)
}

/// Replaces a policy's spec. `if_revision` (from If-Match) guards against lost updates. An
/// identical spec changes nothing and makes no new version.
pub async fn update(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    if_revision: Option<i64>,
    spec: PolicySpec,
    rights: HookRights,
) -> Result<Policy> {
    spec.validate().map_err(Error::fields)?;
    let json = spec_json(&spec)?;
    let mut tx = pool.begin().await?;
    let current: Option<(i64, serde_json::Value)> =
        sqlx::query_as("select revision, spec from policies where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((revision, old_json)) = current else { return Err(Error::NotFound("policy".into())) };
    if let Some(expected) = if_revision
        && expected != revision
    {
        return Err(Error::PreconditionFailed(format!(
            "policy changed meanwhile (revision {revision}, you had {expected}): read it again"
        )));
    }
    let old = stored_spec(old_json.clone())?;
    check_hooks(Some(&old), &spec, rights)?;
    if old == spec {
        drop(tx);
        return get(pool, id).await;
    }
    repository_exists(&mut tx, spec.repository_id).await?;
    // Machines that had the policy before the change (a new repository changes their plans).
    let affected = machines_of(&mut tx, id).await?;
    let row: Row = sqlx::query_as(
        "update policies set name = $2, repository_id = $3, spec = $4, revision = revision + 1, updated_at = now()
         where id = $1 returning id, revision, created_at, updated_at, spec",
    )
    .bind(id)
    .bind(spec.name.trim())
    .bind(spec.repository_id)
    .bind(&json)
    .fetch_one(&mut *tx)
    .await
    .map_err(name_taken)?;
    versions::record(&mut tx, id, row.1, &json, actor).await?;
    audit::record(
        &mut tx,
        actor,
        "policy.update",
        "policy",
        &id.to_string(),
        serde_json::json!({"revision": row.1, "changes": cofre_policy::spec::diff(&old_json, &json)}),
    )
    .await?;
    events::notify(&mut tx, &Event::plans_for(affected)).await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    from_row(row)
}

/// Machines a policy reaches, directly or through their group (the `machine_policies` view).
pub(crate) async fn machines_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    policy: Uuid,
) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar("select machine_id from machine_policies where policy_id = $1")
        .bind(policy)
        .fetch_all(&mut **tx)
        .await?)
}
