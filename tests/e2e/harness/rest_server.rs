//! rustic-server as a subprocess: a restic REST server with TLS from the test CA and htpasswd
//! authentication, storing its repositories in a temp dir.
//!
//! rustic-server 0.4.4 always treats repositories as private: whatever `--private-repos` or
//! `RUSTIC_SERVER_PRIVATE_REPOS` say, a user reaches only the repository named like the user
//! or one the ACL file grants (see `Acl::from_config`/`AclSettings::is_disabled` in its
//! source: every branch ends with `private_repo = true`). So the storage user is granted
//! `Modify` on each repository name explicitly, and since the ACL is read once at start,
//! [`RestServer::allow_repo`] rewrites it and restarts the server on the same port and data dir.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use tempfile::TempDir;

use super::pg::random_secret;
use super::pki::{TestCa, https_client};
use super::procs::{Proc, free_port, tail};

/// The single storage user every test talks to the REST server as.
pub const STORAGE_USER: &str = "cofre-storage";

/// How long start-up may take before we give up and show the server's output.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path components rustic-server refuses in a repository name (its file types).
const RESERVED_NAMES: [&str; 6] = ["config", "data", "index", "keys", "locks", "snapshots"];

/// A running rustic-server, killed on drop.
pub struct RestServer {
    dir: TempDir,
    port: u16,
    password: String,
    ca_pem: String,
    repos: BTreeSet<String>,
    proc: Option<Proc>,
}

impl RestServer {
    /// Starts a server with TLS (certificate for `localhost`/`127.0.0.1` from `ca`) and one
    /// storage user ([`STORAGE_USER`], random password) granted `Modify` on `repos`.
    pub fn start(ca: &TestCa, repos: &[&str]) -> Result<RestServer> {
        let dir = tempfile::Builder::new().prefix("cofre-rest-").tempdir()?;
        let cert = ca.issue_localhost_server()?;
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem())?;
        std::fs::write(dir.path().join("server.crt"), &cert.cert_pem)?;
        std::fs::write(dir.path().join("server.key"), &cert.key_pem)?;
        std::fs::create_dir(dir.path().join("data"))?;

