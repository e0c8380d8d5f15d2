//! The AsyncAPI 3.0 document of the public NATS events (`/asyncapi.json`).
//!
//! `docs/events.md` is the contract: its JSON Schemas (the fenced blocks whose `title` is an
//! event's `schema` value) are read at build time and become the messages' payloads, so the
//! document and the prose cannot drift apart. `tests/tests/e2e/asyncapi.rs` checks the events
//! the service actually publishes against this document.

use axum::Json;
use serde_json::{Map, Value, json};

/// The contract's prose and schemas.
const EVENTS_DOC: &str = include_str!("../../docs/events.md");

/// The public events: `(subject suffix after <prefix>.public., schema name, summary)`.
const EVENTS: &[(&str, &str, &str)] = &[
    (
        "cohort.created.v1",
        "cohort360.cohort.created.v1",
        "A cohort or a sample now exists at the executor.",
    ),
    (
        "cohort.failed.v1",
        "cohort360.cohort.failed.v1",
        "A cohort or a sample could not be created.",
    ),
    (
        "count.finished.v1",
        "cohort360.count.finished.v1",
        "A count (dated measure) has its result.",
    ),
];

/// The JSON Schemas of `docs/events.md`, by title.
fn schemas() -> Map<String, Value> {
    let mut found = Map::new();
    for block in EVENTS_DOC.split("```json").skip(1) {
        let Some(text) = block.split("```").next() else {
            continue;
        };
        let Ok(schema) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if schema.get("$schema").is_some()
            && let Some(title) = schema["title"].as_str()
        {
            let mut schema = schema.clone();
            // AsyncAPI carries JSON Schema draft 2020-12 payloads through `schemaFormat`;
            // the dialect keyword itself is not needed inside the document.
            if let Some(o) = schema.as_object_mut() {
                o.remove("$schema");
            }
            found.insert(title.to_string(), schema);
        }
    }
    found
}

/// Component key of a message or schema (`cohort360.cohort.created.v1` → `cohortCreatedV1`).
fn key(schema_name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in schema_name.trim_start_matches("cohort360.").chars() {
        if c == '.' || c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The AsyncAPI 3.0 document.
pub fn document() -> Value {
    let schemas = schemas();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for (suffix, name, summary) in EVENTS {
        let key = key(name);
        let payload = schemas.get(*name).cloned().unwrap_or(Value::Null);
        messages.insert(
            key.clone(),
            json!({
                "name": name,
                "title": name,
                "summary": summary,
                "contentType": "application/json",
                "headers": {
                    "type": "object",
                    "properties": {
                        "Nats-Msg-Id": {
                            "type": "string",
                            "description": "the internal event's id, also the body's event_id"
                        }
                    }
                },
                "payload": {
                    "schemaFormat": "application/schema+json;version=draft-2020-12",
                    "schema": payload
                }
            }),
        );
        channels.insert(
            key.clone(),
            json!({
                "address": format!("{{prefix}}.public.{suffix}"),
                "title": name,
                "summary": summary,
                "parameters": {
                    "prefix": {
                        "description": "NATS_SUBJECT_PREFIX",
                        "default": "cohort360"
                    }
                },
                "messages": { key.clone(): { "$ref": format!("#/components/messages/{key}") } }
            }),
        );
        operations.insert(
            format!("receive_{key}"),
            json!({
                "action": "receive",
                "summary": format!("Subscribers receive {name}."),
                "channel": { "$ref": format!("#/channels/{key}") },
                "messages": [ { "$ref": format!("#/channels/{key}/messages/{key}") } ]
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Cohort360 back-end public events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Events published for other systems, at least once, on NATS \
                (JetStream stream `<NATS_STREAM>_PUBLIC`). De-duplicate on `event_id`. \
                See docs/events.md for the guarantees and versioning rules."
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS_URL of the deployment"
            }
        },
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages }
    })
}

/// `GET /asyncapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_event_has_its_schema_from_the_contract() {
        let doc = document();
        assert_eq!(doc["asyncapi"], "3.0.0");
        for (suffix, name, _) in EVENTS {
            let key = key(name);
            let schema = &doc["components"]["messages"][&key]["payload"]["schema"];
            assert_eq!(
                schema["title"], *name,
                "{name} has no schema in docs/events.md"
            );
            assert_eq!(schema["properties"]["schema"]["const"], *name);
            assert_eq!(
                doc["channels"][&key]["address"],
                format!("{{prefix}}.public.{suffix}")
            );
        }
        assert_eq!(key("cohort360.count.finished.v1"), "countFinishedV1");
    }
}
