//! The AsyncAPI document (`/asyncapi.json`) describes the public events the service really
//! publishes: a count and a cohort run end to end with the embedded executor, and every message
//! that reaches `<prefix>.public.>` must be valid against the payload schema of the channel its
//! subject names (checked with Python's `jsonschema`, which `scripts/test` installs).

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::flows::cohort_to_end;
use tests::identity::{APHP, add_user, grant, seed};
use tests::{PATIENCE, TestApp, settings, unique_id};

/// The payload schema of the channel whose address matches `subject`.
fn schema_for(doc: &Value, prefix: &str, subject: &str) -> Option<Value> {
    let channels = doc["channels"].as_object()?;
    let (key, _) = channels.iter().find(|(_, c)| {
        c["address"]
            .as_str()
            .is_some_and(|a| a.replace("{prefix}", prefix) == subject)
    })?;
    Some(doc["components"]["messages"][key]["payload"]["schema"].clone())
}

/// Validates `message` against the JSON Schema `schema` (draft 2020-12, formats checked).
fn validate(schema: &Value, message: &Value) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("asyncapi-{}", unique_id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (schema_file, message_file) = (dir.join("schema.json"), dir.join("message.json"));
    std::fs::write(&schema_file, schema.to_string()).map_err(|e| e.to_string())?;
    std::fs::write(&message_file, message.to_string()).map_err(|e| e.to_string())?;
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import json,sys,jsonschema\n\
             s=json.load(open(sys.argv[1])); m=json.load(open(sys.argv[2]))\n\
             jsonschema.Draft202012Validator(s, format_checker=jsonschema.FormatChecker()).validate(m)",
        )
        .arg(&schema_file)
        .arg(&message_file)
        .output()
        .map_err(|e| format!("python3 does not run: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn published_events_match_the_asyncapi_document() {
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.cohorts.query_executor_url = String::new();
    s.cohorts.reconcile_every_seconds = 0;
    let app = TestApp::spawn_with(s, id).await;
    let fixture = seed(&app).await;
    infra::clinical::generate::generate(&app.pool, 200, 7)
        .await
        .expect("data generated");
    add_user(&app, "nora", Some("pw-nora-12345")).await;
    grant(&app, &fixture, "nora", "nominative_reader", APHP).await;
    app.settle().await;

    let answer = app.call(Method::GET, "/asyncapi.json", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let doc = answer.body;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let prefix = app.settings.nats_subject_prefix.clone();
    let nats = async_nats::connect(tests::nats_url()).await.unwrap();
    let mut public = nats.subscribe(format!("{prefix}.public.>")).await.unwrap();

    let everyone = json!({"version": "v1.6.1", "_type": "request",
        "sourcePopulation": {"caresiteCohortList": [APHP.to_string()]},
        "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": [],
                    "temporalConstraints": []}})
    .to_string();
    let cohort = cohort_to_end(&app, "nora", "pw-nora-12345", "everyone", &everyone).await;

    // The count's and the cohort's events, in whatever order they come.
    let mut seen = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.len() < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left.max(Duration::from_millis(1)), public.next())
            .await
            .unwrap_or_else(|_| panic!("only {:?} were published in time", seen.keys()))
            .expect("subscription open");
        let body: Value = serde_json::from_slice(&message.payload).expect("JSON payload");
        let schema = schema_for(&doc, &prefix, &message.subject)
            .unwrap_or_else(|| panic!("{} is not a channel of the document", message.subject));
        if let Err(e) = validate(&schema, &body) {
            panic!(
                "{} does not match its schema:\n{e}\n{body}",
                message.subject
            );
        }
        seen.insert(message.subject.to_string(), body);
    }
    let created = &seen[&format!("{prefix}.public.cohort.created.v1")];
    assert_eq!(created["cohort_id"], cohort["uuid"]);
    assert!(seen.contains_key(&format!("{prefix}.public.count.finished.v1")));
    app.stop().await;
}
