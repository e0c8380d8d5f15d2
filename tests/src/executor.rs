//! A QueryExecutor on loopback that speaks upstream's protocol: `POST /jobs`, `GET /jobs/{id}`,
//! `DELETE /jobs/{id}`, and the `PATCH` callback to the back-end with a bearer token. What it
//! answers (results, delays, failures, lost or duplicated callbacks) is set by the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// How the executor handles the next jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Finishes and calls back (after the configured delay).
    Finish,
    /// Calls back `ERROR` with a message.
    Error,
    /// Calls back `KILLED`.
    Killed,
    /// Finishes but never calls back (only `GET /jobs/{id}` tells the result).
    LoseCallback,
    /// Calls back with a status that is not one.
    InvalidStatus,
    /// Calls back twice with the same result.
    Duplicate,
    /// Creations answer `LONG_PENDING` (the ETL is to finish them).
    LongPending,
    /// Keeps running until cancelled.
    Hang,
    /// Refuses the submission with HTTP 500.
    Refuse,
}

/// One job as the executor received it.
#[derive(Debug, Clone)]
pub struct ReceivedJob {
    pub job_id: String,
    pub mode: String,
    /// `input.cohortUuid`: the count's, cohort's or study's id.
    pub target: String,
    pub input: Value,
    pub status: String,
    pub result: Value,
    pub deleted: bool,
    /// The `X-Trace-Id` the submission carried.
    pub trace_id: Option<String>,
}

struct Inner {
    backend: Option<String>,
    token: String,
    behaviour: Behaviour,
    count: i64,
    delay: Duration,
    next_id: u64,
    jobs: Vec<ReceivedJob>,
    by_id: HashMap<String, usize>,
    /// Per-perimeter counts of `count_with_details` (else derived from the source population).
    details: Option<Vec<(String, i64)>>,
}

/// The running test executor.
#[derive(Clone)]
pub struct TestExecutor {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
}

