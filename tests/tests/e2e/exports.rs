//! Exports end to end with the built-in exporter: a cohort, an export with filtered tables,
//! subsets created through the cohort lifecycle, files written, downloaded, read back with a CSV
//! reader and a spreadsheet library; pseudonymized exports without identifiers; every validation
//! rule; retention, retry and relaunch; e-mails.

use std::collections::{BTreeSet, HashMap};
use std::io::{Cursor, Read};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tests::flows::cohort_to_end;
use tests::identity::{APHP, Fixture, add_user, grant, seed};
use tests::smtp::SmtpServer;
use tests::{TestApp, settings, unique_id};

const PATIENTS: u64 = 1000;

/// An application with the embedded executor and the built-in exporter, the fixture tree and
/// generated data.
async fn app_with(tune: impl FnOnce(&mut infra::runtime::config::Settings)) -> (TestApp, Fixture) {
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.cohorts.query_executor_url = String::new();
    s.cohorts.reconcile_every_seconds = 0;
    tune(&mut s);
    let app = TestApp::spawn_with(s, id).await;
    let fixture = seed(&app).await;
    infra::clinical::generate::generate(&app.pool, PATIENTS, 5)
        .await
        .expect("data generated");
    (app, fixture)
}

/// A user with a password, holding `role` on the whole tree.
async fn user(app: &TestApp, fixture: &Fixture, name: &str, role: &str) {
    add_user(app, name, Some(&format!("pw-{name}-12345"))).await;
    grant(app, fixture, name, role, APHP).await;
}

fn diabetics_query(population: &[&str]) -> String {
    json!({"version": "v1.6.1", "_type": "request",
           "sourcePopulation": {"caresiteCohortList": population},
           "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "temporalConstraints": [],
                       "criteria": [{"_type": "basicResource", "_id": 1, "isInclusive": true,
                                     "resourceType": "Condition", "filterFhir": "code=E11"}]}})
    .to_string()
}

/// A created cohort of `owner`: the diabetic patients of `population`.
async fn diabetics(app: &TestApp, owner: &str, population: &[&str]) -> Value {
    cohort_to_end(
        app,
        owner,
        &format!("pw-{owner}-12345"),
        "Diabetics",
        &diabetics_query(population),
    )
    .await
}

async fn filter(app: &TestApp, owner: &str, resource: &str, name: &str, fhir: &str) -> String {
    let f = app
        .post(
            "/cohort/fhir-filters/",
            owner,
            json!({"fhir_resource": resource, "fhir_version": "4.0.1", "name": name, "filter": fhir}),
        )
        .await;
    assert_eq!(f.status, StatusCode::CREATED, "{:?}", f.body);
    f.uuid()
}

