//! People: create, change role or group, disable and enable, reset passwords — by admins,
//! audited. Every authenticated request re-reads its user (`standing`), so a disabled, removed
//! or demoted user loses the old rights at once, whatever its token says.

use cofre_api::users::{NewPassword, NewUser, UpdateUser, User, UserWithPassword};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::auth::Role;
use crate::error::{Error, FieldError, Result};

/// Shortest password a person may choose.
pub const MIN_PASSWORD_CHARS: usize = 12;

const COLUMNS: &str = "id, username, role, group_id, created_at, updated_at, disabled_at";

type Row = (
    Uuid,
    String,
    String,
    Option<Uuid>,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

fn user((id, username, role, group_id, created_at, updated_at, disabled_at): Row) -> User {
    User { id, username, role, group_id, created_at, updated_at, disabled_at }
}

pub async fn list(pool: &PgPool) -> Result<Vec<User>> {
    let rows: Vec<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("select {COLUMNS} from users order by username")))
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(user).collect())
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<User> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("select {COLUMNS} from users where id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(user).ok_or_else(|| Error::NotFound("user".into()))
}

/// What a request with access token `jti` may do now: the user's current role and group.
/// None: the user is gone or disabled, or the token was ended by logout, or its session ended
/// (logout, a reused refresh token, disable, password reset).
pub async fn standing(
    pool: &PgPool,
    id: Uuid,
    jti: Uuid,
    session: Option<Uuid>,
) -> Result<Option<(Role, Option<Uuid>)>> {
    let row: Option<(String, Option<Uuid>)> = sqlx::query_as(
        "select role, group_id from users where id = $1 and disabled_at is null
           and not exists (select 1 from revoked_access_tokens where jti = $2)
           and not exists (select 1 from refresh_tokens where family_id = $3 and revoked_at is not null)",
    )
    .bind(id)
    .bind(jti)
    .bind(session)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(role, group)| Role::parse(&role).map(|r| (r, group))))
}

fn check_role(role: &str, problems: &mut Vec<FieldError>) {
    if Role::parse(role).is_none() {
        problems.push(FieldError::new("role", "one of admin, operator, auditor"));
    }
}

fn check_password(p: &str, problems: &mut Vec<FieldError>) {
    if p.chars().count() < MIN_PASSWORD_CHARS || p.len() > 1000 {
        problems
            .push(FieldError::new("password", format!("between {MIN_PASSWORD_CHARS} and 1000 characters")));
    }
}

async fn check_group(pool: &PgPool, group: Option<Uuid>, problems: &mut Vec<FieldError>) -> Result<()> {
    if let Some(g) = group
        && !crate::groups::exists(pool, g).await?
    {
        problems.push(FieldError::new("group_id", "no such group"));
    }
    Ok(())
}

/// The hash of the given password, or of a generated one (returned, to be shown once).
async fn hashed(given: Option<String>) -> Result<(String, Option<String>)> {
    let (password, generated) = match given {
        Some(p) => (p, None),
        None => {
            let p = crate::auth::generate_password();
            (p.clone(), Some(p))
        }
    };
    Ok((crate::auth::hash_off_the_runtime(password).await?, generated))
}

pub async fn create(pool: &PgPool, actor: &Actor, req: NewUser) -> Result<UserWithPassword> {
    let mut problems = Vec::new();
    let name_ok = (1..=64).contains(&req.username.len())
        && req.username.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && req.username.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !name_ok {
        problems.push(FieldError::new(
            "username",
            "1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
        ));
    }
    check_role(&req.role, &mut problems);
    if let Some(p) = &req.password {
        check_password(p, &mut problems);
    }
    check_group(pool, req.group_id, &mut problems).await?;
    if !problems.is_empty() {
        return Err(Error::fields(problems));
    }
    let (hash, generated) = hashed(req.password).await?;
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into users (id, username, password_hash, role, group_id) values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&req.username)
    .bind(hash)
    .bind(&req.role)
    .bind(req.group_id)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({"username": req.username, "role": req.role, "group_id": req.group_id});
    audit::record(&mut tx, actor, "user.create", "user", &id.to_string(), details).await?;
    tx.commit().await?;
    Ok(UserWithPassword { user: get(pool, id).await?, generated_password: generated })
}

/// Refuses a change that would leave no enabled fleet-wide admin (nobody could undo it).
async fn keep_an_admin(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, changing: Uuid) -> Result<()> {
    let others: bool = sqlx::query_scalar(
        "select exists (select 1 from users where id <> $1 and role = 'admin' and group_id is null and disabled_at is null)",
    )
    .bind(changing)
    .fetch_one(&mut **tx)
    .await?;
    if others {
        Ok(())
    } else {
        Err(Error::Conflict("this is the last enabled fleet-wide admin: make another one first".into()))
    }
}

