//! Slow, idle and greedy clients, over raw TCP: a connection that sends nothing, half a request
//! head, an HTTP/2 connection that idles or ignores pings is closed after its (test-sized)
//! timeout, while an upload or a download in progress longer than the idle timeout is never cut;
//! a client that stops reading a response is dropped after the write timeout; a connection over
//! the per-address cap is answered 503 (and what restic makes of that).

use std::time::Duration;

use base64::Engine as _;
use cofre_store::Settings;
use cofre_store::access::Mode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{self, Options, TestStore};

/// Generous bound for "closed after a 1 s timeout": only a store without the timeout misses it.
const BOUND: Duration = Duration::from_secs(15);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const H2_PING: u8 = 6;
const H2_GOAWAY: u8 = 7;

fn start(configure: fn(&mut Settings)) -> TestStore {
    TestStore::start(Options {
        tls: false,
        client_ca: false,
        htpasswd: vec![("ops", "pw-ops")],
        users: vec![common::rule("ops", Mode::Full, &["*"])],
        configure,
        ..Options::default()
    })
}

fn auth() -> String {
    base64::engine::general_purpose::STANDARD.encode("ops:pw-ops")
}

/// Reads until the store closes the connection (EOF or reset) and returns what it sent; panics
/// if the connection is still open after [`BOUND`].
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.expect("the store still holds the connection open");
    got
}

/// The frame types in a byte stream of HTTP/2 frames.
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let (mut types, mut i) = (Vec::new(), 0);
    while i + 9 <= bytes.len() {
        let len = usize::from(bytes[i]) << 16 | usize::from(bytes[i + 1]) << 8 | usize::from(bytes[i + 2]);
        types.push(bytes[i + 3]);
        i += 9 + len;
    }
    types
}

