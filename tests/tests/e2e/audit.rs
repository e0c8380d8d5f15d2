//! The audit API: history, states as of a version or an instant, access history, query-version
//! diffs, recorded reads, and the role-event upcaster on stored version-1 rows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::request::{Request, RequestEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::identity::{APHP, add_user, grant_dated, seed, user_with};
use tests::{TestApp, eventually};

fn criterion(id: i64, name: &str, resource: &str, filter: &str) -> Value {
    json!({"_type": "basicResource", "_id": id, "name": name, "isInclusive": true,
           "resourceType": resource, "filterFhir": filter})
}

fn query_with(perimeters: &[&str], criteria: Value) -> String {
    json!({"_type": "request", "version": "v1.6.1",
           "sourcePopulation": {"caresiteCohortList": perimeters},
           "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": criteria}})
    .to_string()
}

async fn new_request(app: &TestApp, owner: &str) -> String {
    let folder = app
        .post("/cohort/folders/", owner, json!({"name": "Audit"}))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED, "{:?}", folder.body);
    let request = app
        .post(
            "/cohort/requests/",
            owner,
            json!({"name": "r0", "parent_folder": folder.body["uuid"]}),
        )
        .await;
    assert_eq!(request.status, StatusCode::CREATED, "{:?}", request.body);
    request.uuid()
}

/// Folds the stored events (as the audit API lists them) of a request with the domain's own
/// `apply`, up to `version`.
fn fold_request(history: &Value, version: i64) -> Value {
    let mut request = Request::default();
    for event in history.as_array().unwrap() {
        if event["sequence"].as_i64().unwrap() > version {
            break;
        }
        let decoded: RequestEvent = serde_json::from_value(event["payload"].clone()).unwrap();
        request.apply(decoded);
    }
    serde_json::to_value(&request).unwrap()
}

#[tokio::test]
async fn as_of_states_equal_the_fold_of_the_events_up_to_that_point() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "auditor", "full_admin", APHP).await;
    let request = new_request(&app, "alice").await;
    // 1 creation + renames, past the event where the snapshot is taken.
    let every = infra::stores::SNAPSHOT_EVERY as i64;
    let last = every + 5;
    for i in 1..last {
        let renamed = app
            .patch(
                &format!("/cohort/requests/{request}/"),
                "alice",
                json!({"name": format!("r{i}")}),
            )
            .await;
        assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    }
    let history = app
        .get(&format!("/audit/Request/{request}/events/"), "auditor")
        .await;
    assert_eq!(history.status, StatusCode::OK, "{:?}", history.body);
    assert_eq!(history.body.as_array().unwrap().len() as i64, last);

    for version in [1, 2, 13, every, every + 1, last] {
        let state = app
            .get(
                &format!("/audit/Request/{request}/state/?version={version}"),
                "auditor",
            )
            .await;
        assert_eq!(state.status, StatusCode::OK, "{:?}", state.body);
        assert_eq!(state.body["version"], version);
        assert_eq!(
            state.body["state"],
            fold_request(&history.body, version),
            "state at version {version}"
        );
        // Versions at or after the snapshot start from it; earlier ones cannot.
        assert_eq!(
            state.body["from_snapshot"],
            version >= every,
            "version {version}"
        );
    }
    assert_eq!(
        fold_request(&history.body, 13)["state"]["name"],
        json!("r12"),
        "the fold itself is not trivial"
    );

    // As of an instant: the state after the last event recorded by then.
    let eleventh = &history.body[10];
    let at = eleventh["recorded_at"].as_str().unwrap();
    let by_time = app
        .get(
            &format!(
                "/audit/Request/{request}/state/?at={}",
                at.replace('+', "%2B")
            ),
            "auditor",
        )
        .await;
    assert_eq!(by_time.status, StatusCode::OK, "{:?}", by_time.body);
    assert_eq!(by_time.body["version"], 11);
    assert_eq!(by_time.body["state"], fold_request(&history.body, 11));

    // Before the first event, and past the last version: nothing to show.
    let before = app
        .get(
            &format!("/audit/Request/{request}/state/?at=2000-01-01T00:00:00Z"),
            "auditor",
        )
        .await;
    assert_eq!(before.status, StatusCode::NOT_FOUND);
    let beyond = app
        .get(
            &format!("/audit/Request/{request}/state/?version={}", last + 1),
            "auditor",
        )
        .await;
    assert_eq!(beyond.status, StatusCode::NOT_FOUND);
    let both = app
        .get(
            &format!("/audit/Request/{request}/state/?version=2&at=2026-01-01T00:00:00Z"),
            "auditor",
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    assert_eq!(both.body["code"], "ambiguous_as_of");

    // Secrets never leave, even in a past state.
    add_user(&app, "with_password", Some("Correct-Horse-9")).await;
    let user = app.get("/audit/User/with_password/state/", "auditor").await;
    assert_eq!(user.status, StatusCode::OK, "{:?}", user.body);
    assert!(!user.body.to_string().contains("argon2"), "{}", user.body);
    app.stop().await;
}

