//! A fake of the upstream export infrastructure on loopback, in one server: the Export API
//! (`POST /yaml`, `GET /api/task_status`), the Hadoop API (`POST /hadoop/hive/create_base_hive`,
//! `POST /hadoop/hdfs/chown_directory`, `GET /hadoop/task_status`) and WebHDFS
//! (`GET /webhdfs/v1/{path}?op=OPEN`, redirected once to a "datanode" path of the same server,
//! and `DELETE /webhdfs/v1/{path}?op=DELETE`).
//!
//! It records every request (the multipart job of `/yaml` decoded as JSON) and is scripted by the
//! test: the statuses tasks go through (one per poll), failures of `/yaml`, the chown answer, a
//! delay before status answers, files kept in its HDFS, and going down for good. A CSV/XLSX job
//! that finishes leaves a small zip at its `filePath`, so that it can be downloaded through
//! WebHDFS like a real export.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The statuses an export task goes through when the test scripts nothing.
pub const DEFAULT_EXPORT_STATUSES: [&str; 3] = ["Pending", "Running", "FinishedSuccessfully"];
/// The statuses a database creation goes through when the test scripts nothing.
pub const DEFAULT_HADOOP_STATUSES: [&str; 2] = ["Running", "FinishedSuccessfully"];
/// The CSV file inside the zip a finished CSV/XLSX job leaves at its `filePath`.
pub const EXPORTED_CSV_NAME: &str = "person.csv";
pub const EXPORTED_CSV: &[u8] = b"person_id,gender\n1,f\n2,m\n";

/// The file part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as sent (percent-encoded).
    pub path: String,
    /// The query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The job of a `POST /yaml` (its file part parsed as JSON, or the raw text as a string).
    pub job: Option<Value>,
    /// The file part of a `POST /yaml`.
    pub part: Option<UploadedPart>,
}

