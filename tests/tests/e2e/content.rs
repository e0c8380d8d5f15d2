//! Web contents, release notes and request logs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::identity::{APHP, add_user, seed, user_with};
use tests::{TestApp, eventually};

#[tokio::test]
async fn web_contents_are_read_by_anyone_and_written_by_full_admins_only() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    add_user(&app, "alice", None).await;

    let anonymous = app
        .call(Method::GET, "/webcontent/contents/", None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.body["count"], 0);

    let banner = json!({"title": "Maintenance jeudi", "content": "Service **indisponible**",
                        "page": "home", "content_type": "BANNER_WARNING",
                        "metadata": {"order": 1, "style": "warning"}});
    let refused = app
        .post("/webcontent/contents/", "alice", banner.clone())
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let created = app.post("/webcontent/contents/", "admin", banner).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(
        created.body["metadata"],
        json!({"order": "1", "style": "warning"})
    );
    assert_eq!(
        created.body["content_type_display"],
        "Bannière d'avertissement"
    );
    let id = created.body["id"].as_i64().unwrap();
    let news = app
        .post(
            "/webcontent/contents/",
            "admin",
            json!({"title": "Nouveautés", "content": "…", "page": "home",
                   "content_type": "RELEASE_NOTE"}),
        )
        .await;
    assert_eq!(news.status, StatusCode::CREATED, "{:?}", news.body);

    for (body, field) in [
        (
            json!({"title": "x", "page": "home", "content_type": "POPUP"}),
            "content_type",
        ),
        (
            json!({"title": "x", "page": "home", "content_type": "BANNER_INFO",
                "metadata": {"colour": "red"}}),
            "metadata",
        ),
        (
            json!({"page": "home", "content_type": "BANNER_INFO"}),
            "title",
        ),
    ] {
        let bad = app.post("/webcontent/contents/", "admin", body).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
        assert_eq!(bad.body["field"], field, "{:?}", bad.body);
    }

    // The front-end's two calls.
    let banners = app
        .call(
            Method::GET,
            "/webcontent/contents/?ordering=-created_at&content_type=BANNER_WARNING,BANNER_ERROR,BANNER_INFO",
            None,
            None,
        )
        .await;
    assert_eq!(banners.body["count"], 1, "{:?}", banners.body);
    assert_eq!(banners.body["results"][0]["id"], id);
    let notes = app
        .call(
            Method::GET,
            "/webcontent/contents/?ordering=-created_at&content_type=RELEASE_NOTE",
            None,
            None,
        )
        .await;
    assert_eq!(notes.body["count"], 1);
    let unknown = app
        .call(
            Method::GET,
            "/webcontent/contents/?content_type=NOPE",
            None,
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let by_page = app
        .call(
            Method::GET,
            "/webcontent/contents/?page_source=elsewhere",
            None,
            None,
        )
        .await;
    assert_eq!(by_page.body["count"], 0);
    let types = app
        .call(
            Method::GET,
            "/webcontent/contents/content_types/",
            None,
            None,
        )
        .await;
    assert_eq!(types.body["BANNER_INFO"], "Bannière d'information");

    let patched = app
        .patch(
            &format!("/webcontent/contents/{id}/"),
            "admin",
            json!({"title": "Maintenance vendredi"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!(patched.body["title"], "Maintenance vendredi");
    assert_eq!(patched.body["page"], "home");
    let deleted = app
        .delete(&format!("/webcontent/contents/{id}/"), "admin")
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = app
        .call(
            Method::GET,
            &format!("/webcontent/contents/{id}/"),
            None,
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn release_notes_are_written_by_full_admins_only_unlike_upstream() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    add_user(&app, "alice", None).await;

    let anonymous = app.call(Method::GET, "/release-notes/", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let note = json!({"title": "Version 3.30", "message": ["Exports Hive", "Audit"]});
    let refused = app.post("/release-notes/", "alice", note.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let created = app.post("/release-notes/", "admin", note).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["author"], "admin");
    let id = created.body["id"].as_i64().unwrap();
    let empty = app
        .post(
            "/release-notes/",
            "admin",
            json!({"title": "x", "message": []}),
        )
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);

    let patched = app
        .patch(
            &format!("/release-notes/{id}/"),
            "admin",
            json!({"message": ["Exports Hive", "Audit", "Métriques"]}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
    assert_eq!(patched.body["message"].as_array().unwrap().len(), 3);
    let listed = app.get("/release-notes/?search=métriques", "alice").await;
    assert_eq!(listed.body["count"], 1, "{:?}", listed.body);
    assert_eq!(listed.body["results"][0]["title"], "Version 3.30");
    let missing = app
        .patch("/release-notes/999/", "admin", json!({"title": "y"}))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["code"], "release_note_not_found");
    app.stop().await;
}

async fn logs(app: &TestApp, query: &str) -> Value {
    let answer = app.get(&format!("/logs/{query}"), "admin").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.body
}

#[tokio::test]
async fn request_logs_keep_writes_and_logins_with_secrets_redacted() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    add_user(&app, "alice", Some("pw-alice-123")).await;

    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .header("x-trace-id", "login-trace")
                .json(&json!({"username": "alice", "password": "pw-alice-123"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    // The front-end's multipart login, with a wrong password: logged under the name tried.
    let form = reqwest::multipart::Form::new()
        .text("username", "alice")
        .text("password", "wrong-password");
    let refused_login = app
        .send(app.request(Method::POST, "/auth/login/").multipart(form))
        .await;
    assert_eq!(refused_login.status, StatusCode::UNAUTHORIZED);
    let folder = app
        .post("/cohort/folders/", "alice", json!({"name": "Logged"}))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED);
    let refused = app
        .post("/cohort/folders/", "alice", json!({"name": ""}))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    // Reads are not logged.
    app.get("/cohort/folders/", "alice").await;

    assert!(
        eventually(tests::PATIENCE, || async {
            logs(&app, "?method=POST").await["count"] == 4
        })
        .await,
        "{:?}",
        logs(&app, "").await
    );
    let all = logs(&app, "").await;
    assert!(
        all["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["method"] != "GET"),
        "{all:?}"
    );
    let logged_in = logs(&app, "?path_contains=login&status_code=200").await;
    let entry = &logged_in["results"][0];
    assert_eq!(entry["user"], "alice");
    assert_eq!(entry["status_code"], 200);
    assert_eq!(entry["trace_id"], "login-trace");
    assert_eq!(entry["data"]["password"], "<redacted>");
    assert!(!logged_in.to_string().contains("pw-alice-123"));

    let multipart = logs(&app, "?status_code=401").await;
    assert_eq!(multipart["count"], 1, "{multipart:?}");
    assert_eq!(multipart["results"][0]["user"], "alice");
    assert_eq!(multipart["results"][0]["data"], Value::Null);
    let failed = logs(&app, "?status_code=400").await;
    assert_eq!(failed["count"], 1);
    assert_eq!(failed["results"][0]["view"], "/cohort/folders/");
    assert_eq!(failed["results"][0]["user"], "alice");
    let one = app
        .get(&format!("/logs/{}/", failed["results"][0]["id"]), "admin")
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["data"]["name"], "");
    let forbidden = app.get("/logs/", "alice").await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    app.stop().await;
}
