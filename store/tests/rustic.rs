//! rustic_core (through cofre-engine, as agents and the controller use it) against the store:
//! the maintenance identity initialises, the machine backs up append-only with its client
//! certificate and restores, and restic finds the repository clean.

use cofre_engine::{BackupRequest, RepoTarget};
use cofre_store::{AccessList, MachineGrant};
use secrecy::SecretString;
use uuid::Uuid;

use crate::common::{self, Issued, Options, TestStore};

fn target(store: &TestStore, repo: &str, identity: &Issued) -> RepoTarget {
    RepoTarget {
        url: format!("{}/{repo}", store.base()),
        username: None,
        password: None,
        repository_password: SecretString::from(common::PASSWORD),
        ca_cert_file: Some(store.ca.cert_path.clone()),
        client_identity_file: Some(identity.bundle_path.clone()),
        allow_insecure_http: false,
    }
}

#[test]
fn rustic_machine_backs_up_and_restores_append_only() {
    let m = Uuid::new_v4();
    let grant = MachineGrant {
        machine_id: m,
        group_id: None,
        repositories: vec!["city/pc".into()],
        quota_bytes: None,
        revoked_serials: Vec::new(),
    };
    let store = TestStore::start(Options {
        access_list: Some(AccessList { version: 1, machines: vec![grant], groups: vec![] }),
        ..Options::default()
    });
    cofre_engine::set_cache_dir(Some(store.root.path().join("rustic-cache")));
    let (maint, machine) = (store.ca.client("cofre-maintenance"), store.ca.client(&m.to_string()));

    let id = cofre_engine::init_repository(&target(&store, "city/pc", &maint)).expect("init as maintenance");
    let src = store.root.path().join("src");
    common::make_tree(&src, 3);
    let req = BackupRequest {
        expected_restic_id: id,
        paths: vec![src.clone()],
        hostname: "pc".into(),
        ..Default::default()
    };
    let report =
        cofre_engine::backup(&target(&store, "city/pc", &machine), &req).expect("backup as the machine");
    std::fs::write(src.join("later"), b"second backup").unwrap();
    let second = cofre_engine::backup(&target(&store, "city/pc", &machine), &req).expect("second backup");
    assert_ne!(report.snapshot_id, second.snapshot_id);

    let dest = store.root.path().join("restored");
    cofre_engine::restore(&target(&store, "city/pc", &machine), &second.snapshot_id, None, &dest)
        .expect("restore");
    let restored = dest.join(src.strip_prefix("/").unwrap());
    assert_eq!(common::walk(&restored), common::walk(&src));

    let restic = store.restic(None, "city/pc", Some(&maint));
    assert_eq!(restic.snapshot_ids().len(), 2);
    restic.ok(&["check", "--read-data"]);
    let inv = store.state.inventory();
    assert_eq!(inv[0].objects.snapshots, 2);
    assert_eq!(inv[0].objects.locks, 0, "no lock left behind");
}
