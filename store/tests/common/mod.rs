//! Shared test helpers: a private CA (rcgen), an in-process store on 127.0.0.1:0 running on its
//! own runtime thread, the restic CLI, data trees and their comparison, raw object helpers.

#![allow(dead_code, reason = "each scenario module uses a different part of the helpers")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cofre_store::access::Mode;
use cofre_store::config::UserRule;
use cofre_store::{AccessList, Settings, Store, StoreState};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

pub const PASSWORD: &str = "correct horse battery staple";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn,cofre_store=info").try_init();
}

/// A CA whose key lives in this process; issued files go to its temp dir.
pub struct TestCa {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_path: PathBuf,
    serial: std::sync::atomic::AtomicU32,
}

#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Certificate + key in one PEM: restic's `--tls-client-cert`, reqwest's `Identity::from_pem`.
    pub bundle_path: PathBuf,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::Builder::new().prefix("cofre-store-pki-").tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert_pem = params.self_signed(&key).unwrap().pem();
        let cert_path = dir.path().join("ca.pem");
        std::fs::write(&cert_path, &cert_pem).unwrap();
        TestCa { issuer: Issuer::new(params, key), dir, cert_pem, cert_path, serial: Default::default() }
    }

    pub fn server(&self) -> Issued {
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name = dn("localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(&p)
    }

    /// A client certificate with CN = `cn` (a machine UUID or `cofre-maintenance`).
    pub fn client(&self, cn: &str) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = dn(cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&p)
    }

    fn issue(&self, params: &CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let n = self.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = self.dir.path().join(format!("cert-{n}"));
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let (cert_path, key_path, bundle_path) =
            (base.with_extension("crt"), base.with_extension("key"), base.with_extension("bundle"));
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, &key_pem).unwrap();
        std::fs::write(&bundle_path, format!("{cert_pem}{key_pem}")).unwrap();
        Issued { cert_pem, key_pem, cert_path, key_path, bundle_path }
    }
}

/// How to start a test store.
pub struct Options {
    /// HTTPS with a server certificate from `ca` (else plain HTTP on loopback).
    pub tls: bool,
    /// Write `ca.pem` (client certificates accepted) into the state dir before starting.
    pub client_ca: bool,
    pub access_list: Option<AccessList>,
    /// htpasswd users (bcrypt, as `htpasswd -B` writes).
    pub htpasswd: Vec<(&'static str, &'static str)>,
    pub users: Vec<UserRule>,
    pub max_object_size: Option<u64>,
    pub upload_idle_timeout_seconds: Option<u64>,
    /// Last word on the settings (timeouts, limits), applied after everything above.
    pub configure: fn(&mut Settings),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: true,
            client_ca: true,
            access_list: None,
            htpasswd: vec![],
            users: vec![],
            max_object_size: None,
            upload_idle_timeout_seconds: None,
            configure: |_| {},
        }
    }
}

pub fn rule(name: &str, mode: Mode, repos: &[&str]) -> UserRule {
    UserRule {
        name: name.into(),
        mode,
        repositories: repos.iter().map(|s| s.to_string()).collect(),
        quota_bytes: None,
    }
}

