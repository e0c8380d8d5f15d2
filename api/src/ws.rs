//! The WebSocket hub at `/ws/`, with upstream's handshake.
//!
//! A client connects, then sends `{"token", "auth_method", "headers"?}`. It gets
//! `{"type": "handshake", "status": "accepted"|"pending"|"forbidden", "details"}`; once
//! accepted it receives what is pushed to its user's group and to everyone (`__all__`).
//!
//! What reaches the sockets comes from the [`commands::ports::PushFeed`] port: the runtime's hub fans pushes out
//! over NATS so that every instance delivers to the sockets it holds.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use commands::ports::ALL_SOCKETS;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::auth::{authenticate, impersonate};
use crate::state::AppState;

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
    let mut pushes = state.pushes.subscribe();
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Ok(push) if push.group == username || push.group == ALL_SOCKETS => {
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
