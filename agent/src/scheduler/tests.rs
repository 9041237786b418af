//! The schedule against an injected clock: cron and intervals, catch-up after downtime, wall
//! clock jumps both ways, windows, jitter, retries, persistence.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use cofre_proto::agent::v1 as pb;
use jiff::{SignedDuration, Timestamp};

use super::*;

/// A clock the test moves: wall and monotonic separately.
struct FakeClock(Mutex<(Timestamp, Duration)>);

impl FakeClock {
    fn at(wall: &str) -> Self {
        Self(Mutex::new((wall.parse().unwrap(), Duration::from_secs(1000))))
    }

    /// Real time passes: both clocks move.
    fn pass(&self, secs: i64) {
        let mut c = self.0.lock().unwrap();
        c.0 += SignedDuration::from_secs(secs);
        c.1 += Duration::from_secs(u64::try_from(secs).unwrap());
    }

    /// Only the wall clock moves (a correction, or a suspend: monotonic time stands still).
    fn jump(&self, secs: i64) {
        let mut c = self.0.lock().unwrap();
        c.0 += SignedDuration::from_secs(secs);
    }

    fn set_wall(&self, wall: &str) {
        self.0.lock().unwrap().0 = wall.parse().unwrap();
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        self.0.lock().unwrap().0
    }

    fn mono(&self) -> Duration {
        self.0.lock().unwrap().1
    }
}

fn policy(id: &str, schedule: pb::Schedule) -> pb::PlanPolicy {
    pb::PlanPolicy { id: id.into(), schedule: Some(schedule), ..Default::default() }
}

fn interval(secs: u64) -> pb::Schedule {
    pb::Schedule { interval_seconds: secs, ..Default::default() }
}

fn cron(expr: &str, tz: &str) -> pb::Schedule {
    pb::Schedule { cron: expr.into(), timezone: tz.into(), ..Default::default() }
}

fn plan(policies: Vec<pb::PlanPolicy>) -> pb::Plan {
    pb::Plan { version: 1, repositories: vec![], policies }
}

fn due_ids(s: &mut Scheduler, p: &pb::Plan, clock: &FakeClock) -> Vec<String> {
    s.due(p, &HashSet::new(), clock).0.into_iter().map(|d| d.policy_id).collect()
}

/// Evaluates every `TICK` for `secs` seconds of real time; returns the wall times of runs.
fn run_for(s: &mut Scheduler, p: &pb::Plan, clock: &FakeClock, secs: i64) -> Vec<Timestamp> {
    let mut runs = Vec::new();
    let tick = i64::try_from(TICK.as_secs()).unwrap();
    let mut t = 0;
    while t < secs {
        for _ in due_ids(s, p, clock) {
            runs.push(clock.now());
        }
        clock.pass(tick);
        t += tick;
    }
    runs
}

