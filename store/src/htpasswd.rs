//! htpasswd users (bcrypt as `htpasswd -B` writes it, and `{SHA}`), re-read when the file
//! changes, with a cache of verified passwords so bcrypt does not run on each of restic's
//! many requests. An unknown user is checked against a dummy hash of the same kind and cost, so
//! timing does not tell which users exist; `{SHA}` digests are compared in constant time; bcrypt
//! runs on at most `bcrypt_concurrency` blocking threads with at most `bcrypt_queue` checks
//! waiting (more are refused: 503). Passwords are never logged.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::{GeneralPurpose, general_purpose};
use sha1::Digest as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::error::StoreError;

/// Verified (user, password) pairs kept at most; the cache is simply emptied when full.
const CACHE_LIMIT: usize = 4096;

pub struct Htpasswd {
    path: Option<PathBuf>,
    state: Mutex<Loaded>,
    /// Random per process: cache entries are keyed digests, useless outside this process.
    key: [u8; 32],
    gate: Arc<BcryptGate>,
}

#[derive(Default)]
struct Loaded {
    stamp: Option<Stamp>,
    users: HashMap<String, PwHash>,
    /// What an unknown user's password is checked against (`None`: no users at all).
    dummy: Option<PwHash>,
    verified: HashSet<[u8; 32]>,
}

/// bcrypt is deliberately slow: a bounded number of checks run at once on blocking threads, a
/// bounded number wait for them, the rest are refused at once.
struct BcryptGate {
    slots: Arc<Semaphore>,
    /// Checks running or waiting for a slot; at most `limit`.
    admitted: AtomicUsize,
    limit: usize,
    running: AtomicUsize,
    peak_running: AtomicUsize,
    verifications: AtomicU64,
}

/// Counters of the bcrypt checks since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BcryptStats {
    /// bcrypt verifications run (real users' and unknown users' dummy checks alike).
    pub verifications: u64,
    /// The most that ever ran at the same time.
    pub peak_running: usize,
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
    /// read failures keep the last good content. At most `concurrency` bcrypt checks run at
    /// once and `queue` more wait.
    pub fn load(path: Option<&Path>, concurrency: usize, queue: usize) -> Result<Htpasswd, StoreError> {
        let concurrency = concurrency.max(1);
        let h = Htpasswd {
            path: path.map(Path::to_path_buf),
            state: Mutex::new(Loaded::default()),
            key: rand::random(),
            gate: Arc::new(BcryptGate {
                slots: Arc::new(Semaphore::new(concurrency)),
                admitted: AtomicUsize::new(0),
                limit: concurrency.saturating_add(queue),
                running: AtomicUsize::new(0),
                peak_running: AtomicUsize::new(0),
                verifications: AtomicU64::new(0),
            }),
        };
        if let Some(p) = path {
            let stamp = stamp(p).map_err(|e| StoreError::io(format!("htpasswd_file {}", p.display()), e))?;
            let text = std::fs::read_to_string(p)
                .map_err(|e| StoreError::io(format!("htpasswd_file {}", p.display()), e))?;
            let mut st = h.state.lock().unwrap_or_else(|e| e.into_inner());
            st.users = parse(&text);
            st.dummy = dummy_for(&st.users);
            st.stamp = Some(stamp);
        }
        Ok(h)
    }

    /// `Ok(true)` if `password` is `user`'s; wrong or unknown → `Ok(false)` (the caller answers
    /// 401); `Err(Busy)` when too many bcrypt checks are already waiting.
    pub async fn verify(&self, user: &str, password: &str) -> Result<bool, StoreError> {
        self.refresh();
        let (hash, digest, known) = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // An unknown user costs what a wrong password costs: no user enumeration by timing.
            let (hash, known) = match (st.users.get(user), &st.dummy) {
                (Some(hash), _) => (hash, true),
                (None, Some(dummy)) => (dummy, false),
                (None, None) => return Ok(false),
            };
            let digest = self.digest(user, password, hash);
            if st.verified.contains(&digest) && known {
                return Ok(true);
            }
            (hash.clone(), digest, known)
        };
        let ok = match hash {
            PwHash::Sha1(expected) => {
                constant_time_eq(sha1::Sha1::digest(password.as_bytes()).as_slice(), &expected)
            }
            PwHash::Bcrypt(hash) => self.gate.verify(password, hash).await?,
        } && known;
        if ok {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.verified.len() >= CACHE_LIMIT {
                st.verified.clear();
            }
            st.verified.insert(digest);
        }
        Ok(ok)
    }

    pub fn stats(&self) -> BcryptStats {
        BcryptStats {
            verifications: self.gate.verifications.load(Ordering::SeqCst),
            peak_running: self.gate.peak_running.load(Ordering::SeqCst),
        }
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
                st.dummy = dummy_for(&users);
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

impl BcryptGate {
    /// Runs one bcrypt check on a blocking thread once a slot is free; refuses at once when
    /// `limit` checks are already running or waiting.
    async fn verify(self: &Arc<Self>, password: &str, hash: String) -> Result<bool, StoreError> {
        let _admitted = Admitted::enter(self)?;
        let busy = || StoreError::Busy("too many password checks in progress");
        let permit = Arc::clone(&self.slots).acquire_owned().await.map_err(|_| busy())?;
        let (gate, password) = (Arc::clone(self), password.to_string());
        let matches = tokio::task::spawn_blocking(move || {
            // The slot is held by the blocking task itself: a caller that goes away mid-check
            // does not free it while bcrypt still runs.
            let _permit = permit;
            let running = gate.running.fetch_add(1, Ordering::SeqCst) + 1;
            gate.peak_running.fetch_max(running, Ordering::SeqCst);
            gate.verifications.fetch_add(1, Ordering::SeqCst);
            let matches = bcrypt::verify(password, &hash).unwrap_or(false);
            gate.running.fetch_sub(1, Ordering::SeqCst);
            matches
        })
        .await
        .unwrap_or(false);
        Ok(matches)
    }
}

/// One check admitted to the gate (running or waiting) until dropped.
struct Admitted<'a>(&'a BcryptGate);

