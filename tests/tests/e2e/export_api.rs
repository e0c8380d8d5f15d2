//! The Export API exporter and the WebHDFS storage against the loopback fake of the export
//! infrastructure (`tests::export_api`): the wire shapes of upstream's protocol, the Hive
//! database preparation and hand-over, failures, outages and timeouts. No application needed.

use std::io::Read;
use std::time::Duration;

use commands::ports::{ExportJob, ExportJobTable, ExportStorage, Exporter, ExporterError};
use domain::export::ExportFormat;
use domain::job::JobStatus;
use futures::TryStreamExt;
use infra::exports::export_api::{ExportApiExporter, ExportApiSettings};
use infra::exports::webhdfs::WebHdfsStorage;
use serde_json::json;
use tests::export_api::{EXPORTED_CSV, EXPORTED_CSV_NAME, FakeExportApi};
use uuid::Uuid;

const EXPORT_TOKEN: &str = "export-token-5ecret";
const HADOOP_TOKEN: &str = "hadoop-token-5ecret";
const HIVE_USER: &str = "hive_exporter";

/// An exporter on `fake`, polling fast.
fn exporter(fake: &FakeExportApi, logs_timeout: Duration) -> ExportApiExporter {
    ExportApiExporter::new(
        reqwest::Client::new(),
        ExportApiSettings {
            export_api_url: format!("{}/", fake.url()),
            export_api_token: EXPORT_TOKEN.into(),
            hadoop_api_url: fake.url(),
            hadoop_api_token: HADOOP_TOKEN.into(),
            hive_user: HIVE_USER.into(),
            disable_terminology: false,
            poll_interval: Duration::from_millis(10),
            http_timeout: Duration::from_secs(5),
            logs_timeout,
        },
    )
}

fn table(name: &str, cohort: Option<&str>) -> ExportJobTable {
    ExportJobTable {
        name: name.into(),
        columns: None,
        cohort_group_id: cohort.map(str::to_string),
        filter: None,
        respect_table_relationships: true,
        pivot_merge: false,
        pivot_merge_columns: vec![],
        pivot_merge_ids: vec![],
    }
}

/// A nominative CSV job whose `person` table is not first.
fn csv_job() -> ExportJob {
    let mut note = table("note", Some("2001"));
    note.columns = Some(vec!["note_id".into(), "note_text".into()]);
    ExportJob {
        export: Uuid::new_v4(),
        owner: "u1".into(),
        format: ExportFormat::Csv,
        nominative: true,
        shift_dates: true,
        group_tables: false,
        target_name: "u1_20260101_101112000001".into(),
        target_location: "/exports/csv/".into(),
        datalab: None,
        tables: vec![
            note,
            table("person", Some("1001")),
            table("condition_occurrence", None),
        ],
    }
}

/// A pseudonymized Hive job for datalab `lab_alpha`.
fn hive_job() -> ExportJob {
    ExportJob {
        export: Uuid::new_v4(),
        owner: "u1".into(),
        format: ExportFormat::Hive,
        nominative: false,
        shift_dates: true,
        group_tables: false,
        target_name: "lab_alpha_20260101_101112000002".into(),
        target_location: "/apps/hive/warehouse/exports".into(),
        datalab: Some("lab_alpha".into()),
        tables: vec![
            table("person", Some("1001")),
            table("visit_occurrence", Some("3003")),
        ],
    }
}

