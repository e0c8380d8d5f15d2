//! Counts and cohorts through HTTP, a QueryExecutor on loopback, the websocket and NATS.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::executor::{Behaviour, TestExecutor};
use tests::identity::{APHP, add_user, grant, seed, user_with};
use tests::smtp::SmtpServer;
use tests::ws::{connect_as, next_job_status};
use tests::{TestApp, eventually, nats_url, query, settings, unique_id};

const WAIT: Duration = tests::PATIENCE;

/// An application wired to a loopback executor, with applicative tokens for the executor and
/// the ETL, the fixture tree, and `alice` (nominative reader on the whole tree, password "pw").
struct World {
    app: TestApp,
    executor: TestExecutor,
    qe_token: String,
    etl_token: String,
}

async fn world_with(tune: impl FnOnce(&mut infra::runtime::config::Settings)) -> World {
    let id = unique_id();
    let qe_token = format!("qe-{id}");
    let etl_token = format!("etl-{id}");
    let executor = TestExecutor::start(&qe_token).await;
    let mut s = settings(&id, &nats_url());
    s.identity.query_executor_token = Some(qe_token.clone());
    s.identity.solr_etl_token = Some(etl_token.clone());
    s.cohorts.query_executor_url = executor.url.clone();
    s.cohorts.reconcile_every_seconds = 0;
    tune(&mut s);
    let app = TestApp::spawn_with(s, id).await;
    executor.set_backend(&app.base);
    let fixture = seed(&app).await;
    add_user(&app, "alice", Some("pw-alice-123")).await;
    grant(&app, &fixture, "alice", "nominative_reader", APHP).await;
    user_with(&app, &fixture, "admin", "full_admin", APHP).await;
    add_user(&app, "mallory", None).await;
    World {
        app,
        executor,
        qe_token,
        etl_token,
    }
}

async fn world() -> World {
    world_with(|_| {}).await
}

/// A folder, a request and its first snapshot, owned by `user`: `(request, snapshot)`.
async fn snapshot(app: &TestApp, user: &str) -> (String, String) {
    let saved = tests::flows::saved_query(app, user, "HbA1c over 8%", &query(&["0", "1"])).await;
    (saved.request, saved.snapshot)
}

async fn count(app: &TestApp, user: &str, snapshot: &str) -> String {
    let dm = app
        .post(
            "/cohort/dated-measures/",
            user,
            json!({"request_query_snapshot_id": snapshot}),
        )
        .await;
    assert_eq!(dm.status, StatusCode::CREATED, "{:?}", dm.body);
    dm.uuid()
}

