//! The REST API under `/api/v1`: one route table, every route with its access level, walked by
//! the authorisation test so no route escapes the check.

mod api_tokens;
mod audit;
pub(crate) mod client_addr;
mod compliance;
mod error;
mod extract;
mod handlers;
mod idempotency;
mod jobs;
pub mod openapi;
mod policies;
mod stores;
mod users;
mod wire;

#[cfg(test)]
mod tests;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Router, extract::DefaultBodyLimit};

pub use client_addr::{ClientAddr, Network, Peer};
pub use extract::{Json, Query};
use openapi::{Answer, Doc};

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

/// One row of the route table: where, who, what it does (documentation), and its handler.
struct Route {
    def: RouteDef,
    doc: Doc,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new(
        method: Method,
        path: &'static str,
        access: Access,
        scope: Scope,
        handler: MethodRouter<AppState>,
    ) -> Self {
        Self { def: RouteDef { method, path, access, scope }, doc: Doc::default(), handler }
    }

    /// What the route does, in a few words.
    fn says(mut self, summary: &'static str) -> Self {
        self.doc.summary = summary;
        self
    }

    /// The JSON body it takes.
    fn takes(mut self, body: openapi::SchemaFn) -> Self {
        self.doc.body = Some(body);
        self
    }

    /// Its query parameters.
    fn query(mut self, params: openapi::ParamsFn) -> Self {
        self.doc.query = Some(params);
        self
    }

    /// Its JSON answer when it succeeds.
    fn answers(mut self, status: u16, body: openapi::SchemaFn) -> Self {
        self.doc.answer = Answer::Json(status, body);
        self
    }

    /// The edit honours `If-Match`.
    fn guarded(mut self) -> Self {
        self.doc.if_match = true;
        self
    }

    fn answers_with(mut self, answer: Answer) -> Self {
        self.doc.answer = answer;
        self
    }
}

