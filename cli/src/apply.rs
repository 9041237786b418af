//! `cofre apply -f fleet.toml`: groups, repositories, policies and assignments as code, kept in
//! git. Idempotent (a second run changes nothing), `--dry-run` prints the plan and changes
//! nothing, nothing is removed without `--prune`, and secrets in the file are references
//! (`password_env`, `password_file`), never inline; the plan never shows them.
//!
//! ```toml
//! [[groups]]
//! name = "obras"
//!
//! [[repositories]]
//! name = "store"
//! url = "https://backup.prefeitura.example:8443/"
//! password_env = "COFRE_STORE_PASSWORD"     # or password_file = "/etc/cofre/store.pass"
//!
//! [[policies]]
//! name = "servidores"
//! repository = "store"                        # by name
//! paths = ["/etc", "/srv"]
//! schedule = { cron = "0 19 * * *", timezone = "America/Sao_Paulo" }
//! assign_groups = ["obras"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cofre_client::{Client, NewRepository, PolicySpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fleet {
    #[serde(default)]
    groups: Vec<GroupDef>,
    #[serde(default)]
    repositories: Vec<RepositoryDef>,
    #[serde(default)]
    policies: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDef {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryDef {
    name: String,
    url: String,
    #[serde(default = "yes")]
    per_machine: bool,
    path_template: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_insecure_http: bool,
    maintenance_url: Option<String>,
    maintenance_username: Option<String>,
    maintenance_password_env: Option<String>,
    maintenance_password_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// A policy as the file states it: its spec (repository by name) and where it applies.
#[derive(Debug)]
struct PolicyDef {
    spec: toml::Table,
    repository: String,
    groups: Vec<String>,
    machines: Vec<Uuid>,
}

/// One step of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// create, update, assign, unassign, unchanged, or differs (what the API cannot change).
    pub action: &'static str,
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<cofre_client::Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn step(action: &'static str, kind: &'static str, name: impl Into<String>) -> Step {
    Step { action, kind, name: name.into(), changes: Vec::new(), note: None }
}

fn secret(env: Option<&String>, file: Option<&PathBuf>, what: &str) -> anyhow::Result<Option<String>> {
    match (env, file) {
        (Some(_), Some(_)) => bail!("{what}: give password_env or password_file, not both"),
        (Some(var), None) => Ok(Some(
            std::env::var(var).with_context(|| format!("{what}: environment variable {var} is not set"))?,
        )),
        (None, Some(path)) => Ok(Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        (None, None) => Ok(None),
    }
}

fn parse(text: &str) -> anyhow::Result<(Fleet, Vec<PolicyDef>)> {
    let raw: toml::Table = toml::from_str(text).context("not a valid TOML fleet file")?;
    // Secrets are references: an inline password anywhere is refused before anything else.
    for (section, items) in &raw {
        for item in items.as_array().into_iter().flatten() {
            if let Some(t) = item.as_table()
                && let Some(k) =
                    t.keys().find(|k| k.as_str() == "password" || k.as_str() == "maintenance_password")
            {
                bail!(
                    "[[{section}]] {:?}: {k} is inline; secrets are references: use {k}_env or {k}_file",
                    t.get("name").and_then(toml::Value::as_str).unwrap_or("?")
                );
            }
        }
    }
    let fleet: Fleet = toml::from_str(text).context("fleet file")?;
    let mut policies = Vec::new();
    for p in &fleet.policies {
        let mut spec = p.clone();
        let name = spec.get("name").and_then(toml::Value::as_str).unwrap_or("?").to_string();
        let Some(toml::Value::String(repository)) = spec.remove("repository") else {
            bail!("policy {name:?}: repository = \"<repository name>\" is required")
        };
        let list = |v: Option<toml::Value>| -> anyhow::Result<Vec<String>> {
            match v {
                None => Ok(Vec::new()),
                Some(v) => Ok(v
                    .try_into()
                    .with_context(|| format!("policy {name:?}: a list of strings expected"))?),
            }
        };
        let groups = list(spec.remove("assign_groups"))?;
        let machines = list(spec.remove("assign_machines"))?
            .iter()
            .map(|m| {
                Uuid::try_parse(m).with_context(|| format!("policy {name:?}: {m:?} is not a machine id"))
            })
            .collect::<anyhow::Result<_>>()?;
        if spec.contains_key("repository_id") {
            bail!("policy {name:?}: name the repository (repository = \"…\"), not its id");
        }
        policies.push(PolicyDef { spec, repository, groups, machines });
    }
    Ok((fleet, policies))
}

/// Reads `file`, plans against the controller, and applies unless `dry_run`.
pub async fn run(client: &Client, file: &Path, dry_run: bool, prune: bool) -> anyhow::Result<Vec<Step>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (fleet, policy_defs) = parse(&text)?;
    let mut plan = Vec::new();

    // Groups.
    let mut groups: BTreeMap<String, Uuid> =
        client.list_groups().await?.into_iter().map(|g| (g.name, g.id)).collect();
    for g in &fleet.groups {
        if groups.contains_key(&g.name) {
            plan.push(step("unchanged", "group", &g.name));
        } else {
            plan.push(step("create", "group", &g.name));
            let id = if dry_run { Uuid::nil() } else { client.create_group(&g.name).await?.id };
            groups.insert(g.name.clone(), id);
        }
    }

    // Repositories: created when missing; the API cannot change one yet, so a difference is
    // reported, not applied.
    let mut repos: BTreeMap<String, cofre_client::Repository> =
        client.list_repositories().await?.into_iter().map(|r| (r.name.clone(), r)).collect();
    let mut repo_ids: BTreeMap<String, Uuid> = repos.iter().map(|(n, r)| (n.clone(), r.id)).collect();
    for r in &fleet.repositories {
        let what = format!("repository {:?}", r.name);
        let password = secret(r.password_env.as_ref(), r.password_file.as_ref(), &what)?;
        let maintenance_password =
            secret(r.maintenance_password_env.as_ref(), r.maintenance_password_file.as_ref(), &what)?;
        match repos.remove(&r.name) {
            Some(existing) => {
                let mut s = step("unchanged", "repository", &r.name);
                let template = r.path_template.clone().unwrap_or_else(|| "{machine}".into());
                let mut differs = Vec::new();
                if existing.url.trim_end_matches('/') != r.url.trim_end_matches('/') {
                    differs.push("url");
                }
                if existing.per_machine != r.per_machine {
                    differs.push("per_machine");
                }
                if existing.path_template != template {
                    differs.push("path_template");
                }
                if existing.username != r.username {
                    differs.push("username");
                }
                if !differs.is_empty() {
                    s.action = "differs";
                    s.note = Some(format!(
                        "{} differ(s) from the controller's; a repository cannot be changed through the API yet",
                        differs.join(", ")
                    ));
                }
                plan.push(s);
            }
            None => {
                plan.push(step("create", "repository", &r.name));
                let ca_certificate_pem = match &r.ca_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("{what}: cannot read {}", p.display()))?,
                    ),
                    None => None,
                };
                let id = if dry_run {
                    Uuid::nil()
                } else {
                    let req = NewRepository {
                        name: r.name.clone(),
                        url: r.url.clone(),
                        per_machine: r.per_machine,
                        path_template: r.path_template.clone(),
                        username: r.username.clone(),
                        password,
                        ca_certificate_pem,
                        allow_insecure_http: r.allow_insecure_http,
                        maintenance_url: r.maintenance_url.clone(),
                        maintenance_username: r.maintenance_username.clone(),
                        maintenance_password,
                    };
                    client.create_repository(&req).await?.id
                };
                repo_ids.insert(r.name.clone(), id);
            }
        }
    }

    // Policies and their assignments.
    let existing: BTreeMap<String, cofre_client::Policy> =
        client.list_policies().await?.into_iter().map(|p| (p.spec.name.clone(), p)).collect();
    let mut wanted_policies = BTreeSet::new();
    for def in &policy_defs {
        let repository_id = *repo_ids.get(&def.repository).with_context(|| {
            format!("policy: repository {:?} is neither in the file nor on the controller", def.repository)
        })?;
        let mut json = serde_json::to_value(&def.spec)?;
        json["repository_id"] = serde_json::json!(repository_id);
        let spec = PolicySpec::from_json(json).map_err(|errs| {
            let all: Vec<String> = errs.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
            anyhow::anyhow!(
                "policy {:?}: {}",
                def.spec.get("name").and_then(toml::Value::as_str).unwrap_or("?"),
                all.join("; ")
            )
        })?;
        wanted_policies.insert(spec.name.clone());
        let policy_id = match existing.get(&spec.name) {
            Some(current) => {
                let (old, new) = (serde_json::to_value(&current.spec)?, serde_json::to_value(&spec)?);
                if old == new {
                    plan.push(step("unchanged", "policy", &spec.name));
                } else {
                    let mut s = step("update", "policy", &spec.name);
                    s.changes = cofre_client::spec_diff(&old, &new);
                    plan.push(s);
                    if !dry_run {
                        client.update_policy(current.id, &spec, Some(current.revision)).await?;
                    }
                }
                Some(current.id)
            }
            None => {
                plan.push(step("create", "policy", &spec.name));
                if dry_run { None } else { Some(client.create_policy(&spec).await?.id) }
            }
        };
        // Assignments: add what is missing; remove the rest only with --prune.
        let current = match policy_id {
            Some(id) => client.list_assignments(id).await?,
            None => Vec::new(),
        };
        let mut want_groups = BTreeSet::new();
        for g in &def.groups {
            let id = *groups
                .get(g)
                .with_context(|| format!("policy {:?}: group {g:?} does not exist", spec.name))?;
            want_groups.insert(id);
            if !current.iter().any(|a| a.group_id == Some(id)) {
                plan.push(step("assign", "policy", format!("{} → group {g}", spec.name)));
                if let (Some(p), false) = (policy_id, dry_run) {
                    client.assign_policy_to_group(p, id).await?;
                }
            }
        }
        for m in &def.machines {
            if !current.iter().any(|a| a.machine_id == Some(*m)) {
                plan.push(step("assign", "policy", format!("{} → machine {m}", spec.name)));
                if let (Some(p), false) = (policy_id, dry_run) {
                    client.assign_policy_to_machine(p, *m).await?;
                }
            }
        }
        for a in &current {
            let wanted = a.group_id.is_some_and(|g| want_groups.contains(&g))
                || a.machine_id.is_some_and(|m| def.machines.contains(&m));
            if wanted {
                continue;
            }
            let target = a.group_id.map_or_else(
                || format!("machine {}", a.machine_id.unwrap_or_default()),
                |g| format!("group {g}"),
            );
            let mut s =
                step(if prune { "unassign" } else { "extra" }, "policy", format!("{} → {target}", spec.name));
            if prune {
                if !dry_run {
                    client.unassign_policy(a.policy_id, a.id).await?;
                }
            } else {
                s.note = Some("not in the file; kept (use --prune to remove)".into());
            }
            plan.push(s);
        }
    }
    for name in existing.keys().filter(|n| !wanted_policies.contains(*n)) {
        let mut s = step("extra", "policy", name);
        s.note = Some("not in the file; kept (policies are never deleted by apply)".into());
        plan.push(s);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_and_repository_ids_are_refused() {
        let inline = "[[repositories]]\nname = \"s\"\nurl = \"https://x/\"\npassword = \"hunter2\"\n";
        let err = parse(inline).unwrap_err().to_string();
        assert!(err.contains("password is inline") && !err.contains("hunter2"), "{err}");
        let by_id = "[[policies]]\nname = \"p\"\nrepository = \"s\"\nrepository_id = \"00000000-0000-0000-0000-000000000000\"\npaths = [\"/x\"]\n";
        assert!(parse(by_id).unwrap_err().to_string().contains("name the repository"));
        let ok = "[[groups]]\nname = \"obras\"\n[[policies]]\nname = \"p\"\nrepository = \"s\"\npaths = [\"/srv\"]\nassign_groups = [\"obras\"]\n";
        let (fleet, policies) = parse(ok).unwrap();
        assert_eq!((fleet.groups.len(), policies[0].groups.clone()), (1, vec!["obras".to_string()]));
    }
}
