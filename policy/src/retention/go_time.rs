//! Go's time arithmetic as restic 0.14.0 gets it from the Go runtime: instants in nanoseconds,
//! the location a parsed time carries (a fixed offset or restic's local zone), `AddDate` with
//! `time.Date`'s normalisation and DST rule, the `--keep-within*` window start, and the
//! calendar buckets (wall clock in the recorded offset, proleptic Gregorian days, ISO weeks).

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{KeepDuration, SnapshotMeta};

/// Nanoseconds since the Unix epoch: wide enough for every window start restic can compute
/// from 32-bit durations, so comparisons never saturate.
pub(super) fn nanos(time: Timestamp) -> i128 {
    i128::from(time.as_second()) * NANOS_PER_SECOND + i128::from(time.subsec_nanosecond())
}

pub(super) const NANOS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// A time as Go's `time.Time` holds it after restic read the snapshot JSON: the instant and the
/// location that calendar arithmetic happens in.
#[derive(Clone, Copy)]
pub(super) struct GoTime<'z> {
    pub(super) nanos: i128,
    pub(super) location: Location<'z>,
}

#[derive(Clone, Copy)]
pub(super) enum Location<'z> {
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
pub(super) fn latest_before<'z>(
    sorted: &[&SnapshotMeta],
    now: Timestamp,
    zone: Option<&'z TimeZone>,
) -> GoTime<'z> {
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
pub(super) fn window_start(latest: GoTime<'_>, duration: KeepDuration) -> i128 {
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
pub(super) fn go_add_date(time: GoTime<'_>, years: i64, months: i64, days: i64) -> i128 {
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
pub(super) enum Bucket {
    Position,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Bucket {
    pub(super) fn value(self, wall: &Wall, position: usize) -> i64 {
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

    pub(super) fn name(self) -> &'static str {
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
pub(super) struct Wall {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    day_number: i64,
}

impl Wall {
    pub(super) fn of(instant: i128, offset: i32) -> Wall {
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
pub(super) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
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
pub(super) fn civil_from_days(day_number: i64) -> (i64, i64, i64) {
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
pub(super) fn iso_week(day_number: i64) -> (i64, i64) {
    // 1970-01-01 was a Thursday: weekday 3 counting Monday as 0.
    let weekday = (day_number + 3).rem_euclid(7);
    let thursday = day_number - weekday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week)
}
