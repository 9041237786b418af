//! Cofre's agent: enrolls once, keeps its plan on disk, runs its schedule locally with
//! rustic_core, spools results and delivers them whenever the controller is reachable.

pub mod enroll;
pub mod runner;
pub mod session;
pub mod spool;
pub mod state;

use std::path::Path;

/// `cofre-agent run`: scheduler, worker and session, until a signal.
pub async fn run(state_dir: &Path) -> anyhow::Result<()> {
    let state = state::StateDir::open(state_dir)?;
    let id = state.identity()?;
    tracing::info!(machine.id = %id.machine_id, controller = %id.controller_url, "agent starting");
    // rustic's local cache lives with the agent's state, not in the service user's home.
    cofre_engine::set_cache_dir(Some(state.root().join("cache")));
    let (agent, jobs) = runner::Agent::new(state);
    let interrupted = agent.recover_interrupted();
    if agent.plan_version() != 0 {
        tracing::info!(version = agent.plan_version(), "running from the stored plan until the controller answers");
    }
    tokio::spawn(agent.clone().worker_loop(jobs));
    tokio::spawn(agent.clone().schedule_loop());
    tokio::spawn(session::run_forever(agent.clone(), interrupted));
    shutdown_signal().await;
    tracing::info!("agent stopping");
    Ok(())
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

/// Bridges the `log` records of rustic_core into `tracing` and initialises output.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("COFRE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
