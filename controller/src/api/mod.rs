//! The REST API under `/api/v1`: one route table, every route with its access level, walked by
//! the authorisation test so no route escapes the check.

mod api_tokens;
mod audit;
mod client_addr;
mod compliance;
mod error;
mod handlers;
mod jobs;
mod policies;
mod stores;
mod users;

use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Router, extract::DefaultBodyLimit};

pub use client_addr::{ClientAddr, Network, Peer};

use crate::auth::Role;
use crate::error::Error;
use crate::state::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Any authenticated user (auditor and up).
    Read,
    /// Operators and admins: run jobs, approve machines.
    Operate,
    Admin,
}

impl Access {
    fn min_role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::Read => Some(Role::Auditor),
            Access::Operate => Some(Role::Operator),
            Access::Admin => Some(Role::Admin),
        }
    }
}

/// Which users limited to one group (department) may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Fleet-wide configuration: group users may read it, changes need a fleet-wide user.
    Fleet,
    /// A group's machines and what hangs off them: open to group users, whose handlers answer
    /// 404 for other groups' machines.
    Group,
    /// Fleet-wide records (the audit log, fleet reports): fleet-wide users only.
    FleetOnly,
}

#[derive(Debug, Clone)]
pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub scope: Scope,
}

fn table() -> Vec<(RouteDef, MethodRouter<AppState>)> {
    use Access::*;
    use api_tokens as t;
    use audit as a;
    use compliance as c;
    use handlers as h;
    use jobs as j;
    use policies as p;
    use stores as s;
    use users as u;
    // `r`: Scope::Fleet, `g`: Scope::Group, `f`: Scope::FleetOnly.
    let r = |method: Method, path: &'static str, access: Access, mr: MethodRouter<AppState>| {
        (RouteDef { method, path, access, scope: Scope::Fleet }, mr)
    };
    let g = |method: Method, path: &'static str, access: Access, mr: MethodRouter<AppState>| {
        (RouteDef { method, path, access, scope: Scope::Group }, mr)
    };
    let f = |method: Method, path: &'static str, access: Access, mr: MethodRouter<AppState>| {
        (RouteDef { method, path, access, scope: Scope::FleetOnly }, mr)
    };
    vec![
        r(Method::GET, "/healthz", Public, get(h::healthz)),
        r(Method::GET, "/readyz", Public, get(h::readyz)),
        r(Method::POST, "/api/v1/auth/login", Public, post(h::login)),
        r(Method::POST, "/api/v1/auth/refresh", Public, post(h::refresh)),
        g(Method::POST, "/api/v1/auth/logout", Read, post(u::logout)),
        g(Method::GET, "/api/v1/me", Read, get(u::me)),
        g(Method::GET, "/api/v1/api-tokens", Read, get(t::list)),
        g(Method::POST, "/api/v1/api-tokens", Read, post(t::create)),
        g(Method::DELETE, "/api/v1/api-tokens/{id}", Read, delete(t::revoke)),
        r(Method::GET, "/api/v1/users", Admin, get(u::list_users)),
        r(Method::POST, "/api/v1/users", Admin, post(u::create_user)),
        r(Method::GET, "/api/v1/users/{id}", Admin, get(u::get_user)),
        r(Method::PUT, "/api/v1/users/{id}", Admin, put(u::update_user)),
        r(Method::POST, "/api/v1/users/{id}/disable", Admin, post(u::disable_user)),
        r(Method::POST, "/api/v1/users/{id}/enable", Admin, post(u::enable_user)),
        r(Method::POST, "/api/v1/users/{id}/password", Admin, post(u::reset_password)),
        r(Method::GET, "/api/v1/enrollment-tokens", Admin, get(h::list_tokens)),
        r(Method::POST, "/api/v1/enrollment-tokens", Admin, post(h::create_token)),
        r(Method::DELETE, "/api/v1/enrollment-tokens/{id}", Admin, delete(h::revoke_token)),
        r(Method::GET, "/api/v1/groups", Read, get(h::list_groups)),
        r(Method::POST, "/api/v1/groups", Admin, post(h::create_group)),
        r(Method::PUT, "/api/v1/groups/{id}/quota", Admin, put(s::set_group_quota)),
        r(Method::GET, "/api/v1/stores", Read, get(s::list_stores)),
        r(Method::POST, "/api/v1/stores", Admin, post(s::create_store)),
        r(Method::GET, "/api/v1/stores/{id}", Read, get(s::get_store)),
        r(Method::POST, "/api/v1/stores/{id}/revoke", Admin, post(s::revoke_store)),
        g(Method::GET, "/api/v1/stores/{id}/inventory", Read, get(s::store_inventory)),
        r(Method::GET, "/api/v1/repositories", Read, get(h::list_repositories)),
        r(Method::POST, "/api/v1/repositories", Admin, post(h::create_repository)),
        r(Method::GET, "/api/v1/repositories/{id}", Read, get(h::get_repository)),
        g(Method::GET, "/api/v1/restic-repositories", Read, get(j::list_restic_repositories)),
        g(Method::POST, "/api/v1/restic-repositories/{id}/maintenance", Operate, post(j::run_maintenance)),
        g(Method::GET, "/api/v1/maintenance/jobs", Read, get(j::list_maintenance_jobs)),
        r(Method::GET, "/api/v1/policies", Read, get(p::list_policies)),
        r(Method::POST, "/api/v1/policies", Admin, post(p::create_policy)),
        r(Method::GET, "/api/v1/policies/{id}", Read, get(p::get_policy)),
        r(Method::PUT, "/api/v1/policies/{id}", Admin, put(p::update_policy)),
        r(Method::GET, "/api/v1/policies/{id}/versions", Read, get(p::list_versions)),
        r(Method::GET, "/api/v1/policies/{id}/diff", Read, get(p::diff_versions)),
        r(Method::GET, "/api/v1/policies/{id}/assignments", Read, get(p::list_assignments)),
        r(Method::POST, "/api/v1/policies/{id}/assignments", Admin, post(p::assign_policy)),
        r(
            Method::DELETE,
            "/api/v1/policies/{id}/assignments/{assignment}",
            Admin,
            delete(p::unassign_policy),
        ),
        g(Method::GET, "/api/v1/plans/stale", Read, get(p::stale_plans)),
        g(Method::GET, "/api/v1/machines", Read, get(h::list_machines)),
        g(Method::GET, "/api/v1/machines/{id}", Read, get(h::get_machine)),
        g(Method::PUT, "/api/v1/machines/{id}", Admin, put(h::update_machine)),
        g(Method::POST, "/api/v1/machines/{id}/approve", Operate, post(h::approve_machine)),
        g(Method::POST, "/api/v1/machines/{id}/revoke", Admin, post(h::revoke_machine)),
        g(Method::POST, "/api/v1/machines/{id}/decommission", Admin, post(c::decommission)),
        g(Method::GET, "/api/v1/machines/{id}/compliance/history", Read, get(c::machine_history)),
        g(Method::GET, "/api/v1/compliance", Read, get(c::report)),
        g(Method::GET, "/api/v1/compliance/summary", Read, get(c::summary)),
        g(Method::GET, "/api/v1/compliance/days", Read, get(c::days)),
        g(Method::GET, "/api/v1/evidence", Read, get(c::evidence)),
        g(Method::GET, "/api/v1/alerts", Read, get(c::alerts)),
        r(Method::PUT, "/api/v1/machines/{id}/quota", Admin, put(s::set_machine_quota)),
        g(Method::GET, "/api/v1/machines/{id}/jobs", Read, get(j::list_jobs)),
        g(Method::POST, "/api/v1/machines/{id}/jobs", Operate, post(j::run_now)),
        g(Method::GET, "/api/v1/machines/{id}/snapshots", Read, get(j::list_snapshots)),
        g(Method::GET, "/api/v1/jobs", Read, get(j::list_all_jobs)),
        g(Method::GET, "/api/v1/jobs/{id}", Read, get(j::get_job)),
        g(Method::POST, "/api/v1/jobs/{id}/cancel", Operate, post(j::cancel_job)),
        f(Method::GET, "/api/v1/audit/events", Read, get(a::list_events)),
        f(Method::GET, "/api/v1/audit/verify", Read, get(a::verify)),
        f(Method::GET, "/api/v1/audit/checkpoints", Read, get(a::list_checkpoints)),
        f(Method::POST, "/api/v1/audit/checkpoints", Read, post(a::make_checkpoint)),
    ]
}

