//! Which snapshots a retention policy keeps: restic's `forget` rules, exactly as restic 0.14.0
//! applies them (the version Cofre pins), proven against that binary by
//! `tests/retention_restic.rs`.
//!
//! What belongs here: the policy ([`KeepPolicy`], [`KeepDuration`]), the grouping
//! ([`GroupBy`], [`GroupKey`]) and [`apply`], which decides every snapshot. Nothing here reads
//! the clock: restic's own `time.Now()` is the `now` argument.
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
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

/// restic's duration for `--keep-within*`: `"1y5m7d2h"` (years, months, days, hours), parsed
/// exactly as restic parses it (see the module documentation). Serialised as that string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeepDuration {
    pub years: i32,
    pub months: i32,
    pub days: i32,
    pub hours: i32,
}

impl KeepDuration {
    /// restic treats a zero duration as "option not given".
    pub fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }
}

/// Why a duration string is not one restic would accept (or one restic would crash on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {kind} (expected e.g. \"1y5m7d2h\": units y, m, d, h)")]
pub struct DurationError {
    pub input: String,
    pub kind: DurationErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationErrorKind {
    #[error("no number found")]
    NoNumber,
    #[error("no unit found after number {0}")]
    NoUnit(i64),
    #[error("invalid unit {unit:?} found after number {number}")]
    InvalidUnit { unit: char, number: i64 },
    /// restic panics here (Go's `strconv.Atoi` on a non-ASCII digit).
    #[error("{0:?} is not a number made of ASCII digits")]
    NotAsciiDigits(String),
    /// restic panics above 64 bits and computes with anything below; Cofre stops at 32 bits.
    #[error("number {0} is out of range")]
    OutOfRange(String),
}

impl FromStr for KeepDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |kind| DurationError { input: input.to_owned(), kind };
        let mut duration = KeepDuration::default();
        // Go's strings.TrimSpace and Rust's trim agree: both strip Unicode White_Space.
        let mut rest = input.trim();
        while !rest.is_empty() {
            let (negative, unsigned) = match rest.strip_prefix('-') {
                Some(after) => (true, after),
                None => (false, rest),
            };
            // restic collects Unicode "number" characters (Go's unicode.IsNumber, Rust's
            // char::is_numeric: categories Nd, Nl, No) and only then asks strconv for a value.
            let digits_len = unsigned.find(|c: char| !c.is_numeric()).unwrap_or(unsigned.len());
            let (digits, after) = unsigned.split_at(digits_len);
            if digits.is_empty() {
                return Err(fail(DurationErrorKind::NoNumber));
            }
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(DurationErrorKind::NotAsciiDigits(digits.to_owned())));
            }
            let out_of_range = || fail(DurationErrorKind::OutOfRange(digits.to_owned()));
            let magnitude: i64 = digits.parse().map_err(|_| out_of_range())?;
            let number = if negative { -magnitude } else { magnitude };
            let value = i32::try_from(number).map_err(|_| out_of_range())?;
            let mut chars = after.chars();
            let Some(unit) = chars.next() else {
                return Err(fail(DurationErrorKind::NoUnit(number)));
            };
            match unit {
                'y' => duration.years = value,
                'm' => duration.months = value,
                'd' => duration.days = value,
                'h' => duration.hours = value,
                _ => return Err(fail(DurationErrorKind::InvalidUnit { unit, number })),
            }
            rest = chars.as_str();
        }
        Ok(duration)
    }
}

