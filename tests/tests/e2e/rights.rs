//! The authorization model over upstream's test tree, through the API: manageable perimeters,
//! editable flags, assignable roles, data rights, read checks, grant rules, date rules, role
//! rules, and the audit trail of accesses.

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::TestApp;
use tests::identity::{APHP, Fixture, add_user, grant, grant_dated, seed, user_with};

fn ids(v: &Value) -> BTreeSet<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array: {v}"))
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect()
}

fn set(items: &[i64]) -> BTreeSet<i64> {
    items.iter().copied().collect()
}

async fn profile_of(app: &TestApp, username: &str) -> i64 {
    app.state
        .identity
        .manual_profile(username)
        .await
        .unwrap()
        .unwrap()
}

struct World {
    app: TestApp,
    fixture: Fixture,
    /// A nominative reader on P1, a data manager on P10, an admin manager on P4.
    targets: [i64; 3],
}

async fn world() -> World {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    user_with(&app, &fixture, "adm_root", "admin_manager", APHP).await;
    user_with(
        &app,
        &fixture,
        "adm_same_root",
        "admin_manager_same_level",
        APHP,
    )
    .await;
    user_with(&app, &fixture, "data_root", "data_manager", APHP).await;
    user_with(&app, &fixture, "reader_p0", "nominative_reader", 0).await;
    user_with(&app, &fixture, "support", "datalab_support", APHP).await;
    user_with(&app, &fixture, "csv_p1", "csv_exporter", 1).await;
    user_with(&app, &fixture, "pseudo_p4", "pseudo_reader", 4).await;
    user_with(&app, &fixture, "mixed", "data_manager_inferior", 0).await;
    grant(&app, &fixture, "mixed", "admin_manager", 1).await;
    grant(&app, &fixture, "mixed", "admin_manager_same_level", 8).await;
    grant(&app, &fixture, "mixed", "data_manager_inferior", 10).await;
    user_with(&app, &fixture, "nomi_p0_pseudo_p4", "nominative_reader", 0).await;
    grant(&app, &fixture, "nomi_p0_pseudo_p4", "pseudo_reader", 4).await;
    user_with(&app, &fixture, "unlimited", "full_admin", APHP).await;
    add_user(&app, "nobody", None).await;
    add_user(&app, "t", None).await;
    let targets = [
        grant(&app, &fixture, "t", "nominative_reader", 1).await,
        grant(&app, &fixture, "t", "data_manager", 10).await,
        grant(&app, &fixture, "t", "admin_manager", 4).await,
    ];
    World {
        app,
        fixture,
        targets,
    }
}

