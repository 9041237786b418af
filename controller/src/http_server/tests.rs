//! Slow and idle clients against the real server on 127.0.0.1:0, over raw TCP: a connection that
//! sends nothing, half a request head, idle or deaf HTTP/2 peers are closed after their
//! (test-sized) timeouts; the connection cap holds; uploads and downloads in progress longer than
//! the idle timeout are never cut; the peer address reaches handlers, plain and over TLS.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::{Limits, serve};
use crate::api::Peer;

/// Generous bound for "closed after a 1 s timeout": only a server without the timeout misses it.
const BOUND: Duration = Duration::from_secs(10);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const H2_PING: u8 = 6;
const H2_GOAWAY: u8 = 7;
const BIG: usize = 24 << 20;

/// Long timeouts: each test shortens the one it is about.
fn limits() -> Limits {
    let long = Duration::from_secs(3600);
    Limits {
        header_read_timeout: long,
        idle_timeout: long,
        http2_keep_alive_interval: long,
        http2_keep_alive_timeout: long,
        max_connections: 1024,
    }
}

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 253) as u8).collect()
}

fn app() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/peer", get(|ConnectInfo(Peer(peer)): ConnectInfo<Peer>| async move { peer.to_string() }))
        .route("/upload", post(|body: Bytes| async move { body.len().to_string() }))
        .route("/big", get(|| async { big_body() }))
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_with(limits: Limits, tls: Option<rustls::ServerConfig>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, tls, app(), limits, async move {
        let _ = stopped.await;
    }));
    Server { addr, stop: Some(stop), done }
}

async fn start(limits: Limits) -> Server {
    start_with(limits, None).await
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.addr).await.unwrap()
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent; panics
/// if the connection is still open after [`BOUND`].
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.expect("the server still holds the connection open");
    got
}

/// Sends a keep-alive `GET /healthz` and reads its whole answer.
async fn health_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.expect("no answer").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn health(server: &Server) -> reqwest::StatusCode {
    reqwest::get(format!("http://{}/healthz", server.addr)).await.unwrap().status()
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

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = start(Limits { idle_timeout: Duration::from_secs(1), ..limits() }).await;
    // One that never sends a byte.
    let mut silent = connect(&server).await;
    assert!(read_until_closed(&mut silent).await.is_empty());
    // A keep-alive connection after its request.
    let mut kept = connect(&server).await;
    assert!(health_on(&mut kept).await.starts_with("HTTP/1.1 200"));
    assert!(read_until_closed(&mut kept).await.is_empty());
    assert_eq!(health(&server).await, 200);
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_read_timeout() {
    // The idle timeout stays long: the header read timeout alone must close these.
    let server = start(Limits { header_read_timeout: Duration::from_secs(1), ..limits() }).await;
    let half = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let mut fresh = connect(&server).await;
    fresh.write_all(half).await.unwrap();
    let got = read_until_closed(&mut fresh).await;
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{}", String::from_utf8_lossy(&got));
    // The same after a first request on a keep-alive connection (hyper's own timer).
    let mut kept = connect(&server).await;
    health_on(&mut kept).await;
    kept.write_all(half).await.unwrap();
    let got = read_until_closed(&mut kept).await;
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{}", String::from_utf8_lossy(&got));
    // A connection that never starts a request is not kept for the (long) idle timeout either.
    let mut silent = connect(&server).await;
    assert!(read_until_closed(&mut silent).await.is_empty());
}

#[tokio::test]
async fn over_the_connection_cap_new_connections_wait_until_one_closes() {
    let server = start(Limits { max_connections: 2, ..limits() }).await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    health_on(&mut first).await;
    health_on(&mut second).await;
    // Both stay open and idle; a third connection is not served...
    let mut third = connect(&server).await;
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut byte)).await;
    assert!(early.is_err(), "the third connection was answered over the cap: {early:?}");
    // ...until one of the two closes: then it is, without sending anything again.
    drop(first);
    let answer = String::from_utf8_lossy(&read_until_closed(&mut third).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    assert!(health_on(&mut second).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn requests_in_progress_outlive_the_idle_timeout() {
    let server = start(Limits { idle_timeout: Duration::from_secs(1), ..limits() }).await;

    // An upload sending a chunk every 400 ms for 2.4 s, without Content-Length.
    let mut s = connect(&server).await;
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..6 {
        s.write_all(&[b"3e8\r\n".as_slice(), &[5u8; 1000], b"\r\n"].concat()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n6000"), "{answer}");

    // A download the client reads slowly: 24 MiB (more than the socket buffers hold), paused
    // for 2.5 s after the first MiB.
    let mut s = connect(&server).await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = vec![0u8; 1 << 20];
    s.read_exact(&mut all).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    all.extend(read_until_closed(&mut s).await);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(all.starts_with(b"HTTP/1.1 200"));
    assert_eq!(all.len() - split, BIG, "the slow download was cut");
    assert!(all[split..] == big_body()[..]);
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let server = start(Limits { idle_timeout: Duration::from_secs(1), ..limits() }).await;
    let mut s = connect(&server).await;
    s.write_all(&[H2_PREFACE, H2_SETTINGS].concat()).await.unwrap();
    let types = frame_types(&read_until_closed(&mut s).await);
    assert!(types.contains(&H2_GOAWAY), "frames received: {types:?}");
}

#[tokio::test]
async fn an_http2_peer_that_does_not_answer_pings_is_dropped() {
    // Never idle for the idle timer: only the keep-alive can end this connection.
    let one = Duration::from_secs(1);
    let server =
        start(Limits { http2_keep_alive_interval: one, http2_keep_alive_timeout: one, ..limits() }).await;
    let mut s = connect(&server).await;
    s.write_all(&[H2_PREFACE, H2_SETTINGS].concat()).await.unwrap();
    let types = frame_types(&read_until_closed(&mut s).await);
    assert!(types.contains(&H2_PING), "frames received: {types:?}");
}

#[tokio::test]
async fn handlers_see_the_peer_and_shutdown_waits_for_requests_in_progress() {
    let mut server = start(limits()).await;
    let client = reqwest::Client::new();
    let peer = client.get(format!("http://{}/peer", server.addr)).send().await.unwrap().text().await.unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");

    // A download in progress and an idle keep-alive connection when shutdown starts.
    let mut idle = connect(&server).await;
    health_on(&mut idle).await;
    let mut s = connect(&server).await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut all = vec![0u8; 1 << 20];
    s.read_exact(&mut all).await.unwrap();
    let _ = server.stop.take().unwrap().send(());
    assert!(read_until_closed(&mut idle).await.is_empty(), "the idle connection is closed at once");
    all.extend(read_until_closed(&mut s).await);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(all.len() - split, BIG, "the download was cut at shutdown");
    tokio::time::timeout(BOUND, server.done).await.expect("serve did not return").unwrap().unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err(), "still listening after shutdown");
}

#[tokio::test]
async fn https_carries_the_peer_and_a_silent_handshake_blocks_no_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let config = crate::tls_listener::server_config(&cert, &key).unwrap();
    let server = start_with(limits(), Some(config)).await;
    let port = server.addr.port();

    // A client that stalls in the handshake does not block the others.
    let _silent = connect(&server).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let peer =
        client.get(format!("https://localhost:{port}/peer")).send().await.unwrap().text().await.unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err(), "no plain HTTP");
}
