//! Compliance routes: the current report (JSON or CSV), roll-ups, daily history per group, a
//! machine's history, evidence packs, alerts, and decommissioning. Users limited to a group see their group only.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use cofre_api::compliance::Status;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::Query;
use super::handlers::{id, machine_in_scope};
use crate::auth::Claims;
use crate::compliance;
use crate::error::{Error, Result};
use crate::state::AppState;

/// The group a request may see: a group-limited user's own, whatever it asked for.
fn scoped_group(c: &Claims, asked: Option<Uuid>) -> Result<Option<Uuid>> {
    match (c.grp, asked) {
        (Some(mine), Some(g)) if g != mine => Err(Error::NotFound("group".into())),
        (Some(mine), _) => Ok(Some(mine)),
        (None, g) => Ok(g),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    group: Option<Uuid>,
    status: Option<String>,
    /// Part of a host or group name (any case), or the start of a machine id.
    q: Option<String>,
    /// Last good backup older than `<days>d`, or `never`.
    backup_age: Option<String>,
    /// `status` (worst first, the default), `host`, `group`, `backup` (oldest first), `seen`.
    sort: Option<String>,
    /// At most this many machines (1-1000; all when absent).
    limit: Option<usize>,
    /// Skip this many selected machines first.
    offset: Option<usize>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

impl ReportQuery {
    fn selection(&self, group: Option<Uuid>) -> Result<compliance::Selection> {
        let status = self
            .status
            .as_deref()
            .map(|s| {
                Status::parse(s).ok_or_else(|| {
                    Error::field("status", "one of compliant, at_risk, unknown, non_compliant")
                })
            })
            .transpose()?;
        let backup_age = self
            .backup_age
            .as_deref()
            .map(|s| {
                compliance::BackupAge::parse(s)
                    .ok_or_else(|| Error::field("backup_age", "never, or a number of days such as 7d"))
            })
            .transpose()?;
        let sort = self
            .sort
            .as_deref()
            .map(|s| {
                compliance::Sort::parse(s)
                    .ok_or_else(|| Error::field("sort", "one of status, host, group, backup, seen"))
            })
            .transpose()?
            .unwrap_or_default();
        if self.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            return Err(Error::field("limit", "between 1 and 1000"));
        }
        Ok(compliance::Selection {
            group,
            status,
            search: self.q.clone(),
            backup_age,
            sort,
            limit: self.limit,
            offset: self.offset.unwrap_or(0),
        })
    }
}

pub async fn report(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<ReportQuery>,
) -> Result<Response> {
    let sel = q.selection(scoped_group(&c, q.group)?)?;
    let (machines, total) = compliance::report(&st, &sel, Utc::now()).await?;
    match q.format.as_deref() {
        None | Some("json") => {
            let total = u64::try_from(total).unwrap_or(u64::MAX);
            Ok(axum::Json(cofre_api::compliance::Report { items: machines, total }).into_response())
        }
        Some("csv") => Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"cofre-compliance.csv\""),
            ],
            compliance::csv(&machines),
        )
            .into_response()),
        Some(_) => Err(Error::field("format", "json or csv")),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    group: Option<Uuid>,
}

pub async fn summary(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<GroupQuery>,
) -> Result<Response> {
    let group = scoped_group(&c, q.group)?;
    Ok(axum::Json(compliance::summary(&st, group, Utc::now()).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DaysQuery {
    group: Option<Uuid>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
}

pub async fn days(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<DaysQuery>,
) -> Result<Response> {
    let group = scoped_group(&c, q.group)?;
    let to = q.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = q.from.unwrap_or_else(|| to - chrono::Duration::days(89));
    if from > to || (to - from).num_days() > 3660 {
        return Err(Error::field("from", "must be before to, at most ten years apart"));
    }
    Ok(axum::Json(cofre_api::Items { items: compliance::days(&st.pool, group, from, to).await? })
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

pub async fn machine_history(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let now = Utc::now();
    let to = q.to.map_or(now, |t| t.min(now));
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    Ok(axum::Json(compliance::machine_history(&st.pool, m.id, from, to).await?).into_response())
}

pub async fn decommission(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let m = crate::machines::decommission(&st.pool, &c.actor(), m.id).await?;
    Ok(axum::Json(cofre_api::machines::Machine::from(m)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EvidenceQuery {
    group: Option<Uuid>,
    from: NaiveDate,
    to: NaiveDate,
}

/// A signed evidence pack (tar) for a period and a group (or the fleet); its creation is
/// audited.
pub async fn evidence(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<EvidenceQuery>,
) -> Result<Response> {
    let group = scoped_group(&c, q.group)?;
    let req =
        compliance::evidence::Request { group, from: q.from, to: q.to, requested_by: c.actor().to_string() };
    let pack = compliance::evidence::build(&st, &req).await?;
    let mut tx = st.pool.begin().await?;
    let details =
        json!({"group_id": group, "from": q.from, "to": q.to, "file": pack.name, "bytes": pack.tar.len()});
    crate::audit::record(
        &mut tx,
        &c.actor(),
        "evidence.create",
        "group",
        &group.map(|g| g.to_string()).unwrap_or_default(),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", pack.name)),
        ],
        pack.tar,
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    group: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    limit: Option<i64>,
}

/// Alerts raised, newest first, with their deliveries to each channel.
pub async fn alerts(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<AlertsQuery>,
) -> Result<Response> {
    let group = scoped_group(&c, q.group)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::field("limit", "between 1 and 1000"));
    }
    Ok(axum::Json(cofre_api::Items { items: crate::alerts::list(&st.pool, q.since, group, limit).await? })
        .into_response())
}
