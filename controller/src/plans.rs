//! A machine's plan: the complete set of policies and repository secrets it needs, computed
//! from the database in one query (the `machine_policy_repositories` view). Its version is a
//! digest of its content, so "is the agent current?" is a comparison, and recomputing after any
//! event sends nothing when nothing changed.

use std::collections::BTreeMap;

use cofre_policy::spec::{HookSpec, OnFailure, PolicySpec};
use cofre_proto::agent::v1 as pb;
use prost::Message;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;
use crate::repositories::{ACCESS_COLUMNS, AccessRow, ResticAccess};
use crate::seal::MasterKey;

#[derive(sqlx::FromRow)]
struct PlanRow {
    machine_id: Uuid,
    policy_id: Uuid,
    revision: i64,
    spec: serde_json::Value,
    #[sqlx(flatten)]
    access: AccessRow,
}

/// The plan of one machine. `cofre_ca_pem` is trusted, besides the system roots, for
/// repositories on a cofre-store that have no CA of their own: the store may serve with the
/// certificate Cofre's CA issued it.
pub async fn compute(
    pool: &PgPool,
    master: &MasterKey,
    cofre_ca_pem: &str,
    machine: Uuid,
) -> Result<pb::Plan> {
    let mut plans = compute_many(pool, master, cofre_ca_pem, &[machine]).await?;
    Ok(plans.remove(&machine).unwrap_or_else(empty_plan))
}

fn empty_plan() -> pb::Plan {
    let mut p = pb::Plan::default();
    p.version = version_of(&p);
    p
}

/// The plans of several machines in one query (inactive machines get an empty plan). A
/// policy whose repository is not initialised yet is left out; the provisioner notifies the
/// machine when it is ready.
pub async fn compute_many(
    pool: &PgPool,
    master: &MasterKey,
    cofre_ca_pem: &str,
    machines: &[Uuid],
) -> Result<BTreeMap<Uuid, pb::Plan>> {
    let rows: Vec<PlanRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select mpr.machine_id, p.id as policy_id, p.revision, p.spec, {ACCESS_COLUMNS}
         from machine_policy_repositories mpr
         join machines m on m.id = mpr.machine_id and m.status = 'active'
         join policies p on p.id = mpr.policy_id
         join restic_repositories rr on rr.id = mpr.restic_repository_id and rr.restic_id is not null
         join repositories r on r.id = rr.repository_id
         where mpr.machine_id = any($1)
         order by mpr.machine_id, p.id"
    )))
    .bind(machines)
    .fetch_all(pool)
    .await?;
    let mut plans: BTreeMap<Uuid, pb::Plan> = machines.iter().map(|m| (*m, pb::Plan::default())).collect();
    for row in rows {
        let spec = crate::policies::stored_spec(row.spec)?;
        let access = row.access.open(master)?;
        let plan = plans.entry(row.machine_id).or_default();
        let rid = access.id.to_string();
        if !plan.repositories.iter().any(|r| r.id == rid) {
            plan.repositories.push(plan_repository(&access, cofre_ca_pem));
        }
        plan.policies.push(plan_policy(row.policy_id, row.revision, &spec, rid));
    }
    for plan in plans.values_mut() {
        plan.repositories.sort_by(|a, b| a.id.cmp(&b.id));
        plan.version = version_of(plan);
    }
    Ok(plans)
}

fn plan_repository(access: &ResticAccess, cofre_ca_pem: &str) -> pb::PlanRepository {
    pb::PlanRepository {
        id: access.id.to_string(),
        url: access.url.clone(),
        // A cofre-store knows the agent by its certificate: no shared credential is sent.
        username: if access.on_store { String::new() } else { access.username.clone().unwrap_or_default() },
        password: match &access.password {
            Some(p) if !access.on_store => p.expose_secret().to_string(),
            _ => String::new(),
        },
        repository_password: access.repository_password.expose_secret().to_string(),
        restic_id: access.restic_id.clone().unwrap_or_default(),
        ca_certificate_pem: match &access.ca_certificate_pem {
            Some(pem) => pem.clone(),
            None if access.on_store => cofre_ca_pem.to_string(),
            None => String::new(),
        },
        allow_insecure_http: access.allow_insecure_http,
        client_certificate: access.on_store,
    }
}

