//! The recorder: keeps `compliance_current` (what every fleet-wide report reads) and the
//! history current.
//!
//! - Every `compliance.evaluate_seconds`, the whole fleet is judged on whichever replica holds
//!   the lock (time alone changes verdicts: an RPO runs out with nobody reporting anything).
//! - Within about a second of something that changes a machine's facts — a job reported, an
//!   agent connecting or taking a new plan (marked by the session here), a machine approved or
//!   revoked or its plans changed (the cross-replica events) — only those machines are judged
//!   again, so a report shows a finished backup without waiting for the next full round.
//!
//! Heartbeats do not mark a machine: they only move `last_seen_at`, which reports read live.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::history::{record, record_machines};
use crate::events::Event;
use crate::state::AppState;

/// How long marks gather before they are judged together.
const GATHER: Duration = Duration::from_secs(1);

/// Machines whose facts changed since they were last judged.
#[derive(Debug, Default)]
pub struct Dirty {
    machines: Mutex<HashSet<Uuid>>,
    everything: AtomicBool,
    wake: Notify,
}

/// What the recorder is to judge next.
enum Work {
    Fleet,
    Machines(Vec<Uuid>),
}

impl Dirty {
    /// `machine`'s facts changed: judge it again soon.
    pub fn machine(&self, machine: Uuid) {
        if let Ok(mut m) = self.machines.lock() {
            m.insert(machine);
        } else {
            self.everything.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Possibly every machine's facts changed.
    pub fn everything(&self) {
        self.everything.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn take(&self) -> Option<Work> {
        let machines: Vec<Uuid> = match self.machines.lock() {
            Ok(mut m) => m.drain().collect(),
            Err(_) => Vec::new(),
        };
        if self.everything.swap(false, Ordering::Relaxed) {
            Some(Work::Fleet)
        } else if machines.is_empty() {
            None
        } else {
            Some(Work::Machines(machines))
        }
    }

    fn mark(&self, event: &Event) {
        match event {
            Event::Machine { id } => self.machine(*id),
            Event::Plans { machines: Some(ids) } => ids.iter().for_each(|id| self.machine(*id)),
            Event::Plans { machines: None } | Event::Resync => self.everything(),
            Event::Jobs { .. } | Event::Provision | Event::Stores | Event::Maintenance | Event::Shutdown => {}
        }
    }
}

/// Starts the recorder (whole fleet every `compliance.evaluate_seconds`, marked machines within
/// about a second) and the listener that marks machines from the cross-replica events.
pub fn spawn(st: AppState) {
    let mut events = st.events.subscribe();
    let dirty = st.compliance.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Shutdown) | Err(broadcast::error::RecvError::Closed) => break,
                Ok(ev) => dirty.mark(&ev),
                Err(broadcast::error::RecvError::Lagged(_)) => dirty.everything(),
            }
        }
    });
    tokio::spawn(async move {
        let every = Duration::from_secs(st.settings.compliance.evaluate_seconds);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let work = tokio::select! {
                _ = tick.tick() => {
                    // The whole fleet is judged now: what was marked is part of it.
                    let _ = st.compliance.take();
                    Work::Fleet
                }
                () = st.compliance.wake.notified() => {
                    tokio::time::sleep(GATHER).await;
                    match st.compliance.take() {
                        Some(w) => w,
                        None => continue,
                    }
                }
            };
            let done = match work {
                Work::Fleet => record(&st, Utc::now()).await.map(|_| ()),
                Work::Machines(ids) => record_machines(&st, &ids, Utc::now()).await,
            };
            if let Err(e) = done {
                tracing::warn!("compliance recorder: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_gather_and_an_event_about_every_machine_asks_for_the_fleet() {
        let d = Dirty::default();
        assert!(d.take().is_none());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        d.machine(a);
        d.mark(&Event::Plans { machines: Some(vec![a, b]) });
        d.mark(&Event::Jobs { machine: b });
        let Some(Work::Machines(mut ids)) = d.take() else { panic!("machines to judge") };
        ids.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(ids, want);
        assert!(d.take().is_none(), "taken once");
        d.machine(a);
        d.mark(&Event::Resync);
        assert!(matches!(d.take(), Some(Work::Fleet)));
        assert!(d.take().is_none(), "the fleet covers the marked machine");
    }
}
