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
#[async_trait]
pub trait Consistency: Send + Sync {
    /// Waits, for a bounded time, until every read model has applied all of `committed`.
    /// Returns `Ok(true)` when they have, `Ok(false)` when the wait timed out (the write is
    /// durable all the same; the read models will catch up).
    async fn wait_for(&self, committed: &[Committed]) -> Result<bool, PortError>;
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

/// Pushes a message to a user's websocket sessions, on whichever instance holds them.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn push(&self, username: &str, message: serde_json::Value);
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
