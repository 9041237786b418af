//! The agent's local schedule: which policies are due now, evaluated against an injected clock
//! (wall time for the schedule, monotonic time to notice jumps) from the slot each policy last
//! ran, which is persisted. The agent calls [`Scheduler::due`] every 15 seconds — never one long
//! sleep — so suspend/resume, a stopped machine or a wall-clock jump never doubles or loses a
//! run:
//! - a run missed while the machine was off (or asleep) runs once, at the next evaluation: the
//!   slot recorded is the latest one, so every missed slot collapses into that run;
//! - the wall clock jumping forward looks like time passing (the same collapse);
//! - the wall clock jumping backward (it was ahead and got corrected) moves every recorded time
//!   back by the same amount, so a slot that already ran does not run again, and nothing waits
//!   for a time that was only ever on the wrong clock. A recorded time found in the future at
//!   start-up (the clock went back while the agent was stopped) counts as "just now".
//!
//! Schedules are evaluated with `cofre_policy::schedule` (cron in a time zone, intervals, the
//! stable per-machine jitter, windows, DST). Temporary failures are retried sooner (1, 2, 4 …
//! minutes, never past the next regular run); permanent ones wait for the next regular run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use cofre_policy::schedule::{Schedule, jitter_offset};
use cofre_policy::spec::{ScheduleSpec, WindowSpec};
use cofre_proto::agent::v1 as pb;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// How often the agent evaluates its schedule.
pub const TICK: Duration = Duration::from_secs(15);

/// A backward jump of the wall clock beyond this (compared with the monotonic clock) moves the
/// recorded times; smaller differences are NTP's ordinary slewing.
const JUMP_TOLERANCE: SignedDuration = SignedDuration::from_secs(60);

/// Wall time for schedules, monotonic time to notice wall-clock jumps.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Monotonic time since an arbitrary origin (does not count suspended time).
    fn mono(&self) -> Duration;
}

