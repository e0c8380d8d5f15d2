//! Pipeline health for operators: where each projector, reactor and the relay stand in the log,
//! how far behind they are, and the last error each consumer met in this process.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use projections::Cursor;
use serde::Serialize;
use sqlx::PgPool;

/// The last error a consumer met, in this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub message: String,
    pub at: DateTime<Utc>,
}

fn last_errors() -> &'static Mutex<BTreeMap<String, LastError>> {
    static ERRORS: OnceLock<Mutex<BTreeMap<String, LastError>>> = OnceLock::new();
    ERRORS.get_or_init(Default::default)
}

/// Records an error of consumer `name` (kept until the next one) and counts it.
pub fn record_error(name: &str, message: &str) {
    metrics::counter!("cohort360_consumer_errors_total", "consumer" => name.to_string())
        .increment(1);
    if let Ok(mut errors) = last_errors().lock() {
        errors.insert(
            name.to_string(),
            LastError {
                message: message.to_string(),
                at: Utc::now(),
            },
        );
    }
}

/// The last error of consumer `name` in this process, if any.
pub fn last_error(name: &str) -> Option<LastError> {
    last_errors().lock().ok()?.get(name).cloned()
}

/// Records, for each event just handled, the time since it was recorded (commit → handled).
pub fn observe_lag(
    metric: &'static str,
    label: &'static str,
    name: &str,
    events: &[crate::log::CommittedEvent],
) {
    let now = Utc::now();
    for event in events {
        let lag = (now - event.recorded_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!(metric, label => name.to_string()).record(lag.max(0.0));
    }
}

/// Where one log consumer stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerStatus {
    /// `projection`, `reactor` or `relay`.
    pub kind: &'static str,
    pub name: String,
    pub checkpoint: String,
    /// Committed events after the checkpoint.
    pub behind: i64,
    /// Age of the oldest event not handled yet (0 when caught up).
    pub lag_seconds: f64,
    pub last_error: Option<LastError>,
}

async fn status(
    pool: &PgPool,
    kind: &'static str,
    name: &str,
    cursor: Cursor,
    error_key: &str,
) -> sqlx::Result<ConsumerStatus> {
    let (behind, lag_seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*),
                COALESCE(EXTRACT(EPOCH FROM now() - min(recorded_at)), 0)::float8
           FROM events WHERE (txid, position) > (($1::bigint)::text::xid8, $2)",
    )
    .bind(cursor.txid)
    .bind(cursor.position)
    .fetch_one(pool)
    .await?;
    Ok(ConsumerStatus {
        kind,
        name: name.to_string(),
        checkpoint: cursor.to_string(),
        behind,
        lag_seconds,
        last_error: last_error(error_key),
    })
}

/// The status of the given projections, of every reactor and of the JetStream relay.
pub async fn pipeline_status(
    pool: &PgPool,
    projections: &[&str],
) -> sqlx::Result<Vec<ConsumerStatus>> {
    let mut out = Vec::new();
    for name in projections {
        let cursor = crate::projector::checkpoint(pool, name).await?;
        out.push(status(pool, "projection", name, cursor, name).await?);
    }
    for (name, cursor) in crate::reactor::checkpoints(pool).await? {
        out.push(status(pool, "reactor", &name, cursor, &name).await?);
    }
    let relay = crate::relay::checkpoint(pool, "jetstream").await?;
    out.push(status(pool, "relay", "jetstream", relay, "relay").await?);
    Ok(out)
}
