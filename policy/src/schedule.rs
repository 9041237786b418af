//! When a policy's next run starts: cron in a time zone or an interval, a stable per-machine
//! jitter, an allowed window, and the DST rules.
//!
//! What belongs here: turning a trigger, a time zone, a jitter and a window into instants.
//! Cron syntax and civil-minute searching live in `cron`; nothing here reads a clock.
//!
//! **Civil time to instant (Cofre's DST rules).** A cron minute or a window boundary is a civil
//! time in the schedule's zone, mapped to one instant:
//! - a civil time that exists once maps to it;
//! - a civil time skipped by a spring-forward gap maps to the transition instant, the first
//!   instant after the gap (not jiff's "compatible" rule, which would shift it by the gap's
//!   length): every matching minute inside one gap becomes that same instant, so one run;
//! - a civil time repeated by a fall-back fold maps to its first (earlier) occurrence; the
//!   second occurrence is not a new slot.
//!
//! This mapping never decreases as civil time increases (times in a gap all share the instant
//! that follows them; a fold's times map to its first pass, which precedes everything after the
//! fold). The searches rely on that: the matches of a cron expression, walked in civil order,
//! give instants in order, so "the first instant after `t`" is found by walking forward from the
//! civil time of `t` past the few matches that still map at or before `t` (the rest of a fold or
//! of a gap), and symmetrically backwards.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::cron::CronExpr;

/// Bounds the walks over matches that map at or before the searched instant. Those matches lie
/// in one gap or in one fold's second pass, each under a day even in historic data (Samoa
/// skipped 2011-12-30 whole): two days of minutes is ample, and the bound keeps a corrupt zone
/// from looping.
const MAX_STEPS: usize = 2 * 24 * 60;

/// How many days ahead a window opening is looked for: a valid window opens every day except
/// when its opening and closing fall in the same DST gap, which happens at most once in a row.
const MAX_WINDOW_DAYS: usize = 8;

/// What starts a policy's runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Only on demand: no run is ever scheduled.
    Manual,
    /// A fixed time after the previous run.
    Interval { seconds: u64 },
    /// At the matching minutes of a cron expression, in the schedule's time zone.
    Cron(CronExpr),
}

/// The local times at which runs may start: `[start, end)`; `end < start` crosses midnight.
/// `start == end` is invalid ([`Window::new`] refuses it) and such a window never opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Time,
    pub end: Time,
}

/// A window whose start and end are equal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {0}–{0} is empty: start and end must differ (an end before the start crosses midnight)")]
pub struct EmptyWindow(Time);

impl Window {
    /// A window from `start` to `end`, refused when they are equal.
    pub fn new(start: Time, end: Time) -> Result<Window, EmptyWindow> {
        let window = Window { start, end };
        if window.is_empty() { Err(EmptyWindow(start)) } else { Ok(window) }
    }

    fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// A policy's schedule: what triggers it, in which zone, how much jitter, within which window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub trigger: Trigger,
    pub tz: TimeZone,
    pub jitter_seconds: u64,
    pub window: Option<Window>,
}

/// The jitter key of a machine's backups under a policy: the machine id's 16 bytes, then the
/// policy id as text. The agent schedules with it; the controller predicts runs with it.
pub fn backup_jitter_key(machine: &[u8], policy: &str) -> Vec<u8> {
    let mut k = machine.to_vec();
    k.extend_from_slice(policy.as_bytes());
    k
}

/// A stable per-machine jitter offset in `[0, jitter_seconds]`: the first 16 bytes of the
/// SHA-256 of `key` (for backups: [`backup_jitter_key`]), read as a
/// big-endian `u128`, reduced modulo `jitter_seconds + 1`. The controller and the agent must
/// agree on it, so it depends on nothing but these bytes.
pub fn jitter_offset(jitter_seconds: u64, key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut head = [0; 16];
    head.copy_from_slice(&digest[..16]);
    // 128 bits reduced modulo at most 2^64: the bias is below 2^-64.
    let reduced = u128::from_be_bytes(head) % (u128::from(jitter_seconds) + 1);
    u64::try_from(reduced).unwrap_or(jitter_seconds)
}

