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
}

/// Sends e-mails (SMTP in production).
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, mail: Mail) -> Result<(), PortError>;
}
