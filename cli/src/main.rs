//! `cofre`: script Cofre's REST API from a shell. Every command prints JSON, or a table or CSV
//! with `--output` (`output.rs`); exit statuses are documented in docs/cli.md. Policies as code are in `policy.rs`; audit and compliance in `reports.rs`.

mod apply;
mod fleet;
mod output;
mod people;
mod policy;
mod reports;
mod session;
mod setup;

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cofre_client::Client;

#[derive(Parser)]
#[command(name = "cofre", version, about = "Script Cofre's REST API")]
struct Cli {
    /// The controller's HTTP address.
    #[arg(long, global = true, env = "COFRE_URL", default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// PEM file of a private CA the controller's HTTPS certificate chains to.
    #[arg(long, global = true, env = "COFRE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// An API token (or an access token); without one, the session of `cofre login` is used.
    #[arg(long, global = true, env = "COFRE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How to print answers: json (for scripts), table (for people) or csv (for spreadsheets).
    #[arg(long, short, global = true, value_enum, default_value_t = output::Output::Json)]
    output: output::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per run; the policy flags are many")]
enum Command {
    /// Log in (the password is read from stdin); the session is kept in the user's config dir
    /// (0600) and refreshed as it is used.
    Login {
        #[arg(long, default_value = "admin")]
        username: String,
        /// Also print the access token (short-lived) on stdout, e.g. for COFRE_TOKEN.
        #[arg(long)]
        print_token: bool,
    },
    /// Groups, repositories, policies and assignments as code: make the controller match a
    /// TOML file (idempotent). Prints the plan.
    Apply {
        /// The fleet file.
        #[arg(long, short)]
        file: PathBuf,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove assignments the file does not list.
        #[arg(long)]
        prune: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Who am I (the signed-in user, role and group).
    Me,
    /// End the session of `cofre login` on the controller (or the access token given) now.
    Logout,
    /// People: list, create, change role or group, disable, enable, reset a password (admins).
    #[command(subcommand)]
    User(people::UserCommand),
    /// API tokens for scripts: create (scoped, expiring), list, revoke.
    #[command(subcommand)]
    ApiToken(people::ApiTokenCommand),
    /// Enrollment tokens for agents: list, create (printed once), revoke.
    #[command(subcommand)]
    EnrollmentToken(fleet::EnrollmentTokenCommand),
    /// Groups (departments): list, create, delete, quota.
    #[command(subcommand)]
    Group(setup::GroupCommand),
    /// Repositories (where backups go): list, show, create, update (credential rotation), delete.
    #[command(subcommand)]
    Repository(setup::RepositoryCommand),
    /// Backup policies: create, edit (as code, from JSON/TOML or flags), list, show, versions,
    /// diff, assign, assignments, unassign, stale.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Machines: list, show, update, approve, revoke, decommission, quota, snapshots, run.
    #[command(subcommand)]
    Machine(fleet::MachineCommand),
    /// Jobs (backups and maintenance): list, show, cancel.
    #[command(subcommand)]
    Job(fleet::JobCommand),
    /// Compliance: every machine's status and why, roll-ups, daily history, a machine's history.
    #[command(subcommand)]
    Compliance(reports::ComplianceCommand),
    /// The audit log: list, verify, checkpoints.
    #[command(subcommand)]
    Audit(reports::AuditCommand),
    /// The controller's maintenance: restic repositories, forget/prune/check jobs, run now.
    #[command(subcommand)]
    Maintenance(setup::MaintenanceCommand),
    /// cofre-store instances: create, list, show, inventory, revoke.
    #[command(subcommand)]
    Store(setup::StoreCommand),
}

/// "500M", "2G", "1048576" → bytes.
pub(crate) fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().with_context(|| format!("{s:?} is not a size like 500M or 2G"))?;
    n.checked_mul(mult).with_context(|| format!("{s} is too large"))
}

/// The `--output` chosen for this run.
static OUTPUT: std::sync::OnceLock<output::Output> = std::sync::OnceLock::new();

fn print<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let format = OUTPUT.get().copied().unwrap_or_default();
    out(&output::render(&serde_json::to_value(v)?, format))
}

