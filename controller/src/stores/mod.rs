//! cofre-store instances: an admin registers a store (name and the URL clients reach it at) and
//! gets a one-time enrollment token; the store enrolls with it, opens a session like an agent's,
//! receives its access list and reports its inventory. Repositories whose URL starts with a
//! store's URL are served by that store: agents reach them with their client certificate.

pub mod access;
pub mod inventory;
#[cfg(test)]
mod tests;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::enrollment::{constant_time_eq, hash_secret, parse_token};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::pki::{Ca, Issued};

/// How long a store enrollment token stays valid.
const TOKEN_TTL_HOURS: i64 = 24;

/// `POST /api/v1/stores` (the wire type; checked by [`create`]).
pub use cofre_api::stores::NewStore;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Store {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub status: String,
    pub store_version: String,
    pub access_list_version: i64,
    pub created_at: DateTime<Utc>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, url, status, store_version, access_list_version, created_at,
    token_expires_at, enrolled_at, last_seen_at, revoked_at";

#[derive(Debug)]
pub struct CreatedStore {
    pub store: Store,
    /// The enrollment token for `cofre-store enroll`; shown once, never stored.
    pub token: String,
}

/// Normalises a store URL: http(s), a host, no credentials, query or fragment, ending in `/`.
pub fn normalise_url(raw: &str) -> Result<String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| Error::field("url", e.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(Error::field("url", "must be an https:// URL naming a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::field("url", "must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::field("url", "must not have a query or fragment"));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

pub async fn create(pool: &PgPool, actor: &Actor, ca: &Ca, req: NewStore) -> Result<CreatedStore> {
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.len() > 100
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        || !name.as_bytes()[0].is_ascii_alphanumeric()
    {
        return Err(Error::field(
            "name",
            "1 to 100 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
        ));
    }
    let url = normalise_url(&req.url)?;
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let expires = Utc::now() + chrono::Duration::hours(TOKEN_TTL_HOURS);
    let mut tx = pool.begin().await?;
    let store: Store = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "insert into stores (id, name, url, status, token_hash, token_expires_at)
         values ($1, $2, $3, 'pending', $4, $5)
         returning {COLUMNS}"
    )))
    .bind(id)
    .bind(&name)
    .bind(&url)
    .bind(hash_secret(&secret))
    .bind(expires)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "store.create",
        "store",
        &id.to_string(),
        serde_json::json!({"name": name, "url": url}),
    )
    .await?;
    // Plans of machines whose repositories this store now serves change (client certificates).
    events::notify(&mut tx, &Event::plans_for_all()).await?;
    tx.commit().await?;
    let token = format!("cofre1.{}.{}.{}", id.simple(), URL_SAFE_NO_PAD.encode(secret), ca.fingerprint());
    Ok(CreatedStore { store, token })
}

pub async fn list(pool: &PgPool) -> Result<Vec<Store>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("select {COLUMNS} from stores order by name")))
        .fetch_all(pool)
        .await?)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Store> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("select {COLUMNS} from stores where id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::NotFound("store".into()))
}

/// Revokes the store and its certificates: its session closes and it can never reconnect.
/// It keeps serving from its last access list until it is stopped: revoke machines, not the
/// store, to cut a machine off.
pub async fn revoke(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<Store> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "update stores set status = 'revoked', revoked_at = now(), token_hash = null where id = $1 and status <> 'revoked'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        get(pool, id).await?;
    } else {
        sqlx::query(
            "update store_certificates set revoked_at = now() where store_id = $1 and revoked_at is null",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        audit::record(&mut tx, actor, "store.revoke", "store", &id.to_string(), serde_json::json!({}))
            .await?;
        events::notify(&mut tx, &Event::Stores).await?;
        events::notify(&mut tx, &Event::plans_for_all()).await?;
    }
    tx.commit().await?;
    get(pool, id).await
}

#[derive(Debug)]
pub struct Enrolled {
    pub store_id: Uuid,
    pub certificate_pem: String,
    /// A server certificate for the store URL's host (chain: leaf then CA).
    pub server_certificate_pem: String,
    pub url: String,
}

/// The host part of a store URL, for its server certificate.
pub fn url_host(url: &str) -> Result<String> {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .ok_or_else(|| Error::invalid("the store URL names no host"))
}

