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
}

/// Read-your-writes: waits until the read models have applied what a command appended.
#[async_trait]
pub trait Consistency: Send + Sync {
    /// Waits, for a bounded time, until every read model has applied all of `committed`.
    /// Returns `Ok(true)` when they have, `Ok(false)` when the wait timed out (the write is
    /// durable all the same; the read models will catch up).
    async fn wait_for(&self, committed: &[Committed]) -> Result<bool, PortError>;
}
