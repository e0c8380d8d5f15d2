//! The error of the application layer.

use thiserror::Error;

/// Why a command did not go through.
#[derive(Debug, Error)]
pub enum CommandError<E: std::error::Error> {
    /// The domain refused the command.
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept changing the aggregate; bounded retries did not get through.
    #[error("the object was modified concurrently; retry")]
    Conflict,
    /// The database (or another required service) cannot be reached.
    #[error("a required service is unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corrupted data. The message is for logs, not for clients.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The technical half of every service error: what is not the domain's refusal. Each service
/// error carries it as one arm, and the HTTP edge maps it once.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Technical {
    /// Other writers kept changing the aggregate; bounded retries did not get through.
    #[error("the object was modified concurrently; retry")]
    Conflict,
    /// The database (or another required service) cannot be reached.
    #[error("a required service is unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or corrupted data. The message is for logs, not for clients.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::ports::PortError> for Technical {
    fn from(e: crate::ports::PortError) -> Self {
        Technical::Unavailable(e.0)
    }
}

/// Maps a command's failure into a service error: the domain's refusal through `rejected`, the
/// technical failures as they are.
pub fn from_command<E: std::error::Error, S: From<Technical>>(
    e: CommandError<E>,
    rejected: impl FnOnce(E) -> S,
) -> S {
    match e {
        CommandError::Rejected(e) => rejected(e),
        CommandError::Conflict => Technical::Conflict.into(),
        CommandError::Unavailable(m) => Technical::Unavailable(m).into(),
        CommandError::Internal(m) => Technical::Internal(m).into(),
    }
}
