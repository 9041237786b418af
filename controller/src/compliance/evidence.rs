//! Evidence packs: one tar archive for a period and a group (or the fleet) that an auditor can
//! check with openssl alone (`docs/evidence-verify.sh`, explained in `docs/audit.md`).
//!
//! It holds the compliance history (changes, the status in force at the start, the daily rows),
//! every job and its result, the policy versions in force, the audit events of the period (for
//! a group: those about its machines and itself) with the checkpoints that cover them, the
//! audit public key, a certificate for it issued by Cofre's CA, and the CA's certificate.
//! `MANIFEST.sha256` lists the SHA-256 of every other file (the `sha256sum` format);
//! `MANIFEST.sha256.sig` is its raw Ed25519 signature by the audit key.

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::state::AppState;

/// The period and scope of a pack; days are in `compliance.time_zone`, both included.
#[derive(Debug, Clone)]
pub struct Request {
    pub group: Option<Uuid>,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub requested_by: String,
}

/// A built pack: its file name and the tar bytes.
#[derive(Debug)]
pub struct Pack {
    pub name: String,
    pub tar: Vec<u8>,
}

/// The shell script in docs that verifies a pack; shipped inside every pack too.
const VERIFY_SCRIPT: &str = include_str!("../../../docs/evidence-verify.sh");

/// Longest period one pack covers.
const MAX_DAYS: i64 = 3 * 366;

/// The parameters every query below reads (from `p`): bound once, typed once.
const PARAMS: &str =
    "with p as (select $1::uuid[] as ids, $2::timestamptz as from_at, $3::timestamptz as to_at,
    $4::uuid as grp, $5::date as from_day, $6::date as to_day) ";

/// The period and scope every query is run with.
struct Scope<'a> {
    ids: &'a [Uuid],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    group: Option<Uuid>,
    days: (NaiveDate, NaiveDate),
}

/// Runs one query returning a single jsonb value (the rows aggregated by Postgres).
async fn json_of(pool: &sqlx::PgPool, s: &Scope<'_>, sql: &str) -> Result<serde_json::Value> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!("{PARAMS}{sql}")))
        .bind(s.ids)
        .bind(s.from)
        .bind(s.to)
        .bind(s.group)
        .bind(s.days.0)
        .bind(s.days.1)
        .fetch_one(pool)
        .await?)
}

const CHANGES: &str = "select coalesce(jsonb_agg(to_jsonb(x) order by x.at, x.machine_id), '[]') from (
    select c.machine_id, c.at, c.group_id, c.status, c.findings from compliance_changes c, p
    where c.machine_id = any(p.ids) and c.at >= p.from_at and c.at < p.to_at) x";
const AT_START: &str = "select coalesce(jsonb_agg(to_jsonb(x) order by x.machine_id), '[]') from (
    select distinct on (c.machine_id) c.machine_id, c.at, c.group_id, c.status, c.findings
    from compliance_changes c, p
    where c.machine_id = any(p.ids) and c.at < p.from_at order by c.machine_id, c.at desc) x";
const DAILY: &str = "select coalesce(jsonb_agg(to_jsonb(x) order by x.day, x.machine_id), '[]') from (
    select d.* from compliance_daily d, p
    where d.machine_id = any(p.ids) and d.day between p.from_day and p.to_day) x";
const JOBS: &str = "select coalesce(jsonb_agg(to_jsonb(x) order by x.received_at, x.id), '[]') from (
    select j.id, j.machine_id, j.restic_repository_id, j.policy_id, j.kind, j.trigger, j.state, j.requested_by,
           j.created_at, j.started_at, j.finished_at, j.overran_window, j.attempts, j.options,
           r.event_id, r.outcome, r.snapshot_id, r.stats, r.warnings, r.error_message, r.retry_class,
           r.started_at as reported_started_at, r.finished_at as reported_finished_at, r.received_at, r.log
    from jobs j join job_results r on r.job_id = j.id, p
    where r.received_at >= p.from_at and r.received_at < p.to_at
      and (j.machine_id = any(p.ids)
           or j.restic_repository_id in (select restic_repository_id from machine_restic_repositories
                                         where machine_id = any(p.ids)))) x";
const POLICY_VERSIONS: &str =
    "select coalesce(jsonb_agg(to_jsonb(x) order by x.policy_id, x.revision), '[]') from (
    select pv.policy_id, pv.revision, pv.spec, pv.changed_by, pv.changed_at from policy_versions pv, p
    where pv.policy_id in (select policy_id from machine_policies where machine_id = any(p.ids)
                           union select policy_id from jobs where machine_id = any(p.ids)
                                 and policy_id is not null and created_at < p.to_at)
      and pv.changed_at < p.to_at
      and not exists (select 1 from policy_versions n where n.policy_id = pv.policy_id
                      and n.revision > pv.revision and n.changed_at <= p.from_at)) x";
const EVENTS: &str = "select coalesce(jsonb_agg(to_jsonb(x) order by x.seq), '[]') from (
    select e.seq, e.at, e.actor, e.action, e.target_type, e.target_id, e.details,
           encode(e.prev_hash, 'hex') as prev_hash, encode(e.hash, 'hex') as hash
    from audit_events e, p
    where e.at >= p.from_at and e.at < p.to_at
      and (p.grp is null
           or (e.target_type = 'machine' and e.target_id = any(select m::text from unnest(p.ids) m))
           or (e.target_type = 'group' and e.target_id = p.grp::text)
           or e.actor = any(select 'machine:' || m::text from unnest(p.ids) m))) x";
