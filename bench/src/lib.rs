//! `cofre-bench`: Cofre's backup engine against restic and against this machine's CPU ceiling,
//! in one run (issue #4). See `docs/benchmarks.md` for how to run it and what it found.
//!
//! One run: generate (or reuse) a deterministic data set, start a REST server on loopback, then
//! for each of `--runs` fresh repository pairs alternate restic and Cofre through four scenarios
//! (initial backup, unchanged re-backup, re-backup after changing 5% of the files, restore), each
//! tool a whole child process measured the same way (GNU time: wall, CPU, peak RSS). Cofre's side
//! is this binary re-executing itself with a hidden `engine-*` subcommand that calls
//! `cofre-engine`, the code path the agent uses. Finally single-core throughput of the pipeline's
//! stages gives the ideal 2-core ceiling; the report is Markdown (stdout, `--out`) and JSON.
//!
//! This is a tool run by a person or CI: every error ends the run with its context, so `anyhow`
//! is used throughout instead of a typed error enum.
//!
//! Modules: `dataset` (generation, mutation), `server` (REST servers), `tools` (restic and Cofre
//! command lines), `child` (the hidden engine subcommands), `measure` (process measurement),
//! `ceiling` (stage micro-benchmarks), `runner` (the scenarios), `report` (Markdown, JSON),
//! `machine` (what this machine is).

mod ceiling;
mod child;
mod compare;
mod dataset;
mod machine;
mod measure;
mod report;
mod runner;
mod server;
mod store_server;
mod tools;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command line of `cofre-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "cofre-bench",
    version,
    about = "Benchmarks Cofre's backup engine against restic and this machine's CPU ceiling",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub child: Option<ChildCommand>,
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// The benchmark's own options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Directory for the data set (kept and reused across runs), repositories, caches, logs.
    #[arg(long, default_value = "/var/tmp/cofre-bench")]
    pub work_dir: PathBuf,
    /// Repetitions of every scenario; each run uses fresh repositories. Medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Scale of the data set: 1.0 is ~1 GiB (50,000 small files, 8 x 64 MiB); 0.01 for a quick try.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Seed of the data set generator (same seed, same bytes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Use a tree of 1,000,000 tiny files (0-512 B) instead: ~40 s and ~4 GB of disk to
    /// generate, ~16 minutes for one run on 2 cores (see docs/benchmarks.md).
    #[arg(long)]
    pub million_files: bool,
    /// CI smoke mode: tiny data set, one run, a short CPU ceiling. Proves the tool works.
    #[arg(long)]
    pub smoke: bool,
    /// The REST server to run the repositories on.
    #[arg(long, value_enum, default_value_t = ServerKind::RusticServer)]
    pub server: ServerKind,
    /// Instead of the scenarios: restic backup and restore of the data set through rustic-server
    /// and through cofre-store (same data, same transport, alternating), as a ratio.
    #[arg(long)]
    pub compare_servers: bool,
    /// Serve HTTPS (private CA made for the run) instead of plain HTTP on loopback.
    #[arg(long)]
    pub tls: bool,
    /// Drop the page cache (sync; echo 3 > /proc/sys/vm/drop_caches) before every measured
    /// process: cold-cache figures. Needs root.
    #[arg(long)]
    pub drop_caches: bool,
    /// After the measured runs, one more (unmeasured) run with each tool's initial backup,
    /// unchanged re-backup and restore under `perf record` (data under `<work-dir>/perf`; the
    /// report quotes the top binaries, threads and functions).
    #[arg(long)]
    pub perf: bool,
    /// Skip the CPU ceiling micro-benchmarks.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Also write the Markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the machine-readable results (JSON) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// REST servers the benchmark can run the repositories on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// rustic-server 0.4 (from `PATH` or `~/.cargo/bin`).
    RusticServer,
    /// Cofre's own store (the `cofre-store` binary next to this one), an htpasswd user with
    /// full rights: build it with `cargo build --release -p cofre-bench -p cofre-store`.
    CofreStore,
}

/// Hidden subcommands: the Cofre side of each scenario, run as a child process.
#[derive(Debug, Subcommand)]
pub enum ChildCommand {
    /// Initialise a repository with cofre-engine; prints its restic id.
    #[command(hide = true)]
    EngineInit(child::TargetArgs),
    /// Back up paths with cofre-engine (as the agent does); prints the report as JSON.
    #[command(hide = true)]
    EngineBackup(child::BackupArgs),
    /// Restore a snapshot with cofre-engine.
    #[command(hide = true)]
    EngineRestore(child::RestoreArgs),
}

/// Runs the benchmark, or one hidden child command.
///
/// # Errors
/// Anything that stops the benchmark: missing tools, a server that does not start, a backup or
/// restore that fails, unwritable output files.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.child {
        Some(ChildCommand::EngineInit(args)) => child::engine_init(&args),
        Some(ChildCommand::EngineBackup(args)) => child::engine_backup(&args),
        Some(ChildCommand::EngineRestore(args)) => child::engine_restore(&args),
        None => runner::run(cli.bench),
    }
}
