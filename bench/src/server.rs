//! The REST server the repositories live on, as a child process on 127.0.0.1.
//!
//! rustic-server 0.4 here, cofre-store in `store_server.rs`: the runner only asks a server for
//! [`RepoAccess`] (URL, HTTP credentials, CA, client identity: what both restic and
//! cofre-engine need), its pid (CPU accounting) and to delete a repository.

use std::fs;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

use crate::ServerKind;

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The HTTP user the tools talk to the server as.
const USER: &str = "bench";

/// How a client reaches one repository.
#[derive(Debug, Clone)]
pub struct RepoAccess {
    /// `http(s)://127.0.0.1:PORT/<repo>` without credentials.
    pub url: String,
    pub user: String,
    pub password: String,
    /// PEM file of the CA that signed the server's certificate (TLS only).
    pub ca_file: Option<PathBuf>,
    /// Certificate and key in one PEM file (servers that identify clients by certificate).
    pub client_identity: Option<PathBuf>,
}

impl RepoAccess {
    /// The restic repository string: `rest:http://USER:PASS@127.0.0.1:PORT/<repo>/`.
    pub fn restic_repository(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("http", &self.url));
        // The password is generated hex: nothing to percent-encode.
        format!("rest:{scheme}://{}:{}@{rest}/", self.user, self.password)
    }
}

/// A running REST server.
pub trait RepoServer {
    /// Name and version, for the report.
    fn describe(&self) -> String;
    /// "plain HTTP" or "HTTPS (...)", for the report.
    fn transport(&self) -> String;
    fn access(&self, repo: &str) -> RepoAccess;
    /// Process id, to read the server's own CPU time from /proc.
    fn pid(&self) -> u32;
    /// Removes a repository's files (between runs, to keep the disk free).
    fn delete_repo(&self, repo: &str) -> Result<()>;
}

/// Starts a server of `kind` in `dir`, allowing the repositories named in `repos`.
pub fn start(kind: ServerKind, dir: &Path, tls: bool, repos: &[String]) -> Result<Box<dyn RepoServer>> {
    match kind {
        ServerKind::RusticServer => Ok(Box::new(RusticServer::start(dir, tls, repos)?)),
        ServerKind::CofreStore => Ok(Box::new(crate::store_server::start(dir, tls)?)),
    }
}

/// A REST server process on 127.0.0.1 with one HTTP user, killed on drop. Each kind of server
/// has its own start-up (see `RusticServer::start`, `store_server::start`).
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) user: &'static str,
    pub(crate) password: String,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) version: String,
}

impl ServerProcess {
    pub(crate) fn base_url(&self) -> String {
        let scheme = if self.ca_file.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

struct RusticServer;

impl RusticServer {
    fn start(dir: &Path, tls: bool, repos: &[String]) -> Result<ServerProcess> {
        let binary = rustic_server_binary()?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("data"))?;
        let version = Command::new(&binary)
            .arg("--version")
            .env_remove("CI")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "rustic-server (version unknown)".to_owned());

        let password = random_hex(16)?;
        let htpasswd = dir.join("htpasswd");
        let out = Command::new(&binary)
            .args(["auth", "add", "-f"])
            .arg(&htpasswd)
            .args(["-u", USER, "-p", &password])
            .env_remove("CI")
            .output()
            .context("running rustic-server auth add")?;
        ensure!(
            out.status.success() && htpasswd.is_file(),
            "rustic-server auth add failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // rustic-server 0.4 serves a user only the repository named like the user or those its
        // ACL grants, and reads the ACL once at start: every repository of the run is listed.
        let mut acl = String::from("# cofre-bench: every repository of this run\n");
        for repo in repos {
            acl.push_str(&format!("[{repo:?}]\n{USER:?} = \"Modify\"\n"));
        }
        fs::write(dir.join("acl.toml"), acl)?;

        let port = free_port()?;
        let mut cmd = Command::new(&binary);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--path")
            .arg(dir.join("data"))
            .arg("--htpasswd-file")
            .arg(&htpasswd)
            // `--acl-path` requires `--private-repos` (repositories are private regardless).
            .arg("--private-repos")
            .arg("--acl-path")
            .arg(dir.join("acl.toml"))
            // With CI set, rustic-server 0.4 shuts itself down 3 s after start.
            .env_remove("CI");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RUSTIC_SERVER_") {
                cmd.env_remove(key);
            }
        }
        let ca_file = if tls {
            let (ca, cert, key) = localhost_certificates()?;
            fs::write(dir.join("ca.pem"), ca)?;
            fs::write(dir.join("server.crt"), cert)?;
            fs::write(dir.join("server.key"), key)?;
            cmd.arg("--tls")
                .arg("--tls-cert")
                .arg(dir.join("server.crt"))
                .arg("--tls-key")
                .arg(dir.join("server.key"));
            Some(dir.join("ca.pem"))
        } else {
            None
        };
        let log = fs::File::create(dir.join("server.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server =
            ServerProcess { child, dir: dir.to_path_buf(), port, user: USER, password, ca_file, version };
        Self::wait_ready(&mut server)?;
        Ok(server)
    }

    /// Polls `/health/live`: rustic-server exits with status 0 on fatal start-up errors, so
    /// neither its exit code nor a fixed sleep says it is ready.
    fn wait_ready(server: &mut ServerProcess) -> Result<()> {
        let mut builder = reqwest_rustic::blocking::Client::builder().timeout(Duration::from_secs(2));
        if let Some(ca) = &server.ca_file {
            let pem = fs::read(ca)?;
            builder = builder.tls_certs_only([reqwest_rustic::Certificate::from_pem(&pem)?]);
        }
        let client = builder.build()?;
        let url = format!("{}/health/live", server.base_url());
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("rustic-server exited during start-up ({status}):\n{}", server.log());
            }
            match client.get(&url).send() {
                Ok(r) if r.status().is_success() => return Ok(()),
                _ if start.elapsed() > START_TIMEOUT => {
                    bail!("rustic-server not ready after {START_TIMEOUT:?}:\n{}", server.log());
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl RepoServer for ServerProcess {
    fn describe(&self) -> String {
        self.version.clone()
    }

    fn transport(&self) -> String {
        if self.ca_file.is_some() {
            "HTTPS on 127.0.0.1 (private CA made for the run, ECDSA P-256)".to_owned()
        } else {
            "plain HTTP on 127.0.0.1".to_owned()
        }
    }

    fn access(&self, repo: &str) -> RepoAccess {
        RepoAccess {
            url: format!("{}/{repo}", self.base_url()),
            user: self.user.to_owned(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            client_identity: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn delete_repo(&self, repo: &str) -> Result<()> {
        let path = self.dir.join("data").join(repo);
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rustic-server` from `PATH`, else `~/.cargo/bin`.
fn rustic_server_binary() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("rustic-server"));
    let cargo_home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/rustic-server"));
    on_path
        .chain(cargo_home)
        .find(|p| p.is_file())
        .context("rustic-server not found on PATH nor in ~/.cargo/bin: cargo install rustic_server --locked")
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost: (CA PEM, cert PEM, key PEM).
pub(crate) fn localhost_certificates() -> Result<(String, String, String)> {
    let dn = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("cofre-bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name = dn("localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}