#[tokio::test]
async fn manageable_perimeters_editable_flags_and_assignable_roles() {
    let w = world().await;
    let app = &w.app;

    // Manageable perimeters (spec example included).
    let manageable = [
        ("full admin: the root", "admin", set(&[APHP])),
        (
            "datalab support (global rights only): the root",
            "support",
            set(&[APHP]),
        ),
        (
            "spec example: P0 inf, P1 S+I, P8 S, P10 inf",
            "mixed",
            set(&[3, 4, 5, 1, 8, 13, 14]),
        ),
        ("admin manager on the root", "adm_root", set(&[APHP])),
        ("a reader manages nothing", "reader_p0", set(&[])),
        (
            "no access at all: nothing (upstream: the root)",
            "nobody",
            set(&[]),
        ),
    ];
    for (what, user, expected) in manageable {
        let answer = app.get("/accesses/perimeters/manageable/", user).await;
        assert_eq!(answer.status, StatusCode::OK, "{what}");
        assert_eq!(ids(&answer.body), expected, "{what}");
    }
    // With a filter: the tops and everything below them, filtered.
    let filtered = app
        .get(
            "/accesses/perimeters/manageable/?type_source_value=P%C3%B4le/DMU",
            "mixed",
        )
        .await;
    assert_eq!(ids(&filtered.body), set(&[11, 12, 13, 14]));

    // Editable flags, as the access detail reports them.
    let [reader_p1, data_mgr_p10, admin_mgr_p4] = w.targets;
    let editable = [
        (
            "admin manager on root, reader on P1",
            "adm_root",
            reader_p1,
            Some(true),
        ),
        (
            "admin manager on root, data manager on P10",
            "adm_root",
            data_mgr_p10,
            Some(true),
        ),
        (
            "admin manager on root, admin manager on P4",
            "adm_root",
            admin_mgr_p4,
            Some(false),
        ),
        (
            "data manager on root, reader on P1",
            "data_root",
            reader_p1,
            Some(true),
        ),
        (
            "data manager on root, data manager on P10",
            "data_root",
            data_mgr_p10,
            Some(false),
        ),
        (
            "data manager on root, admin manager on P4",
            "data_root",
            admin_mgr_p4,
            Some(false),
        ),
        (
            "full admin, admin manager on P4",
            "admin",
            admin_mgr_p4,
            Some(true),
        ),
        (
            "a reader does not see others' accesses",
            "reader_p0",
            reader_p1,
            None,
        ),
    ];
    for (what, user, access, expected) in editable {
        let answer = app
            .get(&format!("/accesses/accesses/{access}/"), user)
            .await;
        match expected {
            Some(flag) => {
                assert_eq!(answer.status, StatusCode::OK, "{what}: {:?}", answer.body);
                assert_eq!(answer.body["editable"], flag, "{what}");
            }
            None => assert_eq!(answer.status, StatusCode::NOT_FOUND, "{what}"),
        }
    }
    // The list carries the flags when filtered by profile.
    let profile = profile_of(app, "t").await;
    let list = app
        .get(
            &format!("/accesses/accesses/?profile_id={profile}"),
            "adm_root",
        )
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let flags: BTreeSet<(i64, bool)> = list.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_i64().unwrap(), a["editable"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        flags,
        [
            (reader_p1, true),
            (data_mgr_p10, true),
            (admin_mgr_p4, false)
        ]
        .into_iter()
        .collect()
    );
    // Accesses on P11 and, with include_parents, the inherited ones above it: readers on P0 and
    // P4 pass, the datalab support on the root (nothing inherited) does not.
    let on_p11 = app
        .get(
            "/accesses/accesses/?perimeter_id=11&include_parents=true",
            "admin",
        )
        .await;
    let holders: BTreeSet<String> = on_p11.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["profile"]["username"].as_str().unwrap().to_string())
        .collect();
    assert!(
        holders.contains("reader_p0") && holders.contains("pseudo_p4"),
        "{holders:?}"
    );
    assert!(
        holders.contains("adm_root"),
        "inferior-level management is inherited"
    );
    assert!(!holders.contains("support"), "{holders:?}");
    assert!(!holders.contains("csv_p1"), "{holders:?}");
    let refused = app.get("/accesses/accesses/", "reader_p0").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Assignable roles.
    let role = |name: &str| w.fixture.role(name);
    let assignable = [
        (
            "admin manager on root, on P0: everything below full-admin level",
            "adm_root",
            0,
            [
                "data_manager",
                "data_manager_inferior",
                "nominative_reader",
                "pseudo_reader",
                "csv_exporter",
                "jupyter_pseudo_exporter",
                "datalab_support",
                "opposed_searcher",
            ]
            .iter()
            .map(|n| role(n))
            .collect::<BTreeSet<_>>(),
        ),
        (
            "data manager on root, on P1: data roles only",
            "data_root",
            1,
            [
                "nominative_reader",
                "pseudo_reader",
                "csv_exporter",
                "jupyter_pseudo_exporter",
                "opposed_searcher",
            ]
            .iter()
            .map(|n| role(n))
            .collect(),
        ),
        (
            "same-level admin manager on root assigns nothing on a child",
            "adm_same_root",
            0,
            BTreeSet::new(),
        ),
        ("a reader assigns nothing", "reader_p0", 0, BTreeSet::new()),
        (
            "full admin assigns everything",
            "admin",
            11,
            w.fixture.roles.values().copied().collect(),
        ),
    ];
    for (what, user, perimeter, expected) in assignable {
        let answer = app
            .get(
                &format!("/accesses/roles/assignable/?perimeter_id={perimeter}"),
                user,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{what}");
        assert_eq!(ids(&answer.body), expected, "{what}");
    }
    let missing = app.get("/accesses/roles/assignable/", "admin").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    w.app.stop().await;
}

