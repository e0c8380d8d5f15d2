//! The upstream Export API (with the Hadoop API for Hive databases), speaking upstream's
//! protocol (spec §5.1):
//!
//! * Hive only, before the job: `POST {HADOOP_API_URL}/hadoop/hive/create_base_hive` (query
//!   `name`, `location={target_full_path}.db`, `if_not_exists`), its task polled on
//!   `GET {HADOOP_API_URL}/hadoop/task_status`, then `POST /hadoop/hdfs/chown_directory` (query
//!   `location`, `uid={HIVE_USER}`, `gid=hdfs`, `recursive`) so that the exporter may write in it;
//! * the job: `POST {EXPORT_API_URL}/yaml`, a multipart part `yaml_file` holding the job, answered
//!   `{"task_id": …}`;
//! * its status and logs: `GET {EXPORT_API_URL}/api/task_status?task_uuid=…&return_out_logs=True&return_err_logs=True`;
//! * Hive only, after a finished job: the database directory is chowned to the datalab's account.
//!
//! Every call carries the API's token in an `auth-token` header; tokens never appear in errors
//! (they are also scrubbed from the excerpts of answers quoted in errors).
//!
//! The job is written as JSON, which is YAML 1.2 (a JSON document is a YAML flow mapping; PyYAML
//! reads it as well): no YAML emitter is needed and no quoting rule can be got wrong.
//!
//! The reqwest build of the workspace has no TLS: the APIs must be reached over plain HTTP (a
//! loopback or in-cluster address, or a TLS-terminating sidecar).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use commands::ports::{ExportJob, ExportJobTable, Exporter, ExporterError};
use domain::export::{ExportFormat, ExportReport};
use domain::job::JobStatus;
use serde_json::{Map, Value, json};

use crate::trace::Traced;

/// The table the Export API requires in every job (it carries the cohort).
pub const REQUIRED_TABLE: &str = "person";
/// The Export API's task status endpoint (upstream's `TASK_STATUS_ENDPOINT`).
const EXPORT_STATUS_PATH: &str = "/api/task_status";
/// The Hadoop API's task status endpoint.
const HADOOP_STATUS_PATH: &str = "/hadoop/task_status";
/// Creates a Hive database (upstream's `CREATE_DB_ENDPOINT`).
const CREATE_DB_PATH: &str = "/hadoop/hive/create_base_hive";
/// Changes the owner of an HDFS directory (upstream's `ALTER_DB_ENDPOINT`).
const CHOWN_PATH: &str = "/hadoop/hdfs/chown_directory";
/// Upstream stops polling a task after this many failed calls.
const MAX_POLL_ERRORS: u32 = 5;
/// Upstream polls the database creation forever; here the wait is bounded (an hour at the
/// default 10 s interval) so that a stuck Hadoop task cannot hold an export worker for ever.
const MAX_DB_POLLS: u32 = 360;
/// How much of an answer's body an error quotes.
const EXCERPT_CHARS: usize = 300;
/// How much of a failed task's error log a report keeps (its end, where the error is).
const ERROR_LOG_CHARS: usize = 2000;

/// Where the Export and Hadoop APIs are, and how to talk to them.
#[derive(Clone)]
pub struct ExportApiSettings {
    /// `EXPORT_API_URL`, with or without a trailing slash.
    pub export_api_url: String,
    /// `EXPORT_AUTH_TOKEN`, sent as `auth-token`.
    pub export_api_token: String,
    /// `HADOOP_API_URL`, with or without a trailing slash.
    pub hadoop_api_url: String,
    /// The Hadoop API's token, sent as `auth-token`.
    pub hadoop_api_token: String,
    /// `HIVE_USER`: the account the Export API writes Hive databases as.
    pub hive_user: String,
    /// `DISABLE_DATA_TRANSLATION`, sent as `disableTerminology`.
    pub disable_terminology: bool,
    /// Interval between two polls of a Hadoop task (upstream: 10 s).
    pub poll_interval: Duration,
    /// Timeout of each call (upstream: 60 s).
    pub http_timeout: Duration,
    /// Timeout of a logs fetch (upstream: 30 s).
    pub logs_timeout: Duration,
}

