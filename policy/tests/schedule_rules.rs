//! The scheduling rules as the product documents them, checked on exact instants: cron in a
//! time zone with Cofre's DST rules (gap minutes run once at the transition, repeated minutes
//! once at their first pass), intervals, jitter, windows and catch-up after downtime.

use std::collections::BTreeSet;

use cofre_policy::cron::CronExpr;
use cofre_policy::schedule::{Schedule, Trigger, Window, jitter_offset};
use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

fn utc(text: &str) -> Timestamp {
    text.parse().unwrap_or_else(|e| panic!("`{text}` is not an instant: {e}"))
}

fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap_or_else(|e| panic!("time zone {name}: {e}"))
}

/// An instant given as unambiguous local time in `zone`.
fn local(zone_name: &str, civil: &str) -> Timestamp {
    let civil: DateTime = civil.parse().unwrap();
    zone(zone_name).to_ambiguous_timestamp(civil).unambiguous().unwrap()
}

fn time(text: &str) -> Time {
    text.parse().unwrap()
}

fn cron_schedule(expr: &str, zone_name: &str) -> Schedule {
    Schedule {
        trigger: Trigger::Cron(expr.parse().unwrap()),
        tz: zone(zone_name),
        jitter_seconds: 0,
        window: None,
    }
}

fn with_window(mut schedule: Schedule, start: &str, end: &str) -> Schedule {
    schedule.window = Some(Window::new(time(start), time(end)).unwrap());
    schedule
}

/// Every run the schedule makes from `from` (exclusive) to `to`, recording each run's slot as
/// the scheduler does: the instants a machine that is always on would start at.
fn runs(schedule: &Schedule, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    let mut out = Vec::new();
    let mut last = None;
    while let Some(start) = schedule.next_start(last, from, 0) {
        if start > to {
            break;
        }
        out.push(start);
        last = Some(schedule.slot_for_run(start));
        assert!(out.len() < 10_000, "runaway schedule");
    }
    out
}

fn instants(texts: &[&str]) -> Vec<Timestamp> {
    texts.iter().map(|t| utc(t)).collect()
}

/// The transitions the tests below rely on, read from the time zone database jiff loaded: if
/// the data ever differed, these fail first and say why.
#[test]
fn the_loaded_tzdb_has_the_transitions_the_tests_assume() {
    // (zone, an instant a little before, transition instant, offset after in hours)
    let cases = [
        ("America/Sao_Paulo", "2018-11-01T00:00Z", "2018-11-04T03:00Z", -2),
        ("America/Sao_Paulo", "2019-02-10T00:00Z", "2019-02-17T02:00Z", -3),
        ("America/New_York", "2026-03-01T00:00Z", "2026-03-08T07:00Z", -4),
        ("America/New_York", "2026-10-25T00:00Z", "2026-11-01T06:00Z", -5),
        ("Europe/Berlin", "2026-03-22T00:00Z", "2026-03-29T01:00Z", 2),
        ("Europe/Berlin", "2026-10-18T00:00Z", "2026-10-25T01:00Z", 1),
    ];
    for (name, before, at, offset) in cases {
        let tz = zone(name);
        let transition = tz.following(utc(before)).next().unwrap();
        assert_eq!(transition.timestamp(), utc(at), "{name}");
        assert_eq!(transition.offset(), jiff::tz::offset(offset), "{name}");
    }
    // Brazil dropped DST in 2019: the fold of February 2019 is São Paulo's last transition.
    // (Some databases end the zone with a marker at 2038 that keeps -03.)
    let sao_paulo = zone("America/Sao_Paulo");
    let later: Vec<_> = sao_paulo.following(utc("2019-02-18T00:00Z")).take(5).map(|t| t.offset()).collect();
    assert!(later.iter().all(|&offset| offset == jiff::tz::offset(-3)), "{later:?}");
}