#[test]
fn a_new_interval_policy_runs_at_once_then_every_interval() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let p = plan(vec![policy("p", interval(3600))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    let runs = run_for(&mut s, &p, &clock, 3 * 3600);
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_eq!(runs[0], "2026-06-01T12:00:00Z".parse::<Timestamp>().unwrap());
    assert_eq!(runs[1].duration_since(runs[0]), SignedDuration::from_secs(3600));
}

#[test]
fn cron_runs_at_its_local_time_once_per_slot() {
    // 19:00 in São Paulo is 22:00 UTC.
    let clock = FakeClock::at("2026-06-01T20:00:00Z");
    let p = plan(vec![policy("p", cron("0 19 * * *", "America/Sao_Paulo"))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    let runs = run_for(&mut s, &p, &clock, 3 * 24 * 3600);
    let expected: Vec<Timestamp> = ["2026-06-01T22:00:00Z", "2026-06-02T22:00:00Z", "2026-06-03T22:00:00Z"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(runs, expected);
}

#[test]
fn runs_missed_while_the_machine_was_off_run_once_at_the_next_start() {
    let clock = FakeClock::at("2026-06-01T20:00:00Z");
    let p = plan(vec![policy("p", cron("0 19 * * *", "America/Sao_Paulo"))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    assert_eq!(run_for(&mut s, &p, &clock, 3 * 3600).len(), 1, "the first evening");
    let saved = s.to_json();
    // Off for three days; back in the morning.
    clock.set_wall("2026-06-05T11:00:00Z");
    let mut s = Scheduler::load(Some(&saved), b"m", clock.now());
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1, "one catch-up run for all the missed evenings");
    assert!(due_ids(&mut s, &p, &clock).is_empty());
    // The next run is the next evening's slot, not another catch-up.
    let runs = run_for(&mut s, &p, &clock, 24 * 3600);
    assert_eq!(runs, vec!["2026-06-05T22:00:00Z".parse::<Timestamp>().unwrap()]);
}

#[test]
fn a_suspend_or_a_forward_jump_collapses_into_one_run() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let p = plan(vec![policy("hourly", cron("0 * * * *", "UTC")), policy("iv", interval(3600))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    assert_eq!(due_ids(&mut s, &p, &clock), vec!["iv".to_string()]);
    clock.pass(15);
    // Suspended for ten hours: the wall clock moves, the monotonic one does not.
    clock.jump(10 * 3600);
    let mut after = due_ids(&mut s, &p, &clock);
    after.sort();
    assert_eq!(after, vec!["hourly".to_string(), "iv".to_string()], "each policy once, not ten times");
    clock.pass(15);
    assert!(due_ids(&mut s, &p, &clock).is_empty());
}

#[test]
fn a_backward_jump_neither_repeats_a_slot_nor_loses_the_next() {
    // The clock is two hours ahead: the 19:00 slot runs at real 17:00.
    let clock = FakeClock::at("2026-06-01T18:59:00Z");
    let p = plan(vec![policy("c", cron("0 19 * * *", "UTC")), policy("iv", interval(6 * 3600))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    let first = run_for(&mut s, &p, &clock, 120);
    assert_eq!(first.len(), 2, "iv at once, c at 19:00: {first:?}");
    // NTP corrects the clock: two hours back.
    clock.jump(-2 * 3600);
    // In the next real 24 hours: c runs at the real 19:00 (its slot never ran in real time)
    // and then the day after; iv every six hours counted from its real start.
    let runs = run_for(&mut s, &p, &clock, 24 * 3600);
    let c_runs: Vec<_> = runs.iter().filter(|t| t.as_second() % 3600 == 0).collect();
    assert!(runs.len() <= 6, "nothing doubled: {runs:?}");
    assert!(c_runs.contains(&&"2026-06-01T19:00:00Z".parse::<Timestamp>().unwrap()), "{runs:?}");
    let iv_first_after = runs.iter().find(|t| t.as_second() % 3600 != 0).copied();
    // iv started at real 16:59 (wall 18:59): six hours later is real 22:59.
    assert_eq!(iv_first_after, Some("2026-06-01T22:59:00Z".parse().unwrap()), "{runs:?}");
}

#[test]
fn a_time_recorded_in_the_future_counts_as_now_after_a_restart() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let p = plan(vec![policy("iv", interval(3600))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1);
    let saved = s.to_json();
    // The agent restarts with the clock a day behind what it recorded.
    clock.set_wall("2026-05-31T12:00:00Z");
    let mut s = Scheduler::load(Some(&saved), b"m", clock.now());
    assert!(due_ids(&mut s, &p, &clock).is_empty(), "it ran 'just now'");
    let runs = run_for(&mut s, &p, &clock, 2 * 3600 + 15);
    assert_eq!(runs.len(), 2, "then every hour again, not after a day: {runs:?}");
}

#[test]
fn windows_hold_runs_until_they_open_and_report_their_end() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let mut sched = interval(3600);
    sched.timezone = "UTC".into();
    sched.window_start = "19:00".into();
    sched.window_end = "07:00".into();
    let p = plan(vec![policy("w", sched)]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    assert!(due_ids(&mut s, &p, &clock).is_empty(), "noon is outside the window");
    let runs = run_for(&mut s, &p, &clock, 20 * 3600);
    assert_eq!(runs.first(), Some(&"2026-06-01T19:00:00Z".parse().unwrap()));
    assert_eq!(runs.len(), 12, "hourly from 19:00 to 06:00: {runs:?}");
    clock.set_wall("2026-06-02T19:00:00Z");
    let (due, _) = s.due(&p, &HashSet::new(), &clock);
    assert_eq!(due[0].window_end, Some("2026-06-03T07:00:00Z".parse().unwrap()));
}

#[test]
fn jitter_spreads_machines_and_stays_within_its_bound() {
    let mut sched = cron("0 19 * * *", "UTC");
    sched.jitter_seconds = 1800;
    let p = plan(vec![policy("j", sched)]);
    let mut starts = HashSet::new();
    for m in 0..20u8 {
        let clock = FakeClock::at("2026-06-01T18:00:00Z");
        let mut s = Scheduler::load(None, &[m], clock.now());
        let runs = run_for(&mut s, &p, &clock, 2 * 3600);
        assert_eq!(runs.len(), 1);
        let start = runs[0];
        assert!(
            start >= "2026-06-01T19:00:00Z".parse().unwrap()
                && start <= "2026-06-01T19:30:15Z".parse().unwrap()
        );
        starts.insert(start);
        // The same machine starts at the same offset every day.
        let again = run_for(&mut s, &p, &clock, 24 * 3600);
        assert_eq!(again[0].duration_since(start), SignedDuration::from_secs(24 * 3600));
    }
    assert!(starts.len() > 10, "twenty machines do not stampede: {}", starts.len());
}

#[test]
fn temporary_failures_retry_sooner_permanent_ones_wait() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let p = plan(vec![policy("p", interval(3600))]);
    let pol = &p.policies[0];
    let mut s = Scheduler::load(None, b"m", clock.now());
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1);
    s.after_run(pol, true, clock.now());
    clock.pass(59);
    assert!(due_ids(&mut s, &p, &clock).is_empty());
    clock.pass(2);
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1, "first retry after a minute");
    s.after_run(pol, true, clock.now());
    clock.pass(119);
    assert!(due_ids(&mut s, &p, &clock).is_empty());
    clock.pass(2);
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1, "then after two minutes");
    s.after_run(pol, false, clock.now());
    clock.pass(600);
    assert!(due_ids(&mut s, &p, &clock).is_empty(), "a permanent failure waits for the interval");
    clock.pass(3000);
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1);
}

#[test]
fn busy_policies_wait_and_run_now_postpones_interval_runs() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let p = plan(vec![policy("p", interval(3600))]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    let busy: HashSet<String> = ["p".to_string()].into();
    assert!(s.due(&p, &busy, &clock).0.is_empty(), "busy");
    s.record_run_now(&p.policies[0], clock.now());
    assert!(due_ids(&mut s, &p, &clock).is_empty(), "a run-now counts as the last run");
    clock.pass(3600);
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1);
    let manual = plan(vec![pb::PlanPolicy { id: "m".into(), ..Default::default() }]);
    assert!(due_ids(&mut s, &manual, &clock).is_empty(), "no schedule: on demand only");
}

#[test]
fn the_first_state_format_still_loads_and_removed_policies_are_forgotten() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let old = br#"{"p": "2026-06-01T11:30:00Z", "gone": "2026-05-01T00:00:00Z"}"#;
    let mut s = Scheduler::load(Some(old), b"m", clock.now());
    let p = plan(vec![policy("p", interval(3600))]);
    assert!(due_ids(&mut s, &p, &clock).is_empty(), "ran half an hour ago");
    assert!(s.state("gone").is_none());
    clock.pass(1800);
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1);
}

