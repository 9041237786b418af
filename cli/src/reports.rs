//! `cofre audit …` and `cofre compliance …`: read and verify the audit log, and the compliance
//! reports (JSON, or CSV for spreadsheets).

use chrono::{DateTime, NaiveDate, Utc};
use clap::Subcommand;
use cofre_client::{AuditFilter, Client};
use uuid::Uuid;

use crate::{out, print};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Audit events, newest first (JSON array).
    List {
        /// A whole actor (user:<id>:<name>) or its leading parts (user:<id>, machine, system).
        #[arg(long)]
        actor: Option<String>,
        /// An action (machine.revoke) or its prefix (machine).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        target_type: Option<String>,
        #[arg(long)]
        target_id: Option<String>,
        /// RFC 3339, e.g. 2026-03-01T00:00:00-03:00.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        /// Events per page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Follow the cursor to the oldest matching event.
        #[arg(long)]
        all: bool,
    },
    /// Recompute the chain and its checkpoints; fails (exit status 1) naming the first broken
    /// event or checkpoint.
    Verify,
    /// Signed checkpoints and the audit public key (PEM).
    Checkpoints,
    /// Sign the chain head now.
    Checkpoint,
}

#[derive(Subcommand)]
pub enum ComplianceCommand {
    /// Every machine's status with the reason for each failed rule, worst first.
    Report {
        #[arg(long)]
        group: Option<Uuid>,
        /// compliant, at_risk, unknown or non_compliant.
        #[arg(long)]
        status: Option<String>,
        /// CSV (one row per machine and finding) instead of JSON.
        #[arg(long)]
        csv: bool,
    },
    /// Machines per status, per group and for the fleet.
    Summary,
    /// Per day: machines by their worst status of the day (default: the last 90 days).
    Days {
        #[arg(long)]
        group: Option<Uuid>,
        #[arg(long)]
        from: Option<NaiveDate>,
        #[arg(long)]
        to: Option<NaiveDate>,
    },
    /// A signed evidence pack (tar) for a period: compliance history, job results, policy
    /// versions, audit events and checkpoints; verify it with the verify.sh inside (openssl).
    Evidence {
        /// The group (department); the whole fleet when absent.
        #[arg(long)]
        group: Option<Uuid>,
        /// First day (in the controller's compliance time zone).
        #[arg(long)]
        from: NaiveDate,
        /// Last day, included.
        #[arg(long)]
        to: NaiveDate,
        /// Where to write the pack.
        #[arg(long, short)]
        file: std::path::PathBuf,
    },
    /// Alerts raised (newest first) and their delivery to each channel.
    Alerts {
        #[arg(long)]
        group: Option<Uuid>,
        #[arg(long)]
        since: Option<DateTime<Utc>>,
    },
    /// A machine's changes of status and the time it spent in each (default: 30 days).
    History {
        machine: Uuid,
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        #[arg(long)]
        to: Option<DateTime<Utc>>,
    },
}

/// `cofre audit verify` found a problem (exit status 9).
#[derive(Debug, thiserror::Error)]
#[error("the audit log does not verify at {0}")]
pub struct VerificationFailed(pub String);

pub async fn audit(client: &Client, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List { actor, action, target_type, target_id, from, to, limit, all } => {
            let mut filter = AuditFilter {
                actor,
                action,
                target_type,
                target_id,
                from,
                to,
                cursor: None,
                limit: Some(limit),
            };
            let mut events = Vec::new();
            loop {
                let page = client.audit_events(&filter).await?;
                events.extend(page.items);
                match page.next_cursor {
                    Some(c) if all => filter.cursor = Some(c),
                    _ => break,
                }
            }
            print(&events)
        }
        AuditCommand::Verify => {
            let r = client.audit_verify().await?;
            print(&r)?;
            match r.problem {
                None => Ok(()),
                Some(p) => Err(VerificationFailed(format!("{} {}: {}", p.kind, p.seq, p.message)).into()),
            }
        }
        AuditCommand::Checkpoints => print(&client.audit_checkpoints().await?),
        AuditCommand::Checkpoint => print(&client.make_audit_checkpoint().await?),
    }
}

pub async fn compliance(client: &Client, cmd: ComplianceCommand) -> anyhow::Result<()> {
    match cmd {
        ComplianceCommand::Report { group, status, csv: true } => {
            let text = client.compliance_csv(group, status.as_deref()).await?;
            out(text.trim_end())
        }
        ComplianceCommand::Report { group, status, csv: false } => {
            print(&client.compliance(group, status.as_deref()).await?)
        }
        ComplianceCommand::Summary => print(&client.compliance_summary().await?),
        ComplianceCommand::Days { group, from, to } => print(&client.compliance_days(group, from, to).await?),
        ComplianceCommand::Evidence { group, from, to, file } => {
            let tar = client.evidence_pack(group, from, to).await?;
            std::fs::write(&file, &tar)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
            print(&serde_json::json!({"file": file, "bytes": tar.len()}))
        }
        ComplianceCommand::Alerts { group, since } => print(&client.alerts(group, since).await?),
        ComplianceCommand::History { machine, from, to } => {
            print(&client.machine_compliance_history(machine, from, to).await?)
        }
    }
}
