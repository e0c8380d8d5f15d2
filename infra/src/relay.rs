//! The relay: publishes committed events to JetStream, in log order, at least once, with a
//! stable message id.
//!
//! The events table is the outbox. The relay reads it gap-safely ([`crate::log`]), publishes a
//! batch, waits for every acknowledgement, and only then advances its checkpoint. A crash between
//! publish and checkpoint republishes the same messages with the same `Nats-Msg-Id` (JetStream
//! drops them inside its duplicate window; consumers drop them by cursor in any case). One relay
//! per database publishes at a time: the others wait on an advisory lock.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use projections::Cursor;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::log::read_committed_after;
use crate::nats::{Envelope, NatsSettings};

/// Channel on which the events table notifies appends.
pub const NOTIFY_CHANNEL: &str = "cohort360_events";

/// Advisory-lock key that elects the single active relay of a database ("c360" in ASCII).
const RELAY_LOCK_KEY: i64 = 0x6333_3630;

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Name of the checkpoint row.
    pub name: String,
    /// Events read and published per round trip.
    pub batch_size: i64,
    /// Safety-net poll when no notification arrives (notifications can be lost on reconnect).
    pub poll_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            name: "jetstream".into(),
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Why one relay round failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publish: {0}")]
    Publish(String),
}

/// Publishes the event log to JetStream.
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    nats: NatsSettings,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        js: jetstream::Context,
        nats: NatsSettings,
        settings: RelaySettings,
    ) -> Self {
        Self {
            pool,
            js,
            nats,
            settings,
        }
    }

    /// Where this relay has published up to.
    pub async fn checkpoint(&self) -> sqlx::Result<Cursor> {
        checkpoint(&self.pool, &self.settings.name).await
    }

    /// Publishes one batch after the checkpoint; returns how many events it published.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        let from = self.checkpoint().await?;
        let events = read_committed_after(&self.pool, from, self.settings.batch_size).await?;
        let Some(last) = events.last().map(|e| e.cursor()) else {
            return Ok(0);
        };
        // Send the whole batch, then wait for the acks: one round trip of latency per batch.
        let mut acks = Vec::with_capacity(events.len());
        let mut previous = from;
        for event in &events {
            let envelope = Envelope::new(event, previous);
            previous = event.cursor();
            let body =
                serde_json::to_vec(&envelope).map_err(|e| RelayError::Publish(e.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert("Cohort360-Schema", crate::nats::ENVELOPE_SCHEMA);
            let message = PublishMessage::build()
                .headers(headers)
                .message_id(&envelope.message_id)
                .payload(body.into());
            let subject = self.nats.subject(&event.aggregate_type, &event.event_type);
            let ack = self
                .js
                .send_publish(subject, message)
                .await
                .map_err(|e| RelayError::Publish(e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| RelayError::Publish(e.to_string()))?;
        }
        sqlx::query(
            "INSERT INTO relay_checkpoints (relay, txid, position, published, updated_at)
             VALUES ($1, ($2::bigint)::text::xid8, $3, $4, now())
             ON CONFLICT (relay) DO UPDATE
                SET txid = excluded.txid, position = excluded.position,
                    published = relay_checkpoints.published + excluded.published, updated_at = now()",
        )
        .bind(&self.settings.name)
        .bind(last.txid)
        .bind(last.position)
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        crate::health::observe_lag("cohort360_relay_lag_seconds", "relay", "jetstream", &events);
        Ok(events.len())
    }

    /// Publishes until nothing is left; returns how many events it published.
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let n = self.publish_batch().await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown`: wins the relay election, then publishes whenever the events table
    /// notifies an append (or the poll interval passes), retrying failures with a backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.lead(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "relay interrupted; restarting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn lead(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        // The lock lives as long as this connection, which is detached from the pool so that
        // dropping it (crash, abort) closes it and Postgres frees the lock.
        let mut lock_conn = self.pool.acquire().await?.detach();
        loop {
            let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut lock_conn)
                .await?;
            if won {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        tracing::info!(relay = %self.settings.name, "relay elected; publishing");
        let result = self.publish_loop(shutdown).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(RELAY_LOCK_KEY)
            .execute(&mut lock_conn)
            .await;
        result
    }

    /// Whether committed events lie beyond the safe horizon (held back by an older, still
    /// running transaction).
    async fn held_back(&self) -> bool {
        match self.checkpoint().await {
            Ok(cp) => crate::log::count_after(&self.pool, cp)
                .await
                .is_ok_and(|n| n > 0),
            Err(_) => false,
        }
    }

    async fn publish_loop(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut backoff = Duration::from_millis(100);
        let mut held_retry = HELD_BACK_RETRY;
        loop {
            match self.publish_batch().await {
                Ok(n) if n as i64 >= self.settings.batch_size => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    if n > 0 {
                        held_retry = HELD_BACK_RETRY;
                    }
                    // A committed event held back by an older transaction still running sent
                    // its notification already: look again shortly rather than at the next
                    // notification or poll (which a quiet system may not bring for a while).
                    // Backing off, so that a long transaction does not turn this into a busy loop.
                    if self.held_back().await {
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(held_retry) => {}
                        }
                        held_retry = (held_retry * 2).min(self.settings.poll_interval);
                        continue;
                    }
                    held_retry = HELD_BACK_RETRY;
                }
                Err(e) => {
                    // NATS or Postgres is away: keep the checkpoint, try again later.
                    crate::health::record_error("relay", &e.to_string());
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "relay could not publish");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                notification = listener.recv() => { notification?; }
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }
}

/// How soon the relay looks again when committed events wait behind the horizon.
const HELD_BACK_RETRY: Duration = Duration::from_millis(5);

/// The checkpoint of relay `name` (the start of the log if it never published).
pub async fn checkpoint(pool: &PgPool, name: &str) -> sqlx::Result<Cursor> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT (txid::text)::bigint, position FROM relay_checkpoints WHERE relay = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or(Cursor::START, |(txid, position)| Cursor { txid, position }))
}
