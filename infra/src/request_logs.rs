//! Request logs in `ops.request_logs`: queued by the HTTP layer, written in batches by one task,
//! deleted after the retention period, read back for `/logs/`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use projections::request_logs::{NewRequestLog, RequestLog, RequestLogFilter, RequestLogs};
use projections::{Page, ReadError, Window};
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sql::{contains_pattern, fetch_page, read_error};

/// Entries waiting for the writer; beyond this, new entries are dropped (and counted).
const QUEUE: usize = 10_000;
/// Rows per INSERT.
const BATCH: usize = 500;
/// How long a batch waits for more entries before it is written.
const GATHER: Duration = Duration::from_millis(50);

/// The request-log store: [`RequestLogs`] for the API, [`PgRequestLogs::run_writer`] for the
/// background task.
#[derive(Debug, Clone)]
pub struct PgRequestLogs {
    pool: PgPool,
    queue: mpsc::Sender<NewRequestLog>,
}

/// The receiving end of the queue, handed to [`run_writer`].
pub struct RequestLogQueue(mpsc::Receiver<NewRequestLog>);

impl PgRequestLogs {
    pub fn new(pool: PgPool) -> (Self, RequestLogQueue) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        (Self { pool, queue }, RequestLogQueue(receiver))
    }
}

/// A JSON value as stored: its text.
fn stored_text(value: &serde_json::Value) -> String {
    value.to_string()
}

/// A stored JSON text read back: the value it holds, or the text itself as a string when it is
/// not JSON we can read (rows written by older versions), so that no row can fail a page.
fn stored_json(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// Writes a batch; if the batch is refused, writes its entries one by one, so that one entry
/// the database refuses loses only itself.
async fn write(pool: &PgPool, entries: &[NewRequestLog]) {
    if insert(pool, entries).await.is_ok() {
        return;
    }
    for entry in entries {
        if let Err(e) = insert(pool, std::slice::from_ref(entry)).await {
            metrics::counter!("cohort360_request_logs_dropped_total").increment(1);
            tracing::warn!(error = %e, path = %entry.path, "request log not written");
        }
    }
}

async fn insert(pool: &PgPool, entries: &[NewRequestLog]) -> sqlx::Result<()> {
    let mut qb: QueryBuilder<'_, Postgres> = QueryBuilder::new(
        "INSERT INTO ops.request_logs (requested_at, response_ms, username, impersonating, method,
             path, view, query_params, data, remote_addr, host, status_code, trace_id)
         SELECT entry.* FROM (",
    );
    qb.push_values(entries, |mut row, e| {
        row.push_bind(e.requested_at)
            .push_bind(e.response_ms)
            .push_bind(&e.user)
            .push_bind(&e.impersonating)
            .push_bind(&e.method)
            .push_bind(&e.path)
            .push_bind(&e.view)
            .push_bind(stored_text(&e.query_params))
            .push_bind(e.data.as_ref().map(stored_text))
            .push_bind(&e.remote_addr)
            .push_bind(&e.host)
            .push_bind(e.status_code)
            .push_bind(&e.trace_id);
    });
    // One statement, committed asynchronously (the setting is local to its own transaction): a
    // crash may lose the last entries, as it loses those still queued in memory; and a short
    // commit holds back no command's events from the projectors' gap-safe reads (an older
    // transaction still running hides newer commits).
    qb.push(
        ") AS entry CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit",
    );
    qb.build().execute(pool).await?;
    Ok(())
}

/// Lets the entries that follow `batch` within [`GATHER`] join it (up to [`BATCH`]): a quiet
/// trickle of requests is written in one statement per interval rather than one per request.
async fn gather(
    queue: &mut mpsc::Receiver<NewRequestLog>,
    batch: &mut Vec<NewRequestLog>,
    shutdown: &CancellationToken,
) {
    let until = tokio::time::sleep(GATHER);
    tokio::pin!(until);
    while batch.len() < BATCH {
        let room = BATCH - batch.len();
        tokio::select! {
            received = queue.recv_many(batch, room) => if received == 0 { return },
            () = &mut until => return,
            () = shutdown.cancelled() => return,
        }
    }
}