#[test]
fn plans_of_older_controllers_with_only_an_interval_still_run() {
    let clock = FakeClock::at("2026-06-01T12:00:00Z");
    let p = plan(vec![pb::PlanPolicy { id: "old".into(), interval_seconds: 3600, ..Default::default() }]);
    let mut s = Scheduler::load(None, b"m", clock.now());
    assert_eq!(due_ids(&mut s, &p, &clock).len(), 1);
}

/// Agent clock an hour off (#13): once the session has told the agent the controller's time,
/// a cron policy runs at its slot on the controller's clock — when the controller's compliance
/// predicts it (`compliance::facts`: the schedule applied to the last scheduled start it
/// received) — every day, once per slot. Without the correction the agent ran an hour early or
/// late, and the controller counted a missed run (from 15 minutes after the slot) every day.
#[test]
fn a_clock_an_hour_off_runs_cron_when_the_controller_expects_it() {
    let spec = cofre_policy::spec::ScheduleSpec {
        cron: Some("30 2 * * *".into()),
        timezone: Some("Europe/Lisbon".into()),
        ..Default::default()
    };
    let expected = spec.parse("schedule").unwrap();
    let p = plan(vec![policy("p", cron("30 2 * * *", "Europe/Lisbon"))]);
    let true_start: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
    for skew in [-3600_i64, 3600, -59 * 60, 0] {
        // The machine's clock reads `skew` off the true (controller's) time.
        let machine = std::sync::Arc::new(FakeClock::at("2026-12-01T00:00:00Z"));
        machine.jump(skew);
        let clock = Corrected::new(machine.clone());
        let offset = clock.learn(machine.now(), true_start);
        assert_eq!(offset.as_secs(), if skew == 0 { 0 } else { -skew }, "skew {skew}");
        let mut s = Scheduler::load(None, b"m", clock.now());
        s.due(&p, &HashSet::new(), &clock); // the policy is first seen at midnight
        let mut runs = Vec::new();
        let tick = i64::try_from(TICK.as_secs()).unwrap();
        for _ in 0..(3 * 24 * 3600 / tick) {
            for _ in s.due(&p, &HashSet::new(), &clock).0 {
                // The controller receives the start now, by the true time.
                runs.push(machine.now() - SignedDuration::from_secs(skew));
            }
            machine.pass(tick);
        }
        let want: Vec<Timestamp> = ["2026-12-01T02:30:00Z", "2026-12-02T02:30:00Z", "2026-12-03T02:30:00Z"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(runs, want, "skew {skew}: runs at the slots on the controller's clock, once each");
        // What the controller predicts from each received start is the next run, to the tick.
        for pair in runs.windows(2) {
            assert_eq!(expected.next_start(Some(pair[0]), true_start, 0), Some(pair[1]), "skew {skew}");
        }
    }
}

/// The correction itself: small differences are left alone, absurd ones refused, and a clock
/// that is put right drops it.
#[test]
fn the_controllers_clock_is_followed_within_bounds() {
    let machine = std::sync::Arc::new(FakeClock::at("2026-12-01T10:00:00Z"));
    let clock = Corrected::new(machine.clone());
    let at = |t: &str| t.parse::<Timestamp>().unwrap();
    assert!(
        clock.learn(machine.now(), at("2026-12-01T10:00:40Z")).is_zero(),
        "under a minute: NTP's business"
    );
    assert_eq!(clock.learn(machine.now(), at("2026-12-01T11:00:00Z")).as_secs(), 3600);
    assert_eq!(clock.now(), at("2026-12-01T11:00:00Z"));
    assert_eq!(
        clock.learn(machine.now(), at("2026-12-03T11:00:00Z")).as_secs(),
        3600,
        "a day off is not believed"
    );
    machine.jump(3600); // NTP fixes the machine
    assert!(clock.learn(machine.now(), at("2026-12-01T11:00:00Z")).is_zero());
    assert_eq!(clock.now(), at("2026-12-01T11:00:00Z"));
}
