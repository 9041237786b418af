//! Hostile requests, sent raw over TCP (an HTTP client library would normalise them): traversal,
//! encoded separators and dots, empty segments, unknown types, bad names, unknown methods, huge
//! headers. Every one is 4xx and nothing is created anywhere.

use base64::Engine as _;
use cofre_store::access::Mode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{self, Options, TestStore};

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Sends a request with Basic credentials; returns the status.
async fn raw(port: u16, method: &str, target: &[u8], extra: &str, body: &[u8]) -> u16 {
    let status = raw_status(port, method, target, extra, body).await;
    status.unwrap_or_else(|| panic!("no HTTP status for {method} {:?}", String::from_utf8_lossy(target)))
}

/// Like [`raw`]; `None` when the server closed the connection without a readable answer (it
/// may refuse a huge head and close while the client is still sending, which resets).
async fn raw_status(port: u16, method: &str, target: &[u8], extra: &str, body: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("root:pw-root");
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    // The server may answer and close before reading everything (a huge header): ignore that.
    let _ = s.write_all(&req).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut resp)).await;
    String::from_utf8_lossy(&resp).split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn hostile_paths_and_methods_are_refused_and_touch_nothing() {
    let store = TestStore::start(Options {
        tls: false,
        client_ca: false,
        htpasswd: vec![("root", "pw-root")],
        users: vec![common::rule("root", Mode::Full, &["*"])],
        ..Options::default()
    });
    let port = store.port;
    assert_eq!(raw(port, "POST", b"/r/?create=true", "", b"").await, 200);
    std::fs::create_dir_all(store.root.path().join("outside")).unwrap();
    std::fs::write(store.root.path().join("outside/canary"), b"do not touch").unwrap();
    let before = common::walk(store.root.path());

    let obj = b"x".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("GET", b"/r/../outside/canary".to_vec()),
        ("GET", b"/r/../outside/config".to_vec()),
        ("GET", b"/r/%2e%2e/outside/config".to_vec()),
        ("GET", b"/r/%2E%2E/%2E%2E/etc/passwd".to_vec()),
        ("POST", b"/r%2F..%2Foutside/?create=true".to_vec()),
        ("POST", b"/%2e%2e/outside/?create=true".to_vec()),
        ("POST", b"/../outside/?create=true".to_vec()),
        ("POST", b"/./outside/?create=true".to_vec()),
        ("POST", b"//outside/?create=true".to_vec()),
        ("POST", b"/r//?create=true".to_vec()),
        ("POST", b"/r/..\\outside/?create=true".to_vec()),
        ("POST", b"/r/\xc3\xa4/?create=true".to_vec()),
        ("POST", b"/.hidden/?create=true".to_vec()),
        ("POST", b"/data/?create=true".to_vec()),
        ("POST", b"/config/?create=true".to_vec()),
        ("POST", b"http://127.0.0.1/r/../outside/?create=true".to_vec()),
        ("POST", format!("/r/data/{HEX}/../../../outside/x").into_bytes()),
        ("POST", format!("/r/data/{}", HEX.to_uppercase()).into_bytes()),
        ("POST", b"/r/data/not-a-hash".to_vec()),
        ("POST", format!("/r/data/{HEX}00").into_bytes()),
        ("POST", format!("/r/things/{HEX}").into_bytes()),
        ("GET", b"/r/things/".to_vec()),
        ("POST", b"/r/config/x".to_vec()),
        ("POST", b"/r/config/".to_vec()),
        ("DELETE", b"/r/".to_vec()),
        ("GET", b"/".to_vec()),
        ("PUT", b"/r/config".to_vec()),
        ("PROPFIND", b"/r/".to_vec()),
        ("PATCH", format!("/r/keys/{HEX}").into_bytes()),
        ("OPTIONS", b"*".to_vec()),
    ];
    for (method, target) in &cases {
        let status = raw(port, method, target, "", &obj).await;
        assert!(
            (400..500).contains(&status),
            "{method} {:?} answered {status}",
            String::from_utf8_lossy(target)
        );
    }
    let big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let status = raw_status(port, "GET", b"/r/keys/", &big, b"").await;
    assert!(status.is_none_or(|s| (400..500).contains(&s)), "100 KB header answered {status:?}");

    assert_eq!(common::walk(store.root.path()), before, "a hostile request changed something on disk");
    // And the server still serves normal requests.
    assert_eq!(raw(port, "GET", b"/r/keys/", "", b"").await, 200);
}
