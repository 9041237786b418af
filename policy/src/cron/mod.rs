//! Cron expressions (five fields, Vixie cron's rules), evaluated on civil (local) time.
//!
//! What belongs here: parsing an expression into per-field sets, matching a civil minute, and
//! finding the next or previous matching civil minute. Nothing here knows about time zones:
//! `schedule` maps civil minutes to instants and owns the DST rules.
//!
//! Syntax: `minute hour day-of-month month day-of-week`, each field `*`, `n`, `a-b`, `*/n`,
//! `a-b/n`, `a/n` (from `a` to the field's end) or a comma list of those; month names `jan`–`dec`
//! and day names `sun`–`sat` (any case, also in ranges); day-of-week 7 is Sunday; the macros
//! `@hourly @daily @midnight @weekly @monthly @yearly @annually`. Quartz extensions (`?`, `L`,
//! `W`, `#`), seconds and `@reboot` are refused with a message that says so, as is an expression
//! that can never match (`0 0 30 2 *`).

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};

/// Longer input is refused before any parsing: a real expression is a few dozen characters.
const MAX_LEN: usize = 200;

/// How far `next_after` and `prev_at_or_before` search. The Gregorian calendar repeats every
/// 400 years (146 097 days, a whole number of weeks), so an expression without a match in 400
/// years has none at all; parsing rejects those, so a search only ends empty at the edges of
/// jiff's range (years -9999 and 9999).
const SEARCH_YEARS: i16 = 401;

const FIELDS: &str = "five fields: minute hour day-of-month month day-of-week";

const MONTH_NAMES: &[&str] =
    &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAY_NAMES: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

const MACROS: &[(&str, &str)] = &[
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

/// A parsed five-field cron expression.
///
/// Equality compares the expression as written (after whitespace normalisation), so `@daily`
/// and `0 0 * * *` are different values even though they match the same minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronExpr {
    /// The expression as given: fields joined by single spaces, or the lowercase macro.
    text: String,
    /// Bit `m` set: minute `m` (0–59) matches.
    minutes: u64,
    /// Bit `h` set: hour `h` (0–23) matches.
    hours: u64,
    /// Bit `d` set: day of month `d` (1–31) matches.
    days: u64,
    /// Bit `m` set: month `m` (1–12) matches.
    months: u64,
    /// Bit `w` set: weekday `w` (0 = Sunday … 6 = Saturday) matches; 7 is folded into 0.
    weekdays: u64,
    /// Vixie's rule: when both day fields are restricted (neither starts with `*`), a day
    /// matches if either field does; otherwise both must.
    either_day_field: bool,
}

/// Why an expression was refused; the message names the field and the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// One of the five fields: its name for messages and its value range.
struct Field {
    name: &'static str,
    min: u8,
    /// The largest value accepted when written out (7 for day-of-week, an alias of Sunday).
    max: u8,
    /// Where `*` and `a/n` end: day-of-week's `*` covers 0–6, since 7 only repeats Sunday.
    span_end: u8,
    names: &'static [&'static str],
    /// The value of `names[0]`: months count from 1, weekdays from 0.
    first_name_value: u8,
}

const MINUTE: Field =
    Field { name: "minute", min: 0, max: 59, span_end: 59, names: &[], first_name_value: 0 };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, span_end: 23, names: &[], first_name_value: 0 };
const DAY_OF_MONTH: Field =
    Field { name: "day-of-month", min: 1, max: 31, span_end: 31, names: &[], first_name_value: 0 };
const MONTH: Field =
    Field { name: "month", min: 1, max: 12, span_end: 12, names: MONTH_NAMES, first_name_value: 1 };
const DAY_OF_WEEK: Field =
    Field { name: "day-of-week", min: 0, max: 7, span_end: 6, names: DAY_NAMES, first_name_value: 0 };

