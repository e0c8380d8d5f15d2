//! The embedded executor on generated data: every criterion type counted by the engine equals a
//! straightforward SQL evaluation of the same question on the same Postgres; cohorts are stored
//! and usable as source populations; the front-end's count flow runs with no external service.

use infra::clinical::EmbeddedExecutor;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tests::flows::count_to_end;
use tests::identity::{APHP, Fixture, add_user, grant, seed};
use tests::ws::{connect_as, next_job_status};
use tests::{TestApp, settings, unique_id};

const PATIENTS: u64 = 2000;

/// An application using the embedded executor, with the fixture tree and generated data.
async fn app_with_data() -> (TestApp, Fixture) {
    app_with(PATIENTS, 11, |_| {}).await
}

/// [`app_with_data`] with `patients` generated from `seed` and tuned settings.
pub(super) async fn app_with(
    patients: u64,
    seed_value: u64,
    tune: impl FnOnce(&mut infra::runtime::config::Settings),
) -> (TestApp, Fixture) {
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.cohorts.query_executor_url = String::new();
    s.cohorts.reconcile_every_seconds = 0;
    tune(&mut s);
    let app = TestApp::spawn_with(s, id).await;
    let fixture = seed(&app).await;
    let g = infra::clinical::generate::generate(&app.pool, patients, seed_value)
        .await
        .expect("data generated");
    assert_eq!(g.patients, patients);
    (app, fixture)
}

pub(super) fn executor(pool: &PgPool) -> EmbeddedExecutor {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    EmbeddedExecutor::new(pool.clone(), tx)
}

pub(super) fn criterion(id: i64, resource: &str, filter: &str) -> Value {
    json!({"_type": "basicResource", "_id": id, "isInclusive": true, "resourceType": resource,
           "filterFhir": filter, "occurrence": {"n": 1, "operator": ">="}})
}

fn excluded(mut c: Value) -> Value {
    c["isInclusive"] = json!(false);
    c
}

pub(super) fn group(kind: &str, id: i64, criteria: Vec<Value>) -> Value {
    json!({"_type": kind, "_id": id, "isInclusive": true, "criteria": criteria, "temporalConstraints": []})
}

pub(super) fn query(population: &[&str], root: Value) -> String {
    json!({"version": "v1.6.1", "_type": "request",
           "sourcePopulation": {"caresiteCohortList": population}, "request": root})
    .to_string()
}

pub(super) async fn sql_count(pool: &PgPool, sql: &str) -> u64 {
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({sql}) q"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    n as u64
}

