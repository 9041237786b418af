//! The maintenance job's own process (`cofre-controller maintenance-job`, started through
//! `cofre_engine::child`): it gets the repository's target and the task on stdin, runs the
//! engine's forget, prune or check under an exclusive restic lock, records the lock's id in a
//! file its parent watches (so another replica can remove it should this one die), and prints
//! one JSON result. Killing it (cancel, or the parent's death) leaves the repository
//! consistent: rustic's prune writes new index files before it deletes anything.

use std::path::PathBuf;
use std::time::Duration;

use cofre_engine::maintenance::{CheckReport, ForgetReport, PruneReport, ReadData};
use cofre_engine::{LockOptions, RetryClass, WireTarget};
use serde::{Deserialize, Serialize};

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "maintenance-job";

/// One maintenance job as its process receives it. Debug shows no secrets.
#[derive(Debug, Serialize, Deserialize)]
pub struct MaintenanceJob {
    pub target: WireTarget,
    pub task: Task,
    /// How long to wait for backups (their locks) to finish.
    pub lock_wait_seconds: u64,
    /// Where the process records its lock's id.
    pub lock_record: PathBuf,
    /// Locks a dead holder of this job left behind.
    pub stale_locks: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// `dry_run`: remove nothing, report what would go.
    Forget {
        remove: Vec<String>,
        #[serde(default)]
        dry_run: bool,
    },
    Prune {
        max_unused_percent: u32,
    },
    Check {
        read_data: ReadData,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TaskResult {
    Forget { report: ForgetReport },
    Prune { report: PruneReport },
    Check { report: CheckReport },
    Failed { message: String, retry_class: RetryClass },
}

/// `cofre-controller maintenance-job`.
pub fn child_main() -> std::process::ExitCode {
    cofre_engine::child::serve(
        SUBCOMMAND,
        |message| TaskResult::Failed { message, retry_class: RetryClass::Permanent },
        |job: MaintenanceJob| {
            let target: cofre_engine::RepoTarget = job.target.into();
            let lock = LockOptions {
                wait: Duration::from_secs(job.lock_wait_seconds),
                record: Some(job.lock_record),
                stale: job.stale_locks,
            };
            let failed = |e: cofre_engine::EngineError| TaskResult::Failed {
                message: e.to_string(),
                retry_class: e.retry_class(),
            };
            match job.task {
                Task::Forget { remove, dry_run } => {
                    cofre_engine::maintenance::forget(&target, &remove, dry_run, &lock)
                        .map_or_else(failed, |report| TaskResult::Forget { report })
                }
                Task::Prune { max_unused_percent } => {
                    cofre_engine::maintenance::prune(&target, max_unused_percent, &lock)
                        .map_or_else(failed, |report| TaskResult::Prune { report })
                }
                Task::Check { read_data } => cofre_engine::maintenance::check(&target, read_data, &lock)
                    .map_or_else(failed, |report| TaskResult::Check { report }),
            }
        },
    )
}
