//! Which snapshots a retention policy keeps: restic's `forget` rules, exactly as restic 0.14.0
//! applies them (the version Cofre pins), proven against that binary by
//! `tests/retention_restic.rs`.
//!
//! What belongs here: the policy ([`KeepPolicy`]), what it reads of a snapshot
//! ([`SnapshotMeta`]) and [`apply`], which decides every snapshot. In submodules, re-exported
//! here: the durations (`duration`: [`KeepDuration`]), the grouping (`group`: [`GroupBy`],
//! [`GroupKey`]) and Go's time arithmetic that restic's rules inherit (`go_time`, private).
//! Nothing here reads the clock: restic's own `time.Now()` is the `now` argument.
//!
//! # restic 0.14.0's rules, as measured
//!
//! - **Groups**: the key is the hostname, the paths and/or the tags as `--group-by` selects
//!   (default `host,paths`); paths and tags are compared sorted. Each group is decided alone.
//! - **Order**: newest first by instant. Snapshots with the same instant are ordered by id here;
//!   restic 0.14 loads snapshots in parallel and sorts with an unstable sort, so its order for
//!   them changes from run to run (measured: `--keep-last 1` over six snapshots of one instant
//!   kept one id in 22 runs of 25 and another in 3).
//! - **An empty policy keeps everything** (reason `policy is empty`). A zero duration counts as
//!   not set. A policy of only `--keep-tag` keeps only the tagged snapshots.
//! - **Tags** (`--keep-tag`): a snapshot matches a tag list when it has every tag of it, except
//!   restic's quirk that an empty tag (`--keep-tag ''`) matches a snapshot without tags and ends
//!   the check there: `['', 'a']` matches an untagged snapshot and nothing else, while
//!   `['a', '']` matches nothing at all.
//! - **`--keep-within`** and the `--keep-within-*` windows are measured back from the group's
//!   latest snapshot **that is not in the future** (`time < now`); when every snapshot of the
//!   group is in the future, from Go's zero time (year 1), so all of them are within. The
//!   window's start is Go's `latest.AddDate(-y, -m, -d)` (month overflow normalised into the
//!   next month: 31 March minus one month is 3 March, or 2 March in a leap year), minus the
//!   hours; a snapshot is within when it is strictly after that start.
//! - **Buckets** (hourly, daily, weekly with ISO weeks, monthly, yearly) are taken from the
//!   snapshot's wall clock **in its own recorded UTC offset**: 23:30 at −05:00 on 1 January is
//!   1 January, even though it is 2 January in UTC. The newest snapshot of each bucket value is
//!   kept while the count lasts; a bucket only spends its count on a snapshot it keeps.
//! - **The local time zone leaks into `--keep-within*`**: Go gives a parsed time restic's local
//!   zone instead of a fixed offset when that zone had the same offset at that instant, and
//!   `AddDate` then walks the calendar through the zone's DST changes. restic run with
//!   `TZ=America/New_York` measures a 12-day window from 20 March 12:00 EDT back to 8 March
//!   12:00 *EST* (an hour later than with the fixed −04:00), so it removed a snapshot of 8 March
//!   11:30 EST that restic run in UTC keeps. [`apply`] is restic run in UTC; [`apply_in_zone`]
//!   reproduces restic run in another zone, Go's rule for wall times that fall in a DST gap
//!   included.
//! - **Durations** are parsed as restic does ([`KeepDuration`]): `1y5m7d2h`, units in any
//!   order, a repeated unit overrides, negative numbers allowed (`-1d` puts the window's start
//!   after the latest snapshot), surrounding white space ignored, `""` is zero. restic panics on
//!   numbers it cannot read (non-ASCII digits, more than 64 bits); they are errors here, and so
//!   are numbers beyond 32 bits.
//!
//! # How later restic versions differ (do not "fix" these here)
//!
//! - Counts: 0.14 only honours counts above zero; `--keep-last -1` is accepted, makes the policy
//!   non-empty and keeps nothing (measured: all three snapshots of the group removed). 0.16's
//!   manual reads `-1`/`unlimited` as "all". Counts here are unsigned: neither exists.
//! - 0.17 (per its manual) also keeps the group's oldest snapshot when a count still has room
//!   at the end; 0.14 does not (measured: `--keep-daily 5` over three snapshots of one day
//!   keeps only the newest).
//! - Later versions sort with a stable sort (ties then follow the loading order, still not the
//!   ids) and guard against policies that would remove everything.
//! - Leaving future snapshots out of "latest" is not a later change: 0.14.0 already does it
//!   (measured: with a snapshot in 2030, `--keep-within 1d` still counted from the newest past
//!   snapshot), hence the `now` argument.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;

mod duration;
mod go_time;
mod group;

