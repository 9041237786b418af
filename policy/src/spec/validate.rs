//! Validation of a policy specification: [`PolicySpec::problems`] and its field checks (paths,
//! exclude globs as the engine compiles them, tags, schedules, retention, maintenance, hooks
//! and [`valid_hook_name`]), and the conversions that validate on the way:
//! [`ScheduleSpec::parse`] into a `Schedule`, [`RetentionSpec::to_keep_policy`] into restic's
//! options.

use super::{
    FieldError, HookSpec, MaintenanceSpec, OnFailure, PolicySpec, ReadData, RetentionSpec, ScheduleSpec,
};
use crate::cron::CronExpr;
use crate::retention::{KeepDuration, KeepPolicy};
use crate::schedule::{Schedule, Trigger, Window};

const MAX_ITEMS: usize = 1000;

impl PolicySpec {
    /// Every problem with this spec, each naming its field; empty means valid.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            errs.push(FieldError::new("name", "1 to 100 characters, no control characters"));
        }
        check_paths(&self.paths, &mut errs);
        check_globs("excludes", &self.excludes, false, &mut errs);
        check_globs("iexcludes", &self.iexcludes, true, &mut errs);
        check_list("exclude_if_present", &self.exclude_if_present, 100, &mut errs, |f| {
            (f.is_empty() || f.contains('/') || f.contains('\0') || f == "." || f == "..")
                .then(|| "a file name, without '/'".to_string())
        });
        if self.exclude_larger_than_bytes == Some(0) {
            errs.push(FieldError::new("exclude_larger_than_bytes", "at least 1 (or leave it out)"));
        }
        check_list("tags", &self.tags, 20, &mut errs, |t| {
            if t.is_empty() || t.chars().count() > 100 || t.contains(',') || t.chars().any(char::is_control) {
                Some("1 to 100 characters, no comma, no control characters".into())
            } else if t.starts_with("cofre") {
                Some("tags starting with `cofre` are Cofre's own".into())
            } else {
                None
            }
        });
        let mut shortest_gap = None;
        if let Some(s) = &self.schedule {
            match s.parse("schedule") {
                Ok(sched) => shortest_gap = sched_interval(&sched),
                Err(e) => errs.extend(e),
            }
        }
        if let Some(r) = &self.retention
            && let Err(e) = r.to_keep_policy()
        {
            errs.extend(e);
        }
        if !(60..=366 * 24 * 3600).contains(&self.rpo_seconds) {
            errs.push(FieldError::new("rpo_seconds", "between 60 seconds and a year"));
        } else if let Some(gap) = shortest_gap
            && gap > self.rpo_seconds
        {
            errs.push(FieldError::new(
                "schedule.interval_seconds",
                format!(
                    "runs every {gap} s, longer than rpo_seconds ({}): every machine would be out of compliance between runs",
                    self.rpo_seconds
                ),
            ));
        }
        if !(60..=31 * 24 * 3600).contains(&self.heartbeat_allowance_seconds) {
            errs.push(FieldError::new("heartbeat_allowance_seconds", "between 60 seconds and 31 days"));
        }
        self.maintenance.check_into(&mut errs);
        for (which, hook) in [("before", &self.hooks.before), ("after", &self.hooks.after)] {
            if let Some(h) = hook {
                check_hook(&format!("hooks.{which}"), h, which == "after", &mut errs);
            }
        }
        errs
    }

    /// `problems` as a Result.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let errs = self.problems();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// The retention as restic's options (None: keep everything).
    pub fn keep_policy(&self) -> Result<Option<KeepPolicy>, Vec<FieldError>> {
        match &self.retention {
            None => Ok(None),
            Some(r) => r.to_keep_policy().map(|k| (!k.is_empty()).then_some(k)),
        }
    }
}

/// The interval of an interval schedule (cron gaps vary: not compared with the RPO).
fn sched_interval(s: &Schedule) -> Option<u64> {
    match s.trigger {
        Trigger::Interval { seconds } => Some(seconds),
        _ => None,
    }
}

