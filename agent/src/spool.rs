//! The result spool: every job event is written here (one 0600 file per event, named so that
//! listing sorts oldest first) before it is sent, and deleted only when the controller
//! acknowledges it, which it does after committing. Nothing is lost across crashes, restarts
//! or controller outages; a redelivered event is stored once by the controller. Events are cut
//! to what the controller takes before they are written (`bounds`), so none can block the
//! ones after it.

use std::path::PathBuf;

use cofre_proto::agent::v1 as pb;
use prost::Message;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Woken whenever an event is added.
    pub added: Notify,
}

impl Spool {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, added: Notify::new() }
    }

    fn path(&self, event_id: &str) -> Option<PathBuf> {
        // Event ids are UUIDv7 strings: time-ordered, and safe as file names once checked.
        uuid::Uuid::try_parse(event_id).ok()?;
        Some(self.dir.join(format!("{event_id}.pb")))
    }

    /// Spools an event, cut to what the controller takes (`bounds`).
    pub fn push(&self, ev: &pb::JobEvent) -> anyhow::Result<()> {
        let p = self.path(&ev.event_id).ok_or_else(|| anyhow::anyhow!("bad event id"))?;
        let mut ev = ev.clone();
        crate::bounds::job_event(&mut ev);
        crate::state::write_atomic(&p, &ev.encode_to_vec())?;
        self.added.notify_waiters();
        Ok(())
    }

    /// All spooled events, oldest first. Unreadable files are moved aside, not deleted.
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
        out
    }

    pub fn ack(&self, event_id: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