impl Schedule {
    /// The instant at which the next run may start, or None for Manual.
    ///
    /// `last`: the slot recorded when the policy last ran (None: never ran); `since`: when this
    /// policy was first seen (used when `last` is None); `offset`: the jitter offset in seconds
    /// from [`jitter_offset`].
    /// - Interval: `last + interval`, or `since` when never run (a new interval policy is due at
    ///   once); no jitter except at window openings.
    /// - Cron: the first cron instant strictly after `last.unwrap_or(since)`, plus `offset`.
    /// - Window: a candidate outside the window moves to the next window opening after it,
    ///   plus `offset`, unless that would reach the window's end (then the opening itself).
    ///
    /// None also when the instant would lie beyond jiff's range (year 9999) or the window is
    /// empty.
    pub fn next_start(&self, last: Option<Timestamp>, since: Timestamp, offset: u64) -> Option<Timestamp> {
        let offset = SignedDuration::from_secs(i64::try_from(offset).ok()?);
        let candidate = match &self.trigger {
            Trigger::Manual => return None,
            Trigger::Interval { seconds } => match last {
                None => since,
                Some(last) => {
                    last.checked_add(SignedDuration::from_secs(i64::try_from(*seconds).ok()?)).ok()?
                }
            },
            Trigger::Cron(cron) => self.cron_after(cron, last.unwrap_or(since))?.checked_add(offset).ok()?,
        };
        let Some(window) = self.window else {
            return Some(candidate);
        };
        if self.window_around(window, candidate).is_some() {
            return Some(candidate);
        }
        let (open, close) = self.next_opening(window, candidate)?;
        match open.checked_add(offset) {
            Ok(start) if start < close => Some(start),
            _ => Some(open),
        }
    }

    /// The longest time between two consecutive starts among the next `samples` starts after
    /// `from` (jitter left out): the cadence a compliance rule allows for. None for manual
    /// schedules or when no two starts exist.
    pub fn longest_gap(&self, from: Timestamp, samples: usize) -> Option<SignedDuration> {
        let mut t = self.next_start(Some(from), from, 0)?;
        let mut longest: Option<SignedDuration> = None;
        for _ in 0..samples {
            let next = self.next_start(Some(t), t, 0)?;
            let gap = next.duration_since(t);
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            t = next;
        }
        longest
    }

    /// The slot to record for a run that starts at `now`: for cron, the latest cron instant at
    /// or before `now` (so every slot missed while the machine was off collapses into this one
    /// run); for intervals and manual runs, `now`.
    pub fn slot_for_run(&self, now: Timestamp) -> Timestamp {
        match &self.trigger {
            // No earlier match at all (only before year -9999): the run is its own slot.
            Trigger::Cron(cron) => self.cron_at_or_before(cron, now).unwrap_or(now),
            Trigger::Manual | Trigger::Interval { .. } => now,
        }
    }

    /// Whether a run may start at `t` (always true without a window).
    pub fn in_window(&self, t: Timestamp) -> bool {
        match self.window {
            None => true,
            Some(window) => self.window_around(window, t).is_some(),
        }
    }

    /// When the window containing `started` closes (None without a window or when `started` is
    /// outside one): a run still going then continues and is reported as overrunning.
    pub fn window_end_after(&self, started: Timestamp) -> Option<Timestamp> {
        self.window_around(self.window?, started).map(|(_, close)| close)
    }

    /// The first cron instant strictly after `t`.
    fn cron_after(&self, cron: &CronExpr, t: Timestamp) -> Option<Timestamp> {
        // The civil time of `t` maps back to `t` or, in a fold's second pass, to its first pass:
        // at or before `t` either way, and so does every earlier civil time (module doc).
        let mut civil = self.tz.to_datetime(t);
        for _ in 0..MAX_STEPS {
            let minute = cron.next_after(civil)?;
            let at = civil_to_instant(&self.tz, minute)?;
            if at > t {
                return Some(at);
            }
            civil = minute;
        }
        None
    }