/// A store running in this process on its own runtime thread (so tests may block on restic).
pub struct TestStore {
    /// Parent of `data`, `state` and anything a test wants beside them.
    pub root: TempDir,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub port: u16,
    pub state: StoreState,
    pub ca: TestCa,
    pub tls: bool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestStore {
    pub fn start(opts: Options) -> TestStore {
        let root = tempfile::Builder::new().prefix("cofre-store-test-").tempdir().unwrap();
        Self::start_in(root, TestCa::new("Cofre test CA"), opts)
    }

    /// Starts on an existing root (data dir and state dir kept: a restart).
    pub fn start_in(root: TempDir, ca: TestCa, opts: Options) -> TestStore {
        init();
        let (data_dir, state_dir) = (root.path().join("data"), root.path().join("state"));
        std::fs::create_dir_all(&state_dir).unwrap();
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.clone(),
            state_dir: state_dir.clone(),
            allow_plain_http: !opts.tls,
            users: opts.users,
            ..Settings::default()
        };
        if let Some(max) = opts.max_object_size {
            settings.max_object_size = max;
        }
        if let Some(secs) = opts.upload_idle_timeout_seconds {
            settings.upload_idle_timeout_seconds = secs;
        }
        (opts.configure)(&mut settings);
        if opts.tls {
            let server = ca.server();
            settings.tls_cert = Some(server.cert_path);
            settings.tls_key = Some(server.key_path);
        }
        if opts.client_ca {
            std::fs::write(state_dir.join(cofre_store::CA_FILE), &ca.cert_pem).unwrap();
        }
        if let Some(acl) = &opts.access_list {
            std::fs::write(state_dir.join(cofre_store::ACCESS_LIST_FILE), serde_json::to_vec(acl).unwrap())
                .unwrap();
        }
        if !opts.htpasswd.is_empty() {
            let lines: String = opts
                .htpasswd
                .iter()
                .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap().replacen("$2b$", "$2y$", 1)))
                .collect();
            let f = root.path().join("htpasswd");
            std::fs::write(&f, lines).unwrap();
            settings.htpasswd_file = Some(f);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let store = Store::bind(settings).await.unwrap();
                tx.send((store.local_addr().port(), store.state().clone())).unwrap();
                store
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let (port, state) = rx.recv().expect("the store did not start");
        TestStore {
            root,
            data_dir,
            state_dir,
            port,
            state,
            ca,
            tls: opts.tls,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the server and hands back its root and CA (for a restart on the same data).
    pub fn stop(mut self) -> (TempDir, TestCa) {
        self.halt();
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
        let ca = std::mem::replace(&mut self.ca, TestCa::new("unused"));
        (root, ca)
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// restic's repository string, with Basic credentials if given.
    pub fn restic_url(&self, creds: Option<(&str, &str)>, repo: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match creds {
            Some((u, p)) => format!("rest:{scheme}://{u}:{p}@127.0.0.1:{}/{repo}/", self.port),
            None => format!("rest:{scheme}://127.0.0.1:{}/{repo}/", self.port),
        }
    }

    pub fn restic(&self, creds: Option<(&str, &str)>, repo: &str, client_cert: Option<&Issued>) -> Restic {
        Restic {
            repository: self.restic_url(creds, repo),
            cacert: self.tls.then(|| self.ca.cert_path.clone()),
            client_cert: client_cert.map(|c| c.bundle_path.clone()),
            cache: self.root.path().join("restic-cache"),
        }
    }

    /// A reqwest client trusting the test CA, optionally presenting a client certificate.
    pub fn client(&self, identity: Option<&Issued>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).unwrap())
            .timeout(std::time::Duration::from_secs(30));
        if let Some(id) = identity {
            b = b.identity(
                reqwest::Identity::from_pem(std::fs::read(&id.bundle_path).unwrap().as_slice()).unwrap(),
            );
        }
        b.build().unwrap()
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.data_dir.join(repo)
    }

    /// Names of leftover upload temp files anywhere below the data dir.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        walk(&self.data_dir).into_keys().filter(|p| p.to_string_lossy().contains(".cofre-upload-")).collect()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The restic CLI against one repository.
pub struct Restic {
    repository: String,
    cacert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    cache: PathBuf,
}

impl Restic {
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("restic");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RESTIC_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("RESTIC_CACHE_DIR", &self.cache)
            .arg("--quiet");
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        if let Some(c) = &self.client_cert {
            cmd.arg("--tls-client-cert").arg(c);
        }
        cmd.args(args).output().expect("restic is installed")
    }

    /// Runs restic and returns its stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "restic {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        let out = self.ok(&["snapshots", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }
}

/// A small tree: nested dirs, an empty file, text and a few hundred KB of pseudo-random bytes.
pub fn make_tree(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    let mut x = u64::from(seed) + 1;
    let blob: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("sub/blob.bin"), &blob).unwrap();
    std::fs::write(dir.join("sub/deeper/notes.md"), format!("# notes {seed}\n").repeat(100)).unwrap();
}

/// Relative path → file contents (`None` for directories), every entry below `dir`.
pub fn walk(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                go(base, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Listing of one type (v2), as (name, size).
pub async fn list(client: &reqwest::Client, base: &str, repo: &str, t: &str) -> Vec<(String, u64)> {
    let resp = client
        .get(format!("{base}/{repo}/{t}/"))
        .header("Accept", "application/vnd.x.restic.rest.v2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "listing {repo}/{t}");
    let v: Vec<serde_json::Value> = resp.json().await.unwrap();
    v.iter().map(|e| (e["name"].as_str().unwrap().to_string(), e["size"].as_u64().unwrap())).collect()
}

/// A request body of unknown length (sent chunked, without Content-Length).
pub fn chunked(data: &[u8], chunk: usize) -> reqwest::Body {
    struct Chunked(std::collections::VecDeque<hyper::body::Bytes>);
    impl hyper::body::Body for Chunked {
        type Data = hyper::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    reqwest::Body::wrap(Chunked(data.chunks(chunk).map(hyper::body::Bytes::copy_from_slice).collect()))
}