#[tokio::test]
async fn data_rights_and_read_checks() {
    let w = world().await;
    let app = &w.app;

    // my-data-rights: inheritance down the tree, merging, global flags on readable entries.
    let rights = |user: &'static str, perimeters: &'static str| async move {
        app.get(
            &format!("/accesses/accesses/my-data-rights/?perimeters_ids={perimeters}"),
            user,
        )
        .await
        .body
    };
    let merged = rights("nomi_p0_pseudo_p4", "11,1").await;
    let entries = merged.as_array().unwrap();
    assert_eq!(entries.len(), 1, "P1 is not readable: {merged}");
    assert_eq!(entries[0]["perimeter_id"], 11);
    assert_eq!(entries[0]["right_read_patient_nominative"], true);
    assert_eq!(entries[0]["right_read_patient_pseudonymized"], true);
    let csv = rights("csv_p1", "6,0").await;
    assert_eq!(csv.as_array().unwrap().len(), 1, "{csv}");
    assert_eq!(csv[0]["perimeter_id"], 6);
    assert_eq!(csv[0]["right_export_csv_xlsx_nominative"], true);
    let bad = app
        .get(
            "/accesses/accesses/my-data-rights/?perimeters_ids=1,x",
            "csv_p1",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // patient-data/rights: top-most reading perimeters, or all covered ones matching filters.
    let tops = app
        .get(
            "/accesses/perimeters/patient-data/rights/",
            "nomi_p0_pseudo_p4",
        )
        .await;
    assert_eq!(tops.status, StatusCode::OK);
    let top_ids: Vec<i64> = tops.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["perimeter"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(top_ids, vec![0]);
    assert_eq!(
        tops.body["results"][0]["right_read_patient_nominative"],
        true
    );
    let poles = app
        .get(
            "/accesses/perimeters/patient-data/rights/?type_source_value=P%C3%B4le/DMU&limit=-1",
            "pseudo_p4",
        )
        .await;
    let pole_rows = poles.body["results"].as_array().unwrap();
    let pole_ids: BTreeSet<i64> = pole_rows
        .iter()
        .map(|r| r["perimeter"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(pole_ids, set(&[11, 12]));
    assert!(
        pole_rows
            .iter()
            .all(|r| r["right_read_patient_nominative"] == false
                && r["right_read_patient_pseudonymized"] == true)
    );
    let none = app
        .get("/accesses/perimeters/patient-data/rights/", "nobody")
        .await;
    assert_eq!(none.body["count"], 0);

    // patient-data/read min/max.
    let read = |user: &'static str, q: &'static str| async move {
        app.get(
            &format!("/accesses/perimeters/patient-data/read/?{q}"),
            user,
        )
        .await
    };
    let cases = [
        (
            "max over a readable perimeter",
            "reader_p0",
            "cohort_ids=11&mode=max",
            StatusCode::OK,
            Some(true),
        ),
        (
            "max with one unreadable target",
            "reader_p0",
            "cohort_ids=11,6&mode=max",
            StatusCode::OK,
            Some(true),
        ),
        (
            "min with one unreadable target",
            "reader_p0",
            "cohort_ids=11,6&mode=min",
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "min, pseudonymized only",
            "pseudo_p4",
            "cohort_ids=11,12&mode=min",
            StatusCode::OK,
            Some(false),
        ),
        (
            "nothing readable",
            "nobody",
            "cohort_ids=11&mode=max",
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "unknown mode",
            "reader_p0",
            "cohort_ids=11&mode=most",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "no cohort ids",
            "reader_p0",
            "mode=max",
            StatusCode::BAD_REQUEST,
            None,
        ),
    ];
    for (what, user, q, status, nominative) in cases {
        let answer = read(user, q).await;
        assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
        if let Some(n) = nominative {
            assert_eq!(answer.body["allow_read_patient_data_nomi"], n, "{what}");
        }
    }
    let unlimited = read("unlimited", "cohort_ids=6&mode=min").await;
    assert_eq!(
        unlimited.body["allow_read_patient_without_perimeter_limit"],
        true
    );
    assert_eq!(unlimited.body["allow_read_practitioner"], false);
    w.app.stop().await;
}

#[tokio::test]
async fn grants_follow_the_managing_rule_and_the_date_rules_and_are_audited() {
    let w = world().await;
    let app = &w.app;
    add_user(app, "newcomer", None).await;
    let profile = profile_of(app, "newcomer").await;
    let role = |name: &str| w.fixture.role(name);
    let body = |role_id: i64, perimeter: i64, extra: Value| {
        let mut b = json!({"profile_id": profile, "role_id": role_id, "perimeter_id": perimeter});
        if let (Some(b), Some(extra)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(extra.clone());
        }
        b
    };
    let now = Utc::now();
    let cases = [
        (
            "data manager grants a reader on P1",
            "data_root",
            body(role("nominative_reader"), 1, json!({})),
            StatusCode::CREATED,
            None,
        ),
        (
            "data manager cannot grant an admin manager",
            "data_root",
            body(role("admin_manager"), 1, json!({})),
            StatusCode::FORBIDDEN,
            Some("permission_denied"),
        ),
        (
            "a reader cannot grant",
            "reader_p0",
            body(role("pseudo_reader"), 0, json!({})),
            StatusCode::FORBIDDEN,
            Some("permission_denied"),
        ),
        (
            "start in the past",
            "admin",
            body(
                role("pseudo_reader"),
                0,
                json!({"start_datetime": (now - Duration::hours(1)).to_rfc3339()}),
            ),
            StatusCode::BAD_REQUEST,
            Some("invalid_access_dates"),
        ),
        (
            "end before start",
            "admin",
            body(
                role("pseudo_reader"),
                0,
                json!({"start_datetime": (now + Duration::days(3)).to_rfc3339(), "end_datetime": (now + Duration::days(2)).to_rfc3339()}),
            ),
            StatusCode::BAD_REQUEST,
            Some("invalid_access_dates"),
        ),
        (
            "unknown perimeter",
            "admin",
            body(role("pseudo_reader"), 424242, json!({})),
            StatusCode::NOT_FOUND,
            Some("not_found"),
        ),
        (
            "unknown role",
            "admin",
            body(424242, 0, json!({})),
            StatusCode::NOT_FOUND,
            Some("not_found"),
        ),
    ];
    let mut granted = None;
    for (what, user, body, status, code) in cases {
        let answer = app.post("/accesses/accesses/", user, body).await;
        assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
        if let Some(code) = code {
            assert_eq!(answer.body["code"], code, "{what}");
        } else {
            granted = answer.body["id"].as_i64();
            let start = chrono::DateTime::parse_from_rfc3339(
                answer.body["start_datetime"].as_str().unwrap(),
            )
            .unwrap();
            let end =
                chrono::DateTime::parse_from_rfc3339(answer.body["end_datetime"].as_str().unwrap())
                    .unwrap();
            assert_eq!((end - start).num_days(), 365, "{what}: default validity");
        }
    }
    let granted = granted.expect("one grant succeeded");

    // Date changes, close, delete.
    let path = format!("/accesses/accesses/{granted}/");
    let frozen = app
        .patch(
            &path,
            "data_root",
            json!({"start_datetime": (now + Duration::days(1)).to_rfc3339()}),
        )
        .await;
    assert_eq!(frozen.status, StatusCode::BAD_REQUEST);
    assert_eq!(frozen.body["field"], "start_datetime");
    let empty = app.patch(&path, "data_root", json!({})).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let blank = app
        .patch(&path, "data_root", json!({"end_datetime": ""}))
        .await;
    assert_eq!(blank.status, StatusCode::BAD_REQUEST);
    let extended = app
        .patch(
            &path,
            "data_root",
            json!({"end_datetime": (now + Duration::days(30)).to_rfc3339()}),
        )
        .await;
    assert_eq!(extended.status, StatusCode::OK, "{:?}", extended.body);
    let not_yours = app
        .patch(&format!("{path}close/"), "reader_p0", json!({}))
        .await;
    assert_eq!(not_yours.status, StatusCode::FORBIDDEN);
    let closed = app
        .patch(&format!("{path}close/"), "data_root", json!({}))
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    let started = app.delete(&path, "data_root").await;
    assert_eq!(started.status, StatusCode::BAD_REQUEST);
    assert_eq!(started.body["code"], "invalid_access_state");
    let future = grant_dated(
        app,
        &w.fixture,
        "newcomer",
        "pseudo_reader",
        3,
        Some(now + Duration::days(2)),
        Some(now + Duration::days(9)),
    )
    .await;
    assert_eq!(
        app.delete(&format!("/accesses/accesses/{future}/"), "admin")
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    // An auditor replays the history of one grant and of one user's accesses.
    let history = app
        .get(&format!("/audit/Access/{granted}/events/"), "admin")
        .await;
    let types: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["AccessGranted", "AccessDatesChanged", "AccessClosed"]
    );
    assert_eq!(history.body[0]["metadata"]["user"], "data_root");
    let user_history = app.get("/audit/users/newcomer/accesses/", "admin").await;
    let types: Vec<&str> = user_history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "AccessGranted",
            "AccessDatesChanged",
            "AccessClosed",
            "AccessGranted",
            "AccessRevokedBeforeStart"
        ]
    );
    let not_auditor = app.get("/audit/users/newcomer/accesses/", "adm_root").await;
    assert_eq!(not_auditor.status, StatusCode::FORBIDDEN);

    // my-accesses: the closed access is gone; expiring lists what ends within 30 days.
    let expiring_grant = grant_dated(
        app,
        &w.fixture,
        "newcomer",
        "nominative_reader",
        2,
        None,
        Some(now + Duration::days(10)),
    )
    .await;
    let mine = app.get("/accesses/accesses/my-accesses/", "newcomer").await;
    let mine_ids: Vec<i64> = mine
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(mine_ids, vec![expiring_grant]);
    let expiring = app
        .get("/accesses/accesses/my-accesses/?expiring=true", "newcomer")
        .await;
    assert_eq!(expiring.body[0]["perimeter"], "P2", "{:?}", expiring.body);
    let calm = app
        .get("/accesses/accesses/my-accesses/?expiring=true", "reader_p0")
        .await;
    assert!(
        calm.body["message"]
            .as_str()
            .unwrap()
            .starts_with("No accesses to expire")
    );
    // `expiring=false` is no filter at all (upstream parses the value, not its presence).
    let all_mine = app
        .get("/accesses/accesses/my-accesses/", "reader_p0")
        .await;
    assert!(!all_mine.body.as_array().unwrap().is_empty());
    for no_filter in ["false", "0", ""] {
        let listed = app
            .get(
                &format!("/accesses/accesses/my-accesses/?expiring={no_filter}"),
                "reader_p0",
            )
            .await;
        assert_eq!(listed.status, StatusCode::OK);
        assert_eq!(listed.body, all_mine.body, "expiring={no_filter}");
    }
    let bad = app
        .get("/accesses/accesses/my-accesses/?expiring=soon", "reader_p0")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(bad.body["code"], "invalid_field");
    w.app.stop().await;
}

#[tokio::test]
async fn roles_keep_their_rules_and_only_full_admins_write_them() {
    let w = world().await;
    let app = &w.app;
    let cases = [
        (
            "inconsistent: IPP search without nominative reading",
            "admin",
            json!({"name": "x", "right_search_patients_by_ipp": true}),
            StatusCode::BAD_REQUEST,
            "inconsistent_rights",
        ),
        (
            "inconsistent: partial full admin",
            "admin",
            json!({"name": "x", "right_full_admin": true}),
            StatusCode::BAD_REQUEST,
            "inconsistent_rights",
        ),
        (
            "duplicate name",
            "admin",
            json!({"name": "Nominative_Reader"}),
            StatusCode::BAD_REQUEST,
            "role_name_taken",
        ),
        (
            "unknown right",
            "admin",
            json!({"name": "x", "right_to_fly": true}),
            StatusCode::BAD_REQUEST,
            "unknown_right",
        ),
        (
            "not a full admin",
            "adm_root",
            json!({"name": "x"}),
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
    ];
    for (what, user, body, status, code) in cases {
        let answer = app.post("/accesses/roles/", user, body).await;
        assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
        assert_eq!(answer.body["code"], code, "{what}");
    }
    let created = app
        .post("/accesses/roles/", "admin", json!({"name": "Lecteur IPP", "right_read_patient_nominative": true, "right_search_patients_by_ipp": true}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["right_search_patients_by_ipp"], true);
    assert_eq!(created.body["help_text"].as_array().unwrap().len(), 2);
    let id = created.body["id"].as_i64().unwrap();
    // A patch merges with the stored rights and is checked as a whole.
    let broken = app
        .patch(
            &format!("/accesses/roles/{id}/"),
            "admin",
            json!({"right_read_patient_nominative": false}),
        )
        .await;
    assert_eq!(broken.body["code"], "inconsistent_rights");
    let deleted = app.delete(&format!("/accesses/roles/{id}/"), "admin").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let in_use = app
        .delete(
            &format!("/accesses/roles/{}/", w.fixture.role("nominative_reader")),
            "admin",
        )
        .await;
    assert_eq!(in_use.status, StatusCode::FORBIDDEN);
    assert_eq!(in_use.body["code"], "role_not_deletable");
    let filtered = app
        .get("/accesses/roles/?right_full_admin=true", "reader_p0")
        .await;
    assert_eq!(filtered.body["count"], 1);
    let holders = app
        .get(
            &format!("/accesses/roles/{}/users/", w.fixture.role("csv_exporter")),
            "adm_root",
        )
        .await;
    assert_eq!(holders.body[0]["provider_username"], "csv_p1");
    // Researchers see names only (the share dialog); managers see contacts.
    let as_reader = app
        .get("/users/?manual_only=true&search=csv_p1", "reader_p0")
        .await;
    assert_eq!(as_reader.body["count"], 1);
    assert_eq!(
        as_reader.body["results"][0]["display_name"],
        "Test User (csv_p1)"
    );
    assert_eq!(as_reader.body["results"][0]["email"], Value::Null);
    let as_manager = app.get("/users/?search=csv_p1", "adm_root").await;
    assert_eq!(as_manager.body["results"][0]["email"], "csv_p1@example.org");
    let myself = app.get("/users/reader_p0/", "reader_p0").await;
    assert_eq!(myself.body["email"], "reader_p0@example.org");
    let rights = app.get("/accesses/rights/", "reader_p0").await;
    let count: usize = rights
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rights"].as_array().unwrap().len())
        .sum();
    assert_eq!(count, 17);
    w.app.stop().await;
}
