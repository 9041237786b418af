//! `cofre-store`: parse arguments, initialise tracing, call the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cofre_store::state::StateDir;
use cofre_store::{Settings, Store};

#[derive(Parser)]
#[command(
    name = "cofre-store",
    version,
    about = "Cofre's restic REST server: identity-aware, append-only for machines"
)]
struct Cli {
    /// TOML configuration file (settings may also come from COFRE_STORE_… variables).
    #[arg(long, short, global = true, env = "COFRE_STORE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the repositories of the data dir (and, once enrolled, keep a session with the
    /// controller for the access list and the inventory).
    Serve,
    /// Enroll this store with the controller, with a token from `cofre store add`.
    Enroll {
        /// The controller's gRPC URL, e.g. https://cofre.example:7443; repeat it for each
        /// replica, in the order to try them.
        #[arg(long = "controller", required = true)]
        controllers: Vec<String>,
        #[arg(long, env = "COFRE_STORE_TOKEN", hide_env_values = true)]
        token: String,
        /// Enroll again as a new store, replacing the identity in the state dir.
        #[arg(long)]
        force: bool,
    },
    /// Replace the controller's addresses of an enrolled store (same store, same pinned CA); a
    /// running store uses them from its next connection. The configuration's `controllers`,
    /// when set, wins over them.
    SetControllers {
        /// The controller's gRPC URL; repeat it for each replica, in the order to try them.
        #[arg(long = "controller", required = true)]
        controllers: Vec<String>,
    },
    /// Print the documented default configuration.
    PrintDefaultConfig,
}

fn main() -> std::process::ExitCode {
    // Two rustls crypto providers exist in the dependency tree: pick ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", Settings::default_toml());
            Ok(())
        }
        Command::Serve => {
            let settings = Settings::load(cli.config.as_deref())?;
            cofre_store::init_tracing(&settings.log.format, &settings.log.filter);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(serve(settings))
        }
        Command::Enroll { controllers, token, force } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let state = StateDir::open(&settings.state_dir)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let e = rt.block_on(cofre_store::session::enroll(&state, &controllers, &token, force))?;
            println!("Enrolled as store {} serving {}.", e.store_id, e.url);
            let config =
                cli.config.as_ref().map(|c| format!(" --config {}", c.display())).unwrap_or_default();
            println!("Start (or restart) it with: cofre-store{config} serve");
            Ok(())
        }
        Command::SetControllers { controllers } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let state = StateDir::open(&settings.state_dir)?;
            cofre_dial::controller_urls(&controllers)?;
            let e = state.save_controllers(&controllers)?;
            println!("Store {} now tries: {}", e.store_id, e.controllers().join(", "));
            if !settings.controllers.is_empty() {
                println!(
                    "Note: the configuration's `controllers` ({}) wins over these addresses.",
                    settings.controllers.join(", ")
                );
            }
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let state_dir = StateDir::open(&settings.state_dir)?;
    let store = Store::bind(settings).await?;
    if state_dir.is_enrolled() {
        tokio::spawn(cofre_store::session::run_forever(store.state().clone(), state_dir));
    } else {
        tracing::warn!(
            "not enrolled with a controller: serving htpasswd users only (run `cofre-store enroll`)"
        );
    }
    store.run(shutdown_signal()).await
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
    tracing::info!("shutting down");
}
