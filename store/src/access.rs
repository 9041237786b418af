//! Identities (machine, maintenance, htpasswd user), the access list the controller pushes, and
//! the authorisation rules: who may read, append, delete in which repository.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::UserRule;
use crate::error::StoreError;
use crate::layout::{FileKind, ObjectType, RepoPath};

/// Who is calling. Machines and the maintenance identity come from client certificates signed
/// by the Cofre CA; users from htpasswd.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Machine(Uuid),
    Maintenance,
    User(String),
}

impl fmt::Display for Identity {
    /// Also the owner tag recorded on lock files (`machine:<uuid>`, `maintenance`, `user:<name>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Machine(id) => write!(f, "machine:{id}"),
            Identity::Maintenance => f.write_str("maintenance"),
            Identity::User(name) => write!(f, "user:{name}"),
        }
    }
}

/// The access list the controller pushes (persisted as `state_dir/access-list.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AccessList {
    pub version: u64,
    #[serde(default)]
    pub machines: Vec<MachineGrant>,
    #[serde(default)]
    pub groups: Vec<GroupQuota>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineGrant {
    pub machine_id: Uuid,
    #[serde(default)]
    pub group_id: Option<Uuid>,
    /// Repository paths relative to the data dir, no leading or trailing slash.
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// Serials (lowercase hex) of its certificates revoked before they expire: refused.
    #[serde(default)]
    pub revoked_serials: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupQuota {
    pub group_id: Uuid,
    #[serde(default)]
    pub quota_bytes: Option<u64>,
}

impl AccessList {
    pub fn machine(&self, id: Uuid) -> Option<&MachineGrant> {
        self.machines.iter().find(|m| m.machine_id == id)
    }

    pub fn group_quota(&self, id: Uuid) -> Option<u64> {
        self.groups.iter().find(|g| g.group_id == id).and_then(|g| g.quota_bytes)
    }
}

impl MachineGrant {
    /// Whether the certificate with this serial was revoked (superseded by a renewal, stolen).
    pub fn revoked(&self, serial: &str) -> bool {
        self.revoked_serials.iter().any(|s| s.eq_ignore_ascii_case(serial))
    }

    /// Grants are compared as normalised repository paths (tolerating stray slashes).
    pub fn grants(&self, repo: &RepoPath) -> bool {
        self.repositories.iter().any(|r| r.trim_matches('/') == repo.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Read and add; never delete or overwrite (except one's own locks).
    AppendOnly,
    /// GET, HEAD and lists only (the auditor).
    ReadOnly,
    /// Everything, still without overwriting.
    Full,
}

/// One entry of a user rule's `repositories`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoPattern {
    All,
    /// `prefix/*`: every repository strictly below the prefix.
    Below(RepoPath),
    Exact(RepoPath),
    /// rest-server's `--private-repos`: the repository named like the user and those below it.
    Private(String),
}

impl RepoPattern {
    pub fn parse(s: &str) -> Result<RepoPattern, String> {
        if s == "*" {
            return Ok(RepoPattern::All);
        }
        if let Some(prefix) = s.strip_suffix("/*") {
            return RepoPath::parse(prefix).map(RepoPattern::Below);
        }
        RepoPath::parse(s).map(RepoPattern::Exact)
    }

    pub fn matches(&self, repo: &RepoPath) -> bool {
        match self {
            RepoPattern::All => true,
            RepoPattern::Below(p) => repo != p && repo.is_within(p),
            RepoPattern::Exact(p) => repo == p,
            RepoPattern::Private(user) => repo.first_segment() == user,
        }
    }
}

/// A user's compiled rule.
#[derive(Clone, Debug)]
pub struct UserPolicy {
    pub mode: Mode,
    pub patterns: Vec<RepoPattern>,
    pub quota_bytes: Option<u64>,
}

/// Users' rules by name, compiled from the configuration.
#[derive(Clone, Debug, Default)]
pub struct UserPolicies(HashMap<String, UserPolicy>);

impl UserPolicies {
    /// `rules` were validated by `Settings::load`; a pattern that still fails to parse is dropped.
    pub fn new(rules: &[UserRule]) -> UserPolicies {
        let map = rules
            .iter()
            .map(|r| {
                let patterns = r.repositories.iter().filter_map(|p| RepoPattern::parse(p).ok()).collect();
                (r.name.clone(), UserPolicy { mode: r.mode, patterns, quota_bytes: r.quota_bytes })
            })
            .collect();
        UserPolicies(map)
    }

    /// The rule of `user`, or the private-repos default (append-only, own repositories).
    pub fn policy(&self, user: &str) -> UserPolicy {
        self.0.get(user).cloned().unwrap_or_else(|| UserPolicy {
            mode: Mode::AppendOnly,
            patterns: vec![RepoPattern::Private(user.to_string())],
            quota_bytes: None,
        })
    }
}

/// What a request wants to do with a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    CreateRepo,
    /// GET, HEAD, list.
    Read,
    /// POST of a new file (never an overwrite: that is refused for everybody).
    Write(FileKind),
    Delete(FileKind),
}

/// A positive answer; lock deletions by append-only identities need the lock's owner to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Allowed,
    IfOwnLock,
}

/// Decides on one request against the CURRENT access list. Repositories outside an identity's
/// reach are 404 (their existence is not revealed); a machine absent from the list is 403.
pub fn authorize(
    identity: &Identity,
    acl: &AccessList,
    users: &UserPolicies,
    repo: &RepoPath,
    action: Action,
) -> Result<Permission, StoreError> {
    let mode = match identity {
        Identity::Maintenance => Mode::Full,
        Identity::Machine(id) => {
            let grant =
                acl.machine(*id).ok_or(StoreError::Forbidden("this machine is not in the access list"))?;
            if !grant.grants(repo) {
                return Err(StoreError::NotFound);
            }
            Mode::AppendOnly
        }
        Identity::User(name) => {
            let policy = users.policy(name);
            if !policy.patterns.iter().any(|p| p.matches(repo)) {
                return Err(StoreError::NotFound);
            }
            policy.mode
        }
    };
    match (mode, action) {
        (Mode::Full, _) | (_, Action::Read) => Ok(Permission::Allowed),
        (Mode::ReadOnly, _) => Err(StoreError::Forbidden("read-only access")),
        (Mode::AppendOnly, Action::CreateRepo | Action::Write(_)) => Ok(Permission::Allowed),
        (Mode::AppendOnly, Action::Delete(FileKind::Object(ObjectType::Locks))) => Ok(Permission::IfOwnLock),
        (Mode::AppendOnly, Action::Delete(_)) => Err(StoreError::Forbidden("append-only access")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserRule;

    fn repo(s: &str) -> RepoPath {
        RepoPath::parse(s).unwrap()
    }

    fn status(r: Result<Permission, StoreError>) -> Result<Permission, u16> {
        r.map_err(|e| e.status().as_u16())
    }

    #[test]
    fn machines_append_to_their_own_repositories_only() {
        let m = Uuid::new_v4();
        let acl = AccessList {
            version: 1,
            machines: vec![MachineGrant {
                machine_id: m,
                repositories: vec!["city/pc".into()],
                ..Default::default()
            }],
            groups: vec![],
        };
        let u = UserPolicies::default();
        let id = Identity::Machine(m);
        let ok = |a| status(authorize(&id, &acl, &u, &repo("city/pc"), a));
        assert_eq!(ok(Action::Read), Ok(Permission::Allowed));
        assert_eq!(ok(Action::CreateRepo), Ok(Permission::Allowed));
        assert_eq!(ok(Action::Write(FileKind::Config)), Ok(Permission::Allowed));
        assert_eq!(ok(Action::Delete(FileKind::Config)), Err(403));
        assert_eq!(ok(Action::Delete(FileKind::Object(ObjectType::Snapshots))), Err(403));
        assert_eq!(ok(Action::Delete(FileKind::Object(ObjectType::Locks))), Ok(Permission::IfOwnLock));
        assert_eq!(status(authorize(&id, &acl, &u, &repo("city/other"), Action::Read)), Err(404));
        let stranger = Identity::Machine(Uuid::new_v4());
        assert_eq!(status(authorize(&stranger, &acl, &u, &repo("city/pc"), Action::Read)), Err(403));
        let maint = Identity::Maintenance;
        let del = Action::Delete(FileKind::Object(ObjectType::Data));
        assert_eq!(status(authorize(&maint, &acl, &u, &repo("x"), del)), Ok(Permission::Allowed));
    }

    #[test]
    fn user_rules_and_private_repos() {
        let rule = |name: &str, mode, repos: &[&str]| UserRule {
            name: name.into(),
            mode,
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            quota_bytes: None,
        };
        let u = UserPolicies::new(&[
            rule("audit", Mode::ReadOnly, &["*"]),
            rule("ops", Mode::Full, &["legacy/*", "city/pc-01"]),
        ]);
        let acl = AccessList::default();
        let check =
            |who: &str, r: &str, a| status(authorize(&Identity::User(who.into()), &acl, &u, &repo(r), a));
        let del = Action::Delete(FileKind::Object(ObjectType::Data));
        assert_eq!(check("audit", "any/where", Action::Read), Ok(Permission::Allowed));
        assert_eq!(check("audit", "any/where", Action::CreateRepo), Err(403));
        assert_eq!(check("ops", "legacy/a/b", del), Ok(Permission::Allowed));
        assert_eq!(check("ops", "legacy", Action::Read), Err(404));
        assert_eq!(check("ops", "city/pc-01", del), Ok(Permission::Allowed));
        assert_eq!(check("ops", "city/pc-02", Action::Read), Err(404));
        // No rule: rest-server's private repos, append-only.
        assert_eq!(check("alice", "alice", Action::CreateRepo), Ok(Permission::Allowed));
        assert_eq!(check("alice", "alice/laptop", Action::Write(FileKind::Config)), Ok(Permission::Allowed));
        assert_eq!(check("alice", "alice/laptop", del), Err(403));
        assert_eq!(check("alice", "alicex", Action::Read), Err(404));
        assert_eq!(check("alice", "bob", Action::Read), Err(404));
    }

    #[test]
    fn access_list_json_is_stable() {
        let json = r#"{"version":3,"machines":[{"machine_id":"6f1c1d2e-8d5e-4c39-9a57-2f4f3c1b9e10",
            "group_id":null,"repositories":["a/b"],"quota_bytes":100}],"groups":[]}"#;
        let acl: AccessList = serde_json::from_str(json).unwrap();
        assert_eq!(acl.version, 3);
        assert_eq!(acl.machines[0].quota_bytes, Some(100));
        let back: AccessList = serde_json::from_str(&serde_json::to_string(&acl).unwrap()).unwrap();
        assert_eq!(back, acl);
    }
}
