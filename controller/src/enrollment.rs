//! Enrollment tokens and enrolling a machine: a token is `cofre1.<id>.<secret>.<ca sha256>`;
//! only a hash of the secret is stored, and its use count is decremented in the same
//! transaction that creates the machine and records its first certificate. A machine whose
//! certificate expired while it was away re-enrolls with a new token and proof of its key, and
//! keeps its id (`reenroll`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::pki::Ca;

/// `POST /api/v1/enrollment-tokens` (the wire type; checked by [`create_token`]).
pub use cofre_api::enrollment::NewEnrollmentToken as NewToken;

#[derive(Debug, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: Uuid,
    pub description: String,
    pub group_id: Option<Uuid>,
    pub uses_left: i32,
    pub requires_approval: bool,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct CreatedToken {
    pub info: TokenInfo,
    /// The whole token; shown once, never stored.
    pub token: String,
}

pub(crate) fn hash_secret(secret: &[u8]) -> Vec<u8> {
    Sha256::new().chain_update(b"cofre-enroll-token:").chain_update(secret).finalize().to_vec()
}

pub async fn create_token(
    pool: &PgPool,
    actor: &Actor,
    ca: &Ca,
    defaults: &crate::config::EnrollmentSettings,
    req: NewToken,
) -> Result<CreatedToken> {
    let uses = req.uses.unwrap_or(defaults.token_uses);
    if uses == 0 || uses > 100_000 {
        return Err(Error::field("uses", "must be between 1 and 100000"));
    }
    let ttl = req.ttl_seconds.unwrap_or(defaults.token_ttl_seconds);
    if !(60..=366 * 24 * 3600).contains(&ttl) {
        return Err(Error::field("ttl_seconds", "must be between 60 seconds and 366 days"));
    }
    if req.description.len() > 500 {
        return Err(Error::field("description", "at most 500 characters"));
    }
    let id = Uuid::now_v7();
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let expires_at = Utc::now() + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(86400));
    let mut tx = pool.begin().await?;
    let info: TokenInfo = sqlx::query_as(
        "insert into enrollment_tokens (id, secret_hash, description, group_id, uses_left, requires_approval, expires_at, created_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning id, description, group_id, uses_left, requires_approval, expires_at, created_at, revoked_at",
    )
    .bind(id)
    .bind(hash_secret(&secret))
    .bind(&req.description)
    .bind(req.group_id)
    .bind(i32::try_from(uses).unwrap_or(1))
    .bind(req.requires_approval)
    .bind(expires_at)
    .bind(match actor {
        Actor::User { id, .. } => Some(*id),
        _ => None,
    })
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        actor,
        "enrollment_token.create",
        "enrollment_token",
        &id.to_string(),
        serde_json::json!({"uses": uses, "expires_at": expires_at, "group_id": req.group_id,
                           "requires_approval": req.requires_approval}),
    )
    .await?;
    tx.commit().await?;
    let token = format!("cofre1.{}.{}.{}", id.simple(), URL_SAFE_NO_PAD.encode(secret), ca.fingerprint());
    Ok(CreatedToken { info, token })
}

