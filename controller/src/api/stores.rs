//! Handlers for cofre-store instances, their inventories, and storage quotas.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use cofre_api::{self as api, Items};

use super::Json;
use super::handlers::{created, id, machine_in_scope};
use crate::auth::Claims;
use crate::error::Result;
use crate::state::AppState;
use crate::stores;

pub async fn list_stores(State(st): State<AppState>) -> Result<axum::Json<Items<api::stores::Store>>> {
    Ok(axum::Json(Items::of(stores::list(&st.pool).await?)))
}

pub async fn create_store(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Json(req): Json<api::stores::NewStore>,
) -> Result<Response> {
    Ok(created(api::stores::CreatedStore::from(stores::create(&st.pool, &c.actor(), &st.ca, req).await?)))
}

pub async fn get_store(
    State(st): State<AppState>,
    Path(p): Path<String>,
) -> Result<axum::Json<api::stores::Store>> {
    Ok(axum::Json(stores::get(&st.pool, id(&p, "store")?).await?.into()))
}

pub async fn revoke_store(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<api::stores::Store>> {
    Ok(axum::Json(stores::revoke(&st.pool, &c.actor(), id(&p, "store")?).await?.into()))
}

/// The store's repositories; a user limited to a group sees only its machines' repositories.
pub async fn store_inventory(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
) -> Result<axum::Json<Items<api::stores::RepositoryInventory>>> {
    let store = stores::get(&st.pool, id(&p, "store")?).await?;
    Ok(axum::Json(Items::of(stores::inventory::list(&st.pool, store.id, c.grp).await?)))
}

pub async fn set_machine_quota(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(q): Json<api::stores::Quota>,
) -> Result<StatusCode> {
    let m = machine_in_scope(&st, &c, id(&p, "machine")?).await?;
    stores::set_machine_quota(&st.pool, &c.actor(), m.id, q.storage_quota_bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_group_quota(
    State(st): State<AppState>,
    Extension(c): Extension<Claims>,
    Path(p): Path<String>,
    Json(q): Json<api::stores::Quota>,
) -> Result<StatusCode> {
    stores::set_group_quota(&st.pool, &c.actor(), id(&p, "group")?, q.storage_quota_bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}