/// restic's own rendering (it appears in the keep reasons): non-zero parts only, so the zero
/// duration is the empty string, which parses back to zero.
impl fmt::Display for KeepDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (value, unit) in [(self.years, 'y'), (self.months, 'm'), (self.days, 'd'), (self.hours, 'h')] {
            if value != 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for KeepDuration {
    type Error = DurationError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<KeepDuration> for String {
    fn from(value: KeepDuration) -> Self {
        value.to_string()
    }
}

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

/// restic's `--group-by`: which of hostname, paths and tags make up a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

/// restic's default, `host,paths`.
impl Default for GroupBy {
    fn default() -> Self {
        GroupBy { host: true, paths: true, tags: false }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown grouping option {0:?} (expected host, paths and/or tags, separated by commas)")]
pub struct GroupByError(pub String);

/// restic's syntax: comma-separated `host`/`hosts`, `path`/`paths`, `tag`/`tags`; empty items
/// are ignored, so `""` groups nothing.
impl FromStr for GroupBy {
    type Err = GroupByError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let mut group_by = GroupBy { host: false, paths: false, tags: false };
        for option in value.split(',') {
            match option {
                "host" | "hosts" => group_by.host = true,
                "path" | "paths" => group_by.paths = true,
                "tag" | "tags" => group_by.tags = true,
                "" => {}
                other => return Err(GroupByError(other.to_owned())),
            }
        }
        Ok(group_by)
    }
}

/// The `--group-by` argument restic takes for this grouping (`""` for none).
impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [(self.host, "host"), (self.paths, "paths"), (self.tags, "tags")];
        let chosen: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
        f.write_str(&chosen.join(","))
    }
}

impl TryFrom<String> for GroupBy {
    type Error = GroupByError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<GroupBy> for String {
    fn from(value: GroupBy) -> Self {
        value.to_string()
    }
}

/// A group as restic prints it in `forget --json` (`host`, `paths`, `tags`): the hostname is
/// empty when hosts are not grouped, paths and tags are sorted, and `None` when not grouped or
/// empty (restic's `null`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub hostname: String,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

/// The group `snapshot` belongs to under `group_by`.
pub fn group_key(group_by: GroupBy, snapshot: &SnapshotMeta) -> GroupKey {
    let sorted = |on: bool, list: &[String]| {
        (on && !list.is_empty()).then(|| {
            let mut list = list.to_vec();
            list.sort();
            list
        })
    };
    GroupKey {
        hostname: if group_by.host { snapshot.hostname.clone() } else { String::new() },
        paths: sorted(group_by.paths, &snapshot.paths),
        tags: sorted(group_by.tags, &snapshot.tags),
    }
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

/// Nanoseconds since the Unix epoch: wide enough for every window start restic can compute
/// from 32-bit durations, so comparisons never saturate.
fn nanos(time: Timestamp) -> i128 {
    i128::from(time.as_second()) * NANOS_PER_SECOND + i128::from(time.subsec_nanosecond())
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// A time as Go's `time.Time` holds it after restic read the snapshot JSON: the instant and the
/// location that calendar arithmetic happens in.
#[derive(Clone, Copy)]
struct GoTime<'z> {
    nanos: i128,
    location: Location<'z>,
}

#[derive(Clone, Copy)]
enum Location<'z> {
    Fixed(i32),
    Zone(&'z TimeZone),
}

impl Location<'_> {
    fn offset_at(self, unix_seconds: i64) -> i32 {
        match self {
            Location::Fixed(offset) => offset,
            Location::Zone(zone) => zone_offset(zone, unix_seconds),
        }
    }
}

fn zone_offset(zone: &TimeZone, unix_seconds: i64) -> i32 {
    // Outside jiff's range (±9999 years) the zone's rules no longer change: its edge serves.
    let clamped = unix_seconds.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let instant = Timestamp::from_second(clamped).unwrap_or(Timestamp::UNIX_EPOCH);
    zone.to_offset(instant).seconds()
}

/// restic's `findLatestTimestamp` (0.14): the newest snapshot strictly before `now`, the
/// first in sorted order among equals; Go's zero time (0001-01-01 UTC) when there is none.
fn latest_before<'z>(sorted: &[&SnapshotMeta], now: Timestamp, zone: Option<&'z TimeZone>) -> GoTime<'z> {
    const GO_ZERO_TIME_SECONDS: i128 = -62_135_596_800;
    let mut latest = GoTime { nanos: GO_ZERO_TIME_SECONDS * NANOS_PER_SECOND, location: Location::Fixed(0) };
    for snapshot in sorted {
        let instant = nanos(snapshot.time);
        if instant > latest.nanos && snapshot.time < now {
            latest = GoTime { nanos: instant, location: parsed_location(snapshot, zone) };
        }
    }
    latest
}