#[test]
fn sao_paulo_gap_runs_once_at_the_transition() {
    // 2018-11-04 00:00 -03 became 01:00 -02: 00:30 did not exist that day.
    let schedule = cron_schedule("30 0 * * *", "America/Sao_Paulo");
    let got = runs(&schedule, utc("2018-11-02T12:00Z"), utc("2018-11-06T12:00Z"));
    let expected = instants(&[
        "2018-11-03T03:30Z", // 00:30 -03
        "2018-11-04T03:00Z", // the gap: 01:00 -02, the transition itself
        "2018-11-05T02:30Z", // 00:30 -02
        "2018-11-06T02:30Z",
    ]);
    assert_eq!(got, expected);
}

#[test]
fn sao_paulo_fold_runs_once_at_the_first_pass() {
    // 2019-02-17 00:00 -02 became 2019-02-16 23:00 -03: 23:30 on the 16th happened twice.
    let schedule = cron_schedule("30 23 * * *", "America/Sao_Paulo");
    let got = runs(&schedule, utc("2019-02-15T12:00Z"), utc("2019-02-19T12:00Z"));
    let expected = instants(&[
        "2019-02-16T01:30Z", // 15th 23:30 -02
        "2019-02-17T01:30Z", // 16th, first 23:30 (-02); the second (02:30Z) is no slot
        "2019-02-18T02:30Z", // 17th 23:30 -03
        "2019-02-19T02:30Z",
    ]);
    assert_eq!(got, expected);
}

#[test]
fn gap_and_fold_mapping_in_new_york_and_berlin() {
    // (zone, expression, from, to, expected runs)
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        // New York 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z.
        (
            "America/New_York",
            "30 2 * * *",
            "2026-03-07T00:00Z",
            "2026-03-10T00:00Z",
            &["2026-03-07T07:30Z", "2026-03-08T07:00Z", "2026-03-09T06:30Z"],
        ),
        // Four matching minutes inside the gap: one run.
        (
            "America/New_York",
            "*/15 2 * * *",
            "2026-03-07T00:00Z",
            "2026-03-10T00:00Z",
            &[
                "2026-03-07T07:00Z",
                "2026-03-07T07:15Z",
                "2026-03-07T07:30Z",
                "2026-03-07T07:45Z",
                "2026-03-08T07:00Z",
                "2026-03-09T06:00Z",
                "2026-03-09T06:15Z",
                "2026-03-09T06:30Z",
                "2026-03-09T06:45Z",
            ],
        ),
        // New York 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00Z; 01:xx happens twice.
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T00:00Z",
            "2026-11-03T00:00Z",
            &["2026-10-31T05:30Z", "2026-11-01T05:30Z", "2026-11-02T06:30Z"],
        ),
        (
            "America/New_York",
            "*/20 1 * * *",
            "2026-11-01T00:00Z",
            "2026-11-02T00:00Z",
            &["2026-11-01T05:00Z", "2026-11-01T05:20Z", "2026-11-01T05:40Z"],
        ),
        // Berlin 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00Z.
        (
            "Europe/Berlin",
            "15,45 2 * * *",
            "2026-03-28T00:00Z",
            "2026-03-31T00:00Z",
            &[
                "2026-03-28T01:15Z",
                "2026-03-28T01:45Z",
                "2026-03-29T01:00Z",
                "2026-03-30T00:15Z",
                "2026-03-30T00:45Z",
            ],
        ),
        // Berlin 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z; 02:xx happens twice.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T00:00Z",
            "2026-10-27T00:00Z",
            &["2026-10-24T00:30Z", "2026-10-25T00:30Z", "2026-10-26T01:30Z"],
        ),
    ];
    for &(name, expr, from, to, expected) in cases {
        let schedule = cron_schedule(expr, name);
        assert_eq!(runs(&schedule, utc(from), utc(to)), instants(expected), "`{expr}` in {name}");
    }
}

