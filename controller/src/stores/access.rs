//! A store's access list: which active machine may use which repository paths on it, with the
//! machines' and groups' storage quotas. Like a plan, its version is a digest of its content.

use std::collections::{BTreeMap, BTreeSet};

use cofre_proto::store::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;

/// The repository path below the store's root for a repository URL under `store_url`.
pub fn path_below(store_url: &str, repository_url: &str) -> Option<String> {
    let rest = repository_url.strip_prefix(store_url)?;
    let path = rest.trim_matches('/');
    (!path.is_empty()).then(|| path.to_string())
}

pub async fn compute(pool: &PgPool, store_url: &str) -> Result<pb::AccessList> {
    // Every repository an active machine may use (the `machine_restic_repositories` view).
    let rows: Vec<(Uuid, Option<Uuid>, Option<i64>, String)> = sqlx::query_as(
        "select m.id, m.group_id, m.storage_quota_bytes, rr.url
         from machine_restic_repositories mrr
         join machines m on m.id = mrr.machine_id
         join restic_repositories rr on rr.id = mrr.restic_repository_id
         where m.status = 'active' and starts_with(rr.url, $1)",
    )
    .bind(store_url)
    .fetch_all(pool)
    .await?;
    let mut machines: BTreeMap<Uuid, pb::MachineGrant> = BTreeMap::new();
    let mut groups: BTreeSet<Uuid> = BTreeSet::new();
    for (machine, group, quota, url) in rows {
        let Some(path) = path_below(store_url, &url) else { continue };
        let grant = machines.entry(machine).or_insert_with(|| pb::MachineGrant {
            machine_id: machine.to_string(),
            group_id: group.map(|g| g.to_string()).unwrap_or_default(),
            repositories: Vec::new(),
            quota_bytes: quota.and_then(|q| u64::try_from(q).ok()),
            revoked_serials: Vec::new(),
        });
        grant.repositories.push(path);
        groups.extend(group);
    }
    // Certificates revoked before they expire (superseded by a renewal, or stolen): still valid
    // signatures, so the store must be told.
    let ids: Vec<Uuid> = machines.keys().copied().collect();
    let revoked: Vec<(Uuid, String)> = sqlx::query_as(
        "select machine_id, serial from certificates
         where machine_id = any($1) and revoked_at is not null and not_after > now() order by serial",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for (machine, serial) in revoked {
        if let Some(g) = machines.get_mut(&machine) {
            g.revoked_serials.push(serial);
        }
    }
    let group_ids: Vec<Uuid> = groups.into_iter().collect();
    let quotas: Vec<(Uuid, Option<i64>)> =
        sqlx::query_as("select id, storage_quota_bytes from groups where id = any($1) order by id")
            .bind(&group_ids)
            .fetch_all(pool)
            .await?;
    let mut list = pb::AccessList {
        version: 0,
        machines: machines
            .into_values()
            .map(|mut g| {
                g.repositories.sort();
                g.repositories.dedup();
                g
            })
            .collect(),
        groups: quotas
            .into_iter()
            .map(|(id, q)| pb::GroupQuota {
                group_id: id.to_string(),
                quota_bytes: q.and_then(|q| u64::try_from(q).ok()),
            })
            .collect(),
    };
    list.version = version_of(&list);
    Ok(list)
}

/// A digest of the list's content (with version 0), never 0.
pub fn version_of(list: &pb::AccessList) -> u64 {
    let mut l = list.clone();
    l.version = 0;
    let d = Sha256::digest(l.encode_to_vec());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 1).max(1)
}

#[cfg(test)]
mod tests {
    use super::path_below;

    #[test]
    fn repository_paths_are_taken_below_the_store_url() {
        let s = "https://store.example:8443/";
        assert_eq!(path_below(s, "https://store.example:8443/abc").as_deref(), Some("abc"));
        assert_eq!(path_below(s, "https://store.example:8443/city/pc-1/").as_deref(), Some("city/pc-1"));
        assert_eq!(path_below(s, "https://store.example:8443/"), None);
        assert_eq!(path_below(s, "https://store.example:9443/abc"), None);
        assert_eq!(path_below("https://h/cofre/", "https://h/cofrex/abc"), None);
    }
}
