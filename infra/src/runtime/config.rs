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

    /// How long a request waits for a Postgres connection before it is answered 503, in ms.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 1000)]
    pub database_acquire_timeout_ms: u64,

    /// `statement_timeout` of the pool's connections, in ms (0: none); bulk work (exports, the
    /// clinical index and data, migrations) is exempt.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub database_statement_timeout_ms: u64,

    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// First token of every published subject.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "cohort360")]
    pub nats_subject_prefix: String,

    /// JetStream stream that keeps the events.
    #[arg(long, env = "NATS_STREAM", default_value = "COHORT360_EVENTS")]
    pub nats_stream: String,

    #[command(flatten)]
    pub nats_tls: NatsTlsArgs,

    /// PEM file of CA certificates trusted beside the system's for outbound HTTPS (OIDC, the
    /// identity service, the QueryExecutor, the Export and Hadoop APIs, WebHDFS) and SMTP.
    #[arg(long, env = "TLS_CA_FILE")]
    pub tls_ca_file: Option<std::path::PathBuf>,

    /// A relay, projector or reactor letting events wait longer than this many seconds makes
    /// `/health/ready` say `degraded`, with the cause.
    #[arg(long, env = "PIPELINE_STALL_SECONDS", default_value_t = 30)]
    pub pipeline_stall_seconds: u64,

    /// Hours an `Idempotency-Key` and its answer are kept (24 at least).
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION_HOURS", default_value_t = 24)]
    pub idempotency_key_retention_hours: u64,

    /// Days request logs (`/logs/`) are kept.
    #[arg(long, env = "REQUEST_LOG_RETENTION_DAYS", default_value_t = 90)]
    pub request_log_retention_days: i64,

    /// Bearer token Prometheus must send to read `/metrics` (open when unset).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

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

    #[command(flatten)]
    pub identity: IdentitySettings,

    #[command(flatten)]
    pub cohorts: CohortArgs,

    #[command(flatten)]
    pub exports: ExportArgs,
}

/// TLS and credentials of the NATS connection (a `tls://` URL also requires TLS).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsTlsArgs {
    /// Require TLS to NATS.
    #[arg(long, env = "NATS_REQUIRE_TLS", default_value_t = false)]
    pub nats_require_tls: bool,

    /// PEM file of the CA that signed the NATS server's certificate (implies TLS).
    #[arg(long, env = "NATS_TLS_CA_FILE")]
    pub nats_tls_ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate, for servers that verify clients (with NATS_TLS_KEY_FILE).
    #[arg(long, env = "NATS_TLS_CERT_FILE", requires = "nats_tls_key_file")]
    pub nats_tls_cert_file: Option<std::path::PathBuf>,

    /// PEM key of the client certificate.
    #[arg(long, env = "NATS_TLS_KEY_FILE", requires = "nats_tls_cert_file")]
    pub nats_tls_key_file: Option<std::path::PathBuf>,

    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(long, env = "NATS_CREDENTIALS_FILE")]
    pub nats_credentials_file: Option<std::path::PathBuf>,
}

/// Counts, cohorts and the QueryExecutor.
#[derive(Debug, Clone, clap::Args)]
pub struct CohortArgs {
    /// Cohorts this large are `long_pending` (finished by the Solr ETL) and not exportable.
    #[arg(long, env = "COHORT_SIZE_LIMIT", default_value_t = 20_000)]
    pub cohort_size_limit: i64,

    /// A count older than this many hours is `count_outdated`.
    #[arg(long, env = "LAST_COUNT_VALIDITY", default_value_t = 24)]
    pub last_count_validity_hours: i64,

    /// Counts under this many patients are shown as "< N" to callers who do not read the
    /// count's perimeters nominatively (0 or 1: off).
    #[arg(long, env = "SMALL_CELL_THRESHOLD", default_value_t = 0)]
    pub small_cell_threshold: i64,

    /// Base URL of an external QueryExecutor (`/jobs` is appended). Empty (the default): the
    /// embedded executor counts on the clinical store.
    #[arg(long, env = "QUERY_EXECUTOR_URL", default_value = "")]
    pub query_executor_url: String,

    /// Timeout of each call to the QueryExecutor, in seconds.
    #[arg(long, env = "QUERY_EXECUTOR_TIMEOUT_SECONDS", default_value_t = 10)]
    pub query_executor_timeout_seconds: u64,

    /// A job without news for this many seconds is looked up at the executor (`GET /jobs/{id}`):
    /// its lost callback is replaced by the answer.
    #[arg(long, env = "EXECUTOR_RECONCILE_AFTER_SECONDS", default_value_t = 600)]
    pub reconcile_after_seconds: u64,