/// Every route with its access level (for the authorisation-matrix test and docs).
pub fn routes() -> Vec<RouteDef> {
    table().into_iter().map(|(d, _)| d).collect()
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (def, mr) in table() {
        let rule = (def.access, def.scope);
        let mr = mr.route_layer(middleware::from_fn_with_state(
            (state.clone(), rule),
            move |State((st, rule)): State<(AppState, (Access, Scope))>, req: Request, next: Next| {
                authorise(st, rule, req, next)
            },
        ));
        router = router.route(def.path, mr);
    }
    router
        .fallback(|| async { Error::NotFound("route".into()) })
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The one authorisation check: a bearer token from the Authorization header only (a JWT from
/// login, re-checked against its user, or an API token with its scope), read-only tokens only
/// reading, role at least the route's, and a fleet-wide user for changes outside a group's machines and for
/// fleet-only records. Claims are handed to the handler as an extension; group-scoped handlers
/// filter by `claims.grp`.
async fn authorise(
    state: AppState,
    (access, scope): (Access, Scope),
    mut req: Request,
    next: Next,
) -> Response {
    let Some(min) = access.min_role() else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Error::Unauthenticated("missing Authorization: Bearer <token>".into()).into_response();
    };
    let claims = if token.starts_with(crate::api_tokens::PREFIX) {
        crate::api_tokens::authenticate(&state.pool, token).await
    } else {
        user_claims(&state, token).await
    };
    let claims = match claims {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if claims.ro && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Error::Forbidden("this API token is read-only".into()).into_response();
    }
    if claims.role < min {
        return Error::Forbidden(format!("requires the {} role", min.as_str())).into_response();
    }
    if claims.grp.is_some() {
        let refused = match scope {
            Scope::Group => None,
            Scope::Fleet if access == Access::Read => None,
            Scope::Fleet => Some("this change needs a fleet-wide account"),
            Scope::FleetOnly => Some("this record is fleet-wide; it needs a fleet-wide account"),
        };
        if let Some(why) = refused {
            return Error::Forbidden(format!("this account is limited to one group; {why}")).into_response();
        }
    }
    if state.seen_tokens.first_use(&claims) {
        let address = client_addr::of(req.extensions(), req.headers(), &state.settings.http.trusted_proxies);
        let request = format!("{} {}", req.method(), req.uri().path());
        if claims.api_token
            && let Err(e) = crate::api_tokens::touch(&state.pool, claims.jti).await
        {
            tracing::warn!("cannot record an API token's use: {e}");
        }
        if let Err(e) = crate::auth::record_token_use(&state.pool, &claims, address, &request).await {
            tracing::warn!("cannot audit the use of an access token: {e}");
        }
    }
    req.extensions_mut().insert(claims);
    next.run(req).await
}

/// The claims of a JWT, with the user's current role and group (not the token's): disabled,
/// removed, demoted or moved users lose their old rights at once.
async fn user_claims(state: &AppState, token: &str) -> Result<crate::auth::Claims, Error> {
    if state.jwt.should_reload_for(token) {
        crate::serve::reload_jwt(state).await;
    }
    let mut claims = state.jwt.verify(token)?;
    match crate::users::standing(&state.pool, claims.sub, claims.jti, claims.sid).await? {
        Some((role, group)) => {
            claims.role = role;
            claims.grp = group;
            Ok(claims)
        }
        None => Err(Error::Unauthenticated(
            "this session has ended (logged out), or the account is disabled or no longer exists".into(),
        )),
    }
}

/// Query-string extractor whose rejections are problem+json (400) like every other error.
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(error::problem(StatusCode::BAD_REQUEST, rej.body_text(), &[])),
        }
    }
}

/// JSON body extractor whose rejections are problem+json like every other error.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => {
                let status = match rej.status() {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(error::problem(status, rej.body_text(), &[]))
            }
        }
    }
}
