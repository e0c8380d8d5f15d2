//! The live feed of a process: one JetStream consumer whose messages are decoded once and handed
//! to every log consumer of the process (its projectors and reactors, see [`crate::follow`]).
//!
//! Each log consumer used to follow JetStream on a durable consumer of its own: every event was
//! delivered, parsed and acknowledged a dozen times per process, on the cores that also serve
//! the command that wrote it. Here NATS delivers it once, on an ordered consumer (ephemeral,
//! unacknowledged, recreated by the client when it misses a message or a heartbeat), and the
//! decoded batch goes to each log consumer through an in-process broadcast channel.
//!
//! Nothing depends on the feed for correctness (architecture guarantee 3): the events table is
//! the source of truth, and every log consumer checks each event's predecessor against its own
//! place. A consumer that falls behind the channel ([`broadcast::error::RecvError::Lagged`]), a
//! message lost while the ordered consumer is recreated, an outage of NATS: each shows as a gap
//! or a silence, and the consumer catches up from the table.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use projections::Cursor;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::log::CommittedEvent;
use crate::nats::{Envelope, NatsSettings};

/// The name under which the feed reports its errors (`cohort360_consumer_errors_total`).
pub const FEED: &str = "live_feed";

/// Messages decoded and handed on together: those JetStream already delivered to this client.
const LIVE_BATCH: usize = 500;

/// Deliveries the channel holds for a log consumer that is busy: one further behind catches up
/// from the table. Each delivery holds up to [`LIVE_BATCH`] events, so this bounds what a stuck
/// consumer keeps in memory (a bulk import fills deliveries; live commands make small ones).
const CHANNEL_DEPTH: usize = 64;

/// How long the feed waits before subscribing again after NATS failed it.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// What the feed hands to each log consumer.
#[derive(Debug)]
pub enum Delivery {
    /// Events, each with its predecessor in the log, in log order.
    Events(Vec<(CommittedEvent, Cursor)>),
    /// An event too large for NATS was published without its payload: read the table.
    ReadTheTable,
}

/// The sending side of a process's live feed; cheap to clone.
#[derive(Clone)]
pub struct LiveFeed {
    sender: broadcast::Sender<Arc<Delivery>>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_DEPTH).0,
        }
    }
}

impl LiveFeed {
    /// A feed following the stream of `nats` until `shutdown`, on a task of its own.
    pub fn spawn(
        js: jetstream::Context,
        nats: NatsSettings,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let feed = Self::default();
        let task = tokio::spawn(feed.clone().run(js, nats, shutdown));
        (feed, task)
    }

    /// Receives every delivery from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Delivery>> {
        self.sender.subscribe()
    }

    /// Follows the stream until `shutdown`, subscribing again after each failure.
    pub async fn run(
        self,
        js: jetstream::Context,
        nats: NatsSettings,
        shutdown: CancellationToken,
    ) {
        loop {
            let followed = tokio::select! {
                () = shutdown.cancelled() => return,
                followed = self.follow(&js, &nats) => followed,
            };
            crate::pipeline_signals::record_error(FEED, &followed);
            tracing::warn!(error = %followed, "live feed interrupted; the log consumers poll the event table meanwhile");
            if crate::follow::sleep_or_stop(&shutdown, RESUBSCRIBE_AFTER).await {
                return;
            }
        }
    }

    /// Hands on what the stream delivers; returns why it stopped.
    async fn follow(&self, js: &jetstream::Context, nats: &NatsSettings) -> String {
        let mut messages = match subscribe(js, nats).await {
            Ok(messages) => messages,
            Err(e) => return e,
        };
        loop {
            let first = match messages.next().await {
                None => return "the consumer stream ended".into(),
                Some(Err(e)) => return e.to_string(),
                Some(Ok(m)) => m,
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
            for delivery in decode(&held) {
                // No receiver (no log consumer yet, or all stopped): nothing to hand on.
                let _ = self.sender.send(Arc::new(delivery));
            }
            if let Some(e) = interrupted {
                return e;
            }
        }
    }
}

/// An ordered consumer of the stream, from the next message on.
async fn subscribe(
    js: &jetstream::Context,
    nats: &NatsSettings,
) -> Result<consumer::pull::Ordered, String> {
    let stream = js
        .get_stream(&nats.stream)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// The deliveries of `messages`, in order: runs of events, split where one was published without
/// its payload.
fn decode(messages: &[jetstream::Message]) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    let mut events = Vec::new();
    for message in messages {
        match serde_json::from_slice::<Envelope>(&message.payload) {
            Ok(envelope) if envelope.payload_omitted => {
                if !events.is_empty() {
                    deliveries.push(Delivery::Events(std::mem::take(&mut events)));
                }
                deliveries.push(Delivery::ReadTheTable);
            }
            Ok(envelope) => {
                let previous = envelope.previous;
                events.push((envelope.into_event(), previous));
            }
            Err(e) => tracing::error!(error = %e, "undecodable message ignored"),
        }
    }
    if !events.is_empty() {
        deliveries.push(Delivery::Events(events));
    }
    deliveries
}

/// The durable consumer each log consumer followed before the live feed:
/// `<stream>_<projection>` and `<stream>_reactor_<reaction>`.
pub fn legacy_durable_names(stream: &str, projections: &[&str], reactions: &[&str]) -> Vec<String> {
    projections
        .iter()
        .map(|p| format!("{stream}_{p}"))
        .chain(reactions.iter().map(|r| format!("{stream}_reactor_{r}")))
        .collect()
}

/// Deletes the durable consumers `names` of the stream, where they exist: left behind by a
/// version before the live feed, nobody pulls them and their pending counts only grow. An
/// instance of that version still running re-creates its own when it next subscribes.
pub async fn retire_durable_consumers(
    js: &jetstream::Context,
    nats: &NatsSettings,
    names: &[String],
) {
    let Ok(stream) = js.get_stream(&nats.stream).await else {
        return;
    };
    for name in names {
        if stream.delete_consumer(name).await.is_ok() {
            tracing::info!(consumer = %name, "retired the durable consumer of an earlier version");
        }
    }
}
