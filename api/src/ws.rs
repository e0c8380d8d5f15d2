//! The WebSocket hub at `/ws/`, with upstream's handshake.
//!
//! A client connects, then sends `{"token", "auth_method", "headers"?}`. It gets
//! `{"type": "handshake", "status": "accepted"|"pending"|"forbidden", "details"}`; once
//! accepted it receives what is pushed to its user's group and to everyone (`__all__`).
//!
//! Pushes go through NATS (`<prefix>.ws.push`) when the hub is connected to it, so that every
//! instance of the service delivers to the sockets it holds.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::auth::{authenticate, impersonate};
use crate::state::AppState;

/// Group every socket joins.
pub const ALL: &str = "__all__";

/// A message for the sockets of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// A username, or [`ALL`].
    pub group: String,
    pub message: Value,
}

/// Fans pushes out to this instance's sockets, through NATS when connected.
#[derive(Clone)]
pub struct Hub {
    local: broadcast::Sender<Push>,
    nats: Option<(async_nats::Client, Arc<str>)>,
}

impl Hub {
    /// A hub that only reaches this process's sockets.
    pub fn local() -> Self {
        let (local, _) = broadcast::channel(1024);
        Self { local, nats: None }
    }

    /// A hub whose pushes reach every instance subscribed to `subject`. Call
    /// [`Hub::forward_from_nats`] to deliver them here.
    pub fn over_nats(client: async_nats::Client, subject: String) -> Self {
        let (local, _) = broadcast::channel(1024);
        Self {
            local,
            nats: Some((client, subject.into())),
        }
    }

    /// Sends `message` to `group`.
    pub async fn push(&self, group: &str, message: Value) {
        let push = Push {
            group: group.to_string(),
            message,
        };
        match &self.nats {
            Some((client, subject)) => {
                let body = serde_json::to_vec(&push).unwrap_or_default();
                if let Err(e) = client.publish(subject.to_string(), body.into()).await {
                    tracing::warn!(error = %e, "websocket push not published; delivering locally");
                    let _ = self.local.send(push);
                }
            }
            None => {
                // No receiver is not an error: nobody is connected.
                let _ = self.local.send(push);
            }
        }
    }

    /// Delivers the pushes published on NATS (by any instance) to this instance's sockets.
    pub async fn forward_from_nats(self, shutdown: tokio_util::sync::CancellationToken) {
        use futures::StreamExt;
        let Some((client, subject)) = self.nats.clone() else {
            return;
        };
        let mut sub = match client.subscribe(subject.to_string()).await {
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
                    Some(msg) => match serde_json::from_slice::<Push>(&msg.payload) {
                        Ok(push) => { let _ = self.local.send(push); }
                        Err(e) => tracing::warn!(error = %e, "websocket fan-out: bad message"),
                    },
                    None => return,
                },
            }
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Push> {
        self.local.subscribe()
    }
}

#[derive(Deserialize)]
struct Hello {
    token: Option<String>,
    auth_method: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
}

fn handshake(status: &str, details: &str) -> Message {
    Message::Text(
        json!({"type": "handshake", "status": status, "details": details})
            .to_string()
            .into(),
    )
}

/// `GET /ws/`: upgrades, then runs the handshake.
pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| async move {
        let _open = crate::observability::ConnectionGauge::open();
        serve(state, socket).await;
    })
}

async fn authenticate_hello(state: &AppState, hello: &Hello) -> Option<String> {
    let token = hello.token.as_deref()?;
    let method = crate::auth::Method::parse(hello.auth_method.as_deref()).ok()?;
    let caller = authenticate(state, token, method).await.ok()?;
    let target = hello
        .headers
        .as_ref()
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-impersonate"))
                .map(|(_, v)| v)
        })
        .and_then(Value::as_str);
    impersonate(state, caller, target)
        .await
        .ok()
        .map(|c| c.username)
}

async fn serve(state: AppState, mut socket: WebSocket) {
    // Handshake: wait for a message carrying a token.
    let username = loop {
        let Some(Ok(message)) = socket.recv().await else {
            return;
        };
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(hello) = serde_json::from_str::<Hello>(&text) else {
            let _ = socket
                .send(handshake("pending", "expected {\"token\": …}"))
                .await;
            continue;
        };
        if hello.token.is_none() {
            let _ = socket.send(handshake("pending", "missing token")).await;
            continue;
        }
        match authenticate_hello(&state, &hello).await {
            Some(user) => break user,
            None => {
                let _ = socket.send(handshake("forbidden", "invalid token")).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    };
    if socket
        .send(handshake("accepted", "connection accepted"))
        .await
        .is_err()
    {
        return;
    }
    let mut pushes = state.hub.subscribe();
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Ok(push) if push.group == username || push.group == ALL => {
                    if socket.send(Message::Text(push.message.to_string().into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(user = %username, skipped = n, "websocket client too slow");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[async_trait::async_trait]
impl commands::ports::Notifier for Hub {
    async fn push(&self, username: &str, message: Value) {
        Hub::push(self, username, message).await
    }
}
