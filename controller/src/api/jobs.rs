//! Job routes: a machine's jobs and snapshots, run-now, cancel, and the controller's
//! maintenance (restic repositories, maintenance jobs, run maintenance now).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::handlers::{id, limit, machine_in_scope};
use super::{Json, Query};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::{jobs, machines, maintenance};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    kind: Option<String>,
    state: Option<String>,
}

pub async fn list_jobs(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Query(q): Query<JobsQuery>,
) -> Result<Response> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let before = q.cursor.as_deref().map(machines::decode_cursor).transpose()?;
    let filter = jobs::Filter {
        machine: Some(m.id),
        kind: q.kind.as_deref(),
        state: q.state.as_deref(),
        ..Default::default()
    };
    Ok(axum::Json(jobs::list(&st.pool, filter, before, limit(q.limit)?).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllJobsQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    machine: Option<uuid::Uuid>,
    policy: Option<uuid::Uuid>,
    kind: Option<String>,
    state: Option<String>,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every job the caller may see (a group's machines for a group-limited user), newest first,
/// filtered by machine, policy, kind, state and creation time; cursor-paginated.
pub async fn list_all_jobs(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<AllJobsQuery>,
) -> Result<Response> {
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
    Ok(axum::Json(jobs::list(&st.pool, filter, before, limit(q.limit)?).await?).into_response())
}

pub async fn run_now(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    headers: HeaderMap,
    Json(req): Json<jobs::RunNow>,
) -> Result<Response> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map_err(|_| Error::invalid("Idempotency-Key must be ASCII")))
        .transpose()?;
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let job = jobs::run_now(&st.pool, &c.actor(), m.id, req, key).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

pub async fn list_snapshots(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    Ok(axum::Json(json!({ "items": jobs::snapshots_for_machine(&st.pool, m.id).await? })).into_response())
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
) -> Result<Response> {
    Ok(axum::Json(job_in_scope(&st, &c, id(&p, "job")?).await?).into_response())
}

pub async fn cancel_job(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    let job = job_in_scope(&st, &c, id(&p, "job")?).await?;
    let job = jobs::cancel(&st.pool, &c.actor(), job.id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoriesQuery {
    machine: Option<String>,
}

/// Restic repositories; a group-limited user sees only its group's machines' ones.
pub async fn list_restic_repositories(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<RepositoriesQuery>,
) -> Result<Response> {
    let machine = q
        .machine
        .as_deref()
        .map(|m| uuid::Uuid::try_parse(m).map_err(|_| Error::field("machine", "not a machine id")))
        .transpose()?;
    let items = maintenance::list_repositories(&st.pool, machine, c.grp).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}

pub async fn run_maintenance(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(req): Json<maintenance::RunMaintenance>,
) -> Result<Response> {
    let repo = id(&p, "restic repository")?;
    if c.grp.is_some()
        && maintenance::list_repositories(&st.pool, None, c.grp).await?.iter().all(|r| r.id != repo)
    {
        return Err(Error::NotFound("restic repository".into()));
    }
    let job = maintenance::run_now(&st.pool, &c.actor(), repo, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)).into_response())
}

/// Maintenance jobs; a group-limited user sees only its group's machines' ones.
pub async fn list_maintenance_jobs(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<JobsQuery>,
) -> Result<Response> {
    let before = q.cursor.as_deref().map(machines::decode_cursor).transpose()?;
    let filter = jobs::Filter {
        maintenance: true,
        kind: q.kind.as_deref(),
        state: q.state.as_deref(),
        group: c.grp,
        ..Default::default()
    };
    let page = jobs::list(&st.pool, filter, before, limit(q.limit)?).await?;
    Ok(axum::Json(page).into_response())
}
