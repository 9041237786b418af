//! Where backups go and who they belong to: `cofre group …`, `cofre repository …`,
//! `cofre store …`, and the controller's `cofre maintenance …` of those repositories.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use cofre_client::cofre_api::repositories::UpdateRepository;
use cofre_client::{Client, NewRepository};
use uuid::Uuid;

use crate::fleet::print_jobs;
use crate::{out, parse_size, print};

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Groups (departments).
    List,
    /// Create a group: lowercase letters, digits, '-' and '_'.
    Create { name: String },
    /// Delete a group nothing belongs to (refused, saying why, otherwise).
    Delete { group: Uuid },
    /// Set or clear the storage quota cofre-store enforces for the group.
    Quota {
        group: Uuid,
        /// The limit in bytes (suffixes K, M, G, T: powers of 1024).
        #[arg(long, conflicts_with = "unlimited", required_unless_present = "unlimited")]
        bytes: Option<String>,
        /// Remove the limit.
        #[arg(long)]
        unlimited: bool,
    },
}

/// Secrets come from environment variables, never from the command line (which `ps` shows).
#[derive(Args)]
pub struct Credentials {
    #[arg(long)]
    username: Option<String>,
    /// Name of an environment variable holding the storage password.
    #[arg(long)]
    password_env: Option<String>,
    /// PEM file of a private CA the REST server's certificate chains to (not the controller's:
    /// that is the global --ca-file).
    #[arg(long)]
    server_ca_file: Option<PathBuf>,
    #[arg(long)]
    allow_insecure_http: bool,
    /// A plain rest-server's controller-only instance on the same data (the agents' one runs
    /// --append-only): the controller initialises and maintains repositories there.
    #[arg(long)]
    maintenance_url: Option<String>,
    #[arg(long)]
    maintenance_username: Option<String>,
    /// Name of an environment variable holding the maintenance instance's password.
    #[arg(long)]
    maintenance_password_env: Option<String>,
}

#[derive(Subcommand)]
pub enum RepositoryCommand {
    /// Repository definitions (secrets are never shown).
    List,
    /// One repository definition.
    Show { repository: Uuid },
    /// Define a repository: a REST server location and its storage credentials.
    Create {
        #[arg(long)]
        name: String,
        /// e.g. https://backup.example:8000
        #[arg(long)]
        url: String,
        /// Path of each machine's repository under the URL ({machine}, {group}, {hostname}).
        #[arg(long)]
        path_template: Option<String>,
        /// One repository shared by every machine using it (not recommended).
        #[arg(long)]
        shared: bool,
        #[command(flatten)]
        credentials: Credentials,
    },
    /// Change a repository's name or credentials (rotation); where backups live cannot change.
    Update {
        repository: Uuid,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        credentials: Credentials,
        /// Remove the storage user name and password.
        #[arg(long, conflicts_with_all = ["username", "password_env"])]
        no_credentials: bool,
    },
    /// Delete a definition nothing uses (never one holding backups).
    Delete { repository: Uuid },
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Register a store; prints the one-time token for `cofre-store enroll`.
    #[command(alias = "add")]
    Create {
        #[arg(long)]
        name: String,
        /// The URL agents reach the store at, e.g. https://backup.example:8443/. Repositories
        /// whose URL starts with it are served by this store.
        #[arg(long)]
        url: String,
    },
    /// List stores.
    List,
    /// One store.
    Show { store: Uuid },
    /// What a store holds, per repository, with snapshots the controller never recorded.
    Inventory { store: Uuid },
    /// Revoke a store: it can no longer connect to the controller.
    Revoke { store: Uuid },
}

#[derive(Subcommand)]
pub enum MaintenanceCommand {
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

fn from_env(var: Option<&String>) -> anyhow::Result<Option<String>> {
    var.map(|v| std::env::var(v).with_context(|| format!("environment variable {v} is not set"))).transpose()
}

fn read_ca(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    file.map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()
}

pub async fn group(client: &Client, cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List => print(&client.list_groups().await?),
        GroupCommand::Create { name } => print(&client.create_group(&name).await?),
        GroupCommand::Delete { group } => {
            client.delete_group(group).await?;
            out("deleted")
        }
        GroupCommand::Quota { group, bytes, unlimited: _ } => {
            let bytes = bytes.as_deref().map(parse_size).transpose()?;
            client.set_group_quota(group, bytes).await?;
            out("quota set")
        }
    }
}

pub async fn repository(client: &Client, cmd: RepositoryCommand) -> anyhow::Result<()> {
    match cmd {
        RepositoryCommand::List => print(&client.list_repositories().await?),
        RepositoryCommand::Show { repository } => print(&client.get_repository(repository).await?),
        RepositoryCommand::Create { name, url, path_template, shared, credentials: c } => {
            let r = client
                .create_repository(&NewRepository {
                    name,
                    url,
                    per_machine: !shared,
                    path_template,
                    username: c.username.clone(),
                    password: from_env(c.password_env.as_ref())?,
                    ca_certificate_pem: read_ca(c.server_ca_file.as_ref())?,
                    allow_insecure_http: c.allow_insecure_http,
                    maintenance_url: c.maintenance_url.clone(),
                    maintenance_username: c.maintenance_username.clone(),
                    maintenance_password: from_env(c.maintenance_password_env.as_ref())?,
                })
                .await?;
            print(&r)
        }
        RepositoryCommand::Update { repository, name, credentials: c, no_credentials } => {
            let mut req = UpdateRepository {
                name,
                username: c.username.clone().map(Some),
                password: from_env(c.password_env.as_ref())?.map(Some),
                ca_certificate_pem: read_ca(c.server_ca_file.as_ref())?.map(Some),
                allow_insecure_http: c.allow_insecure_http.then_some(true),
                maintenance_url: c.maintenance_url.clone().map(Some),
                maintenance_username: c.maintenance_username.clone().map(Some),
                maintenance_password: from_env(c.maintenance_password_env.as_ref())?.map(Some),
                ..Default::default()
            };
            if no_credentials {
                req.username = Some(None);
                req.password = Some(None);
            }
            print(&client.update_repository(repository, &req).await?)
        }
        RepositoryCommand::Delete { repository } => {
            client.delete_repository(repository).await?;
            out("deleted")
        }
    }
}

pub async fn store(client: &Client, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Create { name, url } => {
            let s = client.create_store(&name, &url).await?;
            print(&s.store)?;
            out(&format!(
                "\nOn the store machine, run once:\n  cofre-store --config /etc/cofre/store.toml enroll --controller https://<controller>:7443 --token {}",
                s.token
            ))
        }
        StoreCommand::List => print(&client.list_stores().await?),
        StoreCommand::Show { store } => print(&client.get_store(store).await?),
        StoreCommand::Inventory { store } => print(&client.store_inventory(store).await?),
        StoreCommand::Revoke { store } => print(&client.revoke_store(store).await?),
    }
}

pub async fn maintenance(client: &Client, cmd: MaintenanceCommand) -> anyhow::Result<()> {
    match cmd {
        MaintenanceCommand::Repositories { machine } => {
            print(&client.list_restic_repositories(machine).await?)
        }
        MaintenanceCommand::Jobs { kind, state } => {
            print_jobs(&client.maintenance_jobs(kind.as_deref(), state.as_deref()).await?)
        }
        MaintenanceCommand::Run { repository, kind, dry_run, wait } => {
            let mut j = client.run_maintenance(repository, &kind, dry_run).await?;
            if let Some(secs) = wait {
                j = client.wait_for_job(j.id, Duration::from_secs(secs)).await?;
            }
            print(&j)
        }
    }
}
