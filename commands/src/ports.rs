//! What the application layer needs from outside, as traits that `infra` implements.

use async_trait::async_trait;
use thiserror::Error;
use uuid::Uuid;

use crate::bus::Committed;

/// A port could not answer (database unreachable, …).
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct PortError(pub String);

/// Lookups in the workspace read model that routing and cascades need.
#[async_trait]
pub trait WorkspaceDirectory: Send + Sync {
    /// The request that holds snapshot `snapshot`, whoever owns it.
    async fn request_of_snapshot(&self, snapshot: Uuid) -> Result<Option<Uuid>, PortError>;
    /// The live (not deleted) requests filed in `folder`.
    async fn requests_in_folder(&self, folder: Uuid) -> Result<Vec<Uuid>, PortError>;
    /// Those of `usernames` that name no user.
    async fn unknown_users(&self, usernames: &[String]) -> Result<Vec<String>, PortError>;
}

/// Read-your-writes: waits until the read models have applied what a command appended.
///
/// It runs after the commit, so it cannot fail: a write that is stored must never be answered
/// with an error (a client would retry it and store it twice). Anything that prevents the wait
/// (a timeout, the database gone) only means the read models may lag.
#[async_trait]
pub trait Consistency: Send + Sync {
    /// Waits, for a bounded time, until every read model has applied all of `committed`.
    /// Returns `true` when they have, `false` when they may not have (the write is durable all
    /// the same; the read models will catch up).
    async fn wait_for(&self, committed: &[Committed]) -> bool;
}

/// Tokens issued by an OIDC provider, and whom they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTokens {
    pub username: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
}

/// A user known to the external identity service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalUser {
    pub username: String,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub email: Option<String>,
}

/// Why an external identity operation failed.
#[derive(Debug, Clone, Error)]
pub enum ExternalAuthError {
    /// Nothing of the kind is configured.
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
    /// The provider or our checks refused the credentials or token.
    #[error("{0}")]
    Rejected(String),
    /// The provider could not be reached or answered nonsense.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
}

/// OIDC providers and the external identity service (`/user/authenticate`, `/user/info`).
#[async_trait]
pub trait IdentityProviders: Send + Sync {
    /// Exchanges an authorization code at the provider whose redirect URI this is.
    async fn oidc_login(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<ProviderTokens, ExternalAuthError>;
    /// Refreshes at the provider that issued the refresh token.
    async fn oidc_refresh(&self, refresh_token: &str) -> Result<ProviderTokens, ExternalAuthError>;
    /// Ends the provider session of a refresh token.
    async fn oidc_logout(&self, refresh_token: &str) -> Result<(), ExternalAuthError>;
    /// Verifies a provider access token (signature by JWKS `kid`, issuer, audience, expiry)
    /// and returns its `preferred_username`.
    async fn oidc_verify(&self, access_token: &str) -> Result<String, ExternalAuthError>;
    /// Asks the identity service whether the password is right (`None`: no service configured).
    async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<bool>, ExternalAuthError>;
    /// Looks a user up in the identity service (`Ok(None)`: unknown there).
    async fn user_info(&self, username: &str) -> Result<Option<ExternalUser>, ExternalAuthError>;
}

/// An e-mail to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    /// The HTML alternative, if any (sent as multipart/alternative with the text).
    pub html: Option<String>,
}

/// Sends e-mails (SMTP in production).
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: Mail) -> Result<(), PortError>;
}

/// What the QueryExecutor is asked to do (upstream's `input.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorMode {
    Count,
    CountAll,
    CountWithDetails,
    Create,
}

impl ExecutorMode {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::CountAll => "count_all",
            Self::CountWithDetails => "count_with_details",
            Self::Create => "create",
        }
    }
}

/// One job for the QueryExecutor.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSubmission {
    pub mode: ExecutorMode,
    /// The stored query (`serialized_query`), as text.
    pub query: String,
    /// The owner's username (`input.ownerEntityId`).
    pub owner: String,
    /// The count, cohort or study the job is for (`input.cohortUuid`; the callback names it).
    pub target: Uuid,
    /// Where the executor calls back, when not its default for the mode.
    pub callback_path: Option<String>,
    /// Sample ratio of a sampled cohort.
    pub sampling: Option<f64>,
    /// Stage details of a count (`all` or `ratio`).
    pub details: Option<String>,
}

/// The executor took a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobAccepted {
    pub job_id: String,
    /// The status it answered with (`RUNNING` normally).
    pub status: String,
    pub message: Option<String>,
}

/// How a cancel ended at the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Killed,
    /// The job had already finished (its callback carries the result).
    AlreadyFinished,
}

/// Why the executor could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExecutorError {
    #[error("the query executor is unreachable: {0}")]
    Unreachable(String),
    #[error("the query executor refused the job: {0}")]
    Refused(String),
}

/// The QueryExecutor: submits, cancels and inspects jobs (upstream's `/jobs` API).
#[async_trait]
pub trait QueryExecutor: Send + Sync {
    async fn submit(&self, job: JobSubmission) -> Result<JobAccepted, ExecutorError>;
    async fn cancel(&self, job_id: &str) -> Result<CancelOutcome, ExecutorError>;
    /// The job's status and result; `Ok(None)` when the executor does not know the job.
    async fn status(&self, job_id: &str) -> Result<Option<domain::job::JobReport>, ExecutorError>;
}

/// A job left without news for too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleJob {
    Count(Uuid),
    Cohort(Uuid),
}

