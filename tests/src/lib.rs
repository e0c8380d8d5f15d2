//! Test harness: a whole application per test, on a fresh database and a unique NATS stream.
//!
//! Services: `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`, any
//! database on a server where the role may `CREATE DATABASE`) and `NATS_URL` (default
//! `nats://127.0.0.1:4222`). Each [`TestApp`] gets its own database `c360_test_<id>` and its own
//! subject prefix and stream, so tests run in parallel without seeing each other.

pub mod executor;
pub mod export_api;
pub mod flows;
pub mod identity;
pub mod nats_server;
pub mod pg_cluster;
pub mod pg_cost;
pub mod providers;
pub mod service;
pub mod smtp;
pub mod tls;
pub mod ws;

use std::time::Duration;

use api::startup::Application;
use api::tokens::{Claims, JwtKeys};
use infra::nats::NatsSettings;
use infra::runtime::config::{LogFormat, Settings};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for an eventually consistent state (a projection, a relay, a job)
/// before it fails. Generous on purpose: the condition itself is polled, so a healthy run never
/// waits this long, and a loaded CI machine does not fail a test by chance.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The Postgres server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The NATS server tests publish to.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A fresh, unique name for this test's resources.
pub fn unique_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Settings of a test application on database `db` and NATS prefix `id`.
pub fn settings(id: &str, nats_url: &str) -> Settings {
    let opts =
        PgConnectOptions::from_str(&server_url()).expect("TEST_DATABASE_URL is a Postgres URL");
    let database_url = format!(
        "postgres://{}@{}:{}/c360_test_{id}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port()
    );
    Settings {
        database_url,
        database_max_connections: 16,
        // Generous: many tests share two cores, and a slow acquire is not what they test.
        database_acquire_timeout_ms: 10_000,
        database_statement_timeout_ms: 30_000,
        nats_url: nats_url.to_string(),
        nats_subject_prefix: format!("t{id}"),
        nats_stream: format!("T{id}_EVENTS"),
        nats_tls: Default::default(),
        tls_ca_file: None,
        pipeline_stall_seconds: 30,
        idempotency_key_retention_hours: 24,
        metrics_token: None,
        request_log_retention_days: 90,
        listen_addr: "127.0.0.1:0".parse().expect("valid address"),
        jwt_signing_key: Some(format!("test-key-{id}")),
        // A test's next request relies on read-your-writes: on a loaded machine, wait for the
        // read models as long as for any other eventual state (tests of the pending answer
        // set a short timeout of their own).
        read_your_writes_timeout_ms: PATIENCE.as_millis() as u64,
        projector_poll_ms: 200,
        log_format: LogFormat::Text,
        // No applicative token by default: their users would add events at startup.
        identity: infra::runtime::config::IdentitySettings::default(),
        // Nothing listens there: tests that count start a loopback executor and point here.
        cohorts: infra::runtime::config::CohortArgs {
            query_executor_url: "http://127.0.0.1:9".into(),
            query_executor_timeout_seconds: 2,
            ..Default::default()
        },
        // The built-in exporter, in a directory of this test's own; polled often, cleaned only
        // when a test asks.
        exports: infra::runtime::config::ExportArgs {
            storage_dir: std::env::temp_dir()
                .join(format!("c360_exports_{id}"))
                .to_string_lossy()
                .into_owned(),
            poll_ms: 200,
            clean_every_seconds: 0,
            ..Default::default()
        },
    }
}

/// NATS settings matching [`settings`].
pub fn nats_settings(s: &Settings) -> NatsSettings {
    infra::runtime::nats_settings(s)
}

/// A running application and an HTTP client for it.
pub struct TestApp {
    pub id: String,
    pub base: String,
    pub settings: Settings,
    pub pool: PgPool,
    pub http: reqwest::Client,
    jwt: Arc<JwtKeys>,
    progress: Vec<tokio::sync::watch::Receiver<projections::Cursor>>,
    /// The application's services (to seed fixtures as the operator would).
    pub state: api::state::AppState,
    /// The runtime's services (operator commands run on them).
    pub services: infra::runtime::Services,
    /// The access token of each user a test acted as (see [`TestApp::token`]).
    tokens: tokio::sync::Mutex<std::collections::HashMap<String, String>>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// An HTTP answer: status and JSON body (`Null` if empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The `uuid` of the object a write answered (panics, with the answer, when there is none).
    pub fn uuid(&self) -> String {
        match self.body["uuid"].as_str() {
            Some(uuid) => uuid.to_string(),
            None => panic!("no uuid in the answer {} {}", self.status, self.body),
        }
    }

