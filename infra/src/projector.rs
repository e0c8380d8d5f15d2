//! The projector runtime: folds the event log into read models, exactly once per event.
//!
//! Each projection owns one Postgres schema holding its tables and its checkpoint row. An event
//! and the checkpoint move forward in one transaction, after locking the checkpoint row, so a
//! redelivered event (NATS redelivery, a second instance, a replay) is recognised by its cursor
//! and ignored.
//!
//! NATS is the live feed, the event table the source of truth: the projector catches up from the
//! table when it starts, when a NATS message shows a gap (its `previous` cursor is not the
//! checkpoint), and on a timer when NATS is silent or away. A rebuild folds the whole log into a
//! copy of the schema, then swaps it in under the checkpoint lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use projections::Cursor;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::follow::LogConsumer;
pub use crate::follow::Outcome;
use crate::log::{CommittedEvent, read_committed_after};

/// Events folded per catch-up transaction.
const CATCH_UP_BATCH: i64 = 500;

/// Why an event could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The stored event does not decode: a contract break, the projector stops on it.
    #[error("event {message_id} ({event_type} v{event_version}) does not decode: {reason}")]
    Undecodable {
        message_id: String,
        event_type: String,
        event_version: String,
        reason: String,
    },
}

/// A read model fed by events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The projection's name, which is also the name of its schema.
    fn name(&self) -> &'static str;

    /// Whether events of this aggregate type change this projection's tables. Read-your-writes
    /// only waits for the projections a command affects (the projector still moves its
    /// checkpoint past every event).
    fn reads(&self, _aggregate_type: &str) -> bool {
        true
    }

    /// Folds one event into the tables. Runs inside the projector's transaction, with
    /// `search_path` set to the schema being written (live or rebuild): use unqualified names.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &CommittedEvent,
    ) -> Result<(), ProjectionError>;
}

/// Decodes a stored event payload for a fold, upcast to the version this build writes
/// ([`domain::upcast`]); anything else is reported as undecodable.
pub fn decode<T: serde::de::DeserializeOwned>(
    event: &CommittedEvent,
) -> Result<T, ProjectionError> {
    let undecodable = |reason: String| ProjectionError::Undecodable {
        message_id: event.message_id(),
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        reason,
    };
    let payload = domain::upcast::upcast(
        &event.event_type,
        &event.event_version,
        event.payload.clone(),
    )
    .map_err(|e| undecodable(e.to_string()))?;
    serde_json::from_value(payload).map_err(|e| undecodable(e.to_string()))
}

/// The aggregate id of an event whose aggregates are keyed by uuid.
pub fn aggregate_uuid(event: &CommittedEvent) -> Result<uuid::Uuid, ProjectionError> {
    event
        .aggregate_id
        .parse()
        .map_err(|e: uuid::Error| ProjectionError::Undecodable {
            message_id: event.message_id(),
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            reason: format!("aggregate id is not a uuid: {e}"),
        })
}

/// The aggregate id of an event whose aggregates are keyed by integers (upstream's ids).
pub fn aggregate_int(event: &CommittedEvent) -> Result<i64, ProjectionError> {
    event
        .aggregate_id
        .parse()
        .map_err(|e: std::num::ParseIntError| ProjectionError::Undecodable {
            message_id: event.message_id(),
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            reason: format!("aggregate id is not an integer: {e}"),
        })
}

