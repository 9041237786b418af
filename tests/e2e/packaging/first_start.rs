//! The documented first start of the controller, with the units' command lines and environment:
//! the roles from the compose init script (whose SQL docs/install.md shows), `migrate` as the
//! schema owner with the key in a stand-in credentials directory, then `serve` as cofre_serve
//! until `/readyz` answers, against a real PostgreSQL.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use super::systemd::{etc_source, unit_entries, unit_values};
use super::{deploy, read};
use crate::harness::pg::{PgCluster, random_secret};
use crate::harness::procs::{Proc, free_port, workspace_bin, workspace_root};

/// What the administrator fills into the example files: the passwords where they say
/// CHANGE-ME, the database server instead of localhost:5432, and settings (as variables,
/// which win over controller.toml) for this machine's free ports.
struct AdminEdits {
    passwords: BTreeMap<&'static str, String>,
    database: String,
    settings: BTreeMap<&'static str, String>,
}

/// The command a unit's ExecStart runs, with its environment as systemd would give it:
/// `Environment=` (%d: the credentials directory, %C: the cache root), then the
/// `EnvironmentFile=`s from the examples (which win), edited as `admin` says.
fn unit_command(unit: &str, creds: &Path, admin: &AdminEdits) -> Result<(Command, BTreeMap<String, String>)> {
    let entries = unit_entries(&read(&deploy(&format!("systemd/{unit}"))));
    let cache = creds.with_file_name("cache");
    let mut env = BTreeMap::new();
    for assignment in unit_values(&entries, "Environment") {
        let (k, v) = assignment.split_once('=').context("Environment=K=V")?;
        let v = v.replace("%d", &creds.display().to_string()).replace("%C", &cache.display().to_string());
        env.insert(k.to_owned(), v);
    }
    for file in unit_values(&entries, "EnvironmentFile") {
        let source = etc_source(file.trim_start_matches('-')).context("example env file")?;
        for line in read(&source).lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=').context("KEY=VALUE")?;
            let mut v = v.replace("localhost:5432", &admin.database);
            if let Some(password) = admin.passwords.get(k) {
                v = v.replace("CHANGE-ME", password);
            }
            env.insert(k.to_owned(), v);
        }
    }
    env.extend(admin.settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let exec: Vec<&str> = unit_values(&entries, "ExecStart")[0].split_whitespace().collect();
    let mut cmd = Command::new(workspace_bin(exec[0].rsplit('/').next().context("binary")?));
    for arg in &exec[1..] {
        match etc_source(arg) {
            Some(local) => cmd.arg(local),
            None => cmd.arg(arg),
        };
    }
    cmd.env_clear().envs(&env);
    Ok((cmd, env))
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn packaging_first_start_creates_roles_migrates_as_owner_and_serves_as_app_role() -> Result<()> {
    let pg = PgCluster::start()?;
    let (owner_password, app_password) = (random_secret(), random_secret());
    // 1. The roles, with the script the postgres image runs (docs/install.md shows its SQL).
    let script = deploy("compose/initdb/10-cofre-roles.sh");
    let sql = read(&script);
    let docs = read(&workspace_root().join("docs/install.md"));
    for statement in sql.lines().filter(|l| l.starts_with("create ")) {
        ensure!(docs.contains(statement), "docs/install.md lacks the script's `{statement}`");
    }
    let out = Command::new("sh")
        .arg(&script)
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", "postgres")
        .env("PGHOST", pg.dir())
        .env("PGPORT", pg.port().to_string())
        .env("COFRE_DB_OWNER_PASSWORD", &owner_password)
        .env("COFRE_DB_APP_PASSWORD", &app_password)
        .env_remove("PGPASSWORD")
        .output()?;
    ensure!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    // 2. The master key where LoadCredential= puts it (systemd 252 on Debian 12: 0400, the unit's user).
    let tmp = tempfile::tempdir()?;
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds)?;
    let key = creds.join("master.key");
    let made =
        Command::new(workspace_bin("cofre-controller")).arg("generate-master-key").arg(&key).output()?;
    ensure!(made.status.success(), "generate-master-key: {}", String::from_utf8_lossy(&made.stderr));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))?;
    // 3. What the administrator puts into the example files.
    let (http, grpc) = (free_port(), free_port());
    let admin = AdminEdits {
        passwords: BTreeMap::from([
            ("COFRE_DATABASE__OWNER_URL", owner_password),
            ("COFRE_DATABASE__URL", app_password),
        ]),
        database: format!("127.0.0.1:{}", pg.port()),
        settings: BTreeMap::from([
            ("COFRE_HTTP__LISTEN", format!("127.0.0.1:{http}")),
            ("COFRE_GRPC__LISTEN", format!("127.0.0.1:{grpc}")),
            ("COFRE_GRPC__PUBLIC_URL", format!("https://localhost:{grpc}")),
            ("COFRE_AUDIT__CHECKPOINT_FILE", tmp.path().join("checkpoints.jsonl").display().to_string()),
        ]),
    };
    let (mut migrate, _) = unit_command("cofre-controller-migrate.service", &creds, &admin)?;
    let out = migrate.output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && said.contains("Schema is current"), "migrate: {said}");
    // 4. serve, as cofre-controller.service runs it: without the owner's URL.
    let (serve, env) = unit_command("cofre-controller.service", &creds, &admin)?;
    ensure!(!env.contains_key("COFRE_DATABASE__OWNER_URL"), "serve would hold the owner's password");
    let mut proc = Proc::spawn("controller", serve, tmp.path())?;
    // Polls /readyz; a serve that exits fails at once (wait_until would retry to its timeout).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let answer = loop {
        ensure!(proc.is_running(), "serve exited:\n{}", proc.log());
        match http_get(http, "/readyz") {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => break answer,
            other => {
                ensure!(std::time::Instant::now() < deadline, "not ready in 60 s: {other:?}\n{}", proc.log());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(answer.ends_with("ready"), "{answer}");
    ensure!(!proc.log().contains("connected as the schema owner"), "{}", proc.log());
    let owner = pg.psql("cofre", "select tableowner from pg_tables where tablename = 'audit_events'")?;
    ensure!(owner == "cofre_owner", "audit_events is owned by {owner}");
    println!("first start: roles from the init script, migrate as cofre_owner, serve as cofre_serve: ready");
    Ok(())
}
