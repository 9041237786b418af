//! API token routes: anyone signed in manages their own tokens; fleet-wide admins see and
//! revoke everyone's.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::handlers::{created, id};
use super::{Json, Query};
use crate::api_tokens;
use crate::auth::Claims;
use crate::error::Result;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Admins: everyone's tokens.
    #[serde(default)]
    all: bool,
}

pub async fn list(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    Ok(axum::Json(cofre_api::Items { items: api_tokens::list(&st.pool, &c, q.all).await? }).into_response())
}

pub async fn create(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Json(req): Json<cofre_api::users::NewApiToken>,
) -> Result<Response> {
    Ok(created(api_tokens::create(&st.pool, &c, req).await?))
}

pub async fn revoke(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<Response> {
    Ok(axum::Json(api_tokens::revoke(&st.pool, &c, id(&p, "API token")?).await?).into_response())
}