    /// How often the reconciler looks for such jobs, in seconds (0 disables it).
    #[arg(long, env = "EXECUTOR_RECONCILE_EVERY_SECONDS", default_value_t = 60)]
    pub reconcile_every_seconds: u64,

    /// Perimeter types a feasibility report goes down through (comma list; empty: every type).
    #[arg(long, env = "REPORTING_PERIMETER_TYPES", default_value = "")]
    pub reporting_perimeter_types: String,

    /// How often refresh schedules are checked for a due run, in seconds (0 disables them).
    #[arg(long, env = "REFRESH_SCHEDULE_CHECK_SECONDS", default_value_t = 60)]
    pub refresh_check_seconds: u64,

    /// Base URL of the front-end, for the links in e-mails.
    #[arg(long, env = "FRONTEND_URL", default_value = "http://127.0.0.1:3000")]
    pub frontend_url: String,
}

/// Exports: the exporter, where files are kept, retention, notifications.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Base URL of the upstream Export API. Empty (the default): the built-in exporter writes
    /// CSV and XLSX from the clinical store.
    #[arg(long, env = "EXPORT_API_URL", default_value = "")]
    pub export_api_url: String,

    /// Token sent to the Export API (`auth-token` header).
    #[arg(long, env = "EXPORT_API_AUTH_TOKEN", hide_env_values = true)]
    pub export_api_token: Option<String>,

    /// Base URL of the Hadoop API (Hive databases of Hive exports).
    #[arg(long, env = "HADOOP_API_URL", default_value = "")]
    pub hadoop_api_url: String,

    /// Token sent to the Hadoop API.
    #[arg(long, env = "HADOOP_API_AUTH_TOKEN", hide_env_values = true)]
    pub hadoop_api_token: Option<String>,

    /// Account that owns Hive databases while they are written.
    #[arg(long, env = "HIVE_USER", default_value = "hive")]
    pub hive_user: String,

    /// Ask the Export API not to translate codes (`disableTerminology`).
    #[arg(long, env = "DISABLE_DATA_TRANSLATION", default_value_t = false)]
    pub disable_data_translation: bool,

    /// Local directory export files are written to and read from (relative paths below are
    /// inside it).
    #[arg(long, env = "EXPORT_STORAGE_DIR", default_value = "data/exports")]
    pub storage_dir: String,

    /// WebHDFS base URL (`http://namenode:9870`): downloads and deletions go to HDFS instead of
    /// the local directory (use with the Export API, which writes there).
    #[arg(long, env = "WEBHDFS_URL", default_value = "")]
    pub webhdfs_url: String,

    /// `user.name` sent to WebHDFS (no Kerberos).
    #[arg(long, env = "WEBHDFS_USER")]
    pub webhdfs_user: Option<String>,

    /// Where CSV, XLSX and Hive outputs go.
    #[arg(long, env = "EXPORT_CSV_PATH", default_value = "csv")]
    pub csv_path: String,
    #[arg(long, env = "EXPORT_XLSX_PATH", default_value = "xlsx")]
    pub xlsx_path: String,
    #[arg(long, env = "HIVE_DB_PATH", default_value = "hive")]
    pub hive_path: String,

    /// Days export files may be downloaded after the export finished; the cleaner deletes them
    /// afterwards.
    #[arg(long, env = "DAYS_TO_KEEP_EXPORTED_FILES", default_value_t = 7)]
    pub keep_days: i64,

    /// How often running exports are asked about, in milliseconds.
    #[arg(long, env = "EXPORT_POLL_MS", default_value_t = 10_000)]
    pub poll_ms: u64,

    /// How often the retention cleaner runs, in seconds (0 disables it).
    #[arg(long, env = "EXPORT_CLEAN_EVERY_SECONDS", default_value_t = 3600)]
    pub clean_every_seconds: u64,

    /// Addresses told of every failed export (comma list).
    #[arg(long, env = "ADMINS", default_value = "")]
    pub admins: String,
}

impl Default for ExportArgs {
    fn default() -> Self {
        Self {
            export_api_url: String::new(),
            export_api_token: None,
            hadoop_api_url: String::new(),
            hadoop_api_token: None,
            hive_user: "hive".into(),
            disable_data_translation: false,
            storage_dir: "data/exports".into(),
            webhdfs_url: String::new(),
            webhdfs_user: None,
            csv_path: "csv".into(),
            xlsx_path: "xlsx".into(),
            hive_path: "hive".into(),
            keep_days: 7,
            poll_ms: 10_000,
            clean_every_seconds: 3600,
            admins: String::new(),
        }
    }
}

