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