impl FromStr for CronExpr {
    type Err = CronError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_LEN {
            return Err(CronError(format!("cron expression is longer than {MAX_LEN} characters")));
        }
        let words: Vec<&str> = input.split_whitespace().collect();
        let Some(first) = words.first() else {
            return Err(CronError(format!("empty cron expression: expected {FIELDS}")));
        };
        if first.starts_with('@') {
            if words.len() > 1 {
                return Err(CronError(format!("`{first}` must stand alone, without further fields")));
            }
            return parse_macro(first);
        }
        match words.as_slice() {
            [minute, hour, day, month, weekday] => parse_fields([minute, hour, day, month, weekday]),
            [_, _, _, _, _, _] => {
                Err(CronError(format!("found six fields, but seconds are not supported: expected {FIELDS}")))
            }
            _ => Err(CronError(format!("found {} fields: expected {FIELDS}", words.len()))),
        }
    }
}

fn parse_macro(word: &str) -> Result<CronExpr, CronError> {
    let lower = word.to_ascii_lowercase();
    if lower == "@reboot" {
        return Err(CronError("`@reboot` is not supported: it names no time of day".to_owned()));
    }
    let Some((_, fields)) = MACROS.iter().find(|(name, _)| *name == lower) else {
        let known: Vec<&str> = MACROS.iter().map(|(name, _)| *name).collect();
        return Err(CronError(format!("unknown macro `{word}`: expected one of {}", known.join(" "))));
    };
    let mut expr: CronExpr = fields.parse()?;
    expr.text = lower;
    Ok(expr)
}

fn parse_fields([minute, hour, day, month, weekday]: [&str; 5]) -> Result<CronExpr, CronError> {
    let expr = CronExpr {
        text: [minute, hour, day, month, weekday].join(" "),
        minutes: parse_field(&MINUTE, minute)?,
        hours: parse_field(&HOUR, hour)?,
        days: parse_field(&DAY_OF_MONTH, day)?,
        months: parse_field(&MONTH, month)?,
        weekdays: fold_sunday(parse_field(&DAY_OF_WEEK, weekday)?),
        either_day_field: !day.starts_with('*') && !weekday.starts_with('*'),
    };
    // No field parses to an empty set, so only the day-of-month and month fields together can
    // make an expression unsatisfiable (30 February). A search over
    // one full calendar cycle decides it; it costs at most 400 × 12 short month scans.
    const REFERENCE: Date = Date::constant(2000, 1, 1);
    if expr.first_at_or_after(REFERENCE, (0, 0)).is_none() {
        return Err(CronError(format!(
            "`{}` can never match: its day-of-month field `{day}` names no day that exists in the \
             months of its month field `{month}`",
            expr.text
        )));
    }
    Ok(expr)
}

/// Day-of-week 7 is Sunday's alias: stored as 0 so matching only looks at 0–6.
fn fold_sunday(bits: u64) -> u64 {
    let sunday = if bits & (1 << 7) != 0 { 1 } else { 0 };
    (bits & !(1 << 7)) | sunday
}

fn parse_field(field: &Field, text: &str) -> Result<u64, CronError> {
    let mut bits = 0;
    for item in text.split(',') {
        bits |= parse_item(field, item)
            .map_err(|problem| CronError(format!("{} field `{text}`: {problem}", field.name)))?;
    }
    Ok(bits)
}

/// One list item: `*`, `n`, `a-b`, each optionally followed by `/step`.
fn parse_item(field: &Field, item: &str) -> Result<u64, String> {
    if item.is_empty() {
        return Err("empty list item".to_owned());
    }
    let (range, step) = match item.split_once('/') {
        None => (item, None),
        Some((range, step)) => {
            let step = parse_number(step).ok_or_else(|| format!("step `{step}` is not a number"))?;
            if step == 0 {
                return Err("step 0 never advances".to_owned());
            }
            (range, Some(step))
        }
    };
    let (low, high) = if range == "*" {
        (field.min, field.span_end)
    } else if let Some((low, high)) = range.split_once('-') {
        let (low, high) = (parse_value(field, low)?, parse_value(field, high)?);
        if low > high {
            return Err(format!("range `{range}` is reversed ({low} > {high})"));
        }
        (low, high)
    } else {
        let value = parse_value(field, range)?;
        // `a/n` runs from `a` to the end of the field, like `a-<end>/n`.
        if step.is_some() { (value, field.span_end.max(value)) } else { (value, value) }
    };
    let step = usize::from(step.unwrap_or(1));
    Ok((low..=high).step_by(step).fold(0, |bits, value| bits | (1 << value)))
}

