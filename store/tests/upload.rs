//! Uploads and reads at the protocol level: content must match its name, oversized bodies are
//! 413, ranges and HEAD work as restic needs them, v1 and v2 listings, and leftover temp files
//! of a crashed upload are swept at start.

use cofre_store::access::Mode;

use crate::common::{self, Options, TestStore};

fn options() -> Options {
    Options {
        htpasswd: vec![("ops", "pw-ops")],
        users: vec![common::rule("ops", Mode::Full, &["*"])],
        max_object_size: Some(64 * 1024),
        ..Options::default()
    }
}

#[tokio::test]
async fn uploads_are_verified_and_reads_support_ranges() {
    let store = TestStore::start(options());
    let (base, client) = (store.base(), store.client(None));
    let req = |m: reqwest::Method, path: &str| {
        client.request(m, format!("{base}/{path}")).basic_auth("ops", Some("pw-ops"))
    };
    assert_eq!(req(reqwest::Method::POST, "u/?create=true").send().await.unwrap().status(), 200);
    assert_eq!(
        req(reqwest::Method::POST, "u/?create=true").send().await.unwrap().status(),
        200,
        "idempotent"
    );

    // A body whose SHA-256 is not its name: 400, nothing stored, no temp file.
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let name = common::sha256_hex(&body);
    let wrong = common::sha256_hex(b"something else");
    let resp =
        req(reqwest::Method::POST, &format!("u/data/{wrong}")).body(body.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(!store.repo_dir("u/data").join(&wrong[..2]).join(&wrong).exists());
    assert!(store.temp_files().is_empty());

    // Too large for max_object_size: 413, with or without Content-Length.
    let big = vec![7u8; 64 * 1024 + 1];
    let big_name = common::sha256_hex(&big);
    let resp =
        req(reqwest::Method::POST, &format!("u/data/{big_name}")).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    let resp = req(reqwest::Method::POST, &format!("u/data/{big_name}"))
        .body(common::chunked(&big, 8192))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(store.temp_files().is_empty());

    // The right name: stored in rest-server's layout, readable whole, by range, by HEAD.
    let url = format!("u/data/{name}");
    assert_eq!(req(reqwest::Method::POST, &url).body(body.clone()).send().await.unwrap().status(), 200);
    assert_eq!(std::fs::read(store.repo_dir("u/data").join(&name[..2]).join(&name)).unwrap(), body);
    let got = req(reqwest::Method::GET, &url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), body);
    let part = req(reqwest::Method::GET, &url).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(part.bytes().await.unwrap(), body[100..200]);
    let tail = req(reqwest::Method::GET, &url).header("Range", "bytes=9990-").send().await.unwrap();
    assert_eq!(tail.bytes().await.unwrap(), body[9990..]);
    let beyond = req(reqwest::Method::GET, &url).header("Range", "bytes=20000-").send().await.unwrap();
    assert_eq!(beyond.status(), 416);
    let head = req(reqwest::Method::HEAD, &url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "10000");
    let missing = common::sha256_hex(b"missing");
    assert_eq!(req(reqwest::Method::GET, &format!("u/data/{missing}")).send().await.unwrap().status(), 404);
    assert_eq!(req(reqwest::Method::HEAD, "u/config").send().await.unwrap().status(), 404);

    // Listings: v1 by default, v2 on request; a missing type dir is an empty list.
    let v1 = req(reqwest::Method::GET, "u/data/").send().await.unwrap();
    assert_eq!(v1.headers()["content-type"], "application/vnd.x.restic.rest.v1");
    assert_eq!(v1.json::<Vec<String>>().await.unwrap(), vec![name.clone()]);
    let head = req(reqwest::Method::HEAD, "u/data/").send().await.unwrap();
    assert_eq!(head.headers()["content-length"], (name.len() + 4).to_string().as_str(), "[\"…\"]");
    let v2 = req(reqwest::Method::GET, "u/data/")
        .header("Accept", "application/vnd.x.restic.rest.v2")
        .send()
        .await
        .unwrap();
    assert_eq!(v2.headers()["content-type"], "application/vnd.x.restic.rest.v2");
    let v2: serde_json::Value = v2.json().await.unwrap();
    assert_eq!(v2, serde_json::json!([{ "name": name, "size": 10000 }]));
    std::fs::remove_dir(store.repo_dir("u/index")).unwrap();
    assert_eq!(
        req(reqwest::Method::GET, "u/index/")
            .send()
            .await
            .unwrap()
            .json::<Vec<String>>()
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(req(reqwest::Method::GET, "nope/keys/").send().await.unwrap().status(), 404);

    // The index dir is recreated by the next upload into it; then deletes work for a full user.
    let idx = b"an index".to_vec();
    let idx_url = format!("u/index/{}", common::sha256_hex(&idx));
    assert_eq!(req(reqwest::Method::POST, &idx_url).body(idx).send().await.unwrap().status(), 200);
    assert_eq!(req(reqwest::Method::DELETE, &idx_url).send().await.unwrap().status(), 200);
    assert_eq!(req(reqwest::Method::DELETE, &idx_url).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn leftover_temp_files_are_swept_at_start() {
    let store = TestStore::start(options());
    let (base, client) = (store.base(), store.client(None));
    let resp =
        client.post(format!("{base}/s/?create=true")).basic_auth("ops", Some("pw-ops")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (root, ca) = store.stop();

    // What a crash mid-upload leaves: temp files beside their would-be objects.
    let repo = root.path().join("data/s");
    let name = common::sha256_hex(b"partial");
    let leftovers = [
        repo.join("data").join(&name[..2]).join(format!(".{name}.cofre-upload-0011223344556677")),
        repo.join("snapshots").join(format!(".{name}.cofre-upload-8899aabbccddeeff")),
        repo.join(".config.cofre-upload-0123456789abcdef"),
    ];
    for f in &leftovers {
        std::fs::write(f, b"partial").unwrap();
    }
    let store = TestStore::start_in(root, ca, options());
    for f in &leftovers {
        assert!(!f.exists(), "{} survived the start-up sweep", f.display());
    }
    let client = store.client(None);
    let resp = client.get(format!("{}/s/snapshots/", store.base())).basic_auth("ops", Some("pw-ops"));
    assert_eq!(resp.send().await.unwrap().json::<Vec<String>>().await.unwrap().len(), 0);
    let inv = store.state.inventory();
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].total_bytes, 0);
}

#[tokio::test]
async fn a_stalled_upload_times_out_and_leaves_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let store = TestStore::start(Options { tls: false, upload_idle_timeout_seconds: Some(1), ..options() });
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/r/?create=true", store.base()))
        .basic_auth("ops", Some("pw-ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);

    // Announce 1000 bytes, send 10, then stop sending (the connection stays open).
    let name = common::sha256_hex(&[7u8; 1000]);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:pw-ops");
    let head = format!(
        "POST /r/data/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[7u8; 10]).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut answer))
        .await
        .expect("the store answers a stalled upload")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(store.temp_files().is_empty(), "the temp file is removed: {:?}", store.temp_files());
    let head = http
        .head(format!("{}/r/data/{name}", store.base()))
        .basic_auth("ops", Some("pw-ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404, "nothing was stored");
}
