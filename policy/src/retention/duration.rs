//! restic's `--keep-within*` durations (`1y5m7d2h`): the type, its parsing exactly as restic
//! 0.14.0 parses it (errors where restic would panic), its rendering and its serde form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// restic's duration for `--keep-within*`: `"1y5m7d2h"` (years, months, days, hours), parsed
/// exactly as restic parses it (see the `retention` module documentation). Serialised as that string.
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