/// A decimal number that fits the field types; anything longer is out of every range anyway.
fn parse_number(text: &str) -> Option<u8> {
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().map(|n| u8::try_from(n).unwrap_or(u8::MAX))
}

fn parse_value(field: &Field, text: &str) -> Result<u8, String> {
    if text.is_empty() {
        return Err("a value is missing (a range is `a-b`)".to_owned());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match parse_number(text) {
            Some(n) if (field.min..=field.max).contains(&n) => Ok(n),
            _ => Err(format!("{text} is out of range {}-{}", field.min, field.max)),
        };
    }
    if let Some(index) = field.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
        // Name lists are at most 12 long.
        return Ok(field.first_name_value + u8::try_from(index).unwrap_or(0));
    }
    Err(unsupported(field, text))
}

/// Explains a value that is neither a number nor a name, naming the Quartz extensions people
/// commonly try (names are checked first: `jul` and `wed` contain `L` and `W`).
fn unsupported(field: &Field, text: &str) -> String {
    let upper = text.to_ascii_uppercase();
    if text.contains('?') {
        "`?` is not supported (Quartz syntax): write `*`".to_owned()
    } else if text.contains('#') {
        "`#` (n-th weekday of the month) is not supported".to_owned()
    } else if upper.contains('L') {
        "`L` (last day) is not supported".to_owned()
    } else if upper.contains('W') {
        "`W` (nearest weekday) is not supported".to_owned()
    } else if text == "*" {
        "`*` cannot be part of a range".to_owned()
    } else if let (Some(first), Some(last)) = (field.names.first(), field.names.last()) {
        format!("`{text}` is neither a number nor a name ({first}-{last})")
    } else {
        format!("`{text}` is not a number")
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl CronExpr {
    /// Whether the civil minute matches (seconds ignored).
    pub fn matches(&self, dt: DateTime) -> bool {
        has(self.minutes, dt.minute())
            && has(self.hours, dt.hour())
            && has(self.months, dt.month())
            && self.day_matches(dt.day(), dt.weekday().to_sunday_zero_offset())
    }

    /// The first matching civil minute strictly after `after` (its seconds and subseconds are
    /// truncated first). None only past the end of jiff's range (year 9999).
    pub fn next_after(&self, after: DateTime) -> Option<DateTime> {
        // The minute after may be minute 60 or hour 24: the search treats those as "none left
        // in this hour/day" and moves on, so no date arithmetic is needed here.
        self.first_at_or_after(after.date(), (after.hour(), after.minute() + 1))
    }

    /// The last matching civil minute at or before `at`. None only before the start of jiff's
    /// range (year -9999).
    pub fn prev_at_or_before(&self, at: DateTime) -> Option<DateTime> {
        self.last_at_or_before(at.date(), (at.hour(), at.minute()))
    }

    fn day_matches(&self, day: i8, weekday: i8) -> bool {
        let (day, weekday) = (has(self.days, day), has(self.weekdays, weekday));
        if self.either_day_field { day || weekday } else { day && weekday }
    }

    /// The first match at or after `(hour, minute)` of `date`; the minute may be 60 and the
    /// hour 24 (nothing left that hour/day). Jumps over months that cannot match and looks at
    /// each remaining day once, at most [`SEARCH_YEARS`] years ahead.
    fn first_at_or_after(&self, date: Date, from: (i8, i8)) -> Option<DateTime> {
        let last_year = date.year().saturating_add(SEARCH_YEARS).min(9999);
        let (mut year, mut month) = (date.year(), date.month());
        let mut lower_bound = Some((date.day(), from));
        loop {
            if has(self.months, month) {
                let first = Date::new(year, month, 1).ok()?;
                let (first_day, first_time) = lower_bound.unwrap_or((1, (0, 0)));
                for day in first_day..=first.days_in_month() {
                    if !self.day_matches(day, weekday_of(first, day)) {
                        continue;
                    }
                    let from = if day == first_day { first_time } else { (0, 0) };
                    if let Some((hour, minute)) = self.first_time_from(from) {
                        return DateTime::new(year, month, day, hour, minute, 0, 0).ok();
                    }
                }
            }
            lower_bound = None;
            (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            if year > last_year {
                return None;
            }
        }
    }

    /// The mirror of [`Self::first_at_or_after`]: the last match at or before `(hour, minute)`
    /// of `date`.
    fn last_at_or_before(&self, date: Date, to: (i8, i8)) -> Option<DateTime> {
        let first_year = date.year().saturating_sub(SEARCH_YEARS).max(-9999);
        let (mut year, mut month) = (date.year(), date.month());
        let mut upper_bound = Some((date.day(), to));
        loop {
            if has(self.months, month) {
                let first = Date::new(year, month, 1).ok()?;
                let (last_day, last_time) = upper_bound.unwrap_or((first.days_in_month(), (23, 59)));
                for day in (1..=last_day).rev() {
                    if !self.day_matches(day, weekday_of(first, day)) {
                        continue;
                    }
                    let to = if day == last_day { last_time } else { (23, 59) };
                    if let Some((hour, minute)) = self.last_time_to(to) {
                        return DateTime::new(year, month, day, hour, minute, 0, 0).ok();
                    }
                }
            }
            upper_bound = None;
            (year, month) = if month == 1 { (year - 1, 12) } else { (year, month - 1) };
            if year < first_year {
                return None;
            }
        }
    }

    /// The first matching (hour, minute) at or after `from` within one day.
    fn first_time_from(&self, (hour, minute): (i8, i8)) -> Option<(i8, i8)> {
        let first_hour = next_bit(self.hours, hour)?;
        if first_hour == hour
            && let Some(minute) = next_bit(self.minutes, minute)
        {
            return Some((hour, minute));
        }
        let later_hour = if first_hour == hour { next_bit(self.hours, hour + 1)? } else { first_hour };
        Some((later_hour, next_bit(self.minutes, 0)?))
    }

    /// The last matching (hour, minute) at or before `to` within one day.
    fn last_time_to(&self, (hour, minute): (i8, i8)) -> Option<(i8, i8)> {
        let last_hour = prev_bit(self.hours, hour)?;
        if last_hour == hour
            && let Some(minute) = prev_bit(self.minutes, minute)
        {
            return Some((hour, minute));
        }
        let earlier_hour = if last_hour == hour { prev_bit(self.hours, hour - 1)? } else { last_hour };
        Some((earlier_hour, prev_bit(self.minutes, 59)?))
    }
}

/// Sunday-based weekday (0–6) of `day` in the month starting at `first`.
fn weekday_of(first: Date, day: i8) -> i8 {
    (first.weekday().to_sunday_zero_offset() + day - 1) % 7
}

fn has(bits: u64, value: i8) -> bool {
    (0..64).contains(&value) && bits & (1 << value) != 0
}

/// The smallest set bit at or above `from` (`from` may exceed the field, giving None).
fn next_bit(bits: u64, from: i8) -> Option<i8> {
    let from = u32::try_from(from).ok()?;
    let above = bits.checked_shr(from)?.checked_shl(from)?;
    (above != 0).then(|| above.trailing_zeros() as i8)
}

/// The largest set bit at or below `to` (negative `to` gives None).
fn prev_bit(bits: u64, to: i8) -> Option<i8> {
    let to = u32::try_from(to).ok()?;
    let below = if to >= 63 { bits } else { bits & ((1 << (to + 1)) - 1) };
    (below != 0).then(|| 63 - below.leading_zeros() as i8)
}

#[cfg(test)]
mod tests;
