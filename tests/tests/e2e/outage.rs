//! NATS goes away and comes back: commands keep working, the relay drains afterwards.

use reqwest::StatusCode;
use serde_json::json;
use tests::nats_server::{NatsProcess, free_port};
use tests::{TestApp, eventually, published, settings, stream_len, unique_id};

#[tokio::test]
async fn commands_succeed_while_nats_is_down_and_the_relay_drains_when_it_returns() {
    let store = std::env::temp_dir().join(format!("c360-nats-{}", unique_id()));
    let mut nats = NatsProcess::start(free_port(), &store).await;
    let id = unique_id();
    let app = TestApp::spawn_with(settings(&id, &nats.url()), id).await;

    let first = app
        .post("/cohort/folders/", "frank", json!({"name": "before"}))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body["name"], "before");

    nats.kill();
    for n in 0..3 {
        let during = app
            .post(
                "/cohort/folders/",
                "frank",
                json!({"name": format!("during{n}")}),
            )
            .await;
        assert_eq!(during.status, StatusCode::CREATED, "{:?}", during.body);
        assert_eq!(
            during.body["name"],
            format!("during{n}"),
            "projected from Postgres while NATS is down"
        );
    }
    let listed = app.get("/cohort/folders/", "frank").await;
    assert_eq!(listed.body["count"], 4);
    let ready = app
        .call(reqwest::Method::GET, "/health/ready", None, None)
        .await;
    // Degraded, not unavailable: the instance serves (writes are stored and projected).
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "degraded", "{:?}", ready.body);
    assert!(
        ready.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "nats" && c["ok"] == false),
        "{:?}",
        ready.body
    );

    let port = nats.port;
    drop(nats);
    let nats = NatsProcess::start(port, &store).await;
    let url = nats.url();
    let stream = app.settings.nats_stream.clone();
    let stored = app.event_count().await as u64;
    assert!(
        eventually(tests::PATIENCE, || async {
            stream_len(&url, &stream).await == stored
        })
        .await,
        "the relay drained the backlog once NATS returned"
    );
    let ids: Vec<String> = published(&url, &stream)
        .await
        .into_iter()
        .map(|m| m.msg_id)
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len() as u64, stored, "each event once: {ids:?}");
    let after = app
        .post("/cohort/folders/", "frank", json!({"name": "after"}))
        .await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert!(
        eventually(tests::PATIENCE, || async {
            stream_len(&url, &stream).await == stored + 1
        })
        .await
    );

    app.stop().await;
    drop(nats);
    let _ = std::fs::remove_dir_all(store);
}
