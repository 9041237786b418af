//! Cofre's portal: the pages people use every day, rendered on the server with Leptos (no WASM,
//! no JavaScript needed: plain links and forms, Post/Redirect/Get).
//!
//! The controller mounts [`router`] beside `/api/v1` and gives it two things: the REST API's own
//! router, which the portal calls in-process for every read and change (so the API's
//! authorisation, validation and audit are the portal's too), and a [`Backend`] that signs the
//! portal's session tickets. The portal holds no SQL and no rule of its own.
//!
//! One route table ([`table`]): each page says whether it needs a signed-in user; one middleware
//! ([`guard`]) resolves the session, refuses POSTs without a matching `Origin` and CSRF token,
//! and sets the security headers of every answer.

pub mod api;
mod i18n;
mod layout;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;

pub use i18n::Lang;
pub use session::{Backend, Resumed, Ticket};

use api::Api;

/// The portal's shared state.
pub struct Portal {
    backend: Arc<dyn Backend>,
    api: Router,
}

/// Largest form the portal reads.
const MAX_FORM: usize = 64 * 1024;

/// Who may reach a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the login page, the stylesheet, the language switch).
    Public,
    /// A signed-in user; what they may see and do is then the API's decision.
    SignedIn,
}

/// One page or form of the portal.
pub struct PageRoute {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<Arc<Portal>>,
}

/// Every route of the portal, with who may reach it.
pub fn table() -> Vec<PageRoute> {
    use Access::{Public, SignedIn};
    use pages::{
        admin, assignments, audit, compliance, enrollment, jobs, login, machines, maintenance, overview,
        policies, policy, repositories, stores,
    };
    let r = |method: Method, path: &'static str, access: Access, handler| PageRoute {
        method,
        path,
        access,
        handler,
    };
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    vec![
        r(GET, "/", SignedIn, get(overview::page)),
        r(GET, "/login", Public, get(login::form)),
        r(POST, "/login", Public, post(login::submit)),
        r(POST, "/logout", SignedIn, post(login::logout)),
        r(GET, "/lang/{code}", Public, get(login::language)),
        r(GET, "/assets/portal.css", Public, get(layout::stylesheet)),
        r(GET, "/machines", SignedIn, get(machines::list)),
        r(GET, "/machines/{id}", SignedIn, get(machines::page)),
        r(POST, "/machines/{id}/run", SignedIn, post(machines::run_now)),
        r(POST, "/machines/{id}/approve", SignedIn, post(machines::approve)),
        r(POST, "/machines/{id}/revoke", SignedIn, post(machines::revoke)),
        r(GET, "/jobs", SignedIn, get(jobs::list)),
        r(GET, "/maintenance", SignedIn, get(maintenance::page)),
        r(POST, "/maintenance/{id}", SignedIn, post(maintenance::run)),
        r(GET, "/compliance", SignedIn, get(compliance::page)),
        r(GET, "/compliance.csv", SignedIn, get(compliance::csv)),
        r(GET, "/audit", SignedIn, get(audit::page)),
        r(GET, "/enrollment", SignedIn, get(enrollment::page)),
        r(POST, "/enrollment", SignedIn, post(enrollment::create)),
        r(GET, "/groups", SignedIn, get(admin::groups)),
        r(POST, "/groups", SignedIn, post(admin::create_group)),
        r(GET, "/policies", SignedIn, get(policies::list)),
        r(POST, "/policies", SignedIn, post(policies::create)),
        r(GET, "/policies/{id}", SignedIn, get(policy::page)),
        r(POST, "/policies/{id}", SignedIn, post(policy::save)),
        r(POST, "/policies/{id}/assignments", SignedIn, post(policy::assign)),
        r(POST, "/policies/{id}/assignments/{assignment}/remove", SignedIn, post(assignments::unassign)),
        r(GET, "/repositories", SignedIn, get(repositories::list)),
        r(POST, "/repositories", SignedIn, post(repositories::create)),
        r(POST, "/repositories/{id}/delete", SignedIn, post(repositories::delete)),
        r(GET, "/stores", SignedIn, get(stores::list)),
        r(POST, "/stores", SignedIn, post(stores::create)),
        r(POST, "/stores/{id}/revoke", SignedIn, post(stores::revoke)),
    ]
}

/// The portal's routes, ready to merge beside the REST API (`api` is that API's router).
pub fn router(backend: Arc<dyn Backend>, api: Router) -> Router {
    let portal = Arc::new(Portal { backend, api });
    let mut router: Router<Arc<Portal>> = Router::new();
    for PageRoute { path, access, handler, .. } in table() {
        let handler = handler.route_layer(middleware::from_fn_with_state(
            (portal.clone(), access),
            |State((p, access)): State<(Arc<Portal>, Access)>, req: Request, next: Next| {
                guard(p, access, req, next)
            },
        ));
        router = router.route(path, handler);
    }
    router.with_state(portal)
}

