//! Groups (departments), policies (what to back up, where, how often) and their assignment to
//! machines or groups. Every change notifies the affected sessions so plans are pushed at once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    pub name: String,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Group {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

pub async fn create_group(pool: &PgPool, actor: &Actor, req: NewGroup) -> Result<Group> {
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.len() > 100
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(Error::field(
            "name",
            "1 to 100 of a-z, 0-9, '-' and '_' (it may appear in repository paths)",
        ));
    }
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let g: Group =
        sqlx::query_as("insert into groups (id, name) values ($1, $2) returning id, name, created_at")
            .bind(id)
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
    audit::record(
        &mut tx,
        actor,
        "group.create",
        "group",
        &id.to_string(),
        serde_json::json!({"name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok(g)
}

pub async fn list_groups(pool: &PgPool) -> Result<Vec<Group>> {
    Ok(sqlx::query_as("select id, name, created_at from groups order by name").fetch_all(pool).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub name: String,
    pub repository_id: Uuid,
    pub paths: Vec<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Seconds between scheduled runs; 0 = only on demand.
    pub interval_seconds: u64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Policy {
    pub id: Uuid,
    pub name: String,
    pub repository_id: Uuid,
    pub paths: Vec<String>,
    pub excludes: Vec<String>,
    pub interval_seconds: i64,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SELECT: &str = "select id, name, repository_id, paths, excludes, interval_seconds, revision, created_at, updated_at from policies";

fn validate(p: &PolicyInput) -> Result<()> {
    if p.name.trim().is_empty() || p.name.len() > 100 {
        return Err(Error::field("name", "1 to 100 characters"));
    }
    if p.paths.is_empty() || p.paths.len() > 1000 {
        return Err(Error::field("paths", "give 1 to 1000 absolute paths"));
    }
    for path in &p.paths {
        if !path.starts_with('/') || path.contains('\0') || path.split('/').any(|c| c == "..") {
            return Err(Error::field("paths", format!("{path:?} is not an absolute path without '..'")));
        }
    }
    if p.excludes.len() > 1000 || p.excludes.iter().any(|e| e.is_empty() || e.contains('\0')) {
        return Err(Error::field("excludes", "at most 1000 non-empty patterns"));
    }
    if p.interval_seconds != 0 && p.interval_seconds < 60 {
        return Err(Error::field("interval_seconds", "0 (on demand only) or at least 60"));
    }
    if p.interval_seconds > 366 * 24 * 3600 {
        return Err(Error::field("interval_seconds", "at most a year"));
    }
    Ok(())
}

/// Machines a policy reaches, directly or through their group.
async fn machines_of(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, policy: Uuid) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "select distinct m.id from machines m join policy_assignments a
           on a.machine_id = m.id or (a.group_id is not null and a.group_id = m.group_id)
         where a.policy_id = $1",
    )
    .bind(policy)
    .fetch_all(&mut **tx)
    .await?)
}

pub async fn create(pool: &PgPool, actor: &Actor, req: PolicyInput) -> Result<Policy> {
    validate(&req)?;
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let p: Policy = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into policies (id, name, repository_id, paths, excludes, interval_seconds) values ($1, $2, $3, $4, $5, $6)
         returning {}",
        SELECT.trim_start_matches("select ").trim_end_matches(" from policies")
    )))
    .bind(id)
    .bind(req.name.trim())
    .bind(req.repository_id)
    .bind(&req.paths)
    .bind(&req.excludes)
    .bind(i64::try_from(req.interval_seconds).unwrap_or(0))
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "policy.create",
        "policy",
        &id.to_string(),
        serde_json::to_value(&p).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(p)
}

pub async fn list(pool: &PgPool) -> Result<Vec<Policy>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} order by name"))).fetch_all(pool).await?)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Policy> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound("policy".into()))
}

/// Replaces a policy. `if_revision` (from If-Match) guards against lost updates.
pub async fn update(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    if_revision: Option<i64>,
    req: PolicyInput,
) -> Result<Policy> {
    validate(&req)?;
    let mut tx = pool.begin().await?;
    let current: Option<i64> = sqlx::query_scalar("select revision from policies where id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(current) = current else { return Err(Error::NotFound("policy".into())) };
    if let Some(expected) = if_revision
        && expected != current
    {
        return Err(Error::Conflict(format!(
            "policy changed meanwhile (revision {current}, you had {expected})"
        )));
    }
    sqlx::query(
        "update policies set name = $2, repository_id = $3, paths = $4, excludes = $5, interval_seconds = $6,
         revision = revision + 1, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(req.name.trim())
    .bind(req.repository_id)
    .bind(&req.paths)
    .bind(&req.excludes)
    .bind(i64::try_from(req.interval_seconds).unwrap_or(0))
    .execute(&mut *tx)
    .await?;
    let p: Policy = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where id = $1")))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        actor,
        "policy.update",
        "policy",
        &id.to_string(),
        serde_json::to_value(&p).unwrap_or_default(),
    )
    .await?;
    let affected = machines_of(&mut tx, id).await?;
    events::notify(&mut tx, &Event::plans_for(affected)).await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    Ok(p)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAssignment {
    pub machine_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Assignment {
    pub id: Uuid,
    pub policy_id: Uuid,
    pub machine_id: Option<Uuid>,
    pub group_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

pub async fn assign(pool: &PgPool, actor: &Actor, policy: Uuid, req: NewAssignment) -> Result<Assignment> {
    if req.machine_id.is_some() == req.group_id.is_some() {
        return Err(Error::invalid("give exactly one of machine_id and group_id"));
    }
    get(pool, policy).await?;
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let a: Assignment = sqlx::query_as(
        "insert into policy_assignments (id, policy_id, machine_id, group_id) values ($1, $2, $3, $4)
         returning id, policy_id, machine_id, group_id, created_at",
    )
    .bind(id)
    .bind(policy)
    .bind(req.machine_id)
    .bind(req.group_id)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "policy.assign",
        "policy",
        &policy.to_string(),
        serde_json::json!({"assignment_id": id, "machine_id": req.machine_id, "group_id": req.group_id}),
    )
    .await?;
    let affected = match (req.machine_id, req.group_id) {
        (Some(m), _) => vec![m],
        (None, Some(g)) => {
            sqlx::query_scalar("select id from machines where group_id = $1")
                .bind(g)
                .fetch_all(&mut *tx)
                .await?
        }
        (None, None) => Vec::new(),
    };
    events::notify(&mut tx, &Event::plans_for(affected)).await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    Ok(a)
}

pub async fn list_assignments(pool: &PgPool, policy: Uuid) -> Result<Vec<Assignment>> {
    Ok(sqlx::query_as(
        "select id, policy_id, machine_id, group_id, created_at from policy_assignments where policy_id = $1 order by id",
    )
    .bind(policy)
    .fetch_all(pool)
    .await?)
}

pub async fn unassign(pool: &PgPool, actor: &Actor, policy: Uuid, assignment: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    let affected = machines_of(&mut tx, policy).await?;
    let n = sqlx::query("delete from policy_assignments where id = $1 and policy_id = $2")
        .bind(assignment)
        .bind(policy)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(Error::NotFound("assignment".into()));
    }
    audit::record(
        &mut tx,
        actor,
        "policy.unassign",
        "policy",
        &policy.to_string(),
        serde_json::json!({"assignment_id": assignment}),
    )
    .await?;
    events::notify(&mut tx, &Event::plans_for(affected)).await?;
    tx.commit().await?;
    Ok(())
}
