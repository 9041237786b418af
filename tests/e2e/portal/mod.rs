//! The portal as people use it: headless Chromium against a real controller with a seeded
//! fleet (groups, a policy, enrolled agents, one waiting for approval, one whose name is a
//! script). `flows.rs`: a department head in Portuguese; `forms.rs`: an admin defines policies,
//! assignments, repositories and stores; `guards.rs`: roles, forged posts, the API refusing the
//! cookie, escaping, accessibility and untranslated strings; `screenshots.rs`: the README's
//! pictures.

mod flows;
mod forms;
pub(crate) mod guards;
mod screenshots;

use anyhow::{Context as _, Result};
use cofre_client::{Client, NewEnrollmentToken, NewRepository, PolicySpec};
use uuid::Uuid;

use crate::harness::browser::Browser;
use crate::harness::cofre::{ADMIN_PASSWORD, Agent, Controller};
use crate::harness::pg::PgCluster;

/// The machine whose name is a script (it must render as text everywhere).
pub const HOSTILE: &str = "<script>alert(1)</script>";

/// A controller with a small fleet, and an admin client.
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    /// Kept alive for the controller (dropping it stops PostgreSQL).
    _pg: PgCluster,
    pub ctrl: Controller,
    pub admin: Client,
    /// In group `saude`, with the `documentos` policy, never backed up.
    pub saude: Uuid,
    /// In group `saude`, named like a script.
    pub hostile: Uuid,
    /// In group `educacao`, waiting for approval.
    pub pending: Uuid,
    pub policy: Uuid,
}

impl Fleet {
    pub async fn start(db: &str) -> Result<Fleet> {
        let tmp = tempfile::tempdir()?;
        let pg = PgCluster::start()?;
        let ctrl = Controller::start(&pg, &tmp.path().join("controller"), db)?;
        let admin = ctrl.admin().await?;
        let saude_g = admin.create_group("saude").await?;
        let educacao_g = admin.create_group("educacao").await?;
        // A repository nobody can reach: the portal shows what the controller knows, no backup
        // has to run for that.
        let repo = admin
            .create_repository(&NewRepository {
                name: "central".into(),
                url: "https://127.0.0.1:9/".into(),
                per_machine: true,
                username: Some("cofre".into()),
                password: Some("unused-secret".into()),
                ..Default::default()
            })
            .await?;
        let policy = admin
            .create_policy(
                &PolicySpec::new("documentos", repo.id, vec!["/srv/documentos".into()]).every(3600),
            )
            .await?;
        admin.assign_policy_to_group(policy.id, saude_g.id).await?;
        let enroll = |group: Uuid, approval: bool, name: &'static str| {
            let (admin, grpc, dir) = (admin.clone(), ctrl.grpc_url(), tmp.path().join(name));
            async move {
                let token = admin
                    .create_enrollment_token(&NewEnrollmentToken {
                        group_id: Some(group),
                        requires_approval: approval,
                        ..Default::default()
                    })
                    .await?;
                let agent = Agent::new(&dir);
                let out = agent.enroll(&grpc, &token.token)?;
                anyhow::ensure!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
                agent.machine_id()
            }
        };
        let saude = enroll(saude_g.id, false, "agent-saude").await?;
        let hostile = enroll(saude_g.id, false, "agent-hostile").await?;
        let pending = enroll(educacao_g.id, true, "agent-pending").await?;
        // Hostnames come from agents: one says it is a script.
        pg.psql(db, &format!("update machines set hostname = '{HOSTILE}' where id = '{hostile}'"))?;
        pg.psql(db, &format!("update machines set hostname = 'ubs-centro-01' where id = '{saude}'"))?;
        pg.psql(db, &format!("update machines set hostname = 'escola-norte-07' where id = '{pending}'"))?;
        Ok(Fleet { tmp, _pg: pg, ctrl, admin, saude, hostile, pending, policy: policy.id })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ctrl.api_url())
    }

    /// A browser asking for `lang`, logged in as `user`.
    pub async fn browser(&self, lang: &str, user: &str, password: &str) -> Result<Browser> {
        let b = Browser::start(self.tmp.path(), lang).await?;
        b.goto(&self.url("/login")).await?;
        b.fill("#username", user).await?;
        b.fill("#password", password).await?;
        b.click("form[action='/login'] button[type=submit]").await?;
        anyhow::ensure!(b.path().await? == "/", "after login the overview opens, not {}", b.path().await?);
        Ok(b)
    }

    pub async fn admin_browser(&self, lang: &str) -> Result<Browser> {
        self.browser(lang, "admin", ADMIN_PASSWORD).await
    }
}

/// A plain HTTP client that never follows redirects (to see the portal's own answers).
pub fn http() -> Result<reqwest::Client> {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().context("http client")
}

/// The English texts of the portal that differ in Portuguese (what a pt-BR page must not show).
pub fn english_only_texts() -> Vec<String> {
    fn values(ftl: &str) -> std::collections::BTreeMap<String, String> {
        ftl.lines()
            .filter(|l| !l.starts_with([' ', '#', '\t', '*', '[']))
            .filter_map(|l| l.split_once(" = "))
            .filter(|(_, v)| !v.contains('{'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
    let en = values(include_str!("../../../web/locales/en-US/portal.ftl"));
    let pt = values(include_str!("../../../web/locales/pt-BR/portal.ftl"));
    en.into_iter().filter(|(k, v)| pt.get(k) != Some(v) && v.len() > 2).map(|(_, v)| v).collect()
}
