//! Gap-safe reads of the committed event log, shared by the relay and the projectors.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use projections::Cursor;
use sqlx::{PgExecutor, PgPool};

/// One committed event as stored, with its place in the log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CommittedEvent {
    pub txid: i64,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

impl CommittedEvent {
    /// This event's place in the log.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            txid: self.txid,
            position: self.position,
        }
    }

    /// The stable id of this event: what JetStream de-duplicates on.
    pub fn message_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }
}

/// A committed Folder event for unit tests.
#[cfg(test)]
pub(crate) fn test_event(aggregate_id: &str, sequence: i64) -> CommittedEvent {
    CommittedEvent {
        txid: 1,
        position: sequence,
        aggregate_type: "Folder".into(),
        aggregate_id: aggregate_id.into(),
        sequence,
        event_type: "FolderCreated".into(),
        event_version: "1".into(),
        payload: serde_json::Value::Null,
        metadata: serde_json::Value::Null,
        recorded_at: Utc::now(),
    }
}

/// Reads up to `limit` events after `after`, in log order, that no running transaction can
/// still precede.
///
/// An event is returned only if its transaction id is below the oldest transaction still running
/// (`pg_snapshot_xmin`): every such transaction has ended, so no event can later be committed
/// with a smaller `(txid, position)`. Events of transactions still running, and of every later
/// transaction, wait for the next call.
pub async fn read_committed_after<'e>(
    executor: impl PgExecutor<'e>,
    after: Cursor,
    limit: i64,
) -> sqlx::Result<Vec<CommittedEvent>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| committed_after_sql("($1::bigint)::text::xid8", "$2", "$3"));
    sqlx::query_as(SQL.as_str())
        .bind(after.txid)
        .bind(after.position)
        .bind(limit)
        .fetch_all(executor)
        .await
}

/// The statement of [`read_committed_after`], with the cursor's transaction id (an `xid8`),
/// its position and the limit given as SQL expressions: parameters, or literals where the
/// statement travels in a simple query (see [`crate::checkpoint_tx`]); public for plan checks.
///
/// Its order names the table's columns: the bare `txid` would be the output column (the
/// `bigint`), which no index holds, and Postgres would sort everything after the cursor to
/// return the first rows (the whole log, for a catch-up from its start).
pub fn committed_after_sql(txid: &str, position: &str, limit: &str) -> String {
    format!(
        "SELECT (txid::text)::bigint AS txid, position, aggregate_type, aggregate_id, sequence,
                event_type, event_version, payload, metadata, recorded_at
           FROM events
          WHERE (txid, position) > ({txid}, {position})
            AND txid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.txid, events.position
          LIMIT {limit}"
    )
}

/// Where the event `sequence` of an aggregate sits in the log, if it exists.
pub async fn cursor_of(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> sqlx::Result<Option<Cursor>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT (txid::text)::bigint, position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(txid, position)| Cursor { txid, position }))
}

/// Whether any stored event lies after `after` (committed, visible or not yet): a scalar
/// subquery in log order, which reads the log's index from the cursor (under `EXISTS` the
/// planner drops the order and, expecting many rows, scans the whole table).
pub async fn any_after(pool: &PgPool, after: Cursor) -> sqlx::Result<bool> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {}", any_after_sql("$1", "$2")));
    sqlx::query_scalar(SQL.as_str())
        .bind(after.txid)
        .bind(after.position)
        .fetch_one(pool)
        .await
}

/// The expression of [`any_after`], with the cursor's transaction id (a `bigint`) and position
/// given as SQL expressions (parameters), for statements that ask it beside other work.
pub(crate) fn any_after_sql(txid: &str, position: &str) -> String {
    format!(
        "(SELECT 1 FROM events WHERE (txid, position) > (({txid}::bigint)::text::xid8, {position})
           ORDER BY events.txid, events.position LIMIT 1) IS NOT NULL"
    )
}
