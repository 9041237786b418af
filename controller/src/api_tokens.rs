//! API tokens for scripts: `cofre_pat_<id>_<secret>`. Scoped (role, group and read-only, never
//! more than the creator may do at the moment of use), expiring (at most a year), revocable,
//! stored as the SHA-256 of the secret (shown once), and dead when their creator is disabled.
//! Creating and revoking are audited; the first use on each controller too (`auth.token_use`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use cofre_api::users::{ApiToken, CreatedApiToken, NewApiToken};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit;
use crate::auth::{Claims, Role};
use crate::error::{Error, FieldError, Result};

pub const PREFIX: &str = "cofre_pat_";
const MAX_DAYS: u32 = 366;
const DEFAULT_DAYS: u32 = 90;

const COLUMNS: &str =
    "id, user_id, name, role, group_id, read_only, created_at, expires_at, revoked_at, last_used_at";

type Row = (
    Uuid,
    Uuid,
    String,
    String,
    Option<Uuid>,
    bool,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn token(
    (id, user_id, name, role, group_id, read_only, created_at, expires_at, revoked_at, last_used_at): Row,
) -> ApiToken {
    ApiToken {
        id,
        user_id,
        name,
        role,
        group_id,
        read_only,
        created_at,
        expires_at,
        revoked_at,
        last_used_at,
    }
}

/// Creates a token for the caller, within the caller's rights. Tokens are made by people
/// (signed in with a password), not by other tokens.
pub async fn create(pool: &PgPool, caller: &Claims, req: NewApiToken) -> Result<CreatedApiToken> {
    if caller.api_token {
        return Err(Error::Forbidden(
            "API tokens are created by a signed-in person, not by another token".into(),
        ));
    }
    let mut problems = Vec::new();
    if req.name.trim().is_empty() || req.name.len() > 100 {
        problems.push(FieldError::new("name", "1 to 100 characters"));
    }
    let role = match req.role.as_deref() {
        None => caller.role,
        Some(r) => match Role::parse(r) {
            Some(r) if r <= caller.role => r,
            Some(_) => {
                problems.push(FieldError::new("role", "cannot exceed your own role"));
                caller.role
            }
            None => {
                problems.push(FieldError::new("role", "one of admin, operator, auditor"));
                caller.role
            }
        },
    };
    let group = match (caller.grp, req.group_id) {
        (Some(mine), Some(g)) if g != mine => {
            problems.push(FieldError::new("group_id", "you are limited to your own group"));
            Some(mine)
        }
        (Some(mine), _) => Some(mine),
        (None, g) => g,
    };
    let days = req.expires_in_days.unwrap_or(DEFAULT_DAYS);
    if !(1..=MAX_DAYS).contains(&days) {
        problems.push(FieldError::new("expires_in_days", format!("between 1 and {MAX_DAYS}")));
    }
    if !problems.is_empty() {
        return Err(Error::fields(problems));
    }
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let expires_at = Utc::now() + chrono::Duration::days(i64::from(days));
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into api_tokens (id, user_id, name, secret_hash, role, group_id, read_only, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(caller.sub)
    .bind(req.name.trim())
    .bind(Sha256::digest(secret.as_bytes()).to_vec())
    .bind(role.as_str())
    .bind(group)
    .bind(req.read_only)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "name": req.name.trim(), "role": role.as_str(), "group_id": group, "read_only": req.read_only,
        "expires_at": expires_at,
    });
    audit::record(&mut tx, &caller.actor(), "api_token.create", "api_token", &id.to_string(), details)
        .await?;
    tx.commit().await?;
    Ok(CreatedApiToken {
        token: format!("{PREFIX}{}_{secret}", id.simple()),
        api_token: get(pool, id).await?,
    })
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<ApiToken> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("select {COLUMNS} from api_tokens where id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    row.map(token).ok_or_else(|| Error::NotFound("API token".into()))
}

/// The caller's tokens; an admin's `all` lists everyone's.
pub async fn list(pool: &PgPool, caller: &Claims, all: bool) -> Result<Vec<ApiToken>> {
    let everyone = all && caller.role == Role::Admin && caller.grp.is_none();
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from api_tokens where $1 or user_id = $2 order by created_at desc"
    )))
    .bind(everyone)
    .bind(caller.sub)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(token).collect())
}

/// Revokes a token: the caller's own, or any for a fleet-wide admin.
pub async fn revoke(pool: &PgPool, caller: &Claims, id: Uuid) -> Result<ApiToken> {
    let t = get(pool, id).await?;
    let may = t.user_id == caller.sub || (caller.role == Role::Admin && caller.grp.is_none());
    if !may {
        return Err(Error::NotFound("API token".into()));
    }
    let mut tx = pool.begin().await?;
    let n = sqlx::query("update api_tokens set revoked_at = now() where id = $1 and revoked_at is null")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n > 0 {
        let details = serde_json::json!({"name": t.name, "owner": t.user_id});
        audit::record(&mut tx, &caller.actor(), "api_token.revoke", "api_token", &id.to_string(), details)
            .await?;
    }
    tx.commit().await?;
    get(pool, id).await
}

/// Records when a token was (first, on this replica) used.
pub async fn touch(pool: &PgPool, id: Uuid) -> Result<()> {
    sqlx::query("update api_tokens set last_used_at = now() where id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// The rights a presented API token carries now, as claims: the token's scope intersected with
/// its creator's current role and group. Every refusal reads the same to the caller.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<Claims> {
    let refused = || Error::Unauthenticated("invalid, expired or revoked API token".into());
    let rest = presented.strip_prefix(PREFIX).ok_or_else(refused)?;
    let (id, secret) = rest.split_once('_').ok_or_else(refused)?;
    let id = Uuid::try_parse(id).map_err(|_| refused())?;
    type Auth = (Vec<u8>, String, Option<Uuid>, bool, DateTime<Utc>, Uuid, String, String, Option<Uuid>);
    let row: Option<Auth> = sqlx::query_as(
        "select t.secret_hash, t.role, t.group_id, t.read_only, t.expires_at, u.id, u.username, u.role, u.group_id
         from api_tokens t join users u on u.id = t.user_id
         where t.id = $1 and t.revoked_at is null and t.expires_at > now() and u.disabled_at is null",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let (hash, role, group, read_only, expires_at, user, username, user_role, user_group) =
        row.ok_or_else(refused)?;
    if !same_digest(&Sha256::digest(secret.as_bytes()), &hash) {
        return Err(refused());
    }
    let role = Role::parse(&role).ok_or_else(refused)?.min(Role::parse(&user_role).ok_or_else(refused)?);
    // A creator moved to a group takes their tokens along; one moved elsewhere voids them.
    let grp = match (user_group, group) {
        (Some(u), Some(t)) if u != t => return Err(refused()),
        (Some(u), _) => Some(u),
        (None, t) => t,
    };
    let now = Utc::now().timestamp();
    Ok(Claims {
        sub: user,
        name: username,
        role,
        iss: crate::auth::ISSUER.into(),
        aud: crate::auth::AUDIENCE.into(),
        iat: now,
        exp: expires_at.timestamp(),
        jti: id,
        grp,
        sid: None,
        ro: read_only,
        api_token: true,
    })
}

/// Constant-time comparison of two digests.
fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