/// Waits until the dated measure (or cohort) at `path` has `status`; returns its body.
async fn until_status(app: &TestApp, user: &str, path: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = app.get(path, user).await.body;
        if body["request_job_status"] == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never became {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of a quoted-printable body, enough to search it.
fn unfolded(data: &str) -> String {
    tests::smtp::Received {
        data: data.to_string(),
        ..Default::default()
    }
    .unfolded()
}

async fn callback(app: &TestApp, token: &str, path: &str, body: Value) -> tests::Answer {
    app.send(
        app.request(Method::PATCH, path)
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn a_count_then_a_cohort_go_from_login_to_the_cohort_created_event() {
    let w = world().await;
    let app = &w.app;
    w.executor.set_count(1234);

    // Log in as the front-end does, and open its websocket.
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .header("AuthorizationMethod", "JWT")
                .json(&json!({"username": "alice", "password": "pw-alice-123"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let mut socket = connect_as(app, &token).await;
    // A subscriber of the public contract, as another system would be.
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut created = nats
        .subscribe(format!(
            "{}.public.cohort.created.v1",
            app.settings.nats_subject_prefix
        ))
        .await
        .unwrap();

    let (request_id, snapshot_id) = snapshot(app, "alice").await;
    let dm = app
        .send(
            app.request(Method::POST, "/cohort/dated-measures/")
                .bearer_auth(&token)
                .json(&json!({"request_query_snapshot_id": snapshot_id, "request_id": request_id, "stageDetails": "ratio"})),
        )
        .await;
    assert_eq!(dm.status, StatusCode::CREATED, "{:?}", dm.body);
    let dm_id = dm.uuid();
    assert_eq!(dm.body["count_outdated"], false);
    assert_eq!(dm.body["cohort_limit"], 20_000);

    // The executor's callback becomes a job_status message on the owner's socket.
    let message = next_job_status(&mut socket, &dm_id).await;
    assert_eq!(message["job_name"], "count");
    assert_eq!(message["status"], "finished", "{message}");
    assert_eq!(message["extra_info"]["measure"], 1234);
    assert_eq!(message["extra_info"]["snapshot_id"], snapshot_id.as_str());
    assert_eq!(message["extra_info"]["extra"]["criteria_ratio_1"], "7");

    // What the executor received is upstream's job.
    let jobs = w.executor.jobs_for(&dm_id);
    assert_eq!(jobs.len(), 1, "one submission per count");
    assert_eq!(jobs[0].mode, "count");
    assert_eq!(jobs[0].input["ownerEntityId"], "alice");
    assert_eq!(jobs[0].input["modeOptions"]["details"], "ratio");
    let sent: Value =
        serde_json::from_str(jobs[0].input["cohortDefinitionSyntax"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["sourcePopulation"]["caresiteCohortList"],
        json!(["0", "1"])
    );

    let read = app
        .get(&format!("/cohort/dated-measures/{dm_id}/"), "alice")
        .await;
    assert_eq!(read.body["measure"], 1234, "{:?}", read.body);
    assert_eq!(read.body["request_job_status"], "finished");
    // The job id may be recorded just after the (faster) callback.
    assert!(
        eventually(WAIT, || async {
            app.get(&format!("/cohort/dated-measures/{dm_id}/"), "alice")
                .await
                .body["request_job_id"]
                == jobs[0].job_id.as_str()
        })
        .await
    );

    // Save the cohort, with a global estimate.
    let cohort = app
        .send(
            app.request(Method::POST, "/cohort/cohorts/")
                .bearer_auth(&token)
                .json(&json!({
                    "name": "HbA1c cohort", "description": "2024",
                    "dated_measure_id": dm_id, "request_query_snapshot_id": snapshot_id,
                    "request_id": request_id, "global_estimate": true
                })),
        )
        .await;
    assert_eq!(cohort.status, StatusCode::CREATED, "{:?}", cohort.body);
    let cohort_id = cohort.uuid();

    let event = tokio::time::timeout(WAIT, created.next())
        .await
        .expect("a cohort created event in time")
        .expect("subscription open");
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["schema"], "cohort360.cohort.created.v1");
    assert_eq!(event["cohort_id"], cohort_id.as_str());
    assert_eq!(event["owner"], "alice");
    assert_eq!(event["size"], 1234);
    assert_eq!(event["snapshot_id"], snapshot_id.as_str());
    let group_id = event["group_id"].as_str().expect("a group id").to_string();

    let message = next_job_status(&mut socket, &cohort_id).await;
    assert_eq!(message["job_name"], "create");
    assert_eq!(message["status"], "finished", "{message}");
    assert_eq!(message["extra_info"]["group_id"], group_id.as_str());
    assert_eq!(message["extra_info"]["result_size"], 1234);

    // The global estimate counted the root's population and reports fuzzed bounds.
    let global_job = w
        .executor
        .jobs()
        .into_iter()
        .find(|j| j.mode == "count_all")
        .expect("a count_all job");
    let sent: Value =
        serde_json::from_str(global_job.input["cohortDefinitionSyntax"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["sourcePopulation"]["caresiteCohortList"],
        json!(["9999"])
    );
    let listed = until_status(
        app,
        "alice",
        &format!("/cohort/cohorts/{cohort_id}/"),
        "finished",
    )
    .await;
    assert!(
        eventually(WAIT, || async {
            let c = app
                .get(&format!("/cohort/cohorts/{cohort_id}/"), "alice")
                .await
                .body;
            c["measure_min"] == 1204 && c["measure_max"] == 1264
        })
        .await,
        "global bounds never arrived"
    );
    assert_eq!(listed["group_id"], group_id.as_str());
    assert_eq!(listed["result_size"], 1234);
    assert_eq!(listed["exportable"], true);
    assert_eq!(listed["request"]["uuid"], request_id.as_str());

    let list = app
        .get(
            &format!("/cohort/cohorts/?group_id={group_id}&status=finished"),
            "alice",
        )
        .await;
    assert_eq!(list.body["count"], 1, "{:?}", list.body);
    let snap = app
        .get(
            &format!("/cohort/request-query-snapshots/{snapshot_id}/"),
            "alice",
        )
        .await;
    assert_eq!(snap.body["cohort_results"][0]["uuid"], cohort_id.as_str());
    assert!(snap.body["dated_measures"].as_array().unwrap().len() >= 2);
    let request = app
        .get(&format!("/cohort/requests/{request_id}/"), "alice")
        .await;
    assert_eq!(request.body["query_snapshots"][0]["patients_count"], 1234);
    assert_eq!(request.body["query_snapshots"][0]["cohorts_count"], 1);

    // An auditor reads the lineage from events alone.
    let lineage = app
        .get(&format!("/audit/cohorts/{cohort_id}/lineage/"), "admin")
        .await;
    assert_eq!(lineage.status, StatusCode::OK, "{:?}", lineage.body);
    let types = |events: &Value| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        types(&lineage.body["query_version"]),
        ["QuerySnapshotSaved"]
    );
    // A fast executor's callback may overtake the answer to the submission, so the job id can
    // be recorded after the result: order aside, every step is in the log.
    let mut count_types = types(&lineage.body["counts"][0]);
    count_types.sort();
    assert_eq!(
        count_types,
        [
            "CountFinished",
            "CountRequested",
            "CountStarted",
            "CountSubmitted"
        ]
    );
    let payload = |events: &Value, event_type: &str| -> Value {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_type"] == event_type)
            .map(|e| e["payload"][event_type].clone())
            .unwrap_or(Value::Null)
    };
    let counts = &lineage.body["counts"][0];
    assert_eq!(payload(counts, "CountRequested")["snapshot_version"], 1);
    assert_eq!(
        payload(counts, "CountStarted")["job_id"],
        jobs[0].job_id.as_str()
    );
    assert_eq!(payload(counts, "CountFinished")["measure"], 1234);
    let cohort_events = &lineage.body["cohort"];
    assert_eq!(
        payload(cohort_events, "CohortRequested")["dated_measure"],
        dm_id.as_str()
    );
    assert!(payload(cohort_events, "CohortStarted")["job_id"].is_string());
    assert_eq!(
        payload(cohort_events, "CohortCreated")["group_id"],
        group_id.as_str()
    );
    w.app.stop().await;
}

#[tokio::test]
async fn error_killed_and_invalid_callbacks_end_the_count() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;

    w.executor.set_behaviour(Behaviour::Error);
    let failed = count(app, "alice", &snapshot_id).await;
    let body = until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{failed}/"),
        "failed",
    )
    .await;
    assert_eq!(body["request_job_fail_msg"], "Spark job failed");

    w.executor.set_behaviour(Behaviour::Killed);
    let killed = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{killed}/"),
        "cancelled",
    )
    .await;

    w.executor.set_behaviour(Behaviour::InvalidStatus);
    let invalid = count(app, "alice", &snapshot_id).await;
    let body = until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{invalid}/"),
        "failed",
    )
    .await;
    assert!(
        body["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("DONE-ISH"),
        "{body}"
    );

    // The callback itself is answered 400 when the status is not one.
    w.executor.set_behaviour(Behaviour::Hang);
    let hanging = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{hanging}/"),
        "started",
    )
    .await;
    let answer = callback(
        app,
        &w.qe_token,
        &format!("/cohort/dated-measures/{hanging}/"),
        json!({"request_job_status": "MAYBE"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
    assert_eq!(answer.body["code"], "invalid_job_status");
    let read = app
        .get(&format!("/cohort/dated-measures/{hanging}/"), "alice")
        .await;
    assert_eq!(read.body["request_job_status"], "failed");

    // Only the executor reports results.
    let forged = app
        .patch(
            &format!("/cohort/dated-measures/{hanging}/"),
            "alice",
            json!({"request_job_status": "FINISHED", "count": "1"}),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    w.app.stop().await;
}

#[tokio::test]
async fn duplicated_and_late_callbacks_change_nothing() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_behaviour(Behaviour::Duplicate);
    let dm = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "finished",
    )
    .await;
    // A late failure after the result.
    let late = callback(
        app,
        &w.qe_token,
        &format!("/cohort/dated-measures/{dm}/"),
        json!({"request_job_status": "ERROR", "message": "late"}),
    )
    .await;
    assert_eq!(late.status, StatusCode::OK, "{:?}", late.body);
    assert_eq!(late.body["request_job_status"], "finished");
    assert_eq!(late.body["measure"], 42);
    // Let the duplicate land, then count the events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let history = app
        .get(&format!("/audit/Count/{dm}/events/"), "admin")
        .await;
    let finished = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "CountFinished")
        .count();
    assert_eq!(finished, 1, "{:?}", history.body);
    assert_eq!(w.executor.jobs_for(&dm).len(), 1);
    w.app.stop().await;
}

#[tokio::test]
async fn a_newer_count_cancels_the_running_count_of_the_same_request() {
    let w = world().await;
    let app = &w.app;
    let (request_id, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_behaviour(Behaviour::Hang);
    let older = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{older}/"),
        "started",
    )
    .await;
    // A new version of the same request, counted: the older count is killed at the executor.
    let next = app
        .post(
            &format!("/cohort/request-query-snapshots/{snapshot_id}/next-snapshots/"),
            "alice",
            json!({"serialized_query": query(&["2"])}),
        )
        .await;
    assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
    w.executor.set_behaviour(Behaviour::Finish);
    let newer = count(app, "alice", next.body["uuid"].as_str().unwrap()).await;
    let old = until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{older}/"),
        "cancelled",
    )
    .await;
    assert!(
        old["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("newer count"),
        "{old}"
    );
    assert!(
        w.executor.jobs_for(&older)[0].deleted,
        "the executor job was deleted"
    );
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{newer}/"),
        "finished",
    )
    .await;
    let list = app
        .get(
            &format!("/cohort/dated-measures/?request_id={request_id}"),
            "alice",
        )
        .await;
    assert_eq!(list.body["count"], 2);
    w.app.stop().await;
}

#[tokio::test]
async fn a_lost_callback_is_reconciled_with_the_executor() {
    let w = world_with(|s| {
        s.cohorts.reconcile_after_seconds = 1;
        s.cohorts.reconcile_every_seconds = 1;
    })
    .await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_behaviour(Behaviour::LoseCallback);
    w.executor.set_count(77);
    let dm = count(app, "alice", &snapshot_id).await;
    let body = until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "finished",
    )
    .await;
    assert_eq!(body["measure"], 77);
    assert!(w.executor.jobs_for(&dm)[0].result["count"] == "77");

    // A feasibility study's lost callback too.
    w.executor.set_details(&[("9999", 77), ("0", 12)]);
    let study = app
        .post(
            "/cohort/feasibility-studies/",
            "alice",
            json!({"request_query_snapshot": snapshot_id}),
        )
        .await;
    let study_id = study.uuid();
    let body = until_status(
        app,
        "alice",
        &format!("/cohort/feasibility-studies/{study_id}/"),
        "finished",
    )
    .await;
    assert_eq!(body["total_count"], 77);
    w.app.stop().await;
}

#[tokio::test]
async fn the_creation_callback_sets_the_dated_measure_to_the_group_count() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_count(500);
    let dm = count(app, "alice", &snapshot_id).await;
    let dm_path = format!("/cohort/dated-measures/{dm}/");
    let counted = until_status(app, "alice", &dm_path, "finished").await;
    assert_eq!(counted["measure"], 500);
    // The data moved between the count and the cohort: the group holds 480 patients.
    w.executor.set_count(480);
    let cohort = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "Moved", "dated_measure": dm}),
        )
        .await;
    assert_eq!(cohort.status, StatusCode::CREATED, "{:?}", cohort.body);
    let id = cohort.uuid();
    let created = until_status(app, "alice", &format!("/cohort/cohorts/{id}/"), "finished").await;
    assert_eq!(created["result_size"], 480, "{created}");
    // As upstream: `group.count` is the dated measure's measure from now on.
    let measured = app.get(&dm_path, "alice").await.body;
    assert_eq!(measured["measure"], 480, "{measured}");
    w.app.stop().await;
}

