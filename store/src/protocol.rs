//! restic's REST protocol (v1 and v2) as one axum fallback handler: method check, identity
//! (client certificate, else HTTP Basic against htpasswd), strict path parsing, authorisation
//! against the current access list, then create / list / read / upload / delete. Every
//! state-changing request and every refusal goes to the access log (`cofre_store::access`).

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::access::{self, Action, Identity, Permission};
use crate::error::StoreError;
use crate::layout::{self, FileKind, RepoPath, Target};
use crate::server::ConnInfo;
use crate::{StoreState, download, upload};

/// Total request header bytes accepted (restic sends a few hundred).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The REST protocol router. Identities from client certificates arrive as a [`ConnInfo`]
/// request extension (set by the server's connection loop); without it only Basic auth works.
pub fn router(state: StoreState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// What the access log says about one request.
#[derive(Default)]
struct LogEntry {
    identity: Option<String>,
    repo: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    bytes: u64,
}

async fn dispatch(State(state): State<StoreState>, req: Request) -> Response {
    // Split now: a `&Request` (its body is not Sync) must not live across an await.
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let declared = upload::content_length(&parts.headers).ok().flatten();
    let peer = parts.extensions.get::<ConnInfo>().and_then(|c| c.peer);
    let mut log = LogEntry::default();
    let mut body = Some(body);
    let resp = handle(&state, parts, &mut body, &mut log).await.unwrap_or_else(IntoResponse::into_response);
    if let Some(body) = body.take()
        && method == Method::POST
    {
        upload::drain(&mut body.into_data_stream(), declared).await;
    }
    let status = resp.status();
    let changes = method == Method::POST || method == Method::DELETE;
    let refused = matches!(status.as_u16(), 401 | 403 | 429 | 503 | 507);
    if changes || refused {
        tracing::info!(
            target: "cofre_store::access",
            identity = log.identity.as_deref().unwrap_or("-"),
            method = %method,
            repo = log.repo.as_deref().unwrap_or("-"),
            r#type = log.kind.as_deref().unwrap_or("-"),
            name = log.name.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            bytes = log.bytes,
            peer = peer.map(|p| p.to_string()).as_deref().unwrap_or("-"),
        );
    }
    resp
}

async fn handle(
    state: &StoreState,
    parts: Parts,
    body: &mut Option<Body>,
    log: &mut LogEntry,
) -> Result<Response, StoreError> {
    let method = parts.method.clone();
    if ![Method::GET, Method::HEAD, Method::POST, Method::DELETE].contains(&method) {
        return Err(StoreError::MethodNotAllowed("GET, HEAD, POST, DELETE"));
    }
    let header_bytes: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(StoreError::HeadersTooLarge);
    }
    let identity = authenticate(state, &parts).await?;
    log.identity = Some(identity.to_string());
    let target = layout::parse_target(parts.uri.path())?;
    let repo = target.repo().clone();
    log.repo = Some(repo.to_string());
    let (kind, name) = match &target {
        Target::Config(_) => (Some(FileKind::Config), "config".to_string()),
        Target::Object(_, t, n) => (Some(FileKind::Object(*t)), n.clone()),
        Target::List(_, t) => {
            log.kind = Some(t.to_string());
            (None, String::new())
        }
        Target::Repo(_) => (None, String::new()),
    };
    if let Some(k) = kind {
        log.kind = Some(match k {
            FileKind::Config => "config".into(),
            FileKind::Object(t) => t.to_string(),
        });
        log.name = Some(name.clone());
    }
    let action = match (&target, &method, kind) {
        (Target::Repo(_), &Method::POST, _) => Action::CreateRepo,
        (Target::Repo(_), _, _) => return Err(StoreError::MethodNotAllowed("POST")),
        (Target::List(..), &Method::GET | &Method::HEAD, _) => Action::Read,
        (Target::List(..), _, _) => return Err(StoreError::MethodNotAllowed("GET, HEAD")),
        (_, &Method::GET | &Method::HEAD, _) => Action::Read,
        (_, &Method::POST, Some(k)) => Action::Write(k),
        (_, _, Some(k)) => Action::Delete(k),
        (_, _, None) => return Err(StoreError::NotFound),
    };
    let permission = {
        let acl = state.access_list();
        access::authorize(&identity, &acl, &state.shared().users, &repo, action)?
    };
    if matches!(action, Action::CreateRepo | Action::Write(_) | Action::Delete(_)) {
        ensure_tracked(state, &repo).await?;
    }
    let s = state.shared();
    let head = method == Method::HEAD;
    match (target, action) {
        (Target::Repo(repo), _) => create_repo(state, &repo, parts.uri.query()).await,
        (Target::List(repo, t), _) => {
            if !tokio::fs::metadata(s.layout.repo_dir(&repo)).await.is_ok_and(|m| m.is_dir()) {
                return Err(StoreError::NotFound);
            }
            let layout = s.layout.clone();
            let entries =
                blocking(move || layout.list(&repo, t).map_err(|e| StoreError::io("listing", e))).await?;
            Ok(download::listing(&entries, &parts.headers, head))
        }
        (_, Action::Read) => {
            // Config and objects always have a kind (lists and repos were handled above).
            let Some(kind) = kind else { return Err(StoreError::NotFound) };
            download::file(&s.layout.file(&repo, kind, &name), head, &parts.headers).await
        }
        (_, Action::Write(kind)) => {
            log.bytes = upload::receive(state, &identity, &repo, kind, &name, &parts.headers, body).await?;
            Ok(StatusCode::OK.into_response())
        }
        (_, Action::Delete(kind)) => {
            log.bytes = delete(state, &identity, &repo, kind, &name, permission).await?;
            Ok(StatusCode::OK.into_response())
        }
        (_, Action::CreateRepo) => Err(StoreError::NotFound),
    }
}