fn table() -> Vec<Route> {
    use Access::*;
    use api_tokens as t;
    use audit as a;
    use cofre_api::{
        alerts as al, audit as au, compliance as co, enrollment as en, groups as gr, jobs as jo,
    };
    use cofre_api::{machines as ma, policies as po, repositories as re, stores as st, users as us};
    use compliance as c;
    use handlers as h;
    use jobs as j;
    use openapi::{list, object, one, page, params};
    use policies as p;
    use stores as s;
    use users as u;
    // `r`: Scope::Fleet, `g`: Scope::Group, `f`: Scope::FleetOnly.
    let r = |m: Method, path: &'static str, access: Access, mr| Route::new(m, path, access, Scope::Fleet, mr);
    let g = |m: Method, path: &'static str, access: Access, mr| Route::new(m, path, access, Scope::Group, mr);
    let f =
        |m: Method, path: &'static str, access: Access, mr| Route::new(m, path, access, Scope::FleetOnly, mr);
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    const PUT: Method = Method::PUT;
    const DELETE: Method = Method::DELETE;
    vec![
        r(GET, "/healthz", Public, get(h::healthz))
            .says("Liveness: the process answers")
            .answers_with(Answer::Text),
        r(GET, "/readyz", Public, get(h::readyz))
            .says("Readiness: the database answers")
            .answers_with(Answer::Text),
        r(GET, "/install.sh", Public, get(crate::install::serve_script))
            .says("The agent install script (POSIX sh; docs/install.md)")
            .answers_with(Answer::Files(&["text/x-shellscript"])),
        r(GET, "/downloads/{file}", Public, get(crate::install::serve_download))
            .says(
                "The agent binary for this controller's platform, or its .sha256 (404 names what is served)",
            )
            .answers_with(Answer::Files(&["application/octet-stream", "text/plain"])),
        r(GET, "/api/v1/openapi.json", Public, get(openapi_json))
            .says("This API's OpenAPI 3.1 document")
            .answers(200, object),
        r(POST, "/api/v1/auth/login", Public, post(h::login))
            .says("Log in with a password: an access token and a refresh token")
            .takes(one::<us::Login>)
            .answers(200, one::<us::Session>),
        r(POST, "/api/v1/auth/refresh", Public, post(h::refresh))
            .says("Trade a refresh token (single use) for new tokens")
            .takes(one::<us::Refresh>)
            .answers(200, one::<us::Session>),
        g(POST, "/api/v1/auth/logout", Read, post(u::logout))
            .says("End this access token and its session")
            .answers_with(Answer::Empty),
        g(GET, "/api/v1/me", Read, get(u::me)).says("The signed-in user").answers(200, one::<us::User>),
        g(GET, "/api/v1/api-tokens", Read, get(t::list))
            .says("API tokens (yours; all with all=true for fleet-wide admins)")
            .query(params::<t::ListQuery>)
            .answers(200, list::<us::ApiToken>),
        g(POST, "/api/v1/api-tokens", Read, post(t::create))
            .says("Create an API token (its secret is shown once)")
            .takes(one::<us::NewApiToken>)
            .answers(201, one::<us::CreatedApiToken>),
        g(DELETE, "/api/v1/api-tokens/{id}", Read, delete(t::revoke))
            .says("Revoke an API token")
            .answers(200, one::<us::ApiToken>),
        r(GET, "/api/v1/users", Admin, get(u::list_users)).says("List users").answers(200, list::<us::User>),
        r(POST, "/api/v1/users", Admin, post(u::create_user))
            .says("Create a user (a generated password is shown once)")
            .takes(one::<us::NewUser>)
            .answers(201, one::<us::UserWithPassword>),
        r(GET, "/api/v1/users/{id}", Admin, get(u::get_user)).says("One user").answers(200, one::<us::User>),
        r(PUT, "/api/v1/users/{id}", Admin, put(u::update_user))
            .says("Change a user's role or group")
            .takes(one::<us::UpdateUser>)
            .guarded()
            .answers(200, one::<us::User>),
        r(POST, "/api/v1/users/{id}/disable", Admin, post(u::disable_user))
            .says("Disable a user: their tokens and sessions end at once")
            .answers(200, one::<us::User>),
        r(POST, "/api/v1/users/{id}/enable", Admin, post(u::enable_user))
            .says("Enable a disabled user")
            .answers(200, one::<us::User>),
        r(POST, "/api/v1/users/{id}/password", Admin, post(u::reset_password))
            .says("Reset a user's password (given, or generated and shown once); their sessions end")
            .takes(one::<us::NewPassword>)
            .answers(200, one::<us::UserWithPassword>),
        r(GET, "/api/v1/enrollment-tokens", Admin, get(h::list_tokens))
            .says("List enrollment tokens (never their secrets)")
            .answers(200, list::<en::EnrollmentToken>),
        r(POST, "/api/v1/enrollment-tokens", Admin, post(h::create_token))
            .says("Create an enrollment token for agents (shown once)")
            .takes(one::<en::NewEnrollmentToken>)
            .answers(201, one::<en::CreatedEnrollmentToken>),
        r(DELETE, "/api/v1/enrollment-tokens/{id}", Admin, delete(h::revoke_token))
            .says("Revoke an enrollment token")
            .answers_with(Answer::Empty),
        r(GET, "/api/v1/groups", Read, get(h::list_groups))
            .says("List groups")
            .answers(200, list::<gr::Group>),
        r(POST, "/api/v1/groups", Admin, post(h::create_group))
            .says("Create a group")
            .takes(one::<gr::NewGroup>)
            .answers(201, one::<gr::Group>),
        r(DELETE, "/api/v1/groups/{id}", Admin, delete(h::delete_group))
            .says("Delete a group nothing belongs to")
            .answers_with(Answer::Empty),
        r(PUT, "/api/v1/groups/{id}/quota", Admin, put(s::set_group_quota))
            .says("Set a group's storage quota on cofre-store (null: no limit)")
            .takes(one::<st::Quota>)
            .answers_with(Answer::Empty),
        r(GET, "/api/v1/stores", Read, get(s::list_stores))
            .says("List cofre-stores")
            .answers(200, list::<st::Store>),
        r(POST, "/api/v1/stores", Admin, post(s::create_store))
            .says("Register a cofre-store (its enrollment token is shown once)")
            .takes(one::<st::NewStore>)
            .answers(201, one::<st::CreatedStore>),
        r(GET, "/api/v1/stores/{id}", Read, get(s::get_store))
            .says("One cofre-store")
            .answers(200, one::<st::Store>),
        r(POST, "/api/v1/stores/{id}/revoke", Admin, post(s::revoke_store))
            .says("Revoke a cofre-store")
            .answers(200, one::<st::Store>),
        g(GET, "/api/v1/stores/{id}/inventory", Read, get(s::store_inventory))
            .says("The repositories a store holds, as it reported them")
            .answers(200, list::<st::RepositoryInventory>),
        r(GET, "/api/v1/repositories", Read, get(h::list_repositories))
            .says("List repository definitions (secrets are never returned)")
            .answers(200, list::<re::Repository>),
        r(POST, "/api/v1/repositories", Admin, post(h::create_repository))
            .says("Define a repository (passwords are write-only)")
            .takes(one::<re::NewRepository>)
            .answers(201, one::<re::Repository>),
        r(GET, "/api/v1/repositories/{id}", Read, get(h::get_repository))
            .says("One repository definition")
            .answers(200, one::<re::Repository>),
        r(PUT, "/api/v1/repositories/{id}", Admin, put(h::update_repository))
            .says("Change a repository: name, storage credentials (rotation), CA, maintenance endpoint")
            .takes(one::<re::UpdateRepository>)
            .answers(200, one::<re::Repository>),
        r(DELETE, "/api/v1/repositories/{id}", Admin, delete(h::delete_repository))
            .says("Delete a repository definition nothing uses (never one holding backups)")
            .answers_with(Answer::Empty),
        g(GET, "/api/v1/restic-repositories", Read, get(j::list_restic_repositories))
            .says("Restic repositories with their last maintenance")
            .query(params::<j::RepositoriesQuery>)
            .answers(200, list::<re::ResticRepository>),
        g(POST, "/api/v1/restic-repositories/{id}/maintenance", Operate, post(j::run_maintenance))
            .says("Run forget, prune or check on a restic repository now")
            .takes(one::<re::RunMaintenance>)
            .answers(202, one::<jo::Job>),
        g(GET, "/api/v1/maintenance/jobs", Read, get(j::list_maintenance_jobs))
            .says("Maintenance jobs, newest first")
            .query(params::<jo::JobsQuery>)
            .answers(200, page::<jo::Job>),
        r(GET, "/api/v1/policies", Read, get(p::list_policies))
            .says("List policies")
            .answers(200, list::<po::Policy>),
        r(POST, "/api/v1/policies", Admin, post(p::create_policy))
            .says("Create a policy (every bad field is named)")
            .takes(one::<po::PolicySpec>)
            .answers(201, one::<po::Policy>),
        r(GET, "/api/v1/policies/{id}", Read, get(p::get_policy))
            .says("One policy (ETag: its revision)")
            .answers(200, one::<po::Policy>),
        r(PUT, "/api/v1/policies/{id}", Admin, put(p::update_policy))
            .says("Replace a policy's spec (If-Match: an ETag from this API)")
            .takes(one::<po::PolicySpec>)
            .guarded()
            .answers(200, one::<po::Policy>),
        r(GET, "/api/v1/policies/{id}/versions", Read, get(p::list_versions))
            .says("Every revision of a policy")
            .answers(200, list::<po::PolicyVersion>),
        r(GET, "/api/v1/policies/{id}/diff", Read, get(p::diff_versions))
            .says("What changed between two revisions")
            .query(params::<po::DiffQuery>)
            .answers(200, one::<po::PolicyDiff>),
        r(GET, "/api/v1/policies/{id}/assignments", Read, get(p::list_assignments))
            .says("Where a policy applies (machines of other groups are left out for group users)")
            .answers(200, list::<po::Assignment>),
        r(POST, "/api/v1/policies/{id}/assignments", Admin, post(p::assign_policy))
            .says("Apply a policy to a machine or a group")
            .takes(one::<po::NewAssignment>)
            .answers(201, one::<po::Assignment>),
        r(DELETE, "/api/v1/policies/{id}/assignments/{assignment}", Admin, delete(p::unassign_policy))
            .says("Remove an assignment")
            .answers_with(Answer::Empty),
        g(GET, "/api/v1/plans/stale", Read, get(p::stale_plans))
            .says("Machines whose agent does not hold its current plan")
            .answers(200, list::<po::StalePlan>),
        g(GET, "/api/v1/machines", Read, get(h::list_machines))
            .says("Machines, by id")
            .query(params::<ma::MachineQuery>)
            .answers(200, page::<ma::Machine>),
        g(GET, "/api/v1/machines/{id}", Read, get(h::get_machine))
            .says("One machine")
            .answers(200, one::<ma::Machine>),
        g(PUT, "/api/v1/machines/{id}", Admin, put(h::update_machine))
            .says("Rename a machine or move it to another group")
            .takes(one::<ma::UpdateMachine>)
            .guarded()
            .answers(200, one::<ma::Machine>),
        g(POST, "/api/v1/machines/{id}/approve", Operate, post(h::approve_machine))
            .says("Approve a machine waiting for approval")
            .answers(200, one::<ma::Machine>),
        g(POST, "/api/v1/machines/{id}/revoke", Admin, post(h::revoke_machine))
            .says("Revoke a machine: its certificate and store access end")
            .answers(200, one::<ma::Machine>),
        g(POST, "/api/v1/machines/{id}/decommission", Admin, post(c::decommission))
            .says("Decommission a machine (kept for the record, no longer expected to back up)")
            .answers(200, one::<ma::Machine>),
        g(GET, "/api/v1/machines/{id}/compliance/history", Read, get(c::machine_history))
            .says("A machine's compliance changes and time in each status over a period")
            .query(params::<c::HistoryQuery>)
            .answers(200, one::<co::MachineHistory>),
        g(GET, "/api/v1/compliance", Read, get(c::report))
            .says("Each machine's compliance now, with the reasons (JSON or CSV)")
            .query(params::<c::ReportQuery>)
            .answers_with(Answer::Csv(one::<co::Report>)),
        g(GET, "/api/v1/compliance/summary", Read, get(c::summary))
            .says("The fleet's (or a group's) compliance in numbers")
            .query(params::<c::GroupQuery>)
            .answers(200, one::<co::Summary>),
        g(GET, "/api/v1/compliance/days", Read, get(c::days))
            .says("Compliance per day over a period")
            .query(params::<c::DaysQuery>)
            .answers(200, list::<co::Day>),
        g(GET, "/api/v1/evidence", Read, get(c::evidence))
            .says("A signed evidence pack (tar) for a period")
            .query(params::<c::EvidenceQuery>)
            .answers_with(Answer::Tar),
        g(GET, "/api/v1/alerts", Read, get(c::alerts))
            .says("Alerts raised, newest first, with their deliveries")
            .query(params::<c::AlertsQuery>)
            .answers(200, list::<al::AlertRecord>),
        r(PUT, "/api/v1/machines/{id}/quota", Admin, put(s::set_machine_quota))
            .says("Set a machine's storage quota on cofre-store (null: no limit)")
            .takes(one::<st::Quota>)
            .answers_with(Answer::Empty),
        g(GET, "/api/v1/machines/{id}/jobs", Read, get(j::list_jobs))
            .says("A machine's jobs, newest first")
            .query(params::<jo::JobsQuery>)
            .answers(200, page::<jo::Job>),
        g(POST, "/api/v1/machines/{id}/jobs", Operate, post(j::run_now))
            .says("Back a machine up now (Idempotency-Key header: one job per key)")
            .takes(one::<jo::RunNow>)
            .answers(202, one::<jo::Job>),
        g(GET, "/api/v1/machines/{id}/snapshots", Read, get(j::list_snapshots))
            .says("A machine's snapshots")
            .answers(200, list::<jo::Snapshot>),
        g(GET, "/api/v1/jobs", Read, get(j::list_all_jobs))
            .says("Jobs, newest first, filtered by machine, policy, kind, state and time")
            .query(params::<jo::JobFilter>)
            .answers(200, page::<jo::Job>),
        g(GET, "/api/v1/jobs/{id}", Read, get(j::get_job)).says("One job").answers(200, one::<jo::Job>),
        g(POST, "/api/v1/jobs/{id}/cancel", Operate, post(j::cancel_job))
            .says("Cancel a queued or running job")
            .answers(202, one::<jo::Job>),
        f(GET, "/api/v1/audit/events", Read, get(a::list_events))
            .says("Audit events, newest first")
            .query(params::<crate::audit::query::Filter>)
            .answers(200, one::<au::EventPage>),
        f(GET, "/api/v1/audit/verify", Read, get(a::verify))
            .says("Verify the audit chain against its signed checkpoints")
            .answers(200, one::<au::Report>),
        f(GET, "/api/v1/audit/checkpoints", Read, get(a::list_checkpoints))
            .says("Signed checkpoints of the audit chain and the key that signs them")
            .answers(200, one::<au::Checkpoints>),
        f(POST, "/api/v1/audit/checkpoints", Read, post(a::make_checkpoint))
            .says("Sign a checkpoint of the audit chain's head now")
            .answers(200, one::<au::MadeCheckpoint>),
    ]
}

