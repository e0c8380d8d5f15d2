//! A WebSocket client for `/ws/`, as the front-end uses it.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::TestApp;

/// A connected socket.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket on the application's `/ws/`.
pub async fn connect(app: &TestApp) -> Socket {
    let url = format!("{}/ws/", app.base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects")
        .0
}

/// The next JSON text message (waiting up to [`crate::PATIENCE`]).
pub async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(crate::PATIENCE, socket.next())
            .await
            .expect("a message arrives in time")
            .expect("socket open")
            .expect("socket healthy");
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).expect("JSON message");
        }
    }
}

/// Opens a socket and authenticates it with `token`; panics unless the handshake is accepted.
pub async fn connect_as(app: &TestApp, token: &str) -> Socket {
    let mut socket = connect(app).await;
    socket
        .send(Message::Text(
            json!({"token": token, "auth_method": "JWT"})
                .to_string()
                .into(),
        ))
        .await
        .expect("handshake sent");
    let handshake = next_json(&mut socket).await;
    assert_eq!(handshake["status"], "accepted", "{handshake}");
    socket
}

/// The next message whose `type` is `job_status` and `uuid` is `uuid` (others are skipped).
pub async fn next_job_status(socket: &mut Socket, uuid: &str) -> Value {
    loop {
        let m = next_json(socket).await;
        if m["type"] == "job_status" && m["uuid"] == uuid {
            return m;
        }
    }
}
