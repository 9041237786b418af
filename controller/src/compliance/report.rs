//! The reports' reads: the recorded verdicts (`compliance_current`), selected, sorted and cut
//! into pages here, once, for the API, the CLI and the portal alike.
//!
//! A page costs one query over the machines' small columns (10,000 rows) plus the findings of
//! the machines on the page; the findings of the rest are never read. Machines the recorder
//! has not judged recently (new ones, or every machine when no replica records) are judged
//! here and now instead, so a report is never older than [`fresh_for`].

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use cofre_api::compliance::{Finding, MachineCompliance, Rollup, Status, Summary};
use uuid::Uuid;

use super::{evaluate, seconds};
use crate::error::Result;
use crate::state::AppState;

/// How old a recorded evaluation may be before a reader judges the machine again itself (the
/// recorder is late or stopped): two recording periods and half a minute.
fn fresh_for(st: &AppState) -> Duration {
    seconds(st.settings.compliance.evaluate_seconds.saturating_mul(2).saturating_add(30))
}

/// Which machines a report lists, in which order, which part of them.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub group: Option<Uuid>,
    pub status: Option<Status>,
    /// Part of the host name or the group's name (any case), or the start of the machine's id.
    pub search: Option<String>,
    pub backup_age: Option<BackupAge>,
    pub sort: Sort,
    pub limit: Option<usize>,
    pub offset: usize,
}

/// Machines whose last good backup is older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupAge {
    /// Never backed up.
    Never,
    /// Older than this many days, or never.
    Days(i64),
}

impl BackupAge {
    /// `never` or `<days>d` (up to ten years).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "never" => Some(Self::Never),
            _ => s.strip_suffix('d')?.parse::<i64>().ok().filter(|d| (0..=3660).contains(d)).map(Self::Days),
        }
    }
}

/// The order of a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// Worst status first, then host name.
    #[default]
    Status,
    Host,
    Group,
    /// Oldest last good backup first (never first of all).
    Backup,
    /// Longest silent first.
    Seen,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "status" => Self::Status,
            "host" => Self::Host,
            "group" => Self::Group,
            "backup" => Self::Backup,
            "seen" => Self::Seen,
            _ => return None,
        })
    }
}

#[derive(sqlx::FromRow)]
struct Head {
    id: Uuid,
    hostname: String,
    group_id: Option<Uuid>,
    group_name: Option<String>,
    last_seen_at: Option<DateTime<Utc>>,
    status: Option<String>,
    changed_at: Option<DateTime<Utc>>,
    evaluated_at: Option<DateTime<Utc>>,
    last_good_backup_at: Option<DateTime<Utc>>,
}

/// One machine of a report; `recorded` ones get their findings only if they are shown.
struct Line {
    machine: MachineCompliance,
    recorded: bool,
}

/// Machines of `group` (None: the fleet) as last judged, without the findings of the recorded
/// ones.
async fn read(st: &AppState, group: Option<Uuid>, now: DateTime<Utc>) -> Result<Vec<Line>> {
    let rows: Vec<Head> = sqlx::query_as(
        "select m.id, m.hostname, m.group_id, g.name as group_name, m.last_seen_at,
                c.status, c.changed_at, c.evaluated_at, c.last_good_backup_at
         from machines m
         left join groups g on g.id = m.group_id
         left join compliance_current c on c.machine_id = m.id
         where m.status <> 'decommissioned' and ($1::uuid is null or m.group_id = $1)
         order by m.hostname, m.id",
    )
    .bind(group)
    .fetch_all(&st.pool)
    .await?;
    let fresh_from = now - fresh_for(st);
    let mut out = Vec::with_capacity(rows.len());
    let mut again = Vec::new();
    for r in rows {
        let recorded = r
            .evaluated_at
            .filter(|at| (fresh_from..=now).contains(at))
            .and_then(|_| Status::parse(r.status.as_deref()?));
        let Some(status) = recorded else {
            again.push(r.id);
            continue;
        };
        out.push(Line {
            machine: MachineCompliance {
                machine_id: r.id,
                hostname: r.hostname,
                group_id: r.group_id,
                group_name: r.group_name,
                status,
                status_since: r.changed_at,
                last_seen_at: r.last_seen_at,
                last_good_backup_at: r.last_good_backup_at,
                findings: Vec::new(),
            },
            recorded: true,
        });
    }
    if !again.is_empty() {
        let judged = evaluate(st, group, Some(&again), now).await?;
        out.extend(judged.into_iter().map(|e| Line { machine: e.machine, recorded: false }));
    }
    Ok(out)
}

