//! The front-end's flows, step by step over HTTP and the websocket: count a query, save the
//! count as a cohort.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestApp;
use crate::ws::{connect_as, next_job_status};

/// Logs `user` in, saves `q` in a new request and counts it (stage details `all`); returns the
/// count's id, the request's id and the `job_status` message that ended the count.
pub async fn count_to_end(
    app: &TestApp,
    user: &str,
    password: &str,
    q: &str,
) -> (String, String, Value) {
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": user, "password": password})),
        )
        .await;
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let mut socket = connect_as(app, &token).await;
    let folder = app
        .post("/cohort/folders/", user, json!({"name": "small"}))
        .await;
    let request = app
        .post(
            "/cohort/requests/",
            user,
            json!({"name": "small", "parent_folder": folder.body["uuid"]}),
        )
        .await;
    let snapshot = app
        .post(
            "/cohort/request-query-snapshots/",
            user,
            json!({"request": request.body["uuid"], "serialized_query": q}),
        )
        .await;
    assert_eq!(snapshot.status, StatusCode::CREATED, "{:?}", snapshot.body);
    let dm = app
        .post(
            "/cohort/dated-measures/",
            user,
            json!({"request_query_snapshot_id": snapshot.body["uuid"], "stageDetails": "all"}),
        )
        .await;
    assert_eq!(dm.status, StatusCode::CREATED, "{:?}", dm.body);
    let id = dm.body["uuid"].as_str().unwrap().to_string();
    let message = next_job_status(&mut socket, &id).await;
    (
        id,
        request.body["uuid"].as_str().unwrap().to_string(),
        message,
    )
}

/// Counts `q` as `user`, saves the count as a cohort named `name` and waits until the cohort is
/// created; returns the cohort as `/cohort/cohorts/{uuid}/` shows it.
pub async fn cohort_to_end(
    app: &TestApp,
    user: &str,
    password: &str,
    name: &str,
    q: &str,
) -> Value {
    let (dm, _, message) = count_to_end(app, user, password, q).await;
    assert_eq!(message["status"], "finished", "{message}");
    let cohort = app
        .post(
            "/cohort/cohorts/",
            user,
            json!({"name": name, "dated_measure": dm}),
        )
        .await;
    assert_eq!(cohort.status, StatusCode::CREATED, "{:?}", cohort.body);
    let path = format!("/cohort/cohorts/{}/", cohort.body["uuid"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + crate::PATIENCE;
    loop {
        let seen = app.get(&path, user).await;
        if seen.body["request_job_status"] == "finished" {
            return seen.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cohort was not created in time: {:?}",
            seen.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
