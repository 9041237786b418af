//! A protected machine, set up as an administrator would: an agent enrolled (with one
//! controller address or several), its repository defined (on a rustic-server, which is told
//! to serve the machine's repository, or as any other definition), one policy backing up a
//! source directory assigned to the machine, and the agent running with that policy in the
//! plan it stored.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cofre_client::{Client, Hooks, NewEnrollmentToken, NewRepository, PolicySpec};
use cofre_proto::agent::v1 as pb;
use uuid::Uuid;

use super::cofre::Agent;
use super::rest_server::RestServer;
use super::restic::Restic;

/// Where the machine's repository is.
pub enum Storage<'a> {
    /// The per-machine `rest-tls` repository on this rustic-server ([`rest_repository`]); the
    /// server is told to serve the machine's repository once the machine is known.
    Rest(&'a mut RestServer),
    /// This definition, created as given (e.g. on a cofre-store, which needs no grant).
    Defined(Box<NewRepository>),
}

impl<'a> From<&'a mut RestServer> for Storage<'a> {
    fn from(rest: &'a mut RestServer) -> Self {
        Storage::Rest(rest)
    }
}

impl From<NewRepository> for Storage<'_> {
    fn from(definition: NewRepository) -> Self {
        Storage::Defined(Box::new(definition))
    }
}

/// An enrolled, running agent whose stored plan holds its policy.
pub struct Protected {
    pub agent: Agent,
    pub machine: Uuid,
    pub policy: Uuid,
}

/// The set-up of one protected machine, done by [`Protect::run`].
#[must_use = "nothing is set up until `run`"]
pub struct Protect<'a> {
    admin: &'a Client,
    storage: Storage<'a>,
    controllers: Vec<String>,
    agent_dir: PathBuf,
    source: PathBuf,
    policy_name: String,
    every: u64,
    hooks: Hooks,
    hook_dir: Option<PathBuf>,
}

impl<'a> Protect<'a> {
    /// An agent in `agent_dir` (its state in `agent_dir/state`) enrolled with `controller`
    /// through a one-use token, backing `source` up to `storage` under a policy named
    /// `documents` that runs on demand only.
    pub fn new(
        admin: &'a Client,
        storage: impl Into<Storage<'a>>,
        controller: &str,
        agent_dir: &Path,
        source: &Path,
    ) -> Protect<'a> {
        Protect {
            admin,
            storage: storage.into(),
            controllers: vec![controller.to_string()],
            agent_dir: agent_dir.to_path_buf(),
            source: source.to_path_buf(),
            policy_name: "documents".into(),
            every: 0,
            hooks: Hooks::default(),
            hook_dir: None,
        }
    }

    /// One more controller address the agent is enrolled with (`--controller` once per
    /// address, in the order given).
    pub fn controller(mut self, url: &str) -> Self {
        self.controllers.push(url.to_string());
        self
    }

    /// The policy's name.
    pub fn named(mut self, name: &str) -> Self {
        self.policy_name = name.to_string();
        self
    }

    /// A backup every `seconds` (0: on demand only). A new policy is due at once.
    pub fn every(mut self, seconds: u64) -> Self {
        self.every = seconds;
        self
    }

    /// The policy's hooks; the agent runs with `--hook-dir hook_dir`, where it finds them.
    pub fn hooks(mut self, hooks: Hooks, hook_dir: &Path) -> Self {
        self.hooks = hooks;
        self.hook_dir = Some(hook_dir.to_path_buf());
        self
    }

    /// Enrolls the agent, defines its repository and the policy, assigns it to the machine,
    /// starts the agent and waits until its stored plan holds the policy.
    pub async fn run(self) -> Result<Protected> {
        let token = self
            .admin
            .create_enrollment_token(&NewEnrollmentToken { uses: Some(1), ..Default::default() })
            .await?;
        let mut agent = Agent::new(&self.agent_dir);
        let out = agent.enroll_with(&self.controllers, &token.token)?;
        ensure!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
        let machine = agent.machine_id()?;
        let definition = match self.storage {
            Storage::Rest(rest) => {
                // rustic-server serves only repositories named in its ACL: grant this machine's.
                rest.allow_repo(&machine.to_string())?;
                rest_repository(rest)
            }
            Storage::Defined(definition) => *definition,
        };
        let repo = self.admin.create_repository(&definition).await?;
        let source = self.source.to_str().context("utf-8 source path")?;
        let mut spec = PolicySpec::new(self.policy_name, repo.id, vec![source.into()]).every(self.every);
        spec.hooks = self.hooks;
        let policy = self.admin.create_policy(&spec).await?;
        self.admin.assign_policy_to_machine(policy.id, machine).await?;
        match &self.hook_dir {
            Some(dir) => agent.start_with(&["--hook-dir", dir.to_str().context("utf-8 hook dir")?])?,
            None => agent.start()?,
        }
        agent.wait_for_policy(policy.id, "the agent stores a plan with the policy").await?;
        Ok(Protected { agent, machine, policy: policy.id })
    }
}

/// The per-machine repository definition `rest-tls` on `rest`: its URL, its user and
/// password, and the private CA its TLS certificate comes from.
pub fn rest_repository(rest: &RestServer) -> NewRepository {
    NewRepository {
        name: "rest-tls".into(),
        url: rest.url(),
        per_machine: true,
        username: Some(rest.username().into()),
        password: Some(rest.password().into()),
        ca_certificate_pem: Some(rest.ca_pem().into()),
        ..Default::default()
    }
}

/// The path on its REST server of the first repository in `plan` (for a protected machine:
/// its own).
pub fn plan_repository_path(plan: &pb::Plan) -> Result<String> {
    let repo = plan.repositories.first().context("plan has a repository")?;
    Ok(url::Url::parse(&repo.url)?.path().trim_start_matches('/').to_string())
}

/// restic on the first repository in `plan`, on `rest`, with the password the plan holds.
pub fn plan_restic(rest: &RestServer, plan: &pb::Plan, cache: &Path) -> Result<Restic> {
    let path = plan_repository_path(plan)?;
    let repo = plan.repositories.first().context("plan has a repository")?;
    Ok(Restic::for_rest(rest, &path, &repo.repository_password, cache))
}
