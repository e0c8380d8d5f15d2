//! No password or token ever reaches the logs, even at debug level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::TestApp;
use tests::identity::add_user;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn passwords_and_tokens_never_appear_in_logs() {
    // nextest runs each test in its own process: this subscriber sees only this test.
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .init();

    let app = TestApp::spawn().await;
    let password = "s3cret-Passw0rd!";
    add_user(&app, "logged", Some(password)).await;
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "logged", "password": password})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let access = login.body["access_token"].as_str().unwrap().to_string();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_string();
    let wrong = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "logged", "password": "wrong-Passw0rd"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    app.send(
        app.request(Method::GET, "/cohort/folders/")
            .bearer_auth(&access),
    )
    .await;
    app.send(
        app.request(Method::GET, "/cohort/folders/")
            .bearer_auth("forged.token.value"),
    )
    .await;
    let refreshed = app
        .send(
            app.request(Method::POST, "/auth/refresh/")
                .json(&json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    app.stop().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(logs.contains("login refused"), "the logs were captured");
    for secret in [
        password,
        "wrong-Passw0rd",
        access.as_str(),
        refresh.as_str(),
        "forged.token.value",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret leaked into the logs: {secret}"
        );
    }
    // Hashes stay out too.
    assert!(
        !logs.contains("$argon2id$"),
        "a password hash leaked into the logs"
    );
}
