//! Machines: listing with their protection status, approval, revocation, and the checks a
//! session makes on every open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Machine {
    pub id: Uuid,
    pub hostname: String,
    /// A name people gave it (the hostname is what the agent reports).
    pub display_name: Option<String>,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub group_id: Option<Uuid>,
    pub group_name: Option<String>,
    pub status: String,
    pub enrolled_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub plan_version: i64,
    /// Storage quota enforced by cofre-store (None: no limit).
    pub storage_quota_bytes: Option<i64>,
    /// Finish time of the last successful backup (with or without warnings).
    pub last_backup_at: Option<DateTime<Utc>>,
    pub last_result: Option<String>,
    pub last_result_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

const SELECT: &str = "
select m.id, m.hostname, m.display_name, m.os, m.arch, m.agent_version, m.group_id, g.name as group_name, m.status,
       m.enrolled_at, m.approved_at, m.revoked_at, m.last_seen_at, m.plan_version, m.storage_quota_bytes,
       (select max(r.finished_at) from job_results r join jobs j on j.id = r.job_id
         where j.machine_id = m.id and j.kind = 'backup' and r.outcome in ('succeeded', 'warning')) as last_backup_at,
       lr.outcome as last_result, lr.finished_at as last_result_at, lr.error_message as last_error
from machines m
left join groups g on g.id = m.group_id
left join lateral (
    select r.outcome, r.finished_at, r.error_message from job_results r join jobs j on j.id = r.job_id
    where j.machine_id = m.id and j.kind = 'backup' order by r.finished_at desc limit 1
) lr on true";

/// A page of results and the cursor for the next one.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(c: &str) -> Result<Uuid> {
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| Error::field("cursor", "not a cursor returned by this API"))
}

