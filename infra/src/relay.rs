//! The relay: publishes committed events to JetStream, in log order, at least once, with a
//! stable message id.
//!
//! The events table is the outbox. The relay reads it gap-safely ([`crate::log`]), publishes a
//! batch, waits for every acknowledgement, and only then advances its checkpoint. A crash between
//! publish and checkpoint republishes the same messages with the same `Nats-Msg-Id` (JetStream
//! drops them inside its duplicate window; consumers drop them by cursor in any case). One relay
//! per database publishes at a time: the others wait on an advisory lock.
//!
//! Nothing in the log can wedge it: an event larger than the server's `max_payload` (learnt at
//! connect) is published as its envelope without the payload (`payload_omitted`), which
//! consumers read from the events table. A publish that keeps failing (NATS away, the stream
//! deleted) is retried with a backoff, recreating the stream, and reported: the last error,
//! `cohort360_relay_consecutive_failures`, and the pipeline health (`/health/ready`).

use std::sync::LazyLock;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use projections::Cursor;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::held_connection::HeldConnection;
use crate::log::read_committed_after;
use crate::nats::{Envelope, NatsSettings};

/// Channel on which the events table notifies appends.
pub const NOTIFY_CHANNEL: &str = "cohort360_events";

/// Advisory-lock key that elects the single active relay of a database ("c360" in ASCII).
const RELAY_LOCK_KEY: i64 = 0x6333_3630;

/// Room kept within the server's `max_payload` for the message's headers.
const HEADER_ROOM: usize = 4 * 1024;

/// Consecutive failed rounds after which each further failure is logged as an error.
const LOUD_AFTER_FAILURES: u32 = 5;

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

/// What one round of the relay did.
struct Round {
    published: usize,
    /// Whether events lie beyond what it published (committed or not): known when it published
    /// something (its checkpoint's write tells), else to be asked.
    more: Option<bool>,
}