/// The version of a user an edit is made from (ETag, If-Match): changes with every change.
pub fn etag(u: &User) -> String {
    etag_at(u.updated_at)
}

fn etag_at(updated_at: chrono::DateTime<chrono::Utc>) -> String {
    format!("\"u-{}\"", updated_at.timestamp_micros())
}

/// Changes a user's role or group; `if_match` (an [`etag`]) refuses an edit made from a
/// stale copy (412).
pub async fn update(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    req: UpdateUser,
    if_match: Option<&str>,
) -> Result<User> {
    let mut problems = Vec::new();
    if let Some(r) = &req.role {
        check_role(r, &mut problems);
    }
    if let Some(g) = req.group_id {
        check_group(pool, g, &mut problems).await?;
    }
    if !problems.is_empty() {
        return Err(Error::fields(problems));
    }
    let before = get(pool, id).await?;
    let role = req.role.clone().unwrap_or_else(|| before.role.clone());
    let group = req.group_id.unwrap_or(before.group_id);
    let mut tx = pool.begin().await?;
    let at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select updated_at from users where id = $1 for update")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(expected) = if_match
        && expected != etag_at(at)
    {
        return Err(Error::PreconditionFailed("this user changed meanwhile: read it again".into()));
    }
    if before.role == "admin" && before.group_id.is_none() && (role != "admin" || group.is_some()) {
        keep_an_admin(&mut tx, id).await?;
    }
    sqlx::query("update users set role = $2, group_id = $3, updated_at = now() where id = $1")
        .bind(id)
        .bind(&role)
        .bind(group)
        .execute(&mut *tx)
        .await?;
    let details = serde_json::json!({
        "role": {"from": before.role, "to": role},
        "group_id": {"from": before.group_id, "to": group},
    });
    audit::record(&mut tx, actor, "user.update", "user", &id.to_string(), details).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Disables (or enables again) a user: a disabled user's tokens stop working at once.
pub async fn set_disabled(pool: &PgPool, actor: &Actor, id: Uuid, disabled: bool) -> Result<User> {
    let before = get(pool, id).await?;
    if before.disabled_at.is_some() == disabled {
        return Ok(before);
    }
    let mut tx = pool.begin().await?;
    if disabled && before.role == "admin" && before.group_id.is_none() {
        keep_an_admin(&mut tx, id).await?;
    }
    sqlx::query(
        "update users set disabled_at = case when $2 then now() end, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(disabled)
    .execute(&mut *tx)
    .await?;
    if disabled {
        crate::sessions::end_all_of(&mut tx, id).await?;
    }
    let action = if disabled { "user.disable" } else { "user.enable" };
    audit::record(
        &mut tx,
        actor,
        action,
        "user",
        &id.to_string(),
        serde_json::json!({"username": before.username}),
    )
    .await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Sets a new password (or generates one, returned once).
pub async fn reset_password(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    req: NewPassword,
) -> Result<UserWithPassword> {
    let mut problems = Vec::new();
    if let Some(p) = &req.password {
        check_password(p, &mut problems);
    }
    if !problems.is_empty() {
        return Err(Error::fields(problems));
    }
    let u = get(pool, id).await?;
    let (hash, generated) = hashed(req.password).await?;
    let mut tx = pool.begin().await?;
    sqlx::query("update users set password_hash = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    // A reset password often means a stolen one: its sessions end (they cannot refresh).
    crate::sessions::end_all_of(&mut tx, id).await?;
    let details = serde_json::json!({"username": u.username, "generated": generated.is_some()});
    audit::record(&mut tx, actor, "user.password_reset", "user", &id.to_string(), details).await?;
    tx.commit().await?;
    Ok(UserWithPassword { user: get(pool, id).await?, generated_password: generated })
}

/// Ends an access token before it expires and its session's refresh tokens (logout); expired
/// revocations are swept.
pub async fn logout(pool: &PgPool, claims: &crate::auth::Claims) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("delete from revoked_access_tokens where expires_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into revoked_access_tokens (jti, user_id, expires_at) values ($1, $2, $3) on conflict do nothing",
    )
    .bind(claims.jti)
    .bind(claims.sub)
    .bind(chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(chrono::Utc::now))
    .execute(&mut *tx)
    .await?;
    if let Some(session) = claims.sid {
        crate::sessions::end(&mut tx, session).await?;
    }
    let details = serde_json::json!({"token_id": claims.jti, "session": claims.sid});
    audit::record(&mut tx, &claims.actor(), "auth.logout", "user", &claims.sub.to_string(), details).await?;
    tx.commit().await?;
    Ok(())
}
