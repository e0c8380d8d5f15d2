//! The reproductions of the hardening review: hostile or unlucky input that used to stall the
//! pipeline, outlive a session or break a page. Each test failed before its fix.

use std::collections::HashSet;

use api::tokens::Claims;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::identity::{APHP, add_user, seed, user_with};
use tests::{TestApp, eventually, projection_checkpoint, published, query, settings, unique_id};

fn pad(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// Appends, by SQL, a Folder event whose description is `bytes` long: what an older version,
/// an import or a large executor report could have left in the log.
async fn append_large_folder(app: &TestApp, bytes: usize) -> uuid::Uuid {
    let folder = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Folder', $1::text, 1, 'FolderCreated', '1',
                 json_build_object('FolderCreated', json_build_object('folder_id', $1, 'owner', 'olive',
                     'name', 'large', 'description', $2::text, 'at', '2026-01-01T00:00:00Z')),
                 '{\"user\": \"olive\"}')",
    )
    .bind(folder)
    .bind(pad(bytes))
    .execute(&app.pool)
    .await
    .expect("event appended");
    folder
}

#[tokio::test]
async fn no_request_can_put_an_unbounded_value_in_an_event_and_no_event_can_wedge_the_relay() {
    let app = TestApp::spawn().await;
    // Over the body limit: refused before anything runs.
    let huge = app
        .post(
            "/cohort/folders/",
            "olive",
            json!({"name": "huge", "description": pad(1_900_000)}),
        )
        .await;
    assert_eq!(
        huge.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{:?}",
        huge.body
    );
    assert_eq!(huge.body["code"], "payload_too_large");
    // Under it, but over a field's cap: refused naming the field.
    let long = app
        .post(
            "/cohort/folders/",
            "olive",
            json!({"name": "long", "description": pad(70_000)}),
        )
        .await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST, "{:?}", long.body);
    assert_eq!(
        (long.body["code"].as_str(), long.body["field"].as_str()),
        (Some("invalid_field"), Some("description"))
    );
    let folder = app
        .post("/cohort/folders/", "olive", json!({"name": "F"}))
        .await;
    let folder_id = folder.uuid();
    let request = app
        .post(
            "/cohort/requests/",
            "olive",
            json!({"name": "R", "parent_folder": folder_id, "description": pad(70_000)}),
        )
        .await;
    assert_eq!(request.body["field"], "description", "{:?}", request.body);
    let request = app
        .post(
            "/cohort/requests/",
            "olive",
            json!({"name": "R", "parent_folder": folder_id}),
        )
        .await;
    let mut big_query: Value = serde_json::from_str(&query(&["1"])).unwrap();
    big_query["padding"] = json!(pad(300_000));
    let snapshot = app
        .post(
            "/cohort/request-query-snapshots/",
            "olive",
            json!({"request": request.body["uuid"], "serialized_query": big_query.to_string()}),
        )
        .await;
    assert_eq!(snapshot.status, StatusCode::BAD_REQUEST);
    assert_eq!(snapshot.body["code"], "invalid_serialized_query");
    let filter = app
        .post(
            "/cohort/fhir-filters/",
            "olive",
            json!({"fhir_resource": "Patient", "fhir_version": "4.0", "name": "big",
                   "filter": format!("gender={}", pad(70_000))}),
        )
        .await;
    assert_eq!(filter.status, StatusCode::BAD_REQUEST, "{:?}", filter.body);
    assert_eq!(filter.body["field"], "filter");

    // An event larger than a NATS message, already in the log, and writes after it.
    let large = append_large_folder(&app, 2 * 1024 * 1024).await;
    let after = app
        .post("/cohort/folders/", "olive", json!({"name": "after"}))
        .await;
    assert_eq!(after.status, StatusCode::CREATED);
    assert_eq!(after.body["name"], "after", "the read models kept up");
    let stored = app.event_count().await as usize;
    let (nats, stream) = (
        app.settings.nats_url.clone(),
        app.settings.nats_stream.clone(),
    );
    assert!(
        eventually(tests::PATIENCE, || async {
            tests::stream_len(&nats, &stream).await as usize == stored
        })
        .await,
        "the relay published past the large event"
    );
    let messages = published(&nats, &stream).await;
    let stub = messages
        .iter()
        .find(|m| m.envelope.aggregate_id == large.to_string())
        .expect("the large event is published");
    assert!(stub.envelope.payload_omitted && stub.envelope.payload.is_null());
    let ids: HashSet<&str> = messages.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored, "every event once");
    // Consumers read the omitted payload from Postgres.
    let description: Option<String> =
        sqlx::query_scalar("SELECT description FROM workspace.folders WHERE uuid = $1")
            .bind(large)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(description.map(|d| d.len()), Some(2 * 1024 * 1024));
    let ready = app.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.body["status"], "ok", "{:?}", ready.body);
    app.stop().await;
}