impl TestExecutor {
    /// Starts it; it calls back with `Authorization: Bearer {token}` once
    /// [`TestExecutor::set_backend`] says where.
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            backend: None,
            token: token.to_string(),
            behaviour: Behaviour::Finish,
            count: 42,
            delay: Duration::ZERO,
            next_id: 1,
            jobs: Vec::new(),
            by_id: HashMap::new(),
            details: None,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let executor = Self {
            url,
            inner,
            http: reqwest::Client::new(),
        };
        let app = Router::new()
            .route("/jobs", post(submit))
            .route("/jobs/{id}", get(status).delete(cancel))
            .with_state(executor.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("executor serves");
        });
        executor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("executor state")
    }

    /// The back-end's base URL (upstream's `DJANGO_CALLBACK_URL`).
    pub fn set_backend(&self, base: &str) {
        self.lock().backend = Some(base.to_string());
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    /// The patient count of the next results.
    pub fn set_count(&self, count: i64) {
        self.lock().count = count;
    }

    /// The per-perimeter counts (`cohort id → patients`) of the next `count_with_details`.
    pub fn set_details(&self, details: &[(&str, i64)]) {
        self.lock().details = Some(details.iter().map(|(k, v)| (k.to_string(), *v)).collect());
    }

    /// Delay before each callback.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Every job received, oldest first.
    pub fn jobs(&self) -> Vec<ReceivedJob> {
        self.lock().jobs.clone()
    }

    /// The jobs received for one target id.
    pub fn jobs_for(&self, target: &str) -> Vec<ReceivedJob> {
        self.jobs()
            .into_iter()
            .filter(|j| j.target == target)
            .collect()
    }

    async fn call_back(&self, job: ReceivedJob, body: Value) {
        let (backend, token, delay) = {
            let inner = self.lock();
            (inner.backend.clone(), inner.token.clone(), inner.delay)
        };
        let Some(backend) = backend else { return };
        tokio::time::sleep(delay).await;
        let path = match job.input.get("callbackPath").and_then(Value::as_str) {
            Some(p) => p.to_string(),
            None if job.mode == "create" => format!("/cohort/cohorts/{}/", job.target),
            None => format!("/cohort/dated-measures/{}/", job.target),
        };
        // Like upstream's executor: one attempt, failures only logged.
        let _ = self
            .http
            .patch(format!("{backend}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
    }
}

/// The finished result of a job, in the callback's format (values as strings, as upstream).
fn finished_result(mode: &str, count: i64, group: &str, input: &Value) -> Value {
    match mode {
        "create" => json!({
            "request_job_status": "FINISHED", "group.id": group,
            "group.count": count.to_string(), "extra": {}
        }),
        "count_all" => json!({
            "request_job_status": "FINISHED", "count": count.to_string(),
            "minimum": (count - 30).max(0).to_string(), "maximum": (count + 30).to_string(),
            "extra": {}
        }),
        "count_with_details" => {
            let syntax: Value = input
                .get("cohortDefinitionSyntax")
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null);
            let mut extra = serde_json::Map::new();
            if let Some(list) = syntax["sourcePopulation"]["caresiteCohortList"].as_array() {
                for (i, id) in list.iter().enumerate() {
                    extra.insert(
                        id.as_str().unwrap_or_default().to_string(),
                        json!((count / (i as i64 + 1)).to_string()),
                    );
                }
            }
            json!({"request_job_status": "FINISHED", "count": count.to_string(), "extra": extra})
        }
        _ => {
            let mut extra = serde_json::Map::new();
            if let Some(details) = input["modeOptions"]["details"].as_str() {
                extra.insert(format!("criteria_{details}_1"), json!("7"));
            }
            json!({"request_job_status": "FINISHED", "count": count.to_string(), "extra": extra})
        }
    }
}

async fn submit(
    State(ex): State<TestExecutor>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let trace_id = headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let mode = input["mode"].as_str().unwrap_or_default().to_string();
    let target = input["cohortUuid"].as_str().unwrap_or_default().to_string();
    let (job, behaviour) = {
        let mut inner = ex.lock();
        if inner.behaviour == Behaviour::Refuse {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"status": "ERROR", "message": "spark context stopped"})),
            );
        }
        let job_id = format!("job-{}", inner.next_id);
        let group = format!("{}", 1000 + inner.next_id);
        inner.next_id += 1;
        let mut result = finished_result(&mode, inner.count, &group, &input);
        if let (Some(details), "count_with_details") = (&inner.details, mode.as_str()) {
            let extra: serde_json::Map<String, Value> = details
                .iter()
                .map(|(k, v)| (k.clone(), json!(v.to_string())))
                .collect();
            result["extra"] = Value::Object(extra);
        }
        let job = ReceivedJob {
            job_id: job_id.clone(),
            mode,
            target,
            input,
            status: "RUNNING".into(),
            result,
            deleted: false,
            trace_id,
        };
        let index = inner.jobs.len();
        inner.jobs.push(job.clone());
        inner.by_id.insert(job_id, index);
        (job, inner.behaviour.clone())
    };
    let answer = json!({"status": "RUNNING", "jobId": job.job_id});
    let body = match behaviour {
        Behaviour::Finish | Behaviour::Duplicate | Behaviour::LoseCallback => job.result.clone(),
        Behaviour::Error => json!({"request_job_status": "ERROR", "message": "Spark job failed"}),
        Behaviour::Killed => json!({"request_job_status": "KILLED", "message": "job killed"}),
        Behaviour::InvalidStatus => json!({"request_job_status": "DONE-ISH", "count": "1"}),
        Behaviour::LongPending => {
            let mut r = job.result.clone();
            r["request_job_status"] = json!("LONG_PENDING");
            r
        }
        Behaviour::Hang | Behaviour::Refuse => Value::Null,
    };
    let final_status = match behaviour {
        Behaviour::Hang => "RUNNING",
        Behaviour::Error | Behaviour::InvalidStatus => "ERROR",
        Behaviour::Killed => "KILLED",
        Behaviour::LongPending => "LONG_PENDING",
        _ => "FINISHED",
    };
    {
        let mut inner = ex.lock();
        let index = inner.by_id[&job.job_id];
        inner.jobs[index].status = final_status.to_string();
    }
    if !body.is_null() && behaviour != Behaviour::LoseCallback {
        let ex = ex.clone();
        let times = if behaviour == Behaviour::Duplicate {
            2
        } else {
            1
        };
        tokio::spawn(async move {
            for _ in 0..times {
                ex.call_back(job.clone(), body.clone()).await;
            }
        });
    }
    (StatusCode::OK, Json(answer))
}

async fn status(State(ex): State<TestExecutor>, Path(id): Path<String>) -> impl IntoResponse {
    let inner = ex.lock();
    let Some(job) = inner.by_id.get(&id).map(|i| &inner.jobs[*i]) else {
        // As upstream: an unknown id throws.
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "no such job"})),
        );
    };
    let mut result = job.result.clone();
    if let Some(r) = result.as_object_mut() {
        r.remove("request_job_status");
    }
    (
        StatusCode::OK,
        Json(json!({"status": job.status, "jobId": job.job_id, "result": [result]})),
    )
}

async fn cancel(State(ex): State<TestExecutor>, Path(id): Path<String>) -> impl IntoResponse {
    let mut inner = ex.lock();
    let Some(index) = inner.by_id.get(&id).copied() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "no such job"})),
        );
    };
    let job = &mut inner.jobs[index];
    job.deleted = true;
    if job.status == "RUNNING" {
        job.status = "KILLED".into();
    }
    (
        StatusCode::OK,
        Json(json!({"status": job.status, "jobId": job.job_id})),
    )
}