impl ScheduleSpec {
    /// The schedule this spec describes; errors are named below `field`.
    pub fn parse(&self, field: &str) -> Result<Schedule, Vec<FieldError>> {
        let mut errs = Vec::new();
        let tz = match self.timezone.as_deref() {
            None => None,
            Some(name) => match jiff::tz::TimeZone::get(name) {
                Ok(tz) => Some(tz),
                Err(_) => {
                    errs.push(FieldError::new(
                        format!("{field}.timezone"),
                        format!("`{name}` is not an IANA time zone (e.g. America/Sao_Paulo, UTC)"),
                    ));
                    None
                }
            },
        };
        let trigger = match (&self.cron, self.interval_seconds) {
            (Some(_), Some(_)) => {
                errs.push(FieldError::new(
                    field.to_string(),
                    "give either cron or interval_seconds, not both",
                ));
                Trigger::Manual
            }
            (Some(expr), None) => {
                if self.timezone.is_none() {
                    errs.push(FieldError::new(
                        format!("{field}.timezone"),
                        "required with cron: the IANA zone the times are in (e.g. America/Sao_Paulo)",
                    ));
                }
                match expr.parse::<CronExpr>() {
                    Ok(c) => Trigger::Cron(c),
                    Err(e) => {
                        errs.push(FieldError::new(format!("{field}.cron"), e.to_string()));
                        Trigger::Manual
                    }
                }
            }
            (None, Some(secs)) => {
                if !(60..=366 * 24 * 3600).contains(&secs) {
                    errs.push(FieldError::new(
                        format!("{field}.interval_seconds"),
                        "between 60 seconds and a year",
                    ));
                }
                Trigger::Interval { seconds: secs }
            }
            (None, None) => {
                errs.push(FieldError::new(
                    field.to_string(),
                    "give cron (with timezone) or interval_seconds",
                ));
                Trigger::Manual
            }
        };
        if self.jitter_seconds > 24 * 3600 {
            errs.push(FieldError::new(format!("{field}.jitter_seconds"), "at most a day (86400)"));
        }
        let window = match &self.window {
            None => None,
            Some(w) => {
                if self.timezone.is_none() {
                    errs.push(FieldError::new(
                        format!("{field}.timezone"),
                        "required with a window: the IANA zone its times are in",
                    ));
                }
                let start = parse_hhmm(&w.start)
                    .map_err(|m| errs.push(FieldError::new(format!("{field}.window.start"), m)))
                    .ok();
                let end = parse_hhmm(&w.end)
                    .map_err(|m| errs.push(FieldError::new(format!("{field}.window.end"), m)))
                    .ok();
                match (start, end) {
                    (Some(start), Some(end)) if start == end => {
                        errs.push(FieldError::new(
                            format!("{field}.window"),
                            "start and end are equal: leave the window out to allow any time",
                        ));
                        None
                    }
                    (Some(start), Some(end)) => {
                        let len = window_minutes(start, end);
                        // The jitter must leave room inside the window, also on a DST day
                        // when the window is an hour shorter.
                        if self.jitter_seconds > 0 && self.jitter_seconds.saturating_add(3600) >= len * 60 {
                            errs.push(FieldError::new(
                                format!("{field}.jitter_seconds"),
                                format!("must be shorter than the window ({len} min) minus an hour"),
                            ));
                        }
                        Some(Window { start, end })
                    }
                    _ => None,
                }
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Schedule {
            trigger,
            tz: tz.unwrap_or(jiff::tz::TimeZone::UTC),
            jitter_seconds: self.jitter_seconds,
            window,
        })
    }
}

fn parse_hhmm(s: &str) -> Result<jiff::civil::Time, String> {
    let bad = || format!("`{s}`: a local time HH:MM (00:00 to 23:59)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    jiff::civil::Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// Length of a window in minutes (crossing midnight when end < start).
fn window_minutes(start: jiff::civil::Time, end: jiff::civil::Time) -> u64 {
    let mins = |t: jiff::civil::Time| i64::from(t.hour()) * 60 + i64::from(t.minute());
    let d = (mins(end) - mins(start)).rem_euclid(24 * 60);
    u64::try_from(d).unwrap_or(0)
}

impl RetentionSpec {
    /// restic's options, or every bad field.
    pub fn to_keep_policy(&self) -> Result<KeepPolicy, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut within = |field: &str, v: &Option<String>| -> Option<KeepDuration> {
            let s = v.as_deref()?;
            match s.parse::<KeepDuration>() {
                // restic takes "0d" and "-1d" too; for a policy they are mistakes.
                Ok(d) if d.is_zero() || d.years < 0 || d.months < 0 || d.days < 0 || d.hours < 0 => {
                    errs.push(FieldError::new(
                        format!("retention.{field}"),
                        format!("`{s}`: a positive duration such as 30d, 6m or 1y2m"),
                    ));
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    errs.push(FieldError::new(format!("retention.{field}"), e.to_string()));
                    None
                }
            }
        };
        let k = KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: within("keep_within", &self.keep_within),
            within_hourly: within("keep_within_hourly", &self.keep_within_hourly),
            within_daily: within("keep_within_daily", &self.keep_within_daily),
            within_weekly: within("keep_within_weekly", &self.keep_within_weekly),
            within_monthly: within("keep_within_monthly", &self.keep_within_monthly),
            within_yearly: within("keep_within_yearly", &self.keep_within_yearly),
            tags: Vec::new(),
        };
        let mut k = k;
        if self.keep_tags.len() > 100 {
            errs.push(FieldError::new("retention.keep_tags", "at most 100 taglists"));
        }
        for (i, list) in self.keep_tags.iter().enumerate() {
            let tags: Vec<String> =
                list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect();
            if tags.is_empty() || list.chars().any(char::is_control) {
                errs.push(FieldError::new(
                    format!("retention.keep_tags[{i}]"),
                    "a tag, or tags separated by commas (all must be present)",
                ));
            }
            k.tags.push(tags);
        }
        for (field, v) in [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ] {
            if v > 1_000_000 {
                errs.push(FieldError::new(format!("retention.{field}"), "at most 1000000"));
            }
        }
        if errs.is_empty() { Ok(k) } else { Err(errs) }
    }
}

impl MaintenanceSpec {
    fn check_into(&self, errs: &mut Vec<FieldError>) {
        for (field, s) in [("forget", &self.forget), ("prune", &self.prune), ("check", &self.check)] {
            if let Err(e) = s.parse(&format!("maintenance.{field}")) {
                errs.extend(e);
            }
        }
        if self.max_unused_percent > 100 {
            errs.push(FieldError::new("maintenance.max_unused_percent", "between 0 and 100"));
        }
        if let Err(m) = self.check_read_data.parse::<ReadData>() {
            errs.push(FieldError::new("maintenance.check_read_data", m));
        }
    }

