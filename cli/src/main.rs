//! `cofre`: script Cofre's REST API from a shell. Every command prints JSON, or a table or CSV
//! with `--output` (`output.rs`); exit statuses are documented in docs/cli.md. Policies as code are in `policy.rs`; audit and compliance in `reports.rs`.

mod apply;
mod output;
mod people;
mod policy;
mod reports;
mod session;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cofre_client::{Client, NewEnrollmentToken, NewRepository};
use uuid::Uuid;

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
#[allow(clippy::large_enum_variant, reason = "parsed once per run; the policy flags are many")]
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
    /// Create an enrollment token for agents.
    Token {
        #[arg(long)]
        uses: Option<u32>,
        #[arg(long)]
        ttl_seconds: Option<u64>,
        #[arg(long)]
        group: Option<Uuid>,
        #[arg(long)]
        requires_approval: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Create a group (department).
    Group { name: String },
    /// Define a repository: a REST server location and its storage credentials.
    Repository {
        #[arg(long)]
        name: String,
        /// e.g. https://backup.example:8000
        #[arg(long)]
        url: String,
        #[arg(long)]
        username: Option<String>,
        /// Name of an environment variable holding the storage password.
        #[arg(long)]
        password_env: Option<String>,
        /// PEM file of a private CA the REST server's certificate chains to.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Path of each machine's repository under the URL ({machine}, {group}, {hostname}).
        #[arg(long)]
        path_template: Option<String>,
        /// One repository shared by every machine using it (not recommended).
        #[arg(long)]
        shared: bool,
        #[arg(long)]
        allow_insecure_http: bool,
        /// A plain rest-server's controller-only instance on the same data (the agents' one
        /// runs --append-only): the controller initialises and maintains repositories there.
        #[arg(long)]
        maintenance_url: Option<String>,
        #[arg(long)]
        maintenance_username: Option<String>,
        /// Name of an environment variable holding the maintenance instance's password.
        #[arg(long)]
        maintenance_password_env: Option<String>,
    },
    /// Backup policies: create, edit (as code, from JSON/TOML or flags), list, versions, diff.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Machines whose agent does not run the current plan of its policies.
    StalePlans,
    /// Assign a policy to a machine or a group.
    Assign {
        #[arg(long)]
        policy: Uuid,
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        machine: Option<Uuid>,
        #[arg(long)]
        group: Option<Uuid>,
    },
    /// List machines with their last backup and result.
    Machines,
    /// Approve a machine waiting for approval.
    Approve { machine: Uuid },
    /// Revoke a machine: its certificates stop working at once.
    Revoke { machine: Uuid },
    /// Rename a machine (for people) or move it to another group.
    MachineUpdate {
        machine: Uuid,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, conflicts_with = "no_group")]
        group: Option<Uuid>,
        /// Take it out of any group.
        #[arg(long)]
        no_group: bool,
    },
    /// Decommission a machine: its certificates stop working and its schedules stop; its
    /// repository and snapshots are kept; it leaves the compliance reports.
    Decommission { machine: Uuid },
    /// Compliance: every machine's status and why, roll-ups, daily history, a machine's history.
    #[command(subcommand)]
    Compliance(reports::ComplianceCommand),
    /// The audit log: list, verify, checkpoints.
    #[command(subcommand)]
    Audit(reports::AuditCommand),
    /// Run a policy on a machine now.
    Run {
        #[arg(long)]
        machine: Uuid,
        #[arg(long)]
        policy: Uuid,
        /// Wait for the job to finish (up to this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Show a job.
    Job { id: Uuid },
    /// Stop a queued or running job (backup or maintenance); it ends "cancelled".
    Cancel {
        job: Uuid,
        /// Wait for the job to end (up to this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
    /// List jobs, newest first: a machine's (its backups and its repository's maintenance), or
    /// every job you may see, filtered.
    Jobs {
        machine: Option<Uuid>,
        #[arg(long)]
        policy: Option<Uuid>,
        /// backup, forget, prune or check.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Created before (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The controller's maintenance: restic repositories, forget/prune/check jobs, run now.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// List a machine's snapshots as the controller recorded them.
    Snapshots { machine: Uuid },
    /// cofre-store instances: register, list, inventory, revoke.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Set or clear the storage quota cofre-store enforces for a machine or a group.
    Quota {
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        machine: Option<Uuid>,
        #[arg(long)]
        group: Option<Uuid>,
        /// The limit in bytes (suffixes K, M, G, T: powers of 1024).
        #[arg(long, conflicts_with = "unlimited", required_unless_present = "unlimited")]
        bytes: Option<String>,
        /// Remove the limit.
        #[arg(long)]
        unlimited: bool,
    },
}

#[derive(Subcommand)]
enum MaintenanceCommand {
    /// Restic repositories with their snapshot count and last forget, prune and check.
    Repositories {
        #[arg(long)]
        machine: Option<Uuid>,
    },
    /// Maintenance jobs, newest first.
    Jobs {
        /// forget, prune or check.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
    /// Queue forget, prune or check of a restic repository now.
    Run {
        #[arg(long)]
        repository: Uuid,
        /// forget, prune or check.
        #[arg(long)]
        kind: String,
        /// Forget only: remove nothing, report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Wait for the job to finish (up to this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Register a store; prints the one-time token for `cofre-store enroll`.
    Add {
        #[arg(long)]
        name: String,
        /// The URL agents reach the store at, e.g. https://backup.example:8443/. Repositories
        /// whose URL starts with it are served by this store.
        #[arg(long)]
        url: String,
    },
    /// List stores.
    List,
    /// What a store holds, per repository, with snapshots the controller never recorded.
    Inventory { store: Uuid },
    /// Revoke a store: it can no longer connect to the controller.
    Revoke { store: Uuid },
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
        Command::Token { uses, ttl_seconds, group, requires_approval, description } => {
            let t = client
                .create_enrollment_token(&NewEnrollmentToken {
                    description,
                    group_id: group,
                    uses,
                    ttl_seconds,
                    requires_approval,
                })
                .await?;
            print(
                &serde_json::json!({"id": t.info.id, "token": t.token, "uses_left": t.info.uses_left, "expires_at": t.info.expires_at}),
            )?;
        }
        Command::Group { name } => {
            let g = client.create_group(&name).await?;
            print(&serde_json::json!({"id": g.id, "name": g.name}))?;
        }
        Command::Repository {
            name,
            url,
            username,
            password_env,
            ca_file,
            path_template,
            shared,
            allow_insecure_http,
            maintenance_url,
            maintenance_username,
            maintenance_password_env,
        } => {
            let from_env = |var: Option<String>| -> anyhow::Result<Option<String>> {
                var.map(|v| std::env::var(&v).with_context(|| format!("environment variable {v} is not set")))
                    .transpose()
            };
            let password = from_env(password_env)?;
            let maintenance_password = from_env(maintenance_password_env)?;
            let ca_certificate_pem = match ca_file {
                Some(p) => Some(
                    std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
                ),
                None => None,
            };
            let r = client
                .create_repository(&NewRepository {
                    name,
                    url,
                    per_machine: !shared,
                    path_template,
                    username,
                    password,
                    ca_certificate_pem,
                    allow_insecure_http,
                    maintenance_url,
                    maintenance_username,
                    maintenance_password,
                })
                .await?;
            print(
                &serde_json::json!({"id": r.id, "name": r.name, "url": r.url, "path_template": r.path_template}),
            )?;
        }
        Command::Policy(cmd) => policy::run(&client, cmd).await?,
        Command::StalePlans => print(&client.stale_plans().await?)?,
        Command::Assign { policy, machine, group } => {
            let a = match (machine, group) {
                (Some(m), _) => client.assign_policy_to_machine(policy, m).await?,
                (None, Some(g)) => client.assign_policy_to_group(policy, g).await?,
                (None, None) => anyhow::bail!("give --machine or --group"),
            };
            print(
                &serde_json::json!({"id": a.id, "policy_id": a.policy_id, "machine_id": a.machine_id, "group_id": a.group_id}),
            )?;
        }
        Command::Machines => {
            let ms = client.list_machines().await?;
            let rows: Vec<_> = ms
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id, "hostname": m.hostname, "status": m.status, "group": m.group_name,
                        "last_seen_at": m.last_seen_at, "last_backup_at": m.last_backup_at,
                        "last_result": m.last_result, "last_error": m.last_error,
                    })
                })
                .collect();
            print(&rows)?;
        }
        Command::Approve { machine } => {
            let m = client.approve_machine(machine).await?;
            print(&serde_json::json!({"id": m.id, "status": m.status}))?;
        }
        Command::Revoke { machine } => {
            let m = client.revoke_machine(machine).await?;
            print(&serde_json::json!({"id": m.id, "status": m.status}))?;
        }
        Command::MachineUpdate { machine, name, group, no_group } => {
            let group_id = if no_group { Some(None) } else { group.map(Some) };
            let req =
                cofre_client::cofre_api::machines::UpdateMachine { display_name: name.map(Some), group_id };
            print(&client.update_machine(machine, &req).await?)?;
        }
        Command::Decommission { machine } => {
            let m = client.decommission_machine(machine).await?;
            print(&serde_json::json!({"id": m.id, "status": m.status}))?;
        }
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
        Command::Run { machine, policy, wait } => {
            let key = Uuid::new_v4().to_string();
            let mut job = client.run_now(machine, policy, Some(&key)).await?;
            if let Some(secs) = wait {
                job = client.wait_for_job(job.id, Duration::from_secs(secs)).await?;
            }
            print_job(&job)?;
        }
        Command::Job { id } => print_job(&client.get_job(id).await?)?,
        Command::Cancel { job, wait } => {
            let mut j = client.cancel_job(job).await?;
            if let Some(secs) = wait {
                j = client.wait_for_job(j.id, Duration::from_secs(secs)).await?;
            }
            print_job(&j)?;
        }
        Command::Maintenance(MaintenanceCommand::Repositories { machine }) => {
            print(&client.list_restic_repositories(machine).await?)?;
        }
        Command::Maintenance(MaintenanceCommand::Jobs { kind, state }) => {
            for j in client.maintenance_jobs(kind.as_deref(), state.as_deref()).await? {
                print_job(&j)?;
            }
        }
        Command::Maintenance(MaintenanceCommand::Run { repository, kind, dry_run, wait }) => {
            let mut j = client.run_maintenance(repository, &kind, dry_run).await?;
            if let Some(secs) = wait {
                j = client.wait_for_job(j.id, Duration::from_secs(secs)).await?;
            }
            print_job(&j)?;
        }
        Command::Jobs { machine, policy, kind, state, from, to } => {
            let filter =
                cofre_client::JobFilter { machine, policy, kind, state, from, to, ..Default::default() };
            for j in client.list_all_jobs(&filter).await? {
                print_job(&j)?;
            }
        }
        Command::Snapshots { machine } => {
            let rows: Vec<_> = client
                .list_snapshots(machine)
                .await?
                .iter()
                .map(|s| serde_json::json!({"snapshot_id": s.snapshot_id, "time": s.time, "hostname": s.hostname, "paths": s.paths}))
                .collect();
            print(&rows)?;
        }
        Command::Store(StoreCommand::Add { name, url }) => {
            let s = client.create_store(&name, &url).await?;
            print(&s.store)?;
            out(&format!(
                "\nOn the store machine, run once:\n  cofre-store --config /etc/cofre/store.toml enroll --controller https://<controller>:7443 --token {}",
                s.token
            ))?;
        }
        Command::Store(StoreCommand::List) => print(&client.list_stores().await?)?,
        Command::Store(StoreCommand::Inventory { store }) => print(&client.store_inventory(store).await?)?,
        Command::Store(StoreCommand::Revoke { store }) => print(&client.revoke_store(store).await?)?,
        Command::Quota { machine, group, bytes, unlimited: _ } => {
            let bytes = bytes.as_deref().map(parse_size).transpose()?;
            match (machine, group) {
                (Some(m), _) => client.set_machine_quota(m, bytes).await?,
                (None, Some(g)) => client.set_group_quota(g, bytes).await?,
                (None, None) => anyhow::bail!("give --machine or --group"),
            }
            out("quota set")?;
        }
    }
    Ok(())
}

fn print_job(j: &cofre_client::Job) -> anyhow::Result<()> {
    print(&serde_json::json!({
        "id": j.id, "kind": j.kind, "machine_id": j.machine_id, "policy_id": j.policy_id,
        "restic_repository_id": j.restic_repository_id, "trigger": j.trigger, "state": j.state,
        "started_at": j.started_at, "finished_at": j.finished_at, "overran_window": j.overran_window,
        "snapshot_id": j.snapshot_id, "stats": j.stats, "warnings": j.warnings, "error": j.error_message,
        "retry_class": j.retry_class, "log": j.log,
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

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
