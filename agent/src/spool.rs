//! The result spool: every job event is written here (one 0600 file per event, named so that
//! listing sorts oldest first) before it is sent, and deleted only when the controller
//! acknowledges it, which it does after committing. Nothing is lost across crashes, restarts
//! or controller outages; a redelivered event is stored once by the controller. Events are cut
//! to what the controller takes before they are written (`bounds`), so none can block the
//! ones after it.
//!
//! **When the spool cannot be written** (its disk is full, or failing): a result is kept in
//! memory and delivered from there, and written as soon as the disk takes it again (retried at
//! every push and every scheduler tick); a progress event (a job started) is dropped and
//! counted. The first failure logs one error naming the directory, the error and the space
//! left; the first write that succeeds again logs what was held and dropped meanwhile. A
//! result held in memory when the agent stops is reported as interrupted by its job's marker
//! at the next start (the marker stays until the result is written or acknowledged).
//!
//! **A running job's progress is never spooled** (`Pushed::Live`): it is sent on a live session
//! only (`Agent::progress`, the session's `deliver`); a later sample replaces a lost one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cofre_proto::agent::v1 as pb;
use prost::Message;
use tokio::sync::Notify;

/// What became of a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// On disk: it survives a restart.
    Written,
    /// A result the disk did not take: kept in memory, delivered from there, written later.
    Held,
    /// A progress event the disk did not take: dropped and counted.
    Dropped,
    /// A running job's progress: never written (it goes on a live session only).
    Live,
}

