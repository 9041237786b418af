//! A throwaway PostgreSQL 15 cluster per test, plus databases with the production role layout.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, bail, ensure};
use nix::unistd::{User, chown};
use rand::Rng as _;
use tempfile::TempDir;

use super::procs::{free_port, read_lossy, tail};

/// The NOLOGIN group role that the application's login roles are members of; migrations grant
/// table privileges to it.
pub const APP_GROUP_ROLE: &str = "cofre_app";

/// How many times `start` picks a new port when the server cannot bind (another process took
/// the port between `free_port` and the server's bind).
const START_ATTEMPTS: u32 = 3;

/// A PostgreSQL cluster in a temp dir, running as the `postgres` user on 127.0.0.1.
///
/// TCP connections need a password (scram-sha-256), like production; the harness itself talks
/// to the server as superuser over the Unix socket in the temp dir. Dropping it stops the
/// server immediately and removes the directory.
pub struct PgCluster {
    dir: TempDir,
    port: u16,
    superuser_password: String,
}

/// A database created by [`PgCluster::create_database`], with its two login roles.
#[derive(Debug, Clone)]
pub struct PgDatabase {
    pub name: String,
    /// Owns the database and runs migrations (LOGIN, CREATEROLE).
    pub owner_user: String,
    pub owner_password: String,
    /// `postgres://owner:…@127.0.0.1:port/db`
    pub owner_url: String,
    /// The application's login role, member of [`APP_GROUP_ROLE`].
    pub app_user: String,
    pub app_password: String,
    /// `postgres://…_app:…@127.0.0.1:port/db`
    pub app_url: String,
}