async fn now_after_a_tick() -> DateTime<Utc> {
    // Event times come from the database clock, `at` from ours: keep instants apart.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    now
}

async fn readers(app: &TestApp, perimeter: i64, at: DateTime<Utc>) -> Vec<(String, String, bool)> {
    let answer = app
        .get(
            &format!(
                "/audit/perimeters/{perimeter}/readers/?at={}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            "auditor",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.body["readers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["username"].as_str().unwrap().to_string(),
                r["reading"].as_str().unwrap().to_string(),
                r["inherited"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn who(list: &[(&str, &str, bool)]) -> Vec<(String, String, bool)> {
    list.iter()
        .map(|(u, r, i)| (u.to_string(), r.to_string(), *i))
        .collect()
}

#[tokio::test]
async fn the_access_history_answers_who_could_read_a_perimeter_on_a_date() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "auditor", "full_admin", APHP).await;
    let before_any_reader = now_after_a_tick().await;

    // alice reads the whole tree; bob reads P0 pseudonymized; dave holds a custom role.
    user_with(&app, &fixture, "alice", "nominative_reader", APHP).await;
    let bob_access = user_with(&app, &fixture, "bob", "pseudo_reader", 0).await;
    let role = app
        .post(
            "/accesses/roles/",
            "auditor",
            json!({"name": "Lecteur temporaire", "right_read_patient_pseudonymized": true}),
        )
        .await;
    assert_eq!(role.status, StatusCode::CREATED, "{:?}", role.body);
    let role_id = role.body["id"].as_i64().unwrap();
    add_user(&app, "dave", None).await;
    let profile = app
        .state
        .identity
        .manual_profile("dave")
        .await
        .unwrap()
        .unwrap();
    let dave = app
        .post(
            "/accesses/accesses/",
            "auditor",
            json!({"profile_id": profile, "role_id": role_id, "perimeter_id": 0}),
        )
        .await;
    assert_eq!(dave.status, StatusCode::CREATED, "{:?}", dave.body);
    // carol's access starts tomorrow; erin reads a sibling perimeter.
    add_user(&app, "carol", None).await;
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    grant_dated(
        &app,
        &fixture,
        "carol",
        "nominative_reader",
        0,
        Some(tomorrow),
        None,
    )
    .await;
    user_with(&app, &fixture, "erin", "nominative_reader", 1).await;
    let d1 = now_after_a_tick().await;

    // Then bob's access is closed, and dave's role loses its reading right.
    let closed = app
        .patch(
            &format!("/accesses/accesses/{bob_access}/close/"),
            "auditor",
            json!({}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    let d2 = now_after_a_tick().await;
    let changed = app
        .patch(
            &format!("/accesses/roles/{role_id}/"),
            "auditor",
            json!({"right_read_patient_pseudonymized": false, "right_manage_users": true}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    let d3 = now_after_a_tick().await;

    // The full administrator reads everything, through their grant on the root.
    let admin = ("auditor", "nominative", true);
    assert_eq!(readers(&app, 0, before_any_reader).await, who(&[admin]));
    assert_eq!(
        readers(&app, 0, d1).await,
        who(&[
            ("alice", "nominative", true),
            admin,
            ("bob", "pseudonymized", false),
            ("dave", "pseudonymized", false),
        ])
    );
    assert_eq!(
        readers(&app, 0, d2).await,
        who(&[
            ("alice", "nominative", true),
            admin,
            ("dave", "pseudonymized", false)
        ])
    );
    assert_eq!(
        readers(&app, 0, d3).await,
        who(&[("alice", "nominative", true), admin])
    );
    // As the log knows it now, carol reads P0 the day after tomorrow.
    assert_eq!(
        readers(&app, 0, d3 + chrono::Duration::days(2)).await,
        who(&[
            ("alice", "nominative", true),
            admin,
            ("carol", "nominative", false)
        ])
    );
    // The grant behind each answer.
    let detail = app
        .get(
            &format!(
                "/audit/perimeters/0/readers/?at={}",
                d1.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            "auditor",
        )
        .await;
    let bob = detail.body["readers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["username"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob["access_id"], bob_access);
    assert_eq!(bob["role_name"], "pseudo_reader");
    assert_eq!(bob["perimeter_id"], 0);

    // A user's grants in force at a date.
    let bob_at = |at: DateTime<Utc>| {
        format!(
            "/audit/users/bob/grants/?at={}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    };
    let then = app.get(&bob_at(d1), "auditor").await;
    assert_eq!(
        then.body["grants"].as_array().unwrap().len(),
        1,
        "{:?}",
        then.body
    );
    assert_eq!(
        then.body["grants"][0]["rights"],
        json!(["right_read_patient_pseudonymized"])
    );
    let later = app.get(&bob_at(d2), "auditor").await;
    assert_eq!(later.body["grants"], json!([]));
    let unknown = app.get("/audit/perimeters/4242/readers/", "auditor").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn the_version_tree_and_the_diff_name_the_criteria_added_and_removed() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "auditor", "full_admin", APHP).await;
    let request = new_request(&app, "alice").await;
    let women = criterion(1, "Femmes", "Patient", "gender=f");
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            "alice",
            json!({"request_id": request, "serialized_query": query_with(&["0"], json!([
                women, criterion(2, "Diabète", "Condition", "code=E11")
            ]))}),
        )
        .await;
    assert_eq!(v1.status, StatusCode::CREATED, "{:?}", v1.body);
    let v1_id = v1.uuid();
    let v2 = app
        .post(
            &format!("/cohort/request-query-snapshots/{v1_id}/next-snapshots/"),
            "alice",
            json!({"serialized_query": query_with(&["0", "1"], json!([
                women, criterion(3, "HbA1c > 8%", "Observation", "code=4548-4&value-quantity=gt8")
            ]))}),
        )
        .await;
    assert_eq!(v2.status, StatusCode::CREATED, "{:?}", v2.body);
    let v2_id = v2.uuid();

    let tree = app
        .get(&format!("/audit/requests/{request}/versions/"), "auditor")
        .await;
    assert_eq!(tree.status, StatusCode::OK, "{:?}", tree.body);
    assert_eq!(tree.body["roots"], json!([v1_id]));
    assert_eq!(tree.body["versions"][0]["next_snapshots"], json!([v2_id]));
    assert_eq!(tree.body["versions"][1]["previous_snapshot"], json!(v1_id));
    assert_eq!(tree.body["versions"][1]["saved_by"], "alice");

    let diff = app
        .get(
            &format!("/audit/requests/{request}/diff/?to={v2_id}"),
            "auditor",
        )
        .await;
    assert_eq!(diff.status, StatusCode::OK, "{:?}", diff.body);
    let d = &diff.body["diff"];
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["node"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&d["criteria"]["added"]), vec!["HbA1c > 8%"]);
    assert_eq!(names(&d["criteria"]["removed"]), vec!["Diabète"]);
    assert_eq!(d["criteria"]["changed"], json!([]));
    assert_eq!(d["source_population"]["added"], json!(["1"]));
    assert_eq!(diff.body["from"]["snapshot_id"], json!(v1_id));

    // Reversed, the roles swap; a snapshot of another request is not found.
    let back = app
        .get(
            &format!("/audit/requests/{request}/diff/?from={v2_id}&to={v1_id}"),
            "auditor",
        )
        .await;
    assert_eq!(
        names(&back.body["diff"]["criteria"]["added"]),
        vec!["Diabète"]
    );
    let first = app
        .get(
            &format!("/audit/requests/{request}/diff/?to={v1_id}"),
            "auditor",
        )
        .await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    let stranger = app
        .get(
            &format!(
                "/audit/requests/{request}/diff/?to={}",
                uuid::Uuid::new_v4()
            ),
            "auditor",
        )
        .await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_right_is_needed_and_every_read_is_recorded_and_paged() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "reader", "nominative_reader", APHP).await;
    let role = app
        .state
        .identity_service
        .create_role(
            &tests::identity::system(),
            &commands::identity::Requester::System,
            "Auditeur".into(),
            domain::rights::Rights {
                right_read_audit: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .value;
    add_user(&app, "auditor", None).await;
    let profile = app
        .state
        .identity
        .manual_profile("auditor")
        .await
        .unwrap()
        .unwrap();
    app.state
        .identity_service
        .grant_access(
            &tests::identity::system(),
            &commands::identity::Requester::System,
            commands::identity::NewAccess {
                profile_id: profile,
                role_id: role,
                perimeter_id: 3,
                start: None,
                end: None,
            },
        )
        .await
        .unwrap();

    let refused = app.get("/audit/events/", "reader").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.body["code"], "permission_denied");

    // Paging through every AccessGranted event, one at a time.
    let all_grants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AccessGranted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(all_grants >= 2);
    let mut seen = Vec::new();
    let mut path = "/audit/events/?event_type=AccessGranted&limit=1".to_string();
    loop {
        let page = app.get(&path, "auditor").await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        for e in page.body["results"].as_array().unwrap() {
            assert_eq!(e["event_type"], "AccessGranted");
            seen.push(e["position"].as_i64().unwrap());
        }
        match page.body["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, all_grants);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no event listed twice");

    // By actor, and a bad cursor or limit is a 400.
    let by_actor = app
        .get("/audit/events/?actor=system&limit=1000", "auditor")
        .await;
    assert!(
        by_actor.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["metadata"]["user"] == "system")
    );
    assert_eq!(
        app.get("/audit/events/?after=nope", "auditor").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/audit/events/?limit=0", "auditor").await.status,
        StatusCode::BAD_REQUEST
    );

    // Every answered read left an AuditReadRecorded event naming the reader and the route;
    // the refused reads did not.
    let reads: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload -> 'AuditReadRecorded' ->> 'reader',
                payload -> 'AuditReadRecorded' ->> 'route'
           FROM events WHERE event_type = 'AuditReadRecorded'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(reads.len() as i64 > all_grants, "{reads:?}");
    assert!(
        reads
            .iter()
            .all(|(reader, route)| reader == "auditor" && route == "/audit/events/")
    );
    // The record carries the read's trace id.
    let traced = app
        .send(
            app.request(reqwest::Method::GET, "/audit/events/?limit=1")
                .bearer_auth(app.token("auditor").await)
                .header("x-trace-id", "audit-trace-42"),
        )
        .await;
    assert_eq!(traced.status, StatusCode::OK);
    let correlated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE event_type = 'AuditReadRecorded' AND metadata ->> 'correlation_id' = 'audit-trace-42'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(correlated, 1);
    // The listing shows events no running transaction can precede: a projector applying the
    // last reads may hold the newest back for a moment. Wait for them, not a fixed time.
    let listed = || async {
        app.get(
            "/audit/events/?aggregate_type=AuditRead&limit=1000",
            "auditor",
        )
        .await
        .body["results"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(
        tests::eventually(tests::PATIENCE, || async { listed().await >= reads.len() }).await,
        "{} recorded reads, {} listed",
        reads.len(),
        listed().await
    );
    app.stop().await;
}

/// Inserts a stored version-1 role event, as a build before version 2 wrote it.
async fn insert_v1_role(app: &TestApp, id: i64, sequence: i64, event: &str, body: Value) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Role', $1, $2, $3, '1', $4, '{\"user\":\"system\"}'::json)",
    )
    .bind(id.to_string())
    .bind(sequence)
    .bind(event)
    .bind(json!({ event: body }))
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn stored_version_1_role_events_are_upcast_for_aggregates_projections_and_audit() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    // Version 1 listed the 16 rights of its day as booleans.
    let mut v1_admin = serde_json::Map::new();
    for (name, _) in domain::rights::Rights::default().entries() {
        if name != "right_read_audit" {
            v1_admin.insert(name.into(), json!(true));
        }
    }
    insert_v1_role(
        &app,
        90001,
        1,
        "RoleCreated",
        json!({"role_id": 90001, "name": "Ancien admin", "rights": v1_admin,
               "at": "2025-01-01T00:00:00Z"}),
    )
    .await;
    insert_v1_role(
        &app,
        90002,
        1,
        "RoleCreated",
        json!({"role_id": 90002, "name": "Ancien lecteur",
               "rights": {"right_read_patient_pseudonymized": true, "right_full_admin": false},
               "at": "2025-01-01T00:00:00Z"}),
    )
    .await;
    insert_v1_role(
        &app,
        90002,
        2,
        "RoleChanged",
        json!({"name": "Ancien lecteur", "at": "2025-02-01T00:00:00Z",
               "rights": {"right_read_patient_pseudonymized": true,
                          "right_read_patient_nominative": true}}),
    )
    .await;

    // The projection folds them: a version-1 full admin has every right of today.
    // (Three separate transactions: wait for the last one, the change of 90002.)
    assert!(
        eventually(tests::PATIENCE, || async {
            app.get("/accesses/roles/90002/", "admin").await.body["right_read_patient_nominative"]
                == true
        })
        .await
    );
    let admin_role = app.get("/accesses/roles/90001/", "admin").await;
    assert_eq!(admin_role.status, StatusCode::OK, "{:?}", admin_role.body);
    assert_eq!(admin_role.body["right_read_audit"], true);
    let reader_role = app.get("/accesses/roles/90002/", "admin").await;
    assert_eq!(reader_role.body["right_read_patient_nominative"], true);
    assert_eq!(reader_role.body["right_read_audit"], false);

    // The aggregate loads through the upcaster: renaming the old full-admin role passes the
    // "full admin has every right" rule, and writes a version-2 event.
    let renamed = app
        .patch(
            "/accesses/roles/90001/",
            "admin",
            json!({"name": "Administrateur historique"}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    let versions: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, event_version FROM events
          WHERE aggregate_type = 'Role' AND aggregate_id = '90001' ORDER BY sequence",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        vec![
            ("RoleCreated".to_string(), "1".to_string()),
            ("RoleChanged".to_string(), "2".to_string())
        ]
    );

    // The audit shows what was stored, and the state folded through the upcaster.
    let history = app.get("/audit/Role/90002/events/", "admin").await;
    assert_eq!(history.body[0]["event_version"], "1");
    assert!(history.body[0]["payload"]["RoleCreated"]["rights"].is_object());
    let state = app.get("/audit/Role/90002/state/?version=1", "admin").await;
    assert_eq!(state.status, StatusCode::OK, "{:?}", state.body);
    assert_eq!(
        state.body["state"]["state"]["rights"]["right_read_patient_pseudonymized"],
        true
    );
    assert_eq!(
        state.body["state"]["state"]["rights"]["right_read_patient_nominative"],
        false
    );
    // A rebuild of the identity read model decodes the same rows.
    infra::rebuild::rebuild(&app.pool, &infra::identity::IdentityProjection)
        .await
        .expect("rebuild folds version-1 rows");
    let after = app.get("/accesses/roles/90002/", "admin").await;
    assert_eq!(after.body["right_read_patient_nominative"], true);
    app.stop().await;
}
