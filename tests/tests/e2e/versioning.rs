//! Request versioning through HTTP, as the front-end drives it.

use reqwest::StatusCode;
use serde_json::json;
use tests::{TestApp, query};

#[tokio::test]
async fn versions_and_previous_links_follow_upstream_and_each_write_is_visible_at_once() {
    let app = TestApp::spawn().await;
    let alice = "alice";

    // Given a folder and a request in it.
    let folder = app
        .post("/cohort/folders/", alice, json!({"name": "Diabète"}))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED, "{:?}", folder.body);
    let folder_id = folder.uuid();
    assert_eq!(folder.body["requests_count"], 0);

    let request = app
        .post(
            "/cohort/requests/",
            alice,
            json!({"name": "HbA1c > 8%", "parent_folder": folder_id, "uuid": ""}),
        )
        .await;
    assert_eq!(request.status, StatusCode::CREATED, "{:?}", request.body);
    let request_id = request.uuid();
    assert_eq!(request.body["parent_folder"]["uuid"], folder_id.as_str());

    // When v1 is saved against the request, then v2 and v3 each from the previous one, and a
    // branch from v1.
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            alice,
            json!({"request_id": request_id, "serialized_query": query(&["1"])}),
        )
        .await;
    assert_eq!(v1.status, StatusCode::CREATED, "{:?}", v1.body);
    let v1_id = v1.uuid();
    let mut chain = vec![v1_id.clone()];
    for perimeter in ["2", "3"] {
        let prev = chain.last().unwrap().clone();
        let next = app
            .post(
                "/cohort/request-query-snapshots/",
                alice,
                json!({"previous_snapshot_id": prev, "serialized_query": query(&[perimeter])}),
            )
            .await;
        assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
        // Visible by the very next GET.
        let id = next.uuid();
        let read = app
            .get(&format!("/cohort/request-query-snapshots/{id}/"), alice)
            .await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body["previous_snapshot"], prev.as_str());
        chain.push(id);
    }
    let branch = app
        .post(
            &format!("/cohort/request-query-snapshots/{v1_id}/next-snapshots/"),
            alice,
            json!({"serialized_query": query(&["4"])}),
        )
        .await;
    assert_eq!(branch.status, StatusCode::CREATED, "{:?}", branch.body);

    // Then versions count linearly per request and previous links are kept.
    let versions: Vec<_> = [&v1.body]
        .into_iter()
        .map(|b| b["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1]);
    for (i, id) in chain.iter().enumerate() {
        let s = app
            .get(&format!("/cohort/request-query-snapshots/{id}/"), alice)
            .await;
        assert_eq!(
            s.body["version"].as_i64(),
            Some(i as i64 + 1),
            "version of link {i}"
        );
        assert_eq!(s.body["request"], request_id.as_str());
        assert_eq!(s.body["perimeters_ids"], json!([(i + 1).to_string()]));
        assert_eq!(s.body["dated_measures"], json!([]));
    }
    assert_eq!(branch.body["version"], 4);
    assert_eq!(branch.body["previous_snapshot"], v1_id.as_str());
    let v1_read = app
        .get(&format!("/cohort/request-query-snapshots/{v1_id}/"), alice)
        .await;
    assert_eq!(v1_read.body["previous_snapshot"], serde_json::Value::Null);

    // v1 has two children: v2 and the branch.
    let next = app
        .get(
            &format!("/cohort/request-query-snapshots/{v1_id}/next-snapshots/"),
            alice,
        )
        .await;
    assert_eq!(next.body["count"], 2);

    // The request lists its snapshots newest first, with the folder embedded.
    let req = app
        .get(&format!("/cohort/requests/{request_id}/"), alice)
        .await;
    let listed: Vec<i64> = req.body["query_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![4, 3, 2, 1]);
    assert_eq!(req.body["updated_at"], branch.body["created_at"]);
    let in_request = app
        .get(
            &format!("/cohort/requests/{request_id}/query-snapshots/"),
            alice,
        )
        .await;
    assert_eq!(in_request.body["count"], 4);

    // A second snapshot without a previous one is refused, as upstream does.
    let orphan = app
        .post(
            &format!("/cohort/requests/{request_id}/query-snapshots/"),
            alice,
            json!({"serialized_query": query(&["5"])}),
        )
        .await;
    assert_eq!(orphan.status, StatusCode::BAD_REQUEST);
    assert_eq!(orphan.body["code"], "previous_snapshot_required");

    app.stop().await;
}

#[tokio::test]
async fn patching_a_query_keeps_its_history_as_events_and_patch_rows() {
    let app = TestApp::spawn().await;
    let folder = app
        .post("/cohort/folders/", "bob", json!({"name": "F"}))
        .await;
    let request = app
        .post(
            "/cohort/requests/",
            "bob",
            json!({"name": "R", "parent_folder": folder.body["uuid"]}),
        )
        .await;
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            "bob",
            json!({"request": request.body["uuid"], "serialized_query": query(&["1"])}),
        )
        .await;
    let id = v1.uuid();

    let renamed = app
        .patch(
            &format!("/cohort/request-query-snapshots/{id}/"),
            "bob",
            json!({"name": "baseline"}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    assert_eq!(renamed.body["name"], "baseline");
    for p in ["2", "3"] {
        let patched = app
            .patch(
                &format!("/cohort/request-query-snapshots/{id}/"),
                "bob",
                json!({"serialized_query": query(&[p])}),
            )
            .await;
        assert_eq!(patched.status, StatusCode::OK);
        assert_eq!(patched.body["perimeters_ids"], json!([p]));
        assert_eq!(patched.body["version"], 1, "a patch is not a new version");
    }
    let patches: Vec<(i32, String)> = sqlx::query_as(
        "SELECT patch_version, serialized_query FROM workspace.query_snapshot_patches WHERE snapshot = $1::uuid ORDER BY 1",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(patches, vec![(1, query(&["1"])), (2, query(&["2"]))]);
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Request' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(request.body["uuid"].as_str().unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        vec![
            "RequestCreated",
            "QuerySnapshotSaved",
            "QuerySnapshotRenamed",
            "QuerySnapshotPatched",
            "QuerySnapshotPatched"
        ]
    );
    // Changing the request or parent of a snapshot is refused; deleting one is not allowed.
    let moved = app
        .patch(
            &format!("/cohort/request-query-snapshots/{id}/"),
            "bob",
            json!({"previous_snapshot": id}),
        )
        .await;
    assert_eq!(moved.body["code"], "immutable_field");
    let deleted = app
        .delete(&format!("/cohort/request-query-snapshots/{id}/"), "bob")
        .await;
    assert_eq!(deleted.status, StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}
