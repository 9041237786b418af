//! Cofre's own processes for end-to-end tests: a controller (`migrate` + `serve` against a
//! throwaway database, on random loopback ports) and agents (`enroll`, `run`), driven exactly
//! as an administrator would, through the same API client the CLI uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cofre_proto::agent::v1 as pb;
use prost::Message;

use super::pg::{PgCluster, PgDatabase};
use super::procs::{Proc, free_port, wait_until, workspace_bin};

pub const ADMIN_PASSWORD: &str = "e2e-admin-password";

/// A controller process and what it needs to be restarted the same way.
pub struct Controller {
    pub db: PgDatabase,
    pub dir: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    config: PathBuf,
    /// The master key file (a replica shares its primary's).
    key: PathBuf,
    /// The TOML appended to the config (replicas get it too).
    extra_toml: String,
    proc: Option<Proc>,
}

impl Controller {
    /// Creates a database with owner and app roles, writes a config, migrates as the owner and
    /// serves as the app role; returns once `/readyz` answers.
    pub fn start(pg: &PgCluster, dir: &Path, db_name: &str) -> Result<Controller> {
        Self::start_with(pg, dir, db_name, "")
    }

    /// Like [`Controller::start`], with more TOML appended to the config (whole tables).
    pub fn start_with(pg: &PgCluster, dir: &Path, db_name: &str, extra_toml: &str) -> Result<Controller> {
        let db = pg.create_database(db_name)?;
        std::fs::create_dir_all(dir)?;
        let key = dir.join("master.key");
        let out =
            Command::new(workspace_bin("cofre-controller")).arg("generate-master-key").arg(&key).output()?;
        if !out.status.success() {
            bail!("generate-master-key: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (http_port, grpc_port) = (free_port(), free_port());
        let config = dir.join("controller.toml");
        write_config(&config, &db, &key, http_port, grpc_port, extra_toml)?;
        let out =
            Command::new(workspace_bin("cofre-controller")).arg("-c").arg(&config).arg("migrate").output()?;
        if !out.status.success() {
            bail!(
                "migrate failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut c = Controller {
            db,
            dir: dir.to_path_buf(),
            http_port,
            grpc_port,
            config,
            key,
            extra_toml: extra_toml.to_string(),
            proc: None,
        };
        c.first_start()?;
        Ok(c)
    }

    /// A second replica on the same database and master key (its own ports, no migrate, the
    /// same extra configuration), as several controllers behind a load balancer run.
    pub fn replica(&self, dir: &Path) -> Result<Controller> {
        std::fs::create_dir_all(dir)?;
        let (http_port, grpc_port) = (free_port(), free_port());
        let config = dir.join("controller.toml");
        write_config(&config, &self.db, &self.key, http_port, grpc_port, &self.extra_toml)?;
        let mut c = Controller {
            db: self.db.clone(),
            dir: dir.to_path_buf(),
            http_port,
            grpc_port,
            config,
            key: self.key.clone(),
            extra_toml: self.extra_toml.clone(),
            proc: None,
        };
        c.first_start()?;
        Ok(c)
    }

    /// The first start: ports found free a moment ago may have been taken since (by another
    /// test's server or an outgoing connection), so a start that fails to bind is tried again
    /// on new ports. Later restarts keep their ports (agents and stores know them).
    fn first_start(&mut self) -> Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.restart() {
                Ok(()) => return Ok(()),
                Err(e) if attempts < 3 && format!("{e:#}").contains("in use") => {
                    eprintln!("controller: a port was taken meanwhile; new ports ({e:#})");
                    self.kill9()?;
                    (self.http_port, self.grpc_port) = (free_port(), free_port());
                    write_config(
                        &self.config,
                        &self.db,
                        &self.key,
                        self.http_port,
                        self.grpc_port,
                        &self.extra_toml,
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The configuration file `serve` runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The `serve` process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn grpc_url(&self) -> String {
        format!("https://localhost:{}", self.grpc_port)
    }

    /// Starts (again) `serve` and waits for readiness.
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = Command::new(workspace_bin("cofre-controller"));
        cmd.arg("-c").arg(&self.config).arg("serve").env_remove("COFRE_MASTER_KEY");
        self.proc = Some(Proc::spawn("controller", cmd, &self.dir)?);
        let url = format!("{}/readyz", self.api_url());
        let proc = self.proc.as_mut().context("controller process")?;
        wait_until("controller ready", Duration::from_secs(60), Duration::from_millis(100), || {
            if !proc.is_running() {
                return Err(format!("controller exited:\n{}", proc.log()));
            }
            let ok = super::block_on_isolated(async {
                reqwest::get(&url).await.map(|r| r.status().is_success()).unwrap_or(false)
            });
            if ok { Ok(()) } else { Err("not ready yet".to_string()) }
        })?;
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill9()?;
        }
        Ok(())
    }

    /// SIGTERM; SIGKILL only if it has not exited after the grace period.
    pub fn stop(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.proc.take() {
            Some(mut p) => Ok(Some(p.terminate()?)),
            None => Ok(None),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    /// Runs the `cofre` CLI against this controller with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Result<Output> {
        Ok(Command::new(workspace_bin("cofre"))
            .args(args)
            .env("COFRE_URL", self.api_url())
            .env("COFRE_TOKEN", token)
            .env_remove("COFRE_CA_FILE")
            .output()?)
    }

    /// An API client logged in as the first admin.
    pub async fn admin(&self) -> Result<cofre_client::Client> {
        let mut c = cofre_client::Client::new(&self.api_url())?;
        c.login("admin", ADMIN_PASSWORD).await?;
        Ok(c)
    }
}

/// The controller's configuration: the database's two roles, the master key, loopback ports.
fn write_config(
    path: &Path,
    db: &PgDatabase,
    key: &Path,
    http_port: u16,
    grpc_port: u16,
    extra_toml: &str,
) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "[database]\nurl = \"{}\"\nowner_url = \"{}\"\nmax_connections = 10\n\
             [keys]\nmaster_key_file = \"{}\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [grpc]\nlisten = \"127.0.0.1:{grpc_port}\"\npublic_url = \"https://localhost:{grpc_port}\"\n\
             [admin]\ninitial_password = \"{ADMIN_PASSWORD}\"\n\
             [log]\nfilter = \"info,cofre_controller=debug\"\n{extra_toml}",
            db.app_url,
            db.owner_url,
            key.display()
        ),
    )?;
    Ok(())
}

/// An agent's state directory and, while running, its process.
pub struct Agent {
    pub state_dir: PathBuf,
    log_dir: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    pub fn new(dir: &Path) -> Agent {
        Agent { state_dir: dir.join("state"), log_dir: dir.to_path_buf(), proc: None }
    }

    /// Runs `cofre-agent enroll` and returns its output (success or not).
    pub fn enroll(&self, controller_url: &str, token: &str) -> Result<Output> {
        self.enroll_with(&[controller_url], token)
    }

    /// Like [`Agent::enroll`], with several controller addresses (`--controller` once each, in
    /// the order given).
    pub fn enroll_with(&self, controller_urls: &[impl AsRef<str>], token: &str) -> Result<Output> {
        std::fs::create_dir_all(&self.log_dir)?;
        let mut cmd = Command::new(workspace_bin("cofre-agent"));
        cmd.arg("--state-dir").arg(&self.state_dir).arg("enroll");
        for url in controller_urls {
            cmd.args(["--controller", url.as_ref()]);
        }
        Ok(cmd.args(["--token", token]).output()?)
    }

    pub fn machine_id(&self) -> Result<uuid::Uuid> {
        let raw = std::fs::read(self.state_dir.join("identity.json"))?;
        let v: serde_json::Value = serde_json::from_slice(&raw)?;
        Ok(uuid::Uuid::parse_str(v["machine_id"].as_str().context("machine_id")?)?)
    }

    /// The plan the agent stored (it holds the repository secrets).
    pub fn stored_plan(&self) -> Result<pb::Plan> {
        let raw = std::fs::read(self.state_dir.join("plan.pb"))?;
        Ok(pb::Plan::decode(raw.as_slice())?)
    }

    pub fn identity_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.state_dir.join("identity.pem"))?)
    }

    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.state_dir.join("ca.pem"))?)
    }

    pub fn spooled(&self) -> usize {
        std::fs::read_dir(self.state_dir.join("spool"))
            .map(|rd| rd.filter_map(|e| e.ok()).count())
            .unwrap_or(0)
    }

    pub fn start(&mut self) -> Result<()> {
        self.start_with(&[])
    }

    /// `cofre-agent run` with more arguments (e.g. `--hook-dir DIR`).
    pub fn start_with(&mut self, args: &[&str]) -> Result<()> {
        self.start_with_env(args, &[])
    }

    /// [`Agent::start_with`] with more environment variables.
    pub fn start_with_env(&mut self, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = Command::new(workspace_bin("cofre-agent"));
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("run")
            .args(args)
            .env("COFRE_LOG", "info,cofre_agent=debug")
            .envs(env.iter().copied());
        self.proc = Some(Proc::spawn("agent", cmd, &self.log_dir)?);
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate()?;
        }
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill9()?;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits until the agent has stored a plan that contains `policy` (the controller may first
    /// have to initialise the repository).
    pub async fn wait_for_policy(&self, policy: uuid::Uuid, what: &str) -> Result<()> {
        let policy = policy.to_string();
        super::procs::wait_until_async(what, Duration::from_secs(90), Duration::from_millis(100), || {
            let plan = self.stored_plan();
            let policy = policy.clone();
            async move {
                match plan {
                    Ok(p) if p.policies.iter().any(|x| x.id == policy) => Ok(()),
                    Ok(_) => Err("plan without the policy yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await?;
        Ok(())
    }

    /// The running agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(super::procs::Proc::pid)
    }
}