    /// The body as a typed response (panics, with the answer, when it does not have that shape).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|e| {
            panic!(
                "the answer {} is not a {}: {e}\n{}",
                self.status,
                std::any::type_name::<T>(),
                self.body
            )
        })
    }
}

impl TestApp {
    /// Starts an application on a fresh database and stream.
    pub async fn spawn() -> Self {
        let id = unique_id();
        Self::spawn_with(settings(&id, &nats_url()), id).await
    }

    /// Starts an application with explicit settings.
    pub async fn spawn_with(settings: Settings, id: String) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            infra::runtime::telemetry::init(LogFormat::Text);
        }
        let shutdown = CancellationToken::new();
        let app = Application::build(&settings, shutdown.clone())
            .await
            .expect("application builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let pool = app.pool();
        let jwt = app.jwt();
        let state = app.state();
        let services = app.services();
        let progress = app.progress();
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            app.run_until_stopped(stop).await.expect("server runs");
        });
        Self {
            id,
            base,
            settings,
            pool,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            jwt,
            progress,
            state,
            services,
            tokens: Default::default(),
            shutdown,
            server: Some(server),
        }
    }

    /// The progress of the application's projectors.
    pub fn progress(&self) -> Vec<tokio::sync::watch::Receiver<projections::Cursor>> {
        self.progress.clone()
    }

    /// Waits (up to [`PATIENCE`]) until every projector has applied every event committed so far.
    /// Fixtures call it when a write's read-your-writes wait timed out on a loaded machine, so
    /// that the next request sees what they wrote.
    pub async fn settle(&self) {
        let last: Option<(i64, i64)> = sqlx::query_as(
            "SELECT (txid::text)::bigint, position FROM events ORDER BY txid DESC, position DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .expect("last event");
        let Some((txid, position)) = last else {
            return;
        };
        let target = projections::Cursor { txid, position };
        for p in &self.progress {
            let mut p = p.clone();
            tokio::time::timeout(PATIENCE, p.wait_for(|c| *c >= target))
                .await
                .expect("the projections catch up")
                .expect("the projector runs");
        }
    }

    /// An access token for `username`, as a login gives one: bound to an open session of an
    /// existing user. A user the test did not create is created first, as the operator would
    /// (`Test User`, `<username>@example.org`, no password); tokens are reused per user.
    pub async fn token(&self, username: &str) -> String {
        let mut tokens = self.tokens.lock().await;
        if let Some(token) = tokens.get(username) {
            return token.clone();
        }
        let ctx = identity::system();
        let known = self
            .state
            .identity
            .user(username)
            .await
            .expect("user lookup")
            .is_some();
        if !known {
            identity::add_user(self, username, None).await;
        }
        let ticket = self
            .state
            .identity_service
            .open_session(&ctx, username, "JWT")
            .await
            .expect("session opens");
        let token = self.mint(&Claims {
            username: username.into(),
            exp: chrono::Utc::now().timestamp() + 3600,
            iat: None,
            token_type: Some("access".into()),
            jti: None,
            sid: Some(ticket.session_id),
            generation: None,
        });
        tokens.insert(username.to_string(), token.clone());
        token
    }

    /// The claims of one of the application's tokens.
    pub fn jwt_claims(&self, token: &str) -> Claims {
        self.jwt.decode(token).expect("token decodes")
    }

    /// Signs arbitrary claims with the application's key (tests of token checks).
    pub fn mint(&self, claims: &Claims) -> String {
        self.jwt.mint(claims).expect("token mints")
    }

    /// Sends `body` (JSON unless `None`) as `user` (anonymous if `None`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(user) = user {
            req = req.bearer_auth(self.token(user).await);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::answer(req.send().await.expect("request sent")).await
    }

    /// Sends a raw body with a JSON content type.
    pub async fn call_raw(&self, method: Method, path: &str, user: &str, raw: &str) -> Answer {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token(user).await)
            .header("content-type", "application/json")
            .body(raw.to_string());
        Self::answer(req.send().await.expect("request sent")).await
    }

    /// A request to `path`, to complete and [`TestApp::send`].
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request built with [`TestApp::request`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        Self::answer(req.send().await.expect("request sent")).await
    }

    async fn answer(res: reqwest::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, user: &str) -> Answer {
        self.call(Method::GET, path, Some(user), None).await
    }

    pub async fn post(&self, path: &str, user: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(user), Some(body)).await
    }

    pub async fn patch(&self, path: &str, user: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(user), Some(body)).await
    }

    pub async fn delete(&self, path: &str, user: &str) -> Answer {
        self.call(Method::DELETE, path, Some(user), None).await
    }

    /// Number of events in the store.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }

    /// Stops the application, then drops its database and stream.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
        }
        self.pool.close().await;
        cleanup(&self.id, &self.settings).await;
    }
}