/// Exchanges the store's one-time token and CSR for its certificate.
pub async fn enroll(
    pool: &PgPool,
    ca: &Ca,
    lifetime: std::time::Duration,
    token: &str,
    csr_der: &[u8],
    version: &str,
) -> Result<Enrolled> {
    let refuse = || Error::Unauthenticated("store enrollment token not recognised".into());
    let (id, secret) = parse_token(token, ca)?;
    let issued = ca.issue_store_cert(id, csr_der, lifetime).map_err(|e| Error::invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let row: Option<(Option<Vec<u8>>, Option<DateTime<Utc>>, String, String)> = sqlx::query_as(
        "select token_hash, token_expires_at, status, url from stores where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((hash, expires, status, url)) = row else { return Err(refuse()) };
    let server = ca
        .issue_store_server_cert(id, csr_der, &url_host(&url)?, lifetime)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let Some(hash) = hash else {
        return Err(Error::Unauthenticated("store enrollment token has been used or revoked".into()));
    };
    if !constant_time_eq(&hash, &hash_secret(&secret)) {
        return Err(refuse());
    }
    if status != "pending" {
        return Err(Error::Unauthenticated(format!("store is {status}")));
    }
    if expires.is_none_or(|e| e <= Utc::now()) {
        return Err(Error::Unauthenticated("store enrollment token expired".into()));
    }
    sqlx::query(
        "update stores set status = 'active', token_hash = null, enrolled_at = now(), store_version = $2 where id = $1",
    )
    .bind(id)
    .bind(version.chars().take(100).collect::<String>())
    .execute(&mut *tx)
    .await?;
    insert_certificate(&mut tx, id, &issued).await?;
    audit::record(
        &mut tx,
        &Actor::Store(id),
        "store.enroll",
        "store",
        &id.to_string(),
        serde_json::json!({"certificate_serial": issued.serial}),
    )
    .await?;
    tx.commit().await?;
    Ok(Enrolled { store_id: id, certificate_pem: issued.pem, server_certificate_pem: server.pem, url })
}

async fn insert_certificate(tx: &mut sqlx::PgConnection, store: Uuid, issued: &Issued) -> Result<()> {
    sqlx::query(
        "insert into store_certificates (serial, store_id, not_before, not_after) values ($1, $2, $3, $4)",
    )
    .bind(&issued.serial)
    .bind(store)
    .bind(issued.not_before)
    .bind(issued.not_after)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn record_certificate(pool: &PgPool, store: Uuid, issued: &Issued) -> Result<()> {
    let mut tx = pool.begin().await?;
    insert_certificate(&mut tx, store, issued).await?;
    audit::record(
        &mut tx,
        &Actor::Store(store),
        "store.certificate_renew",
        "store",
        &store.to_string(),
        serde_json::json!({"certificate_serial": issued.serial}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The check a store session makes on open and on every store event: the certificate was
/// issued to this store, is neither revoked nor expired, and the store is active. Returns the
/// store's URL.
pub async fn session_check(pool: &PgPool, store: Uuid, serial: &str) -> Result<String> {
    let row: Option<(Uuid, Option<DateTime<Utc>>, DateTime<Utc>, String, String)> = sqlx::query_as(
        "select c.store_id, c.revoked_at, c.not_after, s.status, s.url
         from store_certificates c join stores s on s.id = c.store_id where c.serial = $1",
    )
    .bind(serial)
    .fetch_optional(pool)
    .await?;
    let Some((owner, revoked_at, not_after, status, url)) = row else {
        return Err(Error::Unauthenticated("certificate not issued to any store".into()));
    };
    if owner != store {
        return Err(Error::Unauthenticated("certificate does not belong to this store".into()));
    }
    if revoked_at.is_some() || status == "revoked" {
        return Err(Error::Forbidden("store revoked".into()));
    }
    if not_after <= Utc::now() {
        return Err(Error::Unauthenticated("certificate expired".into()));
    }
    Ok(url)
}

pub async fn record_hello(pool: &PgPool, store: Uuid, version: &str, access_list_version: u64) -> Result<()> {
    sqlx::query(
        "update stores set last_seen_at = now(), store_version = $2, access_list_version = $3 where id = $1",
    )
    .bind(store)
    .bind(version.chars().take(100).collect::<String>())
    .bind(i64::try_from(access_list_version).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn record_access_list_sent(pool: &PgPool, store: Uuid, version: u64) -> Result<()> {
    sqlx::query("update stores set last_seen_at = now(), access_list_version = $2 where id = $1")
        .bind(store)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn touch(pool: &PgPool, store: Uuid) -> Result<()> {
    sqlx::query("update stores set last_seen_at = now() where id = $1").bind(store).execute(pool).await?;
    Ok(())
}

/// Sets (or clears, with `None`) a machine's storage quota.
pub async fn set_machine_quota(
    pool: &PgPool,
    actor: &Actor,
    machine: Uuid,
    bytes: Option<u64>,
) -> Result<()> {
    set_quota(pool, actor, "machines", "machine", machine, bytes).await
}

/// Sets (or clears, with `None`) a group's storage quota.
pub async fn set_group_quota(pool: &PgPool, actor: &Actor, group: Uuid, bytes: Option<u64>) -> Result<()> {
    set_quota(pool, actor, "groups", "group", group, bytes).await
}

async fn set_quota(
    pool: &PgPool,
    actor: &Actor,
    table: &'static str,
    what: &'static str,
    id: Uuid,
    bytes: Option<u64>,
) -> Result<()> {
    let bytes = match bytes {
        Some(0) => return Err(Error::field("storage_quota_bytes", "must be positive, or null for no limit")),
        Some(b) => Some(i64::try_from(b).map_err(|_| Error::field("storage_quota_bytes", "too large"))?),
        None => None,
    };
    let mut tx = pool.begin().await?;
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "update {table} set storage_quota_bytes = $2 where id = $1"
    )))
    .bind(id)
    .bind(bytes)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(Error::NotFound(what.into()));
    }
    audit::record(
        &mut tx,
        actor,
        &format!("{what}.set_storage_quota"),
        what,
        &id.to_string(),
        serde_json::json!({"storage_quota_bytes": bytes}),
    )
    .await?;
    events::notify(&mut tx, &Event::Stores).await?;
    tx.commit().await?;
    Ok(())
}
