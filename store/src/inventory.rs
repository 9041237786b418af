//! The in-memory catalog of every repository (bytes and object counts per type, snapshots with
//! their mtimes): built by a start-up scan that also sweeps leftover upload temp files, kept
//! current on every write and delete, read by quotas and reported as the inventory.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::layout::{self, FileKind, Layout, ObjectType, RepoPath, TEMP_MARKER};

/// What one repository holds, as tracked in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct RepoStats {
    pub config_bytes: Option<u64>,
    pub bytes: [u64; 5],
    pub counts: [u64; 5],
    pub snapshots: BTreeMap<String, SystemTime>,
    /// Bytes reserved by uploads in progress (see `quota`).
    pub in_flight: u64,
}

impl RepoStats {
    pub fn stored(&self) -> u64 {
        self.config_bytes.unwrap_or(0) + self.bytes.iter().sum::<u64>()
    }
}

/// One repository as reported to the controller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepoInventory {
    /// Path relative to the data dir (`city/3f2a…`).
    pub repository: String,
    pub total_bytes: u64,
    pub has_config: bool,
    pub objects: ObjectCounts,
    /// mtime of the newest snapshot file.
    pub newest_snapshot_at: Option<DateTime<Utc>>,
    pub snapshot_ids: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ObjectCounts {
    pub data: u64,
    pub keys: u64,
    pub locks: u64,
    pub snapshots: u64,
    pub index: u64,
}

pub struct Catalog {
    pub(crate) repos: Mutex<BTreeMap<RepoPath, RepoStats>>,
    changed: watch::Sender<u64>,
}

impl Catalog {
    /// Scans every repository below the data dir, removing leftover upload temp files (a crash
    /// mid-upload never leaves a partial object visible). Blocking: run it off the runtime.
    pub fn scan(layout: &Layout) -> io::Result<Catalog> {
        let mut repos = BTreeMap::new();
        let mut swept = 0;
        for repo in layout::find_repos(layout.data_dir())? {
            let (stats, n) = scan_repo(&layout.repo_dir(&repo))?;
            swept += n;
            repos.insert(repo, stats);
        }
        if swept > 0 {
            tracing::info!(files = swept, "removed leftover upload temp files");
        }
        tracing::info!(repositories = repos.len(), "data dir scanned");
        Ok(Catalog { repos: Mutex::new(repos), changed: watch::channel(0).0 })
    }

    /// Makes sure `repo` is tracked: a repository created behind our back (or by an older
    /// server) is scanned the first time it is touched. Blocking.
    pub fn ensure(&self, layout: &Layout, repo: &RepoPath) {
        if self.lock().contains_key(repo) {
            return;
        }
        let dir = layout.repo_dir(repo);
        if !dir.is_dir() {
            return;
        }
        match scan_repo(&dir) {
            Ok((stats, _)) => {
                self.lock().entry(repo.clone()).or_insert(stats);
            }
            Err(e) => tracing::warn!(%repo, error = %e, "cannot scan repository"),
        }
    }

    pub fn record_created(&self, repo: &RepoPath) {
        self.lock().entry(repo.clone()).or_default();
        self.notify();
    }

    pub fn record_added(&self, repo: &RepoPath, kind: FileKind, name: &str, size: u64, mtime: SystemTime) {
        {
            let mut repos = self.lock();
            let s = repos.entry(repo.clone()).or_default();
            match kind {
                FileKind::Config => s.config_bytes = Some(size),
                FileKind::Object(t) => {
                    s.bytes[t as usize] += size;
                    s.counts[t as usize] += 1;
                    if t == ObjectType::Snapshots {
                        s.snapshots.insert(name.to_string(), mtime);
                    }
                }
            }
        }
        self.notify();
    }

    pub fn record_removed(&self, repo: &RepoPath, kind: FileKind, name: &str, size: u64) {
        {
            let mut repos = self.lock();
            let Some(s) = repos.get_mut(repo) else { return };
            match kind {
                FileKind::Config => s.config_bytes = None,
                FileKind::Object(t) => {
                    s.bytes[t as usize] = s.bytes[t as usize].saturating_sub(size);
                    s.counts[t as usize] = s.counts[t as usize].saturating_sub(1);
                    s.snapshots.remove(name);
                }
            }
        }
        self.notify();
    }

    /// Every repository with its totals, sorted by path.
    pub fn inventory(&self) -> Vec<RepoInventory> {
        self.lock()
            .iter()
            .map(|(repo, s)| {
                let c = |t: ObjectType| s.counts[t as usize];
                RepoInventory {
                    repository: repo.to_string(),
                    total_bytes: s.stored(),
                    has_config: s.config_bytes.is_some(),
                    objects: ObjectCounts {
                        data: c(ObjectType::Data),
                        keys: c(ObjectType::Keys),
                        locks: c(ObjectType::Locks),
                        snapshots: c(ObjectType::Snapshots),
                        index: c(ObjectType::Index),
                    },
                    newest_snapshot_at: s.snapshots.values().max().map(|t| DateTime::<Utc>::from(*t)),
                    snapshot_ids: s.snapshots.keys().cloned().collect(),
                }
            })
            .collect()
    }

    /// A counter that increases on every change (lock files included: debounce on your side).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RepoPath, RepoStats>> {
        // A panic while holding this lock leaves plain counters behind: keep going.
        self.repos.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sums one repository's files and removes its leftover temp files. Returns (stats, swept).
fn scan_repo(dir: &Path) -> io::Result<(RepoStats, usize)> {
    let mut s = RepoStats::default();
    let mut swept = sweep(dir)?;
    if let Ok(m) = std::fs::metadata(dir.join("config"))
        && m.is_file()
    {
        s.config_bytes = Some(m.len());
    }
    for t in ObjectType::ALL {
        let tdir = dir.join(t.dir_name());
        swept += sweep(&tdir)?;
        if t == ObjectType::Data
            && let Ok(rd) = std::fs::read_dir(&tdir)
        {
            for sub in rd.flatten() {
                if sub.file_type().is_ok_and(|ft| ft.is_dir()) {
                    swept += sweep(&sub.path())?;
                }
            }
        }
    }
    for t in ObjectType::ALL {
        for (obj, size) in layout::list_objects(dir, t)? {
            s.bytes[t as usize] += size;
            s.counts[t as usize] += 1;
            if t == ObjectType::Snapshots {
                let path = dir.join("snapshots").join(&obj);
                let mtime =
                    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                s.snapshots.insert(obj, mtime);
            }
        }
    }
    Ok((s, swept))
}

/// Removes `.<name>.cofre-upload-<random>` files directly in `dir`.
fn sweep(dir: &Path) -> io::Result<usize> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARKER) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}
