//! Following the event log: catch up from the events table, then take live events from
//! JetStream, falling back to the table on gaps, silence and outages.
//!
//! Projectors (read models) and reactors (side effects) both consume the log this way; they
//! differ in what "offer an event" and "catch up" do, which [`LogConsumer`] abstracts.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use projections::Cursor;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::log::CommittedEvent;
use crate::nats::{Envelope, NatsSettings};

/// What happened to one event offered to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// At or before the checkpoint: already handled.
    Duplicate,
    /// The event's predecessor was not handled yet: catch up from the table first.
    Gap,
}

/// A consumer of the event log with its own checkpoint.
#[async_trait]
pub trait LogConsumer: Send + Sync + 'static {
    /// Its name.
    fn name(&self) -> &str;
    /// The name of its durable JetStream consumer on `stream`. Each log consumer needs one of
    /// its own: two sharing a durable consumer would split its messages between them (each then
    /// waits for its poll to find the other half in Postgres).
    fn durable_name(&self, stream: &str) -> String {
        format!("{stream}_{}", self.name())
    }
    /// How often to check the event table when NATS brings nothing.
    fn poll_interval(&self) -> Duration;
    /// Handles everything committed after the checkpoint. Returns how many events it read.
    async fn catch_up(&self) -> Result<usize, String>;
    /// Live events, each with its predecessor in the log, in log order. [`Outcome::Gap`] when
    /// one's predecessor was not handled: the caller then catches up.
    async fn offer(&self, batch: Vec<(CommittedEvent, Cursor)>) -> Result<Outcome, String>;
    /// Signalled when this process committed events the consumer should read from the table at
    /// once, rather than wait for the relay and NATS.
    fn wake(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// Live messages handled in one go: those JetStream already delivered to this client.
const LIVE_BATCH: usize = 500;

/// Resolves when `wake` is signalled; never without one.
async fn woken(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs `consumer` until `shutdown`: catches up, then follows JetStream (its durable consumer,
/// [`LogConsumer::durable_name`]); without JetStream, polls the table.
pub async fn run<C: LogConsumer>(
    consumer: C,
    js: Option<jetstream::Context>,
    nats: NatsSettings,
    shutdown: CancellationToken,
) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = consumer.catch_up().await {
            crate::pipeline_signals::record_error(consumer.name(), &e);
            tracing::error!(consumer = consumer.name(), error = %e, "catch-up failed");
            if sleep_or_stop(&shutdown, Duration::from_secs(1)).await {
                return;
            }
            continue;
        }
        let followed = match &js {
            Some(js) => follow(&consumer, js, &nats, &shutdown).await,
            None => poll(&consumer, &shutdown).await,
        };
        match followed {
            Ok(()) => return,
            Err(e) => {
                crate::pipeline_signals::record_error(consumer.name(), &e);
                tracing::warn!(consumer = consumer.name(), error = %e, "live feed interrupted; polling the event table meanwhile");
                // Keep up from Postgres while NATS is away.
                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                while tokio::time::Instant::now() < until {
                    if let Err(e) = consumer.catch_up().await {
                        crate::pipeline_signals::record_error(consumer.name(), &e);
                        tracing::warn!(consumer = consumer.name(), error = %e, "catch-up failed");
                    }
                    if sleep_or_stop(&shutdown, consumer.poll_interval()).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn poll<C: LogConsumer>(consumer: &C, shutdown: &CancellationToken) -> Result<(), String> {
    let wake = consumer.wake();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = woken(wake.as_deref()) => {}
            () = tokio::time::sleep(consumer.poll_interval()) => {}
        }
        consumer.catch_up().await?;
    }
}

/// Subscribes the durable consumer named `durable`.
async fn subscribe(
    durable: String,
    js: &jetstream::Context,
    nats: &NatsSettings,
) -> Result<consumer::pull::Stream, String> {
    let stream = js
        .get_stream(&nats.stream)
        .await
        .map_err(|e| e.to_string())?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    consumer
        .stream()
        .heartbeat(Duration::from_secs(2))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

async fn follow<C: LogConsumer>(
    consumer: &C,
    js: &jetstream::Context,
    nats: &NatsSettings,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    // Subscribing waits on NATS; keep up from Postgres meanwhile.
    let mut messages = tokio::select! {
        subscribed = subscribe(consumer.durable_name(&nats.stream), js, nats) => subscribed?,
        polled = poll(consumer, shutdown) => return polled,
    };
    let wake = consumer.wake();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = woken(wake.as_deref()) => {
                consumer.catch_up().await?;
                continue;
            }
            next = tokio::time::timeout(consumer.poll_interval(), messages.next()) => next,
        };
        let first = match next {
            // Silence: make sure nothing was missed while NATS was quiet.
            Err(_) => {
                consumer.catch_up().await?;
                continue;
            }
            Ok(None) => return Err("the consumer stream ended".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(m))) => m,
        };
        // With it, whatever else has already arrived.
        let mut held = vec![first];
        let mut interrupted = None;
        while held.len() < LIVE_BATCH {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => held.push(m),
                Some(Some(Err(e))) => {
                    interrupted = Some(e.to_string());
                    break;
                }
                Some(None) => {
                    interrupted = Some("the consumer stream ended".into());
                    break;
                }
                None => break,
            }
        }
        handle_messages(consumer, &held).await?;
        for message in held {
            message.ack().await.map_err(|e| e.to_string())?;
        }
        if let Some(e) = interrupted {
            return Err(e);
        }
    }
}

/// Offers the events of `messages` in one batch; an envelope without its payload (too large
/// for NATS) or a gap sends the consumer to the table instead.
async fn handle_messages<C: LogConsumer>(
    consumer: &C,
    messages: &[jetstream::Message],
) -> Result<(), String> {
    let mut batch = Vec::with_capacity(messages.len());
    for message in messages {
        match serde_json::from_slice::<Envelope>(&message.payload) {
            Ok(envelope) if envelope.payload_omitted => {
                consumer.catch_up().await?;
                return Ok(());
            }
            Ok(envelope) => {
                let previous = envelope.previous;
                batch.push((envelope.into_event(), previous));
            }
            Err(e) => {
                tracing::error!(consumer = consumer.name(), error = %e, "undecodable message ignored")
            }
        }
    }
    if !batch.is_empty() && consumer.offer(batch).await? == Outcome::Gap {
        consumer.catch_up().await?;
    }
    Ok(())
}

/// Sleeps for `d`; `true` when `shutdown` came first.
pub(crate) async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}
