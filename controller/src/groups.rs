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
