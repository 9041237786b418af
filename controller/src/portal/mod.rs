//! The portal (`cofre-web`) mounted beside the REST API: the controller's side of its session
//! tickets, and the one HTTP router that serves both.
//!
//! A ticket is a JWT of the portal's own audience (the REST API refuses it) naming the login
//! session the API's login opened; each portal request trades it for a one-minute API token of
//! the same session, so logout, a disabled account or a password reset end the portal session at
//! the next request, exactly as for the API.

use std::sync::Arc;

use axum::Router;
use rand::RngCore;
use uuid::Uuid;

use crate::jwt::{PORTAL_AUDIENCE, PortalTicket};
use crate::state::AppState;

/// How long a per-request API token lives (it is used at once, in-process).
const API_TOKEN_SECONDS: i64 = 60;

/// The REST API and the portal, as `serve` answers on its HTTP address.
pub fn router(state: AppState) -> Router {
    let api = crate::api::router(state.clone());
    let portal = cofre_web::router(Arc::new(Tickets { state }), api.clone());
    api.merge(portal)
}

struct Tickets {
    state: AppState,
}

impl cofre_web::Backend for Tickets {
    fn open(&self, access_token: &str) -> Result<cofre_web::Ticket, String> {
        let claims = self.state.jwt.verify(access_token).map_err(|e| e.to_string())?;
        let sid = claims.sid.ok_or("this access token belongs to no login session")?;
        let now = chrono::Utc::now().timestamp();
        // The login session never outlives this; ending it ends the ticket sooner.
        let ttl = i64::try_from(self.state.settings.admin.session_ttl_seconds).unwrap_or(43_200);
        let mut csrf = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut csrf);
        let ticket = PortalTicket {
            sub: claims.sub,
            name: claims.name,
            role: claims.role,
            grp: claims.grp,
            sid,
            iss: claims.iss,
            aud: PORTAL_AUDIENCE.into(),
            iat: now,
            exp: now + ttl,
            jti: Uuid::new_v4(),
            csrf: hex::encode(csrf),
        };
        let value = self.state.jwt.issue_portal(&ticket).map_err(|e| e.to_string())?;
        let expires_at = chrono::DateTime::from_timestamp(ticket.exp, 0).unwrap_or_else(chrono::Utc::now);
        Ok(cofre_web::Ticket { value, expires_at })
    }

    fn resume(&self, ticket: &str) -> Option<cofre_web::Resumed> {
        let t = self.state.jwt.verify_portal(ticket).ok()?;
        let api_token = self
            .state
            .jwt
            .issue_with(t.sub, &t.name, t.role, t.grp, Some(t.sid), t.jti, API_TOKEN_SECONDS)
            .ok()?;
        Some(cofre_web::Resumed { api_token, csrf: t.csrf })
    }

    fn connection(&self, from: &http::Extensions) -> http::Extensions {
        let mut carried = http::Extensions::new();
        if let Some(peer) = from.get::<axum::extract::ConnectInfo<crate::api::client_addr::Peer>>() {
            carried.insert(*peer);
        }
        carried
    }
}

#[cfg(test)]
mod bench;