pub use duration::{DurationError, DurationErrorKind, KeepDuration};
pub use group::{GroupBy, GroupByError, GroupKey, group_key};

use go_time::{Bucket, Wall, latest_before, nanos, window_start};

/// restic's `forget` options, one field per `--keep-*` flag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Option<KeepDuration>,
    pub within_hourly: Option<KeepDuration>,
    pub within_daily: Option<KeepDuration>,
    pub within_weekly: Option<KeepDuration>,
    pub within_monthly: Option<KeepDuration>,
    pub within_yearly: Option<KeepDuration>,
    /// --keep-tag: each entry is one taglist; a snapshot matches a taglist when it has every tag
    /// of it (see the module documentation for the empty tag). [`parse_tag_list`] splits a
    /// `--keep-tag` value as restic does.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    /// restic keeps everything when the policy is empty. A zero duration counts as not given.
    pub fn is_empty(&self) -> bool {
        let counts = [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly];
        counts.iter().all(|&count| count == 0)
            && set(self.within).is_none()
            && self.bucketed_windows().iter().all(|(window, _)| window.is_none())
            && self.tags.is_empty()
    }

    /// The `--keep-within-*` durations that are set, from hourly to yearly, with their bucket.
    fn bucketed_windows(&self) -> [(Option<KeepDuration>, Bucket); 5] {
        [
            (set(self.within_hourly), Bucket::Hour),
            (set(self.within_daily), Bucket::Day),
            (set(self.within_weekly), Bucket::Week),
            (set(self.within_monthly), Bucket::Month),
            (set(self.within_yearly), Bucket::Year),
        ]
    }
}

/// A duration restic counts as given: present and not zero.
fn set(duration: Option<KeepDuration>) -> Option<KeepDuration> {
    duration.filter(|duration| !duration.is_zero())
}

/// Splits one `--keep-tag` value as restic does: at every comma, white space trimmed around
/// each tag, empty tags kept (`""` becomes `[""]`, restic's "no tags" list).
pub fn parse_tag_list(value: &str) -> Vec<String> {
    value.split(',').map(|tag| tag.trim().to_owned()).collect()
}

/// What retention needs to know about one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub id: String,
    pub time: Timestamp,
    /// The UTC offset the snapshot's time was recorded with (restic's JSON keeps it, and the
    /// buckets are computed in it).
    pub utc_offset_seconds: i32,
    pub hostname: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
}

/// A snapshot time that is not RFC 3339 with an offset.
#[derive(Debug, thiserror::Error)]
#[error("invalid snapshot time {input:?}: {reason}")]
pub struct SnapshotTimeError {
    pub input: String,
    pub reason: String,
}

/// Reads a snapshot's `time` as restic writes it (RFC 3339 with an offset, e.g.
/// `2023-01-01T23:30:00.123456789-05:00`) into the instant and the recorded offset.
pub fn parse_snapshot_time(input: &str) -> Result<(Timestamp, i32), SnapshotTimeError> {
    let fail = |reason: String| SnapshotTimeError { input: input.to_owned(), reason };
    let pieces = jiff::fmt::temporal::Pieces::parse(input).map_err(|e| fail(e.to_string()))?;
    let offset = pieces.offset().ok_or_else(|| fail("no UTC offset".to_owned()))?.to_numeric_offset();
    let time = pieces.time().ok_or_else(|| fail("no time of day".to_owned()))?;
    let instant = offset.to_timestamp(pieces.date().to_datetime(time)).map_err(|e| fail(e.to_string()))?;
    Ok((instant, offset.seconds()))
}

/// The verdict on one snapshot, with restic's reasons (its `forget --json` `matches`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Empty when the snapshot is removed.
    pub reasons: Vec<String>,
    pub group: GroupKey,
}

/// One decision per input snapshot (same order as the input): grouped as restic groups, then
/// restic's policy per group, as restic 0.14.0 decides when run in UTC at `now`.
pub fn apply(
    policy: &KeepPolicy,
    group_by: GroupBy,
    snapshots: &[SnapshotMeta],
    now: Timestamp,
) -> Vec<Decision> {
    decide(policy, group_by, snapshots, now, None)
}

/// [`apply`] as restic 0.14.0 decides when run with `TZ` set to `zone`: only the
/// `--keep-within*` windows can differ (see the module documentation). A zero offset never
/// selects the zone: restic writes it as `Z`, which Go reads as UTC.
pub fn apply_in_zone(
    policy: &KeepPolicy,
    group_by: GroupBy,
    snapshots: &[SnapshotMeta],
    now: Timestamp,
    zone: &TimeZone,
) -> Vec<Decision> {
    decide(policy, group_by, snapshots, now, Some(zone))
}