/// A datalab named `name` on a new provider `provider`, created by the datalab manager `manager`.
async fn datalab(app: &TestApp, manager: &str, provider: &str, name: &str) -> Value {
    let p = app
        .post(
            "/exports/infrastructure-providers/",
            manager,
            json!({"name": provider}),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
    let lab = app
        .post(
            "/exports/datalabs/",
            manager,
            json!({"name": name, "infrastructure_provider": p.body["uuid"]}),
        )
        .await;
    assert_eq!(lab.status, StatusCode::CREATED, "{:?}", lab.body);
    lab.body
}

/// Waits until the export reaches an end state; returns it.
async fn export_to_end(app: &TestApp, owner: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + tests::PATIENCE;
    loop {
        let seen = app.get(&format!("/exports/{id}/"), owner).await;
        assert_eq!(seen.status, StatusCode::OK, "{:?}", seen.body);
        let status = seen.body["request_job_status"].as_str().unwrap_or_default();
        if status == "finished" || status == "failed" {
            return seen.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the export did not end in time: {:?}",
            seen.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn download(app: &TestApp, owner: &str, id: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/exports/{id}/download/", app.base))
        .bearer_auth(app.token(owner).await)
        .send()
        .await
        .expect("download answers")
}

/// The entries of a zip archive: name → bytes.
fn unzip(bytes: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip archive");
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).expect("an entry");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry readable");
        out.insert(entry.name().expect("an entry name").into_owned(), data);
    }
    out
}

/// A CSV file as (header, rows).
fn read_csv(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(bytes);
    let header = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("a record").iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

async fn ids(pool: &PgPool, sql: &str) -> BTreeSet<String> {
    let rows: Vec<i64> = sqlx::query_scalar(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|i| i.to_string()).collect()
}

fn group_of(cohort: &Value) -> i64 {
    cohort["group_id"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("a group id: {cohort}"))
}

#[tokio::test]
async fn a_filtered_csv_export_goes_from_cohort_to_downloaded_files() {
    let smtp = SmtpServer::start().await;
    let (app, fixture) = app_with(|s| {
        s.identity.smtp.smtp_port = smtp.port;
        s.exports.admins = "ops@example.org".into();
    })
    .await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    let cohort = diabetics(&app, "alice", &["9999"]).await;
    let group = group_of(&cohort);
    assert_eq!(cohort["result_size"], (PATIENTS / 10) as i64, "{cohort}");
    let hba1c = filter(
        &app,
        "alice",
        "Observation",
        "HbA1c high",
        "code=4548-4&value-quantity=gt8",
    )
    .await;

    let created = app
        .post(
            "/exports/",
            "alice",
            json!({
                "output_format": "csv", "nominative": true, "motivation": "Study\nof diabetes",
                "export_tables": [
                    {"table_name": "person", "cohort_result_source": cohort["uuid"]},
                    {"table_name": "measurement", "cohort_result_source": cohort["uuid"], "fhir_filter": hba1c,
                     "columns": ["measurement_id", "person_id", "measurement_source_value", "value_as_number"]},
                ]
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["motivation"], "Study - of diabetes");
    assert_eq!(created.body["request_job_status"], "new");
    let id = created.uuid();
    assert!(
        created.body["target_name"]
            .as_str()
            .unwrap()
            .starts_with("alice_")
    );

    let done = export_to_end(&app, "alice", &id).await;
    assert_eq!(done["request_job_status"], "finished", "{done}");
    // The filtered table got a subset cohort, created through the cohort lifecycle and hidden
    // from the owner's cohorts.
    let subset = done["export_tables"][1]["cohort_result_subset"]
        .as_str()
        .expect("a subset cohort")
        .to_string();
    let subset_cohort = app
        .state
        .cohorts
        .cohort(subset.parse().unwrap())
        .await
        .unwrap()
        .expect("the subset exists");
    assert!(subset_cohort.is_subset);
    assert_eq!(subset_cohort.name, format!("measurement_{group}"));
    let listed = app.get("/cohort/cohorts/", "alice").await;
    assert_eq!(
        listed.body["count"], 1,
        "subsets are not listed: {:?}",
        listed.body
    );
    assert!(done["export_tables"][0]["cohort_result_subset"].is_null());

    let answer = download(&app, "alice", &id).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()[reqwest::header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"export_{group}.zip\"").as_str()
    );
    let files = unzip(&answer.bytes().await.unwrap());
    let mut names: Vec<_> = files.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["measurement.csv", "person.csv"]);

    let (header, rows) = read_csv(&files["person.csv"]);
    let expected_persons = ids(
        &app.pool,
        &format!("SELECT patient_id::bigint FROM clinical.cohort_members WHERE group_id = {group}"),
    )
    .await;
    let got: BTreeSet<String> = rows
        .iter()
        .map(|r| r[column(&header, "person_id")].clone())
        .collect();
    assert_eq!(got, expected_persons, "one row per cohort member");
    assert_eq!(rows.len(), expected_persons.len());
    let ipp = column(&header, "ipp");
    assert!(
        rows.iter().all(|r| r[ipp].starts_with('8')),
        "nominative: real IPPs"
    );

    let (header, rows) = read_csv(&files["measurement.csv"]);
    assert_eq!(
        header,
        [
            "measurement_id",
            "person_id",
            "measurement_source_value",
            "value_as_number"
        ]
    );
    let expected = ids(
        &app.pool,
        &format!(
            "SELECT f.id FROM clinical.facts f JOIN clinical.cohort_members m ON m.patient_id = f.patient_id
              WHERE m.group_id = {group} AND f.resource = 'O' AND f.code = '4548-4' AND f.value > 8"
        ),
    )
    .await;
    assert!(!expected.is_empty(), "a telling case");
    let got: BTreeSet<String> = rows.iter().map(|r| r[0].clone()).collect();
    assert_eq!(got, expected, "exactly the cohort's matching measurements");
    assert!(
        rows.iter()
            .all(|r| r[2] == "4548-4" && r[3].parse::<f64>().unwrap() > 8.0)
    );

    // Statistics, the list, and the e-mails.
    let stats = app
        .get(&format!("/exports/export-stats/{id}/"), "alice")
        .await;
    assert_eq!(stats.status, StatusCode::OK, "{:?}", stats.body);
    let stat = |name: &str| {
        stats
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].clone())
    };
    assert_eq!(
        stat("person.rows"),
        Some(json!(expected_persons.len().to_string()))
    );
    assert_eq!(
        stat("measurement.rows"),
        Some(json!(expected.len().to_string()))
    );
    let list = app.get("/exports/", "alice").await;
    assert_eq!(list.body["count"], 1);
    assert_eq!(list.body["results"][0]["cohort_id"], group.to_string());
    assert_eq!(
        list.body["results"][0]["patients_count"],
        (PATIENTS / 10) as i64
    );
    assert!(
        tests::eventually(tests::PATIENCE, || async {
            let received = smtp.received();
            let to_alice: Vec<String> = received
                .iter()
                .filter(|m| m.to.contains(&"alice@example.org".to_string()))
                .map(|m| m.unfolded())
                .collect();
            to_alice.len() >= 2
                && to_alice
                    .iter()
                    .any(|m| m.contains(&format!("/download/exports/{id}/")))
        })
        .await,
        "received and succeeded e-mails: {:?}",
        smtp.received()
            .iter()
            .map(|m| (m.to.clone(), m.unfolded()))
            .collect::<Vec<_>>()
    );

    // The read model is a fold of the log: rebuilt, it is the same row for row.
    app.settle().await;
    let live = tests::dump_schema(&app.pool, "exports").await;
    let rows = |table: &str| {
        live.iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, r)| r.len())
    };
    assert_eq!((rows("exports"), rows("subsets")), (1, 1), "{live:?}");
    assert!(rows("stats") >= 4);
    infra::rebuild::rebuild(&app.pool, &infra::exports::ExportsProjection)
        .await
        .expect("rebuild");
    assert_eq!(tests::dump_schema(&app.pool, "exports").await, live);

    // Someone else cannot see nor download it.
    user(&app, &fixture, "mallory", "csv_exporter").await;
    assert_eq!(
        download(&app, "mallory", &id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/exports/{id}/"), "mallory").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/exports/", "mallory").await.body["count"], 0);
    app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn an_xlsx_export_opens_in_a_spreadsheet_library() {
    let (app, fixture) = app_with(|_| {}).await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    let cohort = diabetics(&app, "alice", &["9999"]).await;
    let group = group_of(&cohort);
    let e11 = filter(&app, "alice", "Condition", "T2D", "code=E11").await;
    let created = app
        .post(
            "/exports/",
            "alice",
            json!({"output_format": "xlsx", "nominative": true, "export_tables": [
                {"table_name": "person", "cohort_result_source": cohort["uuid"], "columns": ["person_id", "gender", "birth_date"]},
                {"table_name": "condition_occurrence", "cohort_result_source": cohort["uuid"], "fhir_filter": e11},
            ]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.uuid();
    let done = export_to_end(&app, "alice", &id).await;
    assert_eq!(done["request_job_status"], "finished", "{done}");
    let files = unzip(&download(&app, "alice", &id).await.bytes().await.unwrap());

    use calamine::{Data, Reader, Xlsx};
    let sheet = |name: &str| {
        let mut book: Xlsx<_> =
            Xlsx::new(Cursor::new(files[name].clone())).expect("an XLSX workbook");
        let first = book.sheet_names()[0].clone();
        book.worksheet_range(&first).expect("a sheet")
    };
    let persons = sheet("person.xlsx");
    let rows: Vec<_> = persons.rows().collect();
    assert_eq!(
        rows[0].iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        ["person_id", "gender", "birth_date"]
    );
    assert_eq!(
        rows.len() - 1,
        (PATIENTS / 10) as usize,
        "one row per member"
    );
    assert!(
        rows[1..]
            .iter()
            .all(|r| matches!(r[0], Data::Float(_) | Data::Int(_))),
        "ids are numbers"
    );
    let conditions = sheet("condition_occurrence.xlsx");
    let expected = ids(
        &app.pool,
        &format!(
            "SELECT f.id FROM clinical.facts f JOIN clinical.cohort_members m ON m.patient_id = f.patient_id
              WHERE m.group_id = {group} AND f.resource = 'C' AND f.code = 'E11'"
        ),
    )
    .await;
    let header: Vec<String> = conditions
        .rows()
        .next()
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let code = column(&header, "condition_source_value");
    let body: Vec<_> = conditions.rows().skip(1).collect();
    assert_eq!(body.len(), expected.len());
    assert!(body.iter().all(|r| r[code] == Data::String("E11".into())));
    app.stop().await;
}

#[tokio::test]
async fn a_pseudonymized_datalab_export_holds_no_identifier() {
    let (app, fixture) = app_with(|_| {}).await;
    user(&app, &fixture, "bob", "jupyter_pseudo_exporter").await;
    user(&app, &fixture, "dana", "datalab_support").await;
    let lab = datalab(&app, "dana", "On premise", "lab_diabetes").await;
    assert_eq!(lab["infrastructure_provider"]["name"], "On premise");
    assert_eq!(
        app.get("/exports/datalabs/", "bob").await.status,
        StatusCode::FORBIDDEN,
        "reading datalabs needs its right"
    );

    let cohort = diabetics(&app, "bob", &["9999"]).await;
    let created = app
        .post(
            "/exports/",
            "bob",
            json!({"output_format": "hive", "nominative": false, "shift_dates": true,
                   "datalab": lab["uuid"], "export_tables": [
                {"table_name": "person", "cohort_result_source": cohort["uuid"]},
                {"table_name": "visit_occurrence", "cohort_result_source": cohort["uuid"]},
            ]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let target = created.body["target_name"].as_str().unwrap().to_string();
    assert!(target.starts_with("lab_diabetes_"), "{target}");
    let id = created.uuid();
    let done = export_to_end(&app, "bob", &id).await;
    assert_eq!(done["request_job_status"], "finished", "{done}");
    let answer = download(&app, "bob", &id).await;
    assert_eq!(
        answer.status(),
        StatusCode::BAD_REQUEST,
        "Hive exports are not downloaded"
    );

    // The built-in exporter leaves a datalab's export as a zip of CSV files at the Hive path.
    let path = std::path::Path::new(&app.settings.exports.storage_dir)
        .join(&app.settings.exports.hive_path)
        .join(format!("{target}.zip"));
    let files = unzip(&std::fs::read(&path).expect("the datalab export exists"));
    let (header, rows) = read_csv(&files["person.csv"]);
    for identifying in ["ipp", "family_name", "given_name"] {
        assert!(
            !header.iter().any(|h| h == identifying),
            "{identifying} in {header:?}"
        );
    }
    assert_eq!(rows.len(), (PATIENTS / 10) as usize);
    let real: Vec<(i64, String, String, String, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT id::bigint, ipp, family_name, given_name, birth_date FROM clinical.patients",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let all_text: String = files
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    for (_, ipp, family, given, _) in real.iter().take(300) {
        assert!(!all_text.contains(ipp.as_str()), "an IPP leaked");
        assert!(
            !all_text.contains(&format!(",{family},")),
            "a family name leaked"
        );
        assert!(
            !all_text.contains(&format!(",{given},")),
            "a given name leaked"
        );
    }
    let person_ids: BTreeSet<String> = rows
        .iter()
        .map(|r| r[column(&header, "person_id")].clone())
        .collect();
    let real_ids: BTreeSet<String> = real.iter().map(|r| r.0.to_string()).collect();
    assert!(
        person_ids.is_disjoint(&real_ids),
        "person ids are pseudonyms"
    );
    let birth = column(&header, "birth_date");
    assert!(
        rows.iter().all(|r| r[birth].len() == 7),
        "birth dates keep the month only"
    );
    // The pseudonyms join the tables of one export.
    let (vheader, visits) = read_csv(&files["visit_occurrence.csv"]);
    let visit_persons: BTreeSet<String> = visits
        .iter()
        .map(|r| r[column(&vheader, "person_id")].clone())
        .collect();
    assert!(!visits.is_empty() && visit_persons.is_subset(&person_ids));
    app.stop().await;
}

#[tokio::test]
async fn every_validation_rule_answers_a_clear_error() {
    let (app, fixture) = app_with(|_| {}).await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    user(&app, &fixture, "nina", "nominative_reader").await;
    user(&app, &fixture, "bob", "jupyter_pseudo_exporter").await;
    // Carol may export, but reads only perimeter P0's subtree.
    add_user(&app, "carol", Some("pw-carol-12345")).await;
    let p0: i64 = sqlx::query_scalar("SELECT id FROM identity.perimeters WHERE cohort_id = '0'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    grant(&app, &fixture, "carol", "csv_exporter", p0).await;

    let mine = diabetics(&app, "alice", &["0"]).await;
    let other = diabetics(&app, "alice", &["1"]).await;
    let ninas = diabetics(&app, "nina", &["0"]).await;
    let carols = diabetics(&app, "carol", &["0", "1"]).await;
    let e11 = filter(&app, "alice", "Condition", "T2D", "code=E11").await;
    let person = |c: &Value| json!({"table_name": "person", "cohort_result_source": c["uuid"]});

    let refused = |user: &'static str, body: Value, status: StatusCode, needle: &'static str| {
        let app = &app;
        async move {
            let a = app.post("/exports/", user, body.clone()).await;
            assert_eq!(a.status, status, "{body}: {:?}", a.body);
            let text = a.body.to_string();
            assert!(
                text.contains(needle),
                "{body}: {text} should say {needle:?}"
            );
        }
    };
    refused(
        "alice",
        json!({"output_format": "csv", "nominative": false, "export_tables": [person(&mine)]}),
        StatusCode::FORBIDDEN,
        "must be nominative",
    )
    .await;
    refused(
        "nina",
        json!({"output_format": "csv", "nominative": true, "export_tables": [person(&ninas)]}),
        StatusCode::FORBIDDEN,
        "right_export_csv_xlsx_nominative",
    )
    .await;
    refused(
        "alice",
        json!({"output_format": "hive", "nominative": true, "export_tables": [person(&mine)]}),
        StatusCode::FORBIDDEN,
        "right_export_jupyter_nominative",
    )
    .await;
    refused(
        "alice",
        json!({"output_format": "pdf", "nominative": true, "export_tables": [person(&mine)]}),
        StatusCode::BAD_REQUEST,
        "output_format",
    )
    .await;
    refused(
        "alice",
        json!({"output_format": "csv", "nominative": true, "export_tables": []}),
        StatusCode::BAD_REQUEST,
        "at least one table",
    )
    .await;
    refused("alice", json!({"output_format": "csv", "nominative": true, "export_tables": [
            person(&mine), {"table_name": "visit_occurrence", "cohort_result_source": other["uuid"]}]}),
        StatusCode::BAD_REQUEST, "same source cohort").await;
    refused(
        "alice",
        json!({"output_format": "csv", "nominative": true, "export_tables": [person(&ninas)]}),
        StatusCode::BAD_REQUEST,
        "not yours",
    )
    .await;
    refused(
        "alice",
        json!({"output_format": "csv", "nominative": true, "export_tables": [
            person(&mine), {"table_name": "condition_occurrence", "fhir_filter": e11}]}),
        StatusCode::BAD_REQUEST,
        "needs a source cohort",
    )
    .await;
    refused(
        "alice",
        json!({"output_format": "csv", "nominative": true, "export_tables": [
            person(&mine), {"table_name": "imaging_study", "cohort_result_source": mine["uuid"]}]}),
        StatusCode::BAD_REQUEST,
        "imaging_study",
    )
    .await;
    refused("alice", json!({"output_format": "csv", "nominative": true, "export_tables": [
            {"table_name": "person", "cohort_result_source": mine["uuid"], "columns": ["person_id", "shoe_size"]}]}),
        StatusCode::BAD_REQUEST, "shoe_size").await;
    refused("alice", json!({"output_format": "csv", "nominative": true, "export_tables": [
            person(&mine), {"table_name": "measurement", "cohort_result_source": mine["uuid"], "fhir_filter": e11}]}),
        StatusCode::BAD_REQUEST, "Condition").await;
    refused("alice", json!({"output_format": "csv", "nominative": true, "export_tables": [
            person(&mine), {"table_name": "condition_occurrence", "cohort_result_source": mine["uuid"],
                            "fhir_filter": "00000000-0000-0000-0000-000000000000"}]}),
        StatusCode::BAD_REQUEST, "does not exist or is not yours").await;
    // Upstream skips the perimeters its owner cannot read at all; here they refuse the export.
    refused(
        "carol",
        json!({"output_format": "csv", "nominative": true, "export_tables": [person(&carols)]}),
        StatusCode::BAD_REQUEST,
        "perimeter 1",
    )
    .await;
    let bobs = diabetics(&app, "bob", &["0"]).await;
    refused(
        "bob",
        json!({"output_format": "hive", "nominative": false, "export_tables": [person(&bobs)]}),
        StatusCode::BAD_REQUEST,
        "datalab",
    )
    .await;

    // An owner without a usable e-mail address would never hear of the export.
    app.state
        .identity_service
        .create_user(
            &tests::identity::system(),
            &commands::identity::Requester::System,
            commands::identity::NewUser {
                username: "noemail".into(),
                firstname: "No".into(),
                lastname: "Mail".into(),
                email: None,
                password: Some("pw-noemail-12345".into()),
            },
        )
        .await
        .unwrap();
    grant(&app, &fixture, "noemail", "csv_exporter", APHP).await;
    let theirs = diabetics(&app, "noemail", &["0"]).await;
    refused(
        "noemail",
        json!({"output_format": "csv", "nominative": true, "export_tables": [person(&theirs)]}),
        StatusCode::BAD_REQUEST,
        "e-mail",
    )
    .await;

    // Datalab rules.
    user(&app, &fixture, "dana", "datalab_support").await;
    let provider = app
        .post(
            "/exports/infrastructure-providers/",
            "dana",
            json!({"name": "Cloud"}),
        )
        .await;
    let lab = |name: &str| json!({"name": name, "infrastructure_provider": provider.body["uuid"]});
    assert_eq!(
        app.post("/exports/datalabs/", "dana", lab("my lab"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.post("/exports/datalabs/", "dana", lab("lab1"))
            .await
            .status,
        StatusCode::CREATED
    );
    let taken = app.post("/exports/datalabs/", "dana", lab("lab1")).await;
    assert_eq!(taken.status, StatusCode::BAD_REQUEST);
    assert_eq!(taken.body["code"], "datalab_name_taken", "{:?}", taken.body);
    assert_eq!(
        app.post("/exports/datalabs/", "alice", lab("lab2"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let orphan = app
        .post("/exports/datalabs/", "dana", json!({"name": "lab3", "infrastructure_provider": "00000000-0000-0000-0000-000000000000"}))
        .await;
    assert_eq!(orphan.status, StatusCode::BAD_REQUEST, "{:?}", orphan.body);
    let in_use = app
        .delete(
            &format!(
                "/exports/infrastructure-providers/{}/",
                provider.body["uuid"].as_str().unwrap()
            ),
            "dana",
        )
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{:?}", in_use.body);

    // Nothing was recorded by the refused requests.
    let exports: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Export'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(exports, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_subset_fails_the_export_and_tells_the_owner_and_the_admins() {
    let smtp = SmtpServer::start().await;
    let (app, fixture) = app_with(|s| {
        s.identity.smtp.smtp_port = smtp.port;
        s.exports.admins = "ops@example.org".into();
    })
    .await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    user(&app, &fixture, "root", "full_admin").await;
    let cohort = diabetics(&app, "alice", &["9999"]).await;
    // The SQL side accepts `_id` on conditions; the engine does not: the subset fails.
    let by_id = filter(&app, "alice", "Condition", "some ids", "_id=1,2,3").await;
    let created = app
        .post(
            "/exports/",
            "alice",
            json!({"output_format": "csv", "nominative": true, "export_tables": [
                {"table_name": "person", "cohort_result_source": cohort["uuid"]},
                {"table_name": "condition_occurrence", "cohort_result_source": cohort["uuid"], "fhir_filter": by_id},
            ]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let id = created.uuid();
    let done = export_to_end(&app, "alice", &id).await;
    assert_eq!(done["request_job_status"], "failed", "{done}");
    let message = done["request_job_fail_msg"].as_str().unwrap();
    assert!(
        message.contains("subset of table `condition_occurrence` failed"),
        "{message}"
    );
    assert!(
        done["request_job_id"].is_null(),
        "never sent to the exporter"
    );
    assert!(
        tests::eventually(tests::PATIENCE, || async {
            let r = smtp.received();
            r.iter().any(|m| {
                m.to.contains(&"alice@example.org".to_string()) && m.unfolded().contains("/exports")
            }) && r.iter().any(|m| {
                m.to.contains(&"ops@example.org".to_string()) && m.unfolded().contains(&id)
            })
        })
        .await,
        "the owner and the admins are told: {:?}",
        smtp.received()
            .iter()
            .map(|m| m.to.clone())
            .collect::<Vec<_>>()
    );

    // Retry and relaunch are for full admins; logs of an export without a task are a 400.
    let retry = format!("/exports/{id}/retry/");
    assert_eq!(
        app.post(&retry, "alice", json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get(&format!("/exports/{id}/logs/"), "root")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let retried = app.post(&retry, "root", json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);
    assert_eq!(retried.body["retried"], true);
    let again = export_to_end(&app, "alice", &id).await;
    assert_eq!(
        again["request_job_status"], "failed",
        "the same filter fails again"
    );
    let subsets: i64 = sqlx::query_scalar("SELECT count(*) FROM exports.subsets WHERE export = $1")
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(subsets, 2, "a retry asks for a new subset");
    let relaunched = app
        .post(&format!("/exports/{id}/relaunch/"), "root", json!({}))
        .await;
    assert_eq!(
        relaunched.status,
        StatusCode::CREATED,
        "{:?}",
        relaunched.body
    );
    assert_eq!(relaunched.body["owner"], "alice");
    assert_eq!(relaunched.body["relaunched_from"], id.as_str());
    assert_ne!(relaunched.body["uuid"], id.as_str());
    app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn files_are_downloadable_within_the_retention_window_then_cleaned() {
    let smtp = SmtpServer::start().await;
    // No retention at all: a finished export is expired at once.
    let (app, fixture) = app_with(|s| {
        s.identity.smtp.smtp_port = smtp.port;
        s.exports.keep_days = 0;
    })
    .await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    let cohort = diabetics(&app, "alice", &["0"]).await;
    let created = app
        .post(
            "/exports/",
            "alice",
            json!({"output_format": "csv", "nominative": true, "export_tables": [
                {"table_name": "person", "cohort_result_source": cohort["uuid"]}]}),
        )
        .await;
    let id = created.uuid();
    let done = export_to_end(&app, "alice", &id).await;
    assert_eq!(done["request_job_status"], "finished", "{done}");
    let archive = std::path::Path::new(&app.settings.exports.storage_dir).join(format!(
        "{}.zip",
        done["target_full_path"].as_str().unwrap()
    ));
    assert!(archive.exists(), "{archive:?}");
    let expired = download(&app, "alice", &id).await;
    assert_eq!(expired.status(), StatusCode::BAD_REQUEST);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["code"], "export_not_downloadable", "{body}");

    let ctx = tests::identity::system();
    let cleaned = app.state.exports.clean_expired(&ctx).await.unwrap();
    assert_eq!(cleaned, 1);
    assert!(!archive.exists(), "the file is deleted");
    assert_eq!(
        app.state.exports.clean_expired(&ctx).await.unwrap(),
        0,
        "once"
    );
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events.last().map(String::as_str),
        Some("ExportFilesCleaned"),
        "{events:?}"
    );
    assert!(
        tests::eventually(tests::PATIENCE, || async {
            smtp.received()
                .iter()
                .any(|m| m.unfolded().contains("supprim"))
        })
        .await,
        "the owner is told the files were deleted"
    );
    // The cleaner runs in the background: its write reaches the read model shortly after.
    assert!(
        tests::eventually(tests::PATIENCE, || async {
            let seen = app.get(&format!("/exports/{id}/"), "alice").await;
            !seen.body["clean_datetime"].is_null()
        })
        .await,
        "the export shows when its files were deleted"
    );
    app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn exportable_cohorts_and_filters_are_the_callers_own() {
    let (app, fixture) = app_with(|_| {}).await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    user(&app, &fixture, "bob", "csv_exporter").await;
    let cohort = diabetics(&app, "alice", &["0"]).await;
    filter(&app, "alice", "Condition", "T2D", "code=E11").await;
    let alices = app.get("/exports/cohorts/", "alice").await;
    assert_eq!(alices.body["count"], 1, "{:?}", alices.body);
    assert_eq!(alices.body["results"][0]["uuid"], cohort["uuid"]);
    assert_eq!(app.get("/exports/cohorts/", "bob").await.body["count"], 0);
    assert_eq!(
        app.get("/exports/fhir-filters/", "alice").await.body["count"],
        1
    );
    assert_eq!(
        app.get("/exports/fhir-filters/", "bob").await.body["count"],
        0
    );
    let anonymous = app.send(app.request(Method::GET, "/exports/")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

/// Waits for a new export of `owner` to end; returns it.
async fn export_of(app: &TestApp, owner: &str, body: Value) -> Value {
    let created = app.post("/exports/", owner, body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    export_to_end(app, owner, created.body["uuid"].as_str().unwrap()).await
}

#[tokio::test]
async fn through_the_export_api_exports_are_polled_to_their_end_and_failures_are_recorded() {
    let fake = tests::export_api::FakeExportApi::start().await;
    let (app, fixture) = app_with(|s| {
        s.exports.export_api_url = fake.url();
        s.exports.export_api_token = Some("export-5ecret".into());
        s.exports.hadoop_api_url = fake.url();
        s.exports.webhdfs_url = fake.url();
    })
    .await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    user(&app, &fixture, "root", "full_admin").await;
    let cohort = diabetics(&app, "alice", &["0"]).await;
    let group = group_of(&cohort);
    let body = json!({"output_format": "csv", "nominative": true, "export_tables": [
        {"table_name": "note", "cohort_result_source": cohort["uuid"]},
        {"table_name": "person", "cohort_result_source": cohort["uuid"]}]});

    // The Export API requires a person table: refused before anything is recorded.
    let without_person = app
        .post(
            "/exports/",
            "alice",
            json!({"output_format": "csv", "nominative": true, "export_tables": [
            {"table_name": "note", "cohort_result_source": cohort["uuid"]}]}),
        )
        .await;
    assert_eq!(
        without_person.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        without_person.body
    );
    assert!(without_person.body.to_string().contains("person"));

    // Success: the job names the cohort, the task is polled to its end, the archive the API
    // wrote to HDFS is downloaded through WebHDFS.
    let done = export_of(&app, "alice", body.clone()).await;
    assert_eq!(done["request_job_status"], "finished", "{done}");
    let job = &fake.jobs()[0];
    assert_eq!(job["tablesToExport"][0]["tableName"], "person");
    assert_eq!(job["tablesToExport"][0]["cohortId"], group.to_string());
    assert_eq!(
        job["output"]["filePath"],
        format!("{}.zip", done["target_full_path"].as_str().unwrap())
    );
    let id = done["uuid"].as_str().unwrap();
    let answer = download(&app, "alice", id).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let files = unzip(&answer.bytes().await.unwrap());
    assert_eq!(
        files[tests::export_api::EXPORTED_CSV_NAME],
        tests::export_api::EXPORTED_CSV
    );
    let logs = app.get(&format!("/exports/{id}/logs/"), "root").await;
    assert_eq!(
        logs.status,
        StatusCode::OK,
        "a finished export has no logs to show"
    );

    // A pseudonymized Hive export: the database is created and lent to `HIVE_USER` before the
    // job, and handed to the datalab's account once the job finished.
    user(&app, &fixture, "bob", "jupyter_pseudo_exporter").await;
    user(&app, &fixture, "dana", "datalab_support").await;
    let lab = datalab(&app, "dana", "Hadoop", "lab_t2d").await;
    let bobs = diabetics(&app, "bob", &["0"]).await;
    let hive = export_of(
        &app,
        "bob",
        json!({"output_format": "hive", "nominative": false, "datalab": lab["uuid"],
               "export_tables": [{"table_name": "person", "cohort_result_source": bobs["uuid"]}]}),
    )
    .await;
    assert_eq!(hive["request_job_status"], "finished", "{hive}");
    let location = format!("{}.db", hive["target_full_path"].as_str().unwrap());
    assert_eq!(
        fake.requests_to("/hadoop/hive/create_base_hive")[0].param("location"),
        Some(location.as_str())
    );
    let hive_job = fake.jobs().last().cloned().unwrap();
    assert_eq!(hive_job["pseudo"], "lab_t2d");
    assert_eq!(hive_job["output"]["databaseName"], hive["target_name"]);
    assert!(
        tests::eventually(tests::PATIENCE, || async {
            let chowns = fake.requests_to("/hadoop/hdfs/chown_directory");
            chowns.len() == 2
                && chowns[0].param("uid") == Some("hive")
                && chowns[1].param("uid") == Some("lab_t2d")
        })
        .await,
        "lent to HIVE_USER, then handed to the datalab"
    );

    // The API answering an error.
    fake.fail_yaml(500);
    let failed = export_of(&app, "alice", body.clone()).await;
    assert_eq!(failed["request_job_status"], "failed");
    assert!(
        failed["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{failed}"
    );
    assert!(
        !failed.to_string().contains("export-5ecret"),
        "no token in messages"
    );

    app.stop().await;

    // The task ending with an error (`fail_yaml` holds for a fake's life: a second one).
    let fake2 = tests::export_api::FakeExportApi::start().await;
    fake2.script_statuses(&["Pending", "FinishedWithError"]);
    let (app, fixture) = app_with(|s| {
        s.exports.export_api_url = fake2.url();
        s.exports.hadoop_api_url = fake2.url();
    })
    .await;
    user(&app, &fixture, "alice", "csv_exporter").await;
    user(&app, &fixture, "root", "full_admin").await;
    let cohort = diabetics(&app, "alice", &["0"]).await;
    let body = json!({"output_format": "csv", "nominative": true, "export_tables": [
        {"table_name": "person", "cohort_result_source": cohort["uuid"]}]});
    let failed = export_of(&app, "alice", body.clone()).await;
    assert_eq!(failed["request_job_status"], "failed", "{failed}");
    assert!(
        failed["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("SparkException"),
        "{failed}"
    );
    let id = failed["uuid"].as_str().unwrap();
    let logs = app.get(&format!("/exports/{id}/logs/"), "root").await;
    assert_eq!(logs.status, StatusCode::OK, "{:?}", logs.body);
    assert!(
        logs.body.to_string().contains("FinishedWithError"),
        "{:?}",
        logs.body
    );

    // The API going down while a task runs: five unanswered polls in a row fail the export.
    fake2.script_statuses(&["Pending"]);
    let created = app.post("/exports/", "alice", body.clone()).await;
    let running = created.uuid();
    assert!(
        tests::eventually(tests::PATIENCE, || async {
            let seen = app.get(&format!("/exports/{running}/"), "alice").await;
            seen.body["request_job_status"] == "pending" && !seen.body["request_job_id"].is_null()
        })
        .await,
        "the task is running"
    );
    fake2.down().await;
    let lost = export_to_end(&app, "alice", &running).await;
    assert_eq!(lost["request_job_status"], "failed");
    assert!(
        lost["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("5 times in a row"),
        "{lost}"
    );

    // The API down from the start.
    let down = export_of(&app, "alice", body).await;
    assert_eq!(down["request_job_status"], "failed");
    assert!(
        down["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{down}"
    );
    let logs = app
        .get(
            &format!("/exports/{}/logs/", down["uuid"].as_str().unwrap()),
            "root",
        )
        .await;
    assert_eq!(
        logs.status,
        StatusCode::BAD_REQUEST,
        "no task, no logs: {:?}",
        logs.body
    );
    app.stop().await;
}