impl<'a> Admitted<'a> {
    fn enter(gate: &'a BcryptGate) -> Result<Admitted<'a>, StoreError> {
        let admitted = Admitted(gate);
        if gate.admitted.fetch_add(1, Ordering::SeqCst) >= gate.limit {
            return Err(StoreError::Busy("too many password checks waiting"));
        }
        Ok(admitted)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Compares without an early exit, so the time taken does not tell how many leading bytes match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// bcrypt's own base64 (`./A-Za-z0-9`, no padding), to write a well-formed dummy hash.
const BCRYPT_B64: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::BCRYPT, general_purpose::NO_PAD);

/// What unknown users are checked against: a bcrypt hash with the cost most users' hashes have
/// (random salt and hash: no password matches it, but bcrypt does all its work), or a `{SHA}`
/// digest in a file without bcrypt users. `None` without users: there is nothing to hide.
fn dummy_for(users: &HashMap<String, PwHash>) -> Option<PwHash> {
    let mut costs: HashMap<&str, usize> = HashMap::new();
    for hash in users.values() {
        if let PwHash::Bcrypt(h) = hash {
            *costs.entry(h.get(4..6).unwrap_or("12")).or_default() += 1;
        }
    }
    match costs.into_iter().max_by_key(|&(cost, n)| (n, cost)) {
        Some((cost, _)) => {
            let (salt, hash) = (rand::random::<[u8; 16]>(), rand::random::<[u8; 23]>());
            Some(PwHash::Bcrypt(format!("$2b${cost}${}{}", BCRYPT_B64.encode(salt), BCRYPT_B64.encode(hash))))
        }
        None if !users.is_empty() => Some(PwHash::Sha1(rand::random())),
        None => None,
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
        let h = Htpasswd::load(Some(&f), 2, 8).unwrap();
        let ok = |user: &'static str, password: &'static str| {
            let h = &h;
            async move { h.verify(user, password).await.unwrap() }
        };
        assert!(ok("alice", "s3cret").await);
        assert!(ok("alice", "s3cret").await, "cached");
        assert!(!ok("alice", "wrong").await);
        assert!(ok("bob", "password").await);
        assert!(!ok("bob", "passwore").await);
        assert!(!ok("carol", "y").await);
        assert!(!ok("nobody", "s3cret").await);

        // A new password for alice replaces the file: the old one stops working.
        let b2 = bcrypt::hash("n3w", 4).unwrap();
        let tmp = dir.path().join("htpasswd.new");
        std::fs::write(&tmp, format!("alice:{b2}\n")).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert!(!ok("alice", "s3cret").await);
        assert!(ok("alice", "n3w").await);
        assert!(!ok("bob", "password").await);

        // A vanished file keeps the last good content.
        std::fs::remove_file(&f).unwrap();
        assert!(ok("alice", "n3w").await);
        assert!(Htpasswd::load(Some(&f), 2, 8).is_err());
    }

    /// Writes an htpasswd file of bcrypt users `(name, password, cost)`.
    fn file(dir: &Path, users: &[(&str, &str, u32)]) -> PathBuf {
        let f = dir.join("htpasswd");
        let lines: String =
            users.iter().map(|(u, p, cost)| format!("{u}:{}\n", bcrypt::hash(p, *cost).unwrap())).collect();
        std::fs::write(&f, lines).unwrap();
        f
    }

    #[tokio::test]
    async fn unknown_users_cost_a_bcrypt_check_of_the_usual_cost() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), &[("alice", "a", 4), ("bob", "b", 4), ("carol", "c", 5)]);
        let h = Htpasswd::load(Some(&f), 2, 8).unwrap();
        assert!(!h.verify("nobody", "a").await.unwrap());
        assert_eq!(h.stats().verifications, 1, "an unknown user goes through bcrypt like a wrong password");
        assert!(!h.verify("alice", "wrong").await.unwrap());
        assert_eq!(h.stats().verifications, 2);
        // The dummy has the cost most users have, and bcrypt accepts it (so does all its work).
        let Some(PwHash::Bcrypt(dummy)) = h.state.lock().unwrap().dummy.clone() else {
            panic!("no bcrypt dummy")
        };
        assert!(dummy.starts_with("$2b$04$") && dummy.len() == 60, "{dummy}");
        assert_eq!(bcrypt::verify("a", &dummy).ok(), Some(false));

