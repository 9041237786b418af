//! Who created each lock file: an xattr (`user.cofre.owner`) on the lock itself, set before it
//! is published, with an in-memory fallback for file systems without user xattrs. Append-only
//! identities may delete only the locks they created; a lock without an owner is nobody's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const XATTR: &str = "user.cofre.owner";

#[derive(Default)]
pub struct LockOwners {
    fallback: Mutex<HashMap<PathBuf, String>>,
}

impl LockOwners {
    /// Records `owner` for the lock being written at `tmp`, to be published as `final_path`.
    /// Blocking (xattr syscalls).
    pub fn record(&self, tmp: &Path, final_path: &Path, owner: &str) {
        if let Err(e) = xattr::set(tmp, XATTR, owner.as_bytes()) {
            tracing::debug!(error = %e, "no user xattrs here; lock owner kept in memory");
            self.map().insert(final_path.to_path_buf(), owner.to_string());
        }
    }

    /// The recorded owner of a published lock. Blocking.
    pub fn owner(&self, path: &Path) -> Option<String> {
        if let Ok(Some(v)) = xattr::get(path, XATTR) {
            return String::from_utf8(v).ok();
        }
        self.map().get(path).cloned()
    }

    /// Forgets a lock that was deleted or never published.
    pub fn forget(&self, path: &Path) {
        self.map().remove(path);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, String>> {
        self.fallback.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_survives_publication_by_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, fin) = (dir.path().join(".x.tmp"), dir.path().join("x"));
        std::fs::write(&tmp, b"lock").unwrap();
        let owners = LockOwners::default();
        owners.record(&tmp, &fin, "machine:1");
        std::fs::hard_link(&tmp, &fin).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(owners.owner(&fin).as_deref(), Some("machine:1"));
        std::fs::write(dir.path().join("y"), b"lock").unwrap();
        assert_eq!(owners.owner(&dir.path().join("y")), None);
    }
}