/// The checkpoints of the period, the last one before it and the first one after it.
const CHECKPOINTS: &str = "select coalesce(jsonb_agg(to_jsonb(x) order by x.seq), '[]') from (
    select c.seq, encode(c.head_hash, 'hex') as head_hash, c.at, encode(c.signature, 'hex') as signature, c.made_by
    from audit_checkpoints c, p
    where (c.at >= p.from_at and c.at < p.to_at)
       or c.seq = (select min(seq) from audit_checkpoints where at >= p.to_at)
       or c.seq = (select max(seq) from audit_checkpoints where at < p.from_at)) x";

/// Builds the pack.
pub async fn build(st: &AppState, req: &Request) -> Result<Pack> {
    if req.from > req.to || (req.to - req.from).num_days() > MAX_DAYS {
        return Err(Error::field("from", format!("must not be after to; at most {MAX_DAYS} days")));
    }
    let zone = jiff::tz::TimeZone::get(&st.settings.compliance.time_zone).map_err(Error::internal)?;
    let from = super::history::day_start(&zone, req.from)?;
    let to = super::history::day_start(&zone, req.to.succ_opt().unwrap_or(req.to))?;
    let group_name: Option<String> = match req.group {
        None => None,
        Some(g) => Some(
            sqlx::query_scalar("select name from groups where id = $1")
                .bind(g)
                .fetch_optional(&st.pool)
                .await?
                .ok_or_else(|| Error::NotFound("group".into()))?,
        ),
    };
    let machines: Vec<(Uuid, String, String)> = sqlx::query_as(
        "select id, hostname, status from machines where ($1::uuid is null or group_id = $1) order by hostname, id",
    )
    .bind(req.group)
    .fetch_all(&st.pool)
    .await?;
    let ids: Vec<Uuid> = machines.iter().map(|m| m.0).collect();
    let scope = Scope { ids: &ids, from, to, group: req.group, days: (req.from, req.to) };
    let q = |sql: &'static str| json_of(&st.pool, &scope, sql);
    let now = Utc::now();
    let cert = st
        .ca
        .issue_audit_signing_cert(st.audit.public_key(), std::time::Duration::from_secs(3650 * 86_400))
        .map_err(Error::internal)?;
    let scope_name = group_name.clone().unwrap_or_else(|| "fleet".into());
    let name = format!("cofre-evidence-{scope_name}-{}-{}", req.from, req.to);
    let about = serde_json::json!({
        "scope": scope_name,
        "group_id": req.group,
        "from_day": req.from,
        "to_day": req.to,
        "time_zone": st.settings.compliance.time_zone,
        "from": from,
        "to": to,
        "generated_at": now,
        "generated_by": req.requested_by,
        "controller_version": env!("CARGO_PKG_VERSION"),
        "machines": machines.iter().map(|(id, host, status)| serde_json::json!({"id": id, "hostname": host, "status": status})).collect::<Vec<_>>(),
        "audit_events": if req.group.is_some() { "about the group and its machines" } else { "all" },
    });
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).map_err(Error::internal);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("pack.json".into(), pretty(&about)?),
        ("compliance/status-at-start.json".into(), pretty(&q(AT_START).await?)?),
        ("compliance/changes.json".into(), pretty(&q(CHANGES).await?)?),
        ("compliance/daily.json".into(), pretty(&q(DAILY).await?)?),
        ("jobs/results.json".into(), pretty(&q(JOBS).await?)?),
        ("policies/versions.json".into(), pretty(&q(POLICY_VERSIONS).await?)?),
        ("audit/events.json".into(), pretty(&q(EVENTS).await?)?),
        ("audit/checkpoints.json".into(), pretty(&q(CHECKPOINTS).await?)?),
        ("audit/public-key.pem".into(), st.audit.public_key_pem().into_bytes()),
        ("audit/signing-certificate.pem".into(), cert.pem.into_bytes()),
        ("ca.pem".into(), st.ca.cert_pem.clone().into_bytes()),
        ("verify.sh".into(), VERIFY_SCRIPT.as_bytes().to_vec()),
    ];
    let mut manifest = String::new();
    for (path, bytes) in &files {
        manifest.push_str(&format!("{}  {path}\n", hex::encode(Sha256::digest(bytes))));
    }
    let signature = st.audit.sign(manifest.as_bytes());
    files.push(("MANIFEST.sha256".into(), manifest.into_bytes()));
    files.push(("MANIFEST.sha256.sig".into(), signature));
    let tar = write_tar(&name, &files, now)?;
    Ok(Pack { name: format!("{name}.tar"), tar })
}

fn write_tar(top: &str, files: &[(String, Vec<u8>)], at: DateTime<Utc>) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mtime = u64::try_from(at.timestamp()).unwrap_or(0);
    for (path, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("{top}/{path}"), bytes.as_slice()).map_err(Error::internal)?;
    }
    b.into_inner().map_err(Error::internal)
}