#[test]
fn hourly_crons_across_dst_days_neither_double_nor_lose_a_real_hour() {
    // (zone, the local day, its expected runs in UTC)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // Spring forward: local 02:00 does not exist and maps to the transition (07:00Z), which
        // is also 03:00 EDT: one run per real hour, 23 on a 23-hour day.
        (
            "America/New_York",
            "2026-03-08T04:30Z",
            "2026-03-08T09:30Z",
            &[
                "2026-03-08T05:00Z", // 00:00 EST
                "2026-03-08T06:00Z", // 01:00 EST
                "2026-03-08T07:00Z", // 02:00 (gap) = 03:00 EDT
                "2026-03-08T08:00Z", // 04:00 EDT
                "2026-03-08T09:00Z",
            ],
        ),
        // Fall back: 01:00 runs at its first pass only, so two real hours pass before 02:00 EST.
        (
            "America/New_York",
            "2026-11-01T03:30Z",
            "2026-11-01T08:30Z",
            &[
                "2026-11-01T04:00Z", // 00:00 EDT
                "2026-11-01T05:00Z", // 01:00 EDT (first pass)
                "2026-11-01T07:00Z", // 02:00 EST
                "2026-11-01T08:00Z",
            ],
        ),
        (
            "Europe/Berlin",
            "2026-03-28T22:30Z",
            "2026-03-29T02:30Z",
            &[
                "2026-03-28T23:00Z", // 00:00 CET
                "2026-03-29T00:00Z", // 01:00 CET
                "2026-03-29T01:00Z", // 02:00 (gap) = 03:00 CEST
                "2026-03-29T02:00Z", // 04:00 CEST
            ],
        ),
        (
            "Europe/Berlin",
            "2026-10-24T22:30Z",
            "2026-10-25T03:30Z",
            &[
                "2026-10-24T23:00Z", // 01:00 CEST
                "2026-10-25T00:00Z", // 02:00 CEST (first pass)
                "2026-10-25T02:00Z", // 03:00 CET
                "2026-10-25T03:00Z",
            ],
        ),
    ];
    for &(name, from, to, expected) in cases {
        let schedule = cron_schedule("0 * * * *", name);
        assert_eq!(runs(&schedule, utc(from), utc(to)), instants(expected), "hourly in {name}");
    }
    // Whole days: 23 runs on the short day, 24 on the long one (the repeated hour is skipped,
    // not run twice), 24 on an ordinary day.
    let day_counts = [
        ("America/New_York", "2026-03-08T00:00", "2026-03-09T00:00", 23),
        ("America/New_York", "2026-11-01T00:00", "2026-11-02T00:00", 24),
        ("America/New_York", "2026-06-01T00:00", "2026-06-02T00:00", 24),
        ("Europe/Berlin", "2026-03-29T00:00", "2026-03-30T00:00", 23),
        ("Europe/Berlin", "2026-10-25T00:00", "2026-10-26T00:00", 24),
    ];
    for (name, from, to, count) in day_counts {
        let schedule = cron_schedule("0 * * * *", name);
        // From just before local midnight to just before the next one.
        let start = local(name, from).checked_sub(SignedDuration::from_secs(1)).unwrap();
        let end = local(name, to).checked_sub(SignedDuration::from_secs(1)).unwrap();
        let got = runs(&schedule, start, end);
        assert_eq!(got.len(), count, "hourly runs in {name} on {from}: {got:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {got:?}");
    }
}