/// Tokens, applicative users, access defaults and validation patterns.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentitySettings {
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "JWT_ACCESS_TTL_SECONDS", default_value_t = 300)]
    pub access_ttl_seconds: i64,

    /// How long this instance trusts its last check that an access token's user is active and
    /// its session open, in milliseconds (0: check on every request). A session ended through
    /// this instance is refused at once; through another one, within this delay.
    #[arg(long, env = "SESSION_CHECK_CACHE_MS", default_value_t = 1000)]
    pub token_check_cache_ms: u64,

    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "JWT_REFRESH_TTL_SECONDS", default_value_t = 86_400)]
    pub refresh_ttl_seconds: i64,

    /// Algorithms accepted on incoming bearer tokens (comma list of HS256, RS256). Each one is
    /// bound to its own key, so an HS256 token signed with the RSA public key is refused.
    #[arg(long, env = "JWT_ALGORITHMS", default_value = "HS256")]
    pub algorithms: String,

    /// PEM RSA public key verifying externally minted RS256 tokens (needs RS256 in
    /// JWT_ALGORITHMS).
    #[arg(long, env = "JWT_RS256_PUBLIC_KEY")]
    pub rs256_public_key: Option<String>,

    /// Token of the QueryExecutor's applicative user.
    #[arg(long, env = "QUERY_EXECUTOR_TOKEN", hide_env_values = true)]
    pub query_executor_token: Option<String>,
    #[arg(
        long,
        env = "QUERY_EXECUTOR_USERNAME",
        default_value = "QUERY_EXECUTOR"
    )]
    pub query_executor_username: String,

    /// Token of the Solr ETL's applicative user.
    #[arg(long, env = "SOLR_ETL_TOKEN", hide_env_values = true)]
    pub solr_etl_token: Option<String>,
    #[arg(long, env = "SOLR_ETL_USERNAME", default_value = "SOLR_ETL")]
    pub solr_etl_username: String,

    /// Token of the rollout pipeline's applicative user.
    #[arg(long, env = "ROLLOUT_TOKEN", hide_env_values = true)]
    pub rollout_token: Option<String>,
    #[arg(long, env = "ROLLOUT_USERNAME", default_value = "ROLLOUT_PIPELINE")]
    pub rollout_username: String,

    /// Default validity of a new access, in days.
    #[arg(long, env = "DEFAULT_ACCESS_VALIDITY_IN_DAYS", default_value_t = 365)]
    pub default_access_validity_days: i64,

    /// `my-accesses?expiring=true` lists accesses ending within this many days.
    #[arg(long, env = "ACCESS_EXPIRY_FIRST_ALERT_IN_DAYS", default_value_t = 30)]
    pub access_expiry_first_alert_days: i64,

    /// Accepted `aud` values of OIDC access tokens (comma list; empty: not checked).
    #[arg(long, env = "OIDC_AUDIENCE", default_value = "")]
    pub oidc_audience: String,

    /// Issuers accepted on OIDC access tokens besides the providers' (comma list).
    #[arg(long, env = "OIDC_EXTRA_SERVER_URLS", default_value = "")]
    pub oidc_extra_server_urls: String,

    /// OIDC providers, read from `OIDC_AUTH_SERVER_n`, `OIDC_CLIENT_ID_n`,
    /// `OIDC_CLIENT_SECRET_n`, `OIDC_REDIRECT_URI_n` (n = 1, 2, …) by [`oidc_providers_from_env`].
    #[arg(skip)]
    pub oidc_providers: Vec<OidcProviderSettings>,

    /// Base URL of the external identity service (`/user/authenticate`, `/user/info`).
    #[arg(long, env = "IDENTITY_SERVER_URL")]
    pub identity_server_url: Option<String>,

    /// Value of the `Key-auth` header sent to the identity service.
    #[arg(long, env = "IDENTITY_SERVER_AUTH_TOKEN", hide_env_values = true)]
    pub identity_server_auth_token: Option<String>,

    /// Kill switch of the scheduled access-expiry e-mails.
    #[arg(long, env = "ENABLE_ACCESS_EXPIRY_ALERTS", default_value_t = false)]
    pub enable_access_expiry_alerts: bool,

    /// Second expiry alert, in days before the end.
    #[arg(long, env = "ACCESS_EXPIRY_SECOND_ALERT_IN_DAYS", default_value_t = 2)]
    pub access_expiry_second_alert_days: i64,

    /// How often the expiry alerts run (each alert is sent once whatever the frequency).
    #[arg(long, env = "ACCESS_EXPIRY_CHECK_SECONDS", default_value_t = 3600)]
    pub access_expiry_check_seconds: u64,

    #[command(flatten)]
    pub smtp: SmtpConfig,

    /// Pattern a username must match in `/users/{username}/check/`.
    #[arg(
        long,
        env = "USERNAME_REGEX",
        default_value = r"^[A-Za-z0-9._@+-]{1,30}$"
    )]
    pub username_regex: String,
}