fn keep(m: &MachineCompliance, sel: &Selection, now: DateTime<Utc>) -> bool {
    if sel.status.is_some_and(|s| m.status != s) {
        return false;
    }
    if let Some(q) = sel.search.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        let q = q.to_lowercase();
        let found = m.hostname.to_lowercase().contains(&q)
            || m.group_name.as_deref().is_some_and(|g| g.to_lowercase().contains(&q))
            || m.machine_id.to_string().starts_with(&q);
        if !found {
            return false;
        }
    }
    match sel.backup_age {
        None => true,
        Some(BackupAge::Never) => m.last_good_backup_at.is_none(),
        Some(BackupAge::Days(d)) => m.last_good_backup_at.is_none_or(|t| t < now - Duration::days(d)),
    }
}

fn order(lines: &mut [Line], sort: Sort) {
    type By = fn(&MachineCompliance, &MachineCompliance) -> std::cmp::Ordering;
    let by: By = match sort {
        Sort::Host => {
            // One lower-cased name per machine, not two per comparison.
            lines.sort_by_cached_key(|l| (l.machine.hostname.to_lowercase(), l.machine.hostname.clone()));
            return;
        }
        Sort::Status => |a, b| b.status.cmp(&a.status),
        Sort::Group => |a, b| a.group_name.cmp(&b.group_name),
        Sort::Backup => |a, b| a.last_good_backup_at.cmp(&b.last_good_backup_at),
        Sort::Seen => |a, b| a.last_seen_at.cmp(&b.last_seen_at),
    };
    // Ties in host-name order.
    lines
        .sort_by(|a, b| by(&a.machine, &b.machine).then_with(|| a.machine.hostname.cmp(&b.machine.hostname)));
}

/// The machines `sel` selects, in its order and cut to its page, with every finding; and how
/// many it selects in all.
pub async fn report(
    st: &AppState,
    sel: &Selection,
    now: DateTime<Utc>,
) -> Result<(Vec<MachineCompliance>, usize)> {
    let mut lines = read(st, sel.group, now).await?;
    lines.retain(|l| keep(&l.machine, sel, now));
    order(&mut lines, sel.sort);
    let total = lines.len();
    let page: Vec<Line> = lines.into_iter().skip(sel.offset).take(sel.limit.unwrap_or(usize::MAX)).collect();
    let wanted: Vec<Uuid> = page.iter().filter(|l| l.recorded).map(|l| l.machine.machine_id).collect();
    let mut findings: HashMap<Uuid, Vec<Finding>> = HashMap::new();
    if !wanted.is_empty() {
        let rows: Vec<(Uuid, serde_json::Value)> =
            sqlx::query_as("select machine_id, findings from compliance_current where machine_id = any($1)")
                .bind(&wanted)
                .fetch_all(&st.pool)
                .await?;
        for (id, f) in rows {
            match serde_json::from_value(f) {
                Ok(f) => {
                    findings.insert(id, f);
                }
                Err(e) => tracing::warn!(machine.id = %id, "recorded findings do not read: {e}"),
            }
        }
    }
    let machines = page
        .into_iter()
        .map(|mut l| {
            if l.recorded {
                l.machine.findings = findings.remove(&l.machine.machine_id).unwrap_or_default();
            }
            l.machine
        })
        .collect();
    Ok((machines, total))
}

/// The current report: machines of `group` with `status` (None: all), worst first.
pub async fn current(
    st: &AppState,
    group: Option<Uuid>,
    status: Option<Status>,
    now: DateTime<Utc>,
) -> Result<Vec<MachineCompliance>> {
    let sel = Selection { group, status, ..Selection::default() };
    Ok(report(st, &sel, now).await?.0)
}

