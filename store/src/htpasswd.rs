//! htpasswd users (bcrypt as `htpasswd -B` writes it, and `{SHA}`), re-read when the file
//! changes, with a cache of verified passwords so bcrypt does not run on each of restic's
//! many requests. Passwords are never logged.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use sha1::Digest as _;
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;

/// Verified (user, password) pairs kept at most; the cache is simply emptied when full.
const CACHE_LIMIT: usize = 4096;

pub struct Htpasswd {
    path: Option<PathBuf>,
    state: Mutex<Loaded>,
    /// Random per process: cache entries are keyed digests, useless outside this process.
    key: [u8; 32],
    /// bcrypt is deliberately slow: at most this many run at once, the rest of the runtime goes on.
    bcrypt_slots: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Loaded {
    stamp: Option<Stamp>,
    users: HashMap<String, PwHash>,
    verified: HashSet<[u8; 32]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

#[derive(Clone)]
enum PwHash {
    Bcrypt(String),
    Sha1([u8; 20]),
}

impl Htpasswd {
    /// Reads `path` (if any). A configured file that cannot be read at start is an error; later
    /// read failures keep the last good content.
    pub fn load(path: Option<&Path>) -> Result<Htpasswd, StoreError> {
        let h = Htpasswd {
            path: path.map(Path::to_path_buf),
            state: Mutex::new(Loaded::default()),
            key: rand::random(),
            bcrypt_slots: tokio::sync::Semaphore::new(2),
        };
        if let Some(p) = path {
            let stamp = stamp(p).map_err(|e| StoreError::io(format!("htpasswd_file {}", p.display()), e))?;
            let text = std::fs::read_to_string(p)
                .map_err(|e| StoreError::io(format!("htpasswd_file {}", p.display()), e))?;
            let mut st = h.state.lock().unwrap_or_else(|e| e.into_inner());
            st.users = parse(&text);
            st.stamp = Some(stamp);
        }
        Ok(h)
    }

    /// True if `password` is `user`'s. Wrong or unknown → false (the caller answers 401).
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let (hash, digest) = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(hash) = st.users.get(user) else { return false };
            let digest = self.digest(user, password, hash);
            if st.verified.contains(&digest) {
                return true;
            }
            (hash.clone(), digest)
        };
        let ok = match hash {
            PwHash::Sha1(expected) => sha1::Sha1::digest(password.as_bytes()).as_slice() == expected,
            PwHash::Bcrypt(hash) => {
                let Ok(_permit) = self.bcrypt_slots.acquire().await else { return false };
                let password = password.to_string();
                tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false)
            }
        };
        if ok {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.verified.len() >= CACHE_LIMIT {
                st.verified.clear();
            }
            st.verified.insert(digest);
        }
        ok
    }

    /// Re-reads the file when its mtime, size or inode changed (editors replace files).
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let Ok(now) = stamp(path) else {
            // Keep serving with the last good content; the file may be mid-replacement.
            return;
        };
        if self.state.lock().unwrap_or_else(|e| e.into_inner()).stamp == Some(now) {
            return;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let users = parse(&text);
                tracing::info!(file = %path.display(), users = users.len(), "htpasswd file re-read");
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.users = users;
                st.verified.clear();
                st.stamp = Some(now);
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot re-read the htpasswd file"),
        }
    }

    fn digest(&self, user: &str, password: &str, hash: &PwHash) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        for part in [user.as_bytes(), password.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        // The stored hash too, so a changed password never matches an old entry.
        match hash {
            PwHash::Bcrypt(s) => h.update(s.as_bytes()),
            PwHash::Sha1(d) => h.update(d),
        }
        h.finalize().into()
    }
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp { mtime: m.modified().ok(), len: m.len(), ino: m.ino() })
}

fn parse(text: &str) -> HashMap<String, PwHash> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            tracing::warn!(line = i + 1, "htpasswd line without ':' ignored");
            continue;
        };
        let parsed = if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
            Some(PwHash::Bcrypt(hash.to_string()))
        } else if let Some(b64) = hash.strip_prefix("{SHA}") {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d.as_slice()).ok())
                .map(PwHash::Sha1)
        } else {
            None
        };
        match parsed {
            Some(h) => {
                users.insert(user.to_string(), h);
            }
            // Never log the hash itself: it is crackable offline.
            None => {
                tracing::warn!(line = i + 1, %user, "unsupported htpasswd hash (use htpasswd -B); user ignored");
            }
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_bcrypt_and_sha_and_follows_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        let b = bcrypt::hash("s3cret", 4).unwrap().replacen("$2b$", "$2y$", 1);
        // {SHA} of "password", as `htpasswd -s` writes it.
        std::fs::write(
            &f,
            format!("# users\nalice:{b}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\ncarol:$apr1$x$y\n"),
        )
        .unwrap();
        let h = Htpasswd::load(Some(&f)).unwrap();
        assert!(h.verify("alice", "s3cret").await);
        assert!(h.verify("alice", "s3cret").await, "cached");
        assert!(!h.verify("alice", "wrong").await);
        assert!(h.verify("bob", "password").await);
        assert!(!h.verify("carol", "y").await);
        assert!(!h.verify("nobody", "s3cret").await);

        // A new password for alice replaces the file: the old one stops working.
        let b2 = bcrypt::hash("n3w", 4).unwrap();
        let tmp = dir.path().join("htpasswd.new");
        std::fs::write(&tmp, format!("alice:{b2}\n")).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert!(!h.verify("alice", "s3cret").await);
        assert!(h.verify("alice", "n3w").await);
        assert!(!h.verify("bob", "password").await);

        // A vanished file keeps the last good content.
        std::fs::remove_file(&f).unwrap();
        assert!(h.verify("alice", "n3w").await);
        assert!(Htpasswd::load(Some(&f)).is_err());
    }
}
