//! `serve`: the controller process. Checks the schema, loads keys, creates the first admin,
//! and serves the REST API (HTTP) and the agent service (gRPC over TLS) until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::{self, JwtKeys};
use crate::config::Settings;
use crate::events::Events;
use crate::seal::MasterKey;
use crate::state::AppState;
use crate::{db, grpc, keys, repositories};

/// Reads the master key from `COFRE_MASTER_KEY` (hex) or `keys.master_key_file`.
pub fn load_master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Ok(hex) = std::env::var("COFRE_MASTER_KEY") {
        let hex = secrecy::zeroize::Zeroizing::new(hex);
        return MasterKey::from_hex(&hex).context("COFRE_MASTER_KEY");
    }
    let Some(path) = &settings.keys.master_key_file else {
        anyhow::bail!(
            "no master key: set keys.master_key_file (or COFRE_KEYS__MASTER_KEY_FILE) to a file holding 64 hex \
             characters, or COFRE_MASTER_KEY; create one with `cofre-controller generate-master-key FILE`"
        );
    };
    Ok(MasterKey::read_file(path)?)
}

/// What `serve` started: the bound addresses, for `up` and tests.
#[derive(Debug, Clone)]
pub struct Started {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub state: AppState,
    /// The first admin's generated password, when one was generated now.
    pub first_admin: Option<(String, Option<String>)>,
}

/// Prepares everything (fails fast with a clear message) and returns the state plus a future
/// that serves until `shutdown` resolves.
pub async fn start(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Started, impl Future<Output = anyhow::Result<()>>)> {
    let master = load_master_key(&settings)?;
    let url = settings
        .database
        .url
        .clone()
        .context("database.url is not set (COFRE_DATABASE__URL): the app role's connection URL")?;
    let pool = db::connect(&url, settings.database.max_connections).await?;
    db::check_schema_current(&pool).await?;
    if db::connected_as_owner(&pool).await? {
        tracing::warn!(
            "serve is connected as the schema owner: connect as a member of cofre_app instead, so the audit \
             log and job results stay insert-only"
        );
    }
    let keys = keys::load(&pool, &master).await?;
    let audit = crate::audit::install(&keys.audit)?;
    let jwt = JwtKeys::new(
        &keys.jwt.current,
        keys.jwt.previous.as_ref().map(|p| p.as_slice()),
        settings.admin.token_ttl_seconds,
    );
    let first_admin =
        auth::ensure_first_admin(&pool, &settings.admin.username, settings.admin.initial_password.as_ref())
            .await?;
    let events = Events::start(pool.clone()).await?;
    let state = AppState {
        pool: pool.clone(),
        master: master.clone(),
        ca: Arc::new(keys.ca),
        jwt: Arc::new(jwt),
        settings: Arc::new(settings.clone()),
        events: events.clone(),
        audit: audit.clone(),
        seen_tokens: Arc::default(),
        compliance: Arc::default(),
    };
    let http = TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", settings.http.listen))?;
    let grpc_listener = TcpListener::bind(settings.grpc.listen)
        .await
        .with_context(|| format!("cannot listen on {} (grpc.listen)", settings.grpc.listen))?;
    let started = Started {
        http: http.local_addr()?,
        grpc: grpc_listener.local_addr()?,
        state: state.clone(),
        first_admin,
    };
    let maintenance = Arc::new(crate::maintenance::MaintenanceIdentity::new(state.ca.clone()));
    if settings.maintenance.enabled {
        let worker = crate::maintenance::worker(
            pool.clone(),
            master.clone(),
            maintenance.clone(),
            settings.maintenance.clone(),
        );
        crate::maintenance::spawn(worker, events.clone());
    }
    let checkpoint_file = state.checkpoint_file();
    if checkpoint_file.is_none() {
        tracing::warn!(
            "audit.checkpoint_file is not set: signed checkpoints are kept only in PostgreSQL, where the \
             schema owner could remove them with the log's tail"
        );
    }
    crate::audit::checkpoints::spawn(
        pool.clone(),
        audit,
        checkpoint_file,
        std::time::Duration::from_secs(settings.audit.checkpoint_interval_seconds),
        format!("{}:{}", replica_host(), std::process::id()),
    );
    crate::compliance::spawn(state.clone());
    spawn_jwt_reload(&state);
    crate::alerts::spawn(&state, format!("{}:{}", replica_host(), std::process::id()))?;
    repositories::spawn_provisioner(pool, master, events.clone(), maintenance);
    // The gRPC server certificate renews itself in this process (at 2/3 of its lifetime).
    let tls = grpc::GrpcTls::start(&state)?;
    let http_tls = match (&settings.http.tls_cert_file, &settings.http.tls_key_file) {
        (Some(cert), Some(key)) => {
            let (config, pin) = crate::tls_listener::server_config_and_pin(cert, key)?;
            // The install line pins this key (the chain loaded now, not the file read later).
            tracing::info!(%pin, "serving the REST API over HTTPS; install lines pin its key");
            crate::install::record_served_pin(cert, pin);
            Some(config)
        }
        _ => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let session_events = events.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Agent sessions are endless streams: end them, or graceful shutdown waits forever.
        session_events.shutdown();
        let _ = stop_tx.send(true);
    });
    let router = crate::portal::router(state.clone());
    // Slow and idle clients are bounded (http.header_read_timeout_seconds, …, http.max_connections).
    let limits = crate::http_server::Limits::from_settings(&settings.http);
    let mut rx1 = stop_rx.clone();
    let mut rx2 = stop_rx;
    let fut = async move {
        let stop_http = async move {
            let _ = rx1.wait_for(|v| *v).await;
        };
        let http_fut = crate::http_server::serve(http, http_tls, router, limits, stop_http);
        let grpc_fut = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_service(grpc::service(state.clone()))
            .add_service(grpc::store::service(state))
            .serve_with_incoming_shutdown(tls.incoming(grpc_listener), async move {
                let _ = rx2.wait_for(|v| *v).await;
            });
        let (h, g) = tokio::join!(http_fut, grpc_fut);
        h.context("HTTP server")?;
        g.context("gRPC server")?;
        Ok(())
    };
    Ok((started, fut))
}

