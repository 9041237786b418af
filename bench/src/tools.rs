//! The two tools' command lines: the `restic` CLI at its defaults, and Cofre (this binary's
//! hidden `engine-*` subcommands). Both get a private cache dir per repository, kept between the
//! scenarios of that repository.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::measure::Invocation;
use crate::server::RepoAccess;

/// The host name both tools record (restic also picks its parent snapshot by it).
const HOST: &str = "cofre-bench";

/// restic variables that would change what we measure if inherited.
const RESTIC_ENV: [&str; 10] = [
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_CACHE_DIR",
    "RESTIC_COMPRESSION",
    "RESTIC_PACK_SIZE",
    "RESTIC_KEY_HINT",
    "RESTIC_CACERT",
    "RESTIC_TLS_CLIENT_CERT",
    "RESTIC_PROGRESS_FPS",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Restic,
    Cofre,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Restic => "restic",
            Tool::Cofre => "cofre",
        }
    }
}

/// What a backup reported: restic's `--json` summary fields; Cofre's child prints the same.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupSummary {
    #[serde(default)]
    pub snapshot_id: String,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    /// New data, uncompressed.
    #[serde(default)]
    pub data_added: u64,
    /// New data as stored (Cofre only; restic 0.14 does not report it).
    #[serde(default)]
    pub data_added_packed: Option<u64>,
    #[serde(default)]
    pub total_files_processed: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
    #[serde(default)]
    pub warnings: u64,
}

/// Finds the summary line in a backup's stdout.
pub fn parse_backup(stdout: &str) -> Result<BackupSummary> {
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str::<BackupSummary>(l).ok().filter(|s| !s.snapshot_id.is_empty()))
        .with_context(|| format!("no backup summary in the output:\n{}", crate::measure::tail(stdout, 2000)))
}

