//! Test fixtures: a real `rustic-server` on 127.0.0.1, the restic CLI, and tree comparison.
//!
//! rustic-server 0.4 facts these helpers rely on: it stops itself 3 s after start when `CI` is
//! set (so `CI` is removed from its environment), it exits 0 even on fatal start-up errors (so
//! readiness is polled on `/health/live`), `--no-auth` must never be used (it panics on list
//! requests), and with `--private-repos` a user reaches only repositories granted in the ACL
//! file (read once at start).

#![allow(dead_code, reason = "each test file uses a different part of the helpers")]

pub mod tree;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cofre_engine::RepoTarget;
use secrecy::SecretString;

pub const USER: &str = "machine-1";
/// Contains characters that must be percent-encoded in a URL, `%41` included.
pub const REST_PASSWORD: &str = "p@ss:w/rd%41 x";
pub const REPO_PASSWORD: &str = "correct horse battery staple";

/// A running rustic-server, killed on drop.
pub struct RestServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The CA certificate when the server speaks TLS.
    pub cacert: Option<PathBuf>,
}

/// Certificate files for a TLS server.
pub struct Tls<'a> {
    pub cacert: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn server_binary() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let candidate = home.join(".cargo/bin/rustic-server");
    if candidate.exists() { candidate } else { PathBuf::from("rustic-server") }
}

impl RestServer {
    /// Starts a plain-http server where `USER` may modify each repository in `repos`
    /// (`"name=Read"` grants read access only).
    pub fn start(repos: &[&str]) -> Self {
        Self::start_with(repos, None)
    }

    /// Starts a server; with `tls` it speaks https.
    pub fn start_with(repos: &[&str], tls: Option<Tls<'_>>) -> Self {
        // Keep rustic's cache out of the home directory of whoever runs the tests.
        cofre_engine::set_cache_dir(Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("cofre-engine-cache")));
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let status = Command::new(server_binary())
            .env_remove("CI")
            .args(["auth", "add", "-f"])
            .arg(&htpasswd)
            .args(["-u", USER, "-p", REST_PASSWORD])
            .stdout(Stdio::null())
            .status()
            .expect("rustic-server must be installed (cargo install rustic_server --locked)");
        assert!(status.success());
        let acl = dir.path().join("acl.toml");
        // "name" grants Modify; "name=Read" (or Append) grants that level.
        let acl_text: String = repos
            .iter()
            .map(|r| {
                let (name, level) = r.split_once('=').unwrap_or((r, "Modify"));
                format!("[{name}]\n\"{USER}\" = \"{level}\"\n")
            })
            .collect();
        std::fs::write(&acl, acl_text).unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();

        let port = free_port();
        let mut command = Command::new(server_binary());
        command
            .env_remove("CI")
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--path")
            .arg(dir.path().join("data"))
            .arg("--htpasswd-file")
            .arg(&htpasswd)
            .arg("--private-repos")
            .arg("--acl-path")
            .arg(&acl);
        if let Some(tls) = &tls {
            command.arg("--tls").arg("--tls-cert").arg(tls.cert).arg("--tls-key").arg(tls.key);
        }
        let child = command.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        let cacert = tls.map(|t| t.cacert.to_path_buf());
        let server = Self { child, port, dir, cacert };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                if self.cacert.is_some() {
                    // No TLS client in this fixture: a listening port is enough here.
                    return;
                }
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let request = "GET /health/live HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
                if stream.write_all(request.as_bytes()).is_ok() {
                    let mut answer = String::new();
                    let _ = stream.read_to_string(&mut answer);
                    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        panic!("rustic-server did not become ready on port {}:\n{log}", self.port);
    }

    fn scheme(&self) -> &'static str {
        if self.cacert.is_some() { "https" } else { "http" }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("{}://127.0.0.1:{}/{repo}", self.scheme(), self.port)
    }

    /// A target with the right credentials (and CA) for `repo`.
    pub fn target(&self, repo: &str) -> RepoTarget {
        let mut t = target(&self.url(repo), REST_PASSWORD, REPO_PASSWORD);
        t.ca_cert_file.clone_from(&self.cacert);
        t
    }

    /// The `rest:` repository string for the restic CLI.
    pub fn restic_repo(&self, repo: &str) -> String {
        let encoded: String = REST_PASSWORD
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!("rest:{}://{USER}:{encoded}@127.0.0.1:{}/{repo}", self.scheme(), self.port)
    }

    /// The restic CLI against `repo` (no cache, password from the environment), to run as the
    /// caller likes.
    pub fn restic_command(&self, repo: &str, args: &[&str]) -> Command {
        let mut command = Command::new("restic");
        if let Some(ca) = &self.cacert {
            command.arg("--cacert").arg(ca);
        }
        command
            .env("RESTIC_PASSWORD", REPO_PASSWORD)
            .env_remove("RESTIC_REPOSITORY")
            .env_remove("RESTIC_PASSWORD_FILE")
            .arg("--no-cache")
            .args(["-r", &self.restic_repo(repo)])
            .args(args);
        command
    }

    /// Runs the restic CLI against `repo` (no cache, password from the environment).
    pub fn restic(&self, repo: &str, args: &[&str]) -> Output {
        let output = self.restic_command(repo, args).output().expect("restic must be installed");
        assert!(
            output.status.success(),
            "restic {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `restic ARGS --json` parsed.
    pub fn restic_json(&self, repo: &str, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.restic(repo, &all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!("restic {args:?}: bad JSON ({err}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn target(url: &str, rest_password: &str, repo_password: &str) -> RepoTarget {
    RepoTarget {
        url: url.to_owned(),
        username: Some(USER.to_owned()),
        password: Some(SecretString::from(rest_password.to_owned())),
        repository_password: SecretString::from(repo_password.to_owned()),
        ca_cert_file: None,
        client_identity_file: None,
        allow_insecure_http: false,
    }
}

/// Snapshot ids as listed by `restic snapshots --json`.
pub fn restic_snapshot_ids(server: &RestServer, repo: &str) -> Vec<String> {
    let list = server.restic_json(repo, &["snapshots"]);
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

/// A request for `paths` on host `test-host`.
pub fn request(expected_id: &str, paths: &[&Path]) -> cofre_engine::BackupRequest {
    cofre_engine::BackupRequest {
        expected_restic_id: expected_id.to_owned(),
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        hostname: "test-host".to_owned(),
        tags: vec!["cofre-test".to_owned()],
        ..Default::default()
    }
}

/// Deterministic random-looking bytes (xorshift64): incompressible test content.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
