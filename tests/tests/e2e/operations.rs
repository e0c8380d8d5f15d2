//! Operations: trace ids, Prometheus metrics, the pipeline's admin view, and a projection
//! rebuild while the service is under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use infra::workspace::WorkspaceProjection;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::executor::TestExecutor;
use tests::identity::{APHP, add_user, grant, seed, user_with};
use tests::{
    TestApp, dump_schema, eventually, last_event_cursor, nats_url, projection_checkpoint, query,
    settings, unique_id,
};

const WAIT: Duration = tests::PATIENCE;

#[tokio::test]
async fn trace_ids_reach_events_logs_and_the_executor_and_metrics_count_everything() {
    let id = unique_id();
    let qe_token = format!("qe-{id}");
    let executor = TestExecutor::start(&qe_token).await;
    let mut s = settings(&id, &nats_url());
    s.identity.query_executor_token = Some(qe_token.clone());
    s.cohorts.query_executor_url = executor.url.clone();
    let app = TestApp::spawn_with(s, id).await;
    executor.set_backend(&app.base);
    let fixture = seed(&app).await;
    add_user(&app, "alice", None).await;
    grant(&app, &fixture, "alice", "nominative_reader", APHP).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;

    // A given trace id is kept, returned and recorded in the event's metadata.
    let folder = app
        .send(
            app.request(Method::POST, "/cohort/folders/")
                .bearer_auth(app.token("alice").await)
                .header("x-trace-id", "trace-folder-1")
                .json(&json!({"name": "Traced"})),
        )
        .await;
    assert_eq!(folder.status, StatusCode::CREATED, "{:?}", folder.body);
    assert_eq!(folder.headers["x-trace-id"], "trace-folder-1");
    let correlation: String = sqlx::query_scalar(
        "SELECT metadata ->> 'correlation_id' FROM events
          WHERE event_type = 'FolderCreated' AND aggregate_id = $1",
    )
    .bind(folder.body["uuid"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(correlation, "trace-folder-1");
    // Without one, a fresh id is generated, even for an unknown route.
    let missing = app.get("/no/such/route/", "alice").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let generated = missing.headers["x-trace-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    // The count submitted because of a traced request carries its trace id to the executor.
    let request = app
        .post(
            "/cohort/requests/",
            "alice",
            json!({"name": "r", "parent_folder": folder.body["uuid"]}),
        )
        .await;
    let snapshot = app
        .post(
            "/cohort/request-query-snapshots/",
            "alice",
            json!({"request": request.body["uuid"], "serialized_query": query(&["0"])}),
        )
        .await;
    let count = app
        .send(
            app.request(Method::POST, "/cohort/dated-measures/")
                .bearer_auth(app.token("alice").await)
                .header("x-trace-id", "trace-count-7")
                .json(&json!({"request_query_snapshot_id": snapshot.body["uuid"]})),
        )
        .await;
    assert_eq!(count.status, StatusCode::CREATED, "{:?}", count.body);
    let count_id = count.uuid();
    assert!(
        eventually(WAIT, || async { !executor.jobs_for(&count_id).is_empty() }).await,
        "the count reached the executor"
    );
    assert_eq!(
        executor.jobs_for(&count_id)[0].trace_id.as_deref(),
        Some("trace-count-7")
    );

    // Metrics: requests per route and status, commands per aggregate, pipeline lags.
    let needles = [
        r#"cohort360_http_requests_total{method="POST",route="/cohort/folders/",status="201"}"#,
        r#"cohort360_http_request_duration_seconds_bucket{method="POST",route="/cohort/folders/""#,
        r#"cohort360_commands_total{aggregate="Folder",outcome="ok"}"#,
        r#"cohort360_commands_total{aggregate="Count",outcome="ok"}"#,
        r#"cohort360_projection_lag_seconds_bucket{projection="workspace""#,
        r#"cohort360_relay_lag_seconds_count{relay="jetstream"}"#,
        r#"cohort360_reaction_lag_seconds_count{reactor="executor"}"#,
    ];
    let scrape = || async {
        let scraped = app.call(Method::GET, "/metrics", None, None).await;
        assert_eq!(scraped.status, StatusCode::OK);
        scraped.body.as_str().unwrap().to_string()
    };
    // Reactions finish after the executor answered: give them a moment.
    eventually(WAIT, || async {
        let text = scrape().await;
        needles.iter().all(|n| text.contains(n))
    })
    .await;
    let text = scrape().await;
    for needle in needles {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }

    // The pipeline's admin view: full administrators only, every consumer listed.
    let refused = app.get("/admin/projections/", "alice").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let view = app.get("/admin/projections/", "admin").await;
    assert_eq!(view.status, StatusCode::OK, "{:?}", view.body);
    let consumers = view.body["consumers"].as_array().unwrap();
    for (kind, name) in [
        ("projection", "workspace"),
        ("projection", "identity"),
        ("projection", "cohorts"),
        ("reactor", "executor"),
        ("relay", "jetstream"),
    ] {
        let found = consumers
            .iter()
            .find(|c| c["kind"] == kind && c["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} missing: {consumers:?}"));
        assert!(found["behind"].as_i64().unwrap() >= 0);
        assert!(found["lag_seconds"].as_f64().unwrap() >= 0.0);
        assert!(found.get("last_error").is_some());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_under_load_fails_no_request_and_swaps_in_a_fresh_fold() {
    let app = Arc::new(TestApp::spawn().await);
    for i in 0..30 {
        let f = app
            .post(
                "/cohort/folders/",
                "alice",
                json!({"name": format!("f{i}")}),
            )
            .await;
        assert_eq!(f.status, StatusCode::CREATED);
    }

    // Two clients write and read for as long as the rebuilds run.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..2 {
        let (app, stop, done) = (app.clone(), stop.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i < 10 {
                i += 1;
                let created = app
                    .post(
                        "/cohort/folders/",
                        "alice",
                        json!({"name": format!("c{c}-{i}")}),
                    )
                    .await;
                if created.status != StatusCode::CREATED {
                    failures.push(format!("POST {}: {:?}", created.status, created.body));
                    continue;
                }
                let uuid = created.uuid();
                let renamed = app
                    .patch(
                        &format!("/cohort/folders/{uuid}/"),
                        "alice",
                        json!({"name": format!("c{c}-{i}-renamed")}),
                    )
                    .await;
                if renamed.status != StatusCode::OK {
                    failures.push(format!("PATCH {}: {:?}", renamed.status, renamed.body));
                }
                let listed = app.get("/cohort/folders/?limit=5", "alice").await;
                if listed.status != StatusCode::OK {
                    failures.push(format!("GET {}: {:?}", listed.status, listed.body));
                }
                done.fetch_add(3, Ordering::Relaxed);
            }
            failures
        }));
    }
    let before = done.load(Ordering::Relaxed);
    for _ in 0..3 {
        infra::rebuild::rebuild(&app.pool, &WorkspaceProjection)
            .await
            .expect("rebuild under load");
    }
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "requests failed during rebuilds: {failures:?}"
    );
    assert!(during > 0, "the load ran during the rebuilds");

    // Once the live projector has caught up, the tables equal a fresh fold of the log.
    assert!(
        eventually(WAIT, || async {
            projection_checkpoint(&app.pool, "workspace").await.0
                == last_event_cursor(&app.pool).await
        })
        .await
    );
    let live = dump_schema(&app.pool, "workspace").await;
    let folders = live.iter().find(|(t, _)| t == "folders").unwrap();
    assert!(folders.1.len() >= 50, "{} folders", folders.1.len());
    infra::rebuild::rebuild(&app.pool, &WorkspaceProjection)
        .await
        .expect("fresh fold");
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);
    Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
}