/// One repository of one tool, with its secrets in files and its own cache dir.
#[derive(Debug, Clone)]
pub struct Repo {
    pub tool: Tool,
    pub name: String,
    pub access: RepoAccess,
    password_file: PathBuf,
    rest_password_file: PathBuf,
    pub cache_dir: PathBuf,
    /// Cofre: the restic id from init (backups insist on it, as the agent's do).
    restic_id: Option<String>,
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub restic: PathBuf,
    pub self_exe: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Tools> {
        let restic = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("restic")).find(|p| p.is_file()))
            .unwrap_or_default()
            .context("restic not found on PATH (apt-get install restic)")?;
        Ok(Tools { restic, self_exe: std::env::current_exe()? })
    }

    /// `restic version`, first line.
    pub fn restic_version(&self) -> Result<String> {
        let out = Invocation::new("restic-version", &self.restic).arg("version").run_plain()?;
        Ok(out.lines().next().unwrap_or_default().trim().to_owned())
    }

    /// Writes the secrets of a new repository under `dir` (its cache dir goes there too).
    pub fn repo(&self, tool: Tool, name: &str, access: RepoAccess, dir: &Path) -> Result<Repo> {
        fs::create_dir_all(dir)?;
        let password_file = dir.join(format!("{name}.password"));
        fs::write(&password_file, crate::server::random_hex(16)?)?;
        let rest_password_file = dir.join(format!("{name}.rest-password"));
        fs::write(&rest_password_file, &access.password)?;
        let cache_dir = dir.join(format!("{name}.cache"));
        if cache_dir.exists() {
            fs::remove_dir_all(&cache_dir)?;
        }
        Ok(Repo {
            tool,
            name: name.to_owned(),
            access,
            password_file,
            rest_password_file,
            cache_dir,
            restic_id: None,
        })
    }

    /// Initialises the repository (not measured). restic: `init --repository-version 2`
    /// (compression, as Cofre's repositories have); Cofre: `cofre_engine::init_repository`.
    pub fn init(&self, repo: &mut Repo) -> Result<()> {
        match repo.tool {
            Tool::Restic => {
                self.restic(repo, "restic-init")
                    .arg("init")
                    .arg("--repository-version")
                    .arg("2")
                    .run_plain()?;
            }
            Tool::Cofre => {
                let out = self.cofre(repo, "cofre-init", "engine-init").run_plain()?;
                repo.restic_id = Some(out.trim().to_owned());
            }
        }
        Ok(())
    }

    /// A backup of `path` at the tool's defaults (restic finds its parent snapshot by host and
    /// path, Cofre by host and path through rustic_core).
    pub fn backup(&self, repo: &Repo, label: &str, path: &Path) -> Result<Invocation> {
        Ok(match repo.tool {
            Tool::Restic => self
                .restic(repo, label)
                .arg("backup")
                .arg("--json")
                .arg("--quiet")
                .arg("--host")
                .arg(HOST)
                .arg(path),
            Tool::Cofre => {
                let Some(id) = &repo.restic_id else { bail!("repository {} was not initialised", repo.name) };
                self.cofre(repo, label, "engine-backup")
                    .arg("--cache-dir")
                    .arg(&repo.cache_dir)
                    .arg("--expected-id")
                    .arg(id)
                    .arg("--host")
                    .arg(HOST)
                    .arg(path)
            }
        })
    }

    /// A restore of the whole snapshot into `dest` (both recreate the absolute path below it).
    pub fn restore(&self, repo: &Repo, label: &str, snapshot: &str, dest: &Path) -> Invocation {
        match repo.tool {
            Tool::Restic => {
                self.restic(repo, label).arg("restore").arg(snapshot).arg("--target").arg(dest).arg("--quiet")
            }
            Tool::Cofre => self
                .cofre(repo, label, "engine-restore")
                .arg("--cache-dir")
                .arg(&repo.cache_dir)
                .arg("--snapshot")
                .arg(snapshot)
                .arg("--dest")
                .arg(dest),
        }
    }

    fn restic(&self, repo: &Repo, label: &str) -> Invocation {
        let mut inv = Invocation::new(label, &self.restic)
            .env("RESTIC_REPOSITORY", repo.access.restic_repository())
            .env("RESTIC_PASSWORD_FILE", &repo.password_file)
            .arg("--cache-dir")
            .arg(&repo.cache_dir);
        inv.env_remove = RESTIC_ENV.iter().map(|s| (*s).to_owned()).collect();
        if let Some(ca) = &repo.access.ca_file {
            inv = inv.arg("--cacert").arg(ca);
        }
        if let Some(identity) = &repo.access.client_identity {
            inv = inv.arg("--tls-client-cert").arg(identity);
        }
        inv
    }

    fn cofre(&self, repo: &Repo, label: &str, subcommand: &str) -> Invocation {
        // The environment the agent gives its job processes (glibc malloc tunables).
        let (key, value) = cofre_engine::job_process_env();
        let mut inv = Invocation::new(label, &self.self_exe)
            .env(key, value)
            .arg(subcommand)
            .arg("--url")
            .arg(&repo.access.url)
            .arg("--rest-user")
            .arg(&repo.access.user)
            .arg("--rest-password-file")
            .arg(&repo.rest_password_file)
            .arg("--password-file")
            .arg(&repo.password_file);
        if let Some(ca) = &repo.access.ca_file {
            inv = inv.arg("--cacert").arg(ca);
        }
        if let Some(identity) = &repo.access.client_identity {
            inv = inv.arg("--client-identity").arg(identity);
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_both_tools_parse() {
        let restic = r#"{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":2,"data_added":589959,"total_files_processed":3,"total_bytes_processed":588895,"snapshot_id":"fbc8e8fc"}"#;
        let s = parse_backup(&format!("noise\n{restic}\n")).unwrap();
        assert_eq!((s.snapshot_id.as_str(), s.files_unmodified, s.data_added_packed), ("fbc8e8fc", 2, None));
        assert!(parse_backup("nothing").is_err());
    }
}
