//! The compliance history: insert-only rows the app role cannot change, written by exactly one
//! replica at a time (a transaction-scoped advisory try-lock around each evaluation).
//!
//! - `compliance_changes`: a row whenever a machine's status or its findings (rule, policy,
//!   status — not the wording) change, stamped with the evaluation time;
//! - `compliance_daily`: once a day is over (in `compliance.time_zone`), one row per machine with
//!   its worst status of the day and the seconds it spent in each, computed from the changes.
//!
//! "How long was machine X unprotected in March" is then a sum over rows nobody can rewrite.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use cofre_api::compliance::{Change, Day, Finding, MachineHistory, Status, StatusSeconds};
use sqlx::PgPool;
use uuid::Uuid;

use super::rules;
use crate::alerts;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Days filled in at most per evaluation when the controller was away for a long time.
const MAX_DAYS_PER_RUN: usize = 400;

/// Evaluates the fleet at `now` and records what changed. Returns false when another replica
/// holds the recorder's lock (it records instead).
pub async fn record(st: &AppState, now: DateTime<Utc>) -> Result<bool> {
    record_scope(st, None, now).await
}

/// Evaluates only these machines at `now` and records what changed for them: what the recorder
/// does within seconds of a result, a connection or an approval. It waits for the lock (a
/// whole-fleet recording may be under way on another replica) rather than skipping.
pub async fn record_machines(st: &AppState, machines: &[Uuid], now: DateTime<Utc>) -> Result<()> {
    record_scope(st, Some(machines), now).await.map(|_| ())
}

