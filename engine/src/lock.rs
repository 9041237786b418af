//! Repository locks, exactly as restic keeps them, so that Cofre's backups, the controller's
//! maintenance and any restic CLI a person runs never step on each other.
//!
//! restic's rules (`internal/restic/lock.go`, and its design document): a lock is an encrypted
//! JSON file under `locks/` (`time`, `exclusive`, `hostname`, `username`, `pid`, `uid`, `gid`).
//! Backups hold a non-exclusive lock; forget, prune and check an exclusive one. Exclusive
//! conflicts with every other lock, non-exclusive only with exclusive ones. A lock is stale when
//! its time is more than 30 minutes old, or when it was written on this host by a process that
//! no longer exists; stale locks are ignored. The holder refreshes its lock every 5 minutes by
//! writing a new file and removing the old one. To close the race of two processes locking at
//! the same moment, restic checks for conflicting locks both before and after writing its own.
//!
//! rustic_core 0.13 writes no locks at all, which is why the engine does it itself. Waiting
//! instead of failing at once: a backup started while a prune runs waits for it, and the other
//! way round, up to the caller's limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archiver::format::{Key, unpacked_file};
use crate::error::EngineError;
use crate::rest::RestFiles;

/// restic considers a lock stale after this long without a refresh.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// restic refreshes held locks this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// restic's pause between writing its lock and checking again for conflicts.
const RECHECK_AFTER: Duration = Duration::from_millis(200);
/// How often a waiting caller looks again.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// A lock file's content (restic's field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LockFile {
    pub(crate) time: String,
    pub(crate) exclusive: bool,
    pub(crate) hostname: String,
    pub(crate) username: String,
    pub(crate) pid: i64,
    #[serde(default)]
    pub(crate) uid: u32,
    #[serde(default)]
    pub(crate) gid: u32,
}

impl LockFile {
    fn new(exclusive: bool, username: &str) -> Self {
        Self {
            time: jiff::Zoned::now().to_string_rfc3339(),
            exclusive,
            hostname: hostname(),
            username: username.to_owned(),
            pid: i64::from(std::process::id()),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    /// restic's staleness rule, seen from this host.
    pub(crate) fn is_stale(&self) -> bool {
        let age = jiff::Timestamp::now().duration_since(parse_time(&self.time));
        if age.as_secs() > STALE_AFTER.as_secs() as i64 {
            return true;
        }
        self.hostname == hostname() && !process_exists(self.pid)
    }

    /// Who holds it, for messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} lock by {}@{} (pid {}) since {}",
            if self.exclusive { "an exclusive" } else { "a" },
            self.username,
            self.hostname,
            self.pid,
            self.time
        )
    }
}

trait ZonedRfc3339 {
    fn to_string_rfc3339(&self) -> String;
}

impl ZonedRfc3339 for jiff::Zoned {
    /// RFC 3339 with the local offset, as Go marshals a `time.Time`.
    fn to_string_rfc3339(&self) -> String {
        self.timestamp().display_with_offset(self.offset()).to_string()
    }
}

