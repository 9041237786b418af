//! Policy routes: the spec (validated field by field before anything is stored), ETag/If-Match
//! on edits, versions and their differences, assignments, and which machines run a stale plan.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use cofre_api::{self as api, Items};

use super::handlers::{created, id, if_match, with_etag};
use super::{Json, Query};
use crate::auth::{Claims, Role};
use crate::error::{Error, Result};
use crate::policies::{self, HookRights};
use crate::state::AppState;

/// A policy's version is its revision.
fn with_revision(p: policies::Policy, status: StatusCode) -> Response {
    let etag = format!("\"rev-{}\"", p.revision);
    with_etag(status, api::policies::Policy::from(p), &etag)
}

fn hook_rights(c: &Claims) -> HookRights {
    if c.role == Role::Admin { HookRights::Allowed } else { HookRights::Denied }
}

pub async fn list_policies(State(st): State<AppState>) -> Result<axum::Json<Items<api::policies::Policy>>> {
    Ok(axum::Json(Items::of(policies::list(&st.pool).await?)))
}

pub async fn create_policy(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Json(body): Json<serde_json::Value>,
) -> Result<Response> {
    let spec = policies::parse_spec(body)?;
    Ok(with_revision(
        policies::create(&st.pool, &c.actor(), spec, hook_rights(&c)).await?,
        StatusCode::CREATED,
    ))
}

pub async fn get_policy(State(st): State<AppState>, Path(p): Path<String>) -> Result<Response> {
    Ok(with_revision(policies::get(&st.pool, id(&p, "policy")?).await?, StatusCode::OK))
}

pub async fn update_policy(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response> {
    let if_revision = if_match(&headers)?
        .map(|e| {
            e.trim_matches('"')
                .strip_prefix("rev-")
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid("If-Match must be an ETag returned by this API"))
        })
        .transpose()?;
    let id = id(&p, "policy")?;
    let spec = policies::parse_spec(body)?;
    let pol = policies::update(&st.pool, &c.actor(), id, if_revision, spec, hook_rights(&c)).await?;
    Ok(with_revision(pol, StatusCode::OK))
}

pub async fn list_versions(
    State(st): State<AppState>,
    Path(p): Path<String>,
) -> Result<axum::Json<Items<api::policies::PolicyVersion>>> {
    Ok(axum::Json(Items::of(policies::list_versions(&st.pool, id(&p, "policy")?).await?)))
}

pub async fn diff_versions(
    State(st): State<AppState>,
    Path(p): Path<String>,
    Query(q): Query<api::policies::DiffQuery>,
) -> Result<axum::Json<api::policies::PolicyDiff>> {
    let changes = policies::diff(&st.pool, id(&p, "policy")?, q.from, q.to).await?;
    Ok(axum::Json(api::policies::PolicyDiff { from: q.from, to: q.to, changes }))
}

pub async fn list_assignments(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<Items<api::policies::Assignment>>> {
    let policy = id(&p, "policy")?;
    policies::get(&st.pool, policy).await?;
    Ok(axum::Json(Items::of(policies::list_assignments(&st.pool, policy, c.grp).await?)))
}

pub async fn assign_policy(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(req): Json<api::policies::NewAssignment>,
) -> Result<Response> {
    let a = policies::assign(&st.pool, &c.actor(), id(&p, "policy")?, req).await?;
    Ok(created(api::policies::Assignment::from(a)))
}

pub async fn unassign_policy(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path((p, a)): Path<(String, String)>,
) -> Result<StatusCode> {
    policies::unassign(&st.pool, &c.actor(), id(&p, "policy")?, id(&a, "assignment")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Machines (of the caller's group, for a group-limited user) whose agent does not hold the
/// plan the controller computes now.
pub async fn stale_plans(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
) -> Result<axum::Json<Items<api::policies::StalePlan>>> {
    Ok(axum::Json(Items::of(crate::plans::stale(&st.pool, &st.master, &st.ca.cert_pem, c.grp).await?)))
}