/// What every page handler gets: the language, the path, and the signed-in user if any.
#[derive(Clone)]
pub struct Ctx {
    pub lang: Lang,
    /// The request's path and query (for links back here).
    pub here: String,
    /// The API, with the user's token when signed in.
    pub api: Api,
    pub viewer: Option<Viewer>,
    /// The controller's address as the browser reached it (`http://host:port`).
    pub origin: String,
}

/// The signed-in user.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub me: cofre_api::users::User,
    pub csrf: String,
}

impl Viewer {
    pub fn can_operate(&self) -> bool {
        matches!(self.me.role.as_str(), "admin" | "operator")
    }
    pub fn is_admin(&self) -> bool {
        self.me.role == "admin"
    }
    /// Fleet-wide users see fleet-only records (the audit log).
    pub fn fleet_wide(&self) -> bool {
        self.me.group_id.is_none()
    }
}

impl Ctx {
    pub fn csrf(&self) -> String {
        self.viewer.as_ref().map(|v| v.csrf.clone()).unwrap_or_default()
    }
}

/// The one middleware: resolves the session, sends anonymous users to the login page, refuses
/// forged POSTs, sets the security headers.
async fn guard(portal: Arc<Portal>, access: Access, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let lang = Lang::of_request(&parts.headers);
    let here = parts.uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let scheme = if parts.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https") {
        "https"
    } else {
        "http"
    };
    let host =
        parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost").to_string();
    let mut api = Api::new(portal.api.clone(), &parts, portal.backend.connection(&parts.extensions));
    let mut viewer = None;
    let mut ended = false;
    if let Some(ticket) = session::cookie(&parts.headers, session::COOKIE) {
        match portal.backend.resume(&ticket) {
            Some(resumed) => {
                let with_token = api.clone().with_token(resumed.api_token);
                match with_token.get::<cofre_api::users::User>("/api/v1/me").await {
                    Ok(me) => {
                        api = with_token;
                        viewer = Some(Viewer { me, csrf: resumed.csrf });
                    }
                    Err(e) if e.status == StatusCode::UNAUTHORIZED => ended = true,
                    Err(e) => return layout::error_page(lang, &e).into_response(),
                }
            }
            None => ended = true,
        }
    }
    let is_post = parts.method == Method::POST;
    let body = if is_post {
        if !session::same_origin(&parts.headers) {
            return refused(lang, "error-forged");
        }
        let Ok(collected) = http_body_util::Limited::new(body, MAX_FORM).collect().await else {
            return refused(lang, "error-form-too-large");
        };
        let bytes = collected.to_bytes();
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let sent = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        let expected = match &viewer {
            Some(v) => v.csrf.clone(),
            // Before a session (the login form): the token in its own cookie.
            None => session::cookie(&parts.headers, session::LOGIN_COOKIE).unwrap_or_default(),
        };
        if !session::tokens_match(sent, &expected) {
            return refused(lang, "error-forged");
        }
        Body::from(bytes)
    } else {
        body
    };
    if access == Access::SignedIn && viewer.is_none() {
        let mut resp = if is_post {
            refused(lang, "error-signed-out")
        } else {
            Redirect::to(&format!("/login{}", api::query(&[("next", Some(here.clone()))]))).into_response()
        };
        if ended && let Some(c) = session::clear_cookie(session::COOKIE) {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        return resp;
    }
    parts.extensions.insert(Ctx { lang, here, api, viewer, origin: format!("{scheme}://{host}") });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    secure_headers(resp.headers_mut());
    resp
}

fn refused(lang: Lang, key: &str) -> Response {
    let mut resp =
        layout::message_page(lang, StatusCode::FORBIDDEN, &lang.t("error-title-refused"), &lang.t(key));
    secure_headers(resp.headers_mut());
    resp
}

fn secure_headers(h: &mut http::HeaderMap) {
    let set = |h: &mut http::HeaderMap, k: &'static str, v: &'static str| {
        if !h.contains_key(k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "cache-control", "no-store");
}

/// Every source file, for the test that finds message keys used but not translated.
#[cfg(test)]
const SOURCES: &[&str] = &[
    include_str!("lib.rs"),
    include_str!("layout.rs"),
    include_str!("pages/mod.rs"),
    include_str!("pages/admin.rs"),
    include_str!("pages/audit.rs"),
    include_str!("pages/compliance.rs"),
    include_str!("pages/enrollment.rs"),
    include_str!("pages/jobs.rs"),
    include_str!("pages/login.rs"),
    include_str!("pages/machines.rs"),
    include_str!("pages/maintenance.rs"),
    include_str!("pages/overview.rs"),
    include_str!("pages/policy.rs"),
    include_str!("pages/policy_form.rs"),
    include_str!("pages/policies.rs"),
    include_str!("pages/assignments.rs"),
    include_str!("pages/repositories.rs"),
    include_str!("pages/stores.rs"),
];