fn replica_host() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// Says, once, how to log in as the first admin. A generated password goes to the terminal when
/// there is one; under systemd (`$STATE_DIRECTORY` set, stdout is the journal, which the `adm`
/// group reads) it goes into `initial-admin-password` in the state directory, readable by the
/// service user only, and the journal gets the file's name.
pub fn announce_first_admin(first_admin: &Option<(String, Option<String>)>) {
    let state_dir = std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .filter(|_| !std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if let Some(message) = first_admin_message(first_admin, state_dir.as_deref()) {
        println!("{message}");
    }
}

fn first_admin_message(
    first_admin: &Option<(String, Option<String>)>,
    state_dir: Option<&std::path::Path>,
) -> Option<String> {
    let (user, generated) = first_admin.as_ref()?;
    let Some(pw) = generated else {
        return Some(format!("Created the first admin user {user:?} with the configured password."));
    };
    if let Some(dir) = state_dir {
        let file = dir.join("initial-admin-password");
        match write_private(&file, &format!("{pw}\n")) {
            Ok(()) => {
                return Some(format!(
                    "Created the first admin user {user:?}; its generated password is in {} (readable by \
                     this service's user only). Log in, change it, then delete the file.",
                    file.display()
                ));
            }
            Err(e) => {
                tracing::warn!("cannot write {}: {e}; the password follows here instead", file.display());
            }
        }
    }
    Some(format!(
        "Created the first admin user {user:?} with the generated password:\n\n    {pw}\n\n\
         It is shown only this once: store it now."
    ))
}

/// Writes a file only its owner can read, replacing a leftover of an earlier database (removed
/// first, so the new file is created by us with its mode, never written through a link).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// `migrate`: apply migrations as the owner role, then create missing keys.
/// How often a replica re-reads the access-token signing keys (to pick up a rotation).
pub const JWT_RELOAD_SECONDS: u64 = 300;

/// Re-reads the signing keys every [`JWT_RELOAD_SECONDS`].
fn spawn_jwt_reload(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(JWT_RELOAD_SECONDS));
        tick.tick().await;
        loop {
            tick.tick().await;
            reload_jwt(&state).await;
        }
    });
}

/// Reads the signing keys again; a failure keeps the ones in use.
pub async fn reload_jwt(state: &AppState) {
    match keys::load_jwt(&state.pool, &state.master).await {
        Ok(k) => state.jwt.replace(&k.current, k.previous.as_ref().map(|p| p.as_slice())),
        Err(e) => tracing::warn!("cannot re-read the access-token signing keys: {e:#}"),
    }
}

/// `cofre-controller rotate-jwt-key`: a new access-token signing key (as the schema owner).
pub async fn rotate_jwt_key(settings: &Settings) -> anyhow::Result<()> {
    let master = load_master_key(settings)?;
    let url = settings
        .database
        .owner_url
        .clone()
        .or_else(|| settings.database.url.clone())
        .context("database.owner_url (or database.url) is not set")?;
    let pool = db::connect(&url, 2).await?;
    db::check_schema_current(&pool).await?;
    let loaded = keys::load(&pool, &master).await?;
    crate::audit::install(&loaded.audit)?;
    let kid = keys::rotate_jwt(&pool, &master).await?;
    println!(
        "New access-token signing key {kid}. Running controllers use it within {JWT_RELOAD_SECONDS} s; tokens \
         signed with the key before it stay valid until they expire, older ones stop working now."
    );
    pool.close().await;
    Ok(())
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let master = load_master_key(settings)?;
    let url = settings
        .database
        .owner_url
        .clone()
        .or_else(|| settings.database.url.clone())
        .context("database.owner_url (or database.url) is not set")?;
    let pool = db::connect(&url, 2).await?;
    db::migrate(&pool).await?;
    let created = keys::ensure(&pool, &master).await?;
    if created.is_empty() {
        println!("Schema is current; keys present (master key {}).", master.key_id());
    } else {
        println!("Schema is current; created keys: {} (master key {}).", created.join(", "), master.key_id());
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::first_admin_message;

    #[test]
    fn a_generated_first_admin_password_goes_to_a_private_file_under_systemd_not_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let first = Some(("admin".to_string(), Some("s3cret-generated".to_string())));
        let said = first_admin_message(&first, Some(dir.path())).unwrap();
        let file = dir.path().join("initial-admin-password");
        assert!(!said.contains("s3cret-generated") && said.contains(&file.display().to_string()), "{said}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "s3cret-generated\n");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        // A leftover of an earlier database is replaced, not followed.
        let second = Some(("admin".to_string(), Some("another-one".to_string())));
        let again = first_admin_message(&second, Some(dir.path())).unwrap();
        assert!(!again.contains("another-one"), "{again}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "another-one\n");
        // A state directory that cannot be written: said here rather than lost.
        let missing = dir.path().join("missing");
        assert!(first_admin_message(&first, Some(&missing)).unwrap().contains("s3cret-generated"));
        // A terminal (no state directory) sees it once; a configured password is never repeated.
        assert!(first_admin_message(&first, None).unwrap().contains("s3cret-generated"));
        let configured = first_admin_message(&Some(("admin".into(), None)), Some(dir.path())).unwrap();
        assert!(configured.contains("configured password"));
        assert_eq!(first_admin_message(&None, None), None);
    }
}
