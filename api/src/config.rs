//! Configuration: environment variables (or flags), parsed once at startup.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of the service. Every field is documented in `--help` and in the README.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/cohort360"
    )]
    pub database_url: String,

    /// Maximum connections of the Postgres pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,

    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// First token of every published subject.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "cohort360")]
    pub nats_subject_prefix: String,

    /// JetStream stream that keeps the events.
    #[arg(long, env = "NATS_STREAM", default_value = "COHORT360_EVENTS")]
    pub nats_stream: String,

    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8000")]
    pub listen_addr: SocketAddr,

    /// HS256 key of the bearer JWTs. If unset, a random key is drawn (tokens die with the process).
    #[arg(long, env = "JWT_SIGNING_KEY", hide_env_values = true)]
    pub jwt_signing_key: Option<String>,

    /// How long a command waits for the read models to apply its events before answering.
    #[arg(long, env = "READ_YOUR_WRITES_TIMEOUT_MS", default_value_t = 5000)]
    pub read_your_writes_timeout_ms: u64,

    /// How often projectors check the event table when NATS brings nothing.
    #[arg(long, env = "PROJECTOR_POLL_MS", default_value_t = 500)]
    pub projector_poll_ms: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }

    pub fn projector_poll_interval(&self) -> Duration {
        Duration::from_millis(self.projector_poll_ms.max(10))
    }
}