impl PgCluster {
    /// `initdb` + `pg_ctl start` as the `postgres` user; returns once the server accepts
    /// connections. Errors carry the server log.
    pub fn start() -> Result<PgCluster> {
        let postgres = User::from_name("postgres")?
            .context("no `postgres` system user: install PostgreSQL 15 (apt-get install postgresql)")?;
        let dir = tempfile::Builder::new().prefix("cofre-pg-").tempdir()?;
        chown(dir.path(), Some(postgres.uid), Some(postgres.gid))
            .with_context(|| format!("chown postgres {}", dir.path().display()))?;

        let superuser_password = random_secret();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{superuser_password}\n"))?;
        chown(&pwfile, Some(postgres.uid), Some(postgres.gid))?;

        let data = dir.path().join("data");
        run_as_postgres(Command::new(pg_bin("initdb")?).args([
            "-D".as_ref(),
            data.as_os_str(),
            "-U".as_ref(),
            "postgres".as_ref(),
            format!("--pwfile={}", pwfile.display()).as_ref(),
            "--auth-local=trust".as_ref(),
            "--auth-host=scram-sha-256".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
            "--no-sync".as_ref(),
        ]))
        .context("initdb failed")?;

        let mut attempt = 0;
        let port = loop {
            attempt += 1;
            let port = free_port();
            let log_path = dir.path().join("server.log");
            let _ = std::fs::remove_file(&log_path);
            match pg_ctl_start(dir.path(), port) {
                Ok(()) => break port,
                // Only a lost race for the port is worth another try.
                Err(_) if attempt < START_ATTEMPTS && read_lossy(&log_path).contains("could not bind") => {}
                Err(err) => {
                    // A server that came up after pg_ctl gave up must not outlive the test.
                    let _ = pg_ctl_stop(dir.path());
                    return Err(err);
                }
            }
        };
        let cluster = PgCluster { dir, port, superuser_password };
        // `pg_ctl -w` already waited for readiness; one query proves the socket works for us.
        cluster.psql("postgres", "select 1").with_context(|| {
            format!(
                "server started but psql cannot connect\n--- server log ---\n{}",
                tail(&cluster.log(), 8000)
            )
        })?;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server, keeping its data. A fast shutdown, not an immediate one: this test
    /// cluster runs without fsync, so an immediate stop would lose committed transactions that
    /// a real server (with fsync) keeps through a crash.
    pub fn stop_server(&self) -> Result<()> {
        run_as_postgres(Command::new(pg_bin("pg_ctl")?).args([
            "-D".as_ref(),
            self.dir.path().join("data").as_os_str(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "30".as_ref(),
            "stop".as_ref(),
        ]))
    }

    /// Starts the stopped server again on the same port.
    pub fn start_server(&self) -> Result<()> {
        pg_ctl_start(self.dir.path(), self.port)
    }

    /// Superuser URL for `db` over TCP.
    pub fn admin_url(&self, db: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{db}", self.superuser_password, self.port)
    }

    /// The temp dir: holds the data dir, the server log and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Runs SQL as superuser over the Unix socket and returns psql's unaligned, tuples-only
    /// output. Statements stop at the first error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let output = Command::new(pg_bin("psql")?)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .output()
            .context("running psql (is postgresql-client installed?)")?;
        check_output(&output).with_context(|| format!("psql -d {db} -c {sql:?}"))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `pg_dump` of database `db` as the superuser (plain SQL), for tests that search it.
    pub fn dump(&self, db: &str) -> Result<String> {
        let output = Command::new(pg_bin("pg_dump")?)
            .args(["-U", "postgres", "--no-owner"])
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(db)
            .env_remove("PGPASSWORD")
            .output()
            .context("running pg_dump")?;
        check_output(&output).with_context(|| format!("pg_dump {db}"))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates database `name` owned by a new login role `<name>_owner` (CREATEROLE, so
    /// migrations may create [`APP_GROUP_ROLE`]) and a login role `<name>_app` that is a member
    /// of [`APP_GROUP_ROLE`] (created NOLOGIN if missing), the way production is set up.
    pub fn create_database(&self, name: &str) -> Result<PgDatabase> {
        ensure!(
            !name.is_empty()
                && name.len() <= 50
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit(),
            "database name {name:?}: use lowercase letters, digits and _ (max 50)"
        );
        let owner_user = format!("{name}_owner");
        let owner_password = random_secret();
        let app_user = format!("{name}_app");
        let app_password = random_secret();
        // Passwords are hex, names are validated above: no quoting issues in this SQL.
        self.psql(
            "postgres",
            &format!("CREATE ROLE {owner_user} LOGIN CREATEROLE PASSWORD '{owner_password}'"),
        )?;
        // A separate call: psql runs a multi-statement -c in one transaction, and CREATE
        // DATABASE refuses to run inside one.
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {owner_user}"))?;
        self.psql(
            "postgres",
            &format!(
                "DO $$ BEGIN\n\
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_GROUP_ROLE}') THEN\n\
                     CREATE ROLE {APP_GROUP_ROLE} NOLOGIN;\n\
                   END IF;\n\
                 END $$;\n\
                 CREATE ROLE {app_user} LOGIN PASSWORD '{app_password}';\n\
                 GRANT {APP_GROUP_ROLE} TO {app_user};"
            ),
        )?;
        let url = |user: &str, password: &str| {
            format!("postgres://{user}:{password}@127.0.0.1:{}/{name}", self.port)
        };
        Ok(PgDatabase {
            name: name.to_owned(),
            owner_url: url(&owner_user, &owner_password),
            app_url: url(&app_user, &app_password),
            owner_user,
            owner_password,
            app_user,
            app_password,
        })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(err) = pg_ctl_stop(self.dir.path()) {
            eprintln!("cofre-e2e: stopping PostgreSQL in {} failed: {err:#}", self.dir.path().display());
        }
    }
}

fn pg_ctl_start(dir: &Path, port: u16) -> Result<()> {
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200",
        dir.display()
    );
    let log_path = dir.join("server.log");
    let result = run_as_postgres(Command::new(pg_bin("pg_ctl")?).args([
        "-D".as_ref(),
        dir.join("data").as_os_str(),
        "-l".as_ref(),
        log_path.as_os_str(),
        "-w".as_ref(),
        "-t".as_ref(),
        "30".as_ref(),
        "-o".as_ref(),
        options.as_ref(),
        "start".as_ref(),
    ]));
    result.with_context(|| {
        format!("pg_ctl start failed\n--- server log ---\n{}", tail(&read_lossy(&log_path), 8000))
    })
}

/// A PostgreSQL program: from `PATH`, else from the newest `/usr/lib/postgresql/<major>/bin`
/// (Debian installs the server programs there, off `PATH`).
pub fn pg_bin(name: &str) -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(found) = on_path.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin").join(name)))
        })
        .filter(|(_, path)| path.is_file())
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, path)| path).with_context(|| {
        format!("`{name}` is neither on PATH nor in /usr/lib/postgresql/*/bin: apt-get install postgresql")
    })
}

fn pg_ctl_stop(dir: &Path) -> Result<()> {
    run_as_postgres(Command::new(pg_bin("pg_ctl")?).args([
        "-D".as_ref(),
        dir.join("data").as_os_str(),
        "-m".as_ref(),
        "immediate".as_ref(),
        "-w".as_ref(),
        "-t".as_ref(),
        "20".as_ref(),
        "stop".as_ref(),
    ]))
}

fn run_as_postgres(cmd: &mut Command) -> Result<()> {
    let mut full = Command::new("runuser");
    full.args(["-u", "postgres", "--"]).arg(cmd.get_program());
    full.args(cmd.get_args());
    // postgres resolves relative paths against its cwd, which must be readable by it.
    full.current_dir("/");
    let output = full.output().with_context(|| format!("running {full:?}"))?;
    check_output(&output).with_context(|| format!("{full:?}"))
}

fn check_output(output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        tail(&String::from_utf8_lossy(&output.stdout), 4000),
        tail(&String::from_utf8_lossy(&output.stderr), 4000)
    )
}

/// 32 hex characters: safe inside URLs and SQL literals without escaping.
pub fn random_secret() -> String {
    hex::encode(rand::thread_rng().r#gen::<[u8; 16]>())
}