/// Drops a test's database and streams (best effort).
pub async fn cleanup(id: &str, settings: &Settings) {
    if let Ok(pool) = PgPool::connect(&server_url()).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS c360_test_{id} WITH (FORCE)"
        ))
        .execute(&pool)
        .await;
        pool.close().await;
    }
    // Files of the built-in exporter (tests point it at a directory of their own).
    let exports = std::path::Path::new(&settings.exports.storage_dir);
    if exports.starts_with(std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(exports);
    }
    if let Ok(client) = async_nats::connect(&settings.nats_url).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(&settings.nats_stream).await;
        let _ = js
            .delete_stream(format!("{}_PUBLIC", settings.nats_stream))
            .await;
    }
}

/// A serialized query over the given perimeter cohort ids.
pub fn query(perimeters: &[&str]) -> String {
    serde_json::json!({
        "_type": "request",
        "version": "v1.6.1",
        "sourcePopulation": {"caresiteCohortList": perimeters},
        "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": []}
    })
    .to_string()
}

/// Waits until `check` holds, polling every 50 ms, for at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One message of the test's stream.
#[derive(Debug, Clone)]
pub struct Published {
    pub stream_sequence: u64,
    pub subject: String,
    pub msg_id: String,
    pub envelope: infra::nats::Envelope,
}

/// Every message of `stream`, in stream order.
pub async fn published(nats_url: &str, stream: &str) -> Vec<Published> {
    let client = async_nats::connect(nats_url).await.expect("nats connects");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(stream).await.expect("stream exists");
    let info = stream.get_info().await.expect("stream info");
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.expect("message readable");
        let msg_id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push(Published {
            stream_sequence: m.sequence,
            subject: m.subject.to_string(),
            msg_id,
            envelope: serde_json::from_slice(&m.payload).expect("envelope decodes"),
        });
    }
    out
}

/// Number of messages in `stream`.
pub async fn stream_len(nats_url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(nats_url).await.expect("nats connects");
    let js = async_nats::jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(s) => s.get_info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every row of every table of a read-model schema, as JSON, in a stable order: two schemas
/// hold the same data exactly when their dumps are equal.
pub async fn dump_schema(pool: &PgPool, schema: &str) -> Vec<(String, Vec<Value>)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name <> 'checkpoint' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("list tables");
    let mut out = Vec::new();
    for t in tables {
        let rows: Vec<Value> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) FROM \"{schema}\".\"{t}\" t ORDER BY to_jsonb(t)::text"
        ))
        .fetch_all(pool)
        .await
        .expect("dump table");
        out.push((t, rows));
    }
    out
}

/// The checkpoint of a projection schema: (cursor text, events applied).
pub async fn projection_checkpoint(pool: &PgPool, schema: &str) -> (String, i64) {
    sqlx::query_as(&format!(
        "SELECT txid::text || ':' || position, events_applied FROM \"{schema}\".checkpoint"
    ))
    .fetch_one(pool)
    .await
    .expect("checkpoint row")
}

/// The cursor of the newest event, as `txid:position` text.
pub async fn last_event_cursor(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT txid::text || ':' || position FROM events ORDER BY txid DESC, position DESC LIMIT 1")
        .fetch_optional(pool)
        .await
        .expect("last event")
        .unwrap_or_else(|| "0:0".into())
}
