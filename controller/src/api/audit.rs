//! Audit routes (fleet-wide users only): read the log, verify it, list and make signed
//! checkpoints. The audit public key comes as PEM so `openssl` can check a checkpoint alone.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cofre_api::audit::{Checkpoints, MadeCheckpoint};

use super::Query;
use crate::audit::{self, checkpoints};
use crate::error::Result;
use crate::state::AppState;

pub async fn list_events(
    State(st): State<AppState>,
    Query(f): Query<audit::query::Filter>,
) -> Result<Response> {
    Ok(axum::Json(audit::query::list(&st.pool, &f).await?).into_response())
}

pub async fn verify(State(st): State<AppState>) -> Result<Response> {
    let file = st.checkpoint_file();
    Ok(axum::Json(audit::verify(&st.pool, &st.audit, file.as_ref()).await?).into_response())
}

pub async fn list_checkpoints(State(st): State<AppState>) -> Result<Response> {
    let items = checkpoints::list(&st.pool).await?.iter().map(Into::into).collect();
    Ok(axum::Json(Checkpoints { public_key_pem: st.audit.public_key_pem(), items }).into_response())
}

/// Signs the current head now (a no-op answer with the existing checkpoint when the head is
/// signed already) and copies it to this controller's file.
pub async fn make_checkpoint(State(st): State<AppState>) -> Result<Response> {
    let made = checkpoints::make(&st.pool, &st.audit, "on demand", std::time::Duration::ZERO).await?;
    if let Some(file) = st.checkpoint_file() {
        file.sync(&st.pool, &st.audit).await?;
    }
    let checkpoint = made.as_ref().map(Into::into);
    Ok(axum::Json(MadeCheckpoint { checkpoint, public_key_pem: st.audit.public_key_pem() }).into_response())
}
