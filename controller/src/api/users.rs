//! People routes (admins, fleet-wide): list, create, change role or group, disable, enable,
//! reset a password; `/me` for anyone signed in.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::Json;
use super::handlers::{created, id, if_match, with_etag};
use crate::auth::Claims;
use crate::error::Result;
use crate::state::AppState;
use crate::users;

/// Ends the presented access token (a JWT from login) before it expires.
pub async fn logout(State(st): State<AppState>, Extension(c): Extension<Claims>) -> Result<Response> {
    if c.api_token {
        return Err(crate::error::Error::invalid(
            "this is an API token: revoke it instead (cofre api-token revoke)",
        ));
    }
    users::logout(&st.pool, &c).await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

pub async fn me(State(st): State<AppState>, Extension(c): Extension<Claims>) -> Result<Response> {
    Ok(axum::Json(users::get(&st.pool, c.sub).await?).into_response())
}

pub async fn list_users(State(st): State<AppState>) -> Result<Response> {
    Ok(axum::Json(cofre_api::Items { items: users::list(&st.pool).await? }).into_response())
}

pub async fn get_user(State(st): State<AppState>, Path(p): Path<String>) -> Result<Response> {
    let u = users::get(&st.pool, id(&p, "user")?).await?;
    let etag = users::etag(&u);
    Ok(with_etag(axum::http::StatusCode::OK, u, &etag))
}

pub async fn create_user(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Json(req): Json<cofre_api::users::NewUser>,
) -> Result<Response> {
    Ok(created(users::create(&st.pool, &c.actor(), req).await?))
}

pub async fn update_user(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    headers: axum::http::HeaderMap,
    Json(req): Json<cofre_api::users::UpdateUser>,
) -> Result<Response> {
    let expected = if_match(&headers)?;
    let u = users::update(&st.pool, &c.actor(), id(&p, "user")?, req, expected.as_deref()).await?;
    let etag = users::etag(&u);
    Ok(with_etag(axum::http::StatusCode::OK, u, &etag))
}

pub async fn disable_user(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    Ok(axum::Json(users::set_disabled(&st.pool, &c.actor(), id(&p, "user")?, true).await?).into_response())
}

pub async fn enable_user(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    Ok(axum::Json(users::set_disabled(&st.pool, &c.actor(), id(&p, "user")?, false).await?).into_response())
}

pub async fn reset_password(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(req): Json<cofre_api::users::NewPassword>,
) -> Result<Response> {
    Ok(axum::Json(users::reset_password(&st.pool, &c.actor(), id(&p, "user")?, req).await?).into_response())
}