/// Client certificate first (proved in the handshake), else HTTP Basic against htpasswd.
async fn authenticate(state: &StoreState, parts: &Parts) -> Result<Identity, StoreError> {
    if let Some(info) = parts.extensions.get::<ConnInfo>()
        && let Some(id) = info.identity.clone()
    {
        // A machine's superseded (or stolen) certificate still verifies: the access list says.
        if let (Identity::Machine(m), Some(serial)) = (&id, &info.serial)
            && state.access_list().machine(*m).is_some_and(|g| g.revoked(serial))
        {
            return Err(StoreError::Forbidden("this certificate was revoked: a newer one replaced it"));
        }
        return Ok(id);
    }
    let (user, password) = basic_credentials(&parts.headers).ok_or(StoreError::Unauthenticated)?;
    if state.shared().htpasswd.verify(&user, &password).await? {
        Ok(Identity::User(user))
    } else {
        Err(StoreError::Unauthenticated)
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn create_repo(
    state: &StoreState,
    repo: &RepoPath,
    query: Option<&str>,
) -> Result<Response, StoreError> {
    if !query.unwrap_or_default().split('&').any(|kv| kv == "create=true") {
        return Err(StoreError::BadRequest(
            "POST /<repo>/ creates a repository only with ?create=true".into(),
        ));
    }
    let (layout, r) = (state.shared().layout.clone(), repo.clone());
    blocking(move || layout.create_repo(&r)).await?;
    state.shared().catalog.record_created(repo);
    Ok(StatusCode::OK.into_response())
}

/// Deletes one file; append-only identities only their own locks. Returns the bytes freed.
async fn delete(
    state: &StoreState,
    identity: &Identity,
    repo: &RepoPath,
    kind: FileKind,
    name: &str,
    permission: Permission,
) -> Result<u64, StoreError> {
    let s = state.shared_arc();
    let path = s.layout.file(repo, kind, name);
    let dir = s.layout.parent_dir(repo, kind, name);
    let me = identity.to_string();
    let size = blocking(move || {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(StoreError::NotFound),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(StoreError::io(format!("stat {}", path.display()), e)),
        };
        if permission == Permission::IfOwnLock && s.owners.owner(&path).as_deref() != Some(me.as_str()) {
            return Err(StoreError::Forbidden("only the identity that created a lock may delete it"));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(StoreError::io(format!("removing {}", path.display()), e)),
        }
        s.owners.forget(&path);
        upload::sync_dir(&dir)?;
        Ok(meta.len())
    })
    .await?;
    state.shared().catalog.record_removed(repo, kind, name, size);
    Ok(size)
}

/// Makes sure the catalog knows `repo` before its usage changes (a repository created by
/// another tool since start-up is scanned once).
async fn ensure_tracked(state: &StoreState, repo: &RepoPath) -> Result<(), StoreError> {
    if state.shared().catalog.lock().contains_key(repo) {
        return Ok(());
    }
    let s = state.shared_arc();
    let r = repo.clone();
    blocking(move || {
        s.catalog.ensure(&s.layout, &r);
        Ok(())
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Internal(e.into()))?
}