/// Writes queued entries in batches until `shutdown` (then drains what is queued), and deletes
/// entries older than `retention` every hour.
pub async fn run_writer(
    pool: PgPool,
    RequestLogQueue(mut queue): RequestLogQueue,
    retention: chrono::Duration,
    shutdown: CancellationToken,
) {
    let mut purge = tokio::time::interval(Duration::from_secs(3600));
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
                gather(&mut queue, &mut batch, &shutdown).await;
                write(&pool, &batch).await;
                batch.clear();
            }
            _ = purge.tick() => {
                let cutoff: DateTime<Utc> = Utc::now() - retention;
                if let Err(e) = sqlx::query("DELETE FROM ops.request_logs WHERE requested_at < $1")
                    .bind(cutoff)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %e, "expired request logs not deleted");
                }
            }
            () = shutdown.cancelled() => {
                queue.close();
                while queue.recv_many(&mut batch, BATCH).await > 0 {
                    write(&pool, &batch).await;
                    batch.clear();
                }
                return;
            }
        }
    }
}

const SELECT: &str = "SELECT id, requested_at, response_ms, username AS user, impersonating,
        method, path, view, query_params, data, remote_addr, host, status_code, trace_id
   FROM ops.request_logs WHERE true";

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    #[sqlx(flatten)]
    entry: Entry,
}

/// The stored columns of an entry, as [`NewRequestLog`] names them.
#[derive(sqlx::FromRow)]
struct Entry {
    requested_at: DateTime<Utc>,
    response_ms: i64,
    user: Option<String>,
    impersonating: Option<String>,
    method: String,
    path: String,
    view: Option<String>,
    query_params: String,
    data: Option<String>,
    remote_addr: Option<String>,
    host: Option<String>,
    status_code: i64,
    trace_id: String,
}

impl From<Row> for RequestLog {
    fn from(Row { id, entry: e }: Row) -> Self {
        RequestLog {
            id,
            entry: NewRequestLog {
                requested_at: e.requested_at,
                response_ms: e.response_ms,
                user: e.user,
                impersonating: e.impersonating,
                method: e.method,
                path: e.path,
                view: e.view,
                query_params: stored_json(e.query_params),
                data: e.data.map(stored_json),
                remote_addr: e.remote_addr,
                host: e.host,
                status_code: e.status_code,
                trace_id: e.trace_id,
            },
        }
    }
}

fn push_where<'a>(qb: &mut QueryBuilder<'a, Postgres>, f: &'a RequestLogFilter) {
    if !f.methods.is_empty() {
        qb.push(" AND method = ANY(")
            .push_bind(&f.methods)
            .push(")");
    }
    if !f.status_codes.is_empty() {
        qb.push(" AND status_code = ANY(")
            .push_bind(&f.status_codes)
            .push(")");
    }
    if let Some(user) = &f.user {
        qb.push(" AND username = ").push_bind(user);
    }
    if let Some(t) = f.requested_at_after {
        qb.push(" AND requested_at >= ").push_bind(t);
    }
    if let Some(t) = f.requested_at_before {
        qb.push(" AND requested_at <= ").push_bind(t);
    }
    if let Some(ms) = f.response_ms_min {
        qb.push(" AND response_ms >= ").push_bind(ms);
    }
    if let Some(ms) = f.response_ms_max {
        qb.push(" AND response_ms <= ").push_bind(ms);
    }
    if let Some(part) = &f.path_contains {
        qb.push(" AND path ILIKE ")
            .push_bind(contains_pattern(part));
    }
    if let Some(trace) = &f.trace_id {
        qb.push(" AND trace_id = ").push_bind(trace);
    }
}

#[async_trait]
impl RequestLogs for PgRequestLogs {
    fn record(&self, entry: NewRequestLog) {
        if self.queue.try_send(entry).is_err() {
            metrics::counter!("cohort360_request_logs_dropped_total").increment(1);
        }
    }

    async fn list(
        &self,
        filter: &RequestLogFilter,
        window: Window,
    ) -> Result<Page<RequestLog>, ReadError> {
        let (count, rows) = fetch_page::<Row>(
            &self.pool,
            "SELECT count(*) FROM ops.request_logs WHERE true",
            SELECT,
            |qb| push_where(qb, filter),
            (&filter.ordering, "requested_at DESC", "id DESC"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn get(&self, id: i64) -> Result<Option<RequestLog>, ReadError> {
        let row: Option<Row> = sqlx::query_as(&format!("{SELECT} AND id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bodies_read_back_as_written_or_as_text() {
        let huge = serde_json::json!({"n": 1.7976931348623157e308, "s": "é"});
        assert_eq!(stored_json(stored_text(&huge)), huge);
        let legacy = format!("{{\"n\": 1{}}}", "0".repeat(400));
        assert_eq!(
            stored_json(legacy.clone()),
            serde_json::Value::String(legacy)
        );
    }
}
