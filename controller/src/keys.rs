//! Key material stored in Postgres, sealed under the master key: the CA key, the JWT signing
//! key, the audit/evidence signing key and the audit chain's HMAC key. `migrate` creates them once (under an advisory
//! lock, so replicas and concurrent runs share one set); `serve` loads them.

use rand::RngCore;
use sqlx::PgPool;

use crate::pki::{self, Ca, CaMaterial};
use crate::seal::{MasterKey, Place};

const CA: &str = "ca";
const JWT: &str = "jwt";
/// The access-token signing key before the last rotation: it still verifies, never signs.
const JWT_PREVIOUS: &str = "jwt.previous";
const AUDIT: &str = "audit";
const AUDIT_MAC: &str = "audit_mac";

fn place(name: &str) -> Place<'_> {
    Place { table: "server_keys", column: "sealed", row: name }
}

/// Creates missing keys. Returns the names created.
pub async fn ensure(pool: &PgPool, master: &MasterKey) -> anyhow::Result<Vec<&'static str>> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)").bind(crate::db::locks::MIGRATE).execute(&mut *tx).await?;
    let existing: Vec<(String, String)> =
        sqlx::query_as("select name, key_id from server_keys").fetch_all(&mut *tx).await?;
    if let Some((name, kid)) = existing.iter().find(|(_, kid)| *kid != master.key_id()) {
        anyhow::bail!(
            "key {name} in the database is sealed under master key {kid}, but the configured master \
             key is {}: wrong master key file",
            master.key_id()
        );
    }
    let mut created = Vec::new();
    for name in [CA, JWT, AUDIT, AUDIT_MAC] {
        if existing.iter().any(|(n, _)| n == name) {
            continue;
        }
        let (secret, public): (Vec<u8>, Option<String>) = match name {
            CA => {
                let ca = pki::generate_ca()?;
                (ca.key_pem.into_bytes(), Some(ca.cert_pem))
            }
            JWT | AUDIT_MAC => (random_bytes(32), None),
            _ => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| anyhow::anyhow!("cannot generate the audit signing key"))?;
                (pkcs8.as_ref().to_vec(), None)
            }
        };
        sqlx::query("insert into server_keys (name, key_id, sealed, public_pem) values ($1, $2, $3, $4)")
            .bind(name)
            .bind(master.key_id())
            .bind(master.seal(&place(name), &secret))
            .bind(public)
            .execute(&mut *tx)
            .await?;
        created.push(name);
    }
    tx.commit().await?;
    Ok(created)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut v);
    v
}

/// Keys loaded for `serve`.
pub struct Keys {
    pub ca: Ca,
    pub jwt: JwtSecrets,
    pub audit: std::sync::Arc<crate::audit::AuditKeys>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("ca", &self.ca)
            .field("jwt_kid", &crate::jwt::kid_of(&self.jwt.current))
            .finish_non_exhaustive()
    }
}

pub async fn load(pool: &PgPool, master: &MasterKey) -> anyhow::Result<Keys> {
    let rows: Vec<(String, Vec<u8>, Option<String>)> =
        sqlx::query_as("select name, sealed, public_pem from server_keys").fetch_all(pool).await?;
    let get = |name: &str| {
        rows.iter().find(|r| r.0 == name).ok_or_else(|| {
            anyhow::anyhow!("key {name} is missing from the database: run `cofre-controller migrate`")
        })
    };
    let (_, sealed, public) = get(CA)?;
    let key_pem = master.open_string(&place(CA), sealed)?;
    let cert_pem = public.clone().ok_or_else(|| anyhow::anyhow!("CA certificate missing"))?;
    let ca = Ca::load(&CaMaterial { key_pem, cert_pem })?;
    let jwt = jwt_from(&rows, master)?;
    let audit_pkcs8 = master.open(&place(AUDIT), &get(AUDIT)?.1)?;
    let audit_mac = master.open(&place(AUDIT_MAC), &get(AUDIT_MAC)?.1)?;
    let audit = std::sync::Arc::new(crate::audit::AuditKeys::new(&audit_mac, &audit_pkcs8)?);
    Ok(Keys { ca, jwt, audit })
}

/// The access-token signing keys: the current one and, after a rotation, the previous one.
pub struct JwtSecrets {
    pub current: secrecy::zeroize::Zeroizing<Vec<u8>>,
    pub previous: Option<secrecy::zeroize::Zeroizing<Vec<u8>>>,
}

fn jwt_from(rows: &[(String, Vec<u8>, Option<String>)], master: &MasterKey) -> anyhow::Result<JwtSecrets> {
    let open =
        |name: &str| rows.iter().find(|r| r.0 == name).map(|r| master.open(&place(name), &r.1)).transpose();
    let current = open(JWT)?.ok_or_else(|| {
        anyhow::anyhow!("key {JWT} is missing from the database: run `cofre-controller migrate`")
    })?;
    Ok(JwtSecrets { current, previous: open(JWT_PREVIOUS)? })
}

/// Re-reads the access-token signing keys (a replica picking up a rotation).
pub async fn load_jwt(pool: &PgPool, master: &MasterKey) -> anyhow::Result<JwtSecrets> {
    let rows: Vec<(String, Vec<u8>, Option<String>)> =
        sqlx::query_as("select name, sealed, public_pem from server_keys where name in ($1, $2)")
            .bind(JWT)
            .bind(JWT_PREVIOUS)
            .fetch_all(pool)
            .await?;
    jwt_from(&rows, master)
}

/// Makes a new access-token signing key; the current one becomes the previous one (its tokens
/// live until they expire) and the one before is forgotten (its tokens stop working). Returns
/// the new key's id. Replicas pick it up within [`crate::serve::JWT_RELOAD_SECONDS`].
pub async fn rotate_jwt(pool: &PgPool, master: &MasterKey) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)").bind(crate::db::locks::MIGRATE).execute(&mut *tx).await?;
    let sealed: Vec<u8> = sqlx::query_scalar("select sealed from server_keys where name = $1")
        .bind(JWT)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!("key {JWT} is missing from the database: run `cofre-controller migrate`")
        })?;
    let current = master.open(&place(JWT), &sealed)?;
    let next = secrecy::zeroize::Zeroizing::new(random_bytes(32));
    for (name, secret) in [(JWT_PREVIOUS, &current), (JWT, &next)] {
        sqlx::query(
            "insert into server_keys (name, key_id, sealed) values ($1, $2, $3)
             on conflict (name) do update set key_id = excluded.key_id, sealed = excluded.sealed, created_at = now()",
        )
        .bind(name)
        .bind(master.key_id())
        .bind(master.seal(&place(name), secret))
        .execute(&mut *tx)
        .await?;
    }
    let kid = crate::jwt::kid_of(&next);
    crate::audit::record(
        &mut tx,
        &crate::audit::Actor::System,
        "auth.jwt_key_rotated",
        "server_key",
        JWT,
        serde_json::json!({"kid": kid, "previous_kid": crate::jwt::kid_of(&current)}),
    )
    .await?;
    tx.commit().await?;
    Ok(kid)
}

/// Tests run many databases in one process, whose audit events are linked under the one
/// installed key: give every test database the same chain key.
#[cfg(test)]
pub(crate) async fn use_test_audit_key(pool: &PgPool, master: &MasterKey) {
    const TEST_KEY: [u8; 32] = [0x5a; 32];
    sqlx::query("update server_keys set sealed = $1 where name = $2")
        .bind(master.seal(&place(AUDIT_MAC), &TEST_KEY))
        .bind(AUDIT_MAC)
        .execute(pool)
        .await
        .expect("test audit key");
}