pub fn page<T>(mut items: Vec<T>, limit: usize, id: impl Fn(&T) -> Uuid) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| encode_cursor(id(t)))
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Machines in id order after `after`; `group` limits the list to one group's machines.
pub async fn list(
    pool: &PgPool,
    after: Option<Uuid>,
    limit: usize,
    status: Option<&str>,
    group: Option<Uuid>,
) -> Result<Page<Machine>> {
    let q = format!(
        "{SELECT} where ($1::uuid is null or m.id > $1) and ($2::text is null or m.status = $2)
           and ($4::uuid is null or m.group_id = $4) order by m.id limit $3"
    );
    let items: Vec<Machine> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(after)
        .bind(status)
        .bind(i64::try_from(limit + 1).unwrap_or(101))
        .bind(group)
        .fetch_all(pool)
        .await?;
    Ok(page(items, limit, |m| m.id))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Machine> {
    let q = format!("{SELECT} where m.id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound("machine".into()))
}

pub async fn approve(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<Machine> {
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar("select status from machines where id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    match status.as_deref() {
        None => return Err(Error::NotFound("machine".into())),
        Some("pending") => {}
        Some("active") => return get(pool, id).await,
        Some(other) => return Err(Error::Conflict(format!("machine is {other}; it cannot be approved"))),
    }
    sqlx::query("update machines set status = 'active', approved_at = now() where id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, actor, "machine.approve", "machine", &id.to_string(), serde_json::json!({}))
        .await?;
    events::notify(&mut tx, &Event::Machine { id }).await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Revokes the machine and all its certificates; its open session closes within a second.
/// Renames a machine (for people) or moves it to another group; its new group's policies and
/// store access follow at once. A user limited to a group may not move a machine out of it.
/// The version of what people may edit on a machine (ETag, If-Match): its name and group.
pub fn etag(display_name: Option<&str>, group: Option<Uuid>) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::new()
        .chain_update(display_name.unwrap_or("\0none").as_bytes())
        .chain_update(b"\0")
        .chain_update(group.map(|g| g.to_string()).unwrap_or_default())
        .finalize();
    format!("\"m-{}\"", hex::encode(&d[..8]))
}

/// Renames a machine or moves it; `if_match` (an [`etag`]) refuses an edit made from a stale
/// copy (412).
pub async fn update(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    req: cofre_api::machines::UpdateMachine,
    caller_group: Option<Uuid>,
    if_match: Option<&str>,
) -> Result<Machine> {
    let before = get(pool, id).await?;
    let mut problems = Vec::new();
    if let Some(Some(name)) = &req.display_name
        && (name.trim().is_empty() || name.chars().count() > 100)
    {
        problems.push(crate::error::FieldError::new("display_name", "1 to 100 characters"));
    }
    if let Some(group) = req.group_id {
        if caller_group.is_some() && group != caller_group {
            problems.push(crate::error::FieldError::new(
                "group_id",
                "you may not move a machine out of your group",
            ));
        }
        if let Some(g) = group
            && !crate::groups::exists(pool, g).await?
        {
            problems.push(crate::error::FieldError::new("group_id", "no such group"));
        }
    }
    if !problems.is_empty() {
        return Err(Error::fields(problems));
    }
    let name = req.display_name.clone().unwrap_or(before.display_name.clone());
    let group = req.group_id.unwrap_or(before.group_id);
    let mut tx = pool.begin().await?;
    let (locked_name, locked_group): (Option<String>, Option<Uuid>) =
        sqlx::query_as("select display_name, group_id from machines where id = $1 for update")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(expected) = if_match
        && expected != etag(locked_name.as_deref(), locked_group)
    {
        return Err(Error::PreconditionFailed("this machine changed meanwhile: read it again".into()));
    }
    sqlx::query("update machines set display_name = $2, group_id = $3 where id = $1")
        .bind(id)
        .bind(name.as_deref().map(str::trim))
        .bind(group)
        .execute(&mut *tx)
        .await?;
    let details = serde_json::json!({
        "display_name": {"from": before.display_name, "to": name},
        "group_id": {"from": before.group_id, "to": group},
    });
    audit::record(&mut tx, actor, "machine.update", "machine", &id.to_string(), details).await?;
    if group != before.group_id {
        events::notify(&mut tx, &Event::plans_for(vec![id])).await?;
        events::notify(&mut tx, &Event::Provision).await?;
        events::notify(&mut tx, &Event::Stores).await?;
    }
    tx.commit().await?;
    get(pool, id).await
}

pub async fn revoke(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<Machine> {
    retire(pool, actor, id, Retire::Revoke).await
}

/// Decommissions a machine: like a revocation (its certificates stop working at once, so its
/// schedules stop), but its repository and snapshots are kept and it leaves the compliance
/// reports. A revoked machine may be decommissioned; a decommissioned one stays so.
pub async fn decommission(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<Machine> {
    retire(pool, actor, id, Retire::Decommission).await
}

#[derive(Debug, Clone, Copy)]
enum Retire {
    Revoke,
    Decommission,
}

async fn retire(pool: &PgPool, actor: &Actor, id: Uuid, how: Retire) -> Result<Machine> {
    let (sql, action) = match how {
        Retire::Revoke => (
            "update machines set status = 'revoked', revoked_at = now()
             where id = $1 and status not in ('revoked', 'decommissioned')",
            "machine.revoke",
        ),
        Retire::Decommission => (
            "update machines set status = 'decommissioned', decommissioned_at = now(),
                    revoked_at = coalesce(revoked_at, now())
             where id = $1 and status <> 'decommissioned'",
            "machine.decommission",
        ),
    };
    let mut tx = pool.begin().await?;
    let n = sqlx::query(sql).bind(id).execute(&mut *tx).await?.rows_affected();
    if n == 0 {
        let exists: bool = sqlx::query_scalar("select exists (select 1 from machines where id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Err(Error::NotFound("machine".into()));
        }
    } else {
        let serials: Vec<String> = sqlx::query_scalar(
            "update certificates set revoked_at = now() where machine_id = $1 and revoked_at is null returning serial",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            action,
            "machine",
            &id.to_string(),
            serde_json::json!({"revoked_certificates": serials}),
        )
        .await?;
        events::notify(&mut tx, &Event::Machine { id }).await?;
    }
    tx.commit().await?;
    get(pool, id).await
}

/// What a session may do, decided on every open from the certificate serial and the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStanding {
    Active,
    Pending,
}

pub async fn session_standing(pool: &PgPool, machine: Uuid, serial: &str) -> Result<SessionStanding> {
    let row: Option<(Uuid, Option<DateTime<Utc>>, DateTime<Utc>, String)> = sqlx::query_as(
        "select c.machine_id, c.revoked_at, c.not_after, m.status
         from certificates c join machines m on m.id = c.machine_id where c.serial = $1",
    )
    .bind(serial)
    .fetch_optional(pool)
    .await?;
    let Some((owner, revoked_at, not_after, status)) = row else {
        return Err(Error::Unauthenticated("certificate not issued to any machine".into()));
    };
    if owner != machine {
        return Err(Error::Unauthenticated("certificate does not belong to this machine".into()));
    }
    if revoked_at.is_some() {
        return Err(Error::Forbidden("certificate revoked".into()));
    }
    if not_after <= Utc::now() {
        return Err(Error::Unauthenticated("certificate expired".into()));
    }
    match status.as_str() {
        "active" => Ok(SessionStanding::Active),
        "pending" => Ok(SessionStanding::Pending),
        other => Err(Error::Forbidden(format!("machine is {other}"))),
    }
}

pub async fn record_hello(
    pool: &PgPool,
    id: Uuid,
    inv: &crate::enrollment::Inventory,
    plan_version: u64,
) -> Result<()> {
    sqlx::query(
        "update machines set hostname = $2, os = $3, arch = $4, agent_version = $5, plan_version = $6, last_seen_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(&inv.hostname)
    .bind(&inv.os)
    .bind(&inv.arch)
    .bind(&inv.agent_version)
    .bind(i64::try_from(plan_version & (i64::MAX as u64)).unwrap_or(0))
    .execute(pool)
    .await?;
    Ok(())
}

/// The plan version the agent reports holding.
pub async fn record_plan_version(pool: &PgPool, id: Uuid, plan_version: u64) -> Result<()> {
    sqlx::query("update machines set plan_version = $2, last_seen_at = now() where id = $1")
        .bind(id)
        .bind(i64::try_from(plan_version & (i64::MAX as u64)).unwrap_or(0))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn touch(pool: &PgPool, id: Uuid) -> Result<()> {
    sqlx::query("update machines set last_seen_at = now() where id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Records a certificate issued to `machine` (its serial is what sessions are checked by).
pub async fn insert_certificate(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    machine: Uuid,
    issued: &crate::pki::Issued,
) -> Result<()> {
    sqlx::query(
        "insert into certificates (serial, machine_id, not_before, not_after) values ($1, $2, $3, $4)",
    )
    .bind(&issued.serial)
    .bind(machine)
    .bind(issued.not_before)
    .bind(issued.not_after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How often a machine may receive a certificate.
#[derive(Debug, Clone, Copy)]
pub struct RenewalLimit {
    /// The least time since the machine's newest certificate was issued.
    pub interval: std::time::Duration,
    /// The same when the certificate presented expires within `interval` (a renewal answer
    /// lost on the way must not lock the machine out).
    pub near_expiry_interval: std::time::Duration,
}

/// Issues (with `issue`) and records a renewed certificate for an active machine presenting
/// `serial`, unless the machine received one too recently: each renewal is a certificate that
/// opens sessions for its lifetime and an audit event written under the audit log's global
/// lock. Refused with `TooManyRequests` and the seconds to wait.
pub async fn renew_certificate(
    pool: &PgPool,
    id: Uuid,
    serial: &str,
    limit: RenewalLimit,
    issue: impl FnOnce() -> Result<crate::pki::Issued>,
) -> Result<crate::pki::Issued> {
    let mut tx = pool.begin().await?;
    // One renewal at a time per machine, whichever replica its sessions are on.
    sqlx::query("select 1 from machines where id = $1 for update").bind(id).execute(&mut *tx).await?;
    let (since_newest, presented_left): (Option<f64>, Option<f64>) = sqlx::query_as(
        "select extract(epoch from now() - max(issued_at))::float8,
                (select extract(epoch from not_after - now())::float8 from certificates
                 where serial = $2 and machine_id = $1)
         from certificates where machine_id = $1",
    )
    .bind(id)
    .bind(serial)
    .fetch_one(&mut *tx)
    .await?;
    let since_newest = since_newest.unwrap_or(f64::MAX);
    let near_expiry = presented_left.is_some_and(|left| left < limit.interval.as_secs_f64());
    let needed = if near_expiry { limit.near_expiry_interval } else { limit.interval }.as_secs_f64();
    if since_newest < needed {
        // Whole seconds, rounded up: between 1 and the interval.
        let wait = (needed - since_newest).ceil().max(1.0) as u64;
        return Err(Error::TooManyRequests(
            format!(
                "this machine received a certificate {} s ago; ask again in {wait} s",
                since_newest.floor()
            ),
            Some(wait),
        ));
    }
    let issued = issue()?;
    insert_certificate(&mut tx, id, &issued).await?;
    audit::record(
        &mut tx,
        &Actor::Machine(id),
        "certificate.renew",
        "machine",
        &id.to_string(),
        serde_json::json!({"serial": issued.serial, "not_after": issued.not_after}),
    )
    .await?;
    tx.commit().await?;
    Ok(issued)
}

/// Revokes the machine's certificates issued before `serial` once a session proves the
/// machine holds `serial` (the renewed one): a renewal no longer leaves its predecessor usable
/// for the rest of its lifetime. Until then both work, since the renewal's answer may be lost
/// on the way. Audited; open sessions with a predecessor re-check and close.
pub async fn retire_predecessors(pool: &PgPool, id: Uuid, serial: &str) -> Result<Vec<String>> {
    let mut tx = pool.begin().await?;
    let retired: Vec<String> = sqlx::query_scalar(
        "update certificates c set revoked_at = now()
         from certificates cur
         where cur.serial = $2 and cur.machine_id = $1
           and c.machine_id = $1 and c.revoked_at is null and c.issued_at < cur.issued_at
         returning c.serial",
    )
    .bind(id)
    .bind(serial)
    .fetch_all(&mut *tx)
    .await?;
    if retired.is_empty() {
        return Ok(retired);
    }
    audit::record(
        &mut tx,
        &Actor::Machine(id),
        "certificate.supersede",
        "machine",
        &id.to_string(),
        serde_json::json!({"in_use": serial, "revoked_certificates": retired}),
    )
    .await?;
    events::notify(&mut tx, &Event::Machine { id }).await?;
    // Stores learn the revoked serials from their access lists.
    events::notify(&mut tx, &Event::Stores).await?;
    tx.commit().await?;
    Ok(retired)
}