#[test]
fn searching_from_inside_a_gap_or_a_fold() {
    let ny = "America/New_York";
    // (expression, last slot or since, expected next start)
    let cases = [
        // From the second pass of the fold (01:10 EST = 06:10Z): the remaining 01:xx minutes map
        // to the first pass, already past, so the next run is 02:00 EST.
        ("*/15 * * * *", "2026-11-01T06:10Z", "2026-11-01T07:00Z"),
        // From the first pass, the rest of the first pass still comes.
        ("*/15 * * * *", "2026-11-01T05:10Z", "2026-11-01T05:15Z"),
        ("*/15 * * * *", "2026-11-01T05:45Z", "2026-11-01T07:00Z"),
        // From the transition of the gap, the gap's minutes are that same instant: not after.
        ("*/15 2 * * *", "2026-03-08T07:00Z", "2026-03-09T06:00Z"),
        ("*/15 2 * * *", "2026-03-08T06:59:59Z", "2026-03-08T07:00Z"),
        ("*/15 * * * *", "2026-03-08T06:50Z", "2026-03-08T07:00Z"),
        ("*/15 * * * *", "2026-03-08T07:00Z", "2026-03-08T07:15Z"),
    ];
    for (expr, from, expected) in cases {
        let schedule = cron_schedule(expr, ny);
        assert_eq!(
            schedule.next_start(Some(utc(from)), utc(from), 0),
            Some(utc(expected)),
            "`{expr}` from {from}"
        );
    }
}

#[test]
fn slot_for_run_is_the_latest_cron_instant_at_or_before_now() {
    // (zone, expression, now, slot)
    let cases = [
        ("UTC", "0 3 * * *", "2026-05-05T10:00Z", "2026-05-05T03:00Z"),
        ("UTC", "0 3 * * *", "2026-05-05T03:00Z", "2026-05-05T03:00Z"),
        ("UTC", "0 3 * * *", "2026-05-05T02:59:59Z", "2026-05-04T03:00Z"),
        // In the fold's second pass (01:40 EST = 06:40Z), 01:45 already happened in the first.
        ("America/New_York", "*/15 * * * *", "2026-11-01T06:40Z", "2026-11-01T05:45Z"),
        ("America/New_York", "*/15 * * * *", "2026-11-01T05:40Z", "2026-11-01T05:30Z"),
        ("America/New_York", "*/15 * * * *", "2026-11-01T07:05Z", "2026-11-01T07:00Z"),
        ("America/New_York", "30 1 * * *", "2026-11-01T06:45Z", "2026-11-01T05:30Z"),
        // After the gap, the gap's minutes are the transition instant.
        ("America/New_York", "*/15 2 * * *", "2026-03-08T07:05Z", "2026-03-08T07:00Z"),
        ("America/New_York", "*/15 2 * * *", "2026-03-08T06:59Z", "2026-03-07T07:45Z"),
        ("America/Sao_Paulo", "30 23 * * *", "2019-02-17T02:45Z", "2019-02-17T01:30Z"),
        ("America/Sao_Paulo", "30 0 * * *", "2018-11-04T12:00Z", "2018-11-04T03:00Z"),
    ];
    for (name, expr, now, slot) in cases {
        let schedule = cron_schedule(expr, name);
        assert_eq!(schedule.slot_for_run(utc(now)), utc(slot), "`{expr}` in {name} at {now}");
    }
}

#[test]
fn catch_up_after_downtime_is_one_run() {
    let mut schedule = cron_schedule("0 3 * * *", "Europe/Berlin");
    schedule.jitter_seconds = 600;
    let offset = 120;
    let last = utc("2026-05-01T01:00Z"); // 03:00 CEST
    // Due the next day; the machine is off until the 5th at noon.
    assert_eq!(schedule.next_start(Some(last), last, offset), Some(utc("2026-05-02T01:02Z")));
    let now = utc("2026-05-05T10:00Z");
    let slot = schedule.slot_for_run(now);
    assert_eq!(slot, utc("2026-05-05T01:00Z"), "the four missed slots collapse into the latest");
    let next = schedule.next_start(Some(slot), last, offset).unwrap();
    assert_eq!(next, utc("2026-05-06T01:02Z"));
    assert!(next > now, "nothing more is due: one run, not one per missed slot");
}