/// The exit status for an error (documented in docs/cli.md).
fn exit_status(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<reports::VerificationFailed>().is_some() {
        return 9;
    }
    match e.downcast_ref::<cofre_client::ClientError>() {
        Some(cofre_client::ClientError::Api { status, .. }) => match status.as_u16() {
            401 | 403 => 3,
            404 => 4,
            400 | 409 | 412 | 422 => 5,
            429 => 6,
            s if s >= 500 => 7,
            _ => 1,
        },
        Some(cofre_client::ClientError::Transport(_)) => 7,
        Some(cofre_client::ClientError::Timeout(_)) => 8,
        Some(cofre_client::ClientError::Url(_)) => 2,
        None => 1,
    }
}

/// Writes a line to stdout; a closed pipe (`cofre … | head`) ends the program quietly instead
/// of panicking as `println!` does.
fn out(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = OUTPUT.set(cli.output);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(exit_status(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ca = match &cli.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let mut client = Client::with_ca(&cli.api_url, ca.as_deref())?;
    if let Some(t) = &cli.token {
        client = client.with_token(t.clone());
    }
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory as _;
        clap_complete::generate(shell, &mut Cli::command(), "cofre", &mut std::io::stdout());
        return Ok(());
    }
    let needs_token = !matches!(cli.command, Command::Login { .. });
    if needs_token && client.token().is_none() {
        session::attach(&mut client, &cli.api_url).await?;
    }
    match cli.command {
        Command::Login { username, print_token } => {
            let mut pw = String::new();
            std::io::stdin().read_to_string(&mut pw).context("reading the password from stdin")?;
            let r = client.login(&username, pw.trim_end_matches(['\n', '\r'])).await?;
            let path = session::save(&session::Stored::new(&cli.api_url, &username, &r))?;
            eprintln!(
                "Signed in to {} as {username}; the session is kept in {} until {}.",
                cli.api_url,
                path.display(),
                r.refresh_expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            if print_token {
                out(&r.access_token)?;
            }
        }
        Command::Policy(cmd) => policy::run(&client, cmd).await?,
        Command::Compliance(cmd) => reports::compliance(&client, cmd).await?,
        Command::Completions { .. } => {}
        Command::Apply { file, dry_run, prune } => print(&apply::run(&client, &file, dry_run, prune).await?)?,
        Command::Me => print(&client.me().await?)?,
        Command::Logout => {
            client.logout().await?;
            if cli.token.is_none() {
                session::remove()?;
            }
        }
        Command::User(cmd) => people::run(&client, cmd).await?,
        Command::ApiToken(cmd) => people::api_token(&client, cmd).await?,
        Command::Audit(cmd) => reports::audit(&client, cmd).await?,
        Command::EnrollmentToken(cmd) => fleet::enrollment_token(&client, cmd).await?,
        Command::Group(cmd) => setup::group(&client, cmd).await?,
        Command::Repository(cmd) => setup::repository(&client, cmd).await?,
        Command::Machine(cmd) => fleet::machine(&client, cmd).await?,
        Command::Job(cmd) => fleet::job(&client, cmd).await?,
        Command::Maintenance(cmd) => setup::maintenance(&client, cmd).await?,
        Command::Store(cmd) => setup::store(&client, cmd).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    /// Every command's arguments are consistent, and none reuses the name of a global flag
    /// (`token`, `output`, …): clap would then panic when that command runs.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        fn walk(cmd: &clap::Command, globals: &[String], path: &str, clashes: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let here = format!("{path} {}", sub.get_name());
                for arg in sub.get_arguments().filter(|a| !a.is_global_set()) {
                    if globals.iter().any(|g| g == arg.get_id().as_str()) {
                        clashes.push(format!("{here}: {}", arg.get_id()));
                    }
                }
                walk(sub, globals, &here, clashes);
            }
        }
        let cli = super::Cli::command();
        cli.clone().debug_assert();
        let globals: Vec<String> =
            cli.get_arguments().filter(|a| a.is_global_set()).map(|a| a.get_id().to_string()).collect();
        assert!(globals.contains(&"token".to_string()));
        let mut clashes = Vec::new();
        walk(&cli, &globals, "cofre", &mut clashes);
        assert!(clashes.is_empty(), "arguments named like a global flag: {clashes:?}");
    }

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size(" 1T ").unwrap(), 1 << 40);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err(), "overflow is refused");
    }
}
