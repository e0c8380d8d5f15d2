//! Operator commands: the first administrator of an empty installation.

use commands::identity::NewUser;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::TestApp;

#[tokio::test]
async fn create_user_admin_bootstraps_a_full_administrator_on_the_imported_tree() {
    let app = TestApp::spawn().await;
    let user = || NewUser {
        username: "first.admin".into(),
        firstname: "Ada".into(),
        lastname: "Admin".into(),
        email: Some("ada@example.org".into()),
        password: Some("first-admin-pass".into()),
    };
    // Without a tree there is nothing to administer: the command says what to do first.
    let refused = infra::runtime::operations::create_user(&app.services, user(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("import-perimeters"), "{refused}");

    infra::runtime::operations::seed_demo(&app.services)
        .await
        .unwrap();
    let second = NewUser {
        username: "second.admin".into(),
        ..user()
    };
    infra::runtime::operations::create_user(&app.services, second, true)
        .await
        .unwrap();
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "second.admin", "password": "first-admin-pass"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    let token = login.body["access_token"].as_str().unwrap();
    let mine = app
        .send(
            app.request(Method::GET, "/accesses/accesses/my-accesses/")
                .bearer_auth(token),
        )
        .await;
    assert_eq!(mine.body[0]["role"]["right_full_admin"], true);
    assert_eq!(mine.body[0]["perimeter"]["id"], 9999);
    // The demo seed is idempotent.
    infra::runtime::operations::seed_demo(&app.services)
        .await
        .unwrap();
    let roles = app
        .send(
            app.request(Method::GET, "/accesses/roles/?limit=100")
                .bearer_auth(token),
        )
        .await;
    // Ours (8) beside upstream's catalogue (15), once each.
    assert_eq!(roles.body["count"], 23, "{:?}", roles.body);
    let role = |name: &str| {
        roles.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no role {name}"))
            .clone()
    };
    assert_eq!(role("FULL ADMIN")["right_full_admin"], true);
    let same_level = role("ADMIN ACCESSES MANAGER ON SAME LEVEL");
    assert_eq!(same_level["right_manage_admin_accesses_same_level"], true);
    assert_eq!(
        same_level["right_manage_admin_accesses_inferior_levels"],
        false
    );
    let inferior = role("DATA ACCESSES MANAGER ON INFERIOR LEVELS");
    assert_eq!(inferior["right_manage_data_accesses_inferior_levels"], true);
    assert_eq!(inferior["right_manage_data_accesses_same_level"], false);
    assert_eq!(
        role("DATA PSEUDO READER")["right_read_patient_nominative"],
        false
    );
    assert_eq!(
        role("DATA NOMI READER + CSV EXPORTER")["right_export_csv_xlsx_nominative"],
        true
    );
    assert_eq!(
        role("JUPYTER EXPORTER PSEUDO")["right_export_jupyter_pseudonymized"],
        true
    );
    assert_eq!(role("DATALAB SUPPORT")["right_manage_datalabs"], true);
    app.stop().await;
}