impl RecordedRequest {
    /// The first query parameter named `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a task is for.
#[derive(Debug, Clone)]
enum TaskKind {
    /// An export job (its document).
    Export(Value),
    /// A Hive database creation.
    Database,
}

/// A task of either API and the statuses it still has to go through.
#[derive(Debug)]
struct Task {
    kind: TaskKind,
    statuses: VecDeque<String>,
    /// Whether the finished job's zip was already written.
    delivered: bool,
}

struct Inner {
    requests: Vec<RecordedRequest>,
    export_statuses: Vec<String>,
    hadoop_statuses: Vec<String>,
    tasks: HashMap<String, Task>,
    next_task: u64,
    yaml_failure: Option<u16>,
    chown_answer: (u16, Value),
    status_delay: Duration,
    error_log: String,
    /// HDFS, by absolute path.
    files: HashMap<String, Vec<u8>>,
}

/// The running fake (clones share it).
#[derive(Clone)]
pub struct FakeExportApi {
    url: String,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl FakeExportApi {
    /// Starts it on 127.0.0.1 (a free port).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let fake = Self {
            url,
            inner: Arc::new(Mutex::new(Inner {
                requests: Vec::new(),
                export_statuses: to_strings(&DEFAULT_EXPORT_STATUSES),
                hadoop_statuses: to_strings(&DEFAULT_HADOOP_STATUSES),
                tasks: HashMap::new(),
                next_task: 1,
                yaml_failure: None,
                chown_answer: (
                    200,
                    json!({"status": "success", "ret_code": 0, "out": "", "err": ""}),
                ),
                status_delay: Duration::ZERO,
                error_log: "Traceback (most recent call last):\nSparkException: job aborted".into(),
                files: HashMap::new(),
            })),
            shutdown: CancellationToken::new(),
            server: Arc::new(Mutex::new(None)),
        };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        let stop = fake.shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .expect("fake export API serves");
        });
        *fake.server.lock().expect("server handle") = Some(server);
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake export API state")
    }

    /// Its base URL (Export API, Hadoop API and WebHDFS namenode alike), without a trailing
    /// slash.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The requests received on `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The jobs posted to `/yaml`, oldest first.
    pub fn jobs(&self) -> Vec<Value> {
        self.requests().into_iter().filter_map(|r| r.job).collect()
    }

    /// The statuses the next export tasks go through, one per poll (the last one stays).
    pub fn script_statuses(&self, statuses: &[&str]) {
        self.lock().export_statuses = to_strings(statuses);
    }

    /// The statuses the next database creations go through, one per poll.
    pub fn script_hadoop_statuses(&self, statuses: &[&str]) {
        self.lock().hadoop_statuses = to_strings(statuses);
    }

    /// `/yaml` answers `status` from now on.
    pub fn fail_yaml(&self, status: u16) {
        self.lock().yaml_failure = Some(status);
    }

    /// What `chown_directory` answers from now on.
    pub fn set_chown_answer(&self, status: u16, body: Value) {
        self.lock().chown_answer = (status, body);
    }

    /// The error log of failed tasks.
    pub fn set_error_log(&self, log: &str) {
        self.lock().error_log = log.to_string();
    }

    /// A delay before every task status answer.
    pub fn delay_status(&self, delay: Duration) {
        self.lock().status_delay = delay;
    }

    /// Puts a file in the fake HDFS.
    pub fn put_file(&self, path: &str, bytes: &[u8]) {
        self.lock().files.insert(absolute(path), bytes.to_vec());
    }

    /// A file of the fake HDFS.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(&absolute(path)).cloned()
    }

    /// Stops for good: the listener is closed (connections are refused) and open connections
    /// are shut down.
    pub async fn down(&self) {
        self.shutdown.cancel();
        let server = self.server.lock().expect("server handle").take();
        if let Some(server) = server {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Records a request.
    fn record(&self, request: RecordedRequest) {
        self.lock().requests.push(request);
    }

    /// Registers a task; its id.
    fn new_task(&self, kind: TaskKind) -> String {
        let mut inner = self.lock();
        let id = format!("task-{:04}", inner.next_task);
        inner.next_task += 1;
        let statuses = match kind {
            TaskKind::Export(_) => inner.export_statuses.clone(),
            TaskKind::Database => inner.hadoop_statuses.clone(),
        };
        inner.tasks.insert(
            id.clone(),
            Task {
                kind,
                statuses: statuses.into(),
                delivered: false,
            },
        );
        id
    }

    /// The status of task `id` at this poll (advancing its script), and its error log when it
    /// failed. A finished CSV/XLSX job leaves its zip in HDFS.
    fn poll(&self, id: &str, database: bool) -> Value {
        let mut inner = self.lock();
        let error_log = inner.error_log.clone();
        let Some(task) = inner.tasks.get_mut(id) else {
            return json!({"task_status": "NotFound", "task_result": null});
        };
        if database != matches!(task.kind, TaskKind::Database) {
            return json!({"task_status": "NotFound", "task_result": null});
        }
        let status = if task.statuses.len() > 1 {
            task.statuses.pop_front()
        } else {
            task.statuses.front().cloned()
        }
        .unwrap_or_else(|| "FinishedSuccessfully".into());
        let mut zip_at = None;
        if status == "FinishedSuccessfully" && !task.delivered {
            task.delivered = true;
            if let TaskKind::Export(job) = &task.kind {
                zip_at = zip_path(job);
            }
        }
        if let Some(path) = zip_at {
            inner.files.insert(absolute(&path), small_zip());
        }
        task_answer(&status, &error_log)
    }
}

/// Owned copies.
fn to_strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `path` with one leading slash: the key of the fake HDFS.
fn absolute(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// Where a CSV/XLSX job writes its zip.
fn zip_path(job: &Value) -> Option<String> {
    let output = job.get("output")?;
    matches!(output.get("type")?.as_str()?, "csv" | "xlsx")
        .then(|| output.get("filePath")?.as_str().map(str::to_string))
        .flatten()
}

/// A task status answer, in the layout of the API's `task_result`.
fn task_answer(status: &str, error_log: &str) -> Value {
    let failed = [
        "FinishedWithError",
        "FinishedWithTimeout",
        "Failure",
        "flowerNotAccessible",
    ]
    .contains(&status);
    let result = match status {
        "FinishedSuccessfully" => {
            json!({"status": "SUCCESS", "ret_code": 0, "out": "done", "err": ""})
        }
        _ if failed => json!({"status": "FAILURE", "ret_code": 1, "out": "", "err": error_log}),
        _ => Value::Null,
    };
    json!({"task_status": status, "task_result": result})
}

/// A zip holding [`EXPORTED_CSV`].
pub fn small_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(EXPORTED_CSV_NAME, options)
        .expect("zip entry");
    zip.write_all(EXPORTED_CSV).expect("zip write");
    zip.finish().expect("zip finish").into_inner()
}

/// Percent-decodes a path (WebHDFS paths arrive encoded).
fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON answer.
fn answer(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// Every request: recorded, then routed by method and path.
async fn handle(State(fake): State<FakeExportApi>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let headers = headers_of(request.headers());
    let mut recorded = RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query,
        headers,
        job: None,
        part: None,
    };
    if method == Method::POST && path == "/yaml" {
        let (job, part) = read_job(request).await;
        recorded.job = job;
        recorded.part = part;
    } else {
        // Drained so that the connection stays usable.
        let _ = to_bytes(request.into_body(), 1 << 20).await;
    }
    fake.record(recorded.clone());
    route(&fake, &method, &path, &recorded).await
}

/// The headers, names in lower case.
fn headers_of(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The (first) part of a multipart upload: the job (parsed as JSON, else its raw text) and
/// how the part was labelled.
async fn read_job(request: Request) -> (Option<Value>, Option<UploadedPart>) {
    let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
        return (None, None);
    };
    let Ok(Some(field)) = multipart.next_field().await else {
        return (None, None);
    };
    let part = UploadedPart {
        name: field.name().unwrap_or_default().to_string(),
        file_name: field.file_name().map(str::to_string),
        content_type: field.content_type().map(str::to_string),
    };
    let Ok(bytes) = field.bytes().await else {
        return (None, Some(part));
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let job = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (Some(job), Some(part))
}

/// What the fake answers.
async fn route(
    fake: &FakeExportApi,
    method: &Method,
    path: &str,
    req: &RecordedRequest,
) -> Response {
    match (method.clone(), path) {
        (Method::POST, "/yaml") => on_yaml(fake, req),
        (Method::GET, "/api/task_status") => on_status(fake, req, false).await,
        (Method::GET, "/hadoop/task_status") => on_status(fake, req, true).await,
        (Method::POST, "/hadoop/hive/create_base_hive") => {
            let id = fake.new_task(TaskKind::Database);
            answer(200, json!({"task_id": id}))
        }
        (Method::POST, "/hadoop/hdfs/chown_directory") => {
            let (status, body) = fake.lock().chown_answer.clone();
            answer(status, body)
        }
        (Method::GET, p) if p.starts_with("/webhdfs/v1/") => on_open(fake, req),
        (Method::DELETE, p) if p.starts_with("/webhdfs/v1/") => on_delete(fake, req),
        (Method::GET, p) if p.starts_with("/datanode/v1/") => on_datanode(fake, req),
        _ => answer(404, json!({"detail": "Not Found"})),
    }
}

/// `POST /yaml`: a new export task, unless told to fail.
fn on_yaml(fake: &FakeExportApi, req: &RecordedRequest) -> Response {
    if let Some(status) = fake.lock().yaml_failure {
        return answer(status, json!({"detail": "export refused by the fake"}));
    }
    let Some(job) = req.job.clone() else {
        return answer(422, json!({"detail": "yaml_file missing"}));
    };
    let id = fake.new_task(TaskKind::Export(job));
    answer(200, json!({"task_id": id}))
}

/// `GET …/task_status`: the task's next status (after the configured delay).
async fn on_status(fake: &FakeExportApi, req: &RecordedRequest, database: bool) -> Response {
    let delay = fake.lock().status_delay;
    tokio::time::sleep(delay).await;
    let id = req.param("task_uuid").unwrap_or_default();
    answer(200, fake.poll(id, database))
}

/// The HDFS path of a WebHDFS or datanode request path.
fn hdfs_path(path: &str, prefix: &str) -> String {
    absolute(&decode(path.trim_start_matches(prefix)))
}

/// `GET /webhdfs/v1/{path}?op=OPEN`: redirected to the datanode, as a namenode does.
fn on_open(fake: &FakeExportApi, req: &RecordedRequest) -> Response {
    if req.param("op") != Some("OPEN") {
        return answer(
            400,
            json!({"RemoteException": {"message": "unsupported op"}}),
        );
    }
    let file = hdfs_path(&req.path, "/webhdfs/v1");
    if !fake.lock().files.contains_key(&file) {
        return not_found(&file);
    }
    let rest = req.path.trim_start_matches("/webhdfs/v1");
    let location = format!(
        "{}/datanode/v1{rest}?op=OPEN&namenoderpcaddress=fake&offset=0",
        fake.url
    );
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

/// `GET /datanode/v1/{path}`: the file's bytes.
fn on_datanode(fake: &FakeExportApi, req: &RecordedRequest) -> Response {
    let file = hdfs_path(&req.path, "/datanode/v1");
    let Some(bytes) = fake.lock().files.get(&file).cloned() else {
        return not_found(&file);
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response()
}

/// `DELETE /webhdfs/v1/{path}?op=DELETE`: `{"boolean": whether it existed}`.
fn on_delete(fake: &FakeExportApi, req: &RecordedRequest) -> Response {
    if req.param("op") != Some("DELETE") {
        return answer(
            400,
            json!({"RemoteException": {"message": "unsupported op"}}),
        );
    }
    let file = hdfs_path(&req.path, "/webhdfs/v1");
    let existed = fake.lock().files.remove(&file).is_some();
    answer(200, json!({"boolean": existed}))
}

/// WebHDFS's answer for a missing file.
fn not_found(file: &str) -> Response {
    answer(
        404,
        json!({"RemoteException": {
            "exception": "FileNotFoundException",
            "javaClassName": "java.io.FileNotFoundException",
            "message": format!("File does not exist: {file}")
        }}),
    )
}
