//! The event pipeline's guarantees: gap-safe relay, exactly-once projection, crash recovery,
//! NATS outages, rebuilds, optimistic concurrency.

use std::collections::HashSet;
use std::time::Duration;

use infra::projector::{Projector, ProjectorSettings};
use infra::relay::{Relay, RelaySettings};
use infra::workspace::WorkspaceProjection;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use tests::{
    TestApp, cleanup, dump_schema, eventually, last_event_cursor, nats_url, projection_checkpoint,
    published, query, settings, stream_len, unique_id,
};
use tokio_util::sync::CancellationToken;

/// Appends `batches` transactions of `per_batch` FolderCreated events each, by SQL.
async fn append_folders(pool: &PgPool, batches: usize, per_batch: i64) {
    for b in 0..batches {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 'Folder', id::text, 1, 'FolderCreated', '1',
                    json_build_object('FolderCreated', json_build_object(
                        'folder_id', id, 'owner', 'loader', 'name', 'f' || $1 || '-' || i,
                        'description', null, 'at', '2026-01-01T00:00:00Z')),
                    '{\"user\":\"loader\"}'::json
               FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, $2) AS i) g",
        )
        .bind(b as i64)
        .bind(per_batch)
        .execute(pool)
        .await
        .expect("events appended");
    }
}

/// Creates a folder of `user` and a request in it; returns the request's uuid.
async fn folder_with_request(app: &TestApp, user: &str) -> String {
    let folder = app
        .post("/cohort/folders/", user, json!({"name": "F"}))
        .await
        .uuid();
    let request = app
        .post(
            "/cohort/requests/",
            user,
            json!({"name": "R", "parent_folder": folder}),
        )
        .await;
    assert_eq!(request.status, StatusCode::CREATED, "{}", request.body);
    request.uuid()
}

/// How many events of the aggregates the workspace projection reads (folders and requests): what
/// its checkpoint counts as applied.
async fn workspace_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type IN ('Folder', 'Request')")
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn event_ids(pool: &PgPool) -> HashSet<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT aggregate_type || ':' || aggregate_id || ':' || sequence FROM events",
    )
    .fetch_all(pool)
    .await
    .expect("event ids")
    .into_iter()
    .collect()
}

/// Asserts that the stream holds every event exactly once, in strictly increasing log order,
/// each message chained to the one before it.
async fn assert_published_exactly_once(pool: &PgPool, nats: &str, stream: &str) {
    let messages = published(nats, stream).await;
    let expected = event_ids(pool).await;
    let ids: Vec<&str> = messages.iter().map(|m| m.msg_id.as_str()).collect();
    let unique: HashSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(ids.len(), unique.len(), "a message id was published twice");
    assert_eq!(
        unique, expected,
        "the stream holds exactly the stored events"
    );
    let mut previous = projections::Cursor::START;
    for m in &messages {
        assert_eq!(
            m.envelope.previous, previous,
            "message {} is chained to its predecessor",
            m.msg_id
        );
        assert!(m.envelope.cursor() > previous, "log order is kept");
        assert_eq!(m.msg_id, m.envelope.message_id);
        previous = m.envelope.cursor();
    }
}

#[tokio::test]
async fn eight_concurrent_writers_leave_read_models_equal_to_the_log_and_publish_every_event_once()
{
    let app = Arc::new(TestApp::spawn().await);
    // The writers' users and sessions, before the count.
    for w in 0..8 {
        app.token(&format!("writer{w}")).await;
    }
    let before = app.event_count().await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let app = app.clone();
        writers.push(tokio::spawn(async move {
            let user = format!("writer{w}");
            let folder = app.post("/cohort/folders/", &user, json!({"name": format!("F{w}")})).await;
            assert_eq!(folder.status, StatusCode::CREATED);
            let mut requests = Vec::new();
            for r in 0..9 {
                let req = app
                    .post("/cohort/requests/", &user, json!({"name": format!("R{r}"), "parent_folder": folder.body["uuid"]}))
                    .await;
                assert_eq!(req.status, StatusCode::CREATED);
                requests.push((req.uuid(), None::<String>));
            }
            // 1 folder + 9 requests + 490 snapshot commands = 500 commands per writer.
            for i in 0..490 {
                let (request, last) = &mut requests[i % 9];
                let body = match last {
                    None => json!({"request": request, "serialized_query": query(&[&i.to_string()])}),
                    Some(prev) => json!({"previous_snapshot": prev, "serialized_query": query(&[&i.to_string()])}),
                };
                let s = app.post("/cohort/request-query-snapshots/", &user, body).await;
                assert_eq!(s.status, StatusCode::CREATED, "{:?}", s.body);
                *last = Some(s.uuid());
            }
        }));
    }
    for w in writers {
        w.await.expect("writer finished");
    }
    let events = app.event_count().await;
    assert_eq!(events - before, 8 * 500);

    // Every command waited for the projector, so the read model is complete now.
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace.query_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(snapshots, 8 * 490);
    let max_version: i32 = sqlx::query_scalar("SELECT max(version) FROM workspace.query_snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        max_version, 55,
        "490 snapshots over 9 requests: 55 versions for the first ones"
    );
    let (cursor, applied) = projection_checkpoint(&app.pool, "workspace").await;
    assert_eq!(
        applied,
        workspace_events(&app.pool).await,
        "the projector applied every folder and request event exactly once"
    );
    assert_eq!(cursor, last_event_cursor(&app.pool).await);

    // Every event reached JetStream once per message id, in log order.
    let stream = app.settings.nats_stream.clone();
    let nats = app.settings.nats_url.clone();
    assert!(
        eventually(tests::PATIENCE, || async {
            stream_len(&nats, &stream).await == events as u64
        })
        .await,
        "the relay published everything"
    );
    assert_published_exactly_once(&app.pool, &nats, &stream).await;

    // The read model equals the fold of the event store.
    let live = dump_schema(&app.pool, "workspace").await;
    infra::rebuild::rebuild(&app.pool, &WorkspaceProjection)
        .await
        .expect("rebuild");
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);

    Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
}

