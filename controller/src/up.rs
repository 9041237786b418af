//! `up`: the all-in-one local start. On first run it creates a data dir with a master key
//! (0600) and its own PostgreSQL cluster (initdb/pg_ctl from PATH or Debian's
//! /usr/lib/postgresql/*/bin, run as the `postgres` user when started as root), migrates, and
//! serves; it prints where to log in, the first admin's password (first run only), where the
//! master key is, and a ready-to-paste enrollment command. Ctrl-C stops everything it started,
//! PostgreSQL included; a second `up` reuses the same data.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::config::Settings;
use crate::seal::MasterKey;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where Cofre keeps its master key, PostgreSQL cluster and settings. Default:
    /// /var/lib/cofre as root, else ~/.local/share/cofre.
    #[arg(long, env = "COFRE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// What `up` remembers between runs (mode 0600: holds database passwords).
#[derive(Serialize, Deserialize)]
struct UpState {
    pg_port: u16,
    superuser_password: String,
    owner_password: String,
    app_password: String,
}

fn default_data_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/cofre");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cofre")
}

fn find_pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.pop().with_context(|| {
        format!("{name} not found: install PostgreSQL (Debian: apt-get install postgresql) or put its bin directory on PATH")
    })
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (postgres refuses root).
/// The master key never reaches it (nor the server it starts).
fn pg_command(bin: &Path) -> Command {
    let mut c = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    c.env_remove("COFRE_MASTER_KEY");
    c
}

/// As root, PostgreSQL runs as the `postgres` user, which must be able to reach `dir`: names
/// the first directory on the way that it cannot enter (say, a private 0700 temp directory)
/// instead of letting initdb fail with a bare "Permission denied".
fn check_postgres_reaches(dir: &Path) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    let enters = |d: &Path| {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(d)
            .env_remove("COFRE_MASTER_KEY")
            .status()
            .is_ok_and(|s| s.success())
    };
    if enters(dir) {
        return Ok(());
    }
    let blocked = dir.ancestors().collect::<Vec<_>>().into_iter().rev().find(|d| !enters(d)).unwrap_or(dir);
    bail!(
        "PostgreSQL runs as the postgres user, which cannot enter {} (on the way to the data directory {}): \
         choose a data directory others may traverse (e.g. the default /var/lib/cofre), or allow it with \
         `chmod o+x {}`",
        blocked.display(),
        dir.display(),
        blocked.display()
    )
}

fn run_checked(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    if nix::unistd::Uid::effective().is_root() {
        let user = nix::unistd::User::from_name("postgres")?
            .context("the postgres user does not exist: install PostgreSQL (apt-get install postgresql)")?;
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Postgres {
    pg_ctl: PathBuf,
    data: PathBuf,
}

impl Postgres {
    fn stop(&self) {
        let mut c = pg_command(&self.pg_ctl);
        c.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]);
        match c.output() {
            Ok(o) if o.status.success() => println!("PostgreSQL stopped."),
            Ok(o) => eprintln!("pg_ctl stop: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("pg_ctl stop: {e}"),
        }
    }
}

fn start_postgres(dir: &Path, st: &UpState) -> anyhow::Result<Postgres> {
    let initdb = find_pg_bin("initdb")?;
    let pg_ctl = find_pg_bin("pg_ctl")?;
    check_postgres_reaches(dir)?;
    let data = dir.join("postgres");
    let sock = dir.join("pg-socket");
    std::fs::create_dir_all(&sock)?;
    chown_postgres(&sock)?;
    if !data.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&data)?;
        chown_postgres(&data)?;
        let pwfile = dir.join("pg-superuser.tmp");
        write_private(&pwfile, st.superuser_password.as_bytes())?;
        chown_postgres(&pwfile)?;
        let mut c = pg_command(&initdb);
        c.arg("-D").arg(&data).args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8", "--locale=C"]);
        c.arg(format!("--pwfile={}", pwfile.display()));
        let r = run_checked(c, "initdb");
        let _ = std::fs::remove_file(&pwfile);
        r?;
    }
    let mut c = pg_command(&pg_ctl);
    c.arg("-D").arg(&data).arg("-l").arg(data.join("server.log")).args(["-w", "-t", "60"]);
    c.arg("-o").arg(format!("-c listen_addresses=127.0.0.1 -p {} -k {}", st.pg_port, sock.display()));
    c.arg("start");
    run_checked(c, "pg_ctl start").with_context(|| format!("see {}", data.join("server.log").display()))?;
    Ok(Postgres { pg_ctl, data })
}

fn url(user: &str, password: &str, port: u16, db: &str) -> SecretString {
    SecretString::from(format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}"))
}

/// The superuser's connection, whose statements (role passwords inlined: CREATE ROLE takes no
/// parameters) are never logged.
async fn superuser(st: &UpState, db: &str) -> anyhow::Result<sqlx::PgPool> {
    crate::db::connect_logged(&url("postgres", &st.superuser_password, st.pg_port, db), 2, false).await
}