        let password = random_secret();
        let output = Command::new(Self::binary()?)
            .args(["auth", "add", "-f"])
            .arg(dir.path().join("htpasswd"))
            .args(["-u", STORAGE_USER, "-p", &password])
            .env_remove("CI")
            .output()
            .context("running rustic-server auth add")?;
        ensure!(
            output.status.success() && dir.path().join("htpasswd").is_file(),
            "rustic-server auth add failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        let mut server = RestServer {
            dir,
            port: free_port(),
            password,
            ca_pem: ca.cert_pem().to_owned(),
            repos: BTreeSet::new(),
            proc: None,
        };
        for repo in repos {
            check_repo_name(repo)?;
            server.repos.insert((*repo).to_owned());
        }
        server.restart()?;
        Ok(server)
    }

    /// `rustic-server` from `PATH`, else `$HOME/.cargo/bin/rustic-server`.
    pub fn binary() -> Result<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("rustic-server"));
        let in_cargo_home =
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/rustic-server"));
        on_path.chain(in_cargo_home).find(|candidate| candidate.is_file()).context(
            "rustic-server not found on PATH nor in ~/.cargo/bin: cargo install rustic_server --locked",
        )
    }

    /// The command line the server runs with (shown in its log and in the harness report).
    pub fn command(&self) -> Result<Command> {
        let dir = self.dir.path();
        let mut cmd = Command::new(Self::binary()?);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--path")
            .arg(dir.join("data"))
            .arg("--htpasswd-file")
            .arg(dir.join("htpasswd"))
            // `--acl-path` requires `--private-repos`; repositories are private regardless.
            .arg("--private-repos")
            .arg("--acl-path")
            .arg(dir.join("acl.toml"))
            .arg("--tls")
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .arg("--tls-cert")
            .arg(dir.join("server.crt"))
            .arg("--log")
            .arg(dir.join("access.log"))
            // With CI set it shuts itself down 3 s after start.
            .env_remove("CI");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RUSTIC_SERVER_") {
                cmd.env_remove(key);
            }
        }
        Ok(cmd)
    }

    /// (Re)starts the server on the same port and data dir, with the current ACL, and waits
    /// until `/health/live` answers over TLS.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.write_acl()?;
        let proc = Proc::spawn("rustic-server", self.command()?, self.dir.path())?
            .with_grace(Duration::from_secs(3));
        self.proc = Some(proc);
        let health = format!("{}/health/live", self.url());
        let start = Instant::now();
        let failure = loop {
            // It exits with status 0 even on fatal start-up errors: its output says why.
            if !self.is_running() {
                break "rustic-server exited during start-up".to_owned();
            }
            let probe = super::block_on_isolated(async {
                let response = https_client(&self.ca_pem, None)?.get(&health).send().await?;
                anyhow::Ok(response.status())
            });
            match probe {
                Ok(status) if status.is_success() => return Ok(()),
                Ok(status) if start.elapsed() > START_TIMEOUT => {
                    break format!("GET {health} answered {status}");
                }
                Err(err) if start.elapsed() > START_TIMEOUT => {
                    break format!("GET {health} failed: {err:#}");
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let log = self.log();
        self.stop()?;
        bail!(
            "rustic-server did not become ready after {:.1?}: {failure}\n\
             --- rustic-server output ---\n{}",
            start.elapsed(),
            tail(&log, 8000)
        )
    }

    /// Stops the server (SIGTERM, then SIGKILL); the data dir stays. `restart` brings it back.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate()?;
        }
        Ok(())
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Grants the storage user `Modify` on repository `name` (a single path component),
    /// restarting the server when the name is new (the ACL is read only at start).
    pub fn allow_repo(&mut self, name: &str) -> Result<()> {
        check_repo_name(name)?;
        if self.repos.insert(name.to_owned()) {
            self.restart()?;
        }
        Ok(())
    }

    /// Repository names the storage user may use.
    pub fn allowed_repos(&self) -> impl Iterator<Item = &str> {
        self.repos.iter().map(String::as_str)
    }

    fn write_acl(&self) -> Result<()> {
        let mut acl = String::from("# Written by the cofre-e2e harness: one entry per repository.\n");
        for repo in &self.repos {
            acl.push_str(&format!("[{repo:?}]\n{STORAGE_USER:?} = \"Modify\"\n"));
        }
        std::fs::write(self.dir.path().join("acl.toml"), acl)?;
        Ok(())
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT/<repo>` (no credentials).
    pub fn repo_url(&self, repo: &str) -> String {
        format!("{}/{repo}", self.url())
    }

    /// The repository string for restic and rustic:
    /// `rest:https://USER:PASS@127.0.0.1:PORT/<repo>`.
    pub fn restic_repository(&self, repo: &str) -> String {
        format!("rest:https://{STORAGE_USER}:{}@127.0.0.1:{}/{repo}", self.password, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn username(&self) -> &str {
        STORAGE_USER
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA certificate that signed the server's certificate (PEM file path).
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where the repositories live (`<data_dir>/<repo>/{config,data,…}`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's own stdout/stderr, across restarts.
    pub fn log(&self) -> String {
        super::procs::read_lossy(&self.dir.path().join("rustic-server.log"))
    }

    /// The HTTP access log (combined log format).
    pub fn access_log(&self) -> String {
        super::procs::read_lossy(&self.dir.path().join("access.log"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An async HTTPS client that trusts the test CA (and nothing else).
    pub fn client(&self) -> Result<reqwest::Client> {
        https_client(&self.ca_pem, None)
    }
}

fn check_repo_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && !RESERVED_NAMES.contains(&name)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.'),
        "repository name {name:?}: one path component of [A-Za-z0-9._-], not starting with '.', \
         and none of {RESERVED_NAMES:?}"
    );
    Ok(())
}