pub async fn list_tokens(pool: &PgPool) -> Result<Vec<TokenInfo>> {
    Ok(sqlx::query_as(
        "select id, description, group_id, uses_left, requires_approval, expires_at, created_at, revoked_at
         from enrollment_tokens order by id desc limit 1000",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn revoke_token(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    let n =
        sqlx::query("update enrollment_tokens set revoked_at = now() where id = $1 and revoked_at is null")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if n == 0 {
        return Err(Error::NotFound("enrollment token".into()));
    }
    audit::record(
        &mut tx,
        actor,
        "enrollment_token.revoke",
        "enrollment_token",
        &id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Splits a token into (id, secret). The fingerprint part is for the agent; the controller
/// checks it is its own so a token for another controller is refused clearly.
pub(crate) fn parse_token(token: &str, ca: &Ca) -> Result<(Uuid, Vec<u8>)> {
    let refuse = || Error::Unauthenticated("enrollment token not recognised".into());
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 4 || parts[0] != "cofre1" {
        return Err(Error::invalid(
            "malformed enrollment token: expected cofre1.<id>.<secret>.<fingerprint>",
        ));
    }
    let id = Uuid::try_parse(parts[1]).map_err(|_| refuse())?;
    let secret = URL_SAFE_NO_PAD.decode(parts[2]).map_err(|_| refuse())?;
    if !parts[3].eq_ignore_ascii_case(&ca.fingerprint()) {
        return Err(Error::Unauthenticated(
            "enrollment token belongs to another controller (CA fingerprint differs)".into(),
        ));
    }
    Ok((id, secret))
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
}

#[derive(Debug)]
pub struct Enrolled {
    pub machine_id: Uuid,
    pub certificate_pem: String,
    pub pending_approval: bool,
}

/// Consumes one use of the token and creates the machine with its first certificate.
pub async fn enroll(
    pool: &PgPool,
    ca: &Ca,
    lifetime: std::time::Duration,
    token: &str,
    csr_der: &[u8],
    inv: Inventory,
) -> Result<Enrolled> {
    let (token_id, secret) = parse_token(token, ca)?;
    let machine_id = Uuid::now_v7();
    // Sign first (cheap, no I/O): a bad CSR must not consume a use of the token.
    let issued =
        ca.issue_agent_cert(machine_id, csr_der, lifetime).map_err(|e| Error::invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let (group_id, requires_approval) = use_token(&mut tx, token_id, &secret).await?;
    let status = if requires_approval { "pending" } else { "active" };
    sqlx::query(
        "insert into machines (id, hostname, os, arch, agent_version, group_id, status, enrolled_with, approved_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, case when $7 = 'active' then now() end)",
    )
    .bind(machine_id)
    .bind(&inv.hostname)
    .bind(&inv.os)
    .bind(&inv.arch)
    .bind(&inv.agent_version)
    .bind(group_id)
    .bind(status)
    .bind(token_id)
    .execute(&mut *tx)
    .await?;
    crate::machines::insert_certificate(&mut tx, machine_id, &issued).await?;
    audit::record(
        &mut tx,
        &Actor::Machine(machine_id),
        "machine.enroll",
        "machine",
        &machine_id.to_string(),
        serde_json::json!({"hostname": inv.hostname, "token_id": token_id, "status": status,
                           "certificate_serial": issued.serial}),
    )
    .await?;
    events::notify(&mut tx, &Event::Provision).await?;
    tx.commit().await?;
    Ok(Enrolled { machine_id, certificate_pem: issued.pem, pending_approval: requires_approval })
}

/// Checks a token under a row lock and consumes one use of it (in the caller's transaction):
/// (its group, whether machines enrolled with it need approval).
async fn use_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    token_id: Uuid,
    secret: &[u8],
) -> Result<(Option<Uuid>, bool)> {
    let row: Option<(Vec<u8>, i32, DateTime<Utc>, Option<DateTime<Utc>>, Option<Uuid>, bool)> =
        sqlx::query_as(
            "select secret_hash, uses_left, expires_at, revoked_at, group_id, requires_approval
         from enrollment_tokens where id = $1 for update",
        )
        .bind(token_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((hash, uses_left, expires_at, revoked_at, group_id, requires_approval)) = row else {
        return Err(Error::Unauthenticated("enrollment token not recognised".into()));
    };
    if !constant_time_eq(&hash, &hash_secret(secret)) {
        return Err(Error::Unauthenticated("enrollment token not recognised".into()));
    }
    if revoked_at.is_some() {
        return Err(Error::Unauthenticated("enrollment token was revoked".into()));
    }
    if expires_at <= Utc::now() {
        return Err(Error::Unauthenticated(format!("enrollment token expired at {expires_at}")));
    }
    if uses_left <= 0 {
        return Err(Error::Unauthenticated("enrollment token has been used up".into()));
    }
    sqlx::query("update enrollment_tokens set uses_left = uses_left - 1 where id = $1")
        .bind(token_id)
        .execute(&mut **tx)
        .await?;
    Ok((group_id, requires_approval))
}

/// The machine a previous certificate was issued to, and its serial, when this CA signed it
/// (expired or not) and the CSR carries its key: the CSR's signature (checked when the new
/// certificate is signed) then proves that the caller holds the machine's key.
fn previous_machine(ca: &Ca, previous_pem: &str, csr_der: &[u8]) -> Result<(Uuid, String)> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let refuse = |why: &str| Error::Unauthenticated(format!("re-enrollment refused: {why}"));
    let der =
        crate::pki::pem_to_der(previous_pem).map_err(|_| refuse("the previous certificate is not PEM"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| refuse("the previous certificate is not a certificate"))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.cert_der)
        .map_err(|_| Error::Internal(anyhow::anyhow!("the CA certificate does not parse")))?;
    cert.verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| refuse("the previous certificate was not issued by this controller"))?;
    let machine = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .and_then(|cn| Uuid::try_parse(cn).ok())
        .ok_or_else(|| refuse("the previous certificate is not a machine's"))?;
    let (_, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|_| Error::invalid("csr_der must be a DER PKCS#10 request"))?;
    if csr.certification_request_info.subject_pki.raw != cert.public_key().raw {
        return Err(refuse("the request is not made with the previous certificate's key"));
    }
    Ok((machine, crate::pki::serial_hex(cert.raw_serial())))
}

/// Re-enrolls a machine whose certificate expired while it was away: a new token (one use of
/// it) plus its previous certificate and a CSR made with that certificate's key. The machine
/// keeps its id and its group — its plan, repositories, history and unsent results stay its
/// own — and gets a new certificate; a token made for a group serves only that group's
/// machines; a token that requires approval puts it back to pending until an
/// administrator approves it. A revoked or decommissioned machine, or a certificate that was
/// revoked, cannot come back this way.
pub async fn reenroll(
    pool: &PgPool,
    ca: &Ca,
    lifetime: std::time::Duration,
    token: &str,
    csr_der: &[u8],
    previous_pem: &str,
) -> Result<Enrolled> {
    let (token_id, secret) = parse_token(token, ca)?;
    let (machine_id, previous_serial) = previous_machine(ca, previous_pem, csr_der)?;
    let issued =
        ca.issue_agent_cert(machine_id, csr_der, lifetime).map_err(|e| Error::invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let (token_group, requires_approval) = use_token(&mut tx, token_id, &secret).await?;
    let machine: Option<(String, Option<Uuid>)> =
        sqlx::query_as("select status, group_id from machines where id = $1 for update")
            .bind(machine_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (status, machine_group) = match machine {
        Some((status, group)) if matches!(status.as_str(), "active" | "pending") => (Some(status), group),
        Some((other, _)) => {
            return Err(Error::Unauthenticated(format!(
                "re-enrollment refused: machine {machine_id} is {other}; enroll this agent as a new machine"
            )));
        }
        None => return Err(Error::Unauthenticated("re-enrollment refused: unknown machine".into())),
    };
    // A machine keeps its group. A token made for one group brings back only that group's
    // machines (a department's token does not revive another department's machine); a token
    // without a group, any machine.
    if let Some(g) = token_group
        && machine_group != Some(g)
    {
        return Err(Error::Unauthenticated(format!(
            "re-enrollment refused: this token enrolls machines into group {g}, and machine {machine_id} is {}; \
             use a token for its group or one without a group",
            machine_group.map_or_else(|| "in no group".to_string(), |m| format!("in group {m}"))
        )));
    }
    let recorded: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("select revoked_at from certificates where serial = $1 and machine_id = $2")
            .bind(&previous_serial)
            .bind(machine_id)
            .fetch_optional(&mut *tx)
            .await?;
    match recorded {
        Some(None) => {}
        Some(Some(_)) => {
            return Err(Error::Unauthenticated(
                "re-enrollment refused: the previous certificate was revoked".into(),
            ));
        }
        None => {
            return Err(Error::Unauthenticated(
                "re-enrollment refused: the previous certificate is not one this machine was issued".into(),
            ));
        }
    }
    let status = if requires_approval { "pending" } else { status.as_deref().unwrap_or("active") };
    sqlx::query("update machines set status = $2 where id = $1")
        .bind(machine_id)
        .bind(status)
        .execute(&mut *tx)
        .await?;
    crate::machines::insert_certificate(&mut tx, machine_id, &issued).await?;
    audit::record(
        &mut tx,
        &Actor::Machine(machine_id),
        "machine.reenroll",
        "machine",
        &machine_id.to_string(),
        serde_json::json!({"token_id": token_id, "status": status, "previous_serial": previous_serial,
                           "certificate_serial": issued.serial}),
    )
    .await?;
    events::notify(&mut tx, &Event::Machine { id: machine_id }).await?;
    tx.commit().await?;
    Ok(Enrolled { machine_id, certificate_pem: issued.pem, pending_approval: status == "pending" })
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod reenroll_tests {
    //! Re-enrollment against a real PostgreSQL (`DATABASE_URL`): who may come back as a machine.

    use std::time::Duration;

    use super::*;
    use crate::tests::{inv, state};

    fn csr_for(key: &rcgen::KeyPair) -> Vec<u8> {
        rcgen::CertificateParams::default().serialize_request(key).unwrap().der().to_vec()
    }

    async fn token(st: &crate::state::AppState, requires_approval: bool) -> String {
        let req = NewToken { uses: Some(1), requires_approval, ..Default::default() };
        create_token(&st.pool, &Actor::System, &st.ca, &st.settings.enrollment, req).await.unwrap().token
    }

    async fn uses_left(pool: &PgPool, token: &str) -> i32 {
        let id = Uuid::try_parse(token.split('.').nth(1).unwrap()).unwrap();
        sqlx::query_scalar("select uses_left from enrollment_tokens where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[sqlx::test(migrator = "crate::db::MIGRATOR")]
    async fn a_machine_comes_back_as_itself_only_with_its_key_its_ca_and_while_not_revoked(pool: PgPool) {
        let st = state(pool).await;
        let life = Duration::from_secs(60);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let first =
            enroll(&st.pool, &st.ca, life, &token(&st, false).await, &csr_for(&key), inv()).await.unwrap();

        // The certificate without its key: refused, and the token is not used up.
        let t = token(&st, false).await;
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err =
            reenroll(&st.pool, &st.ca, life, &t, &csr_for(&other), &first.certificate_pem).await.unwrap_err();
        assert!(err.to_string().contains("previous certificate's key"), "{err}");
        assert_eq!(uses_left(&st.pool, &t).await, 1);

        // With its key: the same machine, a new certificate, one use of the token.
        let again =
            reenroll(&st.pool, &st.ca, life, &t, &csr_for(&key), &first.certificate_pem).await.unwrap();
        assert_eq!(again.machine_id, first.machine_id);
        assert_ne!(again.certificate_pem, first.certificate_pem);
        assert!(!again.pending_approval);
        assert_eq!(uses_left(&st.pool, &t).await, 0);
        let machines: i64 =
            sqlx::query_scalar("select count(*) from machines").fetch_one(&st.pool).await.unwrap();
        assert_eq!(machines, 1);

        // A certificate of another CA naming the machine: refused.
        let foreign_ca = Ca::load(&crate::pki::generate_ca().unwrap()).unwrap();
        let foreign = foreign_ca.issue_agent_cert(first.machine_id, &csr_for(&key), life).unwrap();
        let err = reenroll(&st.pool, &st.ca, life, &token(&st, false).await, &csr_for(&key), &foreign.pem)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not issued by this controller"), "{err}");

        // A token made for a group brings back only that group's machines (not used up when
        // refused); the machine keeps its group.
        let group =
            crate::groups::create(&st.pool, &Actor::System, crate::groups::NewGroup { name: "saude".into() })
                .await
                .unwrap();
        let grouped = NewToken { uses: Some(2), group_id: Some(group.id), ..Default::default() };
        let t = create_token(&st.pool, &Actor::System, &st.ca, &st.settings.enrollment, grouped)
            .await
            .unwrap()
            .token;
        let err =
            reenroll(&st.pool, &st.ca, life, &t, &csr_for(&key), &again.certificate_pem).await.unwrap_err();
        assert!(err.to_string().contains("in no group"), "{err}");
        assert_eq!(uses_left(&st.pool, &t).await, 2);
        sqlx::query("update machines set group_id = $1 where id = $2")
            .bind(group.id)
            .bind(first.machine_id)
            .execute(&st.pool)
            .await
            .unwrap();
        let again =
            reenroll(&st.pool, &st.ca, life, &t, &csr_for(&key), &again.certificate_pem).await.unwrap();
        assert_eq!(again.machine_id, first.machine_id);

        // A token that requires approval puts it back to pending.
        let pending =
            reenroll(&st.pool, &st.ca, life, &token(&st, true).await, &csr_for(&key), &again.certificate_pem)
                .await
                .unwrap();
        assert!(pending.pending_approval);

        // A revoked machine cannot come back this way.
        crate::machines::revoke(&st.pool, &Actor::System, first.machine_id).await.unwrap();
        let err = reenroll(
            &st.pool,
            &st.ca,
            life,
            &token(&st, false).await,
            &csr_for(&key),
            &pending.certificate_pem,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
    }
}
