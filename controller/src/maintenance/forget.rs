//! What forget removes from a repository: decided here, from the snapshots the controller
//! recorded from job results — never from what the repository holds — with each policy's
//! retention (`cofre_policy::retention`, restic's rules) applied to that policy's snapshots.
//!
//! So a compromised agent cannot push real history out of retention by planting snapshot
//! files: planted files are not recorded, not counted and never removed (the job reports them).
//! A recorded snapshot dated in the future is neither counted (it would shift restic's "latest")
//! nor removed; it is reported. Snapshots of no known policy are kept.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cofre_policy::retention::{self, GroupBy, SnapshotMeta};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;

/// A snapshot dated more than this after "now" counts as dated in the future.
const FUTURE_TOLERANCE_SECS: i64 = 300;

/// The decision for one repository.
#[derive(Debug, Default)]
pub struct ForgetPlan {
    /// Recorded snapshots the retention removes.
    pub remove: Vec<String>,
    /// Recorded snapshots kept.
    pub keep: usize,
    /// Recorded snapshots dated in the future: kept, not counted.
    pub future: Vec<String>,
    /// Every recorded (not yet forgotten) snapshot id, to tell which ones in the repository
    /// nobody recorded.
    pub recorded: BTreeSet<String>,
}

#[derive(sqlx::FromRow)]
struct Recorded {
    snapshot_id: String,
    policy_id: Option<Uuid>,
    time: DateTime<Utc>,
    utc_offset_seconds: i32,
    hostname: String,
    paths: Vec<String>,
    tags: Vec<String>,
}

pub async fn plan(pool: &PgPool, restic_repository: Uuid, now: DateTime<Utc>) -> Result<ForgetPlan> {
    let rows: Vec<Recorded> = sqlx::query_as(
        "select snapshot_id, policy_id, time, utc_offset_seconds, hostname, paths, tags from snapshots
         where restic_repository_id = $1 and forgotten_at is null order by snapshot_id",
    )
    .bind(restic_repository)
    .fetch_all(pool)
    .await?;
    let mut out =
        ForgetPlan { recorded: rows.iter().map(|r| r.snapshot_id.clone()).collect(), ..Default::default() };
    let mut by_policy: BTreeMap<Uuid, Vec<SnapshotMeta>> = BTreeMap::new();
    for r in rows {
        if (r.time - now).num_seconds() > FUTURE_TOLERANCE_SECS {
            out.future.push(r.snapshot_id);
            continue;
        }
        let Some(policy) = r.policy_id else {
            out.keep += 1;
            continue;
        };
        let Ok(time) = jiff::Timestamp::from_microsecond(r.time.timestamp_micros()) else {
            out.keep += 1;
            continue;
        };
        by_policy.entry(policy).or_default().push(SnapshotMeta {
            id: r.snapshot_id,
            time,
            utc_offset_seconds: r.utc_offset_seconds,
            hostname: r.hostname,
            paths: r.paths,
            tags: r.tags,
        });
    }
    let ids: Vec<Uuid> = by_policy.keys().copied().collect();
    let specs: Vec<(Uuid, serde_json::Value)> =
        sqlx::query_as("select id, spec from policies where id = any($1)").bind(&ids).fetch_all(pool).await?;
    let specs: BTreeMap<Uuid, serde_json::Value> = specs.into_iter().collect();
    for (policy, snaps) in by_policy {
        let keep_policy = match specs.get(&policy) {
            Some(spec) => crate::policies::stored_spec(spec.clone())?
                .keep_policy()
                .map_err(|e| crate::error::Error::internal(anyhow::anyhow!("stored retention: {:?}", e)))?,
            None => None,
        };
        let Some(keep_policy) = keep_policy else {
            out.keep += snaps.len();
            continue;
        };
        let now =
            jiff::Timestamp::from_microsecond(now.timestamp_micros()).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        for d in retention::apply(&keep_policy, GroupBy::default(), &snaps, now) {
            if d.keep {
                out.keep += 1;
            } else {
                out.remove.push(d.id);
            }
        }
    }
    Ok(out)
}
