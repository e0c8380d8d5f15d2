//! The front-end's flows, step by step over HTTP and the websocket: count a query, save the
//! count as a cohort.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::TestApp;
use crate::ws::{connect_as, next_job_status};

/// A paginated list as the API answers it.
#[derive(Debug, serde::Deserialize)]
pub struct Page<T> {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// A folder, a request in it and the request's first query snapshot, owned by one user.
#[derive(Debug, Clone)]
pub struct SavedQuery {
    pub folder: String,
    pub request: String,
    pub snapshot: String,
}

/// Creates a folder named `name` as `user`; returns its uuid.
pub async fn folder(app: &TestApp, user: &str, name: &str) -> String {
    let folder = app
        .post("/cohort/folders/", user, json!({ "name": name }))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED, "{:?}", folder.body);
    folder.uuid()
}

/// Creates a request named `name` in `folder` as `user`; returns its uuid.
pub async fn request(app: &TestApp, user: &str, folder: &str, name: &str) -> String {
    let request = app
        .post(
            "/cohort/requests/",
            user,
            json!({"name": name, "parent_folder": folder}),
        )
        .await;
    assert_eq!(request.status, StatusCode::CREATED, "{:?}", request.body);
    request.uuid()
}

/// Saves `q` as a new query snapshot of `request`; returns its uuid.
pub async fn snapshot(app: &TestApp, user: &str, request: &str, q: &str) -> String {
    let snapshot = app
        .post(
            "/cohort/request-query-snapshots/",
            user,
            json!({"request": request, "serialized_query": q}),
        )
        .await;
    assert_eq!(snapshot.status, StatusCode::CREATED, "{:?}", snapshot.body);
    snapshot.uuid()
}

/// Folder → request → snapshot of `q`, as the front-end's "new request" does.
pub async fn saved_query(app: &TestApp, user: &str, name: &str, q: &str) -> SavedQuery {
    let folder = folder(app, user, name).await;
    let request = request(app, user, &folder, name).await;
    let snapshot = snapshot(app, user, &request, q).await;
    SavedQuery {
        folder,
        request,
        snapshot,
    }
}

/// Asks for a count of `snapshot` (stage details `all`); returns the count's uuid.
pub async fn count(app: &TestApp, user: &str, snapshot: &str) -> String {
    let dm = app
        .post(
            "/cohort/dated-measures/",
            user,
            json!({"request_query_snapshot_id": snapshot, "stageDetails": "all"}),
        )
        .await;
    assert_eq!(dm.status, StatusCode::CREATED, "{:?}", dm.body);
    dm.uuid()
}

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
    let saved = saved_query(app, user, "small", q).await;
    let id = count(app, user, &saved.snapshot).await;
    let message = next_job_status(&mut socket, &id).await;
    (id, saved.request, message)
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
    let path = format!("/cohort/cohorts/{}/", cohort.uuid());
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
