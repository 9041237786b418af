//! Database plumbing: pools, the embedded migrations, and the schema-currency check `serve`
//! runs before accepting anything.

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Advisory lock keys (transaction- or session-scoped), one per kind of singleton work.
pub mod locks {
    pub const MIGRATE: i64 = 0x636f_6672_6501;
    pub const AUDIT_CHAIN: i64 = 0x636f_6672_6502;
    pub const FIRST_ADMIN: i64 = 0x636f_6672_6503;
    pub const PROVISIONER: i64 = 0x636f_6672_6504;
    pub const COMPLIANCE: i64 = 0x636f_6672_6505;
}

pub async fn connect(url: &secrecy::SecretString, max: u32) -> anyhow::Result<PgPool> {
    connect_logged(url, max, true).await
}

/// [`connect`]; with `log_statements` false, sqlx never logs the statements this pool runs
/// (for the ones that must inline a secret: `CREATE ROLE … PASSWORD` takes no parameters).
pub async fn connect_logged(
    url: &secrecy::SecretString,
    max: u32,
    log_statements: bool,
) -> anyhow::Result<PgPool> {
    use sqlx::ConnectOptions as _;
    let options: sqlx::postgres::PgConnectOptions =
        url.expose_secret().parse().map_err(|e| anyhow::anyhow!("invalid PostgreSQL URL: {e}"))?;
    let options = if log_statements { options } else { options.disable_statement_logging() };
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
    Ok(pool)
}

/// Refuses to go on unless every embedded migration is applied and no unknown one is.
pub async fn check_schema_current(pool: &PgPool) -> anyhow::Result<()> {
    let applied: Vec<(i64, bool)> =
        match sqlx::query_as("select version, success from _sqlx_migrations order by version")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                anyhow::bail!("the database has no Cofre schema yet: run `cofre-controller migrate` first")
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read the schema version: {e}")),
        };
    let known: Vec<i64> =
        MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect();
    for (v, ok) in &applied {
        if !ok {
            anyhow::bail!("migration {v} failed half-way: fix it and run `cofre-controller migrate`");
        }
        if !known.contains(v) {
            anyhow::bail!(
                "the database schema has migration {v}, which this controller does not know: \
                 it is older than the database; upgrade the controller"
            );
        }
    }
    let missing: Vec<_> = known.iter().filter(|v| !applied.iter().any(|(a, _)| a == *v)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the database schema is not current (missing migrations {missing:?}): \
             run `cofre-controller migrate`"
        );
    }
    Ok(())
}

/// Applies the migrations under a session advisory lock, so concurrent `migrate` runs queue.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("select pg_advisory_lock($1)").bind(locks::MIGRATE).execute(&mut *conn).await?;
    let res = MIGRATOR.run(&mut *conn).await;
    sqlx::query("select pg_advisory_unlock($1)").bind(locks::MIGRATE).execute(&mut *conn).await?;
    res.map_err(|e| anyhow::anyhow!("migration failed: {e}"))
}

/// True when the connected role owns the schema's tables: `serve` should use the app role.
pub async fn connected_as_owner(pool: &PgPool) -> anyhow::Result<bool> {
    let owner: Option<bool> = sqlx::query_scalar(
        "select tableowner = current_user from pg_tables where schemaname = 'public' and tablename = 'audit_events'",
    )
    .fetch_optional(pool)
    .await?;
    Ok(owner.unwrap_or(false))
}