async fn prepare_database(st: &UpState) -> anyhow::Result<()> {
    let admin = superuser(st, "postgres").await?;
    let role: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = 'cofre_owner')")
            .fetch_one(&admin)
            .await?;
    if !role {
        // Passwords are hex we generated, safe to inline (CREATE ROLE takes no parameters).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create role cofre_owner login createrole password '{}'",
            st.owner_password
        )))
        .execute(&admin)
        .await?;
    }
    let db: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = 'cofre')")
        .fetch_one(&admin)
        .await?;
    if !db {
        sqlx::query("create database cofre owner cofre_owner").execute(&admin).await?;
    }
    admin.close().await;
    Ok(())
}

async fn prepare_app_role(st: &UpState) -> anyhow::Result<()> {
    let admin = superuser(st, "cofre").await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = 'cofre_serve')")
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create role cofre_serve login password '{}' in role cofre_app",
            st.app_password
        )))
        .execute(&admin)
        .await?;
    }
    admin.close().await;
    Ok(())
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

pub async fn run(
    mut settings: Settings,
    args: UpArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    }
    let state_file = dir.join("up.json");
    let key_file = dir.join("master.key");
    let first = !state_file.exists();
    let st: UpState = if first {
        let st = UpState {
            pg_port: free_port()?,
            superuser_password: random_hex(),
            owner_password: random_hex(),
            app_password: random_hex(),
        };
        if !key_file.exists() {
            MasterKey::generate().write_new_file(&key_file)?;
        }
        write_private(&state_file, &serde_json::to_vec_pretty(&st)?)?;
        st
    } else {
        serde_json::from_slice(&std::fs::read(&state_file)?)
            .with_context(|| format!("{} is corrupt", state_file.display()))?
    };
    let pg = start_postgres(&dir, &st)?;
    let result = async {
        prepare_database(&st).await?;
        settings.keys.master_key_file = Some(key_file.clone());
        if settings.audit.checkpoint_file.is_none() {
            settings.audit.checkpoint_file = Some(dir.join("audit-checkpoints.jsonl"));
        }
        settings.database.owner_url = Some(url("cofre_owner", &st.owner_password, st.pg_port, "cofre"));
        settings.database.url = Some(url("cofre_serve", &st.app_password, st.pg_port, "cofre"));
        crate::serve::migrate(&settings).await?;
        prepare_app_role(&st).await?;
        let (started, fut) = crate::serve::start(settings.clone(), shutdown).await?;
        println!();
        println!("Cofre is running.");
        println!("  Portal:          http://{}/   (log in as admin)", started.http);
        println!(
            "  REST API:        http://{}/api/v1   (health: http://{}/healthz)",
            started.http, started.http
        );
        println!("  Agents connect:  {}", settings.grpc.public_url);
        match &started.first_admin {
            Some((user, Some(pw))) => {
                println!("  Admin login:     user {user}, password {pw}   (shown only now: store it)");
            }
            Some((user, None)) => println!("  Admin login:     user {user}, the configured password"),
            None => println!(
                "  Admin login:     user {} (password shown on the first run)",
                settings.admin.username
            ),
        }
        println!("  Master key:      {}", key_file.display());
        println!(
            "                   BACK IT UP: without it the repository passwords in the database are lost."
        );
        println!("  Data directory:  {}", dir.display());
        println!();
        // One enrollment token on the first run; later runs do not mint a new one each start.
        if first {
            let token = crate::enrollment::create_token(
                &started.state.pool,
                &Actor::System,
                &started.state.ca,
                &settings.enrollment,
                crate::enrollment::NewToken {
                    description: "printed by cofre-controller up".into(),
                    group_id: None,
                    uses: Some(1),
                    ttl_seconds: None,
                    requires_approval: false,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot create an enrollment token: {e}"))?;
            println!("Enroll an agent on this machine (token valid 24 h, one use):");
            // Name the agent binary by its full path when it sits beside this one (a build tree).
            let agent = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("cofre-agent")))
                .filter(|p| p.is_file())
                .map_or_else(|| "cofre-agent".to_string(), |p| p.display().to_string());
            println!("  {agent} enroll --controller {} --token {}", settings.grpc.public_url, token.token);
            // The same token as a service install on any machine that reaches this controller.
            if let Ok(Some(sha256)) = crate::install::agent_sha256().await {
                let api = format!("http://{}", started.http);
                match crate::install::install_line(&api, &settings, &token.token, &sha256) {
                    Ok(line) => {
                        println!(
                            "or install the agent as a service (script and binary downloaded from here, their \
                             SHA-256 checked; one use):"
                        );
                        println!("  {line}");
                    }
                    Err(e) => println!("(no install line: {e:#})"),
                }
            }
            println!();
        } else {
            println!("Enroll an agent: create a token with `cofre enrollment-token create`, then");
            println!("  cofre-agent enroll --controller {} --token <token>", settings.grpc.public_url);
            println!();
        }
        println!("Press Ctrl-C to stop Cofre and its PostgreSQL.");
        fut.await
    }
    .await;
    pg.stop();
    result
}
