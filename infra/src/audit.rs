//! The auditor's view of the event store.

use async_trait::async_trait;
use projections::ReadError;
use projections::audit::{AuditEvent, AuditReader};
use sqlx::{PgPool, Row};

use crate::nats::redact;
use crate::sql::read_error;

/// Reads history from the events table.
#[derive(Debug, Clone)]
pub struct PgAudit {
    pool: PgPool,
}

impl PgAudit {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

const SELECT: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type,
        event_version, recorded_at, payload, metadata FROM events";

fn event(r: &sqlx::postgres::PgRow) -> Result<AuditEvent, sqlx::Error> {
    Ok(AuditEvent {
        position: r.try_get("position")?,
        aggregate_type: r.try_get("aggregate_type")?,
        aggregate_id: r.try_get("aggregate_id")?,
        sequence: r.try_get("sequence")?,
        event_type: r.try_get("event_type")?,
        event_version: r.try_get("event_version")?,
        recorded_at: r.try_get("recorded_at")?,
        payload: redact(r.try_get("payload")?),
        metadata: r.try_get("metadata")?,
    })
}

#[async_trait]
impl AuditReader for PgAudit {
    async fn aggregate_history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<AuditEvent>, ReadError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        rows.iter()
            .map(event)
            .collect::<Result<_, _>>()
            .map_err(read_error)
    }

    async fn user_access_history(&self, username: &str) -> Result<Vec<AuditEvent>, ReadError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE aggregate_type = 'Access' AND aggregate_id IN (
                 SELECT aggregate_id FROM events
                  WHERE aggregate_type = 'Access' AND event_type = 'AccessGranted'
                    AND payload -> 'AccessGranted' ->> 'username' = $1)
              ORDER BY position"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        rows.iter()
            .map(event)
            .collect::<Result<_, _>>()
            .map_err(read_error)
    }
}
