//! Following the event log: catch up from the events table, then take live events from the
//! process's [`LiveFeed`], falling back to the table on gaps, silence and outages.
//!
//! Projectors (read models) and reactors (side effects) both consume the log this way; they
//! differ in what "offer an event" and "catch up" do, which [`LogConsumer`] abstracts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use projections::Cursor;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::live_feed::{Delivery, LiveFeed};
use crate::log::CommittedEvent;

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
    /// How often to check the event table when the live feed brings nothing.
    fn poll_interval(&self) -> Duration;
    /// Handles everything committed after the checkpoint. Returns how many events it read.
    async fn catch_up(&self) -> Result<usize, String>;
    /// Live events, each with its predecessor in the log, in log order. [`Outcome::Gap`] when
    /// one's predecessor was not handled: the caller then catches up.
    async fn offer(&self, batch: &[(&CommittedEvent, Cursor)]) -> Result<Outcome, String>;
    /// Signalled when this process committed events the consumer should read from the table at
    /// once, rather than wait for the relay and NATS.
    fn wake(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// Resolves when `wake` is signalled; never without one.
async fn woken(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs `consumer` until `shutdown`: catches up, then follows the process's live `feed`; without
/// one, polls the table.
pub async fn run<C: LogConsumer>(consumer: C, feed: Option<LiveFeed>, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Subscribed before the catch-up: what arrives meanwhile waits in the channel.
        let deliveries = feed.as_ref().map(LiveFeed::subscribe);
        let followed = match consumer.catch_up().await {
            Err(e) => Err(format!("catch-up failed: {e}")),
            Ok(_) => match deliveries {
                Some(deliveries) => follow(&consumer, deliveries, &shutdown).await,
                None => poll(&consumer, &shutdown).await,
            },
        };
        match followed {
            Ok(()) => return,
            Err(e) => {
                crate::pipeline_signals::record_error(consumer.name(), &e);
                tracing::error!(consumer = consumer.name(), error = %e, "following the log failed; starting again from the table");
                if sleep_or_stop(&shutdown, Duration::from_secs(1)).await {
                    return;
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

/// Takes the feed's deliveries as they come; reads the table when woken, when the feed is
/// silent for a poll interval, and when the consumer fell behind the feed's channel.
async fn follow<C: LogConsumer>(
    consumer: &C,
    mut deliveries: broadcast::Receiver<Arc<Delivery>>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let wake = consumer.wake();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = woken(wake.as_deref()) => {
                consumer.catch_up().await?;
                continue;
            }
            next = tokio::time::timeout(consumer.poll_interval(), deliveries.recv()) => next,
        };
        let first = match next {
            // Silence: make sure nothing was missed while the feed was quiet (or NATS away).
            Err(_) | Ok(Err(RecvError::Lagged(_))) => {
                consumer.catch_up().await?;
                continue;
            }
            // The feed stopped (the process is stopping): the table alone.
            Ok(Err(RecvError::Closed)) => return poll(consumer, shutdown).await,
            Ok(Ok(delivery)) => delivery,
        };
        // With it, whatever else is waiting.
        let mut held = vec![first];
        let mut read_the_table = false;
        loop {
            match deliveries.try_recv() {
                Ok(delivery) => held.push(delivery),
                Err(TryRecvError::Lagged(_)) => {
                    read_the_table = true;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        handle_deliveries(consumer, &held, read_the_table).await?;
    }
}

/// Offers the events of `held` in one batch; a delivery that says to read the table, or a gap,
/// sends the consumer to the table instead.
async fn handle_deliveries<C: LogConsumer>(
    consumer: &C,
    held: &[Arc<Delivery>],
    read_the_table: bool,
) -> Result<(), String> {
    let mut batch = Vec::new();
    for delivery in held {
        match delivery.as_ref() {
            Delivery::ReadTheTable => {
                consumer.catch_up().await?;
                return Ok(());
            }
            Delivery::Events(events) => batch.extend(events.iter().map(|(e, p)| (e, *p))),
        }
    }
    if read_the_table {
        consumer.catch_up().await?;
        return Ok(());
    }
    if !batch.is_empty() && consumer.offer(&batch).await? == Outcome::Gap {
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