/// Go's `time.Parse` gives a time with a numeric offset the local zone when that zone had the
/// same offset at that instant, a fixed zone otherwise; `Z` is always UTC.
fn parsed_location<'z>(snapshot: &SnapshotMeta, zone: Option<&'z TimeZone>) -> Location<'z> {
    let offset = snapshot.utc_offset_seconds;
    match zone {
        Some(zone) if offset != 0 && zone_offset(zone, snapshot.time.as_second()) == offset => {
            Location::Zone(zone)
        }
        _ => Location::Fixed(offset),
    }
}

/// `latest.AddDate(-years, -months, -days).Add(time.Hour * time.Duration(-hours))` in Go.
fn window_start(latest: GoTime<'_>, duration: KeepDuration) -> i128 {
    let date_moved = go_add_date(
        latest,
        -i64::from(duration.years),
        -i64::from(duration.months),
        -i64::from(duration.days),
    );
    // Go multiplies two int64 Durations and wraps silently beyond ~292 years of hours.
    let hours = 3_600_000_000_000_i64.wrapping_mul(-i64::from(duration.hours));
    date_moved + i128::from(hours)
}

/// Go's `Time.AddDate`: add to the wall clock's year, month and day in the time's location,
/// let `time.Date` normalise the overflow (month 0 is December of the year before, 31 February
/// is 3 March), and map the wall clock back to an instant with Go's rule for zone changes.
fn go_add_date(time: GoTime<'_>, years: i64, months: i64, days: i64) -> i128 {
    let seconds = time.nanos.div_euclid(NANOS_PER_SECOND);
    let subsecond = time.nanos.rem_euclid(NANOS_PER_SECOND);
    // i64 holds every instant built from a jiff Timestamp and 32-bit durations.
    let seconds = i64::try_from(seconds).unwrap_or(i64::MIN);
    let local = seconds + i64::from(time.location.offset_at(seconds));
    let (year, month, day) = civil_from_days(local.div_euclid(SECONDS_PER_DAY));
    let second_of_day = local.rem_euclid(SECONDS_PER_DAY);

    let month_index = month - 1 + months;
    let year = year + years + month_index.div_euclid(12);
    let month = month_index.rem_euclid(12) + 1;
    let day_number = days_from_civil(year, month, 1) + (day - 1) + days;
    let wall = day_number * SECONDS_PER_DAY + second_of_day;

    // Go's time.Date: take the offset in force at the wall clock read as UTC, then the offset
    // in force at the instant that gives. In a DST gap this lands before the gap (02:30 on a
    // spring-forward night in New York becomes 01:30 EST), unlike jiff's "compatible" rule.
    let first = time.location.offset_at(wall);
    let offset = time.location.offset_at(wall - i64::from(first));
    i128::from(wall - i64::from(offset)) * NANOS_PER_SECOND + subsecond
}

/// The five calendar buckets and restic's "last n" position, as restic numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    Position,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Bucket {
    fn value(self, wall: &Wall, position: usize) -> i64 {
        match self {
            Bucket::Position => i64::try_from(position).unwrap_or(i64::MAX),
            Bucket::Hour => wall.year * 1_000_000 + wall.month * 10_000 + wall.day * 100 + wall.hour,
            Bucket::Day => wall.year * 10_000 + wall.month * 100 + wall.day,
            Bucket::Week => {
                let (year, week) = iso_week(wall.day_number);
                year * 100 + week
            }
            Bucket::Month => wall.year * 100 + wall.month,
            Bucket::Year => wall.year,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Bucket::Position => "last",
            Bucket::Hour => "hourly",
            Bucket::Day => "daily",
            Bucket::Week => "weekly",
            Bucket::Month => "monthly",
            Bucket::Year => "yearly",
        }
    }
}

/// A snapshot's wall clock in its recorded offset.
struct Wall {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    day_number: i64,
}

