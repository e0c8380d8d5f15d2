//! The projector runtime: folds the event log into read models, exactly once per event.
//!
//! Each projection owns one Postgres schema holding its tables and its checkpoint row. Events
//! and the checkpoint move forward in one transaction, after locking the checkpoint row, so a
//! redelivered event (NATS redelivery, a second instance, a replay) is recognised by its cursor
//! and ignored. Every event that is ready goes in one transaction with one checkpoint write: a
//! catch-up batch, or the JetStream messages already delivered. That transaction costs three
//! round trips ([`crate::checkpoint_tx`]): the lock with the catch-up's read of the log, the
//! projection's statements, the checkpoint's write with the commit.
//!
//! Events of aggregates the projection does not read ([`Projection::reads`]) cost nothing: a run
//! of them that follows what this instance has seen moves an in-memory place, and the stored
//! checkpoint follows at the next applied event, when the feed goes quiet, or at most
//! [`DEFERRED_SAVE`] later (a restart re-reads those events, harmlessly).
//!
//! Those transactions commit asynchronously (`synchronous_commit = off`): a read model is derived
//! data, and a crash that loses its last commits loses their checkpoint with them, so the events
//! are applied again from the log. The events themselves commit synchronously.
//!
//! The event table is the source of truth, NATS the feed from other instances: the projector
//! catches up from the table when it starts, when this process commits events it reads (the
//! command wakes it, see [`crate::consistency`]), when a NATS message shows a gap (its `previous`
//! cursor is not what this instance has seen), and on a timer when NATS is silent or away. A
//! rebuild ([`crate::rebuild`]) folds the whole log into a copy of the schema, then swaps it in
//! under the checkpoint lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use projections::Cursor;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};

use crate::applied::{AppliedLog, LogReads};
use crate::checkpoint_tx::{CheckpointTx, Locked, quote_ident};
use crate::follow::LogConsumer;
pub use crate::follow::Outcome;
use crate::held_connection::HeldConnection;
use crate::log::CommittedEvent;

/// Events folded per catch-up transaction.
const CATCH_UP_BATCH: i64 = 500;

/// How long the stored checkpoint may stay behind while only ignored events flow.
const DEFERRED_SAVE: Duration = Duration::from_secs(1);

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
    /// Another rebuild of the projection is running (it holds [`crate::rebuild::lock_key`]).
    #[error("a rebuild of {0} is already running: wait for it to end")]
    RebuildRunning(&'static str),
    /// A rebuild met events the projection reads but its rebuild groups do not name.
    #[error(
        "{projection} reads {aggregate_type} events, which none of its rebuild groups names: \
         the rebuild stopped, the live tables are untouched"
    )]
    Ungrouped {
        projection: &'static str,
        aggregate_type: String,
    },
}

/// A read model fed by events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The projection's name, which is also the name of its schema.
    fn name(&self) -> &'static str;

    /// Whether events of this aggregate type change this projection's tables. Only those are
    /// passed to [`Projection::apply`] (the projector still moves its checkpoint past every
    /// event), and read-your-writes only waits for the projections a command affects.
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

    /// Groups of aggregate types whose events change disjoint tables: no statement folding one
    /// group's events reads or writes a table that another group's statements write. A rebuild
    /// ([`crate::rebuild`]) folds each group on its own connection, side by side. Every type
    /// [`Projection::reads`] accepts must be in a group (a rebuild that meets one that is not
    /// fails, leaving the live tables alone). Empty, the default: the log is folded as one.
    fn rebuild_groups(&self) -> &'static [&'static [&'static str]] {
        &[]
    }

    /// Folds several events (in log order, all of aggregates it reads), in the same
    /// transaction. One by one unless the projection folds runs of them set-based, which it may
    /// only do where the tables end exactly as [`Projection::apply`] would leave them (rebuild
    /// equality checks it).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&CommittedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(conn, event).await?;
        }
        Ok(())
    }
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
    // The payload as written by this build is read in place; an older one is upcast first.
    if event.event_version == domain::upcast::current_version(&event.event_type) {
        return T::deserialize(&event.payload).map_err(|e| undecodable(e.to_string()));
    }
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

