//! Bad input gets a 4xx with a stable code, and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::{TestApp, query};

#[tokio::test]
async fn bad_input_is_refused_with_a_stable_code_and_no_event_is_written() {
    let app = TestApp::spawn().await;
    let folder = app
        .post("/cohort/folders/", "gina", json!({"name": "Mine"}))
        .await;
    let folder_id = folder.uuid();
    let request = app
        .post(
            "/cohort/requests/",
            "gina",
            json!({"name": "R", "parent_folder": folder_id}),
        )
        .await;
    let request_id = request.uuid();
    let v1 = app
        .post(
            "/cohort/request-query-snapshots/",
            "gina",
            json!({"request": request_id, "serialized_query": query(&["1"])}),
        )
        .await;
    let v1_id = v1.uuid();
    let unknown = uuid::Uuid::new_v4().to_string();
    // Mallory's first request creates her user and session: before the count.
    app.token("mallory").await;
    let before = app.event_count().await;

    struct Case {
        what: &'static str,
        method: Method,
        path: String,
        user: &'static str,
        body: Option<&'static str>,
        status: StatusCode,
        code: &'static str,
    }
    let json_case = |what, method, path: String, user, body, status, code| Case {
        what,
        method,
        path,
        user,
        body: Some(body),
        status,
        code,
    };
    let cases = vec![
        json_case("malformed JSON", Method::POST, "/cohort/folders/".into(), "gina", "{\"name\": ", StatusCode::BAD_REQUEST, "invalid_json"),
        json_case("wrong type", Method::POST, "/cohort/folders/".into(), "gina", "{\"name\": 12}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("missing name", Method::POST, "/cohort/folders/".into(), "gina", "{}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("blank name", Method::POST, "/cohort/folders/".into(), "gina", "{\"name\": \"  \"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("name too long", Method::POST, "/cohort/folders/".into(), "gina", Box::leak(format!("{{\"name\": \"{}\"}}", "x".repeat(51)).into_boxed_str()), StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("someone else as owner", Method::POST, "/cohort/folders/".into(), "gina", "{\"name\": \"x\", \"owner\": \"mallory\"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("request without folder", Method::POST, "/cohort/requests/".into(), "gina", "{\"name\": \"x\"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("folder id not a uuid", Method::POST, "/cohort/requests/".into(), "gina", "{\"name\": \"x\", \"parent_folder\": \"nope\"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("unknown folder", Method::POST, "/cohort/requests/".into(), "gina", Box::leak(format!("{{\"name\": \"x\", \"parent_folder\": \"{unknown}\"}}").into_boxed_str()), StatusCode::NOT_FOUND, "folder_not_found"),
        json_case("someone else's folder", Method::POST, "/cohort/requests/".into(), "mallory", Box::leak(format!("{{\"name\": \"x\", \"parent_folder\": \"{folder_id}\"}}").into_boxed_str()), StatusCode::NOT_FOUND, "folder_not_found"),
        json_case("query is not a string", Method::POST, "/cohort/request-query-snapshots/".into(), "gina", Box::leak(format!("{{\"request\": \"{request_id}\", \"serialized_query\": {{}}}}").into_boxed_str()), StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("query without source population", Method::POST, "/cohort/request-query-snapshots/".into(), "gina", Box::leak(format!("{{\"previous_snapshot\": \"{v1_id}\", \"serialized_query\": \"{{}}\"}}").into_boxed_str()), StatusCode::BAD_REQUEST, "invalid_serialized_query"),
        json_case("neither request nor previous", Method::POST, "/cohort/request-query-snapshots/".into(), "gina", Box::leak(format!("{{\"serialized_query\": {}}}", serde_json::to_string(&query(&["1"])).unwrap()).into_boxed_str()), StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("unknown previous snapshot", Method::POST, "/cohort/request-query-snapshots/".into(), "gina", Box::leak(format!("{{\"previous_snapshot\": \"{unknown}\", \"serialized_query\": {}}}", serde_json::to_string(&query(&["1"])).unwrap()).into_boxed_str()), StatusCode::NOT_FOUND, "snapshot_not_found"),
        json_case("someone else's snapshot", Method::POST, format!("/cohort/request-query-snapshots/{v1_id}/next-snapshots/"), "mallory", Box::leak(format!("{{\"serialized_query\": {}}}", serde_json::to_string(&query(&["1"])).unwrap()).into_boxed_str()), StatusCode::NOT_FOUND, "snapshot_not_found"),
        json_case("request and previous disagree", Method::POST, "/cohort/request-query-snapshots/".into(), "gina", Box::leak(format!("{{\"request\": \"{unknown}\", \"previous_snapshot\": \"{v1_id}\", \"serialized_query\": {}}}", serde_json::to_string(&query(&["1"])).unwrap()).into_boxed_str()), StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("rename someone else's request", Method::PATCH, format!("/cohort/requests/{request_id}/"), "mallory", "{\"name\": \"stolen\"}", StatusCode::NOT_FOUND, "request_not_found"),
        json_case("move into someone else's folder", Method::PATCH, format!("/cohort/requests/{request_id}/"), "gina", Box::leak(format!("{{\"parent_folder\": \"{unknown}\"}}").into_boxed_str()), StatusCode::NOT_FOUND, "folder_not_found"),
        json_case("share with nobody", Method::POST, format!("/cohort/request-query-snapshots/{v1_id}/share/"), "gina", "{\"recipients\": \" , \"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("share with an invalid username", Method::POST, format!("/cohort/request-query-snapshots/{v1_id}/share/"), "gina", "{\"recipients\": \"bob,not valid\"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("share with an unknown user", Method::POST, format!("/cohort/request-query-snapshots/{v1_id}/share/"), "gina", "{\"recipients\": \"ghost\"}", StatusCode::BAD_REQUEST, "invalid_field"),
        json_case("share someone else's snapshot", Method::POST, format!("/cohort/request-query-snapshots/{v1_id}/share/"), "mallory", "{\"recipients\": \"mallory\"}", StatusCode::NOT_FOUND, "snapshot_not_found"),
        Case { what: "delete someone else's folder", method: Method::DELETE, path: format!("/cohort/folders/{folder_id}/"), user: "mallory", body: None, status: StatusCode::NOT_FOUND, code: "folder_not_found" },
        Case { what: "multi-delete with a foreign id", method: Method::DELETE, path: format!("/cohort/requests/{request_id},{unknown}/"), user: "gina", body: None, status: StatusCode::NOT_FOUND, code: "request_not_found" },
        Case { what: "malformed multi-delete", method: Method::DELETE, path: format!("/cohort/requests/{request_id},zzz/"), user: "gina", body: None, status: StatusCode::BAD_REQUEST, code: "invalid_id_list" },
        Case { what: "read someone else's request", method: Method::GET, path: format!("/cohort/requests/{request_id}/"), user: "mallory", body: None, status: StatusCode::NOT_FOUND, code: "request_not_found" },
        Case { what: "not a uuid", method: Method::GET, path: "/cohort/folders/abc/".into(), user: "gina", body: None, status: StatusCode::NOT_FOUND, code: "folder_not_found" },
        Case { what: "bad limit", method: Method::GET, path: "/cohort/folders/?limit=ten".into(), user: "gina", body: None, status: StatusCode::BAD_REQUEST, code: "invalid_field" },
        Case { what: "bad regex", method: Method::GET, path: "/cohort/requests/?search=%28".into(), user: "gina", body: None, status: StatusCode::BAD_REQUEST, code: "invalid_search" },
        Case { what: "bad boolean", method: Method::GET, path: "/cohort/requests/?favorite=maybe".into(), user: "gina", body: None, status: StatusCode::BAD_REQUEST, code: "invalid_field" },
        Case { what: "unknown path", method: Method::GET, path: "/cohort/nothing/".into(), user: "gina", body: None, status: StatusCode::NOT_FOUND, code: "not_found" },
    ];
    for case in cases {
        let answer = match case.body {
            Some(raw) => {
                app.call_raw(case.method.clone(), &case.path, case.user, raw)
                    .await
            }
            None => {
                app.call(case.method.clone(), &case.path, Some(case.user), None)
                    .await
            }
        };
        assert_eq!(
            answer.status, case.status,
            "{}: {:?}",
            case.what, answer.body
        );
        assert_eq!(
            answer.body["code"], case.code,
            "{}: {:?}",
            case.what, answer.body
        );
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: a message",
            case.what
        );
    }
    assert_eq!(
        app.event_count().await,
        before,
        "no refused command wrote an event"
    );

    // Still all there for the owner.
    assert_eq!(
        app.get(&format!("/cohort/requests/{request_id}/"), "gina")
            .await
            .status,
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let anonymous = app.call(Method::GET, "/cohort/folders/", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.body["code"], "not_authenticated");
    assert_eq!(anonymous.headers.get("www-authenticate").unwrap(), "Bearer");

    let forged = app
        .http
        .get(format!("{}/cohort/folders/", app.base))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJ1c2VybmFtZSI6Im1hbGxvcnkiLCJleHAiOjk5OTk5OTk5OTl9.c2lnbmF0dXJl")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let null = app
        .http
        .get(format!("{}/cohort/folders/", app.base))
        .header("authorization", "Bearer null")
        .send()
        .await
        .unwrap();
    assert_eq!(null.status(), StatusCode::UNAUTHORIZED);
    let live = app.call(Method::GET, "/health/live", None, None).await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = app.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    app.stop().await;
}