impl Wall {
    fn of(instant: i128, offset: i32) -> Wall {
        let seconds = i64::try_from(instant.div_euclid(NANOS_PER_SECOND)).unwrap_or(i64::MIN);
        let local = seconds + i64::from(offset);
        let day_number = local.div_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(day_number);
        let hour = local.rem_euclid(SECONDS_PER_DAY) / 3600;
        Wall { year, month, day, hour, day_number }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1–12; `day` may be any value
/// and simply counts on from the first of the month).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count years from March, so the leap day ends the year, in 400-year eras of 146,097 days.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01).
fn civil_from_days(day_number: i64) -> (i64, i64, i64) {
    let shifted = day_number + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// ISO 8601 week-numbering year and week of a day number: the week (Monday to Sunday) belongs
/// to the year its Thursday falls in.
fn iso_week(day_number: i64) -> (i64, i64) {
    // 1970-01-01 was a Thursday: weekday 3 counting Monday as 0.
    let weekday = (day_number + 3).rem_euclid(7);
    let thursday = day_number - weekday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(years: i32, months: i32, days: i32, hours: i32) -> KeepDuration {
        KeepDuration { years, months, days, hours }
    }

    fn ts(text: &str) -> Timestamp {
        parse_snapshot_time(text).unwrap().0
    }

    fn snapshot(id: &str, time: &str) -> SnapshotMeta {
        let (time, utc_offset_seconds) = parse_snapshot_time(time).unwrap();
        SnapshotMeta {
            id: id.to_owned(),
            time,
            utc_offset_seconds,
            hostname: "host".to_owned(),
            paths: vec!["/data".to_owned()],
            tags: Vec::new(),
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect()
    }

    fn now() -> Timestamp {
        ts("2026-01-01T00:00:00Z")
    }

    /// `AddDate` from a time recorded with `offset` in a fixed zone.
    fn add_date(time: &str, years: i64, months: i64, days: i64) -> Timestamp {
        let (instant, offset) = parse_snapshot_time(time).unwrap();
        let go = GoTime { nanos: nanos(instant), location: Location::Fixed(offset) };
        let result = go_add_date(go, years, months, days);
        Timestamp::new(
            i64::try_from(result.div_euclid(NANOS_PER_SECOND)).unwrap(),
            i32::try_from(result.rem_euclid(NANOS_PER_SECOND)).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn durations_parse_as_restic_parses_them() {
        let cases = [
            ("1y5m7d2h", duration(1, 5, 7, 2)),
            ("2h1y", duration(1, 0, 0, 2)),
            ("1d2d", duration(0, 0, 2, 0)),
            ("  3d\t", duration(0, 0, 3, 0)),
            ("", duration(0, 0, 0, 0)),
            ("0d", duration(0, 0, 0, 0)),
            ("-1d", duration(0, 0, -1, 0)),
            ("1y-2m", duration(1, -2, 0, 0)),
            ("007m", duration(0, 7, 0, 0)),
            ("-2147483648y", duration(i32::MIN, 0, 0, 0)),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<KeepDuration>(), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn invalid_durations_are_clear_errors() {
        let cases = [
            ("5", DurationErrorKind::NoUnit(5)),
            ("d", DurationErrorKind::NoNumber),
            ("+1d", DurationErrorKind::NoNumber),
            ("1d-", DurationErrorKind::NoNumber),
            ("--1d", DurationErrorKind::NoNumber),
            ("1D", DurationErrorKind::InvalidUnit { unit: 'D', number: 1 }),
            ("1w", DurationErrorKind::InvalidUnit { unit: 'w', number: 1 }),
            ("1.5d", DurationErrorKind::InvalidUnit { unit: '.', number: 1 }),
            ("1 d", DurationErrorKind::InvalidUnit { unit: ' ', number: 1 }),
            ("١d", DurationErrorKind::NotAsciiDigits("١".to_owned())),
            ("1½d", DurationErrorKind::NotAsciiDigits("1½".to_owned())),
            ("99999999999999999999d", DurationErrorKind::OutOfRange("99999999999999999999".to_owned())),
            ("2147483648d", DurationErrorKind::OutOfRange("2147483648".to_owned())),
        ];
        for (text, kind) in cases {
            let error = text.parse::<KeepDuration>().unwrap_err();
            assert_eq!(error.kind, kind, "{text:?}");
            assert!(error.to_string().contains(&format!("{text:?}")), "{error}");
        }
        let message = "1w".parse::<KeepDuration>().unwrap_err().to_string();
        assert!(message.contains("invalid unit 'w' found after number 1"), "{message}");
    }

    #[test]
    fn durations_display_as_restic_and_round_trip() {
        assert_eq!(duration(1, 5, 7, 2).to_string(), "1y5m7d2h");
        assert_eq!(duration(0, 0, 0, 36).to_string(), "36h");
        assert_eq!(duration(0, -1, 0, 0).to_string(), "-1m");
        assert_eq!(duration(0, 0, 0, 0).to_string(), "");
        for d in [
            duration(1, 5, 7, 2),
            duration(0, 0, 0, 0),
            duration(-3, 14, -1, 99),
            duration(i32::MIN, i32::MAX, 0, 1),
        ] {
            assert_eq!(d.to_string().parse::<KeepDuration>(), Ok(d));
        }
        let json = serde_json::to_string(&duration(0, 2, 0, 0)).unwrap();
        assert_eq!(json, "\"2m\"");
        assert_eq!(serde_json::from_str::<KeepDuration>("\"1y6h\"").unwrap(), duration(1, 0, 0, 6));
        assert!(serde_json::from_str::<KeepDuration>("\"1w\"").is_err());
    }

    #[test]
    fn group_by_parses_and_prints_restic_syntax() {
        assert_eq!("host,paths".parse::<GroupBy>(), Ok(GroupBy::default()));
        assert_eq!("hosts,tag".parse::<GroupBy>(), Ok(GroupBy { host: true, paths: false, tags: true }));
        assert_eq!("".parse::<GroupBy>(), Ok(GroupBy { host: false, paths: false, tags: false }));
        assert_eq!("host,,path".parse::<GroupBy>(), Ok(GroupBy { host: true, paths: true, tags: false }));
        assert_eq!("host,label".parse::<GroupBy>(), Err(GroupByError("label".to_owned())));
        assert_eq!(GroupBy::default().to_string(), "host,paths");
        assert_eq!(GroupBy { host: false, paths: false, tags: false }.to_string(), "");
        assert_eq!(serde_json::to_string(&GroupBy::default()).unwrap(), "\"host,paths\"");
    }

    #[test]
    fn tag_lists_split_as_restic_splits_them() {
        assert_eq!(parse_tag_list(" a , b"), ["a", "b"]);
        assert_eq!(parse_tag_list(""), [""]);
        assert_eq!(parse_tag_list(",a"), ["", "a"]);
    }

    #[test]
    fn snapshot_times_keep_their_offset() {
        let (instant, offset) = parse_snapshot_time("2023-01-01T23:30:00.5-05:00").unwrap();
        assert_eq!(instant, "2023-01-02T04:30:00.5Z".parse::<Timestamp>().unwrap());
        assert_eq!(offset, -5 * 3600);
        assert_eq!(parse_snapshot_time("2023-01-01T23:30:00Z").unwrap().1, 0);
        assert!(parse_snapshot_time("2023-01-01T23:30:00").is_err());
        assert!(parse_snapshot_time("2023-01-01").is_err());
    }

    #[test]
    fn civil_arithmetic_matches_jiff() {
        let mut date = jiff::civil::date(-2001, 1, 1);
        let end = jiff::civil::date(2401, 12, 31);
        let mut day_number = days_from_civil(-2001, 1, 1);
        while date <= end {
            let expected = (i64::from(date.year()), i64::from(date.month()), i64::from(date.day()));
            assert_eq!(civil_from_days(day_number), expected);
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), day_number);
            let iso = date.iso_week_date();
            assert_eq!(iso_week(day_number), (i64::from(iso.year()), i64::from(iso.week())), "{date}");
            date = date.tomorrow().unwrap();
            day_number += 1;
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn iso_weeks_cross_year_boundaries() {
        let week = |y, m, d| iso_week(days_from_civil(y, m, d));
        assert_eq!(week(2023, 1, 1), (2022, 52)); // a Sunday
        assert_eq!(week(2023, 1, 2), (2023, 1));
        assert_eq!(week(2024, 12, 29), (2024, 52));
        assert_eq!(week(2024, 12, 30), (2025, 1)); // a Monday in December
        assert_eq!(week(2020, 12, 31), (2020, 53));
        assert_eq!(week(2021, 1, 3), (2020, 53));
        assert_eq!(week(2021, 1, 4), (2021, 1));
    }

    #[test]
    fn add_date_normalises_like_go() {
        let cases = [
            ("2023-03-31T12:00:00Z", (0, -1, 0), "2023-03-03T12:00:00Z"),
            ("2024-03-31T12:00:00Z", (0, -1, 0), "2024-03-02T12:00:00Z"),
            ("2024-05-31T12:00:00Z", (0, -3, 0), "2024-03-02T12:00:00Z"),
            ("2024-02-29T00:00:00Z", (-1, 0, 0), "2023-03-01T00:00:00Z"),
            ("2024-01-15T00:00:00Z", (0, -13, 0), "2022-12-15T00:00:00Z"),
            ("2024-01-01T00:00:00Z", (0, 0, -1), "2023-12-31T00:00:00Z"),
            ("2024-03-01T00:00:00Z", (0, -1, -1), "2024-01-31T00:00:00Z"),
            ("2023-01-01T00:00:00Z", (0, 0, 40), "2023-02-10T00:00:00Z"),
            // The calendar of the recorded offset: 1 March at -05:00 minus a month is 1
            // February at -05:00, not 1 February UTC.
            ("2023-03-01T02:00:00Z", (0, -1, 0), "2023-02-01T02:00:00Z"),
            ("2023-02-28T21:00:00-05:00", (0, -1, 0), "2023-01-29T02:00:00Z"),
            // Go's zero time, minus a day, is in year 0.
            ("0001-01-01T00:00:00Z", (0, 0, -1), "0000-12-31T00:00:00Z"),
        ];
        for (from, (y, m, d), expected) in cases {
            assert_eq!(add_date(from, y, m, d), ts(expected), "{from} {y} {m} {d}");
        }
    }

    #[test]
    fn add_date_in_a_zone_follows_go_around_dst() {
        let zone = TimeZone::get("America/New_York").unwrap();
        let at = |text: &str| GoTime { nanos: nanos(ts(text)), location: Location::Zone(&zone) };
        let instant =
            |result: i128| Timestamp::from_second(i64::try_from(result / NANOS_PER_SECOND).unwrap()).unwrap();
        // Across spring-forward: 12:00 EDT minus 12 days is 12:00 EST, an hour later than with
        // the fixed -04:00.
        assert_eq!(
            instant(go_add_date(at("2024-03-20T12:00:00-04:00"), 0, 0, -12)),
            ts("2024-03-08T17:00:00Z")
        );
        // Into the gap: 02:30 on 12 March 2023 does not exist; Go lands on 01:30 EST.
        assert_eq!(
            instant(go_add_date(at("2023-03-13T02:30:00-04:00"), 0, 0, -1)),
            ts("2023-03-12T06:30:00Z")
        );
        // Into the fold: 01:30 on 5 November 2023 happens twice; Go takes the first (EDT).
        assert_eq!(
            instant(go_add_date(at("2023-11-06T01:30:00-05:00"), 0, 0, -1)),
            ts("2023-11-05T05:30:00Z")
        );
    }

    #[test]
    fn buckets_use_the_recorded_offset() {
        // 23:30 at -05:00 on 1 January is 04:30 UTC on 2 January, newer than 01:00 UTC on 2
        // January, but on another day: both are daily snapshots. In UTC only one would be.
        let snapshots = [snapshot("a", "2023-01-01T23:30:00-05:00"), snapshot("b", "2023-01-02T01:00:00Z")];
        let policy = KeepPolicy { daily: 5, ..KeepPolicy::default() };
        assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), ["a", "b"]);
        // 22:00 on 31 December 2023 at -05:00 is in 2023 for the yearly bucket.
        let snapshots = [snapshot("a", "2023-12-31T22:00:00-05:00"), snapshot("b", "2023-12-31T23:00:00Z")];
        let policy = KeepPolicy { yearly: 5, ..KeepPolicy::default() };
        assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), ["a"]);
        // Two wall-clock 01:xx of the DST fold share an hourly bucket although an hour apart.
        let snapshots =
            [snapshot("edt", "2023-11-05T01:30:00-04:00"), snapshot("est", "2023-11-05T01:45:00-05:00")];
        let policy = KeepPolicy { hourly: 5, ..KeepPolicy::default() };
        assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), ["est"]);
    }

    #[test]
    fn counts_spend_only_on_new_bucket_values_and_never_keep_the_oldest() {
        let snapshots = [
            snapshot("a", "2024-05-05T10:00:00Z"),
            snapshot("b", "2024-05-05T09:00:00Z"),
            snapshot("c", "2024-05-05T08:00:00Z"),
            snapshot("d", "2024-05-04T08:00:00Z"),
        ];
        let policy = KeepPolicy { daily: 5, last: 1, ..KeepPolicy::default() };
        let decisions = apply(&policy, GroupBy::default(), &snapshots, now());
        assert_eq!(kept(&decisions), ["a", "d"]);
        assert_eq!(decisions[0].reasons, ["last snapshot", "daily snapshot"]);
        assert_eq!(decisions[3].reasons, ["daily snapshot"]);
    }

    #[test]
    fn ties_are_ordered_by_id() {
        let snapshots = [
            snapshot("c", "2024-05-05T10:00:00Z"),
            snapshot("a", "2024-05-05T10:00:00Z"),
            snapshot("b", "2024-05-05T10:00:00Z"),
        ];
        let policy = KeepPolicy { last: 2, ..KeepPolicy::default() };
        assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), ["a", "b"]);
    }

