//! cofre-store as the benchmark's REST server: the `cofre-store` binary next to this one,
//! serving its data dir to one htpasswd user with full rights (what a restic or Backrest client
//! migrating to Cofre uses), over plain HTTP on loopback or HTTPS from a CA made for the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::server::{RepoAccess, RepoServer, free_port, localhost_certificates, random_hex};

const USER: &str = "bench";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct CofreStore {
    child: Child,
    dir: PathBuf,
    port: u16,
    password: String,
    ca_file: Option<PathBuf>,
    version: String,
}

/// `cofre-store` beside the running binary (same profile), else on `PATH`.
fn binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()?.parent().map(|d| d.join("cofre-store"));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("cofre-store")).collect::<Vec<_>>())
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| p.is_file()).context(
        "cofre-store not found beside cofre-bench nor on PATH: cargo build --release -p cofre-bench -p cofre-store",
    )
}

impl CofreStore {
    pub fn start(dir: &Path, tls: bool) -> Result<CofreStore> {
        let binary = binary()?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("data"))?;
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "cofre-store (version unknown)".to_owned());
        let password = random_hex(16)?;
        // Cost 4: the store caches verified passwords, so this only shortens the first request.
        let hash = bcrypt::hash(&password, 4)?;
        fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n"))?;
        let port = free_port()?;
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\nstate_dir = {:?}\nhtpasswd_file = {:?}\n",
            dir.join("data"),
            dir.join("state"),
            dir.join("htpasswd"),
        );
        let ca_file = if tls {
            let (ca, cert, key) = localhost_certificates()?;
            fs::write(dir.join("ca.pem"), ca)?;
            fs::write(dir.join("server.crt"), cert)?;
            fs::write(dir.join("server.key"), key)?;
            config.push_str(&format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                dir.join("server.crt"),
                dir.join("server.key")
            ));
            Some(dir.join("ca.pem"))
        } else {
            config.push_str("allow_plain_http = true\n");
            None
        };
        config.push_str(&format!(
            "[log]\nfilter = \"warn\"\n[[users]]\nname = \"{USER}\"\nmode = \"full\"\nrepositories = [\"*\"]\n"
        ));
        fs::write(dir.join("store.toml"), config)?;
        let log = fs::File::create(dir.join("server.log"))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(dir.join("store.toml"))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut store = CofreStore { child, dir: dir.to_path_buf(), port, password, ca_file, version };
        store.wait_ready()?;
        Ok(store)
    }

    fn base_url(&self) -> String {
        let scheme = if self.ca_file.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Waits until the port accepts connections (the store binds only after its start-up scan).
    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("cofre-store exited during start-up ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("cofre-store not ready after {START_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl RepoServer for CofreStore {
    fn describe(&self) -> String {
        self.version.clone()
    }

    fn transport(&self) -> String {
        if self.ca_file.is_some() {
            "HTTPS on 127.0.0.1 (private CA made for the run, ECDSA P-256)".to_owned()
        } else {
            "plain HTTP on 127.0.0.1".to_owned()
        }
    }

    fn access(&self, repo: &str) -> RepoAccess {
        RepoAccess {
            url: format!("{}/{repo}", self.base_url()),
            user: USER.to_owned(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            client_identity: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Removes a repository's files. The store's in-memory catalog keeps counting them until it
    /// restarts; that only matters for quotas, which the benchmark's user does not have.
    fn delete_repo(&self, repo: &str) -> Result<()> {
        let path = self.dir.join("data").join(repo);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for CofreStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
