//! Job routes: a machine's jobs and snapshots, run-now, cancel, and the controller's
//! maintenance (restic repositories, maintenance jobs, run maintenance now).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cofre_api::{self as api, Items};
use serde::Deserialize;

use super::handlers::{id, limit, machine_in_scope};
use super::{Json, Query, wire};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::{jobs, machines, maintenance};

pub async fn list_jobs(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Query(q): Query<api::jobs::JobsQuery>,
) -> Result<axum::Json<api::Page<api::jobs::Job>>> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let before = q.cursor.as_deref().map(machines::decode_cursor).transpose()?;
    let filter = jobs::Filter {
        machine: Some(m.id),
        kind: q.kind.as_deref(),
        state: q.state.as_deref(),
        ..Default::default()
    };
    Ok(axum::Json(wire::page(jobs::list(&st.pool, filter, before, limit(q.limit)?).await?)))
}

/// Every job the caller may see (a group's machines for a group-limited user), newest first,
/// filtered by machine, policy, kind, state and creation time; cursor-paginated.
pub async fn list_all_jobs(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<api::jobs::JobFilter>,
) -> Result<axum::Json<api::Page<api::jobs::Job>>> {
    if let Some(m) = q.machine {
        machine_in_scope(&st, &c, m).await?;
    }
    let before = q.cursor.as_deref().map(machines::decode_cursor).transpose()?;
    let filter = jobs::Filter {
        machine: q.machine,
        policy: q.policy,
        kind: q.kind.as_deref(),
        state: q.state.as_deref(),
        group: c.grp,
        from: q.from,
        to: q.to,
        ..Default::default()
    };
    Ok(axum::Json(wire::page(jobs::list(&st.pool, filter, before, limit(q.limit)?).await?)))
}

pub async fn run_now(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    headers: HeaderMap,
    Json(req): Json<api::jobs::RunNow>,
) -> Result<Response> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map_err(|_| Error::invalid("Idempotency-Key must be ASCII")))
        .transpose()?;
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let job = jobs::run_now(&st.pool, &c.actor(), m.id, req, key).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(api::jobs::Job::from(job))).into_response())
}

pub async fn list_snapshots(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<Items<api::jobs::Snapshot>>> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    Ok(axum::Json(Items::of(jobs::snapshots_for_machine(&st.pool, m.id).await?)))
}

/// A job the caller may see: one of a machine in the caller's scope, or (fleet-wide users
/// only) a shared repository's maintenance.
async fn job_in_scope(st: &AppState, c: &Claims, job: uuid::Uuid) -> Result<jobs::Job> {
    let job = jobs::get(&st.pool, job).await?;
    match (job.machine_id, c.grp) {
        (Some(m), _) => {
            // A job of a machine outside the caller's group does not exist for the caller.
            machine_in_scope(st, c, m).await.map_err(|_| Error::NotFound("job".into()))?;
        }
        (None, Some(_)) => return Err(Error::NotFound("job".into())),
        (None, None) => {}
    }
    Ok(job)
}

pub async fn get_job(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<api::jobs::Job>> {
    Ok(axum::Json(job_in_scope(&st, &c, id(&p, "job")?).await?.into()))
}

pub async fn cancel_job(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    let job = job_in_scope(&st, &c, id(&p, "job")?).await?;
    let job = jobs::cancel(&st.pool, &c.actor(), job.id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(api::jobs::Job::from(job))).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RepositoriesQuery {
    machine: Option<String>,
    /// At most this many (1-1000; all when absent), oldest first.
    limit: Option<i64>,
    /// Skip this many first.
    offset: Option<i64>,
}

/// Restic repositories; a group-limited user sees only its group's machines' ones.
pub async fn list_restic_repositories(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<RepositoriesQuery>,
) -> Result<axum::Json<Items<api::repositories::ResticRepository>>> {
    let machine = q
        .machine
        .as_deref()
        .map(|m| uuid::Uuid::try_parse(m).map_err(|_| Error::field("machine", "not a machine id")))
        .transpose()?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(Error::field("limit", "between 1 and 1000"));
    }
    if q.offset.is_some_and(|o| o < 0) {
        return Err(Error::field("offset", "0 or more"));
    }
    let page = q.limit.map(|l| (l, q.offset.unwrap_or(0)));
    Ok(axum::Json(Items::of(maintenance::list_repositories(&st.pool, machine, c.grp, page).await?)))
}

pub async fn run_maintenance(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(req): Json<api::repositories::RunMaintenance>,
) -> Result<Response> {
    let repo = id(&p, "restic repository")?;
    if c.grp.is_some()
        && maintenance::list_repositories(&st.pool, None, c.grp, None).await?.iter().all(|r| r.id != repo)
    {
        return Err(Error::NotFound("restic repository".into()));
    }
    let job = maintenance::run_now(&st.pool, &c.actor(), repo, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(api::jobs::Job::from(job))).into_response())
}

/// Maintenance jobs; a group-limited user sees only its group's machines' ones.
pub async fn list_maintenance_jobs(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<api::jobs::JobsQuery>,
) -> Result<axum::Json<api::Page<api::jobs::Job>>> {
    let before = q.cursor.as_deref().map(machines::decode_cursor).transpose()?;
    let filter = jobs::Filter {
        maintenance: true,
        kind: q.kind.as_deref(),
        state: q.state.as_deref(),
        group: c.grp,
        ..Default::default()
    };
    Ok(axum::Json(wire::page(jobs::list(&st.pool, filter, before, limit(q.limit)?).await?)))
}
