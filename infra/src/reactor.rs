//! The reactor runtime: runs side effects (executor calls, websocket pushes, public events) for
//! the events of the log, at least once each.
//!
//! A reactor keeps its cursor in `reactor_checkpoints` and moves it after each handled event, so
//! a crash repeats at most the event in hand. It holds no transaction while reacting (a reaction
//! runs commands, whose events the relay must be able to publish meanwhile). Reactions are
//! therefore idempotent on their own: an executor submission is claimed by an event before the
//! call, a websocket message or a public event sent twice is harmless (public events carry a
//! `Nats-Msg-Id`).
//!
//! A new reactor starts at the end of the log: it reacts to what happens from then on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use projections::Cursor;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::follow::{LogConsumer, Outcome};
use crate::log::{CommittedEvent, read_committed_after};

/// Events read per catch-up query.
const CATCH_UP_BATCH: i64 = 200;

/// One kind of side effect.
#[async_trait]
pub trait Reaction: Send + Sync + 'static {
    /// The reactor's name (its checkpoint row).
    fn name(&self) -> &'static str;
    /// Whether this reaction does something for `event` (a cheap test of its type).
    fn handles(&self, event: &CommittedEvent) -> bool;
    /// Does it. An error is retried (after a pause) with the same event.
    async fn react(&self, event: &CommittedEvent) -> Result<(), String>;
}

/// Tuning of a reactor.
#[derive(Debug, Clone)]
pub struct ReactorSettings {
    pub poll_interval: Duration,
    /// The progress of this process's projectors that must have applied an event before the
    /// reaction runs, because it reads them (a projector observes events other instances
    /// applied too).
    pub after: Vec<(&'static str, watch::Receiver<Cursor>)>,
    /// Longest wait for those projections; the reaction then runs anyway.
    pub wait_for_projections: Duration,
}

/// Runs one reaction over the log.
pub struct Reactor {
    pool: PgPool,
    reaction: Arc<dyn Reaction>,
    settings: ReactorSettings,
    /// Where this instance got to. Events the reaction ignores move only this; the stored
    /// checkpoint follows when an event is handled, a catch-up ends, or at most
    /// [`SEEN_FLUSH`] after the last save, which spares two queries per ignored event (a
    /// restart re-reads a few ignored events, harmlessly) while keeping the stored checkpoint
    /// (what the pipeline health reads) close behind.
    seen: Mutex<Option<Cursor>>,
    /// When the checkpoint was last stored.
    saved_at: Mutex<std::time::Instant>,
}

/// How stale the stored checkpoint may get while only ignored events flow.
const SEEN_FLUSH: Duration = Duration::from_secs(1);

impl Reactor {
    /// A reactor; [`Reactor::start`] creates its checkpoint at the end of the log if needed.
    pub fn new(pool: PgPool, reaction: Arc<dyn Reaction>, settings: ReactorSettings) -> Self {
        Self {
            pool,
            reaction,
            settings,
            seen: Mutex::new(None),
            saved_at: Mutex::new(std::time::Instant::now()),
        }
    }

    fn seen(&self) -> Option<Cursor> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn see(&self, cursor: Cursor) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.is_none_or(|s| cursor > s) {
            *seen = Some(cursor);
        }
    }

    /// Creates the checkpoint row (at the current end of the log) if it does not exist.
    pub async fn start(&self) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO reactor_checkpoints (name, txid, position)
             SELECT $1, COALESCE(max(txid), '0'), COALESCE(max(position), 0)
               FROM (SELECT txid, position FROM events
                      WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
                      ORDER BY txid DESC, position DESC LIMIT 1) AS head
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(self.reaction.name())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn checkpoint(&self) -> sqlx::Result<Cursor> {
        let (txid, position): (i64, i64) = sqlx::query_as(
            "SELECT (txid::text)::bigint, position FROM reactor_checkpoints WHERE name = $1",
        )
        .bind(self.reaction.name())
        .fetch_one(&self.pool)
        .await?;
        Ok(Cursor { txid, position })
    }

    async fn save(&self, to: Cursor, handled: i64) -> sqlx::Result<()> {
        // Never backwards: another instance may have gone further.
        sqlx::query(
            "UPDATE reactor_checkpoints
                SET txid = ($2::bigint)::text::xid8, position = $3, handled = handled + $4,
                    updated_at = now()
              WHERE name = $1 AND (txid, position) < (($2::bigint)::text::xid8, $3)",
        )
        .bind(self.reaction.name())
        .bind(to.txid)
        .bind(to.position)
        .bind(handled)
        .execute(&self.pool)
        .await?;
        *self.saved_at.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        Ok(())
    }

    /// Whether the stored checkpoint is due for a refresh (see [`SEEN_FLUSH`]).
    fn save_due(&self) -> bool {
        self.saved_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= SEEN_FLUSH
    }