    /// The check's depth (valid specs only; `none` otherwise).
    pub fn read_data(&self) -> ReadData {
        self.check_read_data.parse().unwrap_or(ReadData::None)
    }
}

/// A hook name: letters, digits, `.`, `_` and `-`, starting with a letter or digit; never a
/// path.
pub fn valid_hook_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("..")
}

fn check_hook(field: &str, h: &HookSpec, after: bool, errs: &mut Vec<FieldError>) {
    if !valid_hook_name(&h.name) {
        errs.push(FieldError::new(
            format!("{field}.name"),
            "the name of an executable in the agent's hook directory: 1 to 64 of A-Z a-z 0-9 . _ -, \
             starting with a letter or digit, no '/' and no '..'",
        ));
    }
    if !(1..=24 * 3600).contains(&h.timeout_seconds) {
        errs.push(FieldError::new(format!("{field}.timeout_seconds"), "between 1 second and a day"));
    }
    if after && h.on_failure == OnFailure::SkipBackup {
        errs.push(FieldError::new(
            format!("{field}.on_failure"),
            "an after-hook runs once the backup is done: use fail or continue",
        ));
    }
}

fn check_paths(paths: &[String], errs: &mut Vec<FieldError>) {
    if paths.is_empty() || paths.len() > MAX_ITEMS {
        errs.push(FieldError::new("paths", "give 1 to 1000 absolute paths"));
        return;
    }
    for (i, p) in paths.iter().enumerate() {
        if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") || p.len() > 4096 {
            errs.push(FieldError::new(
                format!("paths[{i}]"),
                format!("{p:?} is not an absolute path without '..'"),
            ));
        }
    }
}

fn check_list(
    field: &str,
    items: &[String],
    max: usize,
    errs: &mut Vec<FieldError>,
    bad: impl Fn(&str) -> Option<String>,
) {
    if items.len() > max {
        errs.push(FieldError::new(field, format!("at most {max} entries")));
        return;
    }
    for (i, item) in items.iter().enumerate() {
        if let Some(m) = bad(item) {
            errs.push(FieldError::new(format!("{field}[{i}]"), m));
        }
    }
}

/// Exclude globs are checked exactly as the agent's engine compiles them (gitignore-style
/// overrides of the `ignore` crate), so a policy the controller accepts never fails on a
/// machine.
fn check_globs(field: &str, globs: &[String], case_insensitive: bool, errs: &mut Vec<FieldError>) {
    check_list(field, globs, MAX_ITEMS, errs, |g| {
        let t = g.trim();
        if t.is_empty() || t.contains('\0') || t.len() > 4096 {
            return Some("a non-empty pattern".into());
        }
        if t.starts_with('!') {
            return Some("negation (`!`) is not supported".into());
        }
        let mut b = ignore::overrides::OverrideBuilder::new("/");
        if let Err(e) = b.case_insensitive(case_insensitive) {
            return Some(e.to_string());
        }
        match b.add(&format!("!{t}")).and_then(|b| b.build()) {
            Ok(_) => None,
            Err(e) => Some(format!("invalid pattern: {e}")),
        }
    });
}
