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
    /// The audit chain's keys (also installed process-wide for `audit::record`).
    pub audit: Arc<crate::audit::AuditKeys>,
    /// Access tokens already seen in use by this replica (their first use is audited).
    pub seen_tokens: Arc<crate::auth::SeenTokens>,
    /// Machines to judge again soon (the compliance recorder's marks).
    pub compliance: Arc<crate::compliance::Dirty>,
}

impl AppState {
    /// This controller's copy of the audit checkpoints outside the database, if configured.
    pub fn checkpoint_file(&self) -> Option<crate::audit::checkpoints::CheckpointFile> {
        self.settings.audit.checkpoint_file.as_ref().map(crate::audit::checkpoints::CheckpointFile::new)
    }
}
