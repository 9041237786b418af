//! Cron parsing and searching against hand-checked cases: every accepted form and every
//! error class, macros, Display round trips, minute matching, next/previous across month and
//! year ends (checked against a minute-by-minute scan) and the ends of jiff's calendar.

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
        ("10-30/10 8-18/5 1-10/3 1-12/6 1-5/2", ["10 20 30", "8 13 18", "1 4 7 10", "1 7", "1 3 5"], true),
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
        ("0 0 * * monday", "day-of-week field `monday`: `monday` is neither a number nor a name (sun-sat)"),
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