/// The acting user recorded in an event's metadata, if any.
pub fn actor(event: &CommittedEvent) -> Option<String> {
    event
        .metadata
        .get("user")
        .and_then(|u| u.as_str())
        .map(str::to_string)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn lock_checkpoint(conn: &mut PgConnection, schema: &str) -> sqlx::Result<Cursor> {
    // The projection's schema first (its tables, unqualified), then `public` (the events).
    sqlx::query(&format!(
        "SET LOCAL search_path TO {}, public",
        quote_ident(schema)
    ))
    .execute(&mut *conn)
    .await?;
    let (txid, position): (i64, i64) =
        sqlx::query_as("SELECT (txid::text)::bigint, position FROM checkpoint FOR UPDATE")
            .fetch_one(&mut *conn)
            .await?;
    Ok(Cursor { txid, position })
}

async fn save_checkpoint(conn: &mut PgConnection, to: Cursor, applied: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE checkpoint SET txid = ($1::bigint)::text::xid8, position = $2,
                events_applied = events_applied + $3, updated_at = now()",
    )
    .bind(to.txid)
    .bind(to.position)
    .bind(applied)
    .execute(conn)
    .await?;
    Ok(())
}

/// Folds `events` (in log order) into the schema whose checkpoint the caller locked at `start`,
/// inside the caller's transaction. Events at or before `start` are skipped. Returns the new
/// checkpoint.
async fn fold(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    start: Cursor,
    events: &[CommittedEvent],
) -> Result<Cursor, ProjectionError> {
    let mut checkpoint = start;
    let mut applied = 0;
    for event in events.iter().filter(|e| e.cursor() > start) {
        projection.apply(conn, event).await?;
        checkpoint = event.cursor();
        applied += 1;
    }
    if applied > 0 {
        save_checkpoint(conn, checkpoint, applied).await?;
    }
    Ok(checkpoint)
}

/// Reads the checkpoint of a projection schema.
pub async fn checkpoint(pool: &PgPool, schema: &str) -> sqlx::Result<Cursor> {
    let (txid, position): (i64, i64) = sqlx::query_as(&format!(
        "SELECT (txid::text)::bigint, position FROM {}.checkpoint",
        quote_ident(schema)
    ))
    .fetch_one(pool)
    .await?;
    Ok(Cursor { txid, position })
}

/// Tuning of a projector.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// How often to check the event table when NATS brings nothing.
    pub poll_interval: Duration,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Runs one projection.
pub struct Projector {
    pool: PgPool,
    projection: Arc<dyn Projection>,
    progress: watch::Sender<Cursor>,
    settings: ProjectorSettings,
}

