//! `cofre-agent`: parse arguments, initialise tracing, call the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cofre-agent", version, about = "Cofre's backup agent")]
struct Cli {
    /// Where the agent keeps its identity, plan and spool.
    #[arg(long, global = true, env = "COFRE_AGENT_STATE_DIR", default_value = "/var/lib/cofre-agent")]
    state_dir: PathBuf,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this machine with a controller, using a token from an administrator.
    Enroll {
        /// The controller's agent URL, e.g. https://cofre.example:7443. Repeat it for each
        /// replica reachable on its own address: the agent tries them in turn and moves to
        /// another when the one it uses cannot be reached.
        /// With --reenroll the stored addresses are used unless given.
        #[arg(long = "controller", required_unless_present = "reenroll")]
        controllers: Vec<String>,
        /// The enrollment token (cofre1.…).
        #[arg(long, env = "COFRE_ENROLL_TOKEN")]
        token: String,
        /// Enroll again as a new machine even if this state dir is already enrolled.
        #[arg(long, conflicts_with = "reenroll")]
        force: bool,
        /// This machine's certificate expired while it was away: get a new one with a new token,
        /// keeping its identity, plan, repository and unsent results.
        #[arg(long)]
        reenroll: bool,
    },
    /// Run the agent: connect, keep the plan, run backups on schedule and on demand.
    Run {
        /// The only place hooks named by policies are run from: it and its files must be owned
        /// by root (or this agent's user) and writable by nobody else.
        #[arg(long, default_value = cofre_agent::hooks::DEFAULT_DIR)]
        hook_dir: PathBuf,
    },
    /// Print shell `export` lines that point the restic CLI at this machine's repositories
    /// (from the stored plan; prints secrets: for restores by this machine's administrator).
    ResticEnv,
    /// Replace the controller's addresses of an enrolled agent (same machine, same pinned CA);
    /// a running agent uses them from its next connection.
    SetControllers {
        /// The controller's agent URL; repeat it for each replica, in the order to try them.
        #[arg(long = "controller", required = true)]
        controllers: Vec<String>,
    },
    /// Show what this agent holds: identity, certificate validity, plan, unsent results.
    Status,
}

fn main() -> std::process::ExitCode {
    // A job's child process (see job_process): no runtime, no arguments but its name.
    if std::env::args().nth(1).as_deref() == Some(cofre_agent::job_process::SUBCOMMAND) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        cofre_agent::init_tracing(std::env::var_os("COFRE_AGENT_LOG_JSON").is_some());
        return cofre_agent::job_process::child_main();
    }
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    cofre_agent::init_tracing(cli.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            Command::Enroll { controllers, token, force, reenroll: false } => {
                let state = cofre_agent::state::StateDir::open(&cli.state_dir)?;
                cofre_agent::enroll::enroll(&state, &controllers, &token, force).await.map(|_| ())
            }
            Command::Enroll { controllers, token, reenroll: true, .. } => {
                let state = cofre_agent::state::StateDir::open(&cli.state_dir)?;
                cofre_agent::enroll::reenroll(&state, &controllers, &token).await.map(|_| ())
            }
            Command::SetControllers { controllers } => {
                let state = cofre_agent::state::StateDir::open(&cli.state_dir)?;
                cofre_dial::controller_urls(&controllers)?;
                let id = state.save_controllers(&controllers)?;
                println!("The agent of machine {} now tries: {}", id.machine_id, id.controllers().join(", "));
                Ok(())
            }
            Command::Run { hook_dir } => cofre_agent::run(&cli.state_dir, &hook_dir).await,
            Command::Status => {
                let state = cofre_agent::state::StateDir::open(&cli.state_dir)?;
                print!("{}", cofre_agent::status(&state)?);
                Ok(())
            }
            Command::ResticEnv => {
                let state = cofre_agent::state::StateDir::open(&cli.state_dir)?;
                print!("{}", cofre_agent::restic_env(&state)?);
                Ok(())
            }
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
