//! Machines are append-only: identified by their client certificate, they read and add in their
//! own repositories, delete only their own locks, and lose access the moment the access list
//! drops them. The maintenance identity can forget and prune.

use cofre_store::{AccessList, MachineGrant};
use uuid::Uuid;

use crate::common::{self, Options, TestStore};

fn grant(id: Uuid, repo: &str) -> MachineGrant {
    MachineGrant { machine_id: id, repositories: vec![repo.into()], ..Default::default() }
}

#[tokio::test]
async fn machines_append_only_and_maintenance_prunes() {
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    let acl = AccessList {
        version: 1,
        machines: vec![grant(m1, "fleet/m1"), grant(m2, "fleet/m2")],
        groups: vec![],
    };
    let store = TestStore::start(Options { access_list: Some(acl.clone()), ..Options::default() });
    let base = store.base();
    let maint_cert = store.ca.client("cofre-maintenance");
    let m1_cert = store.ca.client(&m1.to_string());

    // Maintenance initialises and fills the machine's repository; the machine backs up itself too
    // (restic creates and then deletes its own lock: allowed).
    let maint = store.restic(None, "fleet/m1", Some(&maint_cert));
    maint.ok(&["init", "--repository-version", "2"]);
    let src = store.root.path().join("src");
    common::make_tree(&src, 7);
    maint.ok(&["backup", src.to_str().unwrap()]);
    let machine = store.restic(None, "fleet/m1", Some(&m1_cert));
    std::fs::write(src.join("more"), b"second run").unwrap();
    machine.ok(&["backup", src.to_str().unwrap()]);
    assert_eq!(machine.snapshot_ids().len(), 2);
    // restic's `forget` needs DELETE: refused for the machine, and nothing is gone.
    let out = machine.run(&["forget", "--keep-last", "1"]);
    assert!(!out.status.success(), "forget as a machine must fail");
    assert_eq!(maint.snapshot_ids().len(), 2);

    let client = store.client(Some(&m1_cert));
    let r = "fleet/m1";
    for t in ["snapshots", "data", "index", "keys"] {
        let (name, _) = common::list(&client, &base, r, t).await.into_iter().next().expect("objects");
        let url = format!("{base}/{r}/{t}/{name}");
        assert_eq!(client.delete(&url).send().await.unwrap().status(), 403, "DELETE {t}");
        // Overwriting with the very same bytes is refused too.
        let bytes = client.get(&url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(client.post(&url).body(bytes).send().await.unwrap().status(), 403, "POST existing {t}");
        assert_eq!(client.head(&url).send().await.unwrap().status(), 200, "{t} still there");
    }
    assert_eq!(client.delete(format!("{base}/{r}/config")).send().await.unwrap().status(), 403);
    let config = client.get(format!("{base}/{r}/config")).send().await.unwrap().bytes().await.unwrap();
    let resp = client.post(format!("{base}/{r}/config")).body(config).send().await.unwrap();
    assert_eq!(resp.status(), 403, "config is never overwritten");

    // Its own lock: create then delete. Somebody else's lock: refused.
    let lock = b"a lock body, as restic would encrypt it".to_vec();
    let lock_url = format!("{base}/{r}/locks/{}", common::sha256_hex(&lock));
    assert_eq!(client.post(&lock_url).body(lock.clone()).send().await.unwrap().status(), 200);
    assert_eq!(client.delete(&lock_url).send().await.unwrap().status(), 200);
    assert_eq!(client.delete(&lock_url).send().await.unwrap().status(), 404);
    let maint_client = store.client(Some(&maint_cert));
    let other = b"maintenance's lock".to_vec();
    let other_url = format!("{base}/{r}/locks/{}", common::sha256_hex(&other));
    assert_eq!(maint_client.post(&other_url).body(other).send().await.unwrap().status(), 200);
    assert_eq!(client.delete(&other_url).send().await.unwrap().status(), 403);
    assert_eq!(maint_client.delete(&other_url).send().await.unwrap().status(), 200);

    // Another machine's repository does not exist for m1.
    for url in [format!("{base}/fleet/m2/config"), format!("{base}/fleet/m2/keys/")] {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
    }
    let resp = client.post(format!("{base}/fleet/m2/?create=true")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(!store.repo_dir("fleet/m2").exists());

    // A certificate from another CA proves nothing: the handshake fails or the request is 401.
    let other_ca = common::TestCa::new("Unrelated CA");
    let stranger = other_ca.client(&m1.to_string());
    let result = store.client(Some(&stranger)).get(format!("{base}/{r}/config")).send().await;
    assert!(!matches!(&result, Ok(resp) if resp.status() != 401), "{result:?}");

    // Dropped from the access list: refused on the very same (keep-alive) client at once.
    assert_eq!(client.head(format!("{base}/{r}/config")).send().await.unwrap().status(), 200);
    store.state.set_access_list(AccessList {
        version: 2,
        machines: vec![grant(m2, "fleet/m2")],
        groups: vec![],
    });
    assert_eq!(client.head(format!("{base}/{r}/config")).send().await.unwrap().status(), 403);
    assert!(!machine.run(&["snapshots"]).status.success());

    // Maintenance forgets and prunes; restic check is clean afterwards.
    maint.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(maint.snapshot_ids().len(), 1);
    maint.ok(&["check", "--read-data"]);
}

#[tokio::test]
async fn a_client_ca_set_later_admits_machines_from_then_on() {
    let m = Uuid::new_v4();
    let acl = AccessList { version: 1, machines: vec![grant(m, "late/m")], groups: vec![] };
    let store = TestStore::start(Options { client_ca: false, access_list: Some(acl), ..Options::default() });
    let cert = store.ca.client(&m.to_string());
    let url = format!("{}/late/m/?create=true", store.base());
    // No CA yet: the certificate is not even requested, so there is no identity.
    assert_eq!(store.client(Some(&cert)).post(&url).send().await.unwrap().status(), 401);
    store.state.set_client_ca(store.ca.cert_pem.as_bytes()).unwrap();
    assert_eq!(store.client(Some(&cert)).post(&url).send().await.unwrap().status(), 200);
    assert!(store.repo_dir("late/m/keys").is_dir());
}

/// The serial of a PEM certificate as the controller records it.
fn serial(pem: &str) -> String {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    cofre_store::tls::serial_of(der.as_ref()).unwrap()
}

#[tokio::test]
async fn a_superseded_certificate_of_an_active_machine_is_refused() {
    let m = Uuid::new_v4();
    let acl = AccessList { version: 1, machines: vec![grant(m, "fleet/m")], groups: vec![] };
    let store = TestStore::start(Options { access_list: Some(acl), ..Options::default() });
    let (old, new) = (store.ca.client(&m.to_string()), store.ca.client(&m.to_string()));
    let url = format!("{}/fleet/m/keys/", store.base());
    for cert in [&old, &new] {
        assert_ne!(store.client(Some(cert)).get(&url).send().await.unwrap().status(), 403);
    }
    // The controller says the old one was revoked (superseded by the renewed one).
    let mut revoked = grant(m, "fleet/m");
    revoked.revoked_serials = vec![serial(&old.cert_pem).to_uppercase()];
    store.state.set_access_list(AccessList { version: 2, machines: vec![revoked], groups: vec![] });
    let refused = store.client(Some(&old)).get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("revoked"));
    assert_ne!(
        store.client(Some(&new)).get(&url).send().await.unwrap().status(),
        403,
        "the renewed one works"
    );
}