/// What this instance knows of its projection's place in the log.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// The stored checkpoint, as this instance last read or wrote it (it only moves forward).
    stored: Cursor,
    /// Every event up to here is in the read model or of a type the projection does not read:
    /// the events in `(stored, seen]` are all ignored ones, whose checkpoint write is deferred.
    seen: Cursor,
}

/// Runs one projection.
pub struct Projector {
    pool: PgPool,
    /// The connection its folds run on.
    conn: HeldConnection,
    projection: Arc<dyn Projection>,
    progress: watch::Sender<Cursor>,
    settings: ProjectorSettings,
    /// `None` until the checkpoint is first read.
    place: Mutex<Option<Place>>,
    /// When the checkpoint was last stored.
    saved_at: Mutex<Instant>,
    /// When the stored checkpoint was last compared with the place ([`Projector::check_stored`]).
    checked_at: Mutex<Instant>,
    /// Signalled by this process's commands: catch up from the table now.
    wake: Arc<Notify>,
    applied: Arc<AppliedLog>,
    reads: Arc<LogReads>,
}

/// What read-your-writes needs of a running projector.
#[derive(Clone)]
pub struct ProjectorHandle {
    pub projection: Arc<dyn Projection>,
    /// The cursor up to which this process knows the projection is current.
    pub progress: watch::Receiver<Cursor>,
    /// The recent events it applied, by aggregate.
    pub applied: Arc<AppliedLog>,
    /// Makes it read the event table at once (after a local commit).
    pub wake: Arc<Notify>,
    /// Its reads of the event table, numbered as they begin.
    pub reads: Arc<LogReads>,
}

