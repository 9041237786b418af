//! The warnings of one backup, bounded: the first [`MAX_WARNINGS`] distinct ones, each clipped
//! to [`MAX_WARNING_BYTES`], and a count of the rest.
//!
//! A backup of a tree with millions of unreadable files used to collect millions of warnings
//! (de-duplicated with a linear search each, so quadratic time), and the whole list travelled
//! to the agent and on to the controller in one message, over gRPC's size limit: the result
//! could never be delivered. The first warnings name the problem; the count says how big it is.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// How many distinct warnings a report lists (the controller stores as many).
pub const MAX_WARNINGS: usize = 1_000;

/// The longest warning kept, in bytes (longer ones are cut on a character boundary and end
/// with `…`); the controller stores warnings up to this length too.
pub const MAX_WARNING_BYTES: usize = 2_000;

/// Warnings collected during one backup; shared with the reader threads.
#[derive(Clone, Default)]
pub(crate) struct Warnings(Arc<Mutex<Collected>>);

#[derive(Default)]
struct Collected {
    /// In the order they came.
    list: Vec<String>,
    seen: HashSet<String>,
    /// Warnings not listed because the list was full. A warning repeated after that counts
    /// each time: telling repeats apart would mean remembering every warning.
    dropped: u64,
}

impl Warnings {
    /// Records a warning once (the walk can report the same entry twice).
    pub(crate) fn push(&self, warning: String) {
        let mut c = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.list.len() >= MAX_WARNINGS {
            if !c.seen.contains(&warning) {
                c.dropped += 1;
            }
            return;
        }
        let warning = clip(warning, MAX_WARNING_BYTES);
        if c.seen.insert(warning.clone()) {
            log::warn!("{warning}");
            c.list.push(warning);
        }
    }

    /// The warnings listed so far and how many more there were; starts a new list.
    pub(crate) fn take(&self) -> (Vec<String>, u64) {
        let mut c = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = std::mem::take(&mut *c);
        (c.list, c.dropped)
    }
}

/// A list of messages bounded like a backup's warnings: the first [`MAX_WARNINGS`], each
/// clipped to [`MAX_WARNING_BYTES`], and a count of the rest (a restore's warnings and errors:
/// a restore of millions of files as a user who may not set their owners collected one warning
/// per file, all in memory, all logged).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Capped {
    list: Vec<String>,
    more: u64,
}

impl Capped {
    pub(crate) fn push(&mut self, message: String) {
        if self.list.len() < MAX_WARNINGS {
            self.list.push(clip(message, MAX_WARNING_BYTES));
        } else {
            self.more += 1;
        }
    }

    /// Takes everything `other` holds (listed and counted), leaving it empty.
    pub(crate) fn append(&mut self, other: &mut Capped) {
        for m in other.list.drain(..) {
            self.push(m);
        }
        self.more += std::mem::take(&mut other.more);
    }

    pub(crate) fn extend(&mut self, mut other: Capped) {
        self.append(&mut other);
    }

    /// How many there were, listed or not.
    pub(crate) fn len(&self) -> u64 {
        self.list.len() as u64 + self.more
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The listed ones, in the order they came.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &String> {
        self.list.iter()
    }

    /// How many were not listed.
    pub(crate) fn more(&self) -> u64 {
        self.more
    }
}

/// Cuts `s` to at most `max` bytes on character boundaries, keeping its beginning and its end
/// (where a warning's reason and a log's last lines are) and marking the cut with `…`.
pub fn clip(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let room = max.saturating_sub('…'.len_utf8());
    let mut head = room / 2;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - (room - room / 2);
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &s[..head], &s[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Warnings {
        /// A long path's warning as the engine words it, clipped.
        fn clipped_example(&self) -> String {
            clip(format!("/{}: skipped, name too long", "d/".repeat(3_000)), MAX_WARNING_BYTES)
        }
    }

    #[test]
    fn warnings_are_bounded_distinct_and_clipped() {
        let w = Warnings::default();
        for i in 0..5_000 {
            w.push(format!("/data/file-{i}: cannot be read"));
            w.push(format!("/data/file-{i}: cannot be read"));
        }
        let (list, dropped) = w.take();
        assert_eq!(list.len(), 1_000, "the first 1,000 distinct warnings are kept");
        assert_eq!(list[999], "/data/file-999: cannot be read", "in the order they came");
        assert_eq!(dropped, 8_000, "the others are counted");
        w.push("é".repeat(10_000));
        let (long, dropped) = w.take();
        assert!(long[0].len() <= MAX_WARNING_BYTES, "each warning is clipped: {} bytes", long[0].len());
        assert!(
            long[0].starts_with('é') && long[0].ends_with('é') && long[0].contains('…'),
            "head and tail kept"
        );
        let reason = w.clipped_example();
        assert!(reason.ends_with(": skipped, name too long"), "the reason at the end survives: {reason}");
        assert_eq!(dropped, 0, "take starts a new list");
    }

    #[test]
    fn capped_lists_keep_the_first_and_count_the_rest_also_when_merged() {
        let mut a = Capped::default();
        for i in 0..1_500 {
            a.push(format!("/r/{i}: cannot set the owner"));
        }
        let mut b = Capped::default();
        for i in 0..700 {
            b.push(format!("{i} {}", "x".repeat(5_000)));
        }
        a.append(&mut b);
        assert!(b.is_empty(), "appending empties the other");
        assert_eq!(a.len(), 2_200, "every message counted");
        assert_eq!(a.iter().count(), MAX_WARNINGS, "the first 1,000 listed");
        assert_eq!(a.more(), 1_200);
        assert_eq!(a.iter().last().map(String::as_str), Some("/r/999: cannot set the owner"));
        let mut c = Capped::default();
        c.push("é".repeat(10_000));
        c.extend(a);
        assert!(c.iter().all(|m| m.len() <= MAX_WARNING_BYTES), "each clipped");
        assert_eq!(c.len(), 2_201);
    }

    #[test]
    fn many_warnings_cost_linear_time() {
        // These pushes finish at once (a quadratic de-duplication took minutes); not timed.
        let w = Warnings::default();
        for i in 0..200_000 {
            w.push(format!("/data/{i}"));
        }
        assert_eq!(w.take().1, 199_000);
    }
}
