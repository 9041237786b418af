//! What each store holds, as it reported it, and the snapshot objects it holds that the
//! controller never recorded (a backup nobody reported, or a writer that is not Cofre).

use chrono::{DateTime, Utc};
use cofre_proto::store::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Most repositories one report may carry.
pub const MAX_REPOSITORIES_PER_REPORT: usize = 1000;
/// Most snapshot ids one report may carry (a store sends a larger repository in parts).
pub const MAX_SNAPSHOT_IDS_PER_REPORT: usize = 50_000;

fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && p.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn valid_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Stores one report. After a full sync (`full_sync_end`), repositories not reported since
/// `sync_started` are forgotten.
pub async fn ingest(
    pool: &PgPool,
    store: Uuid,
    report: &pb::InventoryReport,
    sync_started: DateTime<Utc>,
) -> Result<()> {
    if report.repositories.len() > MAX_REPOSITORIES_PER_REPORT {
        return Err(Error::invalid(format!("at most {MAX_REPOSITORIES_PER_REPORT} repositories per report")));
    }
    if report.repositories.iter().map(|r| r.snapshot_ids.len()).sum::<usize>() > MAX_SNAPSHOT_IDS_PER_REPORT {
        return Err(Error::invalid(format!("at most {MAX_SNAPSHOT_IDS_PER_REPORT} snapshot ids per report")));
    }
    let mut tx = pool.begin().await?;
    for r in &report.repositories {
        if !valid_path(&r.path) {
            return Err(Error::invalid(format!(
                "invalid repository path {:?}",
                r.path.chars().take(100).collect::<String>()
            )));
        }
        if let Some(bad) = r.snapshot_ids.iter().find(|s| !valid_id(s)) {
            return Err(Error::invalid(format!(
                "invalid snapshot id {:?}",
                bad.chars().take(80).collect::<String>()
            )));
        }
        let last = r
            .last_snapshot_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)));
        let ids: Vec<String> = r.snapshot_ids.iter().map(|s| s.to_ascii_lowercase()).collect();
        if r.continues {
            // A later part of a repository too big for one report: its ids only.
            sqlx::query(
                "update store_inventory set snapshot_ids = snapshot_ids || $3, reported_at = now()
                 where store_id = $1 and path = $2",
            )
            .bind(store)
            .bind(&r.path)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            continue;
        }
        sqlx::query(
            "insert into store_inventory (store_id, path, size_bytes, data_objects, index_objects, snapshot_objects,
                 key_objects, lock_objects, has_config, last_snapshot_at, snapshot_ids, reported_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
             on conflict (store_id, path) do update set size_bytes = excluded.size_bytes,
                 data_objects = excluded.data_objects, index_objects = excluded.index_objects,
                 snapshot_objects = excluded.snapshot_objects, key_objects = excluded.key_objects,
                 lock_objects = excluded.lock_objects, has_config = excluded.has_config,
                 last_snapshot_at = excluded.last_snapshot_at, snapshot_ids = excluded.snapshot_ids,
                 reported_at = now()",
        )
        .bind(store)
        .bind(&r.path)
        .bind(count(r.size_bytes))
        .bind(count(r.data_objects))
        .bind(count(r.index_objects))
        .bind(count(r.snapshot_objects))
        .bind(count(r.key_objects))
        .bind(count(r.lock_objects))
        .bind(r.has_config)
        .bind(last)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    }
    if report.full_sync_end {
        sqlx::query("delete from store_inventory where store_id = $1 and reported_at < $2")
            .bind(store)
            .bind(sync_started)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One repository on a store, joined with what the controller knows about it.
#[derive(Debug, sqlx::FromRow)]
pub struct RepositoryInventory {
    pub path: String,
    pub url: String,
    /// The restic repository the controller created at this URL (None: unknown to Cofre).
    pub restic_repository_id: Option<Uuid>,
    pub machine_id: Option<Uuid>,
    pub size_bytes: i64,
    pub data_objects: i64,
    pub index_objects: i64,
    pub snapshot_objects: i64,
    pub key_objects: i64,
    pub lock_objects: i64,
    pub has_config: bool,
    pub last_snapshot_at: Option<DateTime<Utc>>,
    /// Snapshot objects on the store that no job reported to the controller.
    pub unrecorded_snapshots: Vec<String>,
    pub reported_at: DateTime<Utc>,
}

/// The store's inventory; for a user limited to `group`, only that group's machines' repositories.
pub async fn list(pool: &PgPool, store: Uuid, group: Option<Uuid>) -> Result<Vec<RepositoryInventory>> {
    Ok(sqlx::query_as(
        "select i.path, v.url, v.restic_repository_id, v.machine_id,
                i.size_bytes, i.data_objects, i.index_objects, i.snapshot_objects, i.key_objects,
                i.lock_objects, i.has_config, i.last_snapshot_at, v.unrecorded_snapshots, i.reported_at
         from store_inventory i
         join store_inventory_repositories v on v.store_id = i.store_id and v.path = i.path
         left join machines m on m.id = v.machine_id
         where i.store_id = $1 and ($2::uuid is null or m.group_id = $2)
         order by i.path",
    )
    .bind(store)
    .bind(group)
    .fetch_all(pool)
    .await?)
}
