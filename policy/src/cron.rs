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
mod tests {
    use jiff::civil::date;

    use super::*;

    fn cron(text: &str) -> CronExpr {
        text.parse().unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
    }

    fn dt(text: &str) -> DateTime {
        text.parse().unwrap_or_else(|e| panic!("`{text}` is not a civil datetime: {e}"))
    }

    fn values(bits: u64) -> Vec<i8> {
        (0..64).filter(|&v| has(bits, v)).collect()
    }

    #[test]
    fn valid_forms_parse_to_the_expected_sets() {
        // (expression, the values each field matches, Vixie's either-day rule); `all` is the
        // whole field (day-of-week: 0-6).
        let cases = [
            ("5 4 3 2 1", ["5", "4", "3", "2", "1"], true),
            ("0-4 22-23 30-31 11-12 5-6", ["0 1 2 3 4", "22 23", "30 31", "11 12", "5 6"], true),
            ("*/20 */6 */10 */4 */3", ["0 20 40", "0 6 12 18", "1 11 21 31", "1 5 9", "0 3 6"], false),
            (
                "10-30/10 8-18/5 1-10/3 1-12/6 1-5/2",
                ["10 20 30", "8 13 18", "1 4 7 10", "1 7", "1 3 5"],
                true,
            ),
            // `a/n` runs to the end of the field.
            ("45/5 20/2 25/3 10/1 4/1", ["45 50 55", "20 22", "25 28 31", "10 11 12", "4 5 6"], true),
            ("0 0 1 1 wed/2", ["0", "0", "1", "1", "3 5"], true),
            (
                "1,2,5-6,*/30 0 1,15 jan,JUL,Dec mon-FRI",
                ["0 1 2 5 6 30", "0", "1 15", "1 7 12", "1 2 3 4 5"],
                true,
            ),
            ("0 0 * feb-apr sun,sat", ["0", "0", "all", "2 3 4", "0 6"], false),
            // 7 is Sunday, alone, in a range and next to 0.
            ("0 0 * * 7", ["0", "0", "all", "all", "0"], false),
            ("0 0 1 * 5-7", ["0", "0", "1", "all", "0 5 6"], true),
            ("0 0 * * 0,7", ["0", "0", "all", "all", "0"], false),
            ("0 0 * * fri-7", ["0", "0", "all", "all", "0 5 6"], false),
            ("* * * * *", ["all", "all", "all", "all", "all"], false),
            // Steps longer than the field leave its first value.
            ("*/90 */25 */40 */13 */8", ["0", "0", "1", "1", "0"], false),
        ];
        let all: [Vec<i8>; 5] =
            [(0..60).collect(), (0..24).collect(), (1..=31).collect(), (1..=12).collect(), (0..7).collect()];
        for (text, expected, either) in cases {
            let expr = cron(text);
            let got = [expr.minutes, expr.hours, expr.days, expr.months, expr.weekdays].map(values);
            for (field, ((got, expected), all)) in got.iter().zip(expected).zip(&all).enumerate() {
                let expected: Vec<i8> = match expected {
                    "all" => all.clone(),
                    list => list.split(' ').map(|v| v.parse().unwrap()).collect(),
                };
                assert_eq!(got, &expected, "field {field} of `{text}`");
            }
            assert_eq!(expr.either_day_field, either, "Vixie day rule of `{text}`");
        }
    }

    #[test]
    fn macros_mean_their_five_fields() {
        let cases = [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("  @Daily ", "0 0 * * *"),
        ];
        for (text, fields) in cases {
            let (expr, plain) = (cron(text), cron(fields));
            assert_eq!(expr.to_string(), text.trim().to_ascii_lowercase());
            let sets = |e: &CronExpr| (e.minutes, e.hours, e.days, e.months, e.weekdays, e.either_day_field);
            assert_eq!(sets(&expr), sets(&plain), "`{text}` means `{fields}`");
        }
    }

