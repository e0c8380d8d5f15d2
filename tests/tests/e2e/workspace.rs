//! Folders and requests as users see them: owner scoping, lists, cascades, sharing.

use projections::workspace::FolderView;
use reqwest::StatusCode;
use serde_json::json;
use tests::flows::Page;
use tests::{TestApp, query};

#[tokio::test]
async fn lists_are_owner_scoped_paginated_filtered_and_ordered() {
    let app = TestApp::spawn().await;
    let mut folders = Vec::new();
    for name in ["Cardio", "Diabète", "Asthme"] {
        folders.push(
            app.post("/cohort/folders/", "hana", json!({"name": name}))
                .await
                .body["uuid"]
                .clone(),
        );
    }
    app.post("/cohort/folders/", "ivan", json!({"name": "Ivan's"}))
        .await;
    for (i, name) in ["HbA1c", "Glycémie", "Insuline"].iter().enumerate() {
        let r = app
            .post(
                &format!("/cohort/folders/{}/requests/", folders[1].as_str().unwrap()),
                "hana",
                json!({"name": name, "favorite": i == 0}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }

    // Typed answers: the read model's own view type.
    let all: Page<FolderView> = app
        .get("/cohort/folders/?ordering=name", "hana")
        .await
        .json();
    assert_eq!(all.count, 3, "ivan's folder is invisible");
    let names: Vec<&str> = all.results.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["Asthme", "Cardio", "Diabète"]);
    let diabete = all.results.iter().find(|f| f.name == "Diabète").unwrap();
    assert_eq!(diabete.requests_count, 3);

    let page: Page<FolderView> = app
        .get("/cohort/folders/?ordering=-name&limit=2&offset=1", "hana")
        .await
        .json();
    assert_eq!(page.count, 3);
    assert_eq!(page.results.len(), 2);
    assert_eq!(page.results[0].name, "Cardio");
    assert!(page.next.is_none());
    assert!(page.previous.unwrap().contains("limit=2"));
    let count_only = app.get("/cohort/folders/?limit=0", "hana").await;
    assert_eq!(count_only.body["count"], 3);
    assert_eq!(count_only.body["results"], json!([]));
    let everything = app.get("/cohort/folders/?limit=-1", "hana").await;
    assert_eq!(everything.body["results"].as_array().unwrap().len(), 3);
    let searched = app
        .get("/cohort/folders/?search=^(card|asth)", "hana")
        .await;
    assert_eq!(searched.body["count"], 2);

    let favorites = app.get("/cohort/requests/?favorite=true", "hana").await;
    assert_eq!(favorites.body["count"], 1);
    assert_eq!(favorites.body["results"][0]["name"], "HbA1c");
    assert_eq!(
        favorites.body["results"][0]["parent_folder"]["name"],
        "Diabète"
    );
    let in_folder = app
        .get(
            &format!(
                "/cohort/folders/{}/requests/?ordering=name",
                folders[1].as_str().unwrap()
            ),
            "hana",
        )
        .await;
    assert_eq!(in_folder.body["count"], 3);
    assert_eq!(in_folder.body["results"][0]["name"], "Glycémie");
    let by_parent = app
        .get(
            &format!(
                "/cohort/requests/?parent_folder={}",
                folders[0].as_str().unwrap()
            ),
            "hana",
        )
        .await;
    assert_eq!(by_parent.body["count"], 0);
    let ivan_sees = app.get("/cohort/requests/", "ivan").await;
    assert_eq!(ivan_sees.body["count"], 0);
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_folder_cascades_to_its_requests_and_multi_delete_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let f = app
        .post("/cohort/folders/", "jade", json!({"name": "Old"}))
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let keep = app
        .post("/cohort/folders/", "jade", json!({"name": "Keep"}))
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post(
            "/cohort/requests/",
            "jade",
            json!({"name": "R", "parent_folder": f}),
        )
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let s = app
        .post(
            "/cohort/request-query-snapshots/",
            "jade",
            json!({"request": r, "serialized_query": query(&["1"])}),
        )
        .await;
    let s_id = s.uuid();

    let gone = app.delete(&format!("/cohort/folders/{f}/"), "jade").await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/cohort/folders/{f}/"), "jade")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/cohort/requests/{r}/"), "jade")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/cohort/request-query-snapshots/{s_id}/"), "jade")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let cascade: bool = sqlx::query_scalar(
        "SELECT deleted_by_cascade FROM workspace.requests WHERE uuid = $1::uuid",
    )
    .bind(&r)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        cascade,
        "the request was deleted by cascade, as an event of its own"
    );

    let a = app
        .post(
            "/cohort/requests/",
            "jade",
            json!({"name": "A", "parent_folder": keep}),
        )
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let b = app
        .post(
            "/cohort/requests/",
            "jade",
            json!({"name": "B", "parent_folder": keep}),
        )
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let other = app
        .post("/cohort/folders/", "kim", json!({"name": "K"}))
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let kims = app
        .post(
            "/cohort/requests/",
            "kim",
            json!({"name": "K", "parent_folder": other}),
        )
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = app
        .delete(&format!("/cohort/requests/{a},{kims}/"), "jade")
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get(&format!("/cohort/requests/{a}/"), "jade")
            .await
            .status,
        StatusCode::OK,
        "nothing deleted"
    );
    assert_eq!(
        app.get(&format!("/cohort/requests/{kims}/"), "kim")
            .await
            .status,
        StatusCode::OK
    );
    let both = app
        .delete(&format!("/cohort/requests/{a},{b}/"), "jade")
        .await;
    assert_eq!(both.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/cohort/requests/", "jade").await.body["count"], 0);
    app.stop().await;
}

