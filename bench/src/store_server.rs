//! cofre-store as the benchmark's REST server: the `cofre-store` binary next to this one,
//! serving its data dir to one htpasswd user with full rights (what a restic or Backrest client
//! migrating to Cofre uses), over plain HTTP on loopback or HTTPS from a CA made for the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::server::{ServerProcess, free_port, localhost_certificates, random_hex};

const USER: &str = "bench";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `cofre-store` beside the running binary (same profile), else on `PATH`.
fn binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()?.parent().map(|d| d.join("cofre-store"));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("cofre-store")).collect::<Vec<_>>())
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| p.is_file()).context(
        "cofre-store not found beside cofre-bench nor on PATH: cargo build --release -p cofre-bench -p cofre-store",
    )
}

/// Starts cofre-store in `dir` and waits until it accepts connections (it binds only after its
/// start-up scan).
pub fn start(dir: &Path, tls: bool) -> Result<ServerProcess> {
    let binary = binary()?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("data"))?;
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "cofre-store (version unknown)".to_owned());
    let password = random_hex(16)?;
    // Cost 4: the store caches verified passwords, so this only shortens the first request.
    let hash = bcrypt::hash(&password, 4)?;
    fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n"))?;
    let port = free_port()?;
    let mut config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\nstate_dir = {:?}\nhtpasswd_file = {:?}\n",
        dir.join("data"),
        dir.join("state"),
        dir.join("htpasswd"),
    );
    let ca_file = if tls {
        let (ca, cert, key) = localhost_certificates()?;
        fs::write(dir.join("ca.pem"), ca)?;
        fs::write(dir.join("server.crt"), cert)?;
        fs::write(dir.join("server.key"), key)?;
        config.push_str(&format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            dir.join("server.crt"),
            dir.join("server.key")
        ));
        Some(dir.join("ca.pem"))
    } else {
        config.push_str("allow_plain_http = true\n");
        None
    };
    config.push_str(&format!(
        "[log]\nfilter = \"warn\"\n[[users]]\nname = \"{USER}\"\nmode = \"full\"\nrepositories = [\"*\"]\n"
    ));
    fs::write(dir.join("store.toml"), config)?;
    let log = fs::File::create(dir.join("server.log"))?;
    let child = Command::new(&binary)
        .arg("--config")
        .arg(dir.join("store.toml"))
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut server =
        ServerProcess { child, dir: dir.to_path_buf(), port, user: USER, password, ca_file, version };
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("cofre-store exited during start-up ({status}):\n{}", server.log());
        }
        if std::net::TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
            return Ok(server);
        }
        if start.elapsed() > START_TIMEOUT {
            bail!("cofre-store not ready after {START_TIMEOUT:?}:\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