#[test]
fn intervals_and_manual() {
    let since = utc("2026-05-01T12:00Z");
    let interval = |seconds| Schedule {
        trigger: Trigger::Interval { seconds },
        tz: zone("Europe/Berlin"),
        jitter_seconds: 3600,
        window: None,
    };
    let hourly = interval(3600);
    assert_eq!(hourly.next_start(None, since, 900), Some(since), "a new interval policy is due at once");
    assert_eq!(
        hourly.next_start(Some(utc("2026-05-02T08:30Z")), since, 900),
        Some(utc("2026-05-02T09:30Z")),
        "last + interval, no jitter"
    );
    assert_eq!(hourly.slot_for_run(utc("2026-05-02T08:31:07Z")), utc("2026-05-02T08:31:07Z"));
    // Beyond jiff's range (year 9999): never.
    assert_eq!(interval(u64::MAX).next_start(Some(since), since, 0), None);

    let manual = Schedule { trigger: Trigger::Manual, ..hourly };
    assert_eq!(manual.next_start(None, since, 0), None);
    assert_eq!(manual.next_start(Some(since), since, 0), None);
    assert_eq!(manual.slot_for_run(since), since);
}

#[test]
fn a_new_cron_policy_waits_for_its_next_slot_plus_jitter() {
    let schedule = cron_schedule("0 3 * * *", "UTC");
    let since = utc("2026-05-01T12:00Z");
    assert_eq!(schedule.next_start(None, since, 0), Some(utc("2026-05-02T03:00Z")));
    assert_eq!(schedule.next_start(None, since, 1800), Some(utc("2026-05-02T03:30Z")));
    assert_eq!(
        schedule.next_start(Some(utc("2026-05-02T03:00Z")), since, 1800),
        Some(utc("2026-05-03T03:30Z"))
    );
}

#[test]
fn jitter_offsets_are_bounded_stable_and_spread() {
    let key = |i: u32| {
        let mut key = format!("machine-{i:04}").into_bytes();
        key.extend_from_slice(b"policy-7");
        key
    };
    assert_eq!(jitter_offset(3600, &key(1)), jitter_offset(3600, &key(1)), "stable");
    assert_eq!(jitter_offset(0, &key(1)), 0);
    let offsets: Vec<u64> = (0..1000).map(|i| jitter_offset(3600, &key(i))).collect();
    assert!(offsets.iter().all(|&o| o <= 3600), "out of bounds: {:?}", offsets.iter().max());
    let distinct: BTreeSet<u64> = offsets.iter().copied().collect();
    // 1000 draws among 3601 values give about 870 distinct ones.
    assert!(distinct.len() > 800, "only {} distinct offsets", distinct.len());
    // Every tenth of the range is used.
    for tenth in 0..10 {
        assert!(offsets.iter().any(|&o| o / 361 == tenth), "no offset in tenth {tenth}");
    }
    let mean = offsets.iter().sum::<u64>() / 1000;
    assert!((1600..=2000).contains(&mean), "mean {mean}");
    // Small ranges reach both ends.
    let small: BTreeSet<u64> = (0..1000).map(|i| jitter_offset(1, &key(i))).collect();
    assert_eq!(small, BTreeSet::from([0, 1]));
}