    /// The latest cron instant at or before `t`.
    fn cron_at_or_before(&self, cron: &CronExpr, t: Timestamp) -> Option<Timestamp> {
        let civil = self.tz.to_datetime(t);
        // In a fold's second pass, civil times later than `civil` up to the fold's end map to
        // the first pass, before `t`: start the walk at `civil` plus the fold's length, which
        // reaches past the fold's end, and step back over what maps after `t`.
        let mut ceiling = match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Fold { before, after } if self.tz.to_offset(t) == after => {
                let fold = i64::from(before.seconds()) - i64::from(after.seconds());
                civil.checked_add(SignedDuration::from_secs(fold)).ok()?
            }
            _ => civil,
        };
        for _ in 0..MAX_STEPS {
            let minute = cron.prev_at_or_before(ceiling)?;
            let at = civil_to_instant(&self.tz, minute)?;
            if at <= t {
                return Some(at);
            }
            ceiling = minute.checked_sub(SignedDuration::from_mins(1)).ok()?;
        }
        None
    }

    /// The window's occurrence that opens on `day`, as instants `[open, close)`; None when it is
    /// empty that day (opening and closing in the same DST gap) or the window is invalid.
    fn occurrence(&self, window: Window, day: Date) -> Option<(Timestamp, Timestamp)> {
        if window.is_empty() {
            return None;
        }
        let open = civil_to_instant(&self.tz, day.to_datetime(window.start))?;
        let closing_day = if window.end < window.start { day.tomorrow().ok()? } else { day };
        let close = civil_to_instant(&self.tz, closing_day.to_datetime(window.end))?;
        (open < close).then_some((open, close))
    }

    /// The occurrence of the window that contains `t`, if any.
    fn window_around(&self, window: Window, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
        // An occurrence containing `t` opened on the civil day of `t` or the day before (when it
        // crosses midnight); the day after is looked at too, as a DST shift near midnight can
        // move an opening across the date line of `t`.
        let today = self.tz.to_datetime(t).date();
        [today.yesterday().ok(), Some(today), today.tomorrow().ok()]
            .into_iter()
            .flatten()
            .filter_map(|day| self.occurrence(window, day))
            .filter(|&(open, close)| open <= t && t < close)
            .max_by_key(|&(_, close)| close)
    }

    /// The first occurrence of the window that opens strictly after `t`.
    fn next_opening(&self, window: Window, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let mut day = self.tz.to_datetime(t).date().yesterday().ok()?;
        for _ in 0..MAX_WINDOW_DAYS {
            if let Some((open, close)) = self.occurrence(window, day)
                && open > t
            {
                return Some((open, close));
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

/// The instant of a civil time in `tz` under Cofre's DST rules (module doc). None only at the
/// edges of jiff's range.
fn civil_to_instant(tz: &TimeZone, civil: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil).ok(),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the later offset, a gap time names an instant shortly before the
            // transition (it lies in [transition + before, transition + after) in civil time),
            // so the next transition after that instant is the one that opened the gap.
            let before_gap = after.to_timestamp(civil).ok()?;
            tz.following(before_gap).next().map(|transition| transition.timestamp())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_pinned_to_its_definition() {
        // SHA-256("") starts e3b0c44298fc1c149afbf4c8996fb924: the whole contract in one value,
        // so a change of hash, byte order or width cannot pass unnoticed.
        let head = u128::from_be_bytes(*b"\xe3\xb0\xc4\x42\x98\xfc\x1c\x14\x9a\xfb\xf4\xc8\x99\x6f\xb9\x24");
        assert_eq!(u128::from(jitter_offset(3600, b"")), head % 3601);
        assert_eq!(u128::from(jitter_offset(u64::MAX, b"")), head % (u128::from(u64::MAX) + 1));
        assert_eq!(jitter_offset(0, b"anything"), 0);
    }
}
