//! Alert receivers on loopback: an HTTP webhook receiver (in the test process) that keeps
//! every request with the time it arrived, and an SMTP sink (aiosmtpd, a real SMTP server from
//! PyPI) that writes every mail to a maildir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::http::HeaderMap;

use super::procs::{Proc, wait_until};

/// One request a webhook received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn alert(&self) -> Result<cofre_api::alerts::Alert> {
        serde_json::from_slice(&self.body).context("not an alert")
    }

    /// Whether `X-Cofre-Signature` is the HMAC-SHA256 of the body under `secret`.
    pub fn signed_with(&self, secret: &[u8]) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let Some(sig) = self.headers.get("x-cofre-signature").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(hex_sig) = sig.strip_prefix("sha256=") else { return false };
        let Ok(raw) = hex::decode(hex_sig) else { return false };
        ring::hmac::verify(&key, &self.body, &raw).is_ok()
    }
}

/// An HTTP server on loopback answering 200 to every POST and keeping it.
pub struct WebhookReceiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub async fn start() -> Result<WebhookReceiver> {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let g = got.clone();
        let app =
            axum::Router::new().fallback(axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let g = g.clone();
                async move {
                    if let Ok(mut v) = g.lock() {
                        v.push(Received { headers, body, at: Instant::now() });
                    }
                    "ok"
                }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver { url, got })
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// aiosmtpd writing every message into a maildir.
pub struct SmtpSink {
    pub port: u16,
    maildir: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl SmtpSink {
    /// A sink for `port` (not started: the test decides when the server is up).
    pub fn new(dir: &Path, port: u16) -> SmtpSink {
        SmtpSink { port, maildir: dir.join("maildir"), dir: dir.to_path_buf(), proc: None }
    }

    pub fn start(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port)])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir);
        let mut proc = Proc::spawn("smtp-sink", cmd, &self.dir)?;
        let port = self.port;
        // Ready when it greets as an SMTP server does, and it is ours: a server of another test
        // that took the port meanwhile would also accept a connection, and ours would exit.
        let ready =
            wait_until("the SMTP sink greets", Duration::from_secs(60), Duration::from_millis(100), || {
                if !proc.is_running() {
                    return Ok(Err(format!("aiosmtpd exited:\n{}", proc.log())));
                }
                smtp_greeting(port).map(Ok)
            })
            .context("aiosmtpd (pip install aiosmtpd) did not start")?;
        self.proc = Some(proc);
        ready.map_err(anyhow::Error::msg)
    }
}

/// The first line a server on `port` sends, if it is an SMTP greeting (`220 …`).
fn smtp_greeting(port: u16) -> std::result::Result<(), String> {
    use std::io::BufRead as _;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(|e| e.to_string())?;
    if line.starts_with("220") { Ok(()) } else { Err(format!("not an SMTP greeting: {line:?}")) }
}

impl SmtpSink {
    /// Every message received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    if let Ok(t) = std::fs::read_to_string(e.path()) {
                        out.push(t);
                    }
                }
            }
        }
        out
    }
}