    #[test]
    fn within_is_measured_from_the_latest_snapshot_before_now() {
        let snapshots = [
            snapshot("future", "2099-01-01T00:00:00Z"),
            snapshot("latest", "2025-06-10T00:00:00Z"),
            snapshot("edge", "2025-06-09T00:00:00Z"),
            snapshot("inside", "2025-06-09T00:00:00.000000001Z"),
        ];
        let policy = KeepPolicy { within: Some(duration(0, 0, 1, 0)), ..KeepPolicy::default() };
        let decisions = apply(&policy, GroupBy::default(), &snapshots, now());
        // "After" is strict: exactly one day before the latest is out.
        assert_eq!(kept(&decisions), ["future", "latest", "inside"]);
        assert_eq!(decisions[1].reasons, ["within 1d"]);
        // When everything is in the future, the window starts at Go's zero time.
        let policy = KeepPolicy { within_daily: Some(duration(0, 0, 1, 0)), ..KeepPolicy::default() };
        let decisions = apply(&policy, GroupBy::default(), &snapshots, ts("2000-01-01T00:00:00Z"));
        assert_eq!(kept(&decisions), ["future", "latest", "inside"]);
        assert_eq!(decisions[0].reasons, ["daily within 1d"]);
        // Hours come off after the date: 1d2h from 00:00 is 22:00 two days before.
        let policy = KeepPolicy { within: Some(duration(0, 0, 1, 2)), ..KeepPolicy::default() };
        let snapshots = [snapshot("latest", "2025-06-10T00:00:00Z"), snapshot("in", "2025-06-08T22:00:01Z")];
        assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), ["latest", "in"]);
    }

    #[test]
    fn the_local_zone_moves_within_windows_across_dst() {
        let snapshots = [
            snapshot("latest", "2024-03-20T12:00:00-04:00"),
            snapshot("later", "2024-03-08T12:30:00-05:00"),
            snapshot("earlier", "2024-03-08T11:30:00-05:00"),
        ];
        let policy = KeepPolicy { within: Some(duration(0, 0, 12, 0)), ..KeepPolicy::default() };
        assert_eq!(
            kept(&apply(&policy, GroupBy::default(), &snapshots, now())),
            ["latest", "later", "earlier"]
        );
        let zone = TimeZone::get("America/New_York").unwrap();
        let decisions = apply_in_zone(&policy, GroupBy::default(), &snapshots, now(), &zone);
        assert_eq!(kept(&decisions), ["latest", "later"]);
        // A zone that never had -04:00 leaves the fixed offset in charge.
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let decisions = apply_in_zone(&policy, GroupBy::default(), &snapshots, now(), &tokyo);
        assert_eq!(kept(&decisions), ["latest", "later", "earlier"]);
    }

    #[test]
    fn keep_tag_matches_whole_lists_with_restic_empty_tag_quirk() {
        let mut snapshots = vec![
            snapshot("none", "2024-01-01T00:00:00Z"),
            snapshot("a", "2024-01-02T00:00:00Z"),
            snapshot("ab", "2024-01-03T00:00:00Z"),
            snapshot("c", "2024-01-04T00:00:00Z"),
        ];
        snapshots[1].tags = vec!["a".to_owned()];
        snapshots[2].tags = vec!["b".to_owned(), "a".to_owned()];
        snapshots[3].tags = vec!["c".to_owned()];
        let run = |lists: &[&str]| {
            let policy = KeepPolicy {
                tags: lists.iter().map(|l| parse_tag_list(l)).collect(),
                ..KeepPolicy::default()
            };
            let decisions = apply(&policy, GroupBy::default(), &snapshots, now());
            kept(&decisions).into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(run(&["a,b"]), ["ab"]);
        assert_eq!(run(&["a", "c"]), ["a", "ab", "c"]);
        assert_eq!(run(&[""]), ["none"]);
        assert_eq!(run(&[",a"]), ["none"]);
        // The quirk only answers when the empty tag comes first: "a" fails an untagged snapshot
        // before the empty tag is reached, and "" is no tag of a tagged one.
        assert_eq!(run(&["a,"]), Vec::<String>::new());
        assert_eq!(run(&["zzz"]), Vec::<String>::new());
        let policy = KeepPolicy { tags: vec![parse_tag_list(" a , b")], ..KeepPolicy::default() };
        let decisions = apply(&policy, GroupBy::default(), &snapshots, now());
        assert_eq!(decisions[2].reasons, ["has tags [a, b]"]);
    }

    #[test]
    fn empty_policies_keep_everything() {
        let snapshots = [snapshot("a", "2024-01-01T00:00:00Z"), snapshot("b", "2024-01-02T00:00:00Z")];
        let zero = KeepPolicy { within: Some(KeepDuration::default()), ..KeepPolicy::default() };
        assert!(zero.is_empty());
        for policy in [KeepPolicy::default(), zero] {
            let decisions = apply(&policy, GroupBy::default(), &snapshots, now());
            assert!(decisions.iter().all(|d| d.keep && d.reasons == ["policy is empty"]));
        }
        assert!(!KeepPolicy { tags: vec![vec![]], ..KeepPolicy::default() }.is_empty());
        assert!(
            apply(&KeepPolicy { last: 1, ..KeepPolicy::default() }, GroupBy::default(), &[], now())
                .is_empty()
        );
    }

    #[test]
    fn groups_follow_group_by() {
        let mut snapshots = vec![
            snapshot("h1-ab", "2024-01-01T00:00:00Z"),
            snapshot("h1-ba", "2024-01-02T00:00:00Z"),
            snapshot("h2-ab", "2024-01-03T00:00:00Z"),
        ];
        snapshots[0].paths = vec!["/a".to_owned(), "/b".to_owned()];
        snapshots[1].paths = vec!["/b".to_owned(), "/a".to_owned()];
        snapshots[1].tags = vec!["y".to_owned(), "x".to_owned()];
        snapshots[2].paths = vec!["/a".to_owned(), "/b".to_owned()];
        snapshots[2].hostname = "other".to_owned();
        let policy = KeepPolicy { last: 1, ..KeepPolicy::default() };
        let by = |text: &str| apply(&policy, text.parse().unwrap(), &snapshots, now());
        assert_eq!(kept(&by("host,paths")), ["h1-ba", "h2-ab"]);
        assert_eq!(kept(&by("paths")), ["h2-ab"]);
        assert_eq!(kept(&by("")), ["h2-ab"]);
        assert_eq!(kept(&by("tags")), ["h1-ba", "h2-ab"]);
        let decisions = by("host,tags");
        assert_eq!(
            decisions[1].group,
            GroupKey {
                hostname: "host".to_owned(),
                paths: None,
                tags: Some(vec!["x".to_owned(), "y".to_owned()])
            }
        );
        assert_eq!(decisions[0].group, GroupKey { hostname: "host".to_owned(), paths: None, tags: None });
        assert_eq!(by("paths")[1].group.paths, Some(vec!["/a".to_owned(), "/b".to_owned()]));
    }

    #[test]
    fn year_minus_one_is_never_a_new_yearly_bucket() {
        // restic's buckets start at -1, so year -1 looks like "already kept".
        let snapshots = [snapshot("old", "-000001-06-01T00:00:00Z")];
        let policy = KeepPolicy { yearly: 1, ..KeepPolicy::default() };
        assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), Vec::<&str>::new());
    }
}
