//! Maintenance phases, the gate they put on the API, and the WebSocket hub.

use std::time::Duration;

use chrono::Utc;
use futures::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::TestApp;
use tests::identity::{APHP, seed, user_with};
use tests::ws::{connect, next_json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_handshake_and_maintenance_broadcasts() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;

    let mut anonymous = connect(&app).await;
    anonymous
        .send(Message::Text(
            json!({"auth_method": "JWT"}).to_string().into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut anonymous).await["status"], "pending");
    anonymous
        .send(Message::Text(
            json!({"token": "forged", "auth_method": "JWT"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut anonymous).await["status"], "forbidden");

    let mut socket = connect(&app).await;
    socket
        .send(Message::Text(
            json!({"token": app.token("someone").await, "auth_method": "JWT"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let hello = next_json(&mut socket).await;
    assert_eq!(hello["type"], "handshake");
    assert_eq!(hello["status"], "accepted");

    // A phase created as active is broadcast to everyone (through NATS, back to this instance).
    let now = Utc::now();
    let created = app
        .post(
            "/maintenances/",
            "admin",
            json!({
                "subject": "Mise à jour",
                "type": "partial",
                "start_datetime": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "end_datetime": (now + chrono::Duration::hours(1)).to_rfc3339(),
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let pushed = next_json(&mut socket).await;
    assert_eq!(pushed["type"], "maintenance");
    assert_eq!(pushed["info"]["active"], true);
    assert_eq!(pushed["info"]["subject"], "Mise à jour");
    app.stop().await;
}

#[tokio::test]
async fn partial_maintenance_is_read_only_and_full_maintenance_closes_the_service() {
    let id = tests::unique_id();
    let mut settings = tests::settings(&id, &tests::nats_url());
    settings.identity.query_executor_token = Some(format!("qe-token-{id}"));
    let app = TestApp::spawn_with(settings, id).await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    let reader = "someone";
    assert_eq!(app.get("/maintenances/next/", reader).await.body, json!({}));
    let non_admin = app
        .post(
            "/maintenances/",
            reader,
            json!({"subject": "x", "start_datetime": Utc::now().to_rfc3339(), "end_datetime": Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(non_admin.status, StatusCode::FORBIDDEN);
    let reversed = app
        .post(
            "/maintenances/",
            "admin",
            json!({"subject": "x", "start_datetime": Utc::now().to_rfc3339(), "end_datetime": (Utc::now() - chrono::Duration::hours(1)).to_rfc3339()}),
        )
        .await;
    assert_eq!(reversed.status, StatusCode::BAD_REQUEST);
    assert_eq!(reversed.body["code"], "invalid_maintenance_dates");

    let now = Utc::now();
    let phase = app
        .post(
            "/maintenances/",
            "admin",
            json!({
                "subject": "Migration",
                "start_datetime": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "end_datetime": (now + chrono::Duration::hours(1)).to_rfc3339(),
            }),
        )
        .await;
    assert_eq!(phase.body["type"], "partial");
    let id = phase.body["id"].as_i64().unwrap();
    let next = app.get("/maintenances/next/", reader).await;
    assert_eq!(next.body["id"], id);
    assert_eq!(next.body["active"], true);

    // Partial: reads pass, writes get 503, auth and maintenance endpoints stay open.
    assert_eq!(
        app.get("/cohort/folders/", reader).await.status,
        StatusCode::OK
    );
    let write = app
        .post("/cohort/folders/", reader, json!({"name": "x"}))
        .await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(write.body["code"], "maintenance");
    assert_eq!(write.body["active"], true);
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "a", "password": "b"})),
        )
        .await;
    assert_eq!(
        login.status,
        StatusCode::UNAUTHORIZED,
        "auth stays reachable"
    );
    // Applicative callers pass the gate.
    let qe = app
        .send(
            app.request(Method::POST, "/cohort/folders/")
                .bearer_auth(format!("qe-token-{}", app.id))
                .json(&json!({"name": "callback-made"})),
        )
        .await;
    assert_eq!(qe.status, StatusCode::CREATED, "{:?}", qe.body);

    // Full: even reads are refused.
    let to_full = app
        .patch(
            &format!("/maintenances/{id}/"),
            "admin",
            json!({"type": "full"}),
        )
        .await;
    assert_eq!(to_full.status, StatusCode::OK, "{:?}", to_full.body);
    let read = app.get("/cohort/folders/", reader).await;
    assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(read.body["type"], "full");

    // Ending the phase reopens the service.
    assert_eq!(
        app.delete(&format!("/maintenances/{id}/"), "admin")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.post("/cohort/folders/", reader, json!({"name": "after"}))
            .await
            .status,
        StatusCode::CREATED
    );
    let listed = app.get("/maintenances/", reader).await;
    assert_eq!(listed.body["count"], 0);
    app.stop().await;
}

#[tokio::test]
async fn websocket_pushes_reach_sockets_held_by_another_instance() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    // A second instance of the service on the same database and NATS subjects.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let other = api::startup::Application::build(&app.settings, shutdown.clone())
        .await
        .expect("second instance builds");
    let other_url = format!("ws://127.0.0.1:{}/ws/", other.port());
    let server = tokio::spawn(other.run_until_stopped(shutdown.clone()));

    let mut socket = tokio_tungstenite::connect_async(other_url)
        .await
        .expect("websocket connects")
        .0;
    socket
        .send(Message::Text(
            json!({"token": app.token("watcher").await, "auth_method": "JWT"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["status"], "accepted");

    // The phase is written through the first instance; the socket lives on the second.
    let now = Utc::now();
    let created = app
        .post(
            "/maintenances/",
            "admin",
            json!({
                "subject": "Cross-instance",
                "start_datetime": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "end_datetime": (now + chrono::Duration::hours(1)).to_rfc3339(),
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let pushed = next_json(&mut socket).await;
    assert_eq!(pushed["type"], "maintenance");
    assert_eq!(pushed["info"]["subject"], "Cross-instance");

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    app.stop().await;
}
