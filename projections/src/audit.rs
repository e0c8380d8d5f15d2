//! Reading history: the stored events of an aggregate, for auditors.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ReadError;

/// One stored event, as an auditor sees it (secrets redacted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    /// `user`, `impersonator`, `correlation_id`, `causation_id`.
    pub metadata: serde_json::Value,
}

/// Queries of the event store for auditors.
#[async_trait]
pub trait AuditReader: Send + Sync {
    /// Every event of one aggregate, oldest first.
    async fn aggregate_history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<AuditEvent>, ReadError>;

    /// Every event of every access ever granted to `username`, in log order.
    async fn user_access_history(&self, username: &str) -> Result<Vec<AuditEvent>, ReadError>;
}