async fn record_scope(st: &AppState, only: Option<&[Uuid]>, now: DateTime<Utc>) -> Result<bool> {
    let mut tx = st.pool.begin().await?;
    let lock = if only.is_some() {
        "select pg_advisory_xact_lock($1) is not null"
    } else {
        "select pg_try_advisory_xact_lock($1)"
    };
    let mine: bool = sqlx::query_scalar(lock).bind(crate::db::locks::COMPLIANCE).fetch_one(&mut *tx).await?;
    if !mine {
        return Ok(false);
    }
    let evaluated = super::evaluate(st, None, only, now).await?;
    type Prev = (Uuid, String, serde_json::Value, Option<DateTime<Utc>>);
    let previous: Vec<Prev> = sqlx::query_as(
        "select machine_id, status, findings, alerted_at from compliance_current
         where $1::uuid[] is null or machine_id = any($1)",
    )
    .bind(only)
    .fetch_all(&mut *tx)
    .await?;
    let previous: HashMap<Uuid, alerts::Previous> = previous
        .into_iter()
        .map(|(id, status, findings, alerted_at)| {
            let f: Vec<Finding> = serde_json::from_value(findings).unwrap_or_default();
            let keys = f.iter().map(rules::key).collect();
            (id, alerts::Previous { status: Status::parse(&status), keys, alerted_at })
        })
        .collect();
    let reminder = match st.settings.alerts.reminder_hours {
        0 => None,
        h => Some(chrono::Duration::hours(i64::try_from(h).unwrap_or(24))),
    };
    // One row per machine, written in two statements (not two per machine).
    let mut rows = CurrentRows::default();
    for e in &evaluated {
        let m = &e.machine;
        let keys: BTreeSet<String> = m.findings.iter().map(rules::key).collect();
        let prev = previous.get(&m.machine_id).cloned().unwrap_or_default();
        let alert = alerts::decide(&prev, m, now, reminder).map(|d| alerts::about_machine(m, d, now));
        if let Some(a) = &alert {
            alerts::raise(&mut tx, a).await?;
        }
        rows.ids.push(m.machine_id);
        rows.groups.push(m.group_id);
        rows.statuses.push(m.status.as_str().to_owned());
        rows.since.push(m.status_since.unwrap_or(now));
        rows.last_good.push(m.last_good_backup_at);
        rows.findings.push(serde_json::to_value(&m.findings).map_err(Error::internal)?);
        rows.observed.push(serde_json::to_value(&e.observed).map_err(Error::internal)?);
        rows.changed.push(prev.status != Some(m.status) || prev.keys != keys);
        rows.alerted.push(alert.is_some());
    }
    sqlx::query(
        // Unchanged rows keep when they last changed and were last alerted about; a machine's
        // first row starts when the evaluation says its status began.
        "insert into compliance_current (machine_id, status, findings, observed, evaluated_at, changed_at,
                                         alerted_at, last_good_backup_at)
         select r.id, r.status, r.findings, r.observed, $1,
                case when c.machine_id is null then r.since when r.changed then $1 else c.changed_at end,
                case when r.alerted then $1 else c.alerted_at end,
                r.last_good
         from unnest($2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::bool[], $7::bool[],
                     $8::timestamptz[], $9::timestamptz[])
              as r(id, status, findings, observed, changed, alerted, since, last_good)
         left join compliance_current c on c.machine_id = r.id
         on conflict (machine_id) do update set status = excluded.status, findings = excluded.findings,
             observed = excluded.observed, evaluated_at = excluded.evaluated_at,
             changed_at = excluded.changed_at, alerted_at = excluded.alerted_at,
             last_good_backup_at = excluded.last_good_backup_at",
    )
    .bind(now)
    .bind(&rows.ids)
    .bind(&rows.statuses)
    .bind(&rows.findings)
    .bind(&rows.observed)
    .bind(&rows.changed)
    .bind(&rows.alerted)
    .bind(&rows.since)
    .bind(&rows.last_good)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into compliance_changes (machine_id, at, group_id, status, findings)
         select id, $1, grp, status, findings
         from unnest($2::uuid[], $3::uuid[], $4::text[], $5::jsonb[], $6::bool[]) as r(id, grp, status, findings, changed)
         where changed
         on conflict do nothing",
    )
    .bind(now)
    .bind(&rows.ids)
    .bind(&rows.groups)
    .bind(&rows.statuses)
    .bind(&rows.findings)
    .bind(&rows.changed)
    .execute(&mut *tx)
    .await?;
    if only.is_none() {
        let zone = jiff::tz::TimeZone::get(&st.settings.compliance.time_zone).map_err(Error::internal)?;
        record_days(&mut tx, &zone, now).await?;
        let a = &st.settings.alerts;
        alerts::record_sizes(&mut tx, date_in(&zone, now)?, a.growth_percent, a.growth_min_bytes).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The evaluated machines as columns, for one statement each.
#[derive(Default)]
struct CurrentRows {
    ids: Vec<Uuid>,
    groups: Vec<Option<Uuid>>,
    statuses: Vec<String>,
    since: Vec<DateTime<Utc>>,
    last_good: Vec<Option<DateTime<Utc>>>,
    findings: Vec<serde_json::Value>,
    observed: Vec<serde_json::Value>,
    changed: Vec<bool>,
    alerted: Vec<bool>,
}

/// The instant day `d` starts in `zone`.
pub(super) fn day_start(zone: &jiff::tz::TimeZone, d: NaiveDate) -> Result<DateTime<Utc>> {
    use chrono::Datelike as _;
    let civil = jiff::civil::Date::new(
        i16::try_from(d.year()).map_err(Error::internal)?,
        i8::try_from(d.month()).map_err(Error::internal)?,
        i8::try_from(d.day()).map_err(Error::internal)?,
    )
    .map_err(Error::internal)?;
    let ts = civil.to_zoned(zone.clone()).map_err(Error::internal)?.timestamp();
    DateTime::from_timestamp_micros(ts.as_microsecond())
        .ok_or_else(|| Error::internal(anyhow::anyhow!("day {d} is out of range")))
}

fn date_in(zone: &jiff::tz::TimeZone, t: DateTime<Utc>) -> Result<NaiveDate> {
    let ts = jiff::Timestamp::from_microsecond(t.timestamp_micros()).map_err(Error::internal)?;
    let d = ts.to_zoned(zone.clone()).date();
    NaiveDate::from_ymd_opt(
        i32::from(d.year()),
        u32::try_from(d.month()).unwrap_or(1),
        u32::try_from(d.day()).unwrap_or(1),
    )
    .ok_or_else(|| Error::internal(anyhow::anyhow!("bad date")))
}

type ChangeRow = (Uuid, DateTime<Utc>, Option<Uuid>, String, serde_json::Value);

fn to_change(r: ChangeRow) -> (Change, Option<Uuid>) {
    let (machine_id, at, group_id, status, findings) = r;
    let change = Change {
        machine_id,
        at,
        status: Status::parse(&status).unwrap_or(Status::Unknown),
        findings: serde_json::from_value(findings).unwrap_or_default(),
    };
    (change, group_id)
}

/// Writes the daily rows of every finished day not written yet.
async fn record_days(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    zone: &jiff::tz::TimeZone,
    now: DateTime<Utc>,
) -> Result<()> {
    let yesterday = date_in(zone, now)?.pred_opt().ok_or_else(|| Error::internal(anyhow::anyhow!("date")))?;
    let last_done: Option<NaiveDate> =
        sqlx::query_scalar("select max(day) from compliance_daily").fetch_one(&mut **tx).await?;
    let first_change: Option<DateTime<Utc>> =
        sqlx::query_scalar("select min(at) from compliance_changes").fetch_one(&mut **tx).await?;
    let Some(first_change) = first_change else { return Ok(()) };
    let mut day = match last_done {
        Some(d) => d.succ_opt().ok_or_else(|| Error::internal(anyhow::anyhow!("date")))?,
        None => date_in(zone, first_change)?,
    };
    // A decommissioned machine's days end when it left.
    let gone: HashMap<Uuid, DateTime<Utc>> =
        sqlx::query_as("select id, decommissioned_at from machines where decommissioned_at is not null")
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let mut done = 0;
    while day <= yesterday && done < MAX_DAYS_PER_RUN {
        let (start, end) = (day_start(zone, day)?, day_start(zone, day.succ_opt().unwrap_or(day))?);
        // Each machine's status at the start of the day, then its changes during the day.
        let rows: Vec<ChangeRow> = sqlx::query_as(
            "(select distinct on (machine_id) machine_id, at, group_id, status, findings from compliance_changes
              where at < $1 order by machine_id, at desc)
             union all
             (select machine_id, at, group_id, status, findings from compliance_changes where at >= $1 and at < $2)
             order by 1, 2",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&mut **tx)
        .await?;
        let mut by_machine: HashMap<Uuid, Vec<(Change, Option<Uuid>)>> = HashMap::new();
        for r in rows {
            by_machine.entry(r.0).or_default().push(to_change(r));
        }
        for (machine, changes) in by_machine {
            let end = gone.get(&machine).map_or(end, |g| (*g).min(end));
            let group = changes.last().and_then(|c| c.1);
            let changes: Vec<Change> = changes.into_iter().map(|c| c.0).collect();
            let Some((worst, seconds, findings)) = summarise(start, end, &changes) else { continue };
            sqlx::query(
                "insert into compliance_daily (day, machine_id, group_id, worst_status, compliant_seconds,
                     at_risk_seconds, non_compliant_seconds, unknown_seconds, findings)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict do nothing",
            )
            .bind(day)
            .bind(machine)
            .bind(group)
            .bind(worst.as_str())
            .bind(i32::try_from(seconds.compliant).unwrap_or(i32::MAX))
            .bind(i32::try_from(seconds.at_risk).unwrap_or(i32::MAX))
            .bind(i32::try_from(seconds.non_compliant).unwrap_or(i32::MAX))
            .bind(i32::try_from(seconds.unknown).unwrap_or(i32::MAX))
            .bind(serde_json::to_value(&findings).map_err(Error::internal)?)
            .execute(&mut **tx)
            .await?;
        }
        day = day.succ_opt().unwrap_or(yesterday);
        done += 1;
    }
    Ok(())
}

