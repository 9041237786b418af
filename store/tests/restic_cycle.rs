//! The restic CLI's full cycle against the store, over TLS, as an htpasswd user in mode `full`:
//! init (v2), backup, snapshots, check --read-data, a second backup, forget, prune, restore.

use cofre_store::access::Mode;

use crate::common::{self, Options, TestStore};

#[test]
fn restic_full_cycle_as_a_full_user() {
    let store = TestStore::start(Options {
        htpasswd: vec![("alice", "pw-alice")],
        users: vec![common::rule("alice", Mode::Full, &["alice/*"])],
        ..Options::default()
    });
    let restic = store.restic(Some(("alice", "pw-alice")), "alice/laptop", None);
    restic.ok(&["init", "--repository-version", "2"]);

    // rest-server's layout on disk, so an existing rest-server data dir is served as it is.
    let repo = store.repo_dir("alice/laptop");
    assert!(repo.join("config").is_file());
    assert!(repo.join("data/00").is_dir() && repo.join("data/ff").is_dir());
    assert_eq!(std::fs::read_dir(repo.join("keys")).unwrap().count(), 1);

    let src = store.root.path().join("src");
    common::make_tree(&src, 1);
    let src_arg = src.to_str().unwrap();
    restic.ok(&["backup", src_arg]);
    assert_eq!(restic.snapshot_ids().len(), 1);
    restic.ok(&["check", "--read-data"]);
    for entry in walkdir_files(&repo.join("data")) {
        let name = entry.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            common::sha256_hex(&std::fs::read(&entry).unwrap()),
            name,
            "packs are named by their hash"
        );
        assert_eq!(entry.parent().unwrap().file_name().unwrap().to_str().unwrap(), &name[..2]);
    }

    // Second backup of a changed tree, forget the first, prune, and restore the second.
    std::fs::remove_dir_all(&src).unwrap();
    common::make_tree(&src, 2);
    std::fs::write(src.join("new-file"), b"only in the second backup").unwrap();
    restic.ok(&["backup", src_arg]);
    assert_eq!(restic.snapshot_ids().len(), 2);
    restic.ok(&["forget", "--keep-last", "1"]);
    restic.ok(&["prune"]);
    let ids = restic.snapshot_ids();
    assert_eq!(ids.len(), 1);
    restic.ok(&["check", "--read-data"]);

    let target = store.root.path().join("restore");
    restic.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(common::walk(&restored), common::walk(&src), "the restored tree differs from the source");

    // The inventory follows: one snapshot left, its id listed, totals equal to the files on disk.
    let inv = store.state.inventory();
    let r = inv.iter().find(|r| r.repository == "alice/laptop").expect("repository in the inventory");
    assert_eq!(r.objects.snapshots, 1);
    assert_eq!(r.objects.locks, 0, "restic removed its locks");
    assert!(r.snapshot_ids[0].starts_with(&ids[0]), "{:?} vs {:?}", r.snapshot_ids, ids);
    assert!(r.newest_snapshot_at.is_some() && r.has_config);
    let on_disk: u64 = walkdir_files(&repo).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(r.total_bytes, on_disk);
}

#[tokio::test]
async fn wrong_or_missing_password_is_401_with_a_basic_challenge() {
    let store = TestStore::start(Options {
        htpasswd: vec![("alice", "pw-alice")],
        users: vec![common::rule("alice", Mode::Full, &["alice/*"])],
        ..Options::default()
    });
    let client = store.client(None);
    let url = format!("{}/alice/x/keys/", store.base());
    for req in [client.get(&url), client.get(&url).basic_auth("alice", Some("wrong"))] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"restic\"");
    }
    // Right password, repository outside the rule: not revealed.
    let resp = client.get(format!("{}/bob/x/keys/", store.base())).basic_auth("alice", Some("pw-alice"));
    assert_eq!(resp.send().await.unwrap().status(), 404);
}

fn walkdir_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    common::walk(dir).into_iter().filter(|(_, c)| c.is_some()).map(|(p, _)| dir.join(p)).collect()
}