/// The machine's clocks.
#[derive(Debug)]
pub struct SystemClock(std::time::Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn mono(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Offsets smaller than this between the machine's clock and the controller's are left alone
/// (the controller's time arrives with one-second resolution, after a round trip; NTP keeps
/// good clocks far closer).
pub const CLOCK_TOLERANCE: SignedDuration = SignedDuration::from_secs(60);

/// Offsets larger than this are not believed: something else is wrong (the controller's own
/// clock, or a proxy's header), and the machine keeps its own time.
pub const CLOCK_MAX_CORRECTION: SignedDuration = SignedDuration::from_secs(24 * 3600);

/// The machine's clock corrected by the controller's (learnt from each session's answer), so
/// an agent whose clock is an hour off runs its cron slots when the controller expects them
/// and reports times on the controller's scale. The scheduler sees a correction as a wall-clock
/// jump and handles it as one (see the module documentation). Monotonic time is untouched.
pub struct Corrected {
    inner: std::sync::Arc<dyn Clock>,
    /// Controller time minus machine time, in seconds (0: none applied).
    offset: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Corrected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corrected").field("offset", &self.offset()).finish_non_exhaustive()
    }
}

impl Corrected {
    pub fn new(inner: std::sync::Arc<dyn Clock>) -> Self {
        Self { inner, offset: std::sync::atomic::AtomicI64::new(0) }
    }

    /// The correction in force (controller minus machine).
    pub fn offset(&self) -> SignedDuration {
        SignedDuration::from_secs(self.offset.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Learns the controller's time `controller`, read when the machine's (uncorrected) clock
    /// said `local`. Returns the offset now in force. Within [`CLOCK_TOLERANCE`] the correction
    /// is dropped; beyond [`CLOCK_MAX_CORRECTION`] it is refused and the clock left as it was.
    pub fn learn(&self, local: Timestamp, controller: Timestamp) -> SignedDuration {
        let measured = controller.duration_since(local);
        let before = self.offset();
        let after = if measured.abs() < CLOCK_TOLERANCE {
            SignedDuration::ZERO
        } else if measured.abs() > CLOCK_MAX_CORRECTION {
            tracing::error!(
                offset_s = measured.as_secs(),
                "this machine's clock and the controller's differ by more than a day; not following the controller's (check both clocks)"
            );
            before
        } else {
            SignedDuration::from_secs(measured.as_secs())
        };
        if (after - before).abs() >= CLOCK_TOLERANCE {
            if after.is_zero() {
                tracing::info!("this machine's clock agrees with the controller's again; no correction");
            } else {
                tracing::warn!(
                    offset_s = after.as_secs(),
                    "this machine's clock is {} s {} the controller's: schedules and reported times follow the controller's clock (fix this machine's time: NTP, time zone)",
                    after.as_secs().abs(),
                    if after.is_positive() { "behind" } else { "ahead of" }
                );
            }
        }
        self.offset.store(after.as_secs(), std::sync::atomic::Ordering::Relaxed);
        after
    }

    /// The machine's own clock, uncorrected.
    pub fn local_now(&self) -> Timestamp {
        self.inner.now()
    }
}

impl Clock for Corrected {
    fn now(&self) -> Timestamp {
        let local = self.inner.now();
        local.checked_add(self.offset()).unwrap_or(local)
    }

    fn mono(&self) -> Duration {
        self.inner.mono()
    }
}

/// What is persisted per policy (`schedule.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// When this agent first had the policy (a new interval policy is due at once; a new cron
    /// policy waits for its first slot after this).
    pub first_seen: Timestamp,
    /// The slot the policy last ran for (cron: the cron instant; interval: the start time).
    pub last_slot: Option<Timestamp>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    policies: BTreeMap<String, PolicyState>,
}

/// A run to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub policy_id: String,
    /// When the policy's window closes (a run still going then is reported as overrunning).
    pub window_end: Option<Timestamp>,
}

/// The schedule's state; see the module documentation.
#[derive(Debug, Default)]
pub struct Scheduler {
    states: BTreeMap<String, PolicyState>,
    /// Temporary failures: (when to retry, consecutive failures). Not persisted: a restarted
    /// agent starts its backoff again at one minute.
    retries: HashMap<String, (Timestamp, u32)>,
    last_eval: Option<(Timestamp, Duration)>,
    /// Machine id bytes, the first half of every jitter key.
    machine: Vec<u8>,
    /// Policies whose schedule could not be read (reported once).
    unreadable: HashSet<String>,
}

/// The slot a run starting at `now` is for. A cron run started `offset` late (jitter) belongs
/// to the slot `offset` earlier, even when the jitter is longer than the cron's period.
fn slot_of_run(sched: &Schedule, now: Timestamp, offset: u64) -> Timestamp {
    match sched.trigger {
        cofre_policy::schedule::Trigger::Cron(_) => {
            let back = SignedDuration::from_secs(i64::try_from(offset).unwrap_or(0));
            sched.slot_for_run(now.checked_sub(back).unwrap_or(now))
        }
        _ => now,
    }
}

/// The schedule a plan policy states (None: on demand only).
///
/// # Errors
/// A message naming the bad part, should a plan ever carry a schedule the controller should
/// have refused.
pub fn schedule_of(p: &pb::PlanPolicy) -> Result<Option<Schedule>, String> {
    let spec = match &p.schedule {
        Some(s) => ScheduleSpec {
            cron: Some(s.cron.clone()).filter(|c| !c.is_empty()),
            interval_seconds: Some(s.interval_seconds).filter(|i| *i > 0),
            timezone: Some(s.timezone.clone()).filter(|t| !t.is_empty()),
            jitter_seconds: s.jitter_seconds,
            window: (!s.window_start.is_empty() || !s.window_end.is_empty())
                .then(|| WindowSpec { start: s.window_start.clone(), end: s.window_end.clone() }),
        },
        // A plan from a controller that predates schedules.
        None if p.interval_seconds > 0 => {
            ScheduleSpec { interval_seconds: Some(p.interval_seconds), ..Default::default() }
        }
        None => return Ok(None),
    };
    spec.parse("schedule").map(Some).map_err(|errs| {
        errs.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
    })
}

impl Scheduler {
    /// Loads the persisted state (either format this agent ever wrote); times found in the
    /// future count as now.
    pub fn load(raw: Option<&[u8]>, machine: &[u8], now: Timestamp) -> Self {
        let mut states = BTreeMap::new();
        if let Some(raw) = raw {
            if let Ok(p) = serde_json::from_slice::<Persisted>(raw) {
                states = p.policies;
            } else if let Ok(old) = serde_json::from_slice::<BTreeMap<String, Timestamp>>(raw) {
                // The first format: the last start time of each (interval) policy.
                states = old
                    .into_iter()
                    .map(|(id, t)| (id, PolicyState { first_seen: t, last_slot: Some(t) }))
                    .collect();
            }
        }
        for s in states.values_mut() {
            s.first_seen = s.first_seen.min(now);
            s.last_slot = s.last_slot.map(|t| t.min(now));
        }
        Self { states, machine: machine.to_vec(), ..Default::default() }
    }

    /// The state to persist.
    pub fn to_json(&self) -> Vec<u8> {
        let p = Persisted { version: 2, policies: self.states.clone() };
        serde_json::to_vec_pretty(&p).unwrap_or_default()
    }

    pub fn state(&self, policy: &str) -> Option<PolicyState> {
        self.states.get(policy).copied()
    }

    /// Notices a backward wall-clock jump since the last evaluation and moves every recorded
    /// time back by it.
    fn follow_clock(&mut self, clock: &dyn Clock) -> bool {
        let (now, mono) = (clock.now(), clock.mono());
        let mut moved = false;
        if let Some((w0, m0)) = self.last_eval {
            let wall = now.duration_since(w0);
            let elapsed = SignedDuration::try_from(mono.saturating_sub(m0)).unwrap_or(SignedDuration::MAX);
            let drift = wall.checked_sub(elapsed).unwrap_or(SignedDuration::ZERO);
            if drift < -JUMP_TOLERANCE {
                tracing::warn!(
                    seconds = drift.as_secs(),
                    "the wall clock jumped backwards; moving the schedule with it"
                );
                let shift = |t: Timestamp| t.checked_add(drift).unwrap_or(t);
                for s in self.states.values_mut() {
                    s.first_seen = shift(s.first_seen);
                    s.last_slot = s.last_slot.map(shift);
                }
                for r in self.retries.values_mut() {
                    r.0 = shift(r.0);
                }
                moved = true;
            }
        }
        self.last_eval = Some((now, mono));
        moved
    }

    /// The policies of `plan` due now (skipping `busy` ones), with their slots recorded. The
    /// second value says whether the persisted state changed.
    pub fn due(&mut self, plan: &pb::Plan, busy: &HashSet<String>, clock: &dyn Clock) -> (Vec<Due>, bool) {
        let mut changed = self.follow_clock(clock);
        let now = clock.now();
        let known: HashSet<&str> = plan.policies.iter().map(|p| p.id.as_str()).collect();
        let before = self.states.len();
        self.states.retain(|id, _| known.contains(id.as_str()));
        self.retries.retain(|id, _| known.contains(id.as_str()));
        changed |= self.states.len() != before;
        let mut due = Vec::new();
        for p in &plan.policies {
            let sched = match schedule_of(p) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    if self.unreadable.insert(p.id.clone()) {
                        tracing::error!(policy = %p.id, error = %e, "cannot read this policy's schedule; it runs on demand only");
                    }
                    continue;
                }
            };
            let state = *self.states.entry(p.id.clone()).or_insert_with(|| {
                changed = true;
                PolicyState { first_seen: now, last_slot: None }
            });
            if busy.contains(&p.id) || !sched.in_window(now) {
                continue;
            }
            let offset = jitter_offset(sched.jitter_seconds, &self.jitter_key(&p.id));
            let regular = sched.next_start(state.last_slot, state.first_seen, offset);
            let retry = self.retries.get(&p.id).map(|r| r.0);
            let is_due = regular.is_some_and(|t| t <= now) || retry.is_some_and(|t| t <= now);
            if !is_due {
                continue;
            }
            if let Some(s) = self.states.get_mut(&p.id) {
                s.last_slot = Some(slot_of_run(&sched, now, offset));
            }
            if let Some(r) = self.retries.get_mut(&p.id) {
                // Consumed: the next one is set by the outcome of this run.
                r.0 = Timestamp::MAX;
            }
            changed = true;
            due.push(Due { policy_id: p.id.clone(), window_end: sched.window_end_after(now) });
        }
        (due, changed)
    }

    /// The jitter key: machine id bytes, then policy id bytes.
    fn jitter_key(&self, policy: &str) -> Vec<u8> {
        cofre_policy::schedule::backup_jitter_key(&self.machine, policy)
    }

    /// A run-now of an interval policy counts as its last run (the next one is an interval
    /// later); cron policies keep their slots.
    pub fn record_run_now(&mut self, p: &pb::PlanPolicy, now: Timestamp) {
        if let Ok(Some(sched)) = schedule_of(p)
            && matches!(sched.trigger, cofre_policy::schedule::Trigger::Interval { .. })
        {
            let s =
                self.states.entry(p.id.clone()).or_insert(PolicyState { first_seen: now, last_slot: None });
            s.last_slot = Some(now);
        }
    }

    /// After a scheduled policy's run: a temporary failure is retried after 1, 2, 4 …
    /// minutes, never later than the next regular run; success or a permanent failure clears
    /// the retry (something must change first, or nothing needs to).
    pub fn after_run(&mut self, p: &pb::PlanPolicy, temporary_failure: bool, now: Timestamp) {
        if !temporary_failure {
            self.retries.remove(&p.id);
            return;
        }
        let Ok(Some(sched)) = schedule_of(p) else { return };
        let attempts = self.retries.get(&p.id).map_or(0, |r| r.1) + 1;
        let backoff = SignedDuration::from_secs(60_i64 << (attempts - 1).min(16));
        let at = now.checked_add(backoff).unwrap_or(Timestamp::MAX);
        let state =
            self.states.get(&p.id).copied().unwrap_or(PolicyState { first_seen: now, last_slot: None });
        let offset = jitter_offset(sched.jitter_seconds, &self.jitter_key(&p.id));
        let regular = sched.next_start(state.last_slot, state.first_seen, offset);
        if regular.is_some_and(|r| r <= at) {
            // The regular run comes first: no extra retry.
            self.retries.remove(&p.id);
        } else {
            tracing::info!(policy = %p.id, attempt = attempts, retry_in_s = backoff.as_secs(), "temporary failure: retrying sooner");
            self.retries.insert(p.id.clone(), (at, attempts));
        }
    }
}

#[cfg(test)]
mod tests;
