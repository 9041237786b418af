//! Bounds on what the agent reports: every job event is cut to what the controller stores and
//! to at most [`MAX_EVENT_BYTES`] before it is spooled, and again before it is sent (events
//! spooled by an older agent).
//!
//! The spool is delivered oldest first, and the controller acknowledges each event only after
//! storing it: one event the controller cannot take (over gRPC's message limit, or text
//! PostgreSQL refuses) used to hold back every later result of the machine forever.

use cofre_proto::agent::v1 as pb;
use prost::Message as _;

/// The largest job event sent, in bytes: under tonic's default 4 MiB, so even a controller
/// that never raised its limit takes it.
pub const MAX_EVENT_BYTES: usize = 3 * 1024 * 1024;

/// The most warnings a report lists, the line counting those left out included.
pub const MAX_WARNINGS: usize = cofre_engine::MAX_WARNINGS;

const MAX_WARNING_BYTES: usize = cofre_engine::MAX_WARNING_BYTES;
/// Hook output kept in a job's log (the controller stores as much).
const MAX_LOG_BYTES: usize = 64 * 1024;
const MAX_ERROR_BYTES: usize = 8_000;
const MAX_PATH_BYTES: usize = 4_096;
const MAX_NAME_BYTES: usize = 255;

const MORE_PREFIX: &str = "… and ";
const MORE_SUFFIX: &str = " more warnings, not listed";

/// The warnings of a report: `listed` in order and, when there were `more`, a last line saying
/// how many; at most [`MAX_WARNINGS`] lines.
pub fn report_warnings(mut listed: Vec<String>, more: u64) -> Vec<String> {
    if more > 0 {
        listed.push(more_line(more));
    }
    limit_warnings(&mut listed, MAX_WARNINGS);
    listed
}

/// Cuts a job event to what the controller stores and to [`MAX_EVENT_BYTES`].
pub fn job_event(ev: &mut pb::JobEvent) {
    let Some(pb::job_event::Kind::Finished(f)) = &mut ev.kind else { return };
    for w in &mut f.warnings {
        clean(w, MAX_WARNING_BYTES);
    }
    limit_warnings(&mut f.warnings, MAX_WARNINGS);
    clean(&mut f.log, MAX_LOG_BYTES);
    if let Some(e) = &mut f.error {
        clean(&mut e.message, MAX_ERROR_BYTES);
    }
    if let Some(s) = &mut f.stats {
        clean(&mut s.hostname, MAX_NAME_BYTES);
        s.paths.iter_mut().for_each(|p| clean(p, MAX_PATH_BYTES));
        s.tags.iter_mut().for_each(|t| clean(t, MAX_NAME_BYTES));
    }
    // The ids and the envelope take well under a KiB.
    let limit = MAX_EVENT_BYTES - 1024;
    let excess = f.encoded_len().saturating_sub(limit);
    if excess > 0 {
        // Drop the last warnings until they free enough (the count line takes one's place).
        let mut keep = f.warnings.len();
        let mut freed = 0;
        while keep > 1 && freed < excess + 128 {
            keep -= 1;
            freed += f.warnings[keep].len() + 4;
        }
        limit_warnings(&mut f.warnings, keep);
    }
    if f.encoded_len() > limit {
        f.log = format!("[{} bytes of log left out: the report was too large]", f.log.len());
    }
    while f.encoded_len() > limit && f.stats.as_ref().is_some_and(|s| !s.paths.is_empty()) {
        if let Some(s) = &mut f.stats {
            s.paths.pop();
        }
    }
}

/// Keeps at most `max` lines (at least one), the last counting the warnings left out.
fn limit_warnings(warnings: &mut Vec<String>, max: usize) {
    let max = max.max(1);
    let mut more = match warnings.last().and_then(|w| more_count(w)) {
        Some(n) => {
            warnings.pop();
            n
        }
        None => 0,
    };
    let room = if more > 0 || warnings.len() > max { max - 1 } else { max };
    if warnings.len() > room {
        more += (warnings.len() - room) as u64;
        warnings.truncate(room);
    }
    if more > 0 {
        warnings.push(more_line(more));
    }
}

fn more_line(n: u64) -> String {
    format!("{MORE_PREFIX}{n}{MORE_SUFFIX}")
}

fn more_count(line: &str) -> Option<u64> {
    line.strip_prefix(MORE_PREFIX)?.strip_suffix(MORE_SUFFIX)?.parse().ok()
}

/// Removes NUL characters (PostgreSQL's text refuses them; a hook may print one) and clips to
/// `max` bytes.
fn clean(s: &mut String, max: usize) {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
    if s.len() > max {
        *s = cofre_engine::clip(std::mem::take(s), max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    #[test]
    fn a_report_lists_at_most_the_limit_and_counts_the_rest() {
        assert_eq!(report_warnings(lines(2), 0), lines(2));
        let w = report_warnings(lines(2), 5);
        assert_eq!(w, vec!["w0".to_string(), "w1".into(), "… and 5 more warnings, not listed".into()]);
        // The engine's full list plus a hook's warning and the engine's count.
        let w = report_warnings(lines(MAX_WARNINGS + 1), 10);
        assert_eq!(w.len(), MAX_WARNINGS);
        assert_eq!(w[MAX_WARNINGS - 2], format!("w{}", MAX_WARNINGS - 2));
        assert_eq!(w.last().map(String::as_str), Some("… and 12 more warnings, not listed"));
        // Bounding again adds to the count instead of listing it twice.
        let mut again = w;
        limit_warnings(&mut again, 10);
        assert_eq!(again.len(), 10);
        assert_eq!(more_count(again.last().unwrap()), Some(12 + (MAX_WARNINGS as u64 - 1 - 9)));
    }
}
