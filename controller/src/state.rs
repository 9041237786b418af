//! Shared state of a running controller.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::events::Events;
use crate::pki::Ca;
use crate::seal::MasterKey;

#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: PgPool,
    pub master: MasterKey,
    pub ca: Arc<Ca>,
    pub jwt: Arc<JwtKeys>,
    pub settings: Arc<Settings>,
    pub events: Events,
}