impl Default for CohortArgs {
    fn default() -> Self {
        Self {
            cohort_size_limit: 20_000,
            last_count_validity_hours: 24,
            query_executor_url: String::new(),
            small_cell_threshold: 0,
            query_executor_timeout_seconds: 10,
            reconcile_after_seconds: 600,
            reconcile_every_seconds: 60,
            frontend_url: "http://127.0.0.1:3000".into(),
            reporting_perimeter_types: String::new(),
            refresh_check_seconds: 60,
        }
    }
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            access_ttl_seconds: 300,
            token_check_cache_ms: 1000,
            refresh_ttl_seconds: 86_400,
            algorithms: "HS256".into(),
            rs256_public_key: None,
            query_executor_token: None,
            query_executor_username: "QUERY_EXECUTOR".into(),
            solr_etl_token: None,
            solr_etl_username: "SOLR_ETL".into(),
            rollout_token: None,
            rollout_username: "ROLLOUT_PIPELINE".into(),
            default_access_validity_days: 365,
            access_expiry_first_alert_days: 30,
            username_regex: r"^[A-Za-z0-9._@+-]{1,30}$".into(),
            oidc_audience: String::new(),
            oidc_extra_server_urls: String::new(),
            oidc_providers: Vec::new(),
            identity_server_url: None,
            identity_server_auth_token: None,
            enable_access_expiry_alerts: false,
            access_expiry_second_alert_days: 2,
            access_expiry_check_seconds: 3600,
            smtp: SmtpConfig::default(),
        }
    }
}

/// The SMTP relay e-mails go through (plain SMTP).
/// How the SMTP connection is secured (`SMTP_SECURITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpSecurityArg {
    None,
    Starttls,
    Tls,
}

#[derive(Clone, clap::Args)]
pub struct SmtpConfig {
    #[arg(long, env = "SMTP_HOST", default_value = "127.0.0.1")]
    pub smtp_host: String,
    #[arg(long, env = "SMTP_PORT", default_value_t = 25)]
    pub smtp_port: u16,
    /// `none` (plain, to a relay), `starttls` (required) or `tls` (implicit, port 465).
    #[arg(long, env = "SMTP_SECURITY", value_enum, default_value_t = SmtpSecurityArg::None)]
    pub smtp_security: SmtpSecurityArg,
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// `From:` of every e-mail.
    #[arg(
        long,
        env = "EMAIL_SENDER_ADDRESS",
        default_value = "cohort360@localhost"
    )]
    pub email_sender_address: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            smtp_security: SmtpSecurityArg::None,
            smtp_username: None,
            smtp_password: None,
            email_sender_address: "cohort360@localhost".into(),
        }
    }
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmtpConfig({}:{})", self.smtp_host, self.smtp_port)
    }
}

/// One OIDC provider's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcProviderSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

impl std::fmt::Debug for OidcProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OidcProvider({}, {}, <redacted>)",
            self.issuer, self.client_id
        )
    }
}

/// Reads `OIDC_AUTH_SERVER_n`, `OIDC_CLIENT_ID_n`, `OIDC_CLIENT_SECRET_n` and
/// `OIDC_REDIRECT_URI_n` for n = 1, 2, … until `OIDC_AUTH_SERVER_n` is missing.
pub fn oidc_providers_from_env() -> Vec<OidcProviderSettings> {
    let var = |name: &str, n: usize| std::env::var(format!("{name}_{n}")).unwrap_or_default();
    (1..)
        .map_while(|n| {
            let issuer = var("OIDC_AUTH_SERVER", n);
            (!issuer.is_empty()).then(|| OidcProviderSettings {
                issuer,
                client_id: var("OIDC_CLIENT_ID", n),
                client_secret: var("OIDC_CLIENT_SECRET", n),
                redirect_uri: var("OIDC_REDIRECT_URI", n),
            })
        })
        .collect()
}

/// Splits a comma list, dropping blanks.
pub fn comma_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Settings {
    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }

    pub fn projector_poll_interval(&self) -> Duration {
        Duration::from_millis(self.projector_poll_ms.max(10))
    }

    /// How long events may wait for a relay, projector or reactor before it counts as degraded.
    pub fn pipeline_stall_threshold(&self) -> Duration {
        Duration::from_secs(self.pipeline_stall_seconds.max(1))
    }

    /// How often the pipeline is read for `/health/ready` and `/metrics`: a quarter of the
    /// threshold, between 250 ms and 5 s.
    pub fn pipeline_check_interval(&self) -> Duration {
        (self.pipeline_stall_threshold() / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(5))
    }
}
