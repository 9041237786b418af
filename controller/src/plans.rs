//! A machine's plan: the complete set of policies and repository secrets it needs, computed
//! from the database. Its version is a digest of its content, so "is the agent current?" is a
//! comparison, and recomputing after any event sends nothing when nothing changed.

use cofre_proto::agent::v1 as pb;
use prost::Message;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::repositories;
use crate::seal::MasterKey;

/// `cofre_ca_pem` is trusted, besides the system roots, for repositories on a cofre-store that
/// have no CA of their own: the store may serve with the certificate Cofre's CA issued it.
pub async fn compute(
    pool: &PgPool,
    master: &MasterKey,
    cofre_ca_pem: &str,
    machine: Uuid,
) -> Result<pb::Plan> {
    let rows: Vec<(Uuid, String, Uuid, Vec<String>, Vec<String>, i64)> = sqlx::query_as(
        "select distinct p.id, p.name, p.repository_id, p.paths, p.excludes, p.interval_seconds
         from policies p
         join policy_assignments a on a.policy_id = p.id
         join machines m on m.id = $1
         where m.status = 'active' and (a.machine_id = m.id or a.group_id = m.group_id)
         order by p.id",
    )
    .bind(machine)
    .fetch_all(pool)
    .await?;
    let mut plan = pb::Plan::default();
    for (id, name, repository, paths, excludes, interval) in rows {
        // A policy whose repository is not initialised yet is left out; the provisioner
        // notifies the machine when it is ready.
        let Some(access) = repositories::access_for(pool, master, repository, machine).await? else {
            continue;
        };
        let rid = access.id.to_string();
        if !plan.repositories.iter().any(|r| r.id == rid) {
            plan.repositories.push(pb::PlanRepository {
                id: rid.clone(),
                url: access.url.clone(),
                // A cofre-store knows the agent by its certificate: no shared credential is sent.
                username: if access.on_store {
                    String::new()
                } else {
                    access.username.clone().unwrap_or_default()
                },
                password: match &access.password {
                    Some(p) if !access.on_store => p.expose_secret().to_string(),
                    _ => String::new(),
                },
                repository_password: access.repository_password.expose_secret().to_string(),
                restic_id: access.restic_id.clone().unwrap_or_default(),
                ca_certificate_pem: match &access.ca_certificate_pem {
                    Some(pem) => pem.clone(),
                    None if access.on_store => cofre_ca_pem.to_string(),
                    None => String::new(),
                },
                allow_insecure_http: access.allow_insecure_http,
                client_certificate: access.on_store,
            });
        }
        plan.policies.push(pb::PlanPolicy {
            id: id.to_string(),
            name,
            repository_id: rid,
            paths,
            excludes,
            interval_seconds: u64::try_from(interval).unwrap_or(0),
        });
    }
    plan.repositories.sort_by(|a, b| a.id.cmp(&b.id));
    plan.version = version_of(&plan);
    Ok(plan)
}

/// A digest of the plan's content (with version 0), never 0.
pub fn version_of(plan: &pb::Plan) -> u64 {
    let mut p = plan.clone();
    p.version = 0;
    let d = Sha256::digest(p.encode_to_vec());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 1).max(1)
}
