//! Quotas: which limits apply to an identity (its machine grant, its group, its user rule), and
//! the atomic reservation of upload bytes against them, so concurrent uploads cannot jointly
//! exceed a limit. A reservation grows while a body of unknown length streams in, before its
//! bytes reach the disk. Maintenance is exempt: prune must always be able to run to free space.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::access::{AccessList, Identity, RepoPattern, UserPolicies};
use crate::error::StoreError;
use crate::inventory::{Catalog, RepoStats};
use crate::layout::RepoPath;

/// A growing reservation takes at least this much more at a time (fewer catalog scans for an
/// upload arriving in small chunks), unless only less is left under a limit.
const GROWTH_STEP: u64 = 1 << 20;

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

impl Reservation {
    /// Grows the reservation to at least `total` bytes if every limit stays respected (counting
    /// what is stored and every other reservation in the limits' scopes); otherwise 507 and the
    /// reservation is unchanged.
    pub fn grow_to(&mut self, total: u64, limits: &[Limit]) -> Result<(), StoreError> {
        let Some(needed) = total.checked_sub(self.bytes).filter(|n| *n > 0) else { return Ok(()) };
        let mut repos = self.catalog.lock();
        let step = needed.max(GROWTH_STEP);
        let extra = if fits(&repos, step, limits).is_ok() {
            step
        } else {
            fits(&repos, needed, limits)?;
            needed
        };
        repos.entry(self.repo.clone()).or_default().in_flight += extra;
        self.bytes += extra;
        Ok(())
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
    fits(&repos, bytes, limits)?;
    repos.entry(repo.clone()).or_default().in_flight += bytes;
    Ok(Reservation { catalog: Arc::clone(catalog), repo: repo.clone(), bytes })
}

/// Whether `bytes` more fit under every limit (stored plus in flight, in each limit's scope).
fn fits(repos: &BTreeMap<RepoPath, RepoStats>, bytes: u64, limits: &[Limit]) -> Result<(), StoreError> {
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
    Ok(())
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
            revoked_serials: Vec::new(),
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

    #[test]
    fn reservations_grow_up_to_the_limit_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::scan(&Layout::new(dir.path())).unwrap());
        let repo = RepoPath::parse("r").unwrap();
        let quota = 3 * GROWTH_STEP + 10;
        let limits = vec![Limit {
            what: "user quota".into(),
            quota,
            scope: Scope::Repos(BTreeSet::from([repo.clone()])),
        }];
        let other = reserve(&catalog, &repo, 10, &limits).unwrap();
        let mut r = reserve(&catalog, &repo, 0, &limits).unwrap();
        r.grow_to(100, &limits).unwrap();
        assert_eq!(r.bytes, GROWTH_STEP, "grows a step at a time");
        r.grow_to(3 * GROWTH_STEP, &limits).unwrap();
        assert_eq!(r.bytes, 3 * GROWTH_STEP, "exactly what is left under the limit");
        let e = r.grow_to(3 * GROWTH_STEP + 1, &limits).unwrap_err();
        assert_eq!(e.status().as_u16(), 507, "the other upload's 10 bytes count");
        assert_eq!(r.bytes, 3 * GROWTH_STEP);
        drop(other);
        r.grow_to(3 * GROWTH_STEP + 1, &limits).unwrap();
        drop(r);
        assert_eq!(catalog.lock()[&repo].in_flight, 0, "everything released");
    }
}