/// What an agent needs of a policy: sources, schedule, tags and hooks. Retention and
/// maintenance stay with the controller.
fn plan_policy(id: Uuid, revision: i64, spec: &PolicySpec, repository_id: String) -> pb::PlanPolicy {
    let schedule = spec.schedule.as_ref().map(|s| pb::Schedule {
        cron: s.cron.clone().unwrap_or_default(),
        timezone: s.timezone.clone().unwrap_or_default(),
        interval_seconds: s.interval_seconds.unwrap_or(0),
        jitter_seconds: s.jitter_seconds,
        window_start: s.window.as_ref().map(|w| w.start.clone()).unwrap_or_default(),
        window_end: s.window.as_ref().map(|w| w.end.clone()).unwrap_or_default(),
    });
    pb::PlanPolicy {
        id: id.to_string(),
        name: spec.name.clone(),
        repository_id,
        paths: spec.paths.clone(),
        excludes: spec.excludes.clone(),
        // Agents that predate `schedule` still run interval policies.
        interval_seconds: match &spec.schedule {
            Some(s) if s.cron.is_none() && s.window.is_none() => s.interval_seconds.unwrap_or(0),
            _ => 0,
        },
        schedule,
        iexcludes: spec.iexcludes.clone(),
        exclude_if_present: spec.exclude_if_present.clone(),
        exclude_larger_than_bytes: spec.exclude_larger_than_bytes.unwrap_or(0),
        one_file_system: spec.one_file_system,
        tags: spec.tags.clone(),
        before_hook: spec.hooks.before.as_ref().map(plan_hook),
        after_hook: spec.hooks.after.as_ref().map(plan_hook),
        revision,
    }
}

fn plan_hook(h: &HookSpec) -> pb::Hook {
    pb::Hook {
        name: h.name.clone(),
        timeout_seconds: h.timeout_seconds,
        on_failure: match h.on_failure {
            OnFailure::Fail => pb::HookOnFailure::Fail,
            OnFailure::SkipBackup => pb::HookOnFailure::SkipBackup,
            OnFailure::Continue => pb::HookOnFailure::Continue,
        } as i32,
    }
}

/// A digest of the plan's content (with version 0), never 0.
pub fn version_of(plan: &pb::Plan) -> u64 {
    let mut p = plan.clone();
    p.version = 0;
    let d = Sha256::digest(p.encode_to_vec());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 1).max(1)
}

/// A machine whose agent does not hold its current plan.
#[derive(Debug, Clone)]
pub struct StalePlan {
    pub machine_id: Uuid,
    pub hostname: String,
    pub group_id: Option<Uuid>,
    /// The plan version the agent last reported (0: none yet).
    pub held_plan_version: i64,
    pub current_plan_version: i64,
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Active machines (of `group`, when given) whose agent last reported another plan version
/// than the one the controller computes now.
pub async fn stale(
    pool: &PgPool,
    master: &MasterKey,
    cofre_ca_pem: &str,
    group: Option<Uuid>,
) -> Result<Vec<StalePlan>> {
    let machines: Vec<(Uuid, String, Option<Uuid>, i64, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as(
            "select id, hostname, group_id, plan_version, last_seen_at from machines
         where status = 'active' and ($1::uuid is null or group_id = $1) order by id",
        )
        .bind(group)
        .fetch_all(pool)
        .await?;
    let ids: Vec<Uuid> = machines.iter().map(|m| m.0).collect();
    let plans = compute_many(pool, master, cofre_ca_pem, &ids).await?;
    Ok(machines
        .into_iter()
        .filter_map(|(machine_id, hostname, group_id, held, last_seen_at)| {
            let current = i64::try_from(plans.get(&machine_id)?.version).ok()?;
            (current != held).then_some(StalePlan {
                machine_id,
                hostname,
                group_id,
                held_plan_version: held,
                current_plan_version: current,
                last_seen_at,
            })
        })
        .collect())
}