#[tokio::test]
async fn an_event_committed_late_is_published_and_projected_in_order_once_its_transaction_commits()
{
    let id = unique_id();
    let mut s = settings(&id, &nats_url());
    s.read_your_writes_timeout_ms = 300;
    let app = TestApp::spawn_with(s, id).await;
    // Alice's user and session exist before the open transaction holds the read models back.
    app.token("alice").await;
    let base = app.event_count().await;
    let read = workspace_events(&app.pool).await;
    let nats = app.settings.nats_url.clone();
    let stream = app.settings.nats_stream.clone();
    assert!(
        eventually(tests::PATIENCE, || async {
            stream_len(&nats, &stream).await == base as u64
                && projection_checkpoint(&app.pool, "workspace").await.1 == read
        })
        .await
    );

    // A writer draws its position, then stays open.
    let mut held = app.pool.begin().await.unwrap();
    let held_folder = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Folder', $1::text, 1, 'FolderCreated', '1',
                 json_build_object('FolderCreated', json_build_object('folder_id', $1, 'owner', 'alice',
                     'name', 'held', 'description', null, 'at', '2026-01-01T00:00:00Z')), '{}')",
    )
    .bind(held_folder)
    .execute(&mut *held)
    .await
    .unwrap();

    // Later writers commit meanwhile.
    for n in 0..3 {
        let later = app
            .post(
                "/cohort/folders/",
                "alice",
                json!({"name": format!("later{n}")}),
            )
            .await;
        assert_eq!(later.status, StatusCode::CREATED);
        assert_eq!(
            later
                .headers
                .get("x-cohort360-consistency")
                .map(|v| v.to_str().unwrap()),
            Some("pending"),
            "the read model must wait for the open transaction"
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        stream_len(&nats, &stream).await,
        base as u64,
        "nothing after the open transaction is published"
    );
    let (_, applied) = projection_checkpoint(&app.pool, "workspace").await;
    assert_eq!(
        applied, read,
        "nothing after the open transaction is projected"
    );

    held.commit().await.unwrap();
    assert!(
        eventually(tests::PATIENCE, || async {
            stream_len(&nats, &stream).await == base as u64 + 4
        })
        .await
    );
    let messages = published(&nats, &stream).await;
    assert_eq!(
        messages[base as usize].envelope.aggregate_id,
        held_folder.to_string(),
        "the earlier event goes first"
    );
    assert_published_exactly_once(&app.pool, &nats, &stream).await;
    assert!(
        eventually(tests::PATIENCE, || async {
            projection_checkpoint(&app.pool, "workspace").await.1 == read + 4
        })
        .await
    );
    let folders = app
        .get("/cohort/folders/?ordering=created_at", "alice")
        .await;
    assert_eq!(folders.body["count"], 4);
    app.stop().await;
}

/// A database and a stream without the HTTP application.
async fn bare_pipeline() -> (
    String,
    infra::runtime::config::Settings,
    PgPool,
    async_nats::jetstream::Context,
) {
    let id = unique_id();
    let s = settings(&id, &nats_url());
    let pool = infra::runtime::prepare_database(&s)
        .await
        .expect("database");
    let nats = infra::runtime::nats_settings(&s);
    let client = infra::nats::connect(&nats).await.expect("nats");
    let js = infra::nats::jetstream(client);
    // The client connects in the background: retry until the stream is there.
    let created = tests::eventually(tests::PATIENCE, || async {
        infra::nats::ensure_stream(&js, &nats).await.is_ok()
    })
    .await;
    assert!(created, "the stream is created");
    (id, s, pool, js)
}

/// A live feed of the stream, following it until the test ends.
fn live_feed(
    js: &async_nats::jetstream::Context,
    nats: &infra::nats::NatsSettings,
) -> infra::live_feed::LiveFeed {
    infra::live_feed::LiveFeed::spawn(js.clone(), nats.clone(), CancellationToken::new()).0
}

/// A relay, and a projector of `projection` polling every 50 ms, following JetStream.
fn follow_with(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    nats: &infra::nats::NatsSettings,
    projection: Arc<dyn infra::projector::Projection>,
) -> (
    Relay,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<projections::Cursor>,
) {
    let relay = Relay::new(
        pool.clone(),
        js.clone(),
        nats.clone(),
        RelaySettings::default(),
    );
    let projector = Projector::new(
        pool.clone(),
        projection,
        ProjectorSettings {
            poll_interval: Duration::from_millis(50),
        },
    );
    let progress = projector.progress();
    let task = tokio::spawn(projector.run(Some(live_feed(js, nats)), CancellationToken::new()));
    (relay, task, progress)
}