#[test]
fn window_crossing_midnight() {
    let base = Schedule {
        trigger: Trigger::Interval { seconds: 3600 },
        tz: zone("UTC"),
        jitter_seconds: 0,
        window: None,
    };
    let night = with_window(base, "19:00", "07:00");
    let since = utc("2026-05-01T00:00Z");
    let last = |t: &str| Some(utc(t));
    // (last run, offset, expected next start)
    let cases = [
        ("2026-05-01T21:00Z", 600, "2026-05-01T22:00Z"), // candidate inside: unchanged
        ("2026-05-02T05:30Z", 600, "2026-05-02T06:30Z"), // inside, after midnight
        ("2026-05-02T06:00Z", 600, "2026-05-02T19:10Z"), // 07:00 is the end: next opening + offset
        ("2026-05-02T11:00Z", 0, "2026-05-02T19:00Z"),
        ("2026-05-02T17:59:59Z", 600, "2026-05-02T19:10Z"),
        ("2026-05-02T18:00Z", 600, "2026-05-02T19:00Z"), // candidate is the opening itself
        ("2026-05-02T11:00Z", 12 * 3600 - 1, "2026-05-03T06:59:59Z"), // still inside
        ("2026-05-02T11:00Z", 12 * 3600, "2026-05-02T19:00Z"), // would be the end: clamped
        ("2026-05-02T11:00Z", 13 * 3600, "2026-05-02T19:00Z"), // past the end: clamped
    ];
    for (last_run, offset, expected) in cases {
        assert_eq!(
            night.next_start(last(last_run), since, offset),
            Some(utc(expected)),
            "after {last_run} +{offset}"
        );
    }
    // A never-run interval policy outside the window waits for the opening.
    assert_eq!(night.next_start(None, utc("2026-05-01T12:00Z"), 60), Some(utc("2026-05-01T19:01Z")));

    // (instant, in window, window end)
    let cases = [
        ("2026-05-01T18:59:59Z", None),
        ("2026-05-01T19:00Z", Some("2026-05-02T07:00Z")),
        ("2026-05-01T23:59Z", Some("2026-05-02T07:00Z")),
        ("2026-05-02T00:00Z", Some("2026-05-02T07:00Z")),
        ("2026-05-02T06:59:59Z", Some("2026-05-02T07:00Z")),
        ("2026-05-02T07:00Z", None),
        ("2026-05-02T12:00Z", None),
    ];
    for (t, end) in cases {
        assert_eq!(night.in_window(utc(t)), end.is_some(), "in_window({t})");
        assert_eq!(night.window_end_after(utc(t)), end.map(utc), "window_end_after({t})");
    }
}

#[test]
fn cron_with_a_window() {
    let schedule = with_window(cron_schedule("0 * * * *", "Europe/Berlin"), "22:00", "05:00");
    let since = utc("2026-05-01T00:00Z");
    // (last slot, offset, expected): Berlin is UTC+2 in May.
    let cases = [
        ("2026-05-01T21:00Z", 300, "2026-05-01T22:05Z"), // 00:00 -> 01:05 local, inside
        ("2026-05-01T02:00Z", 300, "2026-05-01T20:05Z"), // 05:00 local is the end: 22:00 + 5 min
        ("2026-05-01T10:00Z", 0, "2026-05-01T20:00Z"),
        // The offset makes the candidate leave the window (04:00 + 90 min): the next opening.
        ("2026-05-01T01:00Z", 5400, "2026-05-01T21:30Z"),
    ];
    for (last, offset, expected) in cases {
        assert_eq!(schedule.next_start(Some(utc(last)), since, offset), Some(utc(expected)), "after {last}");
    }
    // A run late in the window still ends with it, reported as overrunning.
    assert_eq!(schedule.window_end_after(utc("2026-05-02T02:30Z")), Some(utc("2026-05-02T03:00Z")));
    assert!(cron_schedule("0 * * * *", "UTC").in_window(utc("2026-05-02T12:00Z")));
    assert_eq!(cron_schedule("0 * * * *", "UTC").window_end_after(utc("2026-05-02T12:00Z")), None);
}