impl Default for ExportApiSettings {
    /// No URLs nor tokens; upstream's intervals and timeouts.
    fn default() -> Self {
        Self {
            export_api_url: String::new(),
            export_api_token: String::new(),
            hadoop_api_url: String::new(),
            hadoop_api_token: String::new(),
            hive_user: String::new(),
            disable_terminology: false,
            poll_interval: Duration::from_secs(10),
            http_timeout: Duration::from_secs(60),
            logs_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for ExportApiSettings {
    /// Tokens are secrets: shown as `***` so that settings may be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportApiSettings")
            .field("export_api_url", &self.export_api_url)
            .field("export_api_token", &"***")
            .field("hadoop_api_url", &self.hadoop_api_url)
            .field("hadoop_api_token", &"***")
            .field("hive_user", &self.hive_user)
            .field("disable_terminology", &self.disable_terminology)
            .field("poll_interval", &self.poll_interval)
            .field("http_timeout", &self.http_timeout)
            .field("logs_timeout", &self.logs_timeout)
            .finish()
    }
}

/// Which of the two APIs a call goes to (each has its URL and token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Export,
    Hadoop,
}

impl Api {
    /// The API's name in error messages.
    fn name(self) -> &'static str {
        match self {
            Self::Export => "the Export API",
            Self::Hadoop => "the Hadoop API",
        }
    }
}

/// The Export API exporter.
pub struct ExportApiExporter {
    http: reqwest::Client,
    settings: ExportApiSettings,
}

impl ExportApiExporter {
    /// An exporter calling through `http` (its redirect and pool settings apply; each call gets
    /// the timeout of `settings`).
    pub fn new(http: reqwest::Client, settings: ExportApiSettings) -> Self {
        Self { http, settings }
    }

    /// `{API_URL}{path}`.
    fn url(&self, api: Api, path: &str) -> String {
        let base = match api {
            Api::Export => &self.settings.export_api_url,
            Api::Hadoop => &self.settings.hadoop_api_url,
        };
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// The token of `api`.
    fn token(&self, api: Api) -> &str {
        match api {
            Api::Export => &self.settings.export_api_token,
            Api::Hadoop => &self.settings.hadoop_api_token,
        }
    }

    /// Quotes the start of an answer's body, any token scrubbed (an API could echo its request).
    fn excerpt(&self, body: &str) -> String {
        let mut text: String = body.chars().take(EXCERPT_CHARS).collect();
        for token in [
            &self.settings.export_api_token,
            &self.settings.hadoop_api_token,
        ] {
            if !token.is_empty() {
                text = text.replace(token.as_str(), "***");
            }
        }
        text
    }

    /// A refusal quoting the status and the start of the body of a non-2xx answer.
    async fn refused(&self, api: Api, response: reqwest::Response) -> ExporterError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        ExporterError::Refused(format!(
            "{} answered HTTP {status}: {}",
            api.name(),
            self.excerpt(&body)
        ))
    }

    /// Reads a 2xx answer as JSON.
    async fn json(&self, api: Api, response: reqwest::Response) -> Result<Value, ExporterError> {
        let text = response.text().await.map_err(|e| unreachable(api, &e))?;
        serde_json::from_str(&text).map_err(|_| {
            ExporterError::Refused(format!(
                "{} answered something that is not JSON: {}",
                api.name(),
                self.excerpt(&text)
            ))
        })
    }

