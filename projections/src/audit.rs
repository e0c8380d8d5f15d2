//! Reading history: the stored events of an aggregate, for auditors.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Cursor, ReadError};

/// One stored event, as an auditor sees it (secrets redacted).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
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

/// Which events of the whole log to list. Every field narrows the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// The acting user (`metadata.user`).
    pub actor: Option<String>,
    /// The administrator acting as `actor` (`metadata.impersonator`).
    pub impersonator: Option<String>,
    /// Recorded at or after.
    pub recorded_from: Option<DateTime<Utc>>,
    /// Recorded strictly before.
    pub recorded_before: Option<DateTime<Utc>>,
}

/// The point of an aggregate's history to reconstruct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After its event number `n` (1-based sequence).
    Version(i64),
    /// After its last event recorded at or before this instant.
    Time(DateTime<Utc>),
}

/// An aggregate's state at a point of its history, folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AggregateState {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Sequence of the last event folded.
    pub version: i64,
    pub recorded_at: DateTime<Utc>,
    /// Whether the fold started from the stored snapshot rather than from the first event.
    pub from_snapshot: bool,
    pub events_folded: usize,
    /// The aggregate's state as the domain defines it (secrets redacted).
    pub state: serde_json::Value,
}

/// Queries of the event store for auditors.
#[async_trait]
pub trait AuditReader: Send + Sync {
    /// Events of the whole log matching `filter`, in log order after `after`, each with its
    /// cursor. Only events no running transaction can precede are listed, so paging by cursor
    /// never skips an event that commits later.
    async fn events(
        &self,
        filter: &EventFilter,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<(Cursor, AuditEvent)>, ReadError>;

    /// The state of an aggregate as of a version or an instant; `None` if it had no event by
    /// then (or the type is unknown).
    async fn state_as_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        as_of: AsOf,
    ) -> Result<Option<AggregateState>, ReadError>;

    /// Accesses, roles and perimeters as the log knew them at `at`.
    async fn known_at(
        &self,
        at: DateTime<Utc>,
    ) -> Result<domain::access_history::KnownAt, ReadError>;

    /// Every event of one aggregate, oldest first.
    async fn aggregate_history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<AuditEvent>, ReadError>;

    /// Every event of every access ever granted to `username`, in log order.
    async fn user_access_history(&self, username: &str) -> Result<Vec<AuditEvent>, ReadError>;
}
