//! JetStream: the stream, the subjects and the published envelope (a versioned contract, see
//! the README's "Event contract").

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use projections::Cursor;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::log::CommittedEvent;

/// Schema name and version of [`Envelope`].
pub const ENVELOPE_SCHEMA: &str = "cohort360.event.v1";

/// Where events are published.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatsSettings {
    /// `nats://host:port` (`tls://host:port` requires TLS).
    pub url: String,
    /// First token of every subject (`cohort360` by default; unique per test).
    pub subject_prefix: String,
    /// Name of the JetStream stream that keeps the events.
    pub stream: String,
    /// How the connection is secured and authenticated.
    pub security: NatsSecurity,
}

/// TLS and credentials of the NATS connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatsSecurity {
    /// Require TLS even if the URL says `nats://` (a `tls://` URL always does).
    pub require_tls: bool,
    /// PEM file of the CA(s) that signed the server's certificate, trusted beside the
    /// system's roots; setting it requires TLS.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and key of this client, for servers that verify clients (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// A `.creds` file (user JWT and NKey seed) for servers in decentralized-auth mode.
    pub credentials_file: Option<PathBuf>,
}

impl NatsSettings {
    /// Subject of an event: `<prefix>.events.<aggregate>.<EventType>`, the aggregate in lower case.
    pub fn subject(&self, aggregate_type: &str, event_type: &str) -> String {
        format!(
            "{}.events.{}.{}",
            self.subject_prefix,
            aggregate_type.to_ascii_lowercase(),
            event_type
        )
    }

    /// The wildcard that the stream captures.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.subject_prefix)
    }
}

/// Why NATS could not be used.
#[derive(Debug, Error)]
pub enum NatsError {
    #[error(
        "cannot reach NATS at {url}: {reason}. Start nats-server with JetStream (on this project's \
         machines: `start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
         -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server`) or set NATS_URL."
    )]
    Unreachable { url: String, reason: String },
    #[error("JetStream error: {0}")]
    JetStream(String),
    #[error("NATS settings: {0}")]
    Settings(String),
}

/// The `max_payload` NATS servers announce by default (1 MiB), assumed while the server's own
/// value is not known yet (not connected).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The connect options of `settings`: TLS and credentials, a bounded connect timeout, and a
/// connection that keeps retrying in the background.
async fn options(settings: &NatsSettings) -> Result<async_nats::ConnectOptions, NatsError> {
    let security = &settings.security;
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .name("cohort360")
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        });
    if let Some(file) = &security.credentials_file {
        options = options.credentials_file(file).await.map_err(|e| {
            NatsError::Settings(format!(
                "NATS_CREDENTIALS_FILE {} cannot be read: {e}",
                file.display()
            ))
        })?;
    }
    if let Some(ca) = &security.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &security.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if security.require_tls {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Connects to NATS. Only a broken setting fails: when the server cannot be reached (at start
/// or later), the client keeps connecting in the background while the service runs degraded
/// (commands are stored and projected from Postgres; `/health/ready` says NATS is away).
pub async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, NatsError> {
    options(settings)
        .await?
        .retry_on_initial_connect()
        .connect(settings.url.as_str())
        .await
        .map_err(|e| NatsError::Unreachable {
            url: settings.url.clone(),
            reason: e.to_string(),
        })
}

/// The JetStream context of `client` (each request times out after 5 s).
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}

/// Creates the events stream if it does not exist.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<(), NatsError> {
    js.get_or_create_stream(stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.all_events()],
        storage: stream::StorageType::File,
        description: Some("Cohort360 domain events, in event-log order".into()),
        ..Default::default()
    })
    .await
    .map_err(|e| NatsError::JetStream(e.to_string()))?;
    Ok(())
}

/// Payload fields that never leave the database: subscribers learn that a password changed,
/// not its hash.
pub const SECRET_FIELDS: &[&str] = &["password_hash"];

/// Replaces the value of every [`SECRET_FIELDS`] key, at any depth, with `"<redacted>"`.
pub fn redact(mut payload: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if SECRET_FIELDS.contains(&key.as_str()) {
                        *value = serde_json::Value::String("<redacted>".into());
                    } else {
                        walk(value);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut payload);
    payload
}

/// The JSON body of every published event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`ENVELOPE_SCHEMA`] for this shape.
    pub schema: String,
    /// `type:id:sequence`, also sent as `Nats-Msg-Id`.
    pub message_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// Global position in the event store.
    pub position: i64,
    /// Committing transaction id.
    pub txid: i64,
    /// The event published just before this one (`txid:position`; `0:0` for the first): a
    /// consumer that has not seen it knows it missed something.
    pub previous: Cursor,
    pub recorded_at: DateTime<Utc>,
    /// The domain event, as stored (`{"EventType": {…fields}}`); `null` when
    /// [`Envelope::payload_omitted`].
    pub payload: serde_json::Value,
    /// `true` when the event did not fit in one NATS message (the server's `max_payload`): the
    /// envelope is published without its payload, which consumers read from the events table
    /// by `position`. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_omitted: bool,
    /// `user`, `impersonator`, `correlation_id`, `causation_id`.
    pub metadata: serde_json::Value,
}

impl Envelope {
    /// The envelope of `event`, published right after `previous`.
    pub fn new(event: &CommittedEvent, previous: Cursor) -> Self {
        Self {
            schema: ENVELOPE_SCHEMA.to_string(),
            message_id: event.message_id(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            position: event.position,
            txid: event.txid,
            previous,
            recorded_at: event.recorded_at,
            payload: redact(event.payload.clone()),
            payload_omitted: false,
            metadata: event.metadata.clone(),
        }
    }

    /// The same envelope without its payload (see [`Envelope::payload_omitted`]).
    pub fn without_payload(self) -> Self {
        Self {
            payload: serde_json::Value::Null,
            payload_omitted: true,
            ..self
        }
    }

    /// This event's place in the log.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            txid: self.txid,
            position: self.position,
        }
    }

    /// Back to the stored form.
    pub fn into_event(self) -> CommittedEvent {
        CommittedEvent {
            txid: self.txid,
            position: self.position,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata: self.metadata,
            recorded_at: self.recorded_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_without_payload_says_so_and_a_full_one_does_not() {
        let event = CommittedEvent {
            txid: 7,
            position: 3,
            aggregate_type: "Folder".into(),
            aggregate_id: "f".into(),
            sequence: 1,
            event_type: "FolderCreated".into(),
            event_version: "1".into(),
            payload: serde_json::json!({"FolderCreated": {"name": "x"}}),
            metadata: serde_json::json!({"user": "u"}),
            recorded_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let full = Envelope::new(&event, Cursor::START);
        let text = serde_json::to_string(&full).unwrap();
        assert!(!text.contains("payload_omitted"), "{text}");
        let stub = full.clone().without_payload();
        let text = serde_json::to_string(&stub).unwrap();
        assert!(text.contains("\"payload_omitted\":true"), "{text}");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert!(back.payload_omitted && back.payload.is_null());
        assert_eq!(back.cursor(), full.cursor());
    }

    #[test]
    fn password_hashes_are_redacted_at_any_depth() {
        let payload = serde_json::json!({
            "UserPasswordHashSet": {"password_hash": "$argon2id$secret", "at": "2026-01-01T00:00:00Z"},
            "list": [{"password_hash": "x"}]
        });
        let text = redact(payload).to_string();
        assert!(
            !text.contains("secret") && !text.contains("\"x\""),
            "{text}"
        );
        assert!(text.contains("2026-01-01"));
    }
}