#[test]
fn windows_on_dst_days() {
    let ny = "America/New_York";
    let interval = |start, end| {
        with_window(
            Schedule {
                trigger: Trigger::Interval { seconds: 3600 },
                tz: zone(ny),
                jitter_seconds: 0,
                window: None,
            },
            start,
            end,
        )
    };
    let since = utc("2026-01-01T00:00Z");

    // Opening in the spring gap (02:30 does not exist): opens at the transition, 03:00 EDT.
    let gap_open = interval("02:30", "04:00");
    assert_eq!(gap_open.next_start(Some(utc("2026-03-08T04:00Z")), since, 0), Some(utc("2026-03-08T07:00Z")));
    assert_eq!(
        gap_open.next_start(Some(utc("2026-03-08T04:00Z")), since, 600),
        Some(utc("2026-03-08T07:10Z"))
    );
    assert_eq!(gap_open.window_end_after(utc("2026-03-08T07:00Z")), Some(utc("2026-03-08T08:00Z")));
    assert!(!gap_open.in_window(utc("2026-03-08T06:59:59Z")));

    // Opening and closing inside the gap: that day has no window; the next day's opens.
    let in_gap = interval("02:10", "02:50");
    assert_eq!(in_gap.next_start(Some(utc("2026-03-08T04:00Z")), since, 0), Some(utc("2026-03-09T06:10Z")));
    assert!(!in_gap.in_window(utc("2026-03-08T07:00Z")));

    // Closing in the autumn fold: the window closes at the first 01:30 (05:30Z); the repeated
    // hour (06:00Z-07:00Z, 01:xx EST) is outside it.
    let fold_close = interval("22:00", "01:30");
    assert_eq!(fold_close.window_end_after(utc("2026-11-01T05:00Z")), Some(utc("2026-11-01T05:30Z")));
    assert!(!fold_close.in_window(utc("2026-11-01T06:10Z")));
    assert_eq!(
        fold_close.next_start(Some(utc("2026-11-01T05:10Z")), since, 0),
        Some(utc("2026-11-02T03:00Z")),
        "06:10Z is 01:10 EST, repeated: outside, so the next opening (22:00 EST)"
    );

    // Opening in the fold: at the first 01:30 (05:30Z).
    let fold_open = interval("01:30", "03:00");
    assert_eq!(
        fold_open.next_start(Some(utc("2026-11-01T03:00Z")), since, 0),
        Some(utc("2026-11-01T05:30Z"))
    );
    assert_eq!(fold_open.window_end_after(utc("2026-11-01T06:10Z")), Some(utc("2026-11-01T08:00Z")));

    // São Paulo's midnight fold: a window 22:00-00:00 (end before start: crossing midnight, to
    // 00:00 the next day) on 2019-02-16 closes at 00:00 -03 (03:00Z), after the repeated hour.
    let sp = with_window(
        Schedule {
            trigger: Trigger::Interval { seconds: 3600 },
            tz: zone("America/Sao_Paulo"),
            jitter_seconds: 0,
            window: None,
        },
        "22:00",
        "00:00",
    );
    assert_eq!(sp.window_end_after(utc("2019-02-17T01:30Z")), Some(utc("2019-02-17T03:00Z")));
    assert_eq!(sp.window_end_after(utc("2019-02-17T02:30Z")), Some(utc("2019-02-17T03:00Z")));
}

#[test]
fn empty_windows_are_refused_and_never_open() {
    let err = Window::new(time("03:00"), time("03:00")).unwrap_err();
    assert!(err.to_string().contains("03:00:00–03:00:00 is empty"), "{err}");
    let schedule = Schedule {
        window: Some(Window { start: time("03:00"), end: time("03:00") }),
        ..cron_schedule("0 * * * *", "UTC")
    };
    let t = utc("2026-05-01T03:00Z");
    assert!(!schedule.in_window(t));
    assert_eq!(schedule.window_end_after(t), None);
    assert_eq!(schedule.next_start(None, t, 0), None);
}

#[test]
fn cron_expressions_round_trip_through_schedules() {
    let expr: CronExpr = "@daily".parse().unwrap();
    let schedule =
        Schedule { trigger: Trigger::Cron(expr.clone()), tz: zone("UTC"), jitter_seconds: 0, window: None };
    assert_eq!(schedule.trigger, Trigger::Cron(expr));
    assert_eq!(schedule.next_start(None, utc("2026-05-01T12:00Z"), 0), Some(utc("2026-05-02T00:00Z")));
}
