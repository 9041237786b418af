//! Quotas: an upload that would exceed a machine's or its group's quota is 507 and stores nothing
//! (with or without Content-Length), concurrent uploads cannot jointly exceed, maintenance is
//! exempt, and the repositories stay clean for `restic check`.

use cofre_store::{AccessList, GroupQuota, MachineGrant};
use uuid::Uuid;

use crate::common::{self, Options, TestStore};

fn random_object(len: usize, seed: u8) -> (String, Vec<u8>) {
    let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    (common::sha256_hex(&body), body)
}

fn usage(store: &TestStore, repo: &str) -> u64 {
    store.state.inventory().iter().find(|r| r.repository == repo).map(|r| r.total_bytes).unwrap_or(0)
}

#[tokio::test]
async fn machine_and_group_quotas_refuse_with_507_and_store_nothing() {
    let (a, b, c, g) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let store = TestStore::start(Options::default());
    let base = store.base();
    let maint_cert = store.ca.client("cofre-maintenance");
    for repo in ["q/a", "q/b", "q/c"] {
        store.restic(None, repo, Some(&maint_cert)).ok(&["init", "--repository-version", "2"]);
    }
    let (ua, ub, uc) = (usage(&store, "q/a"), usage(&store, "q/b"), usage(&store, "q/c"));
    assert!(ua > 0 && ub > 0 && uc > 0, "the start-up scan and writes are counted");
    let grant = |m, repo: &str, group, quota| MachineGrant {
        machine_id: m,
        group_id: group,
        repositories: vec![repo.into()],
        quota_bytes: quota,
    };
    store.state.set_access_list(AccessList {
        version: 1,
        machines: vec![
            grant(a, "q/a", None, Some(ua + 1000)),
            grant(b, "q/b", Some(g), None),
            grant(c, "q/c", Some(g), None),
        ],
        groups: vec![GroupQuota { group_id: g, quota_bytes: Some(ub + uc + 1000) }],
    });

    // Machine quota, Content-Length known: refused before anything is stored.
    let ca = store.client(Some(&store.ca.client(&a.to_string())));
    let before = common::list(&ca, &base, "q/a", "data").await;
    let (name, body) = random_object(2000, 1);
    let resp = ca.post(format!("{base}/q/a/data/{name}")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 507);
    // Without Content-Length (chunked): streamed, checked against the real size, removed.
    let (name2, body2) = random_object(1500, 2);
    let resp =
        ca.post(format!("{base}/q/a/data/{name2}")).body(common::chunked(&body2, 500)).send().await.unwrap();
    assert_eq!(resp.status(), 507);
    assert_eq!(common::list(&ca, &base, "q/a", "data").await, before, "nothing stored");
    assert!(store.temp_files().is_empty(), "no temp file left: {:?}", store.temp_files());

    // Two concurrent uploads of 600 bytes into the remaining 1000: exactly one gets in.
    let (n1, b1) = random_object(600, 3);
    let (n2, b2) = random_object(600, 4);
    let (r1, r2) = tokio::join!(
        ca.post(format!("{base}/q/a/data/{n1}")).body(b1).send(),
        ca.post(format!("{base}/q/a/data/{n2}")).body(b2).send()
    );
    let mut statuses = [r1.unwrap().status().as_u16(), r2.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 507]);
    assert_eq!(usage(&store, "q/a"), ua + 600);

    // Group quota: b and c share 1000 bytes beyond what they hold.
    let cb = store.client(Some(&store.ca.client(&b.to_string())));
    let cc = store.client(Some(&store.ca.client(&c.to_string())));
    let (nb, bb) = random_object(800, 5);
    assert_eq!(cb.post(format!("{base}/q/b/data/{nb}")).body(bb).send().await.unwrap().status(), 200);
    let before_c = common::list(&cc, &base, "q/c", "data").await;
    let (nc, bc) = random_object(800, 6);
    let resp = cc.post(format!("{base}/q/c/data/{nc}")).body(bc).send().await.unwrap();
    assert_eq!(resp.status(), 507);
    assert!(resp.text().await.unwrap().contains("group"));
    assert_eq!(common::list(&cc, &base, "q/c", "data").await, before_c);

    // Maintenance is exempt (prune must be able to run): 5000 bytes into full q/a.
    let mc = store.client(Some(&maint_cert));
    let (nm, bm) = random_object(5000, 7);
    assert_eq!(mc.post(format!("{base}/q/a/locks/{nm}")).body(bm).send().await.unwrap().status(), 200);
    // Remove the raw test objects (no restic format), then restic finds every repository clean:
    // the refused uploads left nothing behind.
    for url in [
        format!("q/a/locks/{nm}"),
        format!("q/a/data/{n1}"),
        format!("q/a/data/{n2}"),
        format!("q/b/data/{nb}"),
    ] {
        let status = mc.delete(format!("{base}/{url}")).send().await.unwrap().status().as_u16();
        assert!(status == 200 || status == 404, "{url}: {status}");
    }
    assert!(store.temp_files().is_empty());
    assert_eq!(usage(&store, "q/a"), ua);
    for repo in ["q/a", "q/b", "q/c"] {
        store.restic(None, repo, Some(&maint_cert)).ok(&["check", "--read-data"]);
    }
}
