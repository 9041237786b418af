//! Database tests of stores: enrollment, the access list a store receives, quotas, revocation
//! and the inventory with unrecorded snapshots.

use cofre_proto::store::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

use super::{NewStore, access, inventory};
use crate::audit::Actor;
use crate::error::Error;
use crate::repositories::{self, NewRepository};
use crate::tests::{LIFE, csr, machine_in_new_group, state};

const STORE_URL: &str = "https://store.test:8443/";

/// A per-machine repository under `base` with a restic repository (initialised) for `machine`.
async fn repo_for(st: &crate::state::AppState, name: &str, base: &str, machine: Uuid) -> Uuid {
    let r = repositories::create(
        &st.pool,
        &st.master,
        &Actor::System,
        NewRepository {
            name: name.into(),
            url: base.into(),
            per_machine: true,
            path_template: None,
            username: Some("shared".into()),
            password: Some("shared-secret".to_string().into()),
            ca_certificate_pem: None,
            allow_insecure_http: false,
            maintenance_url: None,
            maintenance_username: None,
            maintenance_password: None,
        },
    )
    .await
    .unwrap();
    let mut tx = st.pool.begin().await.unwrap();
    let url = format!("{}/{machine}", base.trim_end_matches('/'));
    repositories::insert_restic_repository(&mut tx, &st.master, r.id, Some(machine), &url).await.unwrap();
    tx.commit().await.unwrap();
    sqlx::query("update restic_repositories set restic_id = $2 where machine_id = $1 and repository_id = $3")
        .bind(machine)
        .bind("ab".repeat(32))
        .bind(r.id)
        .execute(&st.pool)
        .await
        .unwrap();
    crate::tests::assigned_policy(
        st,
        cofre_policy::spec::PolicySpec::new(format!("{name}-policy"), r.id, vec!["/etc".into()]),
        machine,
    )
    .await;
    r.id
}