/// A lock's time; an unreadable one counts as very old (so it is stale, as in restic).
fn parse_time(s: &str) -> jiff::Timestamp {
    s.parse::<jiff::Timestamp>().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

fn process_exists(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // Signal 0 checks existence; EPERM means it exists but belongs to someone else.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// What the lock's holder needs to reach the repository's `locks/` directory.
#[derive(Clone)]
pub(crate) struct LockBackend {
    pub(crate) files: RestFiles,
    pub(crate) key: Key,
    pub(crate) compress: bool,
}

impl LockBackend {
    /// The lock file's id (the hash of its encrypted bytes, known before it is stored) and
    /// those bytes.
    fn seal(&self, lock: &LockFile) -> Result<(String, bytes::Bytes), EngineError> {
        let json = serde_json::to_vec(lock).map_err(|e| EngineError::Other(e.to_string()))?;
        let (bytes, hash) =
            unpacked_file(&self.key, &json, self.compress.then_some(3)).map_err(EngineError::Other)?;
        Ok((hex::encode(hash), bytes.into()))
    }

    fn put(&self, id: &str, bytes: &bytes::Bytes) -> Result<(), EngineError> {
        self.files.put("locks", id, bytes)
    }

    pub(crate) fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.files.delete("locks", id)
    }

    /// Every readable lock but `own` (unreadable ones — another key's, half-written, gone
    /// meanwhile — are skipped, as restic skips what it cannot decode).
    fn others(&self, own: Option<&str>) -> Result<Vec<(String, LockFile)>, EngineError> {
        let ids = self.files.list("locks")?;
        let mut out = Vec::new();
        for hex in ids {
            if Some(hex.as_str()) == own {
                continue;
            }
            let Ok(Some(bytes)) = self.files.get("locks", &hex) else { continue };
            let Ok(plain) = self.key.decrypt(&bytes) else { continue };
            let json = match plain.first() {
                Some(2) => match zstd::stream::decode_all(&plain[1..]) {
                    Ok(j) => j,
                    Err(_) => continue,
                },
                _ => plain,
            };
            if let Ok(lock) = serde_json::from_slice::<LockFile>(&json) {
                out.push((hex, lock));
            }
        }
        Ok(out)
    }

    /// The first live lock that conflicts with taking one of kind `exclusive`.
    fn conflict(&self, exclusive: bool, own: Option<&str>) -> Result<Option<LockFile>, EngineError> {
        Ok(self
            .others(own)?
            .into_iter()
            .map(|(_, l)| l)
            .find(|l| (exclusive || l.exclusive) && !l.is_stale()))
    }
}

/// How long to wait for a conflicting lock to go, and where to record the lock's id while it is
/// held (so whoever started this process can remove it if the process is killed).
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    pub wait: Duration,
    /// The file that names, one per line, the locks this process has stored or is about to
    /// store (written whole, before each upload); removed when it holds none.
    pub record: Option<PathBuf>,
    /// Locks known to be left behind by a dead holder (e.g. a controller replica that died
    /// mid-prune): removed before locking.
    pub stale: Vec<String>,
}

/// Writes (or, with no ids, removes) the file at `path` (if any) recording the ids of the locks
/// this process has in the repository, or is about to store: one per line.
fn record(path: Option<&Path>, ids: &[&str]) {
    if let Some(p) = path {
        let _ = if ids.is_empty() { std::fs::remove_file(p) } else { write_record(p, ids) };
    }
}

/// Replaces the record at `path` with `ids` whole: written beside it and renamed over it, so a
/// process killed at any point leaves either the previous record or the new one, never an empty
/// file (whoever reads the record after a kill would find no id and leave the lock behind).
fn write_record(path: &Path, ids: &[&str]) -> std::io::Result<()> {
    let tmp = record_in_progress(path);
    std::fs::write(&tmp, ids.join("\n"))?;
    std::fs::rename(&tmp, path)
}