#[tokio::test]
async fn a_large_cohort_stays_long_pending_until_the_etl_finishes_it() {
    let smtp = SmtpServer::start().await;
    let w = world_with(|s| {
        s.cohorts.cohort_size_limit = 100;
        s.identity.smtp.smtp_port = smtp.port;
    })
    .await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_count(500);
    let dm = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "finished",
    )
    .await;
    let mut socket = connect_as(app, &app.token("alice").await).await;
    w.executor.set_behaviour(Behaviour::LongPending);
    let cohort = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "Large", "dated_measure": dm}),
        )
        .await;
    assert_eq!(cohort.status, StatusCode::CREATED, "{:?}", cohort.body);
    let id = cohort.uuid();
    let message = next_job_status(&mut socket, &id).await;
    assert_eq!(message["status"], "long_pending", "{message}");
    // Pushed once the read model shows it.
    let body = app
        .get(&format!("/cohort/cohorts/{id}/"), "alice")
        .await
        .body;
    assert_eq!(body["request_job_status"], "long_pending");
    assert_eq!(body["exportable"], false, "over the size limit");
    assert!(body["group_id"].is_string(), "{body}");

    // The ETL's callback finishes it.
    let done = callback(
        app,
        &w.etl_token,
        &format!("/cohort/cohorts/{id}/"),
        json!({"request_job_status": "FINISHED"}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    let message = next_job_status(&mut socket, &id).await;
    assert_eq!(message["status"], "finished", "{message}");
    assert_eq!(message["extra_info"]["result_size"], 500);
    let history = app
        .get(&format!("/audit/Cohort/{id}/events/"), "admin")
        .await;
    let last = history.body.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["payload"]["CohortCreated"]["via_etl"], true, "{last}");

    // The owner is told by e-mail, once, even if the ETL calls back twice.
    let again = callback(
        app,
        &w.etl_token,
        &format!("/cohort/cohorts/{id}/"),
        json!({"request_job_status": "FINISHED"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(eventually(WAIT, || async { !smtp.received().is_empty() }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = smtp.received();
    assert_eq!(received.len(), 1, "one e-mail");
    assert_eq!(received[0].to, ["alice@example.org"]);
    assert!(
        received[0].data.contains("multipart/alternative"),
        "text and HTML"
    );
    assert!(
        unfolded(&received[0].data).contains("groupId="),
        "{}",
        received[0].data
    );
    w.app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn a_shared_request_is_announced_by_e_mail_when_asked() {
    let smtp = SmtpServer::start().await;
    let w = world_with(|s| s.identity.smtp.smtp_port = smtp.port).await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    add_user(app, "bob", None).await;
    let quiet = app
        .post(
            &format!("/cohort/request-query-snapshots/{snapshot_id}/share/"),
            "alice",
            json!({"recipients": "mallory"}),
        )
        .await;
    assert_eq!(quiet.status, StatusCode::CREATED, "{:?}", quiet.body);
    let told = app
        .post(
            &format!("/cohort/request-query-snapshots/{snapshot_id}/share/"),
            "alice",
            json!({"recipients": "bob", "notify_by_email": true, "name": "Shared HbA1c"}),
        )
        .await;
    assert_eq!(told.status, StatusCode::CREATED, "{:?}", told.body);
    assert!(eventually(WAIT, || async { !smtp.received().is_empty() }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = smtp.received();
    assert_eq!(received.len(), 1, "only the share that asked for it");
    assert_eq!(received[0].to, ["bob@example.org"]);
    assert!(
        unfolded(&received[0].data).contains("Shared HbA1c"),
        "{}",
        received[0].data
    );
    w.app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn an_unreachable_or_refusing_executor_fails_the_count_clearly() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_behaviour(Behaviour::Refuse);
    let refused = count(app, "alice", &snapshot_id).await;
    let body = until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{refused}/"),
        "failed",
    )
    .await;
    assert!(
        body["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("refused the job"),
        "{body}"
    );
    w.app.stop().await;

    // Nothing listens on the configured executor address.
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    user_with(&app, &fixture, "alice", "nominative_reader", APHP).await;
    let (_, snapshot_id) = snapshot(&app, "alice").await;
    let dm = count(&app, "alice", &snapshot_id).await;
    let body = until_status(
        &app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "failed",
    )
    .await;
    assert!(
        body["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn samples_cohort_rights_and_owner_scoping() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    let dm = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "finished",
    )
    .await;
    let parent = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "Parent", "dated_measure": dm}),
        )
        .await;
    let parent_id = parent.uuid();
    let parent = until_status(
        app,
        "alice",
        &format!("/cohort/cohorts/{parent_id}/"),
        "finished",
    )
    .await;
    let group_id = parent["group_id"].as_str().unwrap().to_string();

    // A sample queries the parent's group with the ratio.
    let bad = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "S", "parent_cohort": parent_id, "sampling_ratio": 1.5}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(bad.body["field"], "sampling_ratio");
    let sample = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "Half", "parent_cohort": parent_id, "sampling_ratio": 0.5}),
        )
        .await;
    assert_eq!(sample.status, StatusCode::CREATED, "{:?}", sample.body);
    let sample_id = sample.uuid();
    until_status(
        app,
        "alice",
        &format!("/cohort/cohorts/{sample_id}/"),
        "finished",
    )
    .await;
    let job = &w.executor.jobs_for(&sample_id)[0];
    assert_eq!(job.input["modeOptions"]["sampling"], 0.5);
    let sent: Value =
        serde_json::from_str(job.input["cohortDefinitionSyntax"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["sourcePopulation"]["caresiteCohortList"],
        json!([group_id])
    );
    let parent = app
        .get(&format!("/cohort/cohorts/{parent_id}/"), "alice")
        .await;
    assert_eq!(parent.body["sample_cohorts"][0]["uuid"], sample_id.as_str());
    let samples = app.get("/cohort/cohorts/?is_sample=true", "alice").await;
    assert_eq!(samples.body["count"], 1);

    // Rights on the cohort's perimeters (alice reads the whole tree nominatively).
    let rights = app
        .get(
            &format!("/cohort/cohorts/cohort-rights/?group_id={group_id}"),
            "alice",
        )
        .await;
    assert_eq!(rights.status, StatusCode::OK, "{:?}", rights.body);
    assert_eq!(rights.body[0]["cohort_id"], group_id.as_str());
    assert_eq!(rights.body[0]["rights"]["read_patient_nomi"], true);
    assert_eq!(rights.body[0]["rights"]["export_csv_xlsx_nomi"], false);
    let read = app
        .get(
            &format!("/accesses/perimeters/patient-data/read/?cohort_ids={group_id}"),
            "alice",
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    assert_eq!(read.body["allow_read_patient_data_nomi"], true);

    // Someone else sees nothing, changes nothing, deletes nothing.
    for path in [
        format!("/cohort/cohorts/{parent_id}/"),
        format!("/cohort/dated-measures/{dm}/"),
    ] {
        assert_eq!(
            app.get(&path, "mallory").await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        app.get(
            &format!("/cohort/cohorts/cohort-rights/?group_id={group_id}"),
            "mallory"
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let steal = app
        .post(
            "/cohort/cohorts/",
            "mallory",
            json!({"name": "Mine", "dated_measure": dm}),
        )
        .await;
    assert_eq!(steal.status, StatusCode::NOT_FOUND, "{:?}", steal.body);
    let mixed = app
        .delete(
            &format!("/cohort/cohorts/{sample_id},{}/", uuid::Uuid::new_v4()),
            "alice",
        )
        .await;
    assert_eq!(mixed.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&format!("/cohort/cohorts/{sample_id}/"), "mallory")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // The owner edits the description fields, not the job's.
    let job_edit = app
        .patch(
            &format!("/cohort/cohorts/{parent_id}/"),
            "alice",
            json!({"request_job_status": "finished", "group_id": "1"}),
        )
        .await;
    assert_eq!(job_edit.status, StatusCode::BAD_REQUEST);
    let edit = app
        .patch(
            &format!("/cohort/cohorts/{parent_id}/"),
            "alice",
            json!({"name": "Renamed", "favorite": true}),
        )
        .await;
    assert_eq!(edit.status, StatusCode::OK, "{:?}", edit.body);
    assert_eq!(edit.body["name"], "Renamed");
    assert_eq!(edit.body["favorite"], true);
    let deleted = app
        .delete(&format!("/cohort/cohorts/{sample_id}/"), "alice")
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/cohort/cohorts/", "alice").await.body["count"], 1);

    // Anonymous callers are refused; authenticated ones see the active jobs count.
    let anonymous = app
        .call(Method::GET, "/cohort/cohorts/jobs/active/", None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let active = app.get("/cohort/cohorts/jobs/active/", "mallory").await;
    assert_eq!(active.body["jobs_count"], 0);

    // Bad input gets clear 4xx answers.
    let no_snapshot = app
        .post("/cohort/dated-measures/", "alice", json!({}))
        .await;
    assert_eq!(no_snapshot.status, StatusCode::BAD_REQUEST);
    let bad_details = app
        .post(
            "/cohort/dated-measures/",
            "alice",
            json!({"request_query_snapshot": snapshot_id, "stageDetails": "everything"}),
        )
        .await;
    assert_eq!(bad_details.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_details.body["field"], "stageDetails");
    let foreign = app
        .post(
            "/cohort/dated-measures/",
            "mallory",
            json!({"request_query_snapshot": snapshot_id}),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);

    // An export's subset goes through the same pipeline and stays out of the owner's lists.
    let ctx = commands::CommandContext {
        user: "alice".into(),
        impersonator: None,
        correlation_id: "export".into(),
        causation_id: "export".into(),
        at: chrono::Utc::now(),
    };
    let parent_uuid: uuid::Uuid = parent_id.parse().unwrap();
    let subset = app
        .state
        .cohorts
        .create_subset(
            &ctx,
            parent_uuid,
            "condition",
            Some(("Condition".into(), "code=E11".into())),
        )
        .await
        .expect("subset requested")
        .value
        .to_string();
    assert!(
        eventually(WAIT, || async {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT request_job_status FROM cohorts.cohorts WHERE uuid = $1::uuid AND is_subset",
            )
            .bind(&subset)
            .fetch_optional(&app.pool)
            .await
            .unwrap();
            status.as_deref() == Some("finished")
        })
        .await,
        "the subset is created"
    );
    let job = &w.executor.jobs_for(&subset)[0];
    let sent: Value =
        serde_json::from_str(job.input["cohortDefinitionSyntax"].as_str().unwrap()).unwrap();
    assert_eq!(sent["resourceType"], "Condition");
    assert_eq!(sent["request"]["criteria"][0]["filterFhir"], "code=E11");
    assert_eq!(
        app.get(&format!("/cohort/cohorts/{subset}/"), "alice")
            .await
            .status,
        StatusCode::NOT_FOUND,
        "subsets are not the owner's to list"
    );

    // The cohorts read model equals a fresh fold of the log.
    let head = tests::last_event_cursor(&app.pool).await;
    assert!(
        eventually(WAIT, || async {
            tests::projection_checkpoint(&app.pool, "cohorts").await.0 == head
        })
        .await
    );
    let live = tests::dump_schema(&app.pool, "cohorts").await;
    infra::rebuild::rebuild(&app.pool, &infra::cohorts::CohortsProjection)
        .await
        .expect("rebuild");
    assert_eq!(tests::dump_schema(&app.pool, "cohorts").await, live);
    w.app.stop().await;
}

#[tokio::test]
async fn saved_fhir_filters_are_owner_scoped_unique_and_keep_their_history() {
    let app = TestApp::spawn().await;
    for user in ["alice", "mallory"] {
        add_user(&app, user, None).await;
    }
    let body = |name: &str, filter: &str| json!({"fhir_resource": "Condition", "fhir_version": "4.0.1", "name": name, "filter": filter});
    let created = app
        .post(
            "/cohort/fhir-filters/",
            "alice",
            body("Diabetes", "&code=E11&"),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["filter"], "code=E11", "stripped of & and =");
    assert_eq!(created.body["query_version"], "v1.4.4");
    let id = created.uuid();

    let twin = app
        .post(
            "/cohort/fhir-filters/",
            "alice",
            body("diabetes", "code=E10"),
        )
        .await;
    assert_eq!(twin.status, StatusCode::BAD_REQUEST);
    assert_eq!(twin.body["code"], "fhir_filter_name_taken");
    let short = app
        .post("/cohort/fhir-filters/", "alice", body("D", "x"))
        .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert_eq!(short.body["field"], "name");
    // Another user may use the same name.
    let theirs = app
        .post(
            "/cohort/fhir-filters/",
            "mallory",
            body("Diabetes", "code=E11"),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    let hidden = app
        .post(
            "/cohort/fhir-filters/",
            "alice",
            json!({"fhir_resource": "Patient", "fhir_version": "4.0.1", "name": "auto", "filter": "x", "auto_generated": true}),
        )
        .await;
    assert_eq!(hidden.status, StatusCode::CREATED);

    let list = app
        .get("/cohort/fhir-filters/?fhir_resource=Condition", "alice")
        .await;
    assert_eq!(
        list.body["count"], 1,
        "auto-generated and others' filters are not listed"
    );
    let edited = app
        .patch(
            &format!("/cohort/fhir-filters/{id}/"),
            "alice",
            json!({"filter": "code=E10"}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{:?}", edited.body);
    assert_eq!(edited.body["filter"], "code=E10");
    let history = app
        .get(&format!("/audit/FhirFilter/{id}/events/"), "alice")
        .await;
    assert_eq!(
        history.status,
        StatusCode::FORBIDDEN,
        "auditing is for administrators"
    );
    let patches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cohorts.fhir_filter_patches WHERE filter = $1::uuid AND filter_text = 'code=E11'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(patches, 1);

    assert_eq!(
        app.get(&format!("/cohort/fhir-filters/{id}/"), "mallory")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let foreign = app
        .send(
            app.request(Method::DELETE, "/cohort/fhir-filters/delete_multiple/")
                .bearer_auth(app.token("mallory").await)
                .json(&json!({"uuids": [id]})),
        )
        .await;
    assert_eq!(
        foreign.status,
        StatusCode::NOT_FOUND,
        "ownership is checked"
    );
    let deleted = app
        .send(
            app.request(Method::DELETE, "/cohort/fhir-filters/delete_multiple/")
                .bearer_auth(app.token("alice").await)
                .json(&json!({"uuids": [id]})),
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/cohort/fhir-filters/", "alice").await.body["count"],
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_feasibility_study_reports_bucketed_counts_per_perimeter() {
    let smtp = SmtpServer::start().await;
    let w = world_with(|s| {
        s.identity.smtp.smtp_port = smtp.port;
        s.cohorts.reporting_perimeter_types = "Groupe hospitalier (GH)".into();
    })
    .await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_count(1234);
    w.executor
        .set_details(&[("9999", 1234), ("0", 25), ("1", 5), ("3", 400)]);
    let study = app
        .post(
            "/cohort/feasibility-studies/",
            "alice",
            json!({"request_query_snapshot": snapshot_id}),
        )
        .await;
    assert_eq!(study.status, StatusCode::CREATED, "{:?}", study.body);
    let id = study.uuid();
    let done = until_status(
        app,
        "alice",
        &format!("/cohort/feasibility-studies/{id}/"),
        "finished",
    )
    .await;
    assert_eq!(done["total_count"], 1234);

    // The executor counted the whole institution, per perimeter, and called back where told.
    let job = &w.executor.jobs_for(&id)[0];
    assert_eq!(job.mode, "count_with_details");
    assert_eq!(
        job.input["callbackPath"],
        format!("/cohort/feasibility-studies/{id}/")
    );
    let sent: Value =
        serde_json::from_str(job.input["cohortDefinitionSyntax"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["sourcePopulation"]["caresiteCohortList"],
        json!(["9999"])
    );

    // The report: bucketed counts, down through the reporting types only.
    let download = app
        .send(
            app.request(
                Method::GET,
                &format!("/cohort/feasibility-studies/{id}/download/"),
            )
            .bearer_auth(app.token("alice").await),
        )
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.headers["content-type"], "application/zip");
    let raw = app
        .request(
            Method::GET,
            &format!("/cohort/feasibility-studies/{id}/download/"),
        )
        .bearer_auth(app.token("alice").await)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(raw.to_vec())).unwrap();
    let mut json_text = String::new();
    let mut html = String::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let target = if file.name().expect("an entry name").ends_with(".json") {
            &mut json_text
        } else {
            &mut html
        };
        std::io::Read::read_to_string(&mut file, target).unwrap();
    }
    let buckets: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(buckets["9999"], "1230-1240");
    assert_eq!(buckets["0"], "20-30");
    assert_eq!(buckets["1"], "< 10");
    assert_eq!(buckets["2"], "0");
    assert!(
        buckets.get("3").is_none(),
        "hospitals are not a reporting type here"
    );
    assert!(
        html.contains("HbA1c over 8%") && html.contains("20-30"),
        "{html}"
    );

    // Only the owner downloads; the owner is told it was requested, then that it is ready.
    assert_eq!(
        app.get(
            &format!("/cohort/feasibility-studies/{id}/download/"),
            "mallory"
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert!(eventually(WAIT, || async { smtp.received().len() >= 2 }).await);
    let subjects: Vec<String> = smtp.received().iter().map(|m| unfolded(&m.data)).collect();
    assert!(
        subjects
            .iter()
            .any(|d| d.contains("/download/feasibility-studies/"))
    );

    // A finished report without per-perimeter counts fails the study.
    w.executor.set_details(&[]);
    let empty = app
        .post(
            "/cohort/feasibility-studies/",
            "alice",
            json!({"request_query_snapshot": snapshot_id}),
        )
        .await;
    let empty_id = empty.uuid();
    let failed = until_status(
        app,
        "alice",
        &format!("/cohort/feasibility-studies/{empty_id}/"),
        "failed",
    )
    .await;
    assert!(
        failed["request_job_fail_msg"]
            .as_str()
            .unwrap()
            .contains("per-perimeter")
    );
    w.app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn a_refresh_schedule_appends_a_new_count_at_each_run() {
    let smtp = SmtpServer::start().await;
    let w = world_with(|s| {
        s.identity.smtp.smtp_port = smtp.port;
        s.cohorts.refresh_check_seconds = 1;
    })
    .await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_count(321);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .format("%H:%M:%S")
        .to_string();
    let bad = app
        .post(
            "/cohort/refresh-schedules/",
            "alice",
            json!({"request_snapshot": snapshot_id, "refresh_time": "25:00", "refresh_frequency": "daily"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["field"], "refresh_time");
    let created = app
        .post(
            "/cohort/refresh-schedules/",
            "alice",
            json!({"request_snapshot": snapshot_id, "refresh_time": soon, "refresh_frequency": "daily", "notify_owner": true}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(created.body["refresh_time"], soon.as_str());
    let id = created.uuid();
    let twice = app
        .post(
            "/cohort/refresh-schedules/",
            "alice",
            json!({"request_snapshot": snapshot_id, "refresh_time": "06:00", "refresh_frequency": "weekly"}),
        )
        .await;
    assert_eq!(
        twice.status,
        StatusCode::BAD_REQUEST,
        "one schedule per snapshot"
    );
    assert_eq!(
        app.post(
            "/cohort/refresh-schedules/",
            "mallory",
            json!({"request_snapshot": snapshot_id, "refresh_time": "06:00"}),
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // The scheduler runs it: a count, its result on the schedule, an e-mail.
    assert!(
        eventually(WAIT, || async {
            app.get(&format!("/cohort/refresh-schedules/{id}/"), "alice")
                .await
                .body["last_refresh_succeeded"]
                == true
        })
        .await
    );
    let schedule = app
        .get(&format!("/cohort/refresh-schedules/{id}/"), "alice")
        .await
        .body;
    assert_eq!(schedule["last_refresh_count"], 321);
    let first_count = schedule["last_refresh_dated_measure"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(eventually(WAIT, || async { !smtp.received().is_empty() }).await);
    assert!(unfolded(&smtp.received()[0].data).contains("321"));

    // The same slot never runs twice; the next one is a new count.
    let ctx = commands::CommandContext {
        user: "system".into(),
        impersonator: None,
        correlation_id: "t".into(),
        causation_id: "t".into(),
        at: chrono::Utc::now(),
    };
    let schedule_id: uuid::Uuid = id.parse().unwrap();
    let again = app
        .state
        .schedules
        .run_due(&ctx, schedule_id, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(again, None);
    let tomorrow = app
        .state
        .schedules
        .run_due(
            &ctx,
            schedule_id,
            chrono::Utc::now() + chrono::Duration::days(1),
        )
        .await
        .unwrap()
        .expect("the next day's run");
    assert_ne!(tomorrow.to_string(), first_count);
    let runs = app
        .get(&format!("/audit/RefreshSchedule/{id}/events/"), "admin")
        .await;
    let ran = runs
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "RefreshScheduleRan")
        .count();
    assert_eq!(ran, 2);

    let deleted = app
        .delete(&format!("/cohort/refresh-schedules/{id}/"), "alice")
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/cohort/refresh-schedules/", "alice").await.body["count"],
        0
    );
    w.app.stop().await;
    smtp.stop();
}

#[tokio::test]
async fn executor_callbacks_pass_a_full_maintenance() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_behaviour(Behaviour::Hang);
    let dm = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "started",
    )
    .await;
    let now = chrono::Utc::now();
    let phase = app
        .post(
            "/maintenances/",
            "admin",
            json!({
                "subject": "upgrade", "message": "back soon", "type": "full",
                "start_datetime": (now - chrono::Duration::minutes(1)).to_rfc3339(),
                "end_datetime": (now + chrono::Duration::hours(1)).to_rfc3339(),
            }),
        )
        .await;
    assert_eq!(phase.status, StatusCode::CREATED, "{:?}", phase.body);
    let path = format!("/cohort/dated-measures/{dm}/");
    assert!(
        eventually(WAIT, || async {
            app.get(&path, "alice").await.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await,
        "users are kept out"
    );
    let answer = callback(
        app,
        &w.qe_token,
        &path,
        json!({"request_job_status": "FINISHED", "count": "9"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["measure"], 9);
    w.app.stop().await;
}

#[tokio::test]
async fn deleting_a_cohort_being_created_kills_its_job() {
    let w = world().await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    let dm = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "finished",
    )
    .await;
    w.executor.set_behaviour(Behaviour::Hang);
    let cohort = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "Doomed", "dated_measure": dm}),
        )
        .await;
    let id = cohort.uuid();
    until_status(app, "alice", &format!("/cohort/cohorts/{id}/"), "started").await;
    let deleted = app.delete(&format!("/cohort/cohorts/{id}/"), "alice").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(
        eventually(WAIT, || async { w.executor.jobs_for(&id)[0].deleted }).await,
        "the executor job was killed"
    );
    assert!(
        eventually(WAIT, || async {
            let history = app
                .get(&format!("/audit/Cohort/{id}/events/"), "admin")
                .await;
            history
                .body
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["payload"]["CohortCancelled"]["message"] == "the cohort was deleted")
        })
        .await
    );
    w.app.stop().await;
}

#[tokio::test]
async fn replaying_every_event_to_the_reactors_submits_and_mails_nothing_twice() {
    let smtp = SmtpServer::start().await;
    let w = world_with(|s| {
        s.cohorts.cohort_size_limit = 100;
        s.identity.smtp.smtp_port = smtp.port;
    })
    .await;
    let app = &w.app;
    let (_, snapshot_id) = snapshot(app, "alice").await;
    w.executor.set_count(500);
    let dm = count(app, "alice", &snapshot_id).await;
    until_status(
        app,
        "alice",
        &format!("/cohort/dated-measures/{dm}/"),
        "finished",
    )
    .await;
    w.executor.set_behaviour(Behaviour::LongPending);
    let cohort = app
        .post(
            "/cohort/cohorts/",
            "alice",
            json!({"name": "Big", "dated_measure": dm}),
        )
        .await;
    let id = cohort.uuid();
    until_status(
        app,
        "alice",
        &format!("/cohort/cohorts/{id}/"),
        "long_pending",
    )
    .await;
    let etl = callback(
        app,
        &w.etl_token,
        &format!("/cohort/cohorts/{id}/"),
        json!({"request_job_status": "FINISHED"}),
    )
    .await;
    assert_eq!(etl.status, StatusCode::OK);
    assert!(eventually(WAIT, || async { smtp.received().len() == 1 }).await);
    let jobs_before = w.executor.jobs().len();
    assert_eq!(jobs_before, 2, "one count, one cohort");

    // Every reactor forgets where it was; a second instance replays the whole log to them.
    sqlx::query("UPDATE reactor_checkpoints SET txid = '0', position = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let other = api::startup::Application::build(&app.settings, shutdown.clone())
        .await
        .expect("second instance builds");
    let server = tokio::spawn(other.run_until_stopped(shutdown.clone()));
    let head = tests::last_event_cursor(&app.pool).await;
    assert!(
        eventually(WAIT, || async {
            let rows: Vec<String> =
                sqlx::query_scalar("SELECT txid::text || ':' || position FROM reactor_checkpoints")
                    .fetch_all(&app.pool)
                    .await
                    .unwrap();
            // executor, job_notifications, public_events, exports, export_mails, mail
            rows.len() == 6 && rows.iter().all(|r| *r == head)
        })
        .await,
        "the reactors caught up with the log"
    );
    assert_eq!(
        w.executor.jobs().len(),
        jobs_before,
        "nothing submitted twice"
    );
    assert_eq!(smtp.received().len(), 1, "no e-mail sent twice");
    shutdown.cancel();
    let _ = server.await;
    w.app.stop().await;
    smtp.stop();
}
