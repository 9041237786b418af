//! The fleet as resources: `cofre machine …`, `cofre job …`, `cofre enrollment-token …`, each
//! with the verbs it has (list, show, create, update, and the actions of its kind).

use std::time::Duration;

use clap::Subcommand;
use cofre_client::{Client, NewEnrollmentToken};
use uuid::Uuid;

use crate::{out, parse_size, print};

#[derive(Subcommand)]
pub enum MachineCommand {
    /// Machines with their status, last backup and result.
    List {
        /// pending, active, revoked or decommissioned.
        #[arg(long)]
        status: Option<String>,
    },
    /// One machine, all it is known by.
    Show { machine: Uuid },
    /// Rename a machine (for people) or move it to another group.
    Update {
        machine: Uuid,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, conflicts_with = "no_group")]
        group: Option<Uuid>,
        /// Take it out of any group.
        #[arg(long)]
        no_group: bool,
    },
    /// Approve a machine waiting for approval.
    Approve { machine: Uuid },
    /// Revoke a machine: its certificates stop working at once.
    Revoke { machine: Uuid },
    /// Decommission a machine: its certificates stop working and its schedules stop; its
    /// repository and snapshots are kept; it leaves the compliance reports.
    Decommission { machine: Uuid },
    /// Set or clear the storage quota cofre-store enforces for it.
    Quota {
        machine: Uuid,
        /// The limit in bytes (suffixes K, M, G, T: powers of 1024).
        #[arg(long, conflicts_with = "unlimited", required_unless_present = "unlimited")]
        bytes: Option<String>,
        /// Remove the limit.
        #[arg(long)]
        unlimited: bool,
    },
    /// Its snapshots as the controller recorded them.
    Snapshots { machine: Uuid },
    /// Back it up now under a policy (one job per run, even when retried).
    Run {
        machine: Uuid,
        #[arg(long)]
        policy: Uuid,
        /// Wait for the job to finish (up to this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Jobs, newest first: every job you may see, filtered.
    List {
        #[arg(long)]
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
    /// One job, with its statistics, warnings and log.
    Show { job: Uuid },
    /// Stop a queued or running job (backup or maintenance); it ends "cancelled".
    Cancel {
        job: Uuid,
        /// Wait for the job to end (up to this many seconds).
        #[arg(long)]
        wait: Option<u64>,
    },
}

#[derive(Subcommand)]
pub enum EnrollmentTokenCommand {
    /// Enrollment tokens (never their secrets).
    List,
    /// Create a token for agents to enroll with (printed once).
    Create {
        #[arg(long)]
        uses: Option<u32>,
        #[arg(long)]
        ttl_seconds: Option<u64>,
        /// The group enrolled machines join.
        #[arg(long)]
        group: Option<Uuid>,
        /// Enrolled machines wait for an operator's approval.
        #[arg(long)]
        requires_approval: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token: it enrolls nothing more.
    Revoke { id: Uuid },
}

/// A job as people read it in a list (the whole job with `cofre job show`).
fn job_row(j: &cofre_client::Job) -> serde_json::Value {
    serde_json::json!({
        "id": j.id, "kind": j.kind, "machine_id": j.machine_id, "policy_id": j.policy_id,
        "restic_repository_id": j.restic_repository_id, "trigger": j.trigger, "state": j.state,
        "started_at": j.started_at, "finished_at": j.finished_at, "overran_window": j.overran_window,
        "snapshot_id": j.snapshot_id, "stats": j.stats, "warnings": j.warnings, "error": j.error_message,
        "retry_class": j.retry_class,
    })
}

pub fn print_jobs(jobs: &[cofre_client::Job]) -> anyhow::Result<()> {
    print(&jobs.iter().map(job_row).collect::<Vec<_>>())
}

pub async fn machine(client: &Client, cmd: MachineCommand) -> anyhow::Result<()> {
    match cmd {
        MachineCommand::List { status } => {
            let rows: Vec<_> = client
                .list_machines()
                .await?
                .into_iter()
                .filter(|m| status.as_deref().is_none_or(|s| m.status == s))
                .map(|m| {
                    serde_json::json!({
                        "id": m.id, "hostname": m.hostname, "display_name": m.display_name, "status": m.status,
                        "group": m.group_name, "last_seen_at": m.last_seen_at, "last_backup_at": m.last_backup_at,
                        "last_result": m.last_result, "last_error": m.last_error,
                    })
                })
                .collect();
            print(&rows)
        }
        MachineCommand::Show { machine } => print(&client.get_machine(machine).await?),
        MachineCommand::Update { machine, name, group, no_group } => {
            let group_id = if no_group { Some(None) } else { group.map(Some) };
            let req =
                cofre_client::cofre_api::machines::UpdateMachine { display_name: name.map(Some), group_id };
            print(&client.update_machine(machine, &req).await?)
        }
        MachineCommand::Approve { machine } => print(&client.approve_machine(machine).await?),
        MachineCommand::Revoke { machine } => print(&client.revoke_machine(machine).await?),
        MachineCommand::Decommission { machine } => print(&client.decommission_machine(machine).await?),
        MachineCommand::Quota { machine, bytes, unlimited: _ } => {
            let bytes = bytes.as_deref().map(parse_size).transpose()?;
            client.set_machine_quota(machine, bytes).await?;
            out("quota set")
        }
        MachineCommand::Snapshots { machine } => print(&client.list_snapshots(machine).await?),
        MachineCommand::Run { machine, policy, wait } => {
            let key = Uuid::new_v4().to_string();
            let mut job = client.run_now(machine, policy, Some(&key)).await?;
            if let Some(secs) = wait {
                job = client.wait_for_job(job.id, Duration::from_secs(secs)).await?;
            }
            print(&job)
        }
    }
}

pub async fn job(client: &Client, cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::List { machine, policy, kind, state, from, to } => {
            let filter =
                cofre_client::JobFilter { machine, policy, kind, state, from, to, ..Default::default() };
            print_jobs(&client.list_all_jobs(&filter).await?)
        }
        JobCommand::Show { job } => print(&client.get_job(job).await?),
        JobCommand::Cancel { job, wait } => {
            let mut j = client.cancel_job(job).await?;
            if let Some(secs) = wait {
                j = client.wait_for_job(j.id, Duration::from_secs(secs)).await?;
            }
            print(&j)
        }
    }
}

pub async fn enrollment_token(client: &Client, cmd: EnrollmentTokenCommand) -> anyhow::Result<()> {
    match cmd {
        EnrollmentTokenCommand::List => print(&client.list_enrollment_tokens().await?),
        EnrollmentTokenCommand::Create { uses, ttl_seconds, group, requires_approval, description } => {
            let t = client
                .create_enrollment_token(&NewEnrollmentToken {
                    description,
                    group_id: group,
                    uses,
                    ttl_seconds,
                    requires_approval,
                })
                .await?;
            print(&t)
        }
        EnrollmentTokenCommand::Revoke { id } => {
            client.revoke_enrollment_token(id).await?;
            out("revoked")
        }
    }
}