/// Lookups in the cohorts read model that commands and reactors need.
#[async_trait]
pub trait CohortDirectory: Send + Sync {
    /// The counts of `request` requested before `before` that may still run (new, pending,
    /// started) and are not the count of a cohort.
    async fn running_counts_of_request(
        &self,
        request: Uuid,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Uuid>, PortError>;
    /// Feasibility studies submitted or started before `before` that have not ended.
    async fn stale_studies(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Uuid>, PortError>;
    /// The cohort whose global estimate is `count`, if any.
    async fn cohort_of_global_count(&self, count: Uuid) -> Result<Option<Uuid>, PortError>;
    /// The cohort id (`cohort_id`) of the root perimeter, which global estimates count on.
    async fn root_perimeter_cohort_id(&self) -> Result<Option<String>, PortError>;
    /// Counts and cohorts submitted or started before `before` that have not ended.
    async fn stale_jobs(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<StaleJob>, PortError>;
}

/// The websocket group every socket joins.
pub const ALL_SOCKETS: &str = "__all__";

/// A message for the websocket sessions of one group (a username, or [`ALL_SOCKETS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub group: String,
    pub message: serde_json::Value,
}

/// Pushes a message to a user's websocket sessions, on whichever instance holds them.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn push(&self, username: &str, message: serde_json::Value);

    /// Tells every socket about a maintenance phase (created, changed, started or ended).
    async fn announce_maintenance(&self, phase: &domain::maintenance::MaintenanceNotice);
}

/// The pushes this instance delivers to the websocket sessions it holds.
pub trait PushFeed: Send + Sync {
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Push>;
}

/// A job's result from an in-process executor: what the executor's callback would carry.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCompletion {
    pub job: JobSubmission,
    pub report: domain::job::JobReport,
    /// The trace of the submission, which the result's events keep as their correlation id.
    pub trace_id: Option<String>,
}

/// Whether a user reads patient data nominatively on every perimeter of a query (small-cell
/// protection shows exact small counts to them only).
#[async_trait]
pub trait PatientReadRights: Send + Sync {
    async fn reads_nominatively(
        &self,
        username: &str,
        perimeter_cohort_ids: &[String],
    ) -> Result<bool, PortError>;
}

/// One table of an export job, as an exporter receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportJobTable {
    /// The table (`person`, `condition_occurrence`, …).
    pub name: String,
    /// The columns to export; all when `None`.
    pub columns: Option<Vec<String>>,
    /// The cohort (group id) the rows are restricted to: the table's subset when it is filtered,
    /// else the source cohort; `None` for a table without a cohort.
    pub cohort_group_id: Option<String>,
    /// The saved filter the rows match: `(FHIR resource, filterFhir)`. The Export API relies on
    /// the subset; the built-in exporter applies it to the rows too.
    pub filter: Option<(String, String)>,
    pub respect_table_relationships: bool,
    pub pivot_merge: bool,
    pub pivot_merge_columns: Vec<String>,
    pub pivot_merge_ids: Vec<String>,
}

/// One export job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportJob {
    pub export: Uuid,
    pub owner: String,
    pub format: domain::export::ExportFormat,
    pub nominative: bool,
    /// Shift dates (pseudonymized exports only: nominative data keeps real dates).
    pub shift_dates: bool,
    /// Join the tables on their primary key (`joinOnPrimaryKey`).
    pub group_tables: bool,
    pub target_name: String,
    pub target_location: String,
    /// The datalab (its name, also its account) of a Hive export.
    pub datalab: Option<String>,
    pub tables: Vec<ExportJobTable>,
}

impl ExportJob {
    /// `{target_location}/{target_name}`.
    pub fn target_full_path(&self) -> String {
        format!(
            "{}/{}",
            self.target_location.trim_end_matches('/'),
            self.target_name
        )
    }
}

/// Why an exporter could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExporterError {
    #[error("the exporter is unreachable: {0}")]
    Unreachable(String),
    #[error("the exporter refused the job: {0}")]
    Refused(String),
    /// A call took longer than allowed (logs).
    #[error("the exporter did not answer in time")]
    Timeout,
}

/// Produces export files or databases: the upstream Export API (with the Hadoop API for Hive),
/// or the built-in exporter.
#[async_trait]
pub trait Exporter: Send + Sync {
    /// Checks, when the export is requested, what only this exporter knows: the tables and
    /// columns it can produce, the tables it requires. `Err` is the message of a 400.
    fn check_tables(
        &self,
        format: domain::export::ExportFormat,
        tables: &[ExportJobTable],
    ) -> Result<(), String>;
    /// Starts the job; returns the exporter's task id.
    async fn submit(&self, job: ExportJob) -> Result<String, ExporterError>;
    /// The task's status; `Ok(None)` when the exporter does not know the task.
    async fn status(
        &self,
        task_id: &str,
    ) -> Result<Option<domain::export::ExportReport>, ExporterError>;
    /// The task's logs (shown to full admins).
    async fn logs(&self, task_id: &str) -> Result<serde_json::Value, ExporterError>;
    /// After a finished job: hands a Hive database to the datalab's account (nothing to do
    /// otherwise).
    async fn hand_over(&self, job: &ExportJob) -> Result<(), ExporterError>;
}

/// A stream of a stored file's bytes.
pub type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<Vec<u8>>> + Send>>;

/// Where export files are kept (a local directory, or HDFS through WebHDFS).
#[async_trait]
pub trait ExportStorage: Send + Sync {
    /// Opens a file for streaming: its size, if known, and its bytes; `Ok(None)` when missing.
    async fn open(&self, path: &str) -> Result<Option<(Option<u64>, ByteStream)>, PortError>;
    /// Deletes a file; `Ok(false)` when it was already missing.
    async fn delete(&self, path: &str) -> Result<bool, PortError>;
}