#[tokio::test]
async fn sharing_copies_the_snapshot_into_each_recipients_inbox_folder() {
    let app = TestApp::spawn().await;
    for recipient in ["max", "noe"] {
        tests::identity::add_user(&app, recipient, None).await;
    }
    let f = app
        .post("/cohort/folders/", "lea", json!({"name": "F"}))
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .post(
            "/cohort/requests/",
            "lea",
            json!({"name": "Cohorte diabète", "parent_folder": f}),
        )
        .await
        .body["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            "lea",
            json!({"request": r, "serialized_query": query(&["7", "8"])}),
        )
        .await;
    let v1_id = v1.uuid();

    for _ in 0..2 {
        let shared = app
            .post(
                &format!("/cohort/request-query-snapshots/{v1_id}/share/"),
                "lea",
                json!({"recipients": "max, noe", "notify_by_email": false}),
            )
            .await;
        assert_eq!(shared.status, StatusCode::CREATED, "{:?}", shared.body);
    }
    for recipient in ["max", "noe"] {
        let folders = app.get("/cohort/folders/", recipient).await;
        assert_eq!(folders.body["count"], 1, "one inbox, however many shares");
        assert_eq!(folders.body["results"][0]["name"], "Mes requêtes reçues");
        assert_eq!(folders.body["results"][0]["requests_count"], 2);
        let requests = app.get("/cohort/requests/", recipient).await;
        let first = &requests.body["results"][0];
        assert_eq!(first["name"], "Cohorte diabète");
        assert_eq!(first["shared_by"], "lea");
        let snaps = first["query_snapshots"].as_array().unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0]["version"], 1);
        let copy = app
            .get(
                &format!(
                    "/cohort/request-query-snapshots/{}/",
                    snaps[0]["uuid"].as_str().unwrap()
                ),
                recipient,
            )
            .await;
        assert_eq!(copy.body["serialized_query"], query(&["7", "8"]));
        assert_eq!(copy.body["shared_by"], "lea");
        assert_eq!(copy.body["owner"], recipient);
    }
    // The sharer's own objects are unchanged, and the share is recorded on the source request.
    assert_eq!(app.get("/cohort/requests/", "lea").await.body["count"], 1);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'RequestShared' AND aggregate_id = $1",
    )
    .bind(&r)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 2);
    app.stop().await;
}

#[tokio::test]
async fn events_carry_the_acting_user_and_the_correlation_id() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .post(format!("{}/cohort/folders/", app.base))
        .bearer_auth(app.token("olga").await)
        .header("X-Trace-Id", "trace-123")
        .json(&json!({"name": "Traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let metadata: serde_json::Value =
        sqlx::query_scalar("SELECT metadata::jsonb FROM events WHERE aggregate_type = 'Folder'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(metadata["user"], "olga");
    assert_eq!(metadata["correlation_id"], "trace-123");
    assert_eq!(metadata["causation_id"], "trace-123");
    app.stop().await;
}