/// Publishes the event log to JetStream.
pub struct Relay {
    pool: PgPool,
    /// The connection its rounds read and write on.
    conn: HeldConnection,
    js: jetstream::Context,
    nats: NatsSettings,
    settings: RelaySettings,
    /// The checkpoint as this relay last wrote it, while it is the elected one (the only
    /// writer): spares reading it back before every batch.
    published: std::sync::Mutex<Option<Cursor>>,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        js: jetstream::Context,
        nats: NatsSettings,
        settings: RelaySettings,
    ) -> Self {
        Self {
            conn: HeldConnection::new(pool.clone()),
            pool,
            js,
            nats,
            settings,
            published: std::sync::Mutex::new(None),
        }
    }

    fn published(&self) -> Option<Cursor> {
        *self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_published(&self, cursor: Option<Cursor>) {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = cursor;
    }

    /// Where this relay has published up to: as it last wrote it, or as stored.
    async fn position(&self) -> sqlx::Result<Cursor> {
        match self.published() {
            Some(cursor) => Ok(cursor),
            None => self.checkpoint().await,
        }
    }

    /// Where this relay has published up to.
    pub async fn checkpoint(&self) -> sqlx::Result<Cursor> {
        checkpoint(&self.pool, &self.settings.name).await
    }

    /// The largest body a message may have: the connected server's `max_payload` (the NATS
    /// default while it is not known), less room for the headers.
    fn body_limit(&self) -> usize {
        let announced = self.js.client().server_info().max_payload;
        let max_payload = if announced == 0 {
            crate::nats::DEFAULT_MAX_PAYLOAD
        } else {
            announced
        };
        max_payload.saturating_sub(HEADER_ROOM)
    }

    /// Publishes one batch after the checkpoint; returns how many events it published.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        Ok(self.publish_round().await?.published)
    }

    /// Publishes one batch after the checkpoint.
    async fn publish_round(&self) -> Result<Round, RelayError> {
        let from = self.position().await?;
        let mut conn = self.conn.take().await?;
        let events = read_committed_after(&mut conn, from, self.settings.batch_size).await?;
        self.conn.give_back(conn);
        let Some(last) = events.last().map(|e| e.cursor()) else {
            return Ok(Round {
                published: 0,
                more: None,
            });
        };
        let limit = self.body_limit();
        // Send the whole batch, then wait for the acks: one round trip of latency per batch.
        let mut acks = Vec::with_capacity(events.len());
        let mut previous = from;
        for event in &events {
            let envelope = Envelope::new(event, previous);
            previous = event.cursor();
            let message_id = envelope.message_id.clone();
            let body = message_body(envelope, limit)?;
            let mut headers = HeaderMap::new();
            headers.insert("Cohort360-Schema", crate::nats::ENVELOPE_SCHEMA);
            let message = PublishMessage::build()
                .headers(headers)
                .message_id(&message_id)
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
        let stored = self.save_and_ask(last, events.len()).await;
        let more = match stored {
            Ok(more) => more,
            Err(e) => {
                self.set_published(None);
                return Err(e.into());
            }
        };
        self.set_published(Some(last));
        crate::pipeline_signals::observe_lag(
            "cohort360_relay_lag_seconds",
            "relay",
            "jetstream",
            &events,
        );
        Ok(Round {
            published: events.len(),
            more: Some(more),
        })
    }

    /// Stores the checkpoint at `last` (`published` more events) and asks whether events lie
    /// beyond it.
    async fn save_and_ask(&self, last: Cursor, published: usize) -> sqlx::Result<bool> {
        // Committed asynchronously (no WAL flush wait): a checkpoint lost in a crash only makes
        // the relay publish again messages that JetStream and the consumers drop as duplicates.
        // The same statement says whether events lie beyond it (see `publish_loop`), as
        // `crate::log::any_after` asks it.
        static SAVE_AND_ASK: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH saved AS (
                 INSERT INTO relay_checkpoints (relay, txid, position, published, updated_at)
                 SELECT $1, ($2::bigint)::text::xid8, $3, $4, now()
                   FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
                 ON CONFLICT (relay) DO UPDATE
                    SET txid = excluded.txid, position = excluded.position,
                        published = relay_checkpoints.published + excluded.published,
                        updated_at = now())
             SELECT {}",
                crate::log::any_after_sql("$2", "$3")
            )
        });
        let mut conn = self.conn.take().await?;
        let more = sqlx::query_scalar(SAVE_AND_ASK.as_str())
            .bind(&self.settings.name)
            .bind(last.txid)
            .bind(last.position)
            .bind(i64::try_from(published).unwrap_or(i64::MAX))
            .fetch_one(&mut conn)
            .await?;
        self.conn.give_back(conn);
        Ok(more)
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
        // Another relay may have published while this one waited.
        self.set_published(None);
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
        match self.position().await {
            Ok(cp) => crate::log::any_after(&self.pool, cp).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn publish_loop(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut backoff = Duration::from_millis(100);
        let mut held_retry = HELD_BACK_RETRY;
        let mut failures: u32 = 0;
        loop {
            let round = self.publish_round().await;
            if round.is_ok() && failures > 0 {
                tracing::info!(failures, "relay publishing again");
                failures = 0;
                metrics::gauge!("cohort360_relay_consecutive_failures").set(0.0);
            }
            match round {
                Ok(round) if round.published as i64 >= self.settings.batch_size => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(round) => {
                    backoff = Duration::from_millis(100);
                    if round.published > 0 {
                        held_retry = HELD_BACK_RETRY;
                    }
                    // A committed event held back by an older transaction still running sent
                    // its notification already: look again shortly rather than at the next
                    // notification or poll (which a quiet system may not bring for a while).
                    // Backing off, so that a long transaction does not turn this into a busy loop.
                    let held_back = match round.more {
                        Some(more) => more,
                        None => self.held_back().await,
                    };
                    if held_back {
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
                    // NATS or Postgres is away, or the stream is gone: keep the checkpoint,
                    // try again later, and say so.
                    failures = failures.saturating_add(1);
                    metrics::gauge!("cohort360_relay_consecutive_failures")
                        .set(f64::from(failures));
                    crate::pipeline_signals::record_error("relay", &e.to_string());
                    let retry_in_ms = backoff.as_millis() as u64;
                    if failures >= LOUD_AFTER_FAILURES {
                        tracing::error!(error = %e, failures, retry_in_ms, "relay keeps failing to publish");
                    } else {
                        tracing::warn!(error = %e, failures, retry_in_ms, "relay could not publish");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if matches!(e, RelayError::Publish(_)) {
                        // A deleted (or never created, NATS being away at start) stream answers
                        // every publish with an error: make sure it exists before the retry.
                        if let Err(e) = crate::nats::ensure_stream(&self.js, &self.nats).await {
                            tracing::debug!(error = %e, "stream not ensured yet");
                        }
                    }
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

/// The body of the message carrying `envelope`: the whole envelope if it fits in `limit`
/// bytes, else the envelope without its payload (and, should even that not fit, without its
/// metadata), so that no event can hold the relay back.
fn message_body(envelope: Envelope, limit: usize) -> Result<Vec<u8>, RelayError> {
    let encode =
        |e: &Envelope| serde_json::to_vec(e).map_err(|e| RelayError::Publish(e.to_string()));
    let body = encode(&envelope)?;
    if body.len() <= limit {
        return Ok(body);
    }
    tracing::warn!(
        message_id = %envelope.message_id,
        bytes = body.len(),
        limit,
        "event larger than a NATS message: published without its payload"
    );
    metrics::counter!("cohort360_relay_payloads_omitted_total").increment(1);
    let mut stub = envelope.without_payload();
    let body = encode(&stub)?;
    if body.len() <= limit {
        return Ok(body);
    }
    stub.metadata = serde_json::Value::Null;
    encode(&stub)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::CommittedEvent;

    fn event(payload_bytes: usize) -> CommittedEvent {
        CommittedEvent {
            txid: 1,
            position: 1,
            aggregate_type: "Folder".into(),
            aggregate_id: "f".into(),
            sequence: 1,
            event_type: "FolderCreated".into(),
            event_version: "1".into(),
            payload: serde_json::json!({"FolderCreated": {"description": "x".repeat(payload_bytes)}}),
            metadata: serde_json::json!({"user": "u"}),
            recorded_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_event_over_the_limit_is_sent_without_its_payload() {
        let small = message_body(Envelope::new(&event(10), Cursor::START), 4096).unwrap();
        let small: Envelope = serde_json::from_slice(&small).unwrap();
        assert!(!small.payload_omitted);
        let big = message_body(Envelope::new(&event(10_000), Cursor::START), 4096).unwrap();
        assert!(big.len() <= 4096);
        let big: Envelope = serde_json::from_slice(&big).unwrap();
        assert!(big.payload_omitted && big.payload.is_null());
        assert_eq!(big.metadata["user"], "u");
        assert_eq!(big.message_id, "Folder:f:1");
    }
}