/// The refusal's message, or a failure naming what came instead.
fn refusal(result: Result<impl std::fmt::Debug, ExporterError>) -> String {
    match result {
        Err(ExporterError::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn export_api_csv_job_is_sent_as_upstream_and_polled_to_its_end() {
    let fake = FakeExportApi::start().await;
    let exporter = exporter(&fake, Duration::from_secs(5));
    let job = csv_job();
    assert!(
        exporter
            .check_tables(ExportFormat::Csv, &job.tables[..1])
            .unwrap_err()
            .contains("person")
    );
    assert_eq!(
        exporter.check_tables(ExportFormat::Csv, &job.tables),
        Ok(())
    );

    let task = exporter.submit(job.clone()).await.expect("submitted");
    assert!(task.starts_with("task-"), "{task}");
    assert!(fake.requests_to("/hadoop/hive/create_base_hive").is_empty());

    let posts = fake.requests_to("/yaml");
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.header("auth-token"), Some(EXPORT_TOKEN));
    let part = post.part.clone().expect("a file part");
    assert_eq!(part.name, "yaml_file");
    assert_eq!(part.file_name.as_deref(), Some("yaml_file.yaml"));
    assert_eq!(part.content_type.as_deref(), Some("application/x-yaml"));
    let doc = post.job.clone().expect("the job");
    assert_eq!(
        doc["tablesToExport"],
        json!([
            {"tableName": "person", "cohortId": "1001", "relation": true},
            {"tableName": "note", "cohortId": "2001", "relation": true,
             "columnsToExport": ["note_id", "note_text"]},
            {"tableName": "condition_occurrence", "relation": true}
        ])
    );
    assert_eq!(doc["overwrite"], json!(true));
    assert_eq!(
        doc["noDateShift"],
        json!(true),
        "nominative data keeps its dates"
    );
    assert_eq!(doc["disableTerminology"], json!(false));
    assert_eq!(doc["joinOnPrimaryKey"], json!(false));
    assert!(doc.get("pseudo").is_none() && doc.get("pivotMerge").is_none());
    assert_eq!(
        doc["output"],
        json!({"type": "csv", "filePath": "/exports/csv/u1_20260101_101112000001.zip"})
    );

    let mut seen = Vec::new();
    for _ in 0..4 {
        let report = exporter
            .status(&task)
            .await
            .expect("status")
            .expect("known");
        assert_eq!(report.message, None);
        seen.push(report.status);
    }
    assert_eq!(
        seen,
        [
            Some(JobStatus::Pending),
            Some(JobStatus::Started),
            Some(JobStatus::Finished),
            Some(JobStatus::Finished)
        ]
    );
    let polls = fake.requests_to("/api/task_status");
    assert_eq!(polls.len(), 4);
    assert_eq!(polls[0].param("task_uuid"), Some(task.as_str()));
    assert_eq!(polls[0].param("return_out_logs"), Some("True"));
    assert_eq!(polls[0].param("return_err_logs"), Some("True"));
    assert_eq!(polls[0].header("auth-token"), Some(EXPORT_TOKEN));

    let logs = exporter.logs(&task).await.expect("logs");
    assert_eq!(logs["task_status"], "FinishedSuccessfully");
    assert_eq!(logs["task_result"]["out"], "done");

    // The finished job's zip is downloaded from HDFS.
    let storage = WebHdfsStorage::new(reqwest::Client::new(), &fake.url(), None).expect("storage");
    let (size, stream) = storage
        .open("/exports/csv/u1_20260101_101112000001.zip")
        .await
        .expect("open")
        .expect("the zip exists");
    let bytes = stream.try_collect::<Vec<_>>().await.expect("read").concat();
    assert_eq!(size, Some(bytes.len() as u64));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut csv = Vec::new();
    archive
        .by_name(EXPORTED_CSV_NAME)
        .expect("the CSV")
        .read_to_end(&mut csv)
        .expect("read the CSV");
    assert_eq!(csv, EXPORTED_CSV);
}

#[tokio::test]
async fn export_api_hive_job_prepares_its_database_then_hands_it_over() {
    let fake = FakeExportApi::start().await;
    fake.script_hadoop_statuses(&["Pending", "Running", "FinishedSuccessfully"]);
    let exporter = exporter(&fake, Duration::from_secs(5));
    let job = hive_job();
    let location = "/apps/hive/warehouse/exports/lab_alpha_20260101_101112000002.db";

    exporter.submit(job.clone()).await.expect("submitted");
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/hadoop/hive/create_base_hive",
            "/hadoop/task_status",
            "/hadoop/task_status",
            "/hadoop/task_status",
            "/hadoop/hdfs/chown_directory",
            "/yaml"
        ]
    );
    let requests = fake.requests();
    let create = &requests[0];
    assert_eq!(create.method, "POST");
    assert_eq!(create.header("auth-token"), Some(HADOOP_TOKEN));
    assert_eq!(create.param("name"), Some(job.target_name.as_str()));
    assert_eq!(create.param("location"), Some(location));
    assert_eq!(create.param("if_not_exists"), Some("True"));
    assert_eq!(requests[1].param("task_uuid"), Some("task-0001"));
    assert_eq!(requests[1].header("auth-token"), Some(HADOOP_TOKEN));
    let chown = &requests[4];
    assert_eq!(chown.param("location"), Some(location));
    assert_eq!(chown.param("uid"), Some(HIVE_USER));
    assert_eq!(chown.param("gid"), Some("hdfs"));
    assert_eq!(chown.param("recursive"), Some("True"));

    let doc = requests[5].job.clone().expect("the job");
    assert_eq!(doc["pseudo"], json!("lab_alpha"));
    assert_eq!(
        doc["noDateShift"],
        json!(false),
        "pseudonymized dates are shifted"
    );
    assert_eq!(
        doc["output"],
        json!({"type": "hive", "databaseName": job.target_name})
    );
    assert_eq!(
        doc["tablesToExport"][1],
        json!({"tableName": "visit_occurrence", "cohortId": "3003", "relation": true})
    );
    assert!(doc.get("joinOnPrimaryKey").is_none());

    exporter.hand_over(&job).await.expect("handed over");
    let chowns = fake.requests_to("/hadoop/hdfs/chown_directory");
    assert_eq!(chowns.len(), 2);
    assert_eq!(chowns[1].param("uid"), Some("lab_alpha"));
    assert_eq!(chowns[1].param("location"), Some(location));

    fake.set_chown_answer(
        200,
        json!({"status": "success", "ret_code": 1, "out": "", "err": "chown: invalid user lab_alpha"}),
    );
    let message = refusal(exporter.hand_over(&job).await);
    assert!(
        message.contains("ret_code 1") && message.contains("invalid user lab_alpha"),
        "{message}"
    );

    // Nothing to hand over for files.
    let before = fake.requests().len();
    exporter.hand_over(&csv_job()).await.expect("no-op");
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn export_api_hive_preparation_failures_stop_the_job() {
    let fake = FakeExportApi::start().await;
    fake.script_hadoop_statuses(&["Running", "FinishedWithError"]);
    fake.set_error_log("Hive metastore unavailable");
    let exporter = exporter(&fake, Duration::from_secs(5));
    let message = refusal(exporter.submit(hive_job()).await);
    assert!(
        message.contains("ended failed") && message.contains("Hive metastore unavailable"),
        "{message}"
    );
    assert!(fake.requests_to("/hadoop/hdfs/chown_directory").is_empty());
    assert!(fake.requests_to("/yaml").is_empty());

    fake.script_hadoop_statuses(&["FinishedSuccessfully"]);
    fake.set_chown_answer(
        500,
        json!({"status": "error", "ret_code": 1, "err": "no such user"}),
    );
    let message = refusal(exporter.submit(hive_job()).await);
    assert!(message.contains("500"), "{message}");
    assert!(
        fake.requests_to("/yaml").is_empty(),
        "no job without its database"
    );

    // A job without `person` is refused before anything is created.
    let before = fake.requests().len();
    let mut job = hive_job();
    job.tables.remove(0);
    assert!(refusal(exporter.submit(job).await).contains("person"));
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn export_api_refusals_failures_timeouts_and_outages() {
    let fake = FakeExportApi::start().await;
    let exporter = exporter(&fake, Duration::from_millis(300));

    fake.fail_yaml(500);
    let message = refusal(exporter.submit(csv_job()).await);
    assert!(message.contains("500"), "{message}");
    assert!(message.contains("export refused by the fake"), "{message}");
    assert!(!message.contains(EXPORT_TOKEN));

    let other = FakeExportApi::start().await;
    other.script_statuses(&["Running", "FinishedWithError"]);
    other.set_error_log("java.lang.OutOfMemoryError: Java heap space");
    let exporter_b = self::exporter(&other, Duration::from_millis(300));
    let task = exporter_b.submit(csv_job()).await.expect("submitted");
    let first = exporter_b.status(&task).await.unwrap().unwrap();
    assert_eq!(first.status, Some(JobStatus::Started));
    let failed = exporter_b.status(&task).await.unwrap().unwrap();
    assert_eq!(failed.status, Some(JobStatus::Failed));
    let message = failed.message.expect("a failure message");
    assert!(
        message.contains("FinishedWithError") && message.contains("OutOfMemoryError"),
        "{message}"
    );
    assert!(
        other
            .file("/exports/csv/u1_20260101_101112000001.zip")
            .is_none()
    );

    // A task the API does not know is failed, as upstream maps `NotFound`.
    let unknown = exporter_b.status("no-such-task").await.unwrap().unwrap();
    assert_eq!(unknown.status, Some(JobStatus::Failed));
    assert!(unknown.message.unwrap().contains("NotFound"));

    // Logs past their timeout.
    other.delay_status(Duration::from_secs(3));
    let started = std::time::Instant::now();
    assert_eq!(exporter_b.logs(&task).await, Err(ExporterError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
    other.delay_status(Duration::ZERO);

    // Down: connections are refused.
    fake.down().await;
    assert!(matches!(
        exporter.status(&task).await,
        Err(ExporterError::Unreachable(_))
    ));
    assert!(matches!(
        exporter.submit(csv_job()).await,
        Err(ExporterError::Unreachable(_))
    ));
    let storage = WebHdfsStorage::new(reqwest::Client::new(), &fake.url(), None).expect("storage");
    assert!(storage.open("/exports/x.zip").await.is_err());
}

#[tokio::test]
async fn webhdfs_streams_through_the_redirect_and_deletes() {
    let fake = FakeExportApi::start().await;
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fake.put_file("/exports/csv/a b.zip", &content);
    // A client that does not follow redirects: the storage follows the namenode's by hand.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let storage = WebHdfsStorage::new(http, &fake.url(), Some("c360".into())).expect("storage");

    let (size, stream) = storage
        .open("/exports/csv/a b.zip")
        .await
        .expect("open")
        .expect("exists");
    assert_eq!(size, Some(content.len() as u64));
    let bytes = stream.try_collect::<Vec<_>>().await.expect("read").concat();
    assert_eq!(bytes, content);
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "the namenode, then the datanode");
    assert_eq!(requests[0].path, "/webhdfs/v1/exports/csv/a%20b.zip");
    assert_eq!(requests[0].param("op"), Some("OPEN"));
    assert_eq!(requests[0].param("user.name"), Some("c360"));
    assert_eq!(requests[1].path, "/datanode/v1/exports/csv/a%20b.zip");

    assert!(
        storage
            .open("/exports/csv/missing.zip")
            .await
            .expect("open")
            .is_none()
    );
    assert!(storage.open("/exports/../etc/passwd").await.is_err());

    assert!(
        storage
            .delete("/exports/csv/a b.zip")
            .await
            .expect("delete")
    );
    assert_eq!(fake.file("/exports/csv/a b.zip"), None);
    let delete = fake.requests().pop().expect("the delete");
    assert_eq!(
        (delete.method.as_str(), delete.param("op")),
        ("DELETE", Some("DELETE"))
    );
    assert!(
        !storage
            .delete("/exports/csv/a b.zip")
            .await
            .expect("delete again")
    );
}