/// Every route with its access level (for the authorisation-matrix test and docs).
pub fn routes() -> Vec<RouteDef> {
    table().into_iter().map(|r| r.def).collect()
}

/// Every route with its documentation (the OpenAPI document is made from it).
pub fn documented_routes() -> Vec<(RouteDef, Doc)> {
    table().into_iter().map(|r| (r.def, r.doc)).collect()
}

async fn openapi_json() -> Response {
    axum::Json(openapi::served()).into_response()
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for Route { def, handler, .. } in table() {
        let rule = (def.access, def.scope);
        // Every authenticated POST honours Idempotency-Key (inside the authorisation, which
        // tells whose key it is).
        let handler = if def.method == Method::POST && def.access != Access::Public {
            handler.route_layer(middleware::from_fn_with_state(
                state.pool.clone(),
                |State(pool): State<sqlx::PgPool>, req: Request, next: Next| {
                    idempotency::once(pool, req, next)
                },
            ))
        } else {
            handler
        };
        let mr = handler.route_layer(middleware::from_fn_with_state(
            (state.clone(), rule),
            move |State((st, rule)): State<(AppState, (Access, Scope))>, req: Request, next: Next| {
                authorise(st, rule, req, next)
            },
        ));
        router = router.route(def.path, mr);
    }
    router
        .fallback(|| async { Error::NotFound("route".into()) })
        .method_not_allowed_fallback(|| async {
            error::problem(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method".into(), &[])
        })
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
    // A token naming a key this replica has not loaded yet (a rotation elsewhere) re-reads the
    // key set once; valid tokens never pay for that check.
    let mut claims = match state.jwt.verify(token) {
        Err(_) if state.jwt.should_reload_for(token) => {
            crate::serve::reload_jwt(state).await;
            state.jwt.verify(token)?
        }
        other => other?,
    };
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
