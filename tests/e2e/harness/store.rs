//! cofre-store as a subprocess: HTTPS with a certificate from the test CA, its data and state
//! in a temp dir, enrolled with the test's controller exactly as an administrator would
//! (`cofre store add` → `cofre-store enroll`), plus an optional htpasswd file for restic users.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;

use super::pki::{IssuedCert, TestCa};
use super::procs::{Proc, free_port, wait_until, workspace_bin};

/// A cofre-store process (killed on drop) and what it needs to be restarted the same way.
pub struct CofreStore {
    dir: TempDir,
    port: u16,
    config: PathBuf,
    /// Serving with the certificate Cofre's CA issues at enrollment (no certificate files).
    cofre_tls: bool,
    proc: Option<Proc>,
}

/// An htpasswd user with its rule.
pub struct StoreUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    /// "append-only", "read-only" or "full".
    pub mode: &'a str,
    /// Repository patterns: exact paths, `prefix/*` or `*`.
    pub repositories: &'a [&'a str],
}

impl CofreStore {
    /// Writes the config (HTTPS for localhost/127.0.0.1 from `ca`, htpasswd `users`); does not
    /// start the process.
    pub fn new(ca: &TestCa, users: &[StoreUser<'_>]) -> Result<CofreStore> {
        Self::with_tls(Some(ca), users)
    }

    /// Like [`CofreStore::new`]; with `ca` None the store has no certificate files and serves
    /// with the one Cofre's CA issues it at enrollment.
    pub fn with_tls(ca: Option<&TestCa>, users: &[StoreUser<'_>]) -> Result<CofreStore> {
        let dir = tempfile::Builder::new().prefix("cofre-store-").tempdir()?;
        let port = free_port();
        let p = dir.path();
        let tls = match ca {
            Some(ca) => {
                let cert: IssuedCert = ca.issue_localhost_server()?;
                std::fs::write(p.join("ca.pem"), ca.cert_pem())?;
                std::fs::write(p.join("server.crt"), &cert.cert_pem)?;
                std::fs::write(p.join("server.key"), &cert.key_pem)?;
                format!("tls_cert = {:?}\ntls_key = {:?}\n", p.join("server.crt"), p.join("server.key"))
            }
            None => String::new(),
        };
        let mut htpasswd = String::new();
        let mut rules = String::new();
        for u in users {
            htpasswd.push_str(&format!("{}:{}\n", u.name, bcrypt::hash(u.password, 5)?));
            let repos: Vec<String> = u.repositories.iter().map(|r| format!("{r:?}")).collect();
            rules.push_str(&format!(
                "\n[[users]]\nname = {:?}\nmode = {:?}\nrepositories = [{}]\n",
                u.name,
                u.mode,
                repos.join(", ")
            ));
        }
        std::fs::write(p.join("htpasswd"), htpasswd)?;
        let config = p.join("store.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\nstate_dir = {:?}\n{tls}\
                 htpasswd_file = {:?}\n\
                 [log]\nfilter = \"info,cofre_store=debug\"\n{rules}",
                p.join("data"),
                p.join("state"),
                p.join("htpasswd"),
            ),
        )?;
        Ok(CofreStore { dir, port, config, cofre_tls: ca.is_none(), proc: None })
    }

    /// `cofre-store enroll` with a token from `cofre store add`.
    pub fn enroll(&self, controller_grpc_url: &str, token: &str) -> Result<Output> {
        self.enroll_with(&[controller_grpc_url], token)
    }

    /// `cofre-store enroll` with several controller addresses (`--controller` repeated, in order).
    pub fn enroll_with(&self, controller_grpc_urls: &[&str], token: &str) -> Result<Output> {
        let mut cmd = Command::new(workspace_bin("cofre-store"));
        cmd.arg("--config").arg(&self.config).arg("enroll");
        for url in controller_grpc_urls {
            cmd.args(["--controller", url]);
        }
        Ok(cmd.args(["--token", token]).output()?)
    }

    /// Starts (again) `serve` and waits until it accepts connections.
    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(workspace_bin("cofre-store"));
        cmd.arg("--config").arg(&self.config).arg("serve");
        self.proc = Some(Proc::spawn("store", cmd, self.dir.path())?);
        let port = self.port;
        let proc = self.proc.as_mut().context("store process")?;
        wait_until("cofre-store listening", Duration::from_secs(30), Duration::from_millis(50), || {
            if !proc.is_running() {
                return Err(format!("cofre-store exited:\n{}", proc.log()));
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
        })?;
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill9()?;
        }
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate()?;
        }
        Ok(())
    }

    /// The URL to register with the controller (and the base of repository URLs).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }

    /// `rest:https://user:password@127.0.0.1:port/<repo>` for the restic CLI.
    pub fn restic_repository(&self, user: &str, password: &str, repo: &str) -> String {
        format!("rest:https://{user}:{password}@127.0.0.1:{}/{repo}", self.port)
    }

    /// `rest:https://127.0.0.1:port/<repo>` (with a client certificate instead of a password).
    pub fn restic_repository_cert(&self, repo: &str) -> String {
        format!("rest:https://127.0.0.1:{}/{repo}", self.port)
    }

    /// The CA clients verify the store with: the test CA, or Cofre's (after enrollment).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_pem_path()).unwrap_or_default()
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        if self.cofre_tls { self.state_dir().join("ca.pem") } else { self.dir.path().join("ca.pem") }
    }

    pub fn uses_cofre_certificate(&self) -> bool {
        self.cofre_tls
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("store.log")).unwrap_or_default()
    }

    /// Registers this store with the controller and enrolls it; returns the store id.
    pub async fn register(
        &self,
        admin: &cofre_client::Client,
        controller_grpc_url: &str,
    ) -> Result<uuid::Uuid> {
        self.register_with(admin, &[controller_grpc_url]).await
    }

    /// Like [`CofreStore::register`], enrolled with each of the controller's addresses.
    pub async fn register_with(
        &self,
        admin: &cofre_client::Client,
        controller_grpc_urls: &[&str],
    ) -> Result<uuid::Uuid> {
        let created = admin.create_store("e2e-store", &self.url()).await?;
        let out = self.enroll_with(controller_grpc_urls, &created.token)?;
        if !out.status.success() {
            bail!(
                "cofre-store enroll failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(created.store.id)
    }
}

/// Waits until the store answers `url` (a repository's `config`, asked with `http`'s machine
/// identity) with 403: a revocation has reached it. Returns how long that took, from the call.
/// The deadline is generous: the store writes the new access list durably before using it, and
/// fsyncs on a loaded test machine can take seconds; the time taken is what tests print.
pub async fn wait_until_refused(store: &CofreStore, http: &reqwest::Client, url: &str) -> Result<Duration> {
    let started = std::time::Instant::now();
    super::procs::wait_until_async(
        "the store refuses the revoked machine",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let (http, url) = (http.clone(), url.to_string());
            async move {
                match http.head(&url).send().await {
                    Ok(r) if r.status() == 403 => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await
    .with_context(|| format!("store log:\n{}", store.log()))?;
    Ok(started.elapsed())
}