/// Over `[start, end)`, given a machine's changes ordered by time (the first may precede
/// `start`: the status in force then): the worst status in force, the seconds in each status
/// (time before the first change counts nowhere) and the findings of the worst status's first
/// occurrence. None when no status was in force in the period.
pub(crate) fn summarise(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    changes: &[Change],
) -> Option<(Status, StatusSeconds, Vec<Finding>)> {
    let mut seconds = StatusSeconds::default();
    let mut worst: Option<(Status, Vec<Finding>)> = None;
    for (i, c) in changes.iter().enumerate() {
        let from = c.at.max(start);
        let to = changes.get(i + 1).map_or(end, |n| n.at.min(end));
        if to <= from || c.at >= end {
            continue;
        }
        let s = (to - from).num_seconds();
        match c.status {
            Status::Compliant => seconds.compliant += s,
            Status::AtRisk => seconds.at_risk += s,
            Status::Unknown => seconds.unknown += s,
            Status::NonCompliant => seconds.non_compliant += s,
        }
        if worst.as_ref().is_none_or(|(w, _)| c.status > *w) {
            worst = Some((c.status, c.findings.clone()));
        }
    }
    worst.map(|(w, f)| (w, seconds, f))
}

/// A machine's changes over `[from, to)` and the time it spent in each status (the caller
/// keeps `to` at or before now: the last status counts until `to`).
pub async fn machine_history(
    pool: &PgPool,
    machine: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<MachineHistory> {
    if to <= from {
        return Err(Error::field("to", "must be after from"));
    }
    let rows: Vec<ChangeRow> = sqlx::query_as(
        "(select machine_id, at, group_id, status, findings from compliance_changes
          where machine_id = $1 and at < $2 order by at desc limit 1)
         union all
         (select machine_id, at, group_id, status, findings from compliance_changes
          where machine_id = $1 and at >= $2 and at < $3)
         order by 2",
    )
    .bind(machine)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let all: Vec<Change> = rows.into_iter().map(|r| to_change(r).0).collect();
    let seconds = summarise(from, to, &all).map(|s| s.1).unwrap_or_default();
    let status_at_start = all.first().filter(|c| c.at < from).map(|c| c.status);
    let changes = all.into_iter().filter(|c| c.at >= from).collect();
    Ok(MachineHistory { machine_id: machine, from, to, status_at_start, changes, seconds })
}

