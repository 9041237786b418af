//! Quotas: which limits apply to an identity (its machine grant, its group, its user rule), and
//! the atomic reservation of upload bytes against them, so concurrent uploads cannot jointly
//! exceed a limit. Maintenance is exempt: prune must always be able to run to free space.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::access::{AccessList, Identity, RepoPattern, UserPolicies};
use crate::error::StoreError;
use crate::inventory::Catalog;
use crate::layout::RepoPath;

/// One limit: at most `quota` bytes stored (plus in flight) in the repositories of `scope`.
#[derive(Clone, Debug)]
pub struct Limit {
    pub what: String,
    pub quota: u64,
    pub scope: Scope,
}

#[derive(Clone, Debug)]
pub enum Scope {
    Repos(BTreeSet<RepoPath>),
    Patterns(Vec<RepoPattern>),
}

impl Scope {
    fn contains(&self, repo: &RepoPath) -> bool {
        match self {
            Scope::Repos(set) => set.contains(repo),
            Scope::Patterns(p) => p.iter().any(|p| p.matches(repo)),
        }
    }
}

fn repos_of<'a>(paths: impl Iterator<Item = &'a String>) -> BTreeSet<RepoPath> {
    paths.filter_map(|p| RepoPath::parse(p.trim_matches('/')).ok()).collect()
}

/// The limits an upload by `identity` must respect (none for maintenance).
pub fn limits_for(identity: &Identity, acl: &AccessList, users: &UserPolicies) -> Vec<Limit> {
    let mut limits = Vec::new();
    match identity {
        Identity::Maintenance => {}
        Identity::Machine(id) => {
            let Some(grant) = acl.machine(*id) else { return limits };
            if let Some(quota) = grant.quota_bytes {
                let scope = Scope::Repos(repos_of(grant.repositories.iter()));
                limits.push(Limit { what: "machine quota".into(), quota, scope });
            }
            if let Some(group) = grant.group_id
                && let Some(quota) = acl.group_quota(group)
            {
                // The group's usage counts each repository once, however many machines share it.
                let members = acl.machines.iter().filter(|m| m.group_id == Some(group));
                let scope = Scope::Repos(repos_of(members.flat_map(|m| m.repositories.iter())));
                limits.push(Limit { what: format!("group {group} quota"), quota, scope });
            }
        }
        Identity::User(name) => {
            let policy = users.policy(name);
            if let Some(quota) = policy.quota_bytes {
                limits.push(Limit {
                    what: "user quota".into(),
                    quota,
                    scope: Scope::Patterns(policy.patterns),
                });
            }
        }
    }
    limits
}

/// Bytes counted as in flight for `repo` until dropped (published bytes are counted as stored
/// by then, so for a moment they count twice: conservative, never under).
pub struct Reservation {
    catalog: Arc<Catalog>,
    repo: RepoPath,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(s) = self.catalog.lock().get_mut(&self.repo) {
            s.in_flight = s.in_flight.saturating_sub(self.bytes);
        }
    }
}

/// Reserves `bytes` for an upload into `repo` if every limit stays respected, atomically with
/// respect to other reservations. Otherwise: 507.
pub fn reserve(
    catalog: &Arc<Catalog>,
    repo: &RepoPath,
    bytes: u64,
    limits: &[Limit],
) -> Result<Reservation, StoreError> {
    let mut repos = catalog.lock();
    for l in limits {
        let used: u64 =
            repos.iter().filter(|(r, _)| l.scope.contains(r)).map(|(_, s)| s.stored() + s.in_flight).sum();
        if used.saturating_add(bytes) > l.quota {
            return Err(StoreError::QuotaExceeded(format!(
                "{}: {used} of {} bytes used, {bytes} more requested",
                l.what, l.quota
            )));
        }
    }
    repos.entry(repo.clone()).or_default().in_flight += bytes;
    Ok(Reservation { catalog: Arc::clone(catalog), repo: repo.clone(), bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::MachineGrant;
    use crate::layout::{FileKind, Layout, ObjectType};
    use uuid::Uuid;

    #[test]
    fn machine_and_group_limits_with_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::scan(&Layout::new(dir.path())).unwrap());
        let (m1, m2, g) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let grant = |m, r: &str, q| MachineGrant {
            machine_id: m,
            group_id: Some(g),
            repositories: vec![r.into()],
            quota_bytes: q,
        };
        let acl = AccessList {
            version: 1,
            machines: vec![grant(m1, "a", Some(100)), grant(m2, "b", None)],
            groups: vec![crate::access::GroupQuota { group_id: g, quota_bytes: Some(150) }],
        };
        let users = UserPolicies::default();
        let (a, b) = (RepoPath::parse("a").unwrap(), RepoPath::parse("b").unwrap());
        let l1 = limits_for(&Identity::Machine(m1), &acl, &users);
        let l2 = limits_for(&Identity::Machine(m2), &acl, &users);
        assert_eq!((l1.len(), l2.len()), (2, 1));

        let r1 = reserve(&catalog, &a, 60, &l1).unwrap();
        assert!(reserve(&catalog, &a, 41, &l1).is_err(), "machine quota counts in-flight bytes");
        catalog.record_added(&a, FileKind::Object(ObjectType::Data), "x", 60, std::time::SystemTime::now());
        drop(r1);
        assert!(reserve(&catalog, &a, 40, &l1).is_ok());
        let e = reserve(&catalog, &b, 91, &l2).err().unwrap();
        assert!(e.to_string().contains("group"), "{e}");
        assert!(reserve(&catalog, &b, 90, &l2).is_ok());
        assert!(limits_for(&Identity::Maintenance, &acl, &users).is_empty());
    }
}
