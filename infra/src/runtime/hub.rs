//! The websocket hub's fan-out: pushes go through NATS (`<prefix>.ws.push`) so that every
//! instance of the service delivers them to the sockets it holds, and the messages the hub
//! announces get their wire shape here.
//!
//! The sockets themselves (handshake, delivery to one connection) are the HTTP edge's
//! (`api::ws`); it reads this instance's pushes through the [`PushFeed`] port.

use std::sync::Arc;

use async_trait::async_trait;
use commands::ports::{ALL_SOCKETS, Notifier, Push, PushFeed};
use domain::maintenance::MaintenanceNotice;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A push as it travels over NATS.
#[derive(Debug, Serialize, Deserialize)]
struct WirePush {
    group: String,
    message: Value,
}

/// Fans pushes out through NATS to the sockets of every instance (this one's when NATS refuses
/// the publication).
#[derive(Clone)]
pub struct Hub {
    local: broadcast::Sender<Push>,
    client: async_nats::Client,
    subject: Arc<str>,
}

impl Hub {
    /// A hub whose pushes reach every instance subscribed to `subject`. Run
    /// [`Hub::forward_from_nats`] to deliver them here.
    pub fn over_nats(client: async_nats::Client, subject: String) -> Self {
        let (local, _) = broadcast::channel(1024);
        Self {
            local,
            client,
            subject: subject.into(),
        }
    }

    /// Sends `message` to `group`.
    pub async fn send(&self, group: &str, message: Value) {
        let push = Push {
            group: group.to_string(),
            message,
        };
        let wire = WirePush {
            group: push.group.clone(),
            message: push.message.clone(),
        };
        let body = serde_json::to_vec(&wire).unwrap_or_default();
        if let Err(e) = self
            .client
            .publish(self.subject.to_string(), body.into())
            .await
        {
            tracing::warn!(error = %e, "websocket push not published; delivering locally");
            // No receiver is not an error: nobody is connected.
            let _ = self.local.send(push);
        }
    }

    /// Delivers the pushes published on NATS (by any instance) to this instance's sockets.
    pub async fn forward_from_nats(self, shutdown: CancellationToken) {
        let mut sub = match self.client.subscribe(self.subject.to_string()).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(error = %e, "websocket fan-out: cannot subscribe");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                msg = sub.next() => match msg {
                    Some(msg) => match serde_json::from_slice::<WirePush>(&msg.payload) {
                        Ok(w) => {
                            let _ = self.local.send(Push { group: w.group, message: w.message });
                        }
                        Err(e) => tracing::warn!(error = %e, "websocket fan-out: bad message"),
                    },
                    None => return,
                },
            }
        }
    }
}

/// The websocket message announcing a maintenance phase's state (upstream's shape).
pub fn maintenance_message(m: &MaintenanceNotice) -> Value {
    json!({
        "type": "maintenance",
        "info": {
            "id": m.id,
            "subject": m.subject,
            "maintenance_start": m.maintenance_start,
            "maintenance_end": m.maintenance_end,
            "active": m.active,
            "type": m.kind,
            "message": m.message,
        }
    })
}

#[async_trait]
impl Notifier for Hub {
    async fn push(&self, username: &str, message: Value) {
        self.send(username, message).await
    }

    async fn announce_maintenance(&self, phase: &MaintenanceNotice) {
        self.send(ALL_SOCKETS, maintenance_message(phase)).await
    }
}

impl PushFeed for Hub {
    fn subscribe(&self) -> broadcast::Receiver<Push> {
        self.local.subscribe()
    }
}
