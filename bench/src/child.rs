//! The hidden `engine-*` subcommands: Cofre's side of every scenario as a whole process, so it
//! is measured exactly like `restic`. They call `cofre-engine` the way the agent's runner does
//! (same `RepoTarget`, `BackupRequest` with the `cofre` tag, a cache dir set once per process).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use secrecy::SecretString;

use crate::tools::BackupSummary;

/// Where the repository is and how to open it.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// `http(s)://host:port/repo` without credentials.
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub rest_user: Option<String>,
    #[arg(long)]
    pub rest_password_file: Option<PathBuf>,
    /// File holding the repository password.
    #[arg(long)]
    pub password_file: PathBuf,
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    #[arg(long)]
    pub client_identity: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long)]
    pub cache_dir: PathBuf,
    #[arg(long)]
    pub expected_id: String,
    #[arg(long, default_value = "cofre-bench")]
    pub host: String,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long)]
    pub cache_dir: PathBuf,
    #[arg(long)]
    pub snapshot: String,
    #[arg(long)]
    pub dest: PathBuf,
}

fn read_secret(path: &PathBuf) -> Result<SecretString> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned()))
}

fn repo_target(args: &TargetArgs) -> Result<cofre_engine::RepoTarget> {
    Ok(cofre_engine::RepoTarget {
        url: args.url.clone(),
        username: args.rest_user.clone(),
        password: args.rest_password_file.as_ref().map(read_secret).transpose()?,
        repository_password: read_secret(&args.password_file)?,
        ca_cert_file: args.cacert.clone(),
        client_identity_file: args.client_identity.clone(),
        // Loopback only: the engine allows plain http there anyway.
        allow_insecure_http: false,
    })
}

/// `engine-init`: prints the new repository's restic id.
pub fn engine_init(args: &TargetArgs) -> Result<()> {
    let id = cofre_engine::init_repository(&repo_target(args)?)?;
    println!("{id}");
    Ok(())
}

/// `engine-backup`: prints a [`BackupSummary`] as JSON.
pub fn engine_backup(args: &BackupArgs) -> Result<()> {
    cofre_engine::set_cache_dir(Some(args.cache_dir.clone()));
    let req = cofre_engine::BackupRequest {
        expected_restic_id: args.expected_id.clone(),
        paths: args.paths.clone(),
        hostname: args.host.clone(),
        tags: vec!["cofre".to_owned()],
        ..Default::default()
    };
    // As the agent runs it: counting progress, with the scan that counts the totals alongside;
    // `COFRE_BENCH_UNOBSERVED=1` measures the backup alone (no scan), for comparison.
    let progress = if std::env::var_os("COFRE_BENCH_UNOBSERVED").is_some() {
        cofre_engine::BackupProgress::unobserved()
    } else {
        cofre_engine::BackupProgress::default()
    };
    let report = cofre_engine::backup_with_progress(&repo_target(&args.target)?, &req, &progress)?;
    let summary = BackupSummary {
        snapshot_id: report.snapshot_id,
        files_new: report.files_new,
        files_changed: report.files_changed,
        files_unmodified: report.files_unmodified,
        data_added: report.bytes_added,
        data_added_packed: Some(report.bytes_added_packed),
        total_files_processed: report.files_processed,
        total_bytes_processed: report.bytes_processed,
        warnings: report.warnings.len() as u64,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// `engine-restore`: restores the whole snapshot into `--dest`.
pub fn engine_restore(args: &RestoreArgs) -> Result<()> {
    cofre_engine::set_cache_dir(Some(args.cache_dir.clone()));
    cofre_engine::restore(&repo_target(&args.target)?, &args.snapshot, None, &args.dest)?;
    Ok(())
}
