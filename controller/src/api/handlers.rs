//! Request handlers: parse, call the service, shape the answer. Authorisation happened in the
//! route table's middleware; handlers receive the caller's claims.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cofre_api::{self as api, Items};
use uuid::Uuid;

use super::{Json, Query, wire};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::{enrollment, groups, machines, repositories};

pub(super) fn id(s: &str, what: &str) -> Result<Uuid> {
    // A malformed id names nothing: answer like an unknown one.
    Uuid::try_parse(s).map_err(|_| Error::NotFound(what.into()))
}

/// The machine, if the caller may see it: a user limited to a group gets 404 for machines of
/// other groups, exactly as for machines that do not exist.
pub(super) async fn machine_in_scope(st: &AppState, c: &Claims, id: Uuid) -> Result<machines::Machine> {
    let m = machines::get(&st.pool, id).await?;
    match c.grp {
        Some(g) if m.group_id != Some(g) => Err(Error::NotFound("machine".into())),
        _ => Ok(m),
    }
}

/// The ETag an edit is made from (`If-Match`), if one was sent.
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<String>> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().trim_start_matches("W/").to_string())
                .map_err(|_| Error::invalid("If-Match must be an ETag returned by this API"))
        })
        .transpose()
}

/// A JSON answer carrying the ETag of what it shows.
pub(super) fn with_etag<T: serde::Serialize>(status: StatusCode, v: T, etag: &str) -> Response {
    let mut resp = (status, axum::Json(v)).into_response();
    if let Ok(e) = axum::http::HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, e);
    }
    resp
}

pub(super) fn created<T: serde::Serialize>(v: T) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(st): State<AppState>) -> Result<&'static str> {
    sqlx::query("select 1")
        .execute(&st.pool)
        .await
        .map_err(|_| Error::Unavailable("database unreachable".into()))?;
    Ok("ready")
}

pub async fn login(
    State(st): State<AppState>,
    super::ClientAddr(address): super::ClientAddr,
    Json(req): Json<cofre_api::users::Login>,
) -> Result<Response> {
    if req.username.len() > 200 || req.password.len() > 1000 {
        return Err(Error::Unauthenticated("wrong username or password".into()));
    }
    let tokens = crate::auth::login(
        &st.pool,
        &st.jwt,
        st.settings.admin.session_ttl_seconds,
        &req.username,
        &req.password,
        address,
    )
    .await?;
    Ok(axum::Json(session_answer(tokens)).into_response())
}

fn session_answer(t: crate::sessions::Tokens) -> cofre_api::users::Session {
    cofre_api::users::Session {
        access_token: t.access_token,
        token_type: "Bearer".into(),
        expires_in: t.expires_in,
        refresh_token: t.refresh_token,
        refresh_expires_at: t.refresh_expires_at,
    }
}

/// Trades a refresh token for a new access token and the session's next refresh token.
pub async fn refresh(
    State(st): State<AppState>,
    super::ClientAddr(address): super::ClientAddr,
    Json(req): Json<cofre_api::users::Refresh>,
) -> Result<Response> {
    let tokens = crate::sessions::refresh(&st.pool, &st.jwt, &req.refresh_token, address).await?;
    Ok(axum::Json(session_answer(tokens)).into_response())
}

pub async fn list_tokens(
    State(st): State<AppState>,
) -> Result<axum::Json<Items<api::enrollment::EnrollmentToken>>> {
    Ok(axum::Json(Items::of(enrollment::list_tokens(&st.pool).await?)))
}

pub async fn create_token(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    headers: axum::http::HeaderMap,
    Json(req): Json<api::enrollment::NewEnrollmentToken>,
) -> Result<Response> {
    let t = enrollment::create_token(&st.pool, &c.actor(), &st.ca, &st.settings.enrollment, req).await?;
    let mut answer = api::enrollment::CreatedEnrollmentToken::from(t);
    answer.install_line = install_line(&st, &headers, &answer.token).await;
    Ok(created(answer))
}

