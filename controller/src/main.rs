//! `cofre-controller`: parse arguments, initialise tracing, call the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cofre_controller::config::Settings;

#[derive(Parser)]
#[command(name = "cofre-controller", version, about = "Cofre's controller: fleet manager for restic backups")]
struct Cli {
    /// TOML configuration file (settings may also come from COFRE_… variables).
    #[arg(long, short, global = true, env = "COFRE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API and the agent service (connects as the app role).
    Serve,
    /// Apply database migrations (as the owner role) and create missing keys.
    Migrate,
    /// All-in-one local start: own PostgreSQL, master key, migrate, serve.
    Up(cofre_controller::up::UpArgs),
    /// Make a new access-token signing key (as the schema owner): tokens of the key before it
    /// stay valid until they expire; running controllers pick it up within 5 minutes.
    RotateJwtKey,
    /// Print the documented default configuration.
    PrintDefaultConfig,
    /// Print the REST API's OpenAPI 3.1 document (also served at /api/v1/openapi.json).
    PrintOpenapi,
    /// Write a new random master key (64 hex characters, mode 0600) to FILE.
    GenerateMasterKey { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    // A maintenance job's own process (see maintenance::child): no runtime, no arguments but its name.
    if std::env::args().nth(1).as_deref() == Some(cofre_controller::maintenance::child::SUBCOMMAND) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        cofre_controller::init_tracing("pretty", "info");
        return cofre_controller::maintenance::child::child_main();
    }
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
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
            return Ok(());
        }
        Command::PrintOpenapi => {
            println!("{}", serde_json::to_string_pretty(cofre_controller::api::openapi::served())?);
            return Ok(());
        }
        Command::GenerateMasterKey { file } => {
            cofre_controller::seal::MasterKey::generate().write_new_file(&file)?;
            println!(
                "Wrote a new master key to {}. Back it up: without it the database's secrets cannot be opened.",
                file.display()
            );
            return Ok(());
        }
        _ => {}
    }
    let settings = Settings::load(cli.config.as_deref())?;
    cofre_controller::init_tracing(&settings.log.format, &settings.log.filter);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve => {
                let (started, fut) = cofre_controller::serve::start(settings, shutdown_signal()).await?;
                cofre_controller::serve::announce_first_admin(&started.first_admin);
                tracing::info!(http = %started.http, grpc = %started.grpc, "controller ready");
                fut.await
            }
            Command::Migrate => cofre_controller::serve::migrate(&settings).await,
            Command::RotateJwtKey => cofre_controller::serve::rotate_jwt_key(&settings).await,
            Command::Up(args) => Box::pin(cofre_controller::up::run(settings, args, shutdown_signal())).await,
            Command::PrintDefaultConfig | Command::PrintOpenapi | Command::GenerateMasterKey { .. } => Ok(()),
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