        // {SHA} users only: unknown users are compared with a dummy digest, without bcrypt.
        std::fs::write(&f, "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
        let h = Htpasswd::load(Some(&f), 2, 8).unwrap();
        assert!(!h.verify("nobody", "password").await.unwrap());
        assert!(matches!(h.state.lock().unwrap().dummy, Some(PwHash::Sha1(_))));
        assert_eq!(h.stats().verifications, 0);
        assert!(Htpasswd::load(None, 2, 8).unwrap().state.lock().unwrap().dummy.is_none());
    }

    #[test]
    fn sha_digests_compare_whole() {
        assert!(constant_time_eq(b"abcd", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abce"));
        assert!(!constant_time_eq(b"xbcd", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_wrong_passwords_waits_in_a_bounded_queue() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), &[("alice", "a", 4)]);
        let h = Arc::new(Htpasswd::load(Some(&f), 2, 3).unwrap());
        // The slots are held here, so no check can start: 2 + 3 checks are admitted and wait,
        // the other 5 are refused at once.
        let held = Arc::clone(&h.gate.slots).acquire_many_owned(2).await.unwrap();
        let flood: Vec<_> = (0..10)
            .map(|i| {
                let h = Arc::clone(&h);
                let user = if i % 2 == 0 { "alice" } else { "nobody" };
                tokio::spawn(async move { h.verify(user, "wrong").await })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while flood.iter().filter(|t| t.is_finished()).count() < 5 {
            assert!(std::time::Instant::now() < deadline, "refusals never came: the queue is unbounded");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(h.gate.admitted.load(Ordering::SeqCst), 5, "five checks wait");
        drop(held);
        let mut statuses = Vec::new();
        for t in flood {
            statuses.push(match t.await.unwrap() {
                Ok(ok) => {
                    assert!(!ok);
                    200
                }
                Err(e) => e.status().as_u16(),
            });
        }
        assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 5, "{statuses:?}");
        assert_eq!(h.stats().verifications, 5);

        // Without held slots, 40 concurrent wrong passwords never run more than 2 bcrypts at once.
        let h = Arc::new(Htpasswd::load(Some(&f), 2, 100).unwrap());
        let flood: Vec<_> = (0..40)
            .map(|_| {
                let h = Arc::clone(&h);
                tokio::spawn(async move { h.verify("alice", "wrong").await })
            })
            .collect();
        for t in flood {
            assert!(!t.await.unwrap().unwrap());
        }
        assert_eq!(h.stats().verifications, 40);
        assert!(h.stats().peak_running <= 2, "{:?}", h.stats());
    }
}
