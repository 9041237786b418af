//! restic 0.14.0's `forget` rules, unit by unit: duration parsing and rendering, `--group-by`,
//! tag lists, snapshot times, Go's calendar arithmetic and DST, buckets, counts, windows and
//! the empty policy. The whole against the real restic binary is `tests/retention_restic.rs`.

use super::go_time::{
    GoTime, Location, NANOS_PER_SECOND, civil_from_days, days_from_civil, go_add_date, iso_week, nanos,
};
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
    assert_eq!(instant(go_add_date(at("2024-03-20T12:00:00-04:00"), 0, 0, -12)), ts("2024-03-08T17:00:00Z"));
    // Into the gap: 02:30 on 12 March 2023 does not exist; Go lands on 01:30 EST.
    assert_eq!(instant(go_add_date(at("2023-03-13T02:30:00-04:00"), 0, 0, -1)), ts("2023-03-12T06:30:00Z"));
    // Into the fold: 01:30 on 5 November 2023 happens twice; Go takes the first (EDT).
    assert_eq!(instant(go_add_date(at("2023-11-06T01:30:00-05:00"), 0, 0, -1)), ts("2023-11-05T05:30:00Z"));
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
    assert_eq!(kept(&apply(&policy, GroupBy::default(), &snapshots, now())), ["latest", "later", "earlier"]);
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
        let policy =
            KeepPolicy { tags: lists.iter().map(|l| parse_tag_list(l)).collect(), ..KeepPolicy::default() };
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
        apply(&KeepPolicy { last: 1, ..KeepPolicy::default() }, GroupBy::default(), &[], now()).is_empty()
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