/// Why an event cannot be spooled at all.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the event id {0:?} is not a UUID")]
    BadEventId(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A result waiting in memory for the disk, with the job marker to remove once it is safe.
#[derive(Debug)]
struct HeldEvent {
    event: pb::JobEvent,
    marker: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Woken whenever an event is added.
    pub added: Notify,
    /// Results the disk did not take, oldest first.
    held: Mutex<Vec<HeldEvent>>,
    /// Progress events dropped since the agent started.
    dropped: AtomicU64,
    /// Progress events dropped during the current failure (reported when it ends).
    dropped_now: AtomicU64,
    /// Whether writes are failing (the error is logged once per failure).
    failing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes available to the agent on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

impl Spool {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            added: Notify::new(),
            held: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            dropped_now: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, event_id: &str) -> Option<PathBuf> {
        // Event ids are UUIDv7 strings: time-ordered, and safe as file names once checked.
        uuid::Uuid::try_parse(event_id).ok()?;
        Some(self.dir.join(format!("{event_id}.pb")))
    }

    /// Writes an event, cut to what the controller takes (`bounds`), or fails.
    fn write(&self, ev: &pb::JobEvent) -> Result<(), SpoolError> {
        let p = self.path(&ev.event_id).ok_or_else(|| SpoolError::BadEventId(ev.event_id.clone()))?;
        let mut ev = ev.clone();
        crate::bounds::job_event(&mut ev);
        crate::state::write_atomic(&p, &ev.encode_to_vec())
            .map_err(|source| SpoolError::Write { path: p, source })
    }

    /// Spools an event, written to disk or nothing (for callers that keep their own durable
    /// record and try again, like the recovery of interrupted jobs).
    ///
    /// # Errors
    /// A malformed event id, or the disk refusing the write.
    pub fn push_durable(&self, ev: &pb::JobEvent) -> Result<(), SpoolError> {
        self.retry_held();
        match self.write(ev) {
            Ok(()) => {
                self.written_again();
                self.added.notify_waiters();
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Spools an event. When the disk does not take it, a result is held in memory (and
    /// `marker`, the job's running marker, kept until it is written or acknowledged), a
    /// progress event is dropped and counted; see the module documentation.
    ///
    /// # Errors
    /// Only a malformed event id.
    pub fn push(&self, ev: &pb::JobEvent) -> Result<Pushed, SpoolError> {
        self.push_with_marker(ev, None)
    }

    /// [`Spool::push`] for a job's result: `marker` is removed once the result is safe
    /// (written or acknowledged), and kept while it is only in memory.
    ///
    /// # Errors
    /// Only a malformed event id.
    pub fn push_with_marker(&self, ev: &pb::JobEvent, marker: Option<PathBuf>) -> Result<Pushed, SpoolError> {
        if matches!(ev.kind, Some(pb::job_event::Kind::Progress(_))) {
            return Ok(Pushed::Live);
        }
        self.retry_held();
        let pushed = match self.write(ev) {
            Ok(()) => {
                self.written_again();
                if let Some(m) = marker {
                    remove_marker(&m);
                }
                Pushed::Written
            }
            Err(e @ SpoolError::BadEventId(_)) => return Err(e),
            Err(e) => {
                self.failed(&e);
                if matches!(ev.kind, Some(pb::job_event::Kind::Finished(_))) {
                    let mut event = ev.clone();
                    crate::bounds::job_event(&mut event);
                    lock(&self.held).push(HeldEvent { event, marker });
                    tracing::warn!(event.id = %ev.event_id, job.id = %ev.job_id, "result kept in memory until the spool can be written");
                    Pushed::Held
                } else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    self.dropped_now.fetch_add(1, Ordering::Relaxed);
                    Pushed::Dropped
                }
            }
        };
        self.added.notify_waiters();
        Ok(pushed)
    }

    /// Writes the results held in memory, oldest first, as far as the disk takes them.
    pub fn retry_held(&self) {
        let mut held = lock(&self.held);
        if held.is_empty() {
            return;
        }
        let mut written = 0;
        while let Some(h) = held.first() {
            match self.write(&h.event) {
                Ok(()) => {
                    if let Some(m) = &h.marker {
                        remove_marker(m);
                    }
                    held.remove(0);
                    written += 1;
                }
                Err(e) => {
                    self.failed(&e);
                    break;
                }
            }
        }
        let left = held.len();
        drop(held);
        if written > 0 {
            tracing::info!(written, still_held = left, dir = %self.dir.display(), "results kept in memory written to the spool");
            if left == 0 {
                self.written_again();
            }
        }
    }

    /// Progress events dropped because the spool could not be written, since the start.
    pub fn dropped_progress(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Results waiting in memory for the disk.
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }

    /// A write failed: the first failure of a run of them is logged as an error.
    fn failed(&self, e: &SpoolError) {
        if self.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, "spool still not writable");
            return;
        }
        let free = free_bytes(&self.dir).map_or_else(|| "unknown".to_string(), |b| format!("{b} bytes"));
        tracing::error!(
            dir = %self.dir.display(),
            free = %free,
            "cannot write the result spool in {} ({free} free there): {e}; results are kept in memory and \
             delivered from there until it can be written, progress events are dropped",
            self.dir.display()
        );
    }

    /// A write succeeded: ends a failure, saying what it cost.
    fn written_again(&self) {
        if !lock(&self.held).is_empty() || !self.failing.swap(false, Ordering::Relaxed) {
            return;
        }
        let dropped = self.dropped_now.swap(0, Ordering::Relaxed);
        tracing::info!(
            dir = %self.dir.display(),
            progress_events_dropped = dropped,
            "the result spool can be written again; no result was lost"
        );
    }

    /// All spooled events, oldest first: those on disk and those held in memory. Unreadable
    /// files are moved aside, not deleted.
    pub fn pending(&self) -> Vec<pb::JobEvent> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pb"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut out = Vec::new();
        for p in names {
            match std::fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|raw| Ok(pb::JobEvent::decode(raw.as_slice())?))
                .and_then(|ev| {
                    // Its acknowledgement removes the file named after its id: an event under
                    // another name (a damaged file) would be sent again at every connection.
                    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                    if ev.event_id == stem {
                        Ok(ev)
                    } else {
                        Err(anyhow::anyhow!("its event id {:?} is not its file's name", ev.event_id))
                    }
                }) {
                Ok(ev) => out.push(ev),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "unreadable spooled event; moved aside");
                    let _ = std::fs::rename(&p, p.with_extension("corrupt"));
                }
            }
        }
        let held = lock(&self.held);
        if !held.is_empty() {
            let on_disk: std::collections::HashSet<String> = out.iter().map(|e| e.event_id.clone()).collect();
            out.extend(held.iter().filter(|h| !on_disk.contains(&h.event.event_id)).map(|h| h.event.clone()));
            out.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        }
        out
    }

    pub fn ack(&self, event_id: &str) {
        {
            let mut held = lock(&self.held);
            if let Some(i) = held.iter().position(|h| h.event.event_id == event_id) {
                // Stored by the controller: the marker has done its work.
                if let Some(m) = &held[i].marker {
                    remove_marker(m);
                }
                held.remove(i);
            }
        }
        if let Some(p) = self.path(event_id) {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot remove acknowledged event"),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.pending().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_marker(p: &Path) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot remove a finished job's marker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_never_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().to_path_buf());
        let ev = pb::JobEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            job_id: uuid::Uuid::now_v7().to_string(),
            kind: Some(pb::job_event::Kind::Progress(pb::JobProgress {
                files_done: 3,
                ..Default::default()
            })),
        };
        assert_eq!(spool.push(&ev).unwrap(), Pushed::Live);
        assert!(spool.is_empty() && spool.pending().is_empty());
        assert_eq!(spool.dropped_progress(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).map(Iterator::count).unwrap_or(0), 0);
    }

    #[test]
    fn events_survive_until_acked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::new(dir.path().to_path_buf());
        let a = pb::JobEvent { event_id: uuid::Uuid::now_v7().to_string(), job_id: "j".into(), kind: None };
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = pb::JobEvent { event_id: uuid::Uuid::now_v7().to_string(), job_id: "k".into(), kind: None };
        s.push(&b).unwrap();
        s.push(&a).unwrap();
        let again = Spool::new(dir.path().to_path_buf());
        let ids: Vec<_> = again.pending().into_iter().map(|e| e.job_id).collect();
        assert_eq!(ids, vec!["j", "k"]);
        again.ack(&a.event_id);
        again.ack(&a.event_id); // twice is fine
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn an_oversized_result_is_bounded_before_it_is_spooled() {
        use prost::Message as _;
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::new(dir.path().to_path_buf());
        let ev = pb::JobEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            job_id: uuid::Uuid::now_v7().to_string(),
            kind: Some(pb::job_event::Kind::Finished(pb::JobFinished {
                warnings: (0..5_000).map(|i| format!("{i} {}", "w".repeat(5_000))).collect(),
                log: "out\0put\n".repeat(1_000_000),
                error: Some(pb::JobError { message: "e".repeat(1_000_000), retry_class: 1 }),
                ..Default::default()
            })),
        };
        s.push(&ev).unwrap();
        let spooled = s.pending().remove(0);
        assert!(spooled.encoded_len() <= 3 * 1024 * 1024, "{} bytes", spooled.encoded_len());
        let Some(pb::job_event::Kind::Finished(f)) = spooled.kind else { panic!("finished") };
        assert!(f.warnings.len() <= 1_000, "{}", f.warnings.len());
        assert!(f.warnings.iter().all(|w| w.len() <= 2_000));
        let last = f.warnings.last().unwrap();
        assert!(last.contains("more warnings"), "the report says how many are missing: {last}");
        assert!(!f.log.contains('\0'), "PostgreSQL stores no NUL");
        assert!(f.log.len() <= 64 * 1024 && f.error.unwrap().message.len() <= 8_000);
    }
}