/// Per day in `[from, to]`: machines of `group` (None: the fleet) by their worst status, and
/// the seconds spent in each status summed over them.
pub async fn days(pool: &PgPool, group: Option<Uuid>, from: NaiveDate, to: NaiveDate) -> Result<Vec<Day>> {
    type Row = (NaiveDate, i64, i64, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "select day, count(*),
                count(*) filter (where worst_status = 'compliant'),
                count(*) filter (where worst_status = 'at_risk'),
                count(*) filter (where worst_status = 'unknown'),
                count(*) filter (where worst_status = 'non_compliant'),
                sum(compliant_seconds)::bigint, sum(at_risk_seconds)::bigint,
                sum(unknown_seconds)::bigint, sum(non_compliant_seconds)::bigint
         from compliance_daily
         where day between $1 and $2 and ($3::uuid is null or group_id = $3)
         group by day order by day",
    )
    .bind(from)
    .bind(to)
    .bind(group)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(day, machines, compliant, at_risk, unknown, non_compliant, cs, rs, us, ns)| Day {
            day,
            group_id: group,
            machines,
            compliant,
            at_risk,
            unknown,
            non_compliant,
            seconds: StatusSeconds { compliant: cs, at_risk: rs, unknown: us, non_compliant: ns },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn change(at: &str, status: Status) -> Change {
        Change { machine_id: Uuid::nil(), at: t(at), status, findings: Vec::new() }
    }

    #[test]
    fn a_day_is_summarised_from_the_status_in_force_and_its_changes() {
        let (start, end) = (t("2026-03-10T00:00:00Z"), t("2026-03-11T00:00:00Z"));
        let changes = [
            change("2026-03-09T20:00:00Z", Status::Compliant),
            change("2026-03-10T06:00:00Z", Status::NonCompliant),
            change("2026-03-10T08:30:00Z", Status::AtRisk),
            change("2026-03-11T00:00:00Z", Status::Unknown), // the next day: not counted
        ];
        let (worst, s, _) = summarise(start, end, &changes).unwrap();
        assert_eq!(worst, Status::NonCompliant);
        assert_eq!(
            s,
            StatusSeconds { compliant: 6 * 3600, non_compliant: 9000, at_risk: 15 * 3600 + 1800, unknown: 0 }
        );
        // A machine first recorded during the day: time before counts nowhere.
        let late = [change("2026-03-10T18:00:00Z", Status::Compliant)];
        let (w, s, _) = summarise(start, end, &late).unwrap();
        assert_eq!((w, s.compliant, s.non_compliant), (Status::Compliant, 6 * 3600, 0));
        assert!(summarise(start, end, &[change("2026-03-11T01:00:00Z", Status::Compliant)]).is_none());
    }

    #[test]
    fn days_start_at_local_midnight() {
        let sp = jiff::tz::TimeZone::get("America/Sao_Paulo").unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        assert_eq!(day_start(&sp, d).unwrap(), t("2026-03-10T03:00:00Z"));
        assert_eq!(date_in(&sp, t("2026-03-11T02:59:59Z")).unwrap(), d);
    }
}