/// The one-line install for a new token, for the address the caller reached this API at (the
/// same line `up` prints; `install::install_line` makes it https with the key pinned when this
/// controller serves TLS itself).
async fn install_line(st: &AppState, headers: &axum::http::HeaderMap, token: &str) -> Option<String> {
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok())?;
    let proxied_https = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let scheme = if proxied_https { "https" } else { "http" };
    let sha256 = match crate::install::agent_sha256().await {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("no install line: {e}");
            return None;
        }
    };
    match crate::install::install_line(&format!("{scheme}://{host}"), &st.settings, token, &sha256) {
        Ok(line) => Some(line),
        Err(e) => {
            tracing::warn!("no install line: {e:#}");
            None
        }
    }
}

pub async fn revoke_token(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<StatusCode> {
    enrollment::revoke_token(&st.pool, &c.actor(), id(&p, "enrollment token")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_groups(State(st): State<AppState>) -> Result<axum::Json<Items<api::groups::Group>>> {
    Ok(axum::Json(Items::of(groups::list(&st.pool).await?)))
}

pub async fn create_group(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Json(req): Json<api::groups::NewGroup>,
) -> Result<Response> {
    Ok(created(api::groups::Group::from(groups::create(&st.pool, &c.actor(), req).await?)))
}

pub async fn delete_group(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<StatusCode> {
    groups::delete(&st.pool, &c.actor(), id(&p, "group")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_repositories(
    State(st): State<AppState>,
) -> Result<axum::Json<Items<api::repositories::Repository>>> {
    Ok(axum::Json(Items::of(repositories::list(&st.pool).await?)))
}

pub async fn create_repository(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Json(req): Json<api::repositories::NewRepository>,
) -> Result<Response> {
    let r = repositories::create(&st.pool, &st.master, &c.actor(), req.into()).await?;
    Ok(created(api::repositories::Repository::from(r)))
}

pub async fn update_repository(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(req): Json<api::repositories::UpdateRepository>,
) -> Result<axum::Json<api::repositories::Repository>> {
    let r = repositories::update(&st.pool, &st.master, &c.actor(), id(&p, "repository")?, req).await?;
    Ok(axum::Json(r.into()))
}

pub async fn delete_repository(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<StatusCode> {
    repositories::delete(&st.pool, &c.actor(), id(&p, "repository")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_repository(
    State(st): State<AppState>,
    Path(p): Path<String>,
) -> Result<axum::Json<api::repositories::Repository>> {
    Ok(axum::Json(repositories::get(&st.pool, id(&p, "repository")?).await?.into()))
}

pub(super) fn limit(l: Option<usize>) -> Result<usize> {
    match l {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(Error::field("limit", "between 1 and 1000")),
    }
}

pub async fn list_machines(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<api::machines::MachineQuery>,
) -> Result<axum::Json<api::Page<api::machines::Machine>>> {
    let after = q.cursor.as_deref().map(machines::decode_cursor).transpose()?;
    if let Some(s) = &q.status
        && !["pending", "active", "revoked", "decommissioned"].contains(&s.as_str())
    {
        return Err(Error::field("status", "one of pending, active, revoked, decommissioned"));
    }
    Ok(axum::Json(wire::page(
        machines::list(&st.pool, after, limit(q.limit)?, q.status.as_deref(), c.grp).await?,
    )))
}

pub async fn get_machine(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let etag = machines::etag(m.display_name.as_deref(), m.group_id);
    Ok(with_etag(StatusCode::OK, api::machines::Machine::from(m), &etag))
}

pub async fn approve_machine(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<api::machines::Machine>> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    Ok(axum::Json(machines::approve(&st.pool, &c.actor(), m.id).await?.into()))
}

pub async fn revoke_machine(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<api::machines::Machine>> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    Ok(axum::Json(machines::revoke(&st.pool, &c.actor(), m.id).await?.into()))
}

pub async fn update_machine(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    headers: HeaderMap,
    Json(req): Json<api::machines::UpdateMachine>,
) -> Result<Response> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    let expected = if_match(&headers)?;
    let m = machines::update(&st.pool, &c.actor(), m.id, req, c.grp, expected.as_deref()).await?;
    let etag = machines::etag(m.display_name.as_deref(), m.group_id);
    Ok(with_etag(StatusCode::OK, api::machines::Machine::from(m), &etag))
}