fn grant(list: &pb::AccessList, machine: Uuid) -> Option<&pb::MachineGrant> {
    list.machines.iter().find(|m| m.machine_id == machine.to_string())
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn a_store_enrolls_once_and_is_refused_after_revocation(pool: PgPool) {
    let st = state(pool).await;
    let created = super::create(
        &st.pool,
        &Actor::System,
        &st.ca,
        NewStore { name: "store-1".into(), url: "https://store.test:8443".into() },
    )
    .await
    .unwrap();
    assert_eq!(created.store.url, STORE_URL, "the URL is normalised with a trailing slash");
    assert_eq!(created.store.status, "pending");
    let e = super::enroll(&st.pool, &st.ca, LIFE, &created.token, &csr(), "0.1.0").await.unwrap();
    assert_eq!(e.store_id, created.store.id);
    let again = super::enroll(&st.pool, &st.ca, LIFE, &created.token, &csr(), "0.1.0").await.unwrap_err();
    assert!(again.to_string().contains("used"), "{again}");

    let (_, cert) = x509_parser::pem::parse_x509_pem(e.certificate_pem.as_bytes()).unwrap();
    let cert = cert.parse_x509().unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
    assert_eq!(cn, format!("cofre-store:{}", e.store_id), "the store's certificate names the store");
    let serial = crate::pki::serial_hex(cert.raw_serial());
    assert_eq!(super::session_check(&st.pool, e.store_id, &serial).await.unwrap(), STORE_URL);
    // Another store's id with this certificate is refused.
    assert!(super::session_check(&st.pool, Uuid::now_v7(), &serial).await.is_err());

    super::revoke(&st.pool, &Actor::System, e.store_id).await.unwrap();
    let refused = super::session_check(&st.pool, e.store_id, &serial).await.unwrap_err();
    assert!(matches!(refused, Error::Forbidden(_)), "{refused:?}");
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn the_access_list_names_each_active_machine_with_its_own_repositories_and_quotas(pool: PgPool) {
    let st = state(pool).await;
    super::create(&st.pool, &Actor::System, &st.ca, NewStore { name: "s".into(), url: STORE_URL.into() })
        .await
        .unwrap();
    let (g1, m1) = machine_in_new_group(&st, "finance").await;
    let (_g2, m2) = machine_in_new_group(&st, "health").await;
    repo_for(&st, "on-store-1", "https://store.test:8443", m1).await;
    repo_for(&st, "on-store-2", "https://store.test:8443/", m2).await;
    repo_for(&st, "elsewhere", "https://other.test:8000", m1).await;

    let list = access::compute(&st.pool, STORE_URL).await.unwrap();
    assert_eq!(list.machines.len(), 2, "{list:?}");
    assert_eq!(grant(&list, m1).unwrap().repositories, vec![m1.to_string()], "only its own repository here");
    assert_eq!(grant(&list, m2).unwrap().repositories, vec![m2.to_string()]);
    assert_eq!(grant(&list, m1).unwrap().group_id, g1.to_string());
    assert!(grant(&list, m1).unwrap().quota_bytes.is_none());

    // Quotas reach the list and change its version.
    super::set_machine_quota(&st.pool, &Actor::System, m1, Some(5_000_000)).await.unwrap();
    super::set_group_quota(&st.pool, &Actor::System, g1, Some(9_000_000)).await.unwrap();
    let with_quotas = access::compute(&st.pool, STORE_URL).await.unwrap();
    assert_ne!(with_quotas.version, list.version);
    assert_eq!(grant(&with_quotas, m1).unwrap().quota_bytes, Some(5_000_000));
    let g = with_quotas.groups.iter().find(|g| g.group_id == g1.to_string()).unwrap();
    assert_eq!(g.quota_bytes, Some(9_000_000));

    // A renewed certificate in use retires its predecessor: the store is told its serial (the
    // old certificate still verifies) until it expires; expired ones leave the list.
    let serials: Vec<String> = sqlx::query_scalar("select serial from certificates where machine_id = $1")
        .bind(m1)
        .fetch_all(&st.pool)
        .await
        .unwrap();
    let old = serials.first().expect("the enrollment certificate").clone();
    sqlx::query("insert into certificates (serial, machine_id, not_before, not_after, issued_at) values ('0abc', $1, now(), now() + interval '30 days', now() + interval '1 second')")
        .bind(m1)
        .execute(&st.pool)
        .await
        .unwrap();
    assert_eq!(crate::machines::retire_predecessors(&st.pool, m1, "0abc").await.unwrap(), vec![old.clone()]);
    let after = access::compute(&st.pool, STORE_URL).await.unwrap();
    assert_eq!(grant(&after, m1).unwrap().revoked_serials, vec![old.clone()]);
    assert!(grant(&after, m2).unwrap().revoked_serials.is_empty());
    assert_ne!(after.version, with_quotas.version, "the store gets the new list");
    sqlx::query("update certificates set not_after = now() - interval '1 second' where serial = $1")
        .bind(&old)
        .execute(&st.pool)
        .await
        .unwrap();
    let expired = access::compute(&st.pool, STORE_URL).await.unwrap();
    assert!(grant(&expired, m1).unwrap().revoked_serials.is_empty());
    assert!(super::set_machine_quota(&st.pool, &Actor::System, m1, Some(0)).await.is_err());

    // The plan tells the agent to use its certificate for the store, and sends no shared
    // credential; the repository elsewhere keeps its username and password.
    let plan = crate::plans::compute(&st.pool, &st.master, &st.ca.cert_pem, m1).await.unwrap();
    let on_store = plan.repositories.iter().find(|r| r.url.starts_with(STORE_URL)).unwrap();
    assert!(on_store.client_certificate);
    assert!(on_store.username.is_empty() && on_store.password.is_empty());
    assert_eq!(on_store.ca_certificate_pem, st.ca.cert_pem, "the Cofre CA is trusted for the store");
    let elsewhere = plan.repositories.iter().find(|r| r.url.starts_with("https://other.test")).unwrap();
    assert!(!elsewhere.client_certificate);
    assert_eq!(elsewhere.username, "shared");

    // A revoked machine disappears from the list.
    crate::machines::revoke(&st.pool, &Actor::System, m2).await.unwrap();
    let after = access::compute(&st.pool, STORE_URL).await.unwrap();
    assert!(grant(&after, m2).is_none(), "{after:?}");
    assert!(grant(&after, m1).is_some());
}

#[sqlx::test(migrator = "crate::db::MIGRATOR")]
async fn inventory_shows_snapshots_the_controller_never_recorded(pool: PgPool) {
    let st = state(pool).await;
    let created =
        super::create(&st.pool, &Actor::System, &st.ca, NewStore { name: "s".into(), url: STORE_URL.into() })
            .await
            .unwrap();
    let store = created.store.id;
    let (_, m1) = machine_in_new_group(&st, "finance").await;
    repo_for(&st, "on-store", STORE_URL, m1).await;
    let (recorded, unknown) = ("1".repeat(64), "2".repeat(64));
    let rr: Uuid = sqlx::query_scalar("select id from restic_repositories where machine_id = $1")
        .bind(m1)
        .fetch_one(&st.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into snapshots (restic_repository_id, snapshot_id, machine_id, time, hostname, paths)
         values ($1, $2, $3, now(), 'pc-01', '{/etc}')",
    )
    .bind(rr)
    .bind(&recorded)
    .bind(m1)
    .execute(&st.pool)
    .await
    .unwrap();

    let repo = |path: &str, ids: Vec<String>| pb::RepositoryInventory {
        path: path.into(),
        size_bytes: 1234,
        data_objects: 3,
        snapshot_objects: ids.len() as u64,
        snapshot_ids: ids,
        has_config: true,
        ..Default::default()
    };
    let started = chrono::Utc::now();
    let first = pb::InventoryReport {
        repositories: vec![
            repo(&m1.to_string(), vec![recorded.clone(), unknown.clone()]),
            repo("stray", vec![]),
        ],
        full_sync_end: true,
    };
    inventory::ingest(&st.pool, store, &first, started).await.unwrap();
    let items = inventory::list(&st.pool, store, None).await.unwrap();
    assert_eq!(items.len(), 2);
    let mine = items.iter().find(|i| i.path == m1.to_string()).unwrap();
    assert_eq!(mine.machine_id, Some(m1));
    assert_eq!(mine.restic_repository_id, Some(rr));
    assert_eq!(mine.unrecorded_snapshots, vec![unknown.clone()], "only the snapshot no job reported");
    let stray = items.iter().find(|i| i.path == "stray").unwrap();
    assert_eq!(stray.restic_repository_id, None, "a repository Cofre does not know is shown as such");

    // A later full sync without "stray" forgets it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = pb::InventoryReport {
        repositories: vec![repo(&m1.to_string(), vec![recorded.clone()])],
        full_sync_end: true,
    };
    inventory::ingest(&st.pool, store, &second, chrono::Utc::now()).await.unwrap();
    let items = inventory::list(&st.pool, store, None).await.unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].unrecorded_snapshots.is_empty());

    // Hostile reports are refused whole.
    let bad = pb::InventoryReport { repositories: vec![repo("../etc", vec![])], full_sync_end: false };
    assert!(matches!(inventory::ingest(&st.pool, store, &bad, started).await, Err(Error::Invalid { .. })));
    let bad_id =
        pb::InventoryReport { repositories: vec![repo("x", vec!["zz".into()])], full_sync_end: false };
    assert!(inventory::ingest(&st.pool, store, &bad_id, started).await.is_err());

    // A repository with more snapshots than fit in one report arrives in parts, appended.
    let ids: Vec<String> = (0..120_000).map(|i| format!("{i:064x}")).collect();
    let mut first = repo("busy", ids[..50_000].to_vec());
    first.more_snapshot_ids = true;
    let part = |range: std::ops::Range<usize>, more: bool| pb::RepositoryInventory {
        path: "busy".into(),
        snapshot_ids: ids[range].to_vec(),
        continues: true,
        more_snapshot_ids: more,
        ..Default::default()
    };
    for report in [vec![first], vec![part(50_000..100_000, true)], vec![part(100_000..120_000, false)]] {
        let r = pb::InventoryReport { repositories: report, full_sync_end: false };
        inventory::ingest(&st.pool, store, &r, chrono::Utc::now()).await.unwrap();
    }
    let busy =
        inventory::list(&st.pool, store, None).await.unwrap().into_iter().find(|i| i.path == "busy").unwrap();
    assert_eq!(busy.unrecorded_snapshots.len(), 120_000, "every part counted");
    assert_eq!(busy.size_bytes, 1234, "later parts change only the ids");
    // One report carrying too many ids at once is refused (and the store never sends one).
    let too_many =
        pb::InventoryReport { repositories: vec![repo("x", ids[..50_001].to_vec())], full_sync_end: false };
    assert!(matches!(
        inventory::ingest(&st.pool, store, &too_many, started).await,
        Err(Error::Invalid { .. })
    ));
}
