//! Quotas: an upload that would exceed a machine's or its group's quota is 507 and stores nothing
//! (with or without Content-Length), concurrent uploads cannot jointly exceed, maintenance is
//! exempt, and the repositories stay clean for `restic check`. An upload without Content-Length
//! is cut as soon as it exceeds the quota (never written to disk in full), and each identity
//! has a bounded number of uploads in progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use cofre_store::access::Mode;
use cofre_store::config::UserRule;
use cofre_store::{AccessList, GroupQuota, MachineGrant, Settings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
        revoked_serials: Vec::new(),
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

/// The largest upload temp file below `dir` right now.
fn largest_temp_file(dir: &std::path::Path) -> u64 {
    let mut largest = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            largest = largest.max(largest_temp_file(&e.path()));
        } else if e.file_name().to_string_lossy().contains(".cofre-upload-") {
            largest = largest.max(meta.len());
        }
    }
    largest
}

fn plain_store_with_users(users: Vec<UserRule>, configure: fn(&mut Settings)) -> TestStore {
    TestStore::start(Options {
        tls: false,
        client_ca: false,
        htpasswd: vec![("a", "pw-a"), ("b", "pw-b")],
        users,
        configure,
        ..Options::default()
    })
}

fn basic(user: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw-{user}"))
}

#[tokio::test]
async fn a_chunked_upload_beyond_the_quota_is_cut_early_and_leaves_nothing() {
    const QUOTA: u64 = 1 << 20;
    const CHUNK: usize = 64 << 10;
    const TOTAL: usize = 64 << 20;
    let users = vec![UserRule { quota_bytes: Some(QUOTA), ..common::rule("a", Mode::AppendOnly, &["fill"]) }];
    let store = plain_store_with_users(users, |_| {});
    let http = reqwest::Client::new();
    let resp = http.post(format!("{}/fill/?create=true", store.base())).basic_auth("a", Some("pw-a"));
    assert_eq!(resp.send().await.unwrap().status(), 200);
    assert_eq!(usage(&store, "fill"), 0);

    // Watch the data dir for the largest temp file while the upload runs.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, dir) = (Arc::clone(&stop), store.data_dir.clone());
        std::thread::spawn(move || {
            let mut largest = 0;
            while !stop.load(Ordering::SeqCst) {
                largest = largest.max(largest_temp_file(&dir));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            largest
        })
    };

    // 64 MiB without Content-Length (chunked), 64 KiB at a time, stopping once answered.
    let name = common::sha256_hex(b"never stored");
    let (mut rx, mut tx) =
        tokio::net::TcpStream::connect(("127.0.0.1", store.port)).await.unwrap().into_split();
    let head = format!(
        "POST /fill/data/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        basic("a")
    );
    tx.write_all(head.as_bytes()).await.unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let reader = {
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            answered.store(true, Ordering::SeqCst);
            String::from_utf8_lossy(&got).into_owned()
        })
    };
    let chunk = [format!("{CHUNK:x}\r\n").as_bytes(), &[9u8; CHUNK], b"\r\n"].concat();
    let mut sent = 0;
    while sent < TOTAL && !answered.load(Ordering::SeqCst) {
        if tx.write_all(&chunk).await.is_err() {
            break;
        }
        sent += CHUNK;
    }
    if sent == TOTAL {
        let _ = tx.write_all(b"0\r\n\r\n").await;
    }
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), reader).await.unwrap().unwrap();
    stop.store(true, Ordering::SeqCst);
    let largest = sampler.join().unwrap();

    assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
    assert!(sent < TOTAL, "the store answered only after the client had sent all {TOTAL} bytes");
    assert!(largest <= QUOTA, "a temp file of {largest} bytes for a quota of {QUOTA}");
    assert!(store.temp_files().is_empty(), "temp files left: {:?}", store.temp_files());
    assert_eq!(usage(&store, "fill"), 0);
    drop(tx);

    // The quota is free again: an upload that fits is stored.
    let body = vec![3u8; 1000];
    let url = format!("{}/fill/data/{}", store.base(), common::sha256_hex(&body));
    let resp = http.post(url).basic_auth("a", Some("pw-a")).body(common::chunked(&body, 100));
    assert_eq!(resp.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn concurrent_uploads_per_identity_are_capped() {
    let users =
        vec![common::rule("a", Mode::AppendOnly, &["cap"]), common::rule("b", Mode::AppendOnly, &["cap"])];
    let store = plain_store_with_users(users, |s| s.max_uploads_per_identity = 2);
    let http = reqwest::Client::new();
    let resp = http.post(format!("{}/cap/?create=true", store.base())).basic_auth("a", Some("pw-a"));
    assert_eq!(resp.send().await.unwrap().status(), 200);
    let upload = |user: &'static str, seed: u8| {
        let body = vec![seed; 100];
        http.post(format!("{}/cap/data/{}", store.base(), common::sha256_hex(&body)))
            .basic_auth(user, Some(format!("pw-{user}")))
            .body(body)
            .send()
    };

    // Two uploads by `a` that announce 1000 bytes, send 10 and stall.
    let mut stalled = Vec::new();
    for seed in [1u8, 2] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
        let name = common::sha256_hex(&[seed; 1000]);
        let head = format!(
            "POST /cap/data/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
             Content-Length: 1000\r\n\r\n",
            basic("a")
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[seed; 10]).await.unwrap();
        stalled.push(s);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.temp_files().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the stalled uploads never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A third one by `a` is refused at once, with Retry-After; `b` is not affected.
    let resp = upload("a", 3).await.unwrap();
    assert_eq!(resp.status(), 503, "a status rustic retries");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(upload("b", 4).await.unwrap().status(), 200);

    // One stalled client goes away: its slot is freed and `a` uploads again.
    drop(stalled.pop());
    loop {
        let status = upload("a", 5).await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(std::time::Instant::now() < deadline, "the slot of a vanished upload was never freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