/// Creates repository `r` through the protocol.
async fn create_repo(store: &TestStore) {
    let resp = reqwest::Client::new()
        .post(format!("{}/r/?create=true", store.base()))
        .basic_auth("ops", Some("pw-ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let store = start(|s| s.idle_connection_timeout_seconds = 1);
    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());
    // Other connections are served as usual.
    create_repo(&store).await;
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_read_timeout() {
    // The idle timeout stays long: the header read timeout alone must close it.
    let store = start(|s| s.header_read_timeout_seconds = 1);
    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    s.write_all(b"GET /r/keys/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let store = start(|s| {
        s.idle_connection_timeout_seconds = 1;
        s.http2_keep_alive_interval_seconds = 3600;
    });
    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    s.write_all(&[H2_PREFACE, H2_SETTINGS].concat()).await.unwrap();
    let types = frame_types(&read_until_closed(&mut s).await);
    assert!(types.contains(&H2_GOAWAY), "frames received: {types:?}");
}

#[tokio::test]
async fn an_http2_peer_that_does_not_answer_pings_is_dropped() {
    // Never idle for the idle timer: only the keep-alive can end this connection.
    let store = start(|s| {
        s.http2_keep_alive_interval_seconds = 1;
        s.http2_keep_alive_timeout_seconds = 1;
    });
    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    s.write_all(&[H2_PREFACE, H2_SETTINGS].concat()).await.unwrap();
    let types = frame_types(&read_until_closed(&mut s).await);
    assert!(types.contains(&H2_PING), "frames received: {types:?}");
}

#[tokio::test]
async fn requests_in_progress_outlive_the_idle_timeout() {
    let store = start(|s| s.idle_connection_timeout_seconds = 1);
    create_repo(&store).await;

    // An upload sending a chunk every 400 ms for 2.4 s, without Content-Length.
    let chunk = [5u8; 1000];
    let name = common::sha256_hex(&[5u8; 6000]);
    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    let head = format!(
        "POST /r/data/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        auth()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..6 {
        s.write_all(&[b"3e8\r\n".as_slice(), &chunk, b"\r\n"].concat()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A download the client reads slowly: 24 MiB (more than the socket buffers hold), paused
    // for 2.5 s after the first MiB.
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i % 253) as u8).collect();
    let name = common::sha256_hex(&body);
    let resp = reqwest::Client::new()
        .post(format!("{}/r/data/{name}", store.base()))
        .basic_auth("ops", Some("pw-ops"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    let req = format!(
        "GET /r/data/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
        auth()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 1 << 20];
    s.read_exact(&mut first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut all = first;
    all.extend(read_until_closed(&mut s).await);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(all.starts_with(b"HTTP/1.1 200"));
    assert_eq!(all.len() - split, body.len(), "the slow download was cut");
    assert!(all[split..] == body[..]);
}

/// Sends one HTTP/1.1 request as `ops` on `s` (the connection closes after the answer).
async fn send(s: &mut TcpStream, method: &str, path: &str) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n",
        auth()
    );
    s.write_all(req.as_bytes()).await.unwrap();
}

#[tokio::test]
async fn a_connection_over_the_per_address_cap_gets_503_and_the_others_still_work() {
    let store = start(|s| s.max_connections_per_address = 4);
    let connect = || TcpStream::connect(("127.0.0.1", store.port));
    // Four connections, not even a request yet: they count from the moment they are accepted.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect().await.unwrap());
    }
    let mut extra = connect().await.unwrap();
    send(&mut extra, "GET", "/r/keys/").await;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut extra).await).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 5"), "{answer}");
    assert!(answer.contains("max_connections_per_address"), "{answer}");

    // The four are served.
    send(&mut held[0], "POST", "/r/?create=true").await;
    let created = String::from_utf8_lossy(&read_until_closed(&mut held[0]).await).into_owned();
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");
    for s in &mut held[1..] {
        send(s, "GET", "/r/keys/").await;
        let listed = String::from_utf8_lossy(&read_until_closed(s).await).into_owned();
        assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    }
    drop(held);
    // Once they are closed, the address gets connections again.
    let start = tokio::time::Instant::now();
    loop {
        let mut s = connect().await.unwrap();
        send(&mut s, "GET", "/r/keys/").await;
        let answer = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(start.elapsed() < BOUND, "still refused after the others closed: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let store = start(|s| s.write_timeout_seconds = 1);
    create_repo(&store).await;
    let body: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    let name = common::sha256_hex(&body);
    let url = format!("{}/r/data/{name}", store.base());
    let resp = reqwest::Client::new()
        .post(&url)
        .basic_auth("ops", Some("pw-ops"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A client with a small receive buffer asks for the 24 MiB and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stalled = socket.connect(([127, 0, 0, 1], store.port).into()).await.unwrap();
    send(&mut stalled, "GET", &format!("/r/data/{name}")).await;
    let asked = tokio::time::Instant::now();

    // Meanwhile another client is served the whole object.
    let got = reqwest::Client::new()
        .get(&url)
        .basic_auth("ops", Some("pw-ops"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == body[..], "the other client got {} bytes", got.len());

    // Past the write timeout (1 s, noticed within another), the stalled client's connection is
    // gone: reading now yields what was in flight, then the end, never the whole object.
    tokio::time::sleep_until(asked + Duration::from_secs(4)).await;
    let all = read_until_closed(&mut stalled).await;
    assert!(all.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&all[..all.len().min(200)]));
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let received = all.len() - split;
    assert!(
        received < body.len(),
        "the stalled client was not dropped: it could still read all {received} bytes"
    );
}

/// What restic 0.14 (HTTP/1.1: a connection per parallel request) does at the cap: an upload
/// answered 503 is retried with backoff and the backup completes; but the first request of a
/// command (HEAD config, not retried by restic 0.14) answered 503 fails the command, saying 503
/// (a connection closed without an answer fails it the same way, saying "EOF" or "connection
/// reset": checked by hand).
#[test]
fn restic_retries_an_upload_refused_at_the_cap_and_says_503_when_its_first_request_is() {
    let store = TestStore::start(Options {
        tls: false,
        client_ca: false,
        htpasswd: vec![("ops", "pw-ops")],
        users: vec![common::rule("ops", Mode::Full, &["*"])],
        configure: |s| s.max_connections_per_address = 1,
        ..Options::default()
    });
    let restic = store.restic(Some(("ops", "pw-ops")), "capped", None);
    restic.ok(&["init", "--repository-version", "2"]);

    // Another connection from 127.0.0.1 holds the only slot: restic cannot open the repository.
    let held = std::net::TcpStream::connect(("127.0.0.1", store.port)).unwrap();
    let out = restic.run(&["snapshots"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("503 Service Unavailable"), "{stderr}");
    drop(held);

    // A backup whose parallel uploads (small packs, 8 connections) meet the cap of one.
    let src = store.root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut x: u64 = 7;
    for i in 0..8 {
        let data: Vec<u8> = (0..(6 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    let start = tokio::time::Instant::now();
    let out = loop {
        // The held connection may not be closed on the store's side yet.
        let out =
            restic.run(&["backup", "--pack-size", "4", "-o", "rest.connections=8", src.to_str().unwrap()]);
        if out.status.success() || start.elapsed() > BOUND {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restic backup failed:\n{stderr}");
    // "Save(<data/…>) returned error, retrying after …: server response unexpected: 503 …", or,
    // when the store answers and closes while restic is still sending the body, restic sees the
    // closed connection ("broken pipe", "connection reset") before the 503: either way it met
    // the cap and retried.
    let met = ["503", "broken pipe", "connection reset", "EOF"].iter().any(|e| stderr.contains(e));
    assert!(stderr.contains("retrying") && met, "restic never met the cap:\n{stderr}");
    assert_eq!(restic.snapshot_ids().len(), 1);
    restic.ok(&["check", "--read-data"]);
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    [&len[1..], &[kind, flags], &stream.to_be_bytes(), payload].concat()
}

/// An HPACK literal header field with an indexed name from the static table (no Huffman).
fn hpack_literal(name_index: u8, value: &str) -> Vec<u8> {
    assert!(value.len() < 127);
    [&[0x40 | name_index, value.len() as u8][..], value.as_bytes()].concat()
}

#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_is_dropped_after_the_write_timeout() {
    let store = start(|s| s.write_timeout_seconds = 1);
    create_repo(&store).await;
    let body: Vec<u8> = (0..4u32 << 20).map(|i| (i % 241) as u8).collect();
    let name = common::sha256_hex(&body);
    let resp = reqwest::Client::new()
        .post(format!("{}/r/data/{name}", store.base()))
        .basic_auth("ops", Some("pw-ops"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let mut s = TcpStream::connect(("127.0.0.1", store.port)).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE (4) = 1000 bytes, and never a WINDOW_UPDATE.
    let settings = h2_frame(4, 0, 0, &[0, 4, 0, 0, 0x03, 0xe8]);
    s.write_all(&[H2_PREFACE, &settings].concat()).await.unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 4, "the server's SETTINGS first");
    let mut payload = vec![0u8; usize::from(head[1]) << 8 | usize::from(head[2])];
    s.read_exact(&mut payload).await.unwrap();
    let mut request = vec![0x82, 0x86]; // :method GET, :scheme http
    request.extend(hpack_literal(4, &format!("/r/data/{name}"))); // :path
    request.extend(hpack_literal(1, "127.0.0.1")); // :authority
    request.extend(hpack_literal(23, &format!("Basic {}", auth()))); // authorization
    let settings_ack = h2_frame(4, 1, 0, &[]);
    let headers = h2_frame(1, 0x5, 1, &request); // END_STREAM | END_HEADERS
    s.write_all(&[settings_ack, headers].concat()).await.unwrap();
    let started = tokio::time::Instant::now();
    let frames = read_until_closed(&mut s).await;
    let types = frame_types(&[&head[..], &payload, &frames].concat());
    println!("HTTP/2 client with a closed window dropped after {:?}", started.elapsed());
    assert!(types.contains(&1) && types.contains(&0), "a response began: frames {types:?}");
    assert!(frames.len() < body.len(), "the whole object was sent: {} bytes", frames.len());
}