fn decide(
    policy: &KeepPolicy,
    group_by: GroupBy,
    snapshots: &[SnapshotMeta],
    now: Timestamp,
    zone: Option<&TimeZone>,
) -> Vec<Decision> {
    let keys: Vec<GroupKey> = snapshots.iter().map(|snapshot| group_key(group_by, snapshot)).collect();
    let mut groups: BTreeMap<&GroupKey, Vec<usize>> = BTreeMap::new();
    for (index, key) in keys.iter().enumerate() {
        groups.entry(key).or_default().push(index);
    }
    let mut verdicts: Vec<Option<Vec<String>>> = vec![None; snapshots.len()];
    for mut members in groups.into_values() {
        // Newest first; equal instants by id, where restic's order is not reproducible.
        members.sort_by(|&a, &b| {
            let (a, b) = (&snapshots[a], &snapshots[b]);
            b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id))
        });
        let sorted: Vec<&SnapshotMeta> = members.iter().map(|&index| &snapshots[index]).collect();
        for (index, reasons) in members.iter().zip(decide_group(policy, &sorted, now, zone)) {
            verdicts[*index] = reasons;
        }
    }
    snapshots
        .iter()
        .zip(keys)
        .zip(verdicts)
        .map(|((snapshot, group), reasons)| Decision {
            id: snapshot.id.clone(),
            keep: reasons.is_some(),
            reasons: reasons.unwrap_or_default(),
            group,
        })
        .collect()
}

/// restic's `ApplyPolicy` on one group sorted newest first: the reasons to keep each snapshot,
/// `None` for the ones to remove.
fn decide_group(
    policy: &KeepPolicy,
    sorted: &[&SnapshotMeta],
    now: Timestamp,
    zone: Option<&TimeZone>,
) -> Vec<Option<Vec<String>>> {
    if policy.is_empty() {
        return sorted.iter().map(|_| Some(vec!["policy is empty".to_owned()])).collect();
    }

    struct Counter {
        bucket: Bucket,
        left: u32,
        last: i64,
        reason: &'static str,
    }
    let mut counters = [
        (policy.last, Bucket::Position, "last snapshot"),
        (policy.hourly, Bucket::Hour, "hourly snapshot"),
        (policy.daily, Bucket::Day, "daily snapshot"),
        (policy.weekly, Bucket::Week, "weekly snapshot"),
        (policy.monthly, Bucket::Month, "monthly snapshot"),
        (policy.yearly, Bucket::Year, "yearly snapshot"),
    ]
    // restic starts every bucket at -1, so a first value of -1 (year -1 for the yearly
    // bucket) counts as already kept.
    .map(|(left, bucket, reason)| Counter { bucket, left, last: -1, reason });

    struct Window {
        duration: KeepDuration,
        start: i128,
        bucket: Bucket,
        last: i64,
    }
    let latest = latest_before(sorted, now, zone);
    let within = set(policy.within).map(|duration| (duration, window_start(latest, duration)));
    let mut windows: Vec<Window> = policy
        .bucketed_windows()
        .into_iter()
        .filter_map(|(duration, bucket)| {
            let duration = duration?;
            Some(Window { duration, start: window_start(latest, duration), bucket, last: -1 })
        })
        .collect();

    let mut verdicts = Vec::with_capacity(sorted.len());
    for (position, snapshot) in sorted.iter().enumerate() {
        // restic's order of checks, which is also the order of the reasons: tags, plain
        // --keep-within, the counted buckets, the bucketed windows.
        let mut reasons = Vec::new();
        for list in &policy.tags {
            if has_tags(snapshot, list) {
                reasons.push(format!("has tags [{}]", list.join(", ")));
            }
        }
        let instant = nanos(snapshot.time);
        if let Some((duration, start)) = within
            && instant > start
        {
            reasons.push(format!("within {duration}"));
        }
        let wall = Wall::of(instant, snapshot.utc_offset_seconds);
        for counter in counters.iter_mut().filter(|counter| counter.left > 0) {
            let value = counter.bucket.value(&wall, position);
            if value != counter.last {
                counter.last = value;
                counter.left -= 1;
                reasons.push(counter.reason.to_owned());
            }
        }
        for window in windows.iter_mut().filter(|window| instant > window.start) {
            let value = window.bucket.value(&wall, position);
            if value != window.last {
                window.last = value;
                reasons.push(format!("{} within {}", window.bucket.name(), window.duration));
            }
        }
        verdicts.push((!reasons.is_empty()).then_some(reasons));
    }
    verdicts
}

/// restic's `HasTags`, quirk included: an empty tag matches a snapshot without tags and
/// answers at once, whatever else the list holds.
fn has_tags(snapshot: &SnapshotMeta, list: &[String]) -> bool {
    for tag in list {
        if tag.is_empty() && snapshot.tags.is_empty() {
            return true;
        }
        if !snapshot.tags.contains(tag) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