async fn ready(app: &TestApp) -> tests::Answer {
    app.send(app.request(Method::GET, "/health/ready")).await
}

/// `POST /cohort/folders/` as `user`, with `Idempotency-Key: key`.
async fn keyed(app: &TestApp, user: &str, key: &str, body: Value) -> tests::Answer {
    let token = app.token(user).await;
    app.send(
        app.request(Method::POST, "/cohort/folders/")
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn a_pipeline_that_does_not_advance_makes_readiness_degraded_with_its_cause() {
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.pipeline_stall_seconds = 1;
    s.read_your_writes_timeout_ms = 200;
    let app = TestApp::spawn_with(s, id).await;
    app.token("paul").await;
    app.settle().await;
    assert!(
        eventually(tests::PATIENCE, || async {
            ready(&app).await.body["status"] == "ok"
        })
        .await
    );
    // A transaction left open holds every consumer back (nothing after it may be read).
    let mut held = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *held)
        .await
        .unwrap();
    let written = app
        .post("/cohort/folders/", "paul", json!({"name": "waits"}))
        .await;
    assert_eq!(written.status, StatusCode::CREATED);
    assert!(
        eventually(tests::PATIENCE, || async {
            let r = ready(&app).await;
            r.status == StatusCode::OK
                && r.body["status"] == "degraded"
                && r.body
                    .to_string()
                    .contains("relay jetstream has not advanced")
                && r.body
                    .to_string()
                    .contains("projection workspace has not advanced")
        })
        .await,
        "{:?}",
        ready(&app).await.body
    );
    let metrics = app.send(app.request(Method::GET, "/metrics")).await.body;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cohort360_pipeline_stalled{")
                && l.contains(r#"kind="relay""#)
                && l.contains(r#"consumer="jetstream""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );
    held.commit().await.unwrap();
    assert!(
        eventually(tests::PATIENCE, || async {
            ready(&app).await.body["status"] == "ok"
        })
        .await,
        "back to ok once the consumers advance"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_write_whose_answer_cannot_be_read_is_answered_pending_never_as_an_error() {
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.read_your_writes_timeout_ms = 300;
    let app = TestApp::spawn_with(s, id).await;
    app.token("rita").await;
    app.settle().await;
    // The read model is gone after the commit: neither the projector nor the answer's read works.
    sqlx::query("ALTER TABLE workspace.folders RENAME TO folders_away")
        .execute(&app.pool)
        .await
        .unwrap();
    let before = app.event_count().await;
    let written = app
        .post("/cohort/folders/", "rita", json!({"name": "stored"}))
        .await;
    assert_eq!(written.status, StatusCode::CREATED, "{:?}", written.body);
    assert_eq!(
        written
            .headers
            .get("x-cohort360-consistency")
            .map(|v| v.to_str().unwrap()),
        Some("pending")
    );
    let uuid = written.body["uuid"]
        .as_str()
        .expect("the new folder's id")
        .to_string();
    assert_eq!(app.event_count().await, before + 1, "stored once");
    sqlx::query("ALTER TABLE workspace.folders_away RENAME TO folders")
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(
        eventually(tests::PATIENCE, || async {
            app.get(&format!("/cohort/folders/{uuid}/"), "rita")
                .await
                .status
                == StatusCode::OK
        })
        .await,
        "the read model catches up"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_stores_the_write_once() {
    let app = TestApp::spawn().await;
    app.token("ivy").await;
    app.token("jon").await;
    let before = app.event_count().await;
    let first = keyed(&app, "ivy", "k-1", json!({"name": "Once"})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let again = keyed(&app, "ivy", "k-1", json!({"name": "Once"})).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the first answer, replayed");
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(app.event_count().await, before + 1, "one FolderCreated");
    let other = keyed(&app, "ivy", "k-1", json!({"name": "Other"})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    // Keys belong to their user.
    let jons = keyed(&app, "jon", "k-1", json!({"name": "Once"})).await;
    assert_eq!(jons.status, StatusCode::CREATED);
    assert_ne!(jons.body["uuid"], first.body["uuid"]);
    // A refusal a repeat would meet again is kept too, and writes nothing.
    let refused = keyed(&app, "ivy", "k-2", json!({"name": ""})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        keyed(&app, "ivy", "k-2", json!({"name": ""})).await.body,
        refused.body
    );
    let bad_key = keyed(&app, "ivy", "has space", json!({"name": "x"})).await;
    assert_eq!(bad_key.body["code"], "invalid_idempotency_key");

    // Concurrent repeats: one write, every answer the first one or "still running".
    let repeats = futures::future::join_all(
        (0..8).map(|_| keyed(&app, "ivy", "k-3", json!({"name": "Raced"}))),
    )
    .await;
    let created: HashSet<String> = repeats
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .map(|a| a.body["uuid"].to_string())
        .collect();
    assert_eq!(created.len(), 1, "{repeats:?}");
    assert!(
        repeats
            .iter()
            .all(|a| a.status == StatusCode::CREATED
                || a.body["code"] == "idempotency_key_in_progress"),
        "{repeats:?}"
    );
    let raced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'FolderCreated' AND payload::text LIKE '%Raced%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(raced, 1);

    // A request that stored its write and died before keeping its answer (simulated: the
    // claim is left unanswered, and old): a repeat finds the write and answers it, pending.
    let died = keyed(&app, "ivy", "k-4", json!({"name": "Died"})).await;
    sqlx::query(
        "UPDATE ops.idempotency_keys SET status = NULL, body = NULL,
                claimed_at = now() - interval '5 minutes'
          WHERE key = 'k-4'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let count = app.event_count().await;
    let recovered = keyed(&app, "ivy", "k-4", json!({"name": "Died"})).await;
    assert_eq!(
        recovered.status,
        StatusCode::CREATED,
        "{:?}",
        recovered.body
    );
    assert_eq!(recovered.body["uuid"], died.body["uuid"]);
    assert_eq!(
        recovered
            .headers
            .get("x-cohort360-consistency")
            .map(|v| v.to_str().unwrap()),
        Some("pending")
    );
    // One that died before writing anything runs again.
    sqlx::query(
        "INSERT INTO ops.idempotency_keys (username, key, fingerprint, request_id, log_position, claimed_at)
         SELECT username, 'k-5', fingerprint, gen_random_uuid(), log_position, now() - interval '5 minutes'
           FROM ops.idempotency_keys WHERE key = 'k-4'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let rerun = keyed(&app, "ivy", "k-5", json!({"name": "Died"})).await;
    assert_eq!(rerun.status, StatusCode::CREATED);
    assert_ne!(rerun.body["uuid"], died.body["uuid"]);
    assert_eq!(app.event_count().await, count + 1, "only the rerun wrote");
    app.stop().await;
}

#[tokio::test]
async fn request_logs_of_any_body_read_back_and_one_bad_row_fails_no_page() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .header("content-type", "application/json")
                .body(r#"{"username": "nobody", "password": "x", "n": 1.7976931348623157e308}"#),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    // A row as an older version stored it, which no JSON reader accepts.
    sqlx::query(
        "INSERT INTO ops.request_logs (requested_at, response_ms, method, path, query_params, data,
                                       status_code, trace_id)
         VALUES (now(), 1, 'POST', '/old/', '{}', $1, 200, 't')",
    )
    .bind(format!("{{\"n\": 1{}}}", "0".repeat(400)))
    .execute(&app.pool)
    .await
    .unwrap();
    assert!(
        eventually(tests::PATIENCE, || async {
            app.get("/logs/?path_contains=login", "admin").await.body["count"] == 1
        })
        .await
    );
    for filter in ["", "?method=POST", "?status_code=401", "?path_contains=old"] {
        let page = app.get(&format!("/logs/{filter}"), "admin").await;
        assert_eq!(page.status, StatusCode::OK, "{filter}: {:?}", page.body);
    }
    let login_entry = app.get("/logs/?path_contains=login", "admin").await.body;
    assert_eq!(
        login_entry["results"][0]["data"]["n"],
        1.7976931348623157e308
    );
    let old = app.get("/logs/?path_contains=old", "admin").await.body;
    assert!(old["results"][0]["data"].is_string(), "{old:?}");
    app.stop().await;
}

#[tokio::test]
async fn text_postgres_cannot_store_is_refused_once_everywhere_with_one_code() {
    let app = TestApp::spawn().await;
    let refused = |answer: &tests::Answer, what: &str| {
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {:?}",
            answer.body
        );
        assert_eq!(
            answer.body["code"], "invalid_text",
            "{what}: {:?}",
            answer.body
        );
    };
    for path in [
        "/cohort/folders/?name=%00",
        "/cohort/requests/?search=a%00",
        "/cohort/request-query-snapshots/?request=%00",
        "/cohort/cohorts/?name=%00",
        "/accesses/perimeters/?search=%00",
        "/users/?search=%00",
        "/exports/?search=%00",
        "/fhir/Patient?gender=%00",
        "/cohort/folders/a%00b/",
    ] {
        refused(&app.get(path, "nina").await, path);
    }
    refused(
        &app.post("/cohort/folders/", "nina", json!({"name": "a\u{0}b"}))
            .await,
        "JSON body",
    );
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "a\u{0}b", "password": "x"})),
        )
        .await;
    refused(&login, "anonymous JSON login");
    let form = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("username=a%00b&password=x"),
        )
        .await;
    refused(&form, "form login");
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'FolderCreated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(written, 0);
    app.stop().await;
}

#[tokio::test]
async fn tokens_of_unknown_users_untyped_tokens_and_foreign_sessions_are_refused() {
    let app = TestApp::spawn().await;
    add_user(&app, "tess", None).await;
    let real = app.token("tess").await;
    let session = app.jwt_claims(&real).sid;
    let minted = |username: &str, token_type: Option<&str>, sid: Option<uuid::Uuid>| {
        app.mint(&Claims {
            username: username.into(),
            exp: chrono::Utc::now().timestamp() + 600,
            iat: None,
            token_type: token_type.map(Into::into),
            jti: None,
            sid,
            generation: None,
        })
    };
    let cases = [
        (
            "a user that does not exist",
            minted("ghost", Some("access"), session),
            "user_unknown",
        ),
        (
            "no token_type",
            minted("tess", None, session),
            "token_invalid",
        ),
        (
            "no session",
            minted("tess", Some("access"), None),
            "token_invalid",
        ),
        (
            "a session that does not exist",
            minted("tess", Some("access"), Some(uuid::Uuid::new_v4())),
            "session_ended",
        ),
    ];
    for (what, token, code) in cases {
        for (method, body) in [
            (Method::GET, None),
            (Method::POST, Some(json!({"name": "x"}))),
        ] {
            let mut request = app
                .request(method.clone(), "/cohort/folders/")
                .bearer_auth(&token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let answer = app.send(request).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what} ({method})");
            assert_eq!(answer.body["code"], code, "{what}: {:?}", answer.body);
        }
    }
    // Someone else's session does not lend itself to another user.
    add_user(&app, "uma", None).await;
    let borrowed = minted("uma", Some("access"), session);
    let answer = app
        .send(
            app.request(Method::GET, "/cohort/folders/")
                .bearer_auth(borrowed),
        )
        .await;
    assert_eq!(answer.body["code"], "session_ended");
    let ghost_folders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE metadata->>'user' IN ('ghost', 'uma')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ghost_folders, 0, "nothing written by refused tokens");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_logins_of_one_user_all_succeed() {
    let app = TestApp::spawn().await;
    add_user(&app, "lou", Some("pw-lou-12345")).await;
    for _burst in 0..3 {
        let logins = futures::future::join_all((0..16).map(|_| {
            app.send(
                app.request(Method::POST, "/auth/login/")
                    .json(&json!({"username": "lou", "password": "pw-lou-12345"})),
            )
        }))
        .await;
        for login in &logins {
            assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
        }
    }
    let user_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'User' AND aggregate_id = 'lou'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        user_events, 3,
        "a login appends nothing to the user (created, profile, password)"
    );
    let (_, applied) = projection_checkpoint(&app.pool, "identity").await;
    assert!(applied > 0);
    app.stop().await;
}
