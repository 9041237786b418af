//! Groups (departments): machines belong to at most one; policies and quotas apply to them.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};

/// `POST /api/v1/groups` (the wire type; checked by [`create`]).
pub use cofre_api::groups::NewGroup;

#[derive(Debug, sqlx::FromRow)]
pub struct Group {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

pub async fn create(pool: &PgPool, actor: &Actor, req: NewGroup) -> Result<Group> {
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

pub async fn list(pool: &PgPool) -> Result<Vec<Group>> {
    Ok(sqlx::query_as("select id, name, created_at from groups order by name").fetch_all(pool).await?)
}

/// Whether group `id` exists.
pub async fn exists(pool: &PgPool, id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar("select exists (select 1 from groups where id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?)
}

/// Deletes a group nothing belongs to. 409 otherwise, saying what still refers to it:
/// machines, users, API tokens, enrollment tokens, policy assignments, or alerts raised about
/// it (kept for the record).
pub async fn delete(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    let name: String = sqlx::query_scalar("select name from groups where id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound("group".into()))?;
    let (machines, users, tokens, enrollment, assignments, alerts): (i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "select (select count(*) from machines where group_id = $1),
                (select count(*) from users where group_id = $1),
                (select count(*) from api_tokens where group_id = $1),
                (select count(*) from enrollment_tokens where group_id = $1),
                (select count(*) from policy_assignments where group_id = $1),
                (select count(*) from alerts where group_id = $1)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let held: Vec<String> = [
        (machines, "machines"),
        (users, "users"),
        (tokens, "API tokens"),
        (enrollment, "enrollment tokens"),
        (assignments, "policy assignments"),
        (alerts, "alerts (kept for the record)"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if !held.is_empty() {
        return Err(Error::Conflict(format!("group {name} is still in use: {}", held.join(", "))));
    }
    sqlx::query("delete from groups where id = $1").bind(id).execute(&mut *tx).await.map_err(|e| {
        match Error::from(e) {
            Error::Invalid { .. } => Error::Conflict(format!("group {name} is still referred to")),
            other => other,
        }
    })?;
    audit::record(
        &mut tx,
        actor,
        "group.delete",
        "group",
        &id.to_string(),
        serde_json::json!({"name": name}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