    /// Waits until the projections this reaction reads have applied `cursor`.
    async fn wait_for_projections(&self, cursor: Cursor) {
        let deadline = tokio::time::Instant::now() + self.settings.wait_for_projections;
        for (name, progress) in &self.settings.after {
            let mut progress = progress.clone();
            let reached = tokio::time::timeout_at(deadline, progress.wait_for(|c| *c >= cursor));
            if !matches!(reached.await, Ok(Ok(_))) {
                tracing::warn!(
                    reactor = self.reaction.name(),
                    projection = name,
                    "projection behind; reacting anyway"
                );
            }
        }
    }

    /// Handles one event if the reaction wants it. Returns whether it did.
    async fn handle(&self, event: &CommittedEvent) -> Result<bool, String> {
        if !self.reaction.handles(event) {
            return Ok(false);
        }
        self.wait_for_projections(event.cursor()).await;
        // Outbound calls carry the trace id of the request that caused the event.
        let trace_id = event
            .metadata
            .get("correlation_id")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string();
        let span =
            tracing::info_span!("reaction", reactor = self.reaction.name(), trace_id = %trace_id);
        let reaction = tracing::Instrument::instrument(self.reaction.react(event), span);
        commands::trace::scope(trace_id, reaction).await.map_err(|e| {
            metrics::counter!("cohort360_reactor_failures_total", "reactor" => self.reaction.name().to_string())
                .increment(1);
            format!(
                "{} failed on {}: {e}",
                self.reaction.name(),
                event.message_id()
            )
        })?;
        crate::pipeline_signals::observe_lag(
            "cohort360_reaction_lag_seconds",
            "reactor",
            self.reaction.name(),
            std::slice::from_ref(event),
        );
        Ok(true)
    }
}

#[async_trait]
impl LogConsumer for Reactor {
    fn name(&self) -> &str {
        self.reaction.name()
    }

    fn poll_interval(&self) -> Duration {
        self.settings.poll_interval
    }

    async fn catch_up(&self) -> Result<usize, String> {
        let mut total = 0;
        loop {
            let from = self.checkpoint().await.map_err(|e| e.to_string())?;
            let events = read_committed_after(&self.pool, from, CATCH_UP_BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let mut skipped_to = None;
            for event in &events {
                if self.handle(event).await? {
                    self.save(event.cursor(), 1)
                        .await
                        .map_err(|e| e.to_string())?;
                    skipped_to = None;
                } else {
                    skipped_to = Some(event.cursor());
                }
            }
            if let Some(to) = skipped_to.or(self.seen().filter(|s| *s > from)) {
                self.save(to, 0).await.map_err(|e| e.to_string())?;
            }
            if let Some(last) = events.last() {
                self.see(last.cursor());
            }
            total += events.len();
            if (events.len() as i64) < CATCH_UP_BATCH {
                return Ok(total);
            }
        }
    }

    async fn offer(&self, batch: &[(&CommittedEvent, Cursor)]) -> Result<Outcome, String> {
        let mut outcome = Outcome::Duplicate;
        for (event, previous) in batch {
            match self.offer_one(event, *previous).await? {
                Outcome::Gap => return Ok(Outcome::Gap),
                Outcome::Applied => outcome = Outcome::Applied,
                Outcome::Duplicate => {}
            }
        }
        Ok(outcome)
    }
}

impl Reactor {
    /// Offers one live event whose predecessor in the log is `previous`.
    async fn offer_one(&self, event: &CommittedEvent, previous: Cursor) -> Result<Outcome, String> {
        // An ignored event that follows what this instance saw: nothing to read or write.
        if !self.reaction.handles(event) && self.seen() == Some(previous) {
            self.see(event.cursor());
            if self.save_due() {
                self.save(event.cursor(), 0)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            return Ok(Outcome::Applied);
        }
        let checkpoint = self.checkpoint().await.map_err(|e| e.to_string())?;
        let position = self
            .seen()
            .filter(|s| *s > checkpoint)
            .unwrap_or(checkpoint);
        if event.cursor() <= position {
            return Ok(Outcome::Duplicate);
        }
        if previous != position {
            return Ok(Outcome::Gap);
        }
        let handled = self.handle(event).await?;
        self.save(event.cursor(), i64::from(handled))
            .await
            .map_err(|e| e.to_string())?;
        self.see(event.cursor());
        Ok(Outcome::Applied)
    }
}

/// Every reactor's cursor, by name (the operator's status report).
pub async fn checkpoints(pool: &PgPool) -> sqlx::Result<Vec<(String, Cursor)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT name, (txid::text)::bigint, position FROM reactor_checkpoints ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, txid, position)| (name, Cursor { txid, position }))
        .collect())
}

impl Reactor {
    /// Runs until `shutdown`, following the log with the process's live feed (see
    /// [`crate::follow::run`]), or polling the table without one.
    pub async fn run(
        self,
        feed: Option<crate::live_feed::LiveFeed>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        crate::follow::run(self, feed, shutdown).await
    }
}
