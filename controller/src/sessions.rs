//! Login sessions: a password login opens a family of single-use refresh tokens beside its
//! short-lived access token. Refreshing uses the presented token up and hands out the family's
//! next one; presenting a used token again means it was copied, so the whole family ends (the
//! thief's and the owner's sessions alike) and the event is audited. Logout ends the family. A
//! family never outlives its login's lifetime (`admin.session_ttl_seconds`), and a disabled user's
//! families refresh no more.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::jwt::JwtKeys;

/// What every refresh token starts with (so scanners and people recognise it).
pub const PREFIX: &str = "cofre_rt_";

/// The tokens a login or a refresh hands out.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The session (refresh family) these tokens belong to.
    pub session: Uuid,
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_expires_at: chrono::DateTime<chrono::Utc>,
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{PREFIX}{}", hex::encode(b))
}

async fn insert(
    conn: &mut PgConnection,
    family: Uuid,
    user: Uuid,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> Result<String> {
    let secret = new_secret();
    sqlx::query(
        "insert into refresh_tokens (id, family_id, user_id, token_hash, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(family)
    .bind(user)
    .bind(hash(&secret))
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(secret)
}

/// Opens a session for a user who just proved their password (inside the login's transaction).
pub async fn open(
    conn: &mut PgConnection,
    jwt: &JwtKeys,
    session_ttl_seconds: u64,
    user: Uuid,
    name: &str,
    role: Role,
    group: Option<Uuid>,
) -> Result<Tokens> {
    sqlx::query("delete from refresh_tokens where expires_at < now() - interval '1 day'")
        .execute(&mut *conn)
        .await?;
    let family = Uuid::now_v7();
    let ttl = i64::try_from(session_ttl_seconds).unwrap_or(8 * 3600);
    // Whole seconds: what the database stores and gives back is what the client was told.
    let expires_at =
        chrono::SubsecRound::trunc_subsecs(chrono::Utc::now() + chrono::Duration::seconds(ttl), 0);
    let refresh_token = insert(conn, family, user, expires_at).await?;
    Ok(Tokens {
        session: family,
        access_token: jwt.issue(user, name, role, group, Some(family))?,
        expires_in: jwt.ttl_seconds(),
        refresh_token,
        refresh_expires_at: expires_at,
    })
}

fn ended() -> Error {
    Error::Unauthenticated("this session has ended: log in again".into())
}

/// Trades a refresh token for a new access token and the family's next refresh token.
pub async fn refresh(
    pool: &PgPool,
    jwt: &JwtKeys,
    token: &str,
    address: Option<std::net::IpAddr>,
) -> Result<Tokens> {
    if !token.starts_with(PREFIX) || token.len() > 200 {
        return Err(Error::Unauthenticated("not a refresh token".into()));
    }
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, Uuid, Uuid, chrono::DateTime<chrono::Utc>, bool, bool)> = sqlx::query_as(
        "select id, family_id, user_id, expires_at, used_at is not null, revoked_at is not null
           from refresh_tokens where token_hash = $1 for update",
    )
    .bind(hash(token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, family, user, expires_at, used, revoked)) = row else {
        return Err(Error::Unauthenticated("unknown refresh token: log in again".into()));
    };
    if revoked || expires_at <= chrono::Utc::now() {
        return Err(ended());
    }
    if used {
        // A used token presented again: someone holds a copy. End the family everywhere.
        sqlx::query(
            "update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null",
        )
        .bind(family)
        .execute(&mut *tx)
        .await?;
        let details = serde_json::json!({
            "session": family, "address": address.map(|a| a.to_string()),
        });
        audit::record(&mut tx, &Actor::System, "auth.refresh_reused", "user", &user.to_string(), details)
            .await?;
        tx.commit().await?;
        tracing::warn!(%user, session = %family, "a used refresh token was presented again: the session is ended");
        return Err(Error::Unauthenticated(
            "this refresh token was already used, so a copy of it exists: the session has been ended; log in again"
                .into(),
        ));
    }
    let who: Option<(String, String, Option<Uuid>)> =
        sqlx::query_as("select username, role, group_id from users where id = $1 and disabled_at is null")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((name, role, group)) = who else {
        return Err(Error::Unauthenticated("this account is disabled or no longer exists".into()));
    };
    let role = Role::parse(&role).ok_or_else(|| Error::internal(anyhow::anyhow!("bad role {role}")))?;
    sqlx::query("update refresh_tokens set used_at = now() where id = $1").bind(id).execute(&mut *tx).await?;
    let refresh_token = insert(&mut tx, family, user, expires_at).await?;
    tx.commit().await?;
    Ok(Tokens {
        session: family,
        access_token: jwt.issue(user, &name, role, group, Some(family))?,
        expires_in: jwt.ttl_seconds(),
        refresh_token,
        refresh_expires_at: expires_at,
    })
}

/// Ends a session's refresh family (logout).
pub async fn end(conn: &mut PgConnection, family: Uuid) -> Result<()> {
    sqlx::query("update refresh_tokens set revoked_at = now() where family_id = $1 and revoked_at is null")
        .bind(family)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Ends every session of a user (disabled, password reset).
pub async fn end_all_of(conn: &mut PgConnection, user: Uuid) -> Result<()> {
    sqlx::query("update refresh_tokens set revoked_at = now() where user_id = $1 and revoked_at is null")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