#[tokio::test]
async fn a_relay_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    let (id, s, pool, js) = bare_pipeline().await;
    let nats = infra::runtime::nats_settings(&s);
    append_folders(&pool, 40, 100).await;
    let relay_settings = RelaySettings {
        batch_size: 50,
        ..RelaySettings::default()
    };

    // Kill the relay while it is publishing.
    let relay = Relay::new(
        pool.clone(),
        js.clone(),
        nats.clone(),
        relay_settings.clone(),
    );
    let task = tokio::spawn(relay.run(CancellationToken::new()));
    let checker = Relay::new(
        pool.clone(),
        js.clone(),
        nats.clone(),
        relay_settings.clone(),
    );
    // Poll tightly so the kill lands while batches are still flowing.
    let deadline = tokio::time::Instant::now() + tests::PATIENCE;
    while checker
        .checkpoint()
        .await
        .map(|c| c.position < 500)
        .unwrap_or(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay started publishing"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort();
    let _ = task.await;
    let reached = checker.checkpoint().await.unwrap();
    assert!(reached.position < 4000, "killed mid-stream (at {reached})");

    // A statement the killed relay had already sent may still land: let it, before rewinding.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A crash between publishing and checkpointing: the checkpoint goes back, the batch is sent again.
    sqlx::query("UPDATE relay_checkpoints SET txid = '0', position = 0")
        .execute(&pool)
        .await
        .unwrap();

    let restarted = Relay::new(pool.clone(), js.clone(), nats.clone(), relay_settings);
    let published_now = restarted.drain().await.expect("drains");
    assert_eq!(
        published_now, 4000,
        "everything is (re)published from the checkpoint"
    );
    assert_eq!(
        stream_len(&s.nats_url, &s.nats_stream).await,
        4000,
        "JetStream dropped the re-sent duplicates"
    );
    assert_published_exactly_once(&pool, &s.nats_url, &s.nats_stream).await;
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn a_projector_killed_mid_stream_and_restarted_applies_every_event_once() {
    let (id, s, pool, js) = bare_pipeline().await;
    let nats = infra::runtime::nats_settings(&s);
    let relay = Relay::new(
        pool.clone(),
        js.clone(),
        nats.clone(),
        RelaySettings::default(),
    );
    let settings = ProjectorSettings {
        poll_interval: Duration::from_millis(50),
    };
    let projector = Projector::new(
        pool.clone(),
        Arc::new(WorkspaceProjection),
        settings.clone(),
    );
    let task = tokio::spawn(projector.run(Some(live_feed(&js, &nats)), CancellationToken::new()));
    // Live events through NATS, and a kill while they flow.
    for _ in 0..30 {
        append_folders(&pool, 1, 100).await;
        relay.drain().await.unwrap();
    }
    assert!(
        eventually(tests::PATIENCE, || async {
            projection_checkpoint(&pool, "workspace").await.1 > 300
        })
        .await
    );
    task.abort();
    let _ = task.await;
    let (_, at_kill) = projection_checkpoint(&pool, "workspace").await;

    // More events while it is down, some only in Postgres (relay not run), some on NATS too.
    append_folders(&pool, 5, 100).await;
    relay.drain().await.unwrap();
    append_folders(&pool, 5, 100).await;

    let projector = Projector::new(pool.clone(), Arc::new(WorkspaceProjection), settings);
    let task = tokio::spawn(projector.run(Some(live_feed(&js, &nats)), CancellationToken::new()));
    relay.drain().await.unwrap();
    assert!(
        eventually(tests::PATIENCE, || async {
            projection_checkpoint(&pool, "workspace").await.1 == 4000
        })
        .await,
        "restarted projector caught up (was at {at_kill} when killed)"
    );
    // Redeliveries changed nothing: one row per event.
    let folders: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace.folders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(folders, 4000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        projection_checkpoint(&pool, "workspace").await.1,
        4000,
        "no event applied twice"
    );
    task.abort();
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn a_rebuilt_projection_is_identical_row_for_row() {
    let app = TestApp::spawn().await;
    tests::identity::add_user(&app, "dave", None).await;
    let f = app
        .post(
            "/cohort/folders/",
            "carol",
            json!({"name": "A", "description": "d"}),
        )
        .await;
    let f2 = app
        .post("/cohort/folders/", "carol", json!({"name": "B"}))
        .await;
    let r = app
        .post(
            "/cohort/requests/",
            "carol",
            json!({"name": "R", "parent_folder": f.body["uuid"]}),
        )
        .await;
    let r2 = app
        .post(
            "/cohort/requests/",
            "carol",
            json!({"name": "R2", "parent_folder": f2.body["uuid"]}),
        )
        .await;
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            "carol",
            json!({"request": r.body["uuid"], "serialized_query": query(&["1"])}),
        )
        .await;
    let v1_id = v1.body["uuid"].as_str().unwrap();
    app.post(
        &format!("/cohort/request-query-snapshots/{v1_id}/next-snapshots/"),
        "carol",
        json!({"serialized_query": query(&["2"])}),
    )
    .await;
    app.patch(
        &format!("/cohort/request-query-snapshots/{v1_id}/"),
        "carol",
        json!({"name": "n", "serialized_query": query(&["9"])}),
    )
    .await;
    app.patch(
        &format!("/cohort/requests/{}/", r.body["uuid"].as_str().unwrap()),
        "carol",
        json!({"favorite": true, "parent_folder": f2.body["uuid"]}),
    )
    .await;
    let shared = app
        .post(
            &format!("/cohort/request-query-snapshots/{v1_id}/share/"),
            "carol",
            json!({"recipients": "dave"}),
        )
        .await;
    assert_eq!(shared.status, StatusCode::CREATED);
    let deleted = app
        .delete(
            &format!("/cohort/requests/{}/", r2.body["uuid"].as_str().unwrap()),
            "carol",
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let deleted = app
        .delete(
            &format!("/cohort/folders/{}/", f.body["uuid"].as_str().unwrap()),
            "carol",
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    app.settle().await;
    let live = dump_schema(&app.pool, "workspace").await;
    assert!(
        live.iter().all(|(_, rows)| !rows.is_empty()),
        "every table has rows to compare"
    );
    // Index and constraint names and definitions, as the migrations made them.
    let indexes = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT indexname::text, indexdef FROM pg_indexes
              WHERE schemaname = 'workspace' ORDER BY indexname",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    let live_indexes = indexes().await;
    assert!(live_indexes.len() > 5, "{live_indexes:?}");
    let report = infra::rebuild::rebuild(&app.pool, &WorkspaceProjection)
        .await
        .expect("rebuild");
    assert_eq!(report.events as i64, app.event_count().await);
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);
    assert_eq!(indexes().await, live_indexes);
    // The service keeps working on the swapped-in tables.
    let after = app
        .post(
            "/cohort/folders/",
            "carol",
            json!({"name": "after rebuild"}),
        )
        .await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert_eq!(after.body["name"], "after rebuild");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_commands_on_one_request_lose_no_update() {
    let app = Arc::new(TestApp::spawn().await);
    let request = folder_with_request(&app, "erin").await;
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            "erin",
            json!({"request": request, "serialized_query": query(&["1"])}),
        )
        .await;
    let v1_id = v1.uuid();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let app = app.clone();
        let v1_id = v1_id.clone();
        tasks.push(tokio::spawn(async move {
            app.post(
                &format!("/cohort/request-query-snapshots/{v1_id}/next-snapshots/"),
                "erin",
                json!({"serialized_query": query(&[&i.to_string()])}),
            )
            .await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            StatusCode::CREATED => versions.push(a.body["version"].as_i64().unwrap()),
            StatusCode::CONFLICT => assert_eq!(a.body["code"], "concurrent_modification"),
            other => panic!("unexpected {other}: {:?}", a.body),
        }
    }
    versions.sort_unstable();
    let expected: Vec<i64> = (2..2 + versions.len() as i64).collect();
    assert_eq!(
        versions, expected,
        "every accepted write got its own version"
    );
    let listed = app
        .get(
            &format!("/cohort/requests/{request}/query-snapshots/"),
            "erin",
        )
        .await;
    assert_eq!(
        listed.body["count"].as_i64().unwrap(),
        1 + versions.len() as i64,
        "no lost update"
    );
    Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
}

#[tokio::test]
async fn the_process_follows_nats_on_one_consumer_and_every_projector_gets_each_live_event() {
    // Polling every ten minutes: only the live feed can bring the projectors that are not woken
    // by the command (none but `workspace` reads folder events) to its event.
    let id = unique_id();
    let mut s = settings(&id, &nats_url());
    s.projector_poll_ms = 600_000;
    let app = TestApp::spawn_with(s, id).await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&app.settings.nats_stream).await.unwrap();
    let names = || async {
        use futures::TryStreamExt;
        stream
            .consumer_names()
            .try_collect::<Vec<String>>()
            .await
            .unwrap_or_default()
    };
    assert!(
        eventually(tests::PATIENCE, || async { !names().await.is_empty() }).await,
        "the process subscribes"
    );
    for _ in 0..3 {
        let written = app
            .post("/cohort/folders/", "dora", json!({"name": "followed"}))
            .await;
        assert_eq!(written.status, StatusCode::CREATED);
    }
    let (txid, position): (i64, i64) = sqlx::query_as(
        "SELECT (txid::text)::bigint, position FROM events ORDER BY txid DESC, position DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let head = projections::Cursor { txid, position };
    for mut progress in app.progress() {
        tokio::time::timeout(tests::PATIENCE, progress.wait_for(|c| *c >= head))
            .await
            .expect("every projector reached the last event through the live feed")
            .unwrap();
    }
    assert_eq!(names().await.len(), 1, "{:?}", names().await);
    app.stop().await;
}

#[tokio::test]
async fn durable_consumers_of_the_version_before_the_live_feed_are_retired() {
    let (id, s, pool, js) = bare_pipeline().await;
    let nats = infra::runtime::nats_settings(&s);
    let stream = js.get_stream(&nats.stream).await.unwrap();
    let legacy = infra::live_feed::legacy_durable_names(&nats.stream, &["workspace"], &["mail"]);
    let kept = format!("{}_someone_else", nats.stream);
    for name in legacy.iter().chain([&kept]) {
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    infra::live_feed::retire_durable_consumers(&js, &nats, &legacy).await;
    let names: Vec<String> = {
        use futures::TryStreamExt;
        stream.consumer_names().try_collect().await.unwrap()
    };
    assert_eq!(names, vec![kept]);
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn a_projector_writes_nothing_for_events_it_does_not_read_and_its_checkpoint_follows_when_quiet()
 {
    let (id, s, pool, js) = bare_pipeline().await;
    let nats = infra::runtime::nats_settings(&s);
    let (relay, task, mut progress) = follow_with(
        &pool,
        &js,
        &nats,
        Arc::new(infra::identity::IdentityProjection),
    );
    // Folder events only: the identity projection reads none of them.
    append_folders(&pool, 20, 50).await;
    relay.drain().await.unwrap();
    let head = last_event_cursor(&pool).await;
    let last: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    // This process knows at once that the projection is current up to the last event...
    tokio::time::timeout(tests::PATIENCE, progress.wait_for(|c| c.position == last))
        .await
        .expect("progress reached the last event")
        .unwrap();
    // ...and the stored checkpoint follows once the feed is quiet, having applied nothing.
    assert!(
        eventually(tests::PATIENCE, || async {
            projection_checkpoint(&pool, "identity").await.0 == head
        })
        .await,
        "the checkpoint reached the head"
    );
    let (_, applied) = projection_checkpoint(&pool, "identity").await;
    assert_eq!(
        applied, 0,
        "no folder event was applied to the identity tables"
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
    // A thousand events, a handful of checkpoint writes (statistics may lag, never overcount).
    let _ = sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&pool)
        .await;
    let updates: i64 = sqlx::query_scalar(
        "SELECT COALESCE(n_tup_upd, 0) FROM pg_stat_user_tables
          WHERE schemaname = 'identity' AND relname = 'checkpoint'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        updates < 100,
        "{updates} checkpoint writes for 1 000 ignored events"
    );
    task.abort();
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn a_projection_whose_last_commits_a_database_crash_lost_applies_them_again() {
    let (id, s, pool, js) = bare_pipeline().await;
    let nats = infra::runtime::nats_settings(&s);
    let (relay, task, _) = follow_with(&pool, &js, &nats, Arc::new(WorkspaceProjection));
    append_folders(&pool, 4, 25).await;
    relay.drain().await.unwrap();
    let folders = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workspace.folders")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!(eventually(tests::PATIENCE, || async { folders().await == 100 }).await);

    // What a crash does to asynchronous commits: the last ones are gone, checkpoint included.
    let (txid, position): (i64, i64) = sqlx::query_as(
        "SELECT (txid::text)::bigint, position FROM events ORDER BY txid, position OFFSET 59 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "DELETE FROM workspace.folders WHERE uuid::text IN (
             SELECT aggregate_id FROM events WHERE (txid, position) > (($1::bigint)::text::xid8, $2))",
    )
    .bind(txid)
    .bind(position)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE workspace.checkpoint SET txid = ($1::bigint)::text::xid8, position = $2,
                events_applied = 60",
    )
    .bind(txid)
    .bind(position)
    .execute(&mut *tx)
    .await
    .unwrap();
    // (Checked before the commit: the running projector may notice at once.)
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace.folders")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(kept, 60);
    tx.commit().await.unwrap();

    // The running projector notices the checkpoint went back and applies the lost events again,
    // with no new event to prompt it.
    assert!(
        eventually(tests::PATIENCE, || async { folders().await == 100 }).await,
        "the lost folders are back"
    );
    assert!(
        eventually(tests::PATIENCE, || async {
            projection_checkpoint(&pool, "workspace").await == (last_event_cursor(&pool).await, 100)
        })
        .await,
        "each event applied once more, no more"
    );
    task.abort();
    pool.close().await;
    cleanup(&id, &s).await;
}

/// Catches a workspace projector up until its checkpoint counts `applied` events (the log's
/// gap-safe horizon is the whole cluster's: another test's open transaction may hide events).
async fn fold_workspace_until(pool: &PgPool, applied: i64) {
    let projector = Projector::new(
        pool.clone(),
        Arc::new(WorkspaceProjection),
        ProjectorSettings::default(),
    );
    assert!(
        eventually(tests::PATIENCE, || async {
            projector.catch_up().await.unwrap();
            projection_checkpoint(pool, "workspace").await.1 == applied
        })
        .await,
        "the workspace projection did not reach {applied} applied events"
    );
}

/// The workspace projection, failing after its first write: a fold that breaks mid-transaction.
struct FailingAfterWriting;

#[async_trait::async_trait]
impl infra::projector::Projection for FailingAfterWriting {
    fn name(&self) -> &'static str {
        "workspace"
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        event: &infra::log::CommittedEvent,
    ) -> Result<(), infra::projector::ProjectionError> {
        WorkspaceProjection.apply(conn, event).await?;
        Err(infra::projector::ProjectionError::Undecodable {
            message_id: event.message_id(),
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            reason: "refused by the test".into(),
        })
    }
}

#[tokio::test]
async fn a_fold_that_fails_mid_transaction_keeps_nothing_and_leaves_no_transaction_open() {
    let (id, s, pool, _js) = bare_pipeline().await;
    append_folders(&pool, 1, 3).await;
    let projector = Projector::new(
        pool.clone(),
        Arc::new(FailingAfterWriting),
        ProjectorSettings::default(),
    );
    // The log's gap-safe horizon is the whole cluster's: a transaction of another test still
    // running may hide the events for a moment.
    let deadline = tokio::time::Instant::now() + tests::PATIENCE;
    let failed = loop {
        match projector.catch_up().await {
            Ok(0) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(
            failed,
            Err(infra::projector::ProjectionError::Undecodable { .. })
        ),
        "{failed:?}"
    );
    // The folder it wrote is gone with its transaction, and the checkpoint did not move...
    let folders: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace.folders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(folders, 0);
    assert_eq!(projection_checkpoint(&pool, "workspace").await.1, 0);
    // ...no session of the pool stays inside it, and its lock is free again.
    assert!(
        eventually(tests::PATIENCE, || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 0
        })
        .await,
        "a session was left inside the failed fold's transaction"
    );
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM workspace.checkpoint FOR UPDATE NOWAIT")
        .execute(&mut *tx)
        .await
        .expect("the checkpoint's lock is free");
    tx.rollback().await.unwrap();
    // The real projection then folds the same events.
    fold_workspace_until(&pool, 3).await;
    pool.close().await;
    cleanup(&id, &s).await;
}

/// Loads request `id` from `store`, decides `command` on it and commits; any refusal or failed
/// commit (a wrong snapshot count fails the snapshot's optimistic update) panics.
async fn decide_and_commit<S>(store: &S, id: &str, command: domain::request::RequestCommand)
where
    S: cqrs_es::EventStore<domain::request::Request>,
{
    use cqrs_es::AggregateContext;
    let mut context = store.load_aggregate(id).await.expect("loaded");
    let events = context.aggregate().decide(command).expect("decided");
    store
        .commit(events, context, std::collections::HashMap::new())
        .await
        .expect("committed");
}

#[tokio::test]
async fn requests_held_in_memory_see_other_instances_writes_and_keep_the_snapshots_count() {
    use cqrs_es::EventStore;
    use cqrs_es::persist::PersistedEventStore;
    use domain::request::{Request, RequestCommand};
    use infra::aggregate_cache::CachedStore;
    use infra::event_repository::EventRepository;

    let (id, s, pool, _js) = bare_pipeline().await;
    let every = infra::stores::SNAPSHOT_EVERY;
    let uncached = || {
        PersistedEventStore::<_, Request>::new_snapshot_store(
            EventRepository::new(pool.clone()),
            every,
        )
    };
    let held = CachedStore::new(uncached(), pool.clone(), every, 4);
    // Another instance writing the same request: no cache.
    let other = uncached();
    let request = uuid::Uuid::new_v4();
    let rid = request.to_string();
    let at = chrono::Utc::now();
    let save = |snapshot: uuid::Uuid, previous: Option<uuid::Uuid>, i: usize| {
        RequestCommand::SaveSnapshot {
            by: "held".into(),
            snapshot_id: snapshot,
            previous_snapshot: previous,
            serialized_query: query(&[&i.to_string()]),
            name: None,
            shared_by: None,
            at,
        }
    };
    decide_and_commit(
        &held,
        &rid,
        RequestCommand::Create {
            request_id: request,
            owner: "held".into(),
            name: "R".into(),
            description: None,
            favorite: false,
            parent_folder: uuid::Uuid::new_v4(),
            shared_by: None,
            at,
        },
    )
    .await;
    // Past three snapshots' worth of events, one in seven written by the other instance: each
    // save names the previous version, which the held state must know.
    let mut previous = None;
    for i in 0..3 * every {
        let snapshot = uuid::Uuid::new_v4();
        if i % 7 == 6 {
            decide_and_commit(&other, &rid, save(snapshot, previous, i)).await;
        } else {
            decide_and_commit(&held, &rid, save(snapshot, previous, i)).await;
        }
        previous = Some(snapshot);
    }
    let (mut from_memory, mut from_store) = (
        held.load_aggregate(&rid).await.unwrap(),
        uncached().load_aggregate(&rid).await.unwrap(),
    );
    assert_eq!(from_memory.current_sequence, 1 + 3 * every);
    assert_eq!(from_memory.current_sequence, from_store.current_sequence);
    assert_eq!(from_memory.current_snapshot, from_store.current_snapshot);
    {
        use cqrs_es::AggregateContext;
        assert_eq!(from_memory.aggregate(), from_store.aggregate());
        let versions = from_memory
            .aggregate()
            .state
            .as_ref()
            .unwrap()
            .snapshots
            .len();
        assert_eq!(versions, 3 * every);
    }
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn a_command_bus_deciding_on_a_held_request_behind_the_log_loses_and_refuses_nothing() {
    use commands::Execute;
    use commands::bus::CommandBus;
    use cqrs_es::persist::PersistedEventStore;
    use domain::request::{Request, RequestCommand};
    use infra::event_repository::EventRepository;

    let (id, s, pool, _js) = bare_pipeline().await;
    let every = infra::stores::SNAPSHOT_EVERY;
    let uncached = || {
        PersistedEventStore::<_, Request>::new_snapshot_store(
            EventRepository::new(pool.clone()),
            every,
        )
    };
    // This instance decides on the request it holds without asking the log (its bus as the
    // service composes it); another instance writes the same request meanwhile.
    let held = infra::stores::requests(&pool);
    let other = CommandBus::new(uncached(), 5);
    let ctx = commands::CommandContext {
        user: "held".into(),
        impersonator: None,
        correlation_id: "c".into(),
        causation_id: "c".into(),
        at: chrono::Utc::now(),
    };
    let request = uuid::Uuid::new_v4();
    let rid = request.to_string();
    let save = |snapshot: uuid::Uuid, previous: Option<uuid::Uuid>| RequestCommand::SaveSnapshot {
        by: "held".into(),
        snapshot_id: snapshot,
        previous_snapshot: previous,
        serialized_query: query(&["1"]),
        name: None,
        shared_by: None,
        at: ctx.at,
    };
    held.execute_new(
        &rid,
        RequestCommand::Create {
            request_id: request,
            owner: "held".into(),
            name: "R".into(),
            description: None,
            favorite: false,
            parent_folder: uuid::Uuid::new_v4(),
            shared_by: None,
            at: ctx.at,
        },
        &ctx,
    )
    .await
    .unwrap();
    let mut saved = Vec::new();
    for i in 0..2 * every {
        let previous = saved.last().copied();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        // The other instance saves a version; this one, behind it, then saves either from that
        // version (unknown to its held state: refused there, decided again loaded) or from its
        // own last one (accepted there: the append's optimistic lock makes it load).
        other.execute(&rid, save(a, previous), &ctx).await.unwrap();
        let from = if i % 2 == 0 { Some(a) } else { previous };
        held.execute(&rid, save(b, from), &ctx)
            .await
            .unwrap_or_else(|e| panic!("save {i} from {from:?}: {e}"));
        saved.extend([a, b]);
    }
    let stored = held.load(&rid).await.unwrap();
    let versions = stored.state.as_ref().unwrap().snapshots.len();
    assert_eq!(
        versions,
        saved.len(),
        "every version of both instances is kept"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(&rid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1 + saved.len() as i64, "nothing written twice");
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn a_long_run_of_creations_with_a_taken_key_folds_as_one_by_one() {
    let (id, s, pool, _js) = bare_pipeline().await;
    // A run of 601 creations whose 301st creates the first folder again: no aggregate writes
    // that (a creation is its aggregate's first event), but the fold must survive it as the
    // one-by-one fold does, keeping the first.
    append_folders(&pool, 1, 300).await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Folder', aggregate_id, 2, 'FolderCreated', '1',
                json_build_object('FolderCreated', json_build_object(
                    'folder_id', aggregate_id, 'owner', 'loader', 'name', 'again',
                    'description', null, 'at', '2026-01-02T00:00:00Z')),
                '{\"user\":\"loader\"}'::json
           FROM events ORDER BY position LIMIT 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    append_folders(&pool, 1, 300).await;
    fold_workspace_until(&pool, 601).await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM workspace.folders WHERE uuid::text =
             (SELECT aggregate_id FROM events ORDER BY position LIMIT 1)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(names, ["f0-1"]);
    let folders: i64 = sqlx::query_scalar("SELECT count(*) FROM workspace.folders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(folders, 600);
    // A rebuild (its first batches are runs of 500 and 101) ends with the same tables.
    let live = dump_schema(&pool, "workspace").await;
    infra::rebuild::rebuild(&pool, &WorkspaceProjection)
        .await
        .unwrap();
    assert_eq!(dump_schema(&pool, "workspace").await, live);
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn reading_the_log_after_a_cursor_follows_its_index_and_sorts_nothing() {
    // A catch-up from far behind reads batch after batch: a plan that sorts everything after the
    // cursor to return the first rows costs the whole remaining log per batch.
    let (id, s, pool, _js) = bare_pipeline().await;
    append_folders(&pool, 10, 1_000).await;
    sqlx::query("ANALYZE events").execute(&pool).await.unwrap();
    for (txid, position) in [("'0'::xid8", "0"), ("'1'::xid8", "5000")] {
        let read = infra::log::committed_after_sql(txid, position, "500");
        let plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {read}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        let plan = plan.to_string();
        assert!(!plan.contains("\"Sort\""), "{plan}");
        assert!(plan.contains("events_commit_order"), "{plan}");
    }
    pool.close().await;
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn one_row_of_an_owner_is_found_by_its_key_on_tables_without_statistics() {
    // A fresh database, or a read model just rebuilt, has no statistics until autovacuum's first
    // ANALYZE. Then Postgres costs the owner's partial index like the primary key, and a lookup
    // through it reads every row of the owner to return one.
    let (id, s, pool, _js) = bare_pipeline().await;
    let many = 2_000;
    for statement in [
        "INSERT INTO workspace.folders (uuid, owner, name, created_at, modified_at)
         SELECT gen_random_uuid(), 'carol', 'f' || i, now(), now() FROM generate_series(1, $1) i",
        "INSERT INTO workspace.requests (uuid, owner, name, favorite, parent_folder, created_at,
                                         modified_at, updated_at)
         SELECT gen_random_uuid(), 'carol', 'r' || i, false, gen_random_uuid(), now(), now(), now()
           FROM generate_series(1, $1) i",
        "INSERT INTO workspace.query_snapshots (uuid, request, owner, version, serialized_query,
                                                perimeters_ids, created_at, modified_at)
         SELECT gen_random_uuid(), gen_random_uuid(), 'carol', 1, '{}', '{}', now(), now()
           FROM generate_series(1, $1) i",
    ] {
        sqlx::query(statement)
            .bind(many)
            .execute(&pool)
            .await
            .unwrap();
    }
    use infra::workspace::reader::{folder_lookup_sql, request_lookup_sql, snapshot_lookup_sql};
    for (lookup, table) in [
        (folder_lookup_sql(), "folders"),
        (request_lookup_sql(), "requests"),
        (snapshot_lookup_sql(), "query_snapshots"),
    ] {
        let key: uuid::Uuid = sqlx::query_scalar(&format!(
            "SELECT uuid FROM workspace.{table} ORDER BY uuid LIMIT 1"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        let plan: serde_json::Value =
            sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {lookup}"))
                .bind(key)
                .bind("carol")
                .fetch_one(&pool)
                .await
                .unwrap();
        let plan = plan.to_string();
        assert!(plan.contains(&format!("\"{table}_pkey\"")), "{plan}");
        assert!(!plan.contains(&format!("\"{table}_owner\"")), "{plan}");
        let found_sql = format!("SELECT uuid FROM ({lookup}) AS found");
        let found = |owner: &'static str| {
            sqlx::query_scalar::<_, uuid::Uuid>(&found_sql)
                .bind(key)
                .bind(owner)
                .fetch_optional(&pool)
        };
        assert_eq!(found("carol").await.unwrap(), Some(key), "{table}");
        assert_eq!(
            found("dave").await.unwrap(),
            None,
            "{table}: another owner's row"
        );
    }
    pool.close().await;
    cleanup(&id, &s).await;
}

/// The workspace's fold whose rebuild groups forget the requests it reads.
struct MisgroupedWorkspace;

#[async_trait::async_trait]
impl infra::projector::Projection for MisgroupedWorkspace {
    fn name(&self) -> &'static str {
        WorkspaceProjection.name()
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        WorkspaceProjection.reads(aggregate_type)
    }

    fn rebuild_groups(&self) -> &'static [&'static [&'static str]] {
        &[&["Folder"]]
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        event: &infra::log::CommittedEvent,
    ) -> Result<(), infra::projector::ProjectionError> {
        WorkspaceProjection.apply(conn, event).await
    }
}

#[tokio::test]
async fn a_rebuild_whose_groups_miss_a_type_the_projection_reads_stops_and_keeps_the_live_tables() {
    let app = TestApp::spawn().await;
    folder_with_request(&app, "carol").await;
    app.settle().await;
    let live = dump_schema(&app.pool, "workspace").await;
    let refused = infra::rebuild::rebuild(&app.pool, &MisgroupedWorkspace).await;
    match refused {
        Err(infra::projector::ProjectionError::Ungrouped { aggregate_type, .. }) => {
            assert_eq!(aggregate_type, "Request")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);
    // The projection's own groups rebuild it.
    infra::rebuild::rebuild(&app.pool, &WorkspaceProjection)
        .await
        .expect("rebuild");
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);
    app.stop().await;
}

#[tokio::test]
async fn a_second_rebuild_of_a_projection_is_refused_while_one_runs() {
    let app = TestApp::spawn().await;
    app.post("/cohort/folders/", "carol", json!({"name": "A"}))
        .await;
    app.settle().await;
    let live = dump_schema(&app.pool, "workspace").await;
    // What a running rebuild holds, held here.
    let mut running = app.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(infra::rebuild::lock_key("workspace"))
        .execute(&mut *running)
        .await
        .unwrap();
    match infra::rebuild::rebuild(&app.pool, &WorkspaceProjection).await {
        Err(infra::projector::ProjectionError::RebuildRunning(name)) => {
            assert_eq!(name, "workspace")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(infra::rebuild::lock_key("workspace"))
        .execute(&mut *running)
        .await
        .unwrap();
    drop(running);
    // Once it ended, a rebuild runs, and so does the next (each releases the lock).
    for _ in 0..2 {
        infra::rebuild::rebuild(&app.pool, &WorkspaceProjection)
            .await
            .expect("rebuild");
    }
    assert_eq!(dump_schema(&app.pool, "workspace").await, live);
    app.stop().await;
}

/// A request's aggregate snapshot (every one of its versions, rewritten every few events) is
/// compressed with lz4 where the server has it, and loads back whole.
#[tokio::test]
async fn request_snapshots_are_stored_with_lz4_where_postgres_has_it_and_load_back() {
    use cqrs_es::persist::PersistedEventStore;
    use cqrs_es::{AggregateContext, EventStore};
    use domain::request::Request;
    use infra::event_repository::EventRepository;

    let app = TestApp::spawn().await;
    let user = "snapper";
    let request = folder_with_request(&app, user).await;
    let every = infra::stores::SNAPSHOT_EVERY;
    let mut last = None::<String>;
    // Past two snapshot intervals, each version a few hundred bytes: the stored state is well
    // past the size from which Postgres compresses a value.
    for i in 0..2 * every {
        let body = match &last {
            None => json!({"request": request, "serialized_query": query(&[&i.to_string()])}),
            Some(prev) => {
                json!({"previous_snapshot": prev, "serialized_query": query(&[&i.to_string()])})
            }
        };
        let s = app
            .post("/cohort/request-query-snapshots/", user, body)
            .await;
        assert_eq!(s.status, StatusCode::CREATED, "{:?}", s.body);
        last = Some(s.uuid());
    }
    let lz4_available: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_settings
                         WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let compression: Option<String> = sqlx::query_scalar(
        "SELECT pg_column_compression(payload) FROM snapshots
          WHERE aggregate_type = 'Request' AND aggregate_id = $1",
    )
    .bind(&request)
    .fetch_one(&app.pool)
    .await
    .expect("the request has a stored snapshot");
    let expected = if lz4_available { "lz4" } else { "pglz" };
    assert_eq!(compression.as_deref(), Some(expected));

    // Loaded from the store (no cache): the snapshot, then the events after it.
    let store = PersistedEventStore::<_, Request>::new_snapshot_store(
        EventRepository::new(app.pool.clone()),
        every,
    );
    let mut loaded = store.load_aggregate(&request).await.expect("loads");
    let versions = loaded
        .aggregate()
        .state
        .as_ref()
        .expect("the request exists")
        .snapshots
        .len();
    assert_eq!(versions, 2 * every);
}