    #[test]
    fn display_normalises_whitespace_and_round_trips() {
        let cases = [
            ("  0  4 * * mon-fri ", "0 4 * * mon-fri"),
            ("*/15\t2\n* * *", "*/15 2 * * *"),
            ("0 0 1,15 JAN *", "0 0 1,15 JAN *"),
            ("@WEEKLY", "@weekly"),
        ];
        for (text, shown) in cases {
            let expr = cron(text);
            assert_eq!(expr.to_string(), shown);
            assert_eq!(cron(&expr.to_string()), expr, "round trip of `{text}`");
        }
    }

    #[test]
    fn every_error_class_is_refused_with_a_clear_message() {
        let long = format!("0 0 * * *{}", " ".repeat(200));
        let cases: &[(&str, &str)] = &[
            ("", "empty cron expression: expected five fields: minute hour day-of-month month day-of-week"),
            ("0 0 * *", "found 4 fields: expected five fields: minute hour day-of-month month day-of-week"),
            ("0 0 0 * * *", "found six fields, but seconds are not supported: expected five fields"),
            ("0 0 * * * 2026 x", "found 7 fields"),
            (&long, "longer than 200 characters"),
            ("@reboot", "`@reboot` is not supported"),
            ("@often", "unknown macro `@often`: expected one of @hourly @daily"),
            ("@daily 0", "`@daily` must stand alone"),
            ("0 25 * * *", "hour field `25`: 25 is out of range 0-23"),
            ("60 * * * *", "minute field `60`: 60 is out of range 0-59"),
            ("0 0 0 * *", "day-of-month field `0`: 0 is out of range 1-31"),
            ("0 0 32 * *", "day-of-month field `32`: 32 is out of range 1-31"),
            ("0 0 * 13 *", "month field `13`: 13 is out of range 1-12"),
            ("0 0 * * 8", "day-of-week field `8`: 8 is out of range 0-7"),
            ("99999 * * * *", "minute field `99999`: 99999 is out of range 0-59"),
            ("*/0 * * * *", "minute field `*/0`: step 0 never advances"),
            ("0 1-5/0 * * *", "hour field `1-5/0`: step 0"),
            ("0 0 * * 5-1", "day-of-week field `5-1`: range `5-1` is reversed (5 > 1)"),
            ("0 0 * dec-jan *", "month field `dec-jan`: range `dec-jan` is reversed (12 > 1)"),
            ("0 0 1,,2 * *", "day-of-month field `1,,2`: empty list item"),
            ("0,5, 0 * * *", "minute field `0,5,`: empty list item"),
            ("0 0 ? * mon", "day-of-month field `?`: `?` is not supported (Quartz syntax)"),
            ("0 0 L * *", "day-of-month field `L`: `L` (last day) is not supported"),
            ("0 0 * * 5L", "day-of-week field `5L`: `L` (last day) is not supported"),
            ("0 0 15W * *", "day-of-month field `15W`: `W` (nearest weekday) is not supported"),
            ("0 0 1-5,LW * *", "day-of-month field `1-5,LW`: `L` (last day) is not supported"),
            ("0 0 * * 5#3", "day-of-week field `5#3`: `#` (n-th weekday of the month) is not supported"),
            (
                "0 0 * * monday",
                "day-of-week field `monday`: `monday` is neither a number nor a name (sun-sat)",
            ),
            ("0 0 * foo *", "month field `foo`: `foo` is neither a number nor a name (jan-dec)"),
            ("0 mon * * *", "hour field `mon`: `mon` is not a number"),
            ("-5 * * * *", "minute field `-5`: a value is missing"),
            ("1- * * * *", "minute field `1-`: a value is missing"),
            ("*-5 * * * *", "minute field `*-5`: `*` cannot be part of a range"),
            ("0 0 * * mon-*", "day-of-week field `mon-*`: `*` cannot be part of a range"),
            ("*/x * * * *", "minute field `*/x`: step `x` is not a number"),
            ("*/2/3 * * * *", "minute field `*/2/3`: step `2/3` is not a number"),
            ("+5 * * * *", "minute field `+5`: `+5` is not a number"),
            ("0 0 30 2 *", "`0 0 30 2 *` can never match: its day-of-month field `30`"),
            ("0 0 31 4,6,9,11 *", "can never match"),
            ("0 0 30,31 feb *", "can never match"),
        ];
        for (text, expected) in cases {
            let message = match text.parse::<CronExpr>() {
                Ok(expr) => panic!("`{text}` should be refused, parsed as {expr:?}"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(expected), "`{text}`: message `{message}` lacks `{expected}`");
        }
    }

    #[test]
    fn rare_but_possible_days_are_accepted() {
        // Feb 29 exists in leap years; with the AND rule (day-of-week starting with `*`) a
        // Feb 29 that is a Sunday is rarer still, but it happens.
        for text in ["0 0 29 2 *", "0 0 29 2 */7", "0 0 31 1-4 *", "0 0 29-31 2,4 *"] {
            cron(text);
        }
    }

    #[test]
    fn matches_minutes_and_ignores_seconds() {
        let cases = [
            ("30 2 * * *", "2026-05-01T02:30:59.9", true),
            ("30 2 * * *", "2026-05-01T02:31", false),
            ("0 9 * * mon-fri", "2026-05-01T09:00", true), // a Friday
            ("0 9 * * mon-fri", "2026-05-02T09:00", false), // a Saturday
            ("0 9 * * 7", "2026-05-03T09:00", true),       // a Sunday
            // Vixie: both day fields restricted, either matches.
            ("0 0 13 * fri", "2026-03-13T00:00", true), // Friday 13th
            ("0 0 13 * fri", "2026-03-06T00:00", true), // a Friday
            ("0 0 13 * fri", "2026-05-13T00:00", true), // a Wednesday 13th
            ("0 0 13 * fri", "2026-05-14T00:00", false),
            // A `*`-led day field (even with a step) means both must match.
            ("0 0 */2 * fri", "2026-03-13T00:00", true),
            ("0 0 */2 * fri", "2026-03-06T00:00", false), // a Friday on an even day
            ("0 0 13 * */1", "2026-05-14T00:00", false),
            ("0 0 13 * */1", "2026-05-13T00:00", true),
        ];
        for (text, at, expected) in cases {
            assert_eq!(cron(text).matches(dt(at)), expected, "`{text}` at {at}");
        }
    }

    #[test]
    fn next_after_jumps_fields_across_month_and_year_ends() {
        let cases = [
            ("* * * * *", "2026-05-01T10:00:00", "2026-05-01T10:01"),
            ("* * * * *", "2026-05-01T10:00:59.999", "2026-05-01T10:01"),
            ("30 2 * * *", "2026-05-01T02:30", "2026-05-02T02:30"),
            ("30 2 * * *", "2026-05-01T02:29:59", "2026-05-01T02:30"),
            ("59 23 * * *", "2026-12-31T23:58", "2026-12-31T23:59"),
            ("0 0 * * *", "2026-12-31T23:59", "2027-01-01T00:00"),
            ("0 0 31 * *", "2026-04-01T00:00", "2026-05-31T00:00"),
            ("0 0 31 * *", "2026-12-31T00:00", "2027-01-31T00:00"),
            ("15 10 1 * *", "2026-01-31T23:00", "2026-02-01T10:15"),
            ("0 12 29 2 *", "2026-01-01T00:00", "2028-02-29T12:00"),
            ("0 12 29 2 *", "2096-02-29T12:00", "2104-02-29T12:00"), // 2100 is no leap year
            ("0 0 29 2 */7", "2026-01-01T00:00", "2032-02-29T00:00"), // Feb 29 that is a Sunday
            ("0 0 13 * fri", "2026-03-13T00:00", "2026-03-20T00:00"),
            ("0 0 13 * fri", "2026-05-08T00:00", "2026-05-13T00:00"),
            ("0 0 */10 * sat", "2026-05-01T00:00", "2026-07-11T00:00"), // 1, 11, 21, 31 AND Saturday
            ("0 9 * * mon-fri", "2026-05-01T09:00", "2026-05-04T09:00"),
            ("0 9 * * sun", "2026-05-01T00:00", "2026-05-03T09:00"),
            ("*/20 9-17 * * *", "2026-05-01T17:40", "2026-05-02T09:00"),
            ("0 0 1 jan,jul *", "2026-01-01T00:00", "2026-07-01T00:00"),
            ("@yearly", "2026-06-15T12:00", "2027-01-01T00:00"),
            ("@weekly", "2026-05-01T00:00", "2026-05-03T00:00"),
            ("5 * * * *", "2026-05-01T23:06", "2026-05-02T00:05"),
        ];
        for (text, after, expected) in cases {
            assert_eq!(cron(text).next_after(dt(after)), Some(dt(expected)), "`{text}` after {after}");
        }
    }

    #[test]
    fn prev_at_or_before_mirrors_next_after() {
        let cases = [
            ("* * * * *", "2026-05-01T10:00:30", "2026-05-01T10:00"),
            ("30 2 * * *", "2026-05-01T02:30", "2026-05-01T02:30"),
            ("30 2 * * *", "2026-05-01T02:29:59", "2026-04-30T02:30"),
            ("0 0 * * *", "2027-01-01T00:00", "2027-01-01T00:00"),
            ("59 23 * * *", "2027-01-01T00:00", "2026-12-31T23:59"),
            ("0 0 31 * *", "2026-05-30T00:00", "2026-03-31T00:00"),
            ("0 12 29 2 *", "2028-02-29T11:59", "2024-02-29T12:00"),
            ("0 12 29 2 *", "2104-02-28T00:00", "2096-02-29T12:00"),
            ("0 0 13 * fri", "2026-05-12T00:00", "2026-05-08T00:00"),
            ("0 9 * * mon-fri", "2026-05-04T08:59", "2026-05-01T09:00"),
            ("*/20 9-17 * * *", "2026-05-02T08:59", "2026-05-01T17:40"),
            ("5 * * * *", "2026-05-02T00:04", "2026-05-01T23:05"),
        ];
        for (text, at, expected) in cases {
            assert_eq!(cron(text).prev_at_or_before(dt(at)), Some(dt(expected)), "`{text}` at {at}");
        }
    }

    #[test]
    fn next_and_prev_agree_with_minute_by_minute_scanning() {
        // The slow definition, checked at every minute of a winter with a leap day and a year
        // end: the matches of a wider span are listed by `matches` alone, then every minute's
        // neighbours are looked up in that list.
        let minutes_between = |from: DateTime, to: DateTime| {
            std::iter::successors(Some(from), |m| m.checked_add(jiff::SignedDuration::from_mins(1)).ok())
                .take_while(move |m| *m < to)
        };
        let exprs = ["*/7 */5 * * *", "0 0 13 * fri", "0 0 */3 * sat", "13 1,13 29-31 * *", "@hourly"];
        for text in exprs {
            let expr = cron(text);
            let listed: Vec<DateTime> =
                minutes_between(date(2027, 11, 1).at(0, 0, 0, 0), date(2028, 5, 1).at(0, 0, 0, 0))
                    .filter(|m| expr.matches(*m))
                    .collect();
            for minute in minutes_between(date(2027, 12, 1).at(0, 0, 0, 0), date(2028, 3, 2).at(0, 0, 0, 0)) {
                let after = listed.partition_point(|m| *m <= minute);
                assert_eq!(expr.next_after(minute), listed.get(after).copied(), "`{text}` after {minute}");
                let before = after.checked_sub(1).map(|i| listed[i]);
                assert_eq!(expr.prev_at_or_before(minute), before, "`{text}` at {minute}");
            }
        }
    }

    #[test]
    fn searches_stop_at_the_ends_of_the_calendar() {
        let expr = cron("0 0 1 1 *");
        assert_eq!(expr.next_after(dt("9999-01-01T00:00")), None);
        assert_eq!(expr.next_after(dt("9999-12-31T23:59:59")), None);
        let first_minute = DateTime::constant(-9999, 1, 1, 0, 0, 0, 0);
        assert_eq!(expr.prev_at_or_before(first_minute), Some(first_minute));
        assert_eq!(cron("1 0 1 1 *").prev_at_or_before(first_minute), None);
    }
}
