//! Cofre's agent: enrolls once, keeps its plan on disk, runs its schedule locally with
//! cofre-engine, spools results and delivers them whenever the controller is reachable.

pub mod bounds;
pub mod enroll;
pub mod hooks;
pub mod job_process;
pub mod runner;
pub mod scheduler;
pub mod session;
pub mod spool;
pub mod state;

use std::path::Path;

/// `cofre-agent run`: scheduler, worker and session, until a signal. Hooks come from
/// `hook_dir` only.
pub async fn run(state_dir: &Path, hook_dir: &Path) -> anyhow::Result<()> {
    let state = state::StateDir::open(state_dir)?;
    let id = state.identity()?;
    tracing::info!(machine.id = %id.machine_id, controllers = %id.controllers().join(", "), "agent starting");
    let clock = std::sync::Arc::new(scheduler::SystemClock::default());
    let (agent, jobs) = runner::Agent::new(state, clock, hook_dir.to_path_buf());
    let interrupted = agent.recover_interrupted().await;
    if agent.plan_version() != 0 {
        tracing::info!(
            version = agent.plan_version(),
            "running from the stored plan until the controller answers"
        );
    }
    tokio::spawn(agent.clone().worker_loop(jobs));
    tokio::spawn(agent.clone().schedule_loop());
    tokio::spawn(session::run_forever(agent.clone(), interrupted));
    shutdown_signal().await;
    tracing::info!("agent stopping");
    Ok(())
}

/// A human-readable summary of the state directory (no secrets).
pub fn status(state: &state::StateDir) -> anyhow::Result<String> {
    use std::fmt::Write;
    let id = state.identity()?;
    let mut out = String::new();
    writeln!(out, "machine:      {}", id.machine_id)?;
    let controllers = id.controllers();
    let last = state.last_controller(&controllers);
    for (i, c) in controllers.iter().enumerate() {
        let label = if i == 0 { "controller:  " } else { "             " };
        let answered = if last == Some(i) { "  (answered last)" } else { "" };
        writeln!(out, "{label} {c}{answered}")?;
    }
    writeln!(out, "CA sha256:    {}", id.ca_fingerprint)?;
    let (cert, _key) = state.certificate()?;
    match cofre_dial::certificate_validity(&cert) {
        Some((_, na)) if state.expired_certificate(chrono::Utc::now().timestamp()).is_some() => {
            writeln!(out, "certificate:  EXPIRED at {na}: this agent needs re-enrollment")?;
            writeln!(
                out,
                "              ask an administrator for a new enrollment token, then run\n              \
                 cofre-agent enroll --reenroll --token <token>\n              \
                 (this machine keeps its identity, repository and unsent results)"
            )?;
        }
        Some((nb, na)) => writeln!(out, "certificate:  valid {nb} .. {na}")?,
        None => writeln!(out, "certificate:  unreadable")?,
    }
    match state.load_plan() {
        Some(plan) => {
            writeln!(out, "plan:         version {}", plan.version)?;
            for p in &plan.policies {
                let every = match &p.schedule {
                    None => "on demand".to_string(),
                    Some(s) if !s.cron.is_empty() => format!("cron `{}` ({})", s.cron, s.timezone),
                    Some(s) => format!("every {} s", s.interval_seconds),
                };
                writeln!(
                    out,
                    "  policy {} ({}): {} -> repository {}, {every}",
                    p.name,
                    p.id,
                    p.paths.join(", "),
                    p.repository_id
                )?;
            }
        }
        None => writeln!(out, "plan:         none received yet")?,
    }
    let count = |dir: std::path::PathBuf| std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0);
    writeln!(out, "unsent results: {}", count(state.spool_dir()))?;
    writeln!(out, "running jobs:   {}", count(state.running_dir()))?;
    Ok(out)
}

/// Shell lines that point the restic CLI at each repository of the stored plan (the last one
/// wins when `eval`ed): the repository, its password, and a `restic` shell function adding the
/// TLS flags.
pub fn restic_env(state: &state::StateDir) -> anyhow::Result<String> {
    let plan = state.load_plan().ok_or_else(|| anyhow::anyhow!("no plan stored yet: run the agent first"))?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut out = String::new();
    for repo in &plan.repositories {
        let mut url = url::Url::parse(&repo.url)?;
        if !repo.username.is_empty() {
            let _ = url.set_username(&repo.username);
            let _ = url.set_password(Some(&repo.password));
        }
        out.push_str(&format!("# repository {} (restic id {})\n", repo.id, repo.restic_id));
        out.push_str(&format!("export RESTIC_REPOSITORY={}\n", quote(&format!("rest:{url}"))));
        out.push_str(&format!("export RESTIC_PASSWORD={}\n", quote(&repo.repository_password)));
        // restic 0.14 reads these only as flags: a shell function adds them (unlike an alias,
        // it also works in scripts and on the line that defines it).
        let mut flags = Vec::new();
        if !repo.ca_certificate_pem.is_empty() {
            let ca = state.rest_ca_file(&repo.id, &repo.ca_certificate_pem)?;
            flags.push(format!("--cacert {}", quote(&ca.display().to_string())));
        }
        if repo.client_certificate {
            // The repository is on a cofre-store, which knows this machine by its certificate.
            flags.push(format!(
                "--tls-client-cert {}",
                quote(&state.identity_pem_path().display().to_string())
            ));
        }
        if flags.is_empty() {
            out.push_str("unset -f restic 2>/dev/null || true\n");
        } else {
            out.push_str(&format!("restic() {{ command restic {} \"$@\"; }}\n", flags.join(" ")));
        }
    }
    Ok(out)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Whether logs are JSON lines (a job's child process logs the same way).
pub(crate) static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Bridges the `log` records of rustic_core into `tracing` and initialises output.
pub fn init_tracing(json: bool) {
    LOG_JSON.store(json, std::sync::atomic::Ordering::Relaxed);
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("COFRE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
