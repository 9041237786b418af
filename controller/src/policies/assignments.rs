//! Assignments of a policy to machines (directly) or groups (every machine of the group).
//! Which machines a policy reaches is the `machine_policies` view; nothing here repeats it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};

/// `POST /api/v1/policies/{id}/assignments` (the wire type; checked by [`assign`]).
pub use cofre_api::policies::NewAssignment;

#[derive(Debug, sqlx::FromRow)]
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
    super::get(pool, policy).await?;
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
    let affected = super::machines_of(&mut tx, policy).await?;
    events::notify(&mut tx, &Event::plans_for(affected)).await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    Ok(a)
}

/// A policy's assignments; for a user limited to `group`, only those to that group and to its
/// machines (other groups' machines are not named).
pub async fn list_assignments(pool: &PgPool, policy: Uuid, group: Option<Uuid>) -> Result<Vec<Assignment>> {
    Ok(sqlx::query_as(
        "select a.id, a.policy_id, a.machine_id, a.group_id, a.created_at from policy_assignments a
         left join machines m on m.id = a.machine_id
         where a.policy_id = $1 and ($2::uuid is null or a.group_id = $2 or m.group_id = $2)
         order by a.id",
    )
    .bind(policy)
    .bind(group)
    .fetch_all(pool)
    .await?)
}

pub async fn unassign(pool: &PgPool, actor: &Actor, policy: Uuid, assignment: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    let affected = super::machines_of(&mut tx, policy).await?;
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