    /// `GET {task_status}` of `api` for `task_id`, with logs, within `timeout`. `Ok(None)` when
    /// the API answers 404 (it does not know the task). Server errors (5xx) count as the API
    /// being unavailable, other refusals (4xx) as refusals.
    async fn task_status(
        &self,
        api: Api,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<Value>, ExporterError> {
        let path = match api {
            Api::Export => EXPORT_STATUS_PATH,
            Api::Hadoop => HADOOP_STATUS_PATH,
        };
        let response = self
            .http
            .get(self.url(api, path))
            .query(&[
                ("task_uuid", task_id),
                ("return_out_logs", "True"),
                ("return_err_logs", "True"),
            ])
            .header("auth-token", self.token(api))
            .timeout(timeout)
            .traced()
            .send()
            .await
            .map_err(|e| unreachable(api, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_server_error() {
            return Err(ExporterError::Unreachable(format!(
                "{} answered HTTP {status}",
                api.name()
            )));
        }
        if !status.is_success() {
            return Err(self.refused(api, response).await);
        }
        self.json(api, response).await.map(Some)
    }

    /// `POST {HADOOP_API_URL}{path}` with `params` in the query string, as upstream does.
    async fn hadoop_post(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, ExporterError> {
        let response = self
            .http
            .post(self.url(Api::Hadoop, path))
            .query(params)
            .header("auth-token", self.token(Api::Hadoop))
            .timeout(self.settings.http_timeout)
            .traced()
            .send()
            .await
            .map_err(|e| unreachable(Api::Hadoop, &e))?;
        if !response.status().is_success() {
            return Err(self.refused(Api::Hadoop, response).await);
        }
        self.json(Api::Hadoop, response).await
    }

    /// Creates the job's Hive database and waits for the Hadoop task to finish.
    async fn create_database(&self, job: &ExportJob) -> Result<(), ExporterError> {
        let location = database_location(job);
        let answer = self
            .hadoop_post(
                CREATE_DB_PATH,
                &[
                    ("name", job.target_name.as_str()),
                    ("location", location.as_str()),
                    ("if_not_exists", "True"),
                ],
            )
            .await?;
        let Some(task_id) = task_id(&answer) else {
            return Err(ExporterError::Refused(format!(
                "the Hadoop API gave no task id for the creation of database {}",
                job.target_name
            )));
        };
        self.wait_for_hadoop_task(&task_id, &job.target_name).await
    }

    /// Polls a Hadoop task until it ends, as upstream does: every `poll_interval`, giving up
    /// after [`MAX_POLL_ERRORS`] failed calls (or [`MAX_DB_POLLS`] polls); only `finished` is
    /// a success.
    async fn wait_for_hadoop_task(
        &self,
        task_id: &str,
        database: &str,
    ) -> Result<(), ExporterError> {
        let mut errors = 0;
        for _ in 0..MAX_DB_POLLS {
            tokio::time::sleep(self.settings.poll_interval).await;
            let body = match self
                .task_status(Api::Hadoop, task_id, self.settings.http_timeout)
                .await
            {
                Ok(Some(body)) => body,
                Ok(None) => json!({"task_status": "NotFound"}),
                Err(e) => {
                    errors += 1;
                    if errors >= MAX_POLL_ERRORS {
                        return Err(timeout_as_unreachable(e));
                    }
                    continue;
                }
            };
            let report = report_from_answer(&body);
            match report.status {
                Some(JobStatus::Finished) => return Ok(()),
                Some(status) if status.is_final() => {
                    return Err(ExporterError::Refused(format!(
                        "the creation of Hive database {database} ended {}: {}",
                        status.as_str(),
                        report.message.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        Err(ExporterError::Refused(format!(
            "the creation of Hive database {database} did not end after {MAX_DB_POLLS} polls"
        )))
    }

    /// Gives the job's database directory to `uid` (group `hdfs`, recursively). Upstream's
    /// rule: the call succeeded only if its answer says `status: success` and `ret_code: 0`.
    async fn chown_database(&self, job: &ExportJob, uid: &str) -> Result<(), ExporterError> {
        let location = database_location(job);
        let answer = self
            .hadoop_post(
                CHOWN_PATH,
                &[
                    ("location", location.as_str()),
                    ("uid", uid),
                    ("gid", "hdfs"),
                    ("recursive", "True"),
                ],
            )
            .await?;
        let success = answer.get("status").and_then(Value::as_str) == Some("success")
            && answer.get("ret_code").and_then(Value::as_i64) == Some(0);
        if success {
            return Ok(());
        }
        let err = answer
            .get("err")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Err(ExporterError::Refused(format!(
            "could not give Hive database {} to {uid}: status {}, ret_code {}: {}",
            job.target_name,
            answer.get("status").unwrap_or(&Value::Null),
            answer.get("ret_code").unwrap_or(&Value::Null),
            self.excerpt(err)
        )))
    }

    /// Sends the job document as upstream's multipart upload; returns the task id.
    async fn post_job(&self, document: &Value) -> Result<String, ExporterError> {
        let bytes = serde_json::to_vec_pretty(document)
            .map_err(|e| ExporterError::Refused(format!("the job cannot be written: {e}")))?;
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name("yaml_file.yaml")
            .mime_str("application/x-yaml")
            .map_err(|_| ExporterError::Refused("invalid media type of the job part".into()))?;
        let form = reqwest::multipart::Form::new().part("yaml_file", part);
        let response = self
            .http
            .post(self.url(Api::Export, "/yaml"))
            .multipart(form)
            .header("auth-token", self.token(Api::Export))
            .timeout(self.settings.http_timeout)
            .traced()
            .send()
            .await
            .map_err(|e| unreachable(Api::Export, &e))?;
        if !response.status().is_success() {
            return Err(self.refused(Api::Export, response).await);
        }
        let answer = self.json(Api::Export, response).await?;
        task_id(&answer).ok_or_else(|| {
            ExporterError::Refused(format!(
                "the Export API gave no task id: {}",
                self.excerpt(&answer.to_string())
            ))
        })
    }
}

#[async_trait]
impl Exporter for ExportApiExporter {
    fn check_tables(&self, _format: ExportFormat, tables: &[ExportJobTable]) -> Result<(), String> {
        if tables.iter().any(|t| t.name == REQUIRED_TABLE) {
            Ok(())
        } else {
            Err(format!(
                "the Export API requires a `{REQUIRED_TABLE}` table"
            ))
        }
    }

    async fn submit(&self, job: ExportJob) -> Result<String, ExporterError> {
        // Built first: a job the API cannot take creates no database.
        let document = job_document(&job, self.settings.disable_terminology)
            .map_err(ExporterError::Refused)?;
        if job.format == ExportFormat::Hive {
            self.create_database(&job)
                .await
                .map_err(timeout_as_unreachable)?;
            self.chown_database(&job, &self.settings.hive_user)
                .await
                .map_err(timeout_as_unreachable)?;
        }
        self.post_job(&document)
            .await
            .map_err(timeout_as_unreachable)
    }

    async fn status(&self, task_id: &str) -> Result<Option<ExportReport>, ExporterError> {
        let body = self
            .task_status(Api::Export, task_id, self.settings.http_timeout)
            .await
            .map_err(timeout_as_unreachable)?;
        Ok(body.map(|b| report_from_answer(&b)))
    }

    async fn logs(&self, task_id: &str) -> Result<Value, ExporterError> {
        match self
            .task_status(Api::Export, task_id, self.settings.logs_timeout)
            .await?
        {
            Some(body) => Ok(body),
            None => Err(ExporterError::Refused(format!(
                "the Export API does not know task {task_id}"
            ))),
        }
    }

    async fn hand_over(&self, job: &ExportJob) -> Result<(), ExporterError> {
        if job.format != ExportFormat::Hive {
            return Ok(());
        }
        let Some(datalab) = job.datalab.as_deref() else {
            return Err(ExporterError::Refused(
                "a Hive export needs a datalab to hand its database over to".into(),
            ));
        };
        self.chown_database(job, datalab)
            .await
            .map_err(timeout_as_unreachable)
    }
}

/// A failed call: the kind of failure only (the URL and request may hold secrets); a timeout
/// stays a timeout so that logs fetches can report it.
fn unreachable(api: Api, e: &reqwest::Error) -> ExporterError {
    if e.is_timeout() {
        return ExporterError::Timeout;
    }
    let kind = if e.is_connect() {
        "connection refused or unreachable"
    } else {
        "request failed"
    };
    ExporterError::Unreachable(format!("{}: {kind}", api.name()))
}

/// Outside logs fetches a timeout is one more unavailability (the caller counts them).
fn timeout_as_unreachable(e: ExporterError) -> ExporterError {
    match e {
        ExporterError::Timeout => ExporterError::Unreachable("the call timed out".into()),
        other => other,
    }
}

/// `task_id` of an answer, as a string (numbers accepted).
fn task_id(answer: &Value) -> Option<String> {
    match answer.get("task_id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `{target_full_path}.db`: where the job's Hive database lives.
pub fn database_location(job: &ExportJob) -> String {
    format!("{}.db", job.target_full_path())
}

/// The Export API's task statuses (spec §2.8); anything else is unknown.
fn export_api_status(s: &str) -> JobStatus {
    match s {
        "Received" => JobStatus::New,
        "Pending" | "Retry" => JobStatus::Pending,
        "Running" => JobStatus::Started,
        "FinishedSuccessfully" => JobStatus::Finished,
        "FinishedWithError"
        | "FinishedWithTimeout"
        | "flowerNotAccessible"
        | "Failure"
        | "NotFound" => JobStatus::Failed,
        "Revoked" => JobStatus::Cancelled,
        _ => JobStatus::Unknown,
    }
}

/// What a task status answer reports: `task_status` mapped as upstream does (absent → unknown);
/// for a failed, cancelled or unknown task a message, the end of its error log when the answer
/// has one, else the raw status.
pub fn report_from_answer(body: &Value) -> ExportReport {
    let raw = body
        .get("task_status")
        .and_then(Value::as_str)
        .unwrap_or("");
    let status = export_api_status(raw);
    let failed = matches!(
        status,
        JobStatus::Failed | JobStatus::Cancelled | JobStatus::Unknown
    );
    let message = failed.then(|| match error_log(body) {
        Some(log) => format!("Export API task {raw}: {log}"),
        None if raw.is_empty() => "the Export API answered without a task status".to_string(),
        None => format!("Export API task status: {raw}"),
    });
    ExportReport {
        status: Some(status),
        message,
        stats: vec![],
    }
}

/// The error log of a task answer: `task_result.err` (the API's layout, as older upstream code
/// reads it), else a top-level `err`; its end only, where the error is.
fn error_log(body: &Value) -> Option<String> {
    let log = body
        .get("task_result")
        .and_then(|r| r.get("err"))
        .or_else(|| body.get("err"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    let count = log.chars().count();
    Some(
        log.chars()
            .skip(count.saturating_sub(ERROR_LOG_CHARS))
            .collect(),
    )
}

/// The job document of upstream's `POST /yaml` (spec §5.1). `Err` when the job has no `person`
/// table with a cohort, or a pseudonymized job no datalab.
///
/// `joinOnPrimaryKey` and `pivotMerge` are top-level keys, next to `output`, as upstream's
/// exporters place them.
pub fn job_document(job: &ExportJob, disable_terminology: bool) -> Result<Value, String> {
    let mut doc = Map::new();
    doc.insert("overwrite".into(), json!(true));
    doc.insert(
        "tablesToExport".into(),
        Value::Array(tables_to_export(job)?),
    );
    doc.insert(
        "noDateShift".into(),
        json!(job.nominative || !job.shift_dates),
    );
    doc.insert("disableTerminology".into(), json!(disable_terminology));
    if !job.nominative {
        let datalab = job
            .datalab
            .as_deref()
            .ok_or("a pseudonymized export needs a datalab")?;
        doc.insert("pseudo".into(), json!(datalab));
    }
    if job.format.is_file() {
        doc.insert("joinOnPrimaryKey".into(), json!(job.group_tables));
        let pivots = pivot_merge(&job.tables);
        if !pivots.is_empty() {
            doc.insert("pivotMerge".into(), Value::Array(pivots));
        }
    }
    doc.insert("output".into(), output(job));
    Ok(Value::Object(doc))
}

/// `tablesToExport`: the `person` table first (with its cohort, `relation: true`), then the
/// others in the job's order, with their cohort when they have one.
fn tables_to_export(job: &ExportJob) -> Result<Vec<Value>, String> {
    let person = job
        .tables
        .iter()
        .find(|t| t.name == REQUIRED_TABLE)
        .ok_or_else(|| format!("the Export API requires a `{REQUIRED_TABLE}` table"))?;
    if person.cohort_group_id.is_none() {
        return Err(format!("the `{REQUIRED_TABLE}` table has no cohort"));
    }
    let mut tables = vec![table_entry(person, true)];
    tables.extend(
        job.tables
            .iter()
            .filter(|t| t.name != REQUIRED_TABLE)
            .map(|t| table_entry(t, t.respect_table_relationships)),
    );
    Ok(tables)
}

/// One `tablesToExport` entry: `tableName`, `cohortId?`, `relation`, `columnsToExport?` (only
/// when columns are named: none means all).
fn table_entry(table: &ExportJobTable, relation: bool) -> Value {
    let mut entry = Map::new();
    entry.insert("tableName".into(), json!(table.name));
    if let Some(cohort) = &table.cohort_group_id {
        entry.insert("cohortId".into(), json!(cohort));
    }
    entry.insert("relation".into(), json!(relation));
    if let Some(columns) = table.columns.as_ref().filter(|c| !c.is_empty()) {
        entry.insert("columnsToExport".into(), json!(columns));
    }
    Value::Object(entry)
}

/// `pivotMerge`: `{tableName, pivotedColumnsToKeep?, idsToMerge?}` for each table that asks for
/// a pivot merge (the flag or its columns or ids).
fn pivot_merge(tables: &[ExportJobTable]) -> Vec<Value> {
    tables
        .iter()
        .filter(|t| {
            t.pivot_merge || !t.pivot_merge_columns.is_empty() || !t.pivot_merge_ids.is_empty()
        })
        .map(|t| {
            let mut entry = Map::new();
            entry.insert("tableName".into(), json!(t.name));
            if !t.pivot_merge_columns.is_empty() {
                entry.insert("pivotedColumnsToKeep".into(), json!(t.pivot_merge_columns));
            }
            if !t.pivot_merge_ids.is_empty() {
                entry.insert("idsToMerge".into(), json!(t.pivot_merge_ids));
            }
            Value::Object(entry)
        })
        .collect()
}

/// `output`: a zip at `{target_full_path}.zip` for CSV/XLSX, a database named after the target
/// for Hive.
fn output(job: &ExportJob) -> Value {
    match job.format {
        ExportFormat::Hive => json!({"type": "hive", "databaseName": job.target_name}),
        format => json!({
            "type": format.as_str(),
            "filePath": format!("{}.zip", job.target_full_path()),
        }),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn export_api_statuses_map_to_job_statuses() {
        use domain::job::JobStatus;
        assert_eq!(
            super::export_api_status("FinishedSuccessfully"),
            JobStatus::Finished
        );
        assert_eq!(super::export_api_status("Retry"), JobStatus::Pending);
        assert_eq!(
            super::export_api_status("flowerNotAccessible"),
            JobStatus::Failed
        );
        assert_eq!(super::export_api_status("Revoked"), JobStatus::Cancelled);
        assert_eq!(super::export_api_status("whatever"), JobStatus::Unknown);
    }
    use super::*;
    use uuid::Uuid;

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

    fn job(format: ExportFormat, tables: Vec<ExportJobTable>) -> ExportJob {
        ExportJob {
            export: Uuid::nil(),
            owner: "u1".into(),
            format,
            nominative: true,
            shift_dates: false,
            group_tables: true,
            target_name: "u1_x".into(),
            target_location: "/exports/csv/".into(),
            datalab: None,
            tables,
        }
    }

    #[test]
    fn person_goes_first_and_pivots_are_listed() {
        let mut note = table("note", Some("22"));
        note.pivot_merge = true;
        note.pivot_merge_ids = vec!["1".into()];
        let mut person = table("person", Some("11"));
        person.columns = Some(vec!["person_id".into()]);
        let doc = job_document(&job(ExportFormat::Xlsx, vec![note, person]), true).unwrap();
        assert_eq!(
            doc["tablesToExport"],
            json!([
                {"tableName": "person", "cohortId": "11", "relation": true, "columnsToExport": ["person_id"]},
                {"tableName": "note", "cohortId": "22", "relation": true}
            ])
        );
        assert_eq!(
            doc["pivotMerge"],
            json!([{"tableName": "note", "idsToMerge": ["1"]}])
        );
        assert_eq!(
            doc["output"],
            json!({"type": "xlsx", "filePath": "/exports/csv/u1_x.zip"})
        );
        assert_eq!(doc["joinOnPrimaryKey"], json!(true));
        assert_eq!(doc["disableTerminology"], json!(true));
        assert!(doc.get("pseudo").is_none());
    }

    #[test]
    fn jobs_without_person_or_datalab_are_refused() {
        let no_person = job(ExportFormat::Csv, vec![table("note", Some("1"))]);
        assert!(
            job_document(&no_person, false)
                .unwrap_err()
                .contains("person")
        );
        let mut pseudo = job(ExportFormat::Hive, vec![table("person", Some("1"))]);
        pseudo.nominative = false;
        assert!(
            job_document(&pseudo, false)
                .unwrap_err()
                .contains("datalab")
        );
        pseudo.datalab = Some("lab1".into());
        pseudo.shift_dates = true;
        let doc = job_document(&pseudo, false).unwrap();
        assert_eq!(doc["pseudo"], json!("lab1"));
        assert_eq!(doc["noDateShift"], json!(false));
        assert!(doc.get("joinOnPrimaryKey").is_none());
    }

    #[test]
    fn reports_keep_the_end_of_error_logs() {
        let long = format!("{}THE END", "x".repeat(5000));
        let report = report_from_answer(&json!({
            "task_status": "FinishedWithError", "task_result": {"err": long}
        }));
        assert_eq!(report.status, Some(JobStatus::Failed));
        let message = report.message.unwrap();
        assert!(
            message.ends_with("THE END") && message.len() < 2100,
            "{message}"
        );
        let running = report_from_answer(&json!({"task_status": "Running"}));
        assert_eq!(
            (running.status, running.message),
            (Some(JobStatus::Started), None)
        );
        let empty = report_from_answer(&json!({}));
        assert_eq!(empty.status, Some(JobStatus::Unknown));
    }

    #[test]
    fn settings_never_show_tokens() {
        let s = ExportApiSettings {
            export_api_token: "s3cr3t-export".into(),
            hadoop_api_token: "s3cr3t-hadoop".into(),
            ..Default::default()
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
