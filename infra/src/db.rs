//! The Postgres pool, database creation and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgPool};
use thiserror::Error;

/// The migrations of `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Why the database could not be prepared.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    BadUrl(String),
    #[error(
        "cannot reach PostgreSQL at {target}: {source}. Start it (on this project's machines: \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or set DATABASE_URL."
    )]
    Unreachable { target: String, source: sqlx::Error },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The connect options of `url`. A server on this machine (loopback address, `localhost` or a
/// Unix socket) is reached without TLS unless `sslmode` is given (in the URL or `PGSSLMODE`):
/// encrypting traffic that never leaves the machine costs CPU on both ends of every round trip
/// (a quarter of Postgres's own CPU on the write path, measured) and protects nothing.
fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    if names_ssl_mode(url) || std::env::var_os("PGSSLMODE").is_some() || !is_local(&opts) {
        return Ok(opts);
    }
    Ok(opts.ssl_mode(PgSslMode::Disable))
}

/// Whether the URL's query sets `sslmode` (or sqlx's spelling, `ssl-mode`).
fn names_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            let pair = pair.to_ascii_lowercase();
            pair.starts_with("sslmode=") || pair.starts_with("ssl-mode=")
        })
    })
}

/// Whether the server is on this machine.
fn is_local(opts: &PgConnectOptions) -> bool {
    let host = opts.get_host();
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("(default)")
    )
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres` for that).
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let opts = options(url)?;
    let Some(name) = opts.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = admin
        .connect()
        .await
        .map_err(|source| DbError::Unreachable {
            target: describe(&opts),
            source,
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match sqlx::query(&format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Someone else created it meanwhile (42P04 duplicate_database): fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// How the pool waits for Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503: short, so that a
    /// Postgres outage is reported at once rather than after every caller queued.
    pub acquire_timeout: Duration,
    /// `statement_timeout` of every connection (zero: none). Bulk work that legitimately runs
    /// longer lifts it for its own transaction ([`without_statement_timeout`]).
    pub statement_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// How long a pooled connection may have sat unused before it is checked (one round trip) when
/// it is taken again: a connection that idle may have been closed by the server meanwhile (a
/// restart, `idle_session_timeout`, a middlebox); the check replaces it unseen. sqlx checks every
/// connection it hands out by default, which cost a command about three round trips of its
/// dozen. A connection in steady use is not checked: should the server end it, the next statement
/// on it fails as Postgres being unavailable (503) and the connection is discarded.
pub const CHECK_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens a pool on `url`, failing fast (with what to do) if Postgres cannot be reached.
pub async fn connect(url: &str, limits: PoolLimits) -> Result<PgPool, DbError> {
    let mut opts = options(url)?;
    let target = describe(&opts);
    if !limits.statement_timeout.is_zero() {
        opts = opts.options([(
            "statement_timeout",
            format!("{}ms", limits.statement_timeout.as_millis()),
        )]);
    }
    PgPoolOptions::new()
        .max_connections(limits.max_connections)
        .acquire_timeout(limits.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| DbError::Unreachable { target, source })
}

/// Lifts the pool's statement timeout for the rest of the transaction `tx` runs in: bulk reads
/// and writes that legitimately take long (the clinical index, data generation, exports, a
/// cohort's patient list, migrations).
pub async fn without_statement_timeout(tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(tx)
        .await
        .map(|_| ())
}

/// Applies the pending migrations (on a connection without statement timeout: an index on a
/// large table may take a while).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    // Back to the pool's setting before the connection is reused.
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        options(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn a_server_on_this_machine_is_reached_without_tls_unless_sslmode_is_given() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return; // the environment decides, as it should
        }
        let cases = [
            ("postgres://u@127.0.0.1:5432/db", "Disable"),
            ("postgres://u@localhost/db", "Disable"),
            ("postgres://u@[::1]:5432/db", "Disable"),
            ("postgres://u@localhost/db?sslmode=require", "Require"),
            (
                "postgres://u@127.0.0.1/db?application_name=x&ssl-mode=prefer",
                "Prefer",
            ),
            // Elsewhere, sqlx's default (prefer) stands.
            ("postgres://u@db.example.org/db", "Prefer"),
            ("postgres://u@10.0.0.5/db", "Prefer"),
        ];
        for (url, expected) in cases {
            assert_eq!(format!("{:?}", mode(url)), expected, "{url}");
        }
    }
}