/// The lock ids a record (see [`LockOptions::record`]) holds.
pub fn recorded_ids(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Where [`write_record`] writes before renaming (left behind only by a kill in between).
pub(crate) fn record_in_progress(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    PathBuf::from(tmp)
}

/// A held lock: refreshed in the background, removed on drop.
pub(crate) struct RepoLock {
    backend: LockBackend,
    state: Arc<std::sync::Mutex<String>>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
    record: Option<PathBuf>,
}

impl RepoLock {
    /// Takes a lock of kind `exclusive`, waiting up to `opts.wait` for conflicting ones.
    pub(crate) fn acquire(
        backend: LockBackend,
        exclusive: bool,
        username: &str,
        opts: &LockOptions,
    ) -> Result<RepoLock, EngineError> {
        for id in &opts.stale {
            // Gone already is fine.
            let _ = backend.remove(id);
        }
        let started = Instant::now();
        let mut announced = false;
        loop {
            match backend.conflict(exclusive, None)? {
                None => {
                    let (id, bytes) = backend.seal(&LockFile::new(exclusive, username))?;
                    // Recorded before it is stored: a process killed from here on leaves at
                    // most a lock whoever started it can remove (removing one that never
                    // arrived is harmless).
                    record(opts.record.as_deref(), &[&id]);
                    if let Err(e) = backend.put(&id, &bytes) {
                        record(opts.record.as_deref(), &[]);
                        return Err(e);
                    }
                    std::thread::sleep(RECHECK_AFTER);
                    match backend.conflict(exclusive, Some(&id))? {
                        None => {
                            log::info!("took the repository lock {}", id.get(..8).unwrap_or(&id));
                            return Ok(Self::held(backend, id, username, exclusive, opts));
                        }
                        Some(_) => {
                            // Both wrote at once: both step back and try again.
                            backend.remove(&id)?;
                            record(opts.record.as_deref(), &[]);
                        }
                    }
                }
                Some(other) => {
                    if started.elapsed() >= opts.wait {
                        return Err(EngineError::Locked(other.describe()));
                    }
                    if !announced {
                        log::info!("the repository is locked ({}); waiting", other.describe());
                        announced = true;
                    }
                }
            }
            std::thread::sleep(
                POLL_EVERY.min(opts.wait.saturating_sub(started.elapsed())).max(RECHECK_AFTER),
            );
        }
    }

    fn held(
        backend: LockBackend,
        id: String,
        username: &str,
        exclusive: bool,
        opts: &LockOptions,
    ) -> RepoLock {
        let state = Arc::new(std::sync::Mutex::new(id));
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = {
            let (backend, state, stop, record) =
                (backend.clone(), state.clone(), stop.clone(), opts.record.clone());
            let username = username.to_owned();
            std::thread::Builder::new()
                .name("cofre-lock-refresh".into())
                .spawn(move || refresh_loop(&backend, &state, &stop, &username, exclusive, record.as_deref()))
                .ok()
        };
        RepoLock { backend, state, stop, refresher, record: opts.record.clone() }
    }

    /// The lock file's id.
    pub(crate) fn id(&self) -> String {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn refresh_loop(
    backend: &LockBackend,
    state: &std::sync::Mutex<String>,
    stop: &AtomicBool,
    username: &str,
    exclusive: bool,
    record_path: Option<&Path>,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        if last.elapsed() < REFRESH_EVERY {
            continue;
        }
        last = Instant::now();
        let Ok(cur) = state.lock().map(|c| c.as_str().to_owned()) else { return };
        let (new, bytes) = match backend.seal(&LockFile::new(exclusive, username)) {
            Ok(sealed) => sealed,
            Err(e) => {
                log::warn!("cannot refresh the repository lock: {e}");
                continue;
            }
        };
        // Both recorded while both may exist: a kill at any point leaves nothing the starter of
        // this process cannot remove.
        record(record_path, &[&new, &cur]);
        if let Err(e) = backend.put(&new, &bytes) {
            log::warn!("cannot refresh the repository lock: {e}");
            record(record_path, &[&cur]);
            continue;
        }
        let Ok(old) = state.lock().map(|mut c| std::mem::replace(&mut *c, new.clone())) else { return };
        match backend.remove(&old) {
            Ok(()) => record(record_path, &[&new]),
            Err(e) => log::warn!("cannot remove the old repository lock {old}: {e}"),
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let id = self.id();
        match self.backend.remove(&id) {
            Ok(()) => record(self.record.as_deref(), &[]),
            Err(e) => log::warn!("cannot remove the repository lock {id}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_record_is_replaced_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.lock");
        record(Some(&p), &["first"]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "first");
        record(Some(&p), &["second", "first"]);
        assert_eq!(recorded_ids(&std::fs::read_to_string(&p).unwrap()), ["second", "first"]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("job.lock")]);
        record(Some(&p), &[]);
        assert!(!p.exists());
    }

    fn lock(age_secs: i64, host: &str, pid: i64) -> LockFile {
        let t = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(age_secs);
        LockFile {
            time: t.to_string(),
            exclusive: false,
            hostname: host.into(),
            username: "u".into(),
            pid,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn staleness_follows_restics_rules() {
        let me = i64::from(std::process::id());
        assert!(!lock(60, &hostname(), me).is_stale(), "fresh, holder alive");
        assert!(lock(31 * 60, &hostname(), me).is_stale(), "not refreshed for 30 minutes");
        assert!(lock(60, &hostname(), i64::from(i32::MAX)).is_stale(), "holder on this host is gone");
        assert!(
            !lock(60, "another-host", i64::from(i32::MAX)).is_stale(),
            "another host's pid is not ours to judge"
        );
        let mut garbled = lock(0, "another-host", 1);
        garbled.time = "yesterday".into();
        assert!(garbled.is_stale());
    }

    #[test]
    fn lock_files_use_restics_field_names() {
        let l = LockFile::new(true, "cofre-maintenance");
        let v: serde_json::Value = serde_json::to_value(&l).unwrap();
        for k in ["time", "exclusive", "hostname", "username", "pid", "uid", "gid"] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert!(l.time.parse::<jiff::Timestamp>().is_ok(), "{}", l.time);
    }
}