/// The engine's count, the same with every node counted on its own (stage details) and with
/// criteria restricted to the patients still in play (the fast path).
async fn engine_count(exec: &EmbeddedExecutor, query: &str) -> u64 {
    let (fast, _) = exec
        .evaluate(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let (staged, _) = exec
        .evaluate_with_stages(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    assert_eq!(fast.patients, staged.patients, "{query}");
    fast.patients.len()
}

/// The engine and SQL agree, on a count that says something (neither empty nor everyone).
async fn agree(
    exec: &EmbeddedExecutor,
    pool: &PgPool,
    what: &str,
    query: String,
    sql: &str,
) -> u64 {
    let expected = sql_count(pool, sql).await;
    let got = engine_count(exec, &query).await;
    assert_eq!(got, expected, "{what}");
    assert!(
        expected > 0 && expected < PATIENTS,
        "{what}: a telling case ({expected})"
    );
    expected
}

const C: &str = "SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'C'";

#[tokio::test]
async fn every_criterion_type_counts_what_sql_counts() {
    let (app, _) = app_with_data().await;
    let pool = &app.pool;
    let exec = executor(pool);
    let all = ["9999"];

    // The source population alone: P0's subtree.
    let p0 = "SELECT c.id FROM clinical.patients c WHERE c.perimeter_id IN (
        SELECT p.id FROM identity.perimeters p JOIN identity.perimeters t
        ON p.id_path LIKE t.id_path || '%' WHERE t.cohort_id = '0')";
    agree(
        &exec,
        pool,
        "no criteria",
        query(&["0"], group("andGroup", 0, vec![])),
        p0,
    )
    .await;

    // One code, and the generator's known sub-populations.
    let diabetes = agree(
        &exec,
        pool,
        "one code",
        query(
            &all,
            group(
                "andGroup",
                0,
                vec![criterion(
                    1,
                    "Condition",
                    "subject.active=true&code=https://smt.esante.gouv.fr/terminologie-cim-10/|E11",
                )],
            ),
        ),
        &format!("{C} AND code = 'E11'"),
    )
    .await;
    assert_eq!(diabetes, PATIENTS / 10, "every tenth patient is diabetic");
    let hba1c = agree(
        &exec,
        pool,
        "an observation value",
        query(&all, group("andGroup", 0, vec![criterion(1, "Observation", "code=http://loinc.org|4548-4&value-quantity=gt8")])),
        "SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '4548-4' AND value > 8",
    )
    .await;
    assert_eq!(
        hba1c,
        PATIENTS / 20,
        "every twentieth patient has an HbA1c over 8 %"
    );

    // Demography.
    agree(
        &exec,
        pool,
        "demography",
        query(&all, group("andGroup", 0, vec![criterion(1, "Patient", "active=true&gender=f&deceased=false&birthdate=le1975-06-30")])),
        "SELECT id FROM clinical.patients WHERE gender = 'f' AND NOT deceased AND birth_date <= '1975-06-30'",
    )
    .await;
    agree(
        &exec,
        pool,
        "age in months at the data's reference date",
        query(&all, group("andGroup", 0, vec![criterion(1, "Patient", "age-month=ge600")])),
        "SELECT id FROM clinical.patients WHERE birth_date + interval '600 months' <= date '2025-12-31'",
    )
    .await;
    agree(
        &exec,
        pool,
        "IPP list",
        query(
            &all,
            group(
                "andGroup",
                0,
                vec![criterion(
                    1,
                    "IPPList",
                    "identifier.value=8000000010,8000000020,8999999999",
                )],
            ),
        ),
        "SELECT id FROM clinical.patients WHERE ipp IN ('8000000010', '8000000020')",
    )
    .await;
    agree(
        &exec,
        pool,
        "long hospital stays in 2024",
        query(&all, group("andGroup", 0, vec![criterion(1, "Encounter", "class=hospit&length=ge5&date=ge2024-01-01&date=le2024-12-31")])),
        "SELECT DISTINCT patient_id FROM clinical.encounters WHERE class = 'hospit'
         AND end_at - start_at >= interval '5 days' AND start_at >= '2024-01-01' AND start_at < '2025-01-01'",
    )
    .await;

    // "Include missing dates", as the front-end writes it (every stored date is present).
    agree(
        &exec,
        pool,
        "a _filter on the encounter's start",
        query(&all, group("andGroup", 0, vec![criterion(1, "Condition",
            "code=E11&_filter=(encounter.period-start ge 2024-01-01 and encounter.period-start le 2024-06-30) or not (encounter.period-start eq \"*\")")])),
        "SELECT DISTINCT f.patient_id FROM clinical.facts f JOIN clinical.encounters e ON e.id = f.encounter_id
         WHERE f.resource = 'C' AND f.code = 'E11' AND e.start_at >= '2024-01-01' AND e.start_at < '2024-07-01'",
    )
    .await;

    // AND / OR / exclusion.
    agree(
        &exec,
        pool,
        "three criteria with AND, OR and an exclusion",
        query(&all, group("andGroup", 0, vec![
            criterion(1, "Condition", "code=E11"),
            group("orGroup", -1, vec![
                criterion(2, "Observation", "code=2345-7&value-quantity=ge200"),
                criterion(3, "MedicationRequest", "code=A10BA02"),
            ]),
            excluded(criterion(4, "Patient", "gender=m")),
        ])),
        &format!("({C} AND code = 'E11')
          INTERSECT (SELECT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '2345-7' AND value >= 200
                     UNION SELECT patient_id FROM clinical.facts WHERE resource = 'M' AND code = 'A10BA02')
          EXCEPT SELECT id FROM clinical.patients WHERE gender = 'm'"),
    )
    .await;
    agree(
        &exec,
        pool,
        "an exclusion inside an OR group",
        query(&["1"], group("orGroup", 0, vec![
            criterion(1, "Condition", "code=E11"),
            excluded(criterion(2, "Patient", "gender=f")),
        ])),
        "SELECT c.id FROM clinical.patients c WHERE c.perimeter_id IN (1, 6, 7)
           AND (c.gender = 'm' OR c.id IN (SELECT patient_id FROM clinical.facts WHERE resource = 'C' AND code = 'E11'))",
    )
    .await;
    let n_among_m = {
        let mut g = group(
            "nAmongM",
            -1,
            vec![
                criterion(1, "Condition", "code=E11"),
                criterion(2, "MedicationRequest", "code=A10BA02"),
                criterion(3, "Patient", "gender=f"),
            ],
        );
        g["nAmongMOptions"] = json!({"n": 2, "operator": ">="});
        group("andGroup", 0, vec![g])
    };
    agree(
        &exec,
        pool,
        "2 among 3",
        query(&all, n_among_m),
        "SELECT id FROM clinical.patients c WHERE
           (c.id IN (SELECT patient_id FROM clinical.facts WHERE resource = 'C' AND code = 'E11'))::int
         + (c.id IN (SELECT patient_id FROM clinical.facts WHERE resource = 'M' AND code = 'A10BA02'))::int
         + (c.gender = 'f')::int >= 2",
    )
    .await;

    // Occurrences.
    let mut thrice = criterion(1, "Observation", "code=718-7");
    thrice["occurrence"] = json!({"n": 3, "operator": ">="});
    agree(
        &exec,
        pool,
        "at least three occurrences",
        query(&all, group("andGroup", 0, vec![thrice])),
        "SELECT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '718-7'
         GROUP BY patient_id HAVING count(*) >= 3",
    )
    .await;
    let mut same_stay = criterion(1, "Observation", "code=718-7");
    same_stay["occurrence"] = json!({"n": 2, "operator": ">=", "sameEncounter": true});
    agree(
        &exec,
        pool,
        "two occurrences in one encounter",
        query(&all, group("andGroup", 0, vec![same_stay])),
        "SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '718-7'
         GROUP BY patient_id, encounter_id HAVING count(*) >= 2",
    )
    .await;
    let mut same_day = criterion(1, "Observation", "code=718-7");
    same_day["occurrence"] = json!({"n": 2, "operator": ">=", "sameDay": true});
    agree(
        &exec,
        pool,
        "two occurrences on one day",
        query(&all, group("andGroup", 0, vec![same_day])),
        "SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '718-7'
         GROUP BY patient_id, (at AT TIME ZONE 'UTC')::date HAVING count(*) >= 2",
    )
    .await;
    let mut exactly_once = criterion(1, "MedicationRequest", "code=A10BA02");
    exactly_once["occurrence"] = json!({"n": 1, "operator": "="});
    agree(
        &exec,
        pool,
        "exactly one occurrence",
        query(&all, group("andGroup", 0, vec![exactly_once])),
        "SELECT patient_id FROM clinical.facts WHERE resource = 'M' AND code = 'A10BA02'
         GROUP BY patient_id HAVING count(*) = 1",
    )
    .await;

    // Age at the event.
    let mut adult_dx = criterion(1, "Condition", "");
    adult_dx["patientAge"] = json!({"minAge": "18-0-0", "maxAge": "40-6-0"});
    agree(
        &exec,
        pool,
        "age at the event",
        query(&all, group("andGroup", 0, vec![adult_dx])),
        "SELECT DISTINCT f.patient_id FROM clinical.facts f JOIN clinical.patients p ON p.id = f.patient_id
         WHERE f.resource = 'C' AND (f.at AT TIME ZONE 'UTC')::date
           BETWEEN p.birth_date + interval '18 years' AND p.birth_date + interval '40 years 6 months'",
    )
    .await;

    // Temporal constraints.
    let mut same_encounter = group(
        "andGroup",
        0,
        vec![
            criterion(1, "Condition", "code=E11"),
            criterion(2, "Observation", "code=4548-4"),
        ],
    );
    same_encounter["temporalConstraints"] =
        json!([{"idList": [1, 2], "constraintType": "sameEncounter"}]);
    agree(
        &exec,
        pool,
        "same encounter",
        query(&all, same_encounter),
        "SELECT DISTINCT a.patient_id FROM clinical.facts a JOIN clinical.facts b
           ON b.encounter_id = a.encounter_id AND b.resource = 'O' AND b.code = '4548-4'
         WHERE a.resource = 'C' AND a.code = 'E11'",
    )
    .await;
    let mut ordered = group(
        "andGroup",
        0,
        vec![
            criterion(1, "Condition", "code=E11"),
            criterion(2, "Observation", "code=2345-7"),
        ],
    );
    ordered["temporalConstraints"] = json!([{"idList": [1, 2], "constraintType": "directChronologicalOrdering",
        "timeRelationMinDuration": {"days": 1}, "timeRelationMaxDuration": {"days": 400}}]);
    agree(
        &exec,
        pool,
        "chronological order with delays",
        query(&all, ordered),
        "SELECT DISTINCT a.patient_id FROM clinical.facts a JOIN clinical.facts b
           ON b.patient_id = a.patient_id AND b.resource = 'O' AND b.code = '2345-7'
          AND b.at - a.at BETWEEN interval '1 day' AND interval '400 days'
         WHERE a.resource = 'C' AND a.code = 'E11'",
    )
    .await;
    let mut episode = group(
        "andGroup",
        0,
        vec![
            criterion(1, "Condition", "code=E11"),
            criterion(2, "Procedure", ""),
        ],
    );
    episode["temporalConstraints"] =
        json!([{"idList": "all", "constraintType": "sameEpisodeOfCare"}]);
    agree(
        &exec,
        pool,
        "same episode of care",
        query(&all, episode),
        "SELECT DISTINCT a.patient_id FROM clinical.facts a
           JOIN clinical.encounters ea ON ea.id = a.encounter_id
           JOIN clinical.facts b ON b.patient_id = a.patient_id AND b.resource = 'P'
           JOIN clinical.encounters eb ON eb.id = b.encounter_id AND eb.episode_id = ea.episode_id
         WHERE a.resource = 'C' AND a.code = 'E11'",
    )
    .await;

    // What the engine cannot evaluate is an error naming the criterion.
    for (filter, resource, needle) in [
        (
            "_filter=code eq E11",
            "Condition",
            "criterion 7: `_filter` on `code`",
        ),
        ("status=final", "DocumentReference", "DocumentReference"),
        ("code:above=E11", "Condition", "code:above"),
    ] {
        let q = query(
            &all,
            group("andGroup", 0, vec![criterion(7, resource, filter)]),
        );
        let err = exec.evaluate(&q).await.expect_err(filter);
        assert!(err.contains(needle), "{filter}: {err}");
    }
    let mut in_or = group(
        "orGroup",
        0,
        vec![
            criterion(1, "Condition", "code=E11"),
            criterion(2, "Observation", "code=4548-4"),
        ],
    );
    in_or["temporalConstraints"] = json!([{"idList": [1, 2], "constraintType": "sameEncounter"}]);
    let err = exec.evaluate(&query(&all, in_or)).await.expect_err("OR");
    assert!(err.contains("OR or nAmongM group 0"), "{err}");
    let err = exec
        .evaluate(&query(&["424242"], group("andGroup", 0, vec![])))
        .await
        .expect_err("unknown population");
    assert!(err.contains("424242"), "{err}");

    app.stop().await;
}

#[tokio::test]
async fn a_created_cohort_is_stored_sampled_deterministically_and_usable_as_a_population() {
    use commands::ports::{ExecutorMode, JobSubmission, QueryExecutor};
    let (app, _) = app_with_data().await;
    let pool = &app.pool;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = EmbeddedExecutor::new(pool.clone(), tx);
    let diabetics = query(
        &[&APHP.to_string()],
        group("andGroup", 0, vec![criterion(1, "Condition", "code=E11")]),
    );
    let job = |target: uuid::Uuid, sampling: Option<f64>| JobSubmission {
        mode: ExecutorMode::Create,
        query: diabetics.clone(),
        owner: "alice".into(),
        target,
        callback_path: None,
        sampling,
        details: None,
    };
    let sampled = uuid::Uuid::new_v4();
    let accepted = exec.submit(job(sampled, Some(0.5))).await.unwrap();
    assert_eq!(accepted.status, "RUNNING");
    let done = tokio::time::timeout(tests::PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.report.status, "FINISHED", "{:?}", done.report.message);
    let group_id: i64 = done.report.group_id.as_deref().unwrap().parse().unwrap();
    let size = done.report.count.unwrap() as u64;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM clinical.cohort_members WHERE group_id = $1")
            .bind(group_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(stored as u64, size);
    let total = PATIENTS / 10;
    assert!(
        size > total / 4 && size < total * 3 / 4,
        "about half of {total}: {size}"
    );
    let outsiders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM clinical.cohort_members m WHERE m.group_id = $1 AND NOT EXISTS (
           SELECT 1 FROM clinical.facts f WHERE f.patient_id = m.patient_id AND f.resource = 'C' AND f.code = 'E11')",
    )
    .bind(group_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(outsiders, 0, "a sample only holds the cohort's patients");
    // The status is kept for the reconciler.
    let status = exec.status(&accepted.job_id).await.unwrap().unwrap();
    assert_eq!(status.group_id, done.report.group_id);

    // The same cohort resubmitted finds its list; the cohort is a source population.
    exec.submit(job(sampled, Some(0.5))).await.unwrap();
    let again = rx.recv().await.unwrap();
    assert_eq!(again.report.group_id, done.report.group_id);
    let in_cohort = query(
        &[&group_id.to_string()],
        group("andGroup", 0, vec![criterion(1, "Patient", "gender=f")]),
    );
    let (evaluation, _) = exec.evaluate(&in_cohort).await.unwrap();
    let women: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM clinical.cohort_members m JOIN clinical.patients p ON p.id = m.patient_id
         WHERE m.group_id = $1 AND p.gender = 'f'",
    )
    .bind(group_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(evaluation.patients.len(), women as u64);

    // Another cohort with the same ratio draws another sample.
    exec.submit(job(uuid::Uuid::new_v4(), Some(0.5)))
        .await
        .unwrap();
    let other = rx.recv().await.unwrap();
    assert_ne!(other.report.group_id, done.report.group_id);
    app.stop().await;
}

#[tokio::test]
async fn the_front_end_count_flow_gives_the_real_number_with_no_external_service() {
    let (app, fixture) = app_with_data().await;
    add_user(&app, "alice", Some("pw-alice-123")).await;
    grant(&app, &fixture, "alice", "nominative_reader", APHP).await;
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "alice", "password": "pw-alice-123"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let mut socket = connect_as(&app, &token).await;

    let folder = app
        .post("/cohort/folders/", "alice", json!({"name": "Diabetes"}))
        .await;
    let request = app
        .post(
            "/cohort/requests/",
            "alice",
            json!({"name": "T2D", "parent_folder": folder.body["uuid"]}),
        )
        .await;
    let q = query(
        &["0", "1"],
        group(
            "andGroup",
            0,
            vec![
                criterion(
                    1,
                    "Condition",
                    "subject.active=true&code=https://smt.esante.gouv.fr/terminologie-cim-10/|E11",
                ),
                excluded(criterion(2, "Patient", "active=true&deceased=true")),
            ],
        ),
    );
    let snapshot = app
        .post(
            "/cohort/request-query-snapshots/",
            "alice",
            json!({"request": request.body["uuid"], "serialized_query": q}),
        )
        .await;
    assert_eq!(snapshot.status, StatusCode::CREATED, "{:?}", snapshot.body);
    let dm = app
        .send(
            app.request(Method::POST, "/cohort/dated-measures/")
                .bearer_auth(&token)
                .header("X-Trace-Id", "count-trace-1")
                .json(&json!({"request_query_snapshot_id": snapshot.body["uuid"], "stageDetails": "all"})),
        )
        .await;
    assert_eq!(dm.status, StatusCode::CREATED, "{:?}", dm.body);
    let dm_id = dm.uuid();

    let message = next_job_status(&mut socket, &dm_id).await;
    let expected = sql_count(
        &app.pool,
        "SELECT p.id FROM clinical.patients p WHERE NOT p.deceased AND p.perimeter_id IN (
           SELECT x.id FROM identity.perimeters x JOIN identity.perimeters t ON x.id_path LIKE t.id_path || '%'
           WHERE t.cohort_id IN ('0', '1'))
         AND p.id IN (SELECT patient_id FROM clinical.facts WHERE resource = 'C' AND code = 'E11')",
    )
    .await;
    assert!(expected > 0);
    assert_eq!(message["status"], "finished", "{message}");
    assert_eq!(message["extra_info"]["measure"], expected, "{message}");
    let extra = &message["extra_info"]["extra"];
    assert_eq!(extra["data_version"], "1", "{message}");
    assert_eq!(extra["criteria_count_0"], expected.to_string(), "{message}");
    // The result's event keeps the trace of the request that asked for the count.
    let correlation: String = sqlx::query_scalar(
        "SELECT metadata->>'correlation_id' FROM events WHERE aggregate_id = $1 AND event_type = 'CountFinished'",
    )
    .bind(&dm_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(correlation, "count-trace-1");

    // The cohort: its patients are stored and it gets a group id.
    let cohort = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "T2D alive", "dated_measure_id": dm_id, "request_query_snapshot_id": snapshot.body["uuid"]}),
        )
        .await;
    assert_eq!(cohort.status, StatusCode::CREATED, "{:?}", cohort.body);
    let cohort_id = cohort.uuid();
    let created = next_job_status(&mut socket, &cohort_id).await;
    assert_eq!(created["status"], "finished", "{created}");
    let body = app
        .get(&format!("/cohort/cohorts/{cohort_id}/"), "alice")
        .await
        .body;
    let group_id = body["group_id"].as_str().unwrap_or_default().to_string();
    let members: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM clinical.cohort_members WHERE group_id = $1::bigint",
    )
    .bind(&group_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(members as u64, expected, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_fhir_api_serves_the_callers_perimeters_and_pseudonymizes() {
    let (app, fixture) = app_with_data().await;
    // Nominative on P0 (subtree 0, 3, 4, 5, 11, 12), pseudonymized on P1 (1, 6, 7), nothing else.
    add_user(&app, "nora", None).await;
    grant(&app, &fixture, "nora", "nominative_reader", 0).await;
    add_user(&app, "paul", None).await;
    grant(&app, &fixture, "paul", "pseudo_reader", 1).await;
    add_user(&app, "nobody", None).await;
    let pool = &app.pool;
    let in_p0 = "SELECT id FROM clinical.patients WHERE perimeter_id IN (3, 4, 5, 11, 12)";

    let meta = app.get("/fhir/metadata", "nora").await;
    assert_eq!(meta.status, StatusCode::OK);
    assert_eq!(meta.body["resourceType"], "CapabilityStatement");
    let denied = app.get("/fhir/Patient?_summary=count", "nobody").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{:?}", denied.body);
    assert_eq!(denied.body["resourceType"], "OperationOutcome");

    // Counts and pages stay within the caller's perimeters.
    let total = app.get("/fhir/Patient?_summary=count", "nora").await;
    assert_eq!(
        total.body["total"],
        sql_count(pool, in_p0).await,
        "{:?}",
        total.body
    );
    assert!(total.body.get("entry").is_none());
    let women = app
        .get("/fhir/Patient?gender=female&_count=5", "nora")
        .await;
    assert_eq!(
        women.body["total"],
        sql_count(pool, &format!("{in_p0} AND gender = 'f'")).await
    );
    let entries = women.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let first = &entries[0]["resource"];
    assert_eq!(first["gender"], "female");
    assert!(
        first["identifier"][0]["value"]
            .as_str()
            .unwrap()
            .starts_with('8')
    );
    assert_eq!(first["birthDate"].as_str().unwrap().len(), 10);
    let next = women.body["link"][1]["url"].as_str().unwrap().to_string();
    assert!(next.contains("_offset=5"), "{next}");
    let page2 = app.get(&next, "nora").await;
    assert_ne!(page2.body["entry"][0]["resource"]["id"], first["id"]);

    // Pseudonymized readers: no identifier, no name, month of birth.
    let pseudo = app.get("/fhir/Patient?_count=3", "paul").await;
    let p = &pseudo.body["entry"][0]["resource"];
    assert!(
        p.get("identifier").is_none() && p.get("name").is_none(),
        "{p}"
    );
    assert_eq!(p["birthDate"].as_str().unwrap().len(), 7, "{p}");
    let by_ipp = app.get("/fhir/Patient?identifier=8000000010", "paul").await;
    assert_eq!(
        by_ipp.body["total"], 0,
        "pseudonymized readers cannot find an IPP"
    );

    // A patient outside the caller's perimeters is not found, inside it is.
    let outside: i64 =
        sqlx::query_scalar("SELECT min(id)::bigint FROM clinical.patients WHERE perimeter_id = 8")
            .fetch_one(pool)
            .await
            .unwrap();
    let inside: i64 =
        sqlx::query_scalar("SELECT min(id)::bigint FROM clinical.patients WHERE perimeter_id = 3")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        app.get(&format!("/fhir/Patient/{outside}"), "nora")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let one = app.get(&format!("/fhir/Patient/{inside}"), "nora").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["id"], inside.to_string());

    // Facts by patient and code, with values.
    let labs = app
        .get(
            &format!("/fhir/Observation?subject=Patient/{inside}&_count=100"),
            "nora",
        )
        .await;
    let hba1c = app
        .get(
            "/fhir/Observation?code=http://loinc.org|4548-4&_count=1",
            "nora",
        )
        .await;
    let lab = &hba1c.body["entry"][0]["resource"];
    assert_eq!(
        lab["code"]["coding"][0]["system"], "http://loinc.org",
        "{lab}"
    );
    assert_eq!(lab["code"]["coding"][0]["code"], "4548-4", "{lab}");
    assert_eq!(lab["valueQuantity"]["unit"], "%", "{lab}");
    assert_eq!(
        labs.body["total"],
        sql_count(
            pool,
            &format!(
                "SELECT id FROM clinical.facts WHERE resource = 'O' AND patient_id = {inside}"
            )
        )
        .await
    );
    let diabetes = app
        .get("/fhir/Condition?code=E11&_summary=count", "nora")
        .await;
    assert_eq!(
        diabetes.body["total"],
        sql_count(pool, &format!("SELECT id FROM clinical.facts WHERE resource = 'C' AND code = 'E11' AND patient_id IN ({in_p0})")).await
    );
    let stays = app
        .get(
            "/fhir/Encounter?class=hospit&date=ge2024-01-01&_summary=count",
            "nora",
        )
        .await;
    assert_eq!(
        stays.body["total"],
        sql_count(pool, &format!("SELECT id FROM clinical.encounters WHERE class = 'hospit' AND start_at >= '2024-01-01' AND patient_id IN ({in_p0})")).await
    );
    // `_list` restricts to a perimeter's patients.
    let listed = app
        .get("/fhir/Patient?_list=3&_summary=count", "nora")
        .await;
    assert_eq!(
        listed.body["total"],
        sql_count(
            pool,
            "SELECT id FROM clinical.patients WHERE perimeter_id = 3"
        )
        .await
    );

    // A created cohort as a List and a Group, within the reader's perimeters.
    {
        use commands::ports::{ExecutorMode, JobSubmission, QueryExecutor};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = EmbeddedExecutor::new(pool.clone(), tx);
        exec.submit(JobSubmission {
            mode: ExecutorMode::Create,
            query: query(
                &["9999"],
                group("andGroup", 0, vec![criterion(1, "Condition", "code=E11")]),
            ),
            owner: "nora".into(),
            target: uuid::Uuid::new_v4(),
            callback_path: None,
            sampling: None,
            details: None,
        })
        .await
        .unwrap();
        let group_id = rx.recv().await.unwrap().report.group_id.unwrap();
        let in_cohort_and_p0 = sql_count(
            pool,
            &format!("SELECT patient_id FROM clinical.cohort_members WHERE group_id = {group_id} AND patient_id IN ({in_p0})"),
        )
        .await;
        assert!(in_cohort_and_p0 > 0);
        let g = app.get(&format!("/fhir/Group/{group_id}"), "nora").await;
        assert_eq!(g.body["resourceType"], "Group", "{:?}", g.body);
        assert_eq!(g.body["quantity"], in_cohort_and_p0);
        let l = app.get(&format!("/fhir/List/{group_id}"), "nora").await;
        assert_eq!(
            l.body["entry"].as_array().unwrap().len() as u64,
            in_cohort_and_p0
        );
        let cohort_patients = app
            .get(
                &format!("/fhir/Patient?_list={group_id}&_summary=count"),
                "nora",
            )
            .await;
        assert_eq!(cohort_patients.body["total"], in_cohort_and_p0);
        assert_eq!(
            app.get("/fhir/Group/999", "nora").await.status,
            StatusCode::NOT_FOUND
        );
    }

    // What the server does not answer is a clear 400.
    let unsupported = app
        .get("/fhir/Condition?_filter=code%20eq%20E11", "nora")
        .await;
    assert_eq!(unsupported.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unsupported.body["issue"][0]["details"]["coding"][0]["code"],
        "unsupported_search_parameter"
    );
    let unknown = app.get("/fhir/ImagingStudy", "nora").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // Notes: their text only for the patients read nominatively.
    let with_text = |body: &Value| -> (usize, usize) {
        let entries = body["entry"].as_array().unwrap();
        let has = entries
            .iter()
            .filter(|e| e["resource"]["content"][0]["attachment"]["data"].is_string())
            .count();
        (has, entries.len())
    };
    let nominative = app.get("/fhir/DocumentReference?_count=50", "nora").await;
    let (has, all) = with_text(&nominative.body);
    assert!(all > 0 && has == all, "{has} of {all}");
    let pseudonymized = app.get("/fhir/DocumentReference?_count=50", "paul").await;
    let (has, all) = with_text(&pseudonymized.body);
    assert!(all > 0 && has == 0, "{has} of {all}");
    let bad_count = app.get("/fhir/Patient?_count=-1", "nora").await;
    assert_eq!(bad_count.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn small_counts_are_a_bound_for_pseudonymized_readers_and_exact_for_nominative_ones() {
    let (app, fixture) = app_with(500, 3, |s| s.cohorts.small_cell_threshold = 10).await;
    add_user(&app, "nora", Some("pw-nora-12345")).await;
    grant(&app, &fixture, "nora", "nominative_reader", APHP).await;
    add_user(&app, "paul", Some("pw-paul-12345")).await;
    grant(&app, &fixture, "paul", "pseudo_reader", APHP).await;
    // What fixtures do when a write outruns read-your-writes: every projection catches up.
    app.settle().await;
    // Three known patients, and everyone.
    let three = query(
        &["9999"],
        group(
            "andGroup",
            0,
            vec![criterion(
                1,
                "IPPList",
                "identifier.value=8000000001,8000000002,8000000003",
            )],
        ),
    );
    let everyone = query(&["9999"], group("andGroup", 0, vec![]));

    let (dm, request, message) = count_to_end(&app, "paul", "pw-paul-12345", &three).await;
    assert_eq!(message["extra_info"]["measure"], "< 10", "{message}");
    assert_eq!(
        message["extra_info"]["extra"]["criteria_count_1"], "< 10",
        "{message}"
    );
    let seen = app
        .get(&format!("/cohort/dated-measures/{dm}/"), "paul")
        .await;
    assert_eq!(seen.body["measure"], "< 10", "{:?}", seen.body);
    let listed = app.get("/cohort/dated-measures/", "paul").await;
    assert_eq!(
        listed.body["results"][0]["measure"], "< 10",
        "{:?}",
        listed.body
    );
    let req = app
        .get(&format!("/cohort/requests/{request}/"), "paul")
        .await;
    assert_eq!(
        req.body["query_snapshots"][0]["patients_count"], "< 10",
        "{:?}",
        req.body
    );
    let renamed = app
        .patch(
            &format!("/cohort/requests/{request}/"),
            "paul",
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(
        renamed.body["query_snapshots"][0]["patients_count"], "< 10",
        "{:?}",
        renamed.body
    );
    let snaps = app.get("/cohort/request-query-snapshots/", "paul").await;
    assert_eq!(
        snaps.body["results"][0]["dated_measures"][0]["measure"], "< 10",
        "{:?}",
        snaps.body
    );
    // The stored result is exact: the audit trail keeps the truth.
    let stored: i64 =
        sqlx::query_scalar("SELECT measure FROM cohorts.dated_measures WHERE uuid = $1::uuid")
            .bind(&dm)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 3);

    // Large counts stay exact; nominative readers see small ones exactly.
    let (_, _, large) = count_to_end(&app, "paul", "pw-paul-12345", &everyone).await;
    assert_eq!(large["extra_info"]["measure"], 500, "{large}");
    let (dm, _, exact) = count_to_end(&app, "nora", "pw-nora-12345", &three).await;
    assert_eq!(exact["extra_info"]["measure"], 3, "{exact}");
    let seen = app
        .get(&format!("/cohort/dated-measures/{dm}/"), "nora")
        .await;
    assert_eq!(seen.body["measure"], 3, "{:?}", seen.body);
    app.stop().await;
}

#[tokio::test]
async fn global_estimates_are_fuzzed_and_details_count_every_perimeter_subtree() {
    use commands::ports::{ExecutorMode, JobSubmission, QueryExecutor};
    let (app, _) = app_with_data().await;
    let pool = &app.pool;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = EmbeddedExecutor::new(pool.clone(), tx);
    let diabetics = query(
        &["9999"],
        group("andGroup", 0, vec![criterion(1, "Condition", "code=E11")]),
    );
    let job = |mode| JobSubmission {
        mode,
        query: diabetics.clone(),
        owner: "alice".into(),
        target: uuid::Uuid::new_v4(),
        callback_path: None,
        sampling: None,
        details: None,
    };
    let exact = PATIENTS / 10;

    exec.submit(job(ExecutorMode::CountAll)).await.unwrap();
    let global = rx.recv().await.unwrap().report;
    assert_eq!(global.count, Some(exact as i64));
    let (min, max) = (global.minimum.unwrap(), global.maximum.unwrap());
    assert!((25..=50).contains(&(exact as i64 - min)), "{min}");
    assert!((25..=50).contains(&(max - exact as i64)), "{max}");

    exec.submit(job(ExecutorMode::CountWithDetails))
        .await
        .unwrap();
    let details = rx.recv().await.unwrap().report;
    assert_eq!(details.count, Some(exact as i64));
    for (cohort_id, subtree) in [
        ("9999", "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,9999"),
        ("0", "0,3,4,5,11,12"),
        ("4", "4,11,12"),
        ("13", "13"),
    ] {
        let expected = sql_count(
            pool,
            &format!(
                "SELECT DISTINCT f.patient_id FROM clinical.facts f JOIN clinical.patients p ON p.id = f.patient_id
                 WHERE f.resource = 'C' AND f.code = 'E11' AND p.perimeter_id IN ({subtree})"
            ),
        )
        .await;
        assert_eq!(
            details.extra[cohort_id],
            expected.to_string(),
            "perimeter {cohort_id}: {:?}",
            details.extra
        );
    }

    // A failing job reports ERROR with the reason.
    let mut bad = job(ExecutorMode::Count);
    bad.query = query(
        &["9999"],
        group("andGroup", 0, vec![criterion(3, "ImagingStudy", "")]),
    );
    exec.submit(bad).await.unwrap();
    let failed = rx.recv().await.unwrap().report;
    assert_eq!(failed.status, "ERROR");
    assert!(failed.message.unwrap().contains("criterion 3"));
    app.stop().await;
}

#[tokio::test]
async fn a_cohort_over_the_size_limit_does_not_stay_long_pending() {
    let (app, fixture) = app_with(1000, 5, |s| s.cohorts.cohort_size_limit = 50).await;
    add_user(&app, "nora", Some("pw-nora-12345")).await;
    grant(&app, &fixture, "nora", "nominative_reader", APHP).await;
    let diabetics = query(
        &["9999"],
        group("andGroup", 0, vec![criterion(1, "Condition", "code=E11")]),
    );
    let (dm, _, counted) = count_to_end(&app, "nora", "pw-nora-12345", &diabetics).await;
    assert_eq!(counted["extra_info"]["measure"], 100, "{counted}");
    let cohort = app
        .post(
            "/cohort/cohorts/",
            "nora",
            json!({"name": "Large", "dated_measure": dm}),
        )
        .await;
    assert_eq!(cohort.status, StatusCode::CREATED, "{:?}", cohort.body);
    let path = format!("/cohort/cohorts/{}/", cohort.body["uuid"].as_str().unwrap());
    // Upstream's open-source stack leaves such a cohort `long_pending` for an ETL that never
    // calls back; the embedded executor stores it and finishes it.
    let done = tests::eventually(tests::PATIENCE, || async {
        app.get(&path, "nora").await.body["request_job_status"] == "finished"
    })
    .await;
    let body = app.get(&path, "nora").await.body;
    assert!(done, "{body}");
    assert_eq!(body["result_size"], 100, "{body}");
    assert!(
        body["group_id"].as_str().is_some_and(|g| !g.is_empty()),
        "{body}"
    );
    app.stop().await;
}