impl Projector {
    pub fn new(pool: PgPool, projection: Arc<dyn Projection>, settings: ProjectorSettings) -> Self {
        let (progress, _) = watch::channel(Cursor::START);
        Self {
            pool,
            projection,
            progress,
            settings,
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Follows the checkpoint as this process sees it advance (read-your-writes waits on it).
    pub fn progress(&self) -> watch::Receiver<Cursor> {
        self.progress.subscribe()
    }

    fn observe(&self, cursor: Cursor) {
        self.progress.send_if_modified(|current| {
            if cursor > *current {
                *current = cursor;
                true
            } else {
                false
            }
        });
    }

    /// Folds everything committed after the checkpoint. Returns how many events it read.
    pub async fn catch_up(&self) -> Result<usize, ProjectionError> {
        let schema = self.projection.name();
        let mut total = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let from = lock_checkpoint(&mut tx, schema).await?;
            let events = read_committed_after(&mut *tx, from, CATCH_UP_BATCH).await?;
            let reached = fold(&mut tx, self.projection.as_ref(), from, &events).await?;
            tx.commit().await?;
            self.observe(reached);
            let fresh: Vec<CommittedEvent> =
                events.into_iter().filter(|e| e.cursor() > from).collect();
            crate::pipeline_signals::observe_lag(
                "cohort360_projection_lag_seconds",
                "projection",
                schema,
                &fresh,
            );
            let events = fresh;
            total += events.len();
            if (events.len() as i64) < CATCH_UP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Offers one live event whose predecessor in the log is `previous`.
    pub async fn offer(
        &self,
        event: &CommittedEvent,
        previous: Cursor,
    ) -> Result<Outcome, ProjectionError> {
        let schema = self.projection.name();
        let mut tx = self.pool.begin().await?;
        let checkpoint = lock_checkpoint(&mut tx, schema).await?;
        if event.cursor() <= checkpoint {
            tx.rollback().await?;
            self.observe(checkpoint);
            return Ok(Outcome::Duplicate);
        }
        if previous != checkpoint {
            tx.rollback().await?;
            return Ok(Outcome::Gap);
        }
        self.projection.apply(&mut tx, event).await?;
        save_checkpoint(&mut tx, event.cursor(), 1).await?;
        tx.commit().await?;
        self.observe(event.cursor());
        crate::pipeline_signals::observe_lag(
            "cohort360_projection_lag_seconds",
            "projection",
            schema,
            std::slice::from_ref(event),
        );
        Ok(Outcome::Applied)
    }
}

impl Projector {
    /// Runs until `shutdown`, following the log (see [`crate::follow::run`]); the durable
    /// JetStream consumer is `<stream>_<projection>`.
    pub async fn run(
        self,
        js: Option<async_nats::jetstream::Context>,
        nats: crate::nats::NatsSettings,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        crate::follow::run(self, js, nats, shutdown).await
    }
}

#[async_trait]
impl LogConsumer for Projector {
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn poll_interval(&self) -> Duration {
        self.settings.poll_interval
    }

    async fn catch_up(&self) -> Result<usize, String> {
        Projector::catch_up(self).await.map_err(|e| e.to_string())
    }

    async fn offer(&self, event: &CommittedEvent, previous: Cursor) -> Result<Outcome, String> {
        Projector::offer(self, event, previous)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: usize,
    pub checkpoint: Cursor,
}

/// Rebuilds a projection from position 0 into a fresh copy of its schema, then swaps the copy in.
///
/// The live projector keeps running during the fold. For the swap, the live checkpoint is locked
/// (which waits for the live projector's transaction and holds back the next one), the copy
/// catches up to the end of the log, and the schemas are renamed in the same transaction: readers
/// see either the old tables or the new ones, never a mix.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
) -> Result<RebuildReport, ProjectionError> {
    let live = projection.name();
    let copy = format!("{live}_rebuild");
    let old = format!("{live}_old");
    let (q_live, q_copy, q_old) = (quote_ident(live), quote_ident(&copy), quote_ident(&old));

    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {q_copy} CASCADE"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {q_copy}"))
        .execute(&mut *conn)
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .bind(live)
    .fetch_all(&mut *conn)
    .await?;
    for table in &tables {
        let t = quote_ident(table);
        sqlx::query(&format!(
            "CREATE TABLE {q_copy}.{t} (LIKE {q_live}.{t} INCLUDING ALL)"
        ))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(&format!("INSERT INTO {q_copy}.checkpoint DEFAULT VALUES"))
        .execute(&mut *conn)
        .await?;
    drop(conn);

    // Fold the log into the copy, batch by batch, outside any lock.
    let mut events = 0;
    loop {
        let mut tx = pool.begin().await?;
        let from = lock_checkpoint(&mut tx, &copy).await?;
        let batch = read_committed_after(&mut *tx, from, 5_000).await?;
        fold(&mut tx, projection, from, &batch).await?;
        tx.commit().await?;
        events += batch.len();
        if batch.len() < 5_000 {
            break;
        }
    }

    // Swap under the live checkpoint's lock.
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "LOCK TABLE {q_live}.checkpoint IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *tx)
    .await?;
    let checkpoint = loop {
        let from = lock_checkpoint(&mut tx, &copy).await?;
        let batch = read_committed_after(&mut *tx, from, 5_000).await?;
        events += batch.len();
        let reached = fold(&mut tx, projection, from, &batch).await?;
        if batch.is_empty() {
            break reached;
        }
    };
    sqlx::query(&format!("ALTER SCHEMA {q_live} RENAME TO {q_old}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("ALTER SCHEMA {q_copy} RENAME TO {q_live}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {q_old} CASCADE"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(RebuildReport { events, checkpoint })
}
