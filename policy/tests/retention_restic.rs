//! Proof that `cofre_policy::retention` keeps exactly what restic 0.14.0's `forget` keeps: one
//! repository of ~120 snapshots over two years (two hosts, two path sets, tags, New York and
//! UTC offsets across DST changes, a future snapshot, a three-way tie), then `forget --dry-run
//! --json` with many option sets and groupings, compared snapshot by snapshot with `apply`.
//!
//! restic must be on the PATH (CI installs it): without it this test fails, it never skips.
//! restic 0.14 breaks ties between equal times at random, so snapshots that only differ by id
//! are compared as a class (how many of them are kept, with which reasons), not one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

use cofre_policy::retention::{
    Decision, GroupBy, GroupKey, KeepPolicy, SnapshotMeta, apply, apply_in_zone, parse_snapshot_time,
};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;

const NEW_YORK: &str = "America/New_York";

/// A restic repository in a temporary directory, with two small source directories.
struct Repo {
    root: PathBuf,
    backups: u32,
    _temporary: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let temporary = tempfile::tempdir().expect("temporary directory");
        let root = temporary.path().to_owned();
        for source in ["data", "etc"] {
            std::fs::create_dir(root.join(source)).expect("source directory");
            std::fs::write(root.join(source).join("file"), source).expect("source file");
        }
        let repo = Repo { root, backups: 0, _temporary: temporary };
        repo.run("UTC", &["init", "--repository-version", "2"]);
        repo
    }

    fn source(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn command(&self, tz: &str, args: &[&str]) -> Command {
        let mut command = Command::new("restic");
        command
            .args(["--no-cache", "--quiet"])
            .args(args)
            .env("RESTIC_REPOSITORY", self.root.join("repo"))
            .env("RESTIC_PASSWORD", "retention test")
            .env("TZ", tz)
            .env_remove("RESTIC_PASSWORD_FILE")
            .env_remove("RESTIC_PASSWORD_COMMAND")
            .env_remove("RESTIC_REPOSITORY_FILE");
        command
    }

    fn run(&self, tz: &str, args: &[&str]) -> Output {
        let output = self.command(tz, args).output().unwrap_or_else(|e| {
            panic!("cannot run restic ({e}): install restic 0.14.0 (CI does) to run this test")
        });
        assert!(
            output.status.success(),
            "restic {args:?} (TZ={tz}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn backup(&mut self, spec: &Spec) {
        // A new file content per backup gives every snapshot its own tree, hence its own id,
        // even when everything else (time, host, paths, tags, parent) is the same.
        self.backups += 1;
        std::fs::write(self.source("data").join("file"), self.backups.to_string()).expect("source file");
        let mut args = vec!["backup".to_owned(), "--host".to_owned(), spec.host.to_owned()];
        args.extend(["--time".to_owned(), spec.time.clone()]);
        for tag in &spec.tags {
            args.extend(["--tag".to_owned(), (*tag).to_owned()]);
        }
        for path in spec.paths {
            args.push(self.source(path).display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(spec.tz, &args);
    }

    fn snapshots(&self) -> Vec<SnapshotMeta> {
        let output = self.run("UTC", &["snapshots", "--json"]);
        let listed: Vec<ListedSnapshot> = serde_json::from_slice(&output.stdout).expect("snapshots JSON");
        listed
            .into_iter()
            .map(|snapshot| {
                let (time, utc_offset_seconds) = parse_snapshot_time(&snapshot.time).expect("snapshot time");
                SnapshotMeta {
                    id: snapshot.id,
                    time,
                    utc_offset_seconds,
                    hostname: snapshot.hostname,
                    paths: snapshot.paths,
                    tags: snapshot.tags.unwrap_or_default(),
                }
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct ListedSnapshot {
    id: String,
    time: String,
    hostname: String,
    paths: Vec<String>,
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ForgetGroup {
    host: String,
    paths: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    keep: Option<Vec<ForgetSnapshot>>,
    remove: Option<Vec<ForgetSnapshot>>,
    reasons: Option<Vec<ForgetReason>>,
}

#[derive(Deserialize)]
struct ForgetSnapshot {
    id: String,
}

#[derive(Deserialize)]
struct ForgetReason {
    matches: Vec<String>,
}

/// One `restic backup`: wall-clock time as `--time` takes it, read in the zone `tz`.
struct Spec {
    time: String,
    tz: &'static str,
    host: &'static str,
    paths: &'static [&'static str],
    tags: Vec<&'static str>,
}

const ONE_PATH: &[&str] = &["data"];
const TWO_PATHS: &[&str] = &["data", "etc"];
/// restic 0.14 sorts a snapshot's paths itself, so this order never reaches the JSON; tags keep
/// the order they were given in (`weekly,important` below).
const TWO_PATHS_REVERSED: &[&str] = &["etc", "data"];

fn spec(time: &str, tz: &'static str, host: &'static str, paths: &'static [&'static str]) -> Spec {
    Spec { time: time.to_owned(), tz, host, paths, tags: Vec::new() }
}

/// Deterministic pseudo-random choices (xorshift64) for this test suite.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> i64 {
        i64::try_from(self.next() % bound).expect("small number")
    }
}

/// The repository's history: a pseudo-random stretch from June 2022 to February 2024, then
/// snapshots placed where restic's rules have edges.
fn history() -> Vec<Spec> {
    let mut specs = Vec::new();
    let mut rng = Rng(0x5eed_2022_0601_0900);
    let mut wall: DateTime = "2022-06-01T09:00:00".parse().expect("start");
    let end: DateTime = "2024-02-25T00:00:00".parse().expect("end");
    while wall < end && specs.len() < 95 {
        let roll = rng.below(100);
        let step = if roll < 30 {
            rng.below(6).hours().minutes(1 + rng.below(59))
        } else if roll < 70 {
            (1 + rng.below(3)).days().minutes(rng.below(600))
        } else if roll < 90 {
            (4 + rng.below(7)).days().hours(rng.below(12))
        } else {
            (14 + rng.below(32)).days()
        };
        wall = wall.checked_add(step).expect("civil time");
        let tz = if rng.below(2) == 0 { "UTC" } else { NEW_YORK };
        let host = if rng.below(10) < 7 { "alpha" } else { "beta" };
        let paths = match rng.below(8) {
            0 => TWO_PATHS_REVERSED,
            1 => TWO_PATHS,
            _ => ONE_PATH,
        };
        let tags = match rng.below(20) {
            0..=2 => vec!["important"],
            3 | 4 => vec!["important", "weekly"],
            5 => vec!["weekly", "important"],
            6 | 7 => vec!["weekly"],
            _ => Vec::new(),
        };
        let time = wall.strftime("%Y-%m-%d %H:%M:%S").to_string();
        specs.push(Spec { time, tz, host, paths, tags });
    }

    let edges = [
        // alpha's latest in EDT; 12 days back crosses spring-forward: restic run in New York
        // removes 11:30 EST, restic run in UTC keeps it.
        spec("2024-03-20 12:00:00", NEW_YORK, "alpha", ONE_PATH),
        spec("2024-03-08 12:30:00", NEW_YORK, "alpha", ONE_PATH),
        spec("2024-03-08 11:30:00", NEW_YORK, "alpha", ONE_PATH),
        // In the future: never "latest".
        spec("2099-01-01 00:00:00", "UTC", "alpha", ONE_PATH),
        // beta's latest on the 31st: one and three months back overflow to 1 May and 2 March
        // (not 30 April and 29 February), and a window excludes its exact start.
        spec("2024-05-31 12:00:00", "UTC", "beta", ONE_PATH),
        spec("2024-05-01 13:00:00", "UTC", "beta", ONE_PATH),
        spec("2024-05-01 12:00:00", "UTC", "beta", ONE_PATH),
        spec("2024-04-30 13:00:00", "UTC", "beta", ONE_PATH),
        spec("2024-03-02 12:30:00", "UTC", "beta", ONE_PATH),
        spec("2024-03-02 12:00:00", "UTC", "beta", ONE_PATH),
        spec("2024-03-01 12:00:00", "UTC", "beta", ONE_PATH),
        // gamma's latest 12 days after spring-forward at 02:30: restic run in New York starts
        // the window in the gap, at 06:30 UTC by Go's rule (07:30 by "skip forward").
        spec("2024-03-22 02:30:00", NEW_YORK, "gamma", ONE_PATH),
        spec("2024-03-10 07:00:00", "UTC", "gamma", ONE_PATH),
        spec("2024-03-10 06:15:00", "UTC", "gamma", ONE_PATH),
        // The fall-back fold: 01:30 EDT and 01:45 at -05:00 share an hour of their own clocks.
        spec("2023-11-05 01:30:00", NEW_YORK, "alpha", TWO_PATHS),
        spec("2023-11-05 01:45:00", "Etc/GMT+5", "alpha", TWO_PATHS),
        // 22:00 on New Year's Eve in New York is 2024 in UTC, but 2023 (and ISO week 52) here.
        spec("2023-12-31 22:00:00", NEW_YORK, "alpha", TWO_PATHS),
        spec("2023-12-31 20:00:00", "UTC", "alpha", TWO_PATHS),
        // ISO weeks: Sunday 1 January 2023 is in 2022-W52 with Monday 26 December.
        spec("2023-01-02 08:00:00", "UTC", "alpha", ONE_PATH),
        spec("2023-01-01 18:00:00", "UTC", "alpha", ONE_PATH),
        spec("2022-12-26 10:00:00", "UTC", "alpha", ONE_PATH),
        // A three-way tie at the top of its own group.
        spec("2023-08-15 10:00:00", "UTC", "tie", ONE_PATH),
        spec("2023-08-15 10:00:00", "UTC", "tie", ONE_PATH),
        spec("2023-08-15 10:00:00", "UTC", "tie", ONE_PATH),
        spec("2023-08-14 10:00:00", "UTC", "tie", ONE_PATH),
        spec("2023-07-01 10:00:00", "UTC", "tie", ONE_PATH),
    ];
    specs.extend(edges);
    specs
}

/// The option sets restic is run with, each with its grouping, its `TZ` and the policy that
/// says the same.
fn cases() -> Vec<(Vec<&'static str>, GroupBy, &'static str, KeepPolicy)> {
    let d = |text: &str| Some(text.parse().expect("duration"));
    let tags = |lists: &[&str]| lists.iter().map(|l| cofre_policy::retention::parse_tag_list(l)).collect();
    let none = KeepPolicy::default;
    let default = GroupBy::default();
    let combined = KeepPolicy {
        last: 3,
        hourly: 5,
        daily: 7,
        weekly: 5,
        monthly: 12,
        yearly: 2,
        within: d("1m15d"),
        within_daily: d("2m"),
        within_weekly: d("6m"),
        within_monthly: d("1y"),
        within_yearly: d("3y"),
        tags: tags(&["important"]),
        ..none()
    };
    let combined_args = vec![
        "--keep-last=3",
        "--keep-hourly=5",
        "--keep-daily=7",
        "--keep-weekly=5",
        "--keep-monthly=12",
        "--keep-yearly=2",
        "--keep-within=1m15d",
        "--keep-within-daily=2m",
        "--keep-within-weekly=6m",
        "--keep-within-monthly=1y",
        "--keep-within-yearly=3y",
        "--keep-tag=important",
    ];
    vec![
        (vec![], default, "UTC", none()),
        (vec!["--keep-last=5"], default, "UTC", KeepPolicy { last: 5, ..none() }),
        (vec!["--keep-hourly=10"], default, "UTC", KeepPolicy { hourly: 10, ..none() }),
        (
            vec!["--keep-daily=7", "--keep-weekly=5", "--keep-monthly=12"],
            default,
            "UTC",
            KeepPolicy { daily: 7, weekly: 5, monthly: 12, ..none() },
        ),
        (vec!["--keep-weekly=60"], default, "UTC", KeepPolicy { weekly: 60, ..none() }),
        (vec!["--keep-yearly=3"], default, "UTC", KeepPolicy { yearly: 3, ..none() }),
        (vec!["--keep-within=3m"], default, "UTC", KeepPolicy { within: d("3m"), ..none() }),
        (vec!["--keep-within=1m"], default, "UTC", KeepPolicy { within: d("1m"), ..none() }),
        (vec!["--keep-within=12d"], default, "UTC", KeepPolicy { within: d("12d"), ..none() }),
        (vec!["--keep-within=12d"], default, NEW_YORK, KeepPolicy { within: d("12d"), ..none() }),
        (vec!["--keep-within-daily=2m"], default, "UTC", KeepPolicy { within_daily: d("2m"), ..none() }),
        (vec!["--keep-within-hourly=20d"], default, "UTC", KeepPolicy { within_hourly: d("20d"), ..none() }),
        (vec!["--keep-within-weekly=6m"], default, "UTC", KeepPolicy { within_weekly: d("6m"), ..none() }),
        (
            vec!["--keep-within-monthly=1y2m"],
            default,
            "UTC",
            KeepPolicy { within_monthly: d("1y2m"), ..none() },
        ),
        (vec!["--keep-within-yearly=2y"], default, "UTC", KeepPolicy { within_yearly: d("2y"), ..none() }),
        (
            vec!["--keep-within-daily=-1d", "--keep-last=1"],
            default,
            "UTC",
            KeepPolicy { within_daily: d("-1d"), last: 1, ..none() },
        ),
        (vec!["--keep-tag=important"], default, "UTC", KeepPolicy { tags: tags(&["important"]), ..none() }),
        (
            vec!["--keep-tag=important, weekly", "--keep-tag="],
            default,
            "UTC",
            KeepPolicy { tags: tags(&["important, weekly", ""]), ..none() },
        ),
        (combined_args.clone(), default, "UTC", combined.clone()),
        (combined_args, default, NEW_YORK, combined),
        (
            vec!["--keep-daily=7", "--keep-weekly=5"],
            GroupBy { host: true, paths: false, tags: false },
            "UTC",
            KeepPolicy { daily: 7, weekly: 5, ..none() },
        ),
        (
            vec!["--keep-monthly=6", "--keep-within=2m"],
            GroupBy { host: false, paths: false, tags: false },
            "UTC",
            KeepPolicy { monthly: 6, within: d("2m"), ..none() },
        ),
        (
            vec!["--keep-last=2"],
            GroupBy { host: true, paths: false, tags: true },
            "UTC",
            KeepPolicy { last: 2, ..none() },
        ),
    ]
}

/// restic's verdict on one snapshot: its group and, when kept, its reasons.
struct Verdict {
    group: GroupKey,
    reasons: Option<Vec<String>>,
}

fn restic_forget(repo: &Repo, args: &[&str], group_by: GroupBy, tz: &str) -> BTreeMap<String, Verdict> {
    let group_by = format!("--group-by={group_by}");
    let mut all = vec!["forget", "--dry-run", "--json", group_by.as_str()];
    all.extend(args);
    let output = repo.run(tz, &all);
    let mut verdicts = BTreeMap::new();
    // An empty policy prints nothing at all: restic removes nothing.
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return verdicts;
    }
    let groups: Vec<ForgetGroup> = serde_json::from_slice(&output.stdout).expect("forget JSON");
    for group in groups {
        let key = GroupKey { hostname: group.host, paths: group.paths, tags: group.tags };
        let keep = group.keep.unwrap_or_default();
        let reasons = group.reasons.unwrap_or_default();
        assert_eq!(keep.len(), reasons.len(), "restic gives one reason per kept snapshot");
        for (snapshot, reason) in keep.into_iter().zip(reasons) {
            let verdict = Verdict { group: key.clone(), reasons: Some(reason.matches) };
            assert!(verdicts.insert(snapshot.id, verdict).is_none(), "a snapshot listed twice");
        }
        for snapshot in group.remove.unwrap_or_default() {
            let verdict = Verdict { group: key.clone(), reasons: None };
            assert!(verdicts.insert(snapshot.id, verdict).is_none(), "a snapshot listed twice");
        }
    }
    verdicts
}

/// Snapshots restic cannot tell apart (same group, instant, offset and tags) form a class:
/// restic 0.14 orders them at random, so only the class's verdicts as a multiset must match.
fn class_of(snapshot: &SnapshotMeta, group: &GroupKey) -> String {
    let mut tags = snapshot.tags.clone();
    tags.sort();
    format!("{group:?} {} {} {tags:?}", snapshot.time, snapshot.utc_offset_seconds)
}

/// A group as `host [paths] [tags]`, paths shortened to their last component.
fn show_group(group: &GroupKey) -> String {
    let short = |list: &Option<Vec<String>>| match list {
        Some(list) => {
            let names: Vec<&str> = list.iter().map(|p| p.rsplit('/').next().unwrap_or(p)).collect();
            format!("[{}]", names.join(","))
        }
        None => "-".to_owned(),
    };
    format!("{:?} {} {}", group.hostname, short(&group.paths), short(&group.tags))
}

fn describe(verdict: Option<&Vec<String>>) -> String {
    match verdict {
        Some(reasons) => format!("keep {reasons:?}"),
        None => "remove".to_owned(),
    }
}

/// Compares restic's verdicts with ours; returns a readable report of the differences.
fn differences(
    snapshots: &[SnapshotMeta],
    restic: &BTreeMap<String, Verdict>,
    decisions: &[Decision],
    empty_policy: bool,
) -> String {
    let mut report = String::new();
    let mut classes: BTreeMap<String, (Vec<usize>, Vec<String>, Vec<String>)> = BTreeMap::new();
    for (index, (snapshot, decision)) in snapshots.iter().zip(decisions).enumerate() {
        let theirs = if empty_policy {
            Some(Verdict { group: decision.group.clone(), reasons: Some(vec!["policy is empty".to_owned()]) })
        } else {
            restic.get(&snapshot.id).map(|v| Verdict { group: v.group.clone(), reasons: v.reasons.clone() })
        };
        let Some(theirs) = theirs else {
            let _ = writeln!(report, "  {} is missing from restic's output", snapshot.id);
            continue;
        };
        if theirs.group != decision.group {
            let (theirs, ours) = (show_group(&theirs.group), show_group(&decision.group));
            let _ = writeln!(report, "  {}: restic's group {theirs}, ours {ours}", snapshot.id);
        }
        let ours_reasons = decision.keep.then(|| decision.reasons.clone());
        let class = classes.entry(class_of(snapshot, &decision.group)).or_default();
        class.0.push(index);
        class.1.push(describe(theirs.reasons.as_ref()));
        class.2.push(describe(ours_reasons.as_ref()));
    }
    for (members, mut theirs, mut ours) in classes.into_values() {
        let shown = (theirs.clone(), ours.clone());
        theirs.sort();
        ours.sort();
        if theirs == ours {
            continue;
        }
        for (position, &index) in members.iter().enumerate() {
            let snapshot = &snapshots[index];
            let _ = writeln!(
                report,
                "  {} {} (offset {:+}s) tags {:?} group {}\n      restic: {}\n      ours:   {}",
                &snapshot.id[..8],
                snapshot.time,
                snapshot.utc_offset_seconds,
                snapshot.tags,
                show_group(&decisions[index].group),
                shown.0[position],
                shown.1[position],
            );
        }
    }
    report
}

#[test]
fn apply_keeps_what_restic_0_14_forget_keeps() {
    let started = Instant::now();
    let version = Command::new("restic").arg("version").output().unwrap_or_else(|e| {
        panic!("cannot run restic ({e}): install restic 0.14.0 (CI does) to run this test")
    });
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.starts_with("restic 0.14."),
        "retention follows restic 0.14's rules, later versions differ (see retention.rs): found {version}"
    );

    let mut repo = Repo::new();
    let history = history();
    for spec in &history {
        repo.backup(spec);
    }
    let backed_up = started.elapsed();
    let snapshots = repo.snapshots();
    assert_eq!(snapshots.len(), history.len());
    check_dataset(&snapshots);

    let now = Timestamp::now();
    let new_york = TimeZone::get(NEW_YORK).expect("time zone");
    let mut failures = String::new();
    let cases = cases();
    for (args, group_by, tz, policy) in &cases {
        let restic = restic_forget(&repo, args, *group_by, tz);
        let ours = if *tz == NEW_YORK {
            apply_in_zone(policy, *group_by, &snapshots, now, &new_york)
        } else {
            apply(policy, *group_by, &snapshots, now)
        };
        assert_eq!(ours.len(), snapshots.len());
        if policy.is_empty() {
            assert!(restic.is_empty(), "restic removes nothing and prints nothing for an empty policy");
        }
        let report = differences(&snapshots, &restic, &ours, policy.is_empty());
        if !report.is_empty() {
            let _ = writeln!(failures, "restic forget {args:?} --group-by '{group_by}' (TZ={tz}):\n{report}");
        }
        let kept = ours.iter().filter(|d| d.keep).count();
        println!("{args:?} --group-by '{group_by}' TZ={tz}: {kept} of {} kept", snapshots.len());
    }
    println!(
        "{} backups in {:.1?}, {} forget runs, {:.1?} in all",
        history.len(),
        backed_up,
        cases.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "apply differs from restic 0.14:\n{failures}");
}

/// The repository holds what the edge cases need, so a broken environment (no time zone data,
/// a restic that ignores --time) fails here rather than passing vacuously.
fn check_dataset(snapshots: &[SnapshotMeta]) {
    let offsets: BTreeSet<i32> = snapshots.iter().map(|s| s.utc_offset_seconds).collect();
    assert_eq!(offsets, BTreeSet::from([-5 * 3600, -4 * 3600, 0]), "New York, UTC and -05:00 offsets");
    let ties =
        snapshots.iter().filter(|s| s.hostname == "tie" && s.time.to_string() == "2023-08-15T10:00:00Z");
    assert_eq!(ties.count(), 3, "the three-way tie");
    let first = snapshots.iter().map(|s| s.time).min().expect("snapshots");
    let future: Timestamp = "2099-01-01T00:00:00Z".parse().expect("timestamp");
    let last = snapshots.iter().map(|s| s.time).filter(|&t| t < future).max().expect("past snapshots");
    assert!(last.duration_since(first).as_hours() > 700 * 24, "about two years of history");
    let ids: BTreeSet<&str> = snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), snapshots.len(), "distinct snapshots");
}