/// Roll-ups per group and for the whole fleet (or for one group only), as of the oldest
/// judgement they count. The recorded verdicts are counted by PostgreSQL (a row per group and
/// status comes back, not one per machine); machines without a recent verdict are judged here.
pub async fn summary(st: &AppState, group: Option<Uuid>, now: DateTime<Utc>) -> Result<Summary> {
    type Counted = (Option<Uuid>, Option<String>, String, i64, DateTime<Utc>);
    let fresh_from = now - fresh_for(st);
    let counted: Vec<Counted> = sqlx::query_as(
        "select m.group_id, g.name, c.status, count(*), min(c.evaluated_at)
         from machines m
         left join groups g on g.id = m.group_id
         join compliance_current c on c.machine_id = m.id
         where m.status <> 'decommissioned' and ($1::uuid is null or m.group_id = $1)
           and c.evaluated_at between $2 and $3
         group by m.group_id, g.name, c.status",
    )
    .bind(group)
    .bind(fresh_from)
    .bind(now)
    .fetch_all(&st.pool)
    .await?;
    let unjudged: Vec<Uuid> = sqlx::query_scalar(
        "select m.id from machines m
         left join compliance_current c on c.machine_id = m.id
         where m.status <> 'decommissioned' and ($1::uuid is null or m.group_id = $1)
           and (c.machine_id is null or c.evaluated_at not between $2 and $3)",
    )
    .bind(group)
    .bind(fresh_from)
    .bind(now)
    .fetch_all(&st.pool)
    .await?;
    let mut evaluated_at = now;
    let mut groups: BTreeMap<Option<Uuid>, Rollup> = BTreeMap::new();
    let mut fleet = Rollup::default();
    let mut add = |group_id: Option<Uuid>, group_name: &Option<String>, status: Status, n: i64| {
        let g = groups.entry(group_id).or_insert_with(|| Rollup {
            group_id,
            group_name: group_name.clone(),
            ..Default::default()
        });
        count(g, status, n);
        count(&mut fleet, status, n);
    };
    for (group_id, group_name, status, n, oldest) in &counted {
        if let Some(status) = Status::parse(status) {
            add(*group_id, group_name, status, *n);
            evaluated_at = evaluated_at.min(*oldest);
        }
    }
    if !unjudged.is_empty() {
        for e in evaluate(st, group, Some(&unjudged), now).await? {
            add(e.machine.group_id, &e.machine.group_name, e.machine.status, 1);
        }
    }
    let mut groups: Vec<Rollup> = groups.into_values().map(finish).collect();
    groups.sort_by(|a, b| a.group_name.cmp(&b.group_name));
    Ok(Summary { evaluated_at, fleet: finish(fleet), groups })
}

fn count(r: &mut Rollup, s: Status, n: i64) {
    r.machines += n;
    match s {
        Status::Compliant => r.compliant += n,
        Status::AtRisk => r.at_risk += n,
        Status::Unknown => r.unknown += n,
        Status::NonCompliant => r.non_compliant += n,
    }
}

fn finish(mut r: Rollup) -> Rollup {
    r.protected_percent = if r.machines == 0 {
        100.0
    } else {
        // Counts fit f64 exactly far beyond any fleet.
        let p = (r.compliant + r.at_risk) as f64 * 100.0 / r.machines as f64;
        (p * 10.0).round() / 10.0
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_orders_read_as_the_portal_writes_them() {
        assert_eq!(BackupAge::parse("never"), Some(BackupAge::Never));
        assert_eq!(BackupAge::parse("7d"), Some(BackupAge::Days(7)));
        for bad in ["", "d", "7", "-1d", "9999d", "7h"] {
            assert_eq!(BackupAge::parse(bad), None, "{bad}");
        }
        assert_eq!(Sort::parse("backup"), Some(Sort::Backup));
        assert_eq!(Sort::parse("nope"), None);
    }
}