impl Projector {
    pub fn new(pool: PgPool, projection: Arc<dyn Projection>, settings: ProjectorSettings) -> Self {
        let (progress, _) = watch::channel(Cursor::START);
        Self {
            conn: HeldConnection::new(pool.clone()),
            pool,
            projection,
            progress,
            settings,
            place: Mutex::new(None),
            saved_at: Mutex::new(Instant::now()),
            checked_at: Mutex::new(Instant::now()),
            wake: Arc::new(Notify::new()),
            applied: Arc::new(AppliedLog::default()),
            reads: Arc::new(LogReads::default()),
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

    /// What read-your-writes holds of this projector.
    pub fn handle(&self) -> ProjectorHandle {
        ProjectorHandle {
            projection: self.projection.clone(),
            progress: self.progress(),
            applied: self.applied.clone(),
            wake: self.wake.clone(),
            reads: self.reads.clone(),
        }
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

    fn place(&self) -> Option<Place> {
        *self.place.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_place(&self, place: Place) {
        *self.place.lock().unwrap_or_else(|e| e.into_inner()) = Some(place);
    }

    fn saved_now(&self) {
        *self.saved_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether deferred checkpoint writes are due (see [`DEFERRED_SAVE`]).
    fn save_due(&self) -> bool {
        self.saved_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= DEFERRED_SAVE
    }

    /// Whether the stored checkpoint is behind what this instance stored: asynchronous commits
    /// lost in a crash of Postgres. Then what this instance remembers is ahead of the tables:
    /// it forgets it, and the next read starts from the stored checkpoint, applying the lost
    /// events again.
    fn regressed(&self, place: Place, stored: Cursor) -> bool {
        if stored >= place.stored {
            return false;
        }
        tracing::warn!(
            projection = self.projection.name(),
            stored = %stored,
            remembered = %place.stored,
            "the checkpoint went back (commits lost in a database crash); applying again from it"
        );
        self.forget_place();
        true
    }

    /// Forgets the place: the next read takes it from the stored checkpoint.
    fn forget_place(&self) {
        *self.place.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// At most every [`DEFERRED_SAVE`], compares the stored checkpoint with what this instance
    /// remembers (a crash of Postgres may have taken its last commits while it was idle).
    async fn check_stored(&self) -> Result<(), ProjectionError> {
        let due = {
            let mut checked = self.checked_at.lock().unwrap_or_else(|e| e.into_inner());
            let due = checked.elapsed() >= DEFERRED_SAVE;
            if due {
                *checked = Instant::now();
            }
            due
        };
        if let (true, Some(place)) = (due, self.place()) {
            let stored = checkpoint(&self.pool, self.projection.name()).await?;
            self.regressed(place, stored);
        }
        Ok(())
    }

    /// The place, read from the checkpoint the first time.
    async fn known_place(&self) -> Result<Place, ProjectionError> {
        if let Some(place) = self.place() {
            return Ok(place);
        }
        let stored = checkpoint(&self.pool, self.projection.name()).await?;
        let place = Place {
            stored,
            seen: stored,
        };
        self.set_place(place);
        self.observe(stored);
        Ok(place)
    }

    /// Folds everything committed after what this instance has seen, batch by batch. Returns
    /// how many events it read. At the end of the log, stores a deferred checkpoint.
    ///
    /// Each batch is read in the transaction that folds it, in the round trip that locks the
    /// checkpoint (see [`crate::checkpoint_tx`]).
    pub async fn catch_up(&self) -> Result<usize, ProjectionError> {
        self.check_stored().await?;
        let mut total = 0;
        loop {
            let place = self.known_place().await?;
            let from = place.seen;
            // Ends (for read-your-writes) once what it read is folded and recorded.
            let _read = self.reads.begin();
            let Locked { tx, stored, events } = CheckpointTx::begin(
                &self.conn,
                self.projection.name(),
                Some((from, CATCH_UP_BATCH)),
            )
            .await?;
            let read = events.len();
            total += read;
            // The checkpoint went back: read again from it.
            if self.regressed(place, stored) {
                tx.rollback().await?;
                continue;
            }
            if read == 0 {
                tx.rollback().await?;
            } else if self
                .fold_locked(tx, place, stored, chain(from, &events))
                .await?
                == Outcome::Gap
            {
                continue;
            }
            if (read as i64) < CATCH_UP_BATCH {
                self.store_seen(read == 0).await?;
                return Ok(total);
            }
        }
    }

    /// Offers live events, each with its predecessor in the log, in log order.
    pub async fn offer(
        &self,
        batch: &[(&CommittedEvent, Cursor)],
    ) -> Result<Outcome, ProjectionError> {
        self.take(batch).await
    }

    /// Applies what is new in `batch` (events with their predecessors, in log order).
    ///
    /// Events this instance has seen are dropped without a query. A run of events that follows
    /// what it has seen and that the projection does not read moves only the in-memory place.
    /// Otherwise, under the checkpoint's lock, each event whose predecessor is covered is
    /// applied (if read) and the checkpoint written once; the first event whose predecessor is
    /// not covered stops the batch with [`Outcome::Gap`].
    async fn take(&self, batch: &[(&CommittedEvent, Cursor)]) -> Result<Outcome, ProjectionError> {
        let place = self.known_place().await?;
        let fresh: Vec<(&CommittedEvent, Cursor)> = batch
            .iter()
            .filter(|(e, _)| e.cursor() > place.seen)
            .copied()
            .collect();
        if fresh.is_empty() {
            self.observe(place.seen);
            return Ok(Outcome::Duplicate);
        }
        let follows =
            fresh[0].1 == place.seen && fresh.windows(2).all(|w| w[1].1 == w[0].0.cursor());
        let read_any = fresh
            .iter()
            .any(|(e, _)| self.projection.reads(&e.aggregate_type));
        if follows && !read_any {
            let last = fresh.last().map_or(place.seen, |(e, _)| e.cursor());
            self.set_place(Place {
                seen: last,
                ..place
            });
            self.observe(last);
            if self.save_due() {
                self.store_seen(true).await?;
            }
            return Ok(Outcome::Applied);
        }

        let Locked { tx, stored, .. } =
            CheckpointTx::begin(&self.conn, self.projection.name(), None).await?;
        if self.regressed(place, stored) {
            tx.rollback().await?;
            return Ok(Outcome::Gap);
        }
        self.fold_locked(tx, place, stored, fresh).await
    }

    /// Folds `fresh` (events after `place.seen`, with their predecessors, in log order) in `tx`,
    /// which locked the checkpoint at `stored`: each event whose predecessor is covered is
    /// applied (if read) and the checkpoint written once; the first event whose predecessor is
    /// not covered stops the batch with [`Outcome::Gap`].
    async fn fold_locked(
        &self,
        mut tx: CheckpointTx<'_>,
        place: Place,
        stored: Cursor,
        fresh: Vec<(&CommittedEvent, Cursor)>,
    ) -> Result<Outcome, ProjectionError> {
        let schema = self.projection.name();
        // Another instance may have gone further than what this one has seen.
        let mut at = if stored <= place.seen {
            place.seen
        } else {
            stored
        };
        let mut to_apply = Vec::new();
        let mut gap = false;
        let mut covered = 0;
        for (event, previous) in &fresh {
            if event.cursor() <= at {
                covered += 1;
                continue;
            }
            if *previous != at {
                gap = true;
                break;
            }
            if self.projection.reads(&event.aggregate_type) {
                to_apply.push(*event);
            }
            at = event.cursor();
            covered += 1;
        }
        let applied = to_apply.len() as i64;
        if applied > 0 {
            self.projection.apply_batch(tx.conn(), &to_apply).await?;
            tx.commit_at(at, applied).await?;
            self.set_place(Place {
                stored: at,
                seen: at,
            });
            self.saved_now();
        } else {
            tx.rollback().await?;
            self.set_place(Place { stored, seen: at });
        }
        self.observe(at);
        let done = &fresh[..covered];
        self.applied.record(
            done.iter()
                .map(|(e, _)| *e)
                .filter(|e| self.projection.reads(&e.aggregate_type)),
        );
        crate::pipeline_signals::observe_lag(
            "cohort360_projection_lag_seconds",
            "projection",
            schema,
            done.iter().map(|(e, _)| *e),
        );
        Ok(if gap {
            Outcome::Gap
        } else if covered == 0 {
            Outcome::Duplicate
        } else {
            Outcome::Applied
        })
    }

    /// Stores the checkpoint up to what this instance has seen, when ignored events left it
    /// behind and `now` or the deferral is due.
    async fn store_seen(&self, now: bool) -> Result<(), ProjectionError> {
        let Some(place) = self.place() else {
            return Ok(());
        };
        if place.seen <= place.stored || !(now || self.save_due()) {
            return Ok(());
        }
        let Locked { tx, stored, .. } =
            CheckpointTx::begin(&self.conn, self.projection.name(), None).await?;
        if self.regressed(place, stored) {
            tx.rollback().await?;
            return Ok(());
        }
        if stored < place.seen {
            tx.commit_at(place.seen, 0).await?;
            self.set_place(Place {
                stored: place.seen,
                seen: place.seen,
            });
        } else {
            tx.rollback().await?;
            self.set_place(Place {
                stored,
                seen: stored,
            });
            self.observe(stored);
        }
        self.saved_now();
        Ok(())
    }
}

/// `events` read after `from`, each with its predecessor.
fn chain(from: Cursor, events: &[CommittedEvent]) -> Vec<(&CommittedEvent, Cursor)> {
    let mut previous = from;
    events
        .iter()
        .map(|e| {
            let p = previous;
            previous = e.cursor();
            (e, p)
        })
        .collect()
}

impl Projector {
    /// Runs until `shutdown`, following the log (see [`crate::follow::run`]) with the process's
    /// live feed, or polling the table without one.
    pub async fn run(
        self,
        feed: Option<crate::live_feed::LiveFeed>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        crate::follow::run(self, feed, shutdown).await
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
        Projector::catch_up(self).await.map_err(|e| {
            // The database may have restarted: take the place from it again.
            self.forget_place();
            e.to_string()
        })
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }

    async fn offer(&self, batch: &[(&CommittedEvent, Cursor)]) -> Result<Outcome, String> {
        Projector::offer(self, batch).await.map_err(|e| {
            self.forget_place();
            e.to_string()
        })
    }
}
