//! The QueryExecutor over HTTP, speaking upstream's protocol (`POST /jobs`, `GET /jobs/{id}`,
//! `DELETE /jobs/{id}`). The executor calls back on `PATCH /cohort/…/{uuid}/` by itself.

use crate::trace::Traced;
use std::time::Duration;

use async_trait::async_trait;
use commands::ports::{
    CancelOutcome, ExecutorError, ExecutorMode, JobAccepted, JobSubmission, QueryExecutor,
};
use domain::job::JobReport;
use serde_json::{Value, json};

/// Where the executor is.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// `QUERY_EXECUTOR_URL`, without a trailing slash.
    pub url: String,
    pub timeout: Duration,
    /// CAs trusted beside the system's.
    pub tls: crate::tls::TlsSettings,
}

/// The HTTP QueryExecutor adapter.
pub struct HttpQueryExecutor {
    http: reqwest::Client,
    url: String,
}

impl HttpQueryExecutor {
    pub fn new(settings: &ExecutorSettings) -> Result<Self, crate::tls::TlsError> {
        Ok(Self {
            http: crate::tls::http_client_builder(&settings.tls)?
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
                .build()?,
            url: settings.url.trim_end_matches('/').to_string(),
        })
    }
}

fn unreachable(e: reqwest::Error) -> ExecutorError {
    // The URL may hold credentials: report the kind of failure, not the request.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused or unreachable"
    } else {
        "request failed"
    };
    ExecutorError::Unreachable(kind.to_string())
}

async fn refused(response: reqwest::Response) -> ExecutorError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let excerpt: String = body.chars().take(300).collect();
    ExecutorError::Refused(format!("HTTP {status}: {excerpt}"))
}

/// The query as upstream's back-end sends it: nulls dropped, and single-element lists
/// `["All"]`, `[true]`, `[false]` collapsed to `"all"`, `true`, `false`.
pub fn executor_syntax(query: &str) -> String {
    fn walk(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, walk(v)))
                    .collect(),
            ),
            Value::Array(items) => match items.as_slice() {
                [Value::String(s)] if s == "All" => Value::String("all".into()),
                [Value::Bool(b)] => Value::Bool(*b),
                _ => Value::Array(items.into_iter().map(walk).collect()),
            },
            other => other,
        }
    }
    match serde_json::from_str::<Value>(query) {
        Ok(doc) => walk(doc).to_string(),
        Err(_) => query.to_string(),
    }
}

/// The `input` object of a job.
pub fn job_input(job: &JobSubmission) -> Value {
    let mut input = json!({
        "cohortDefinitionName": "Created from C360 backend",
        "cohortDefinitionSyntax": executor_syntax(&job.query),
        "ownerEntityId": job.owner,
        "mode": job.mode.as_str(),
        "cohortUuid": job.target.to_string(),
    });
    if let Some(path) = &job.callback_path {
        input["callbackPath"] = json!(path);
    }
    if job.sampling.is_some() || job.details.is_some() {
        let mut options = serde_json::Map::new();
        if let Some(s) = job.sampling {
            options.insert("sampling".into(), json!(s));
        }
        if let Some(d) = &job.details {
            options.insert("details".into(), json!(d));
        }
        input["modeOptions"] = Value::Object(options);
    }
    input
}

#[async_trait]
impl QueryExecutor for HttpQueryExecutor {
    async fn submit(&self, job: JobSubmission) -> Result<JobAccepted, ExecutorError> {
        let class = if job.mode == ExecutorMode::Create {
            "fr.aphp.id.eds.requester.CreateQuery"
        } else {
            "fr.aphp.id.eds.requester.CountQuery"
        };
        // The legacy job-server parameters are still sent; the executor ignores them.
        let mut query = vec![
            ("appName", "omop-spark-job"),
            ("context", "shared"),
            ("classPath", class),
        ];
        if job.mode == ExecutorMode::Create {
            query.push(("sync", "false"));
        }
        let response = self
            .http
            .post(format!("{}/jobs", self.url))
            .query(&query)
            .json(&json!({ "input": job_input(&job) }))
            .traced()
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| ExecutorError::Refused(format!("unreadable answer: {e}")))?;
        Ok(JobAccepted {
            job_id: body
                .get("jobId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            status: body
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            message: body
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    async fn cancel(&self, job_id: &str) -> Result<CancelOutcome, ExecutorError> {
        let response = self
            .http
            .delete(format!("{}/jobs/{job_id}", self.url))
            .traced()
            .send()
            .await
            .map_err(unreachable)?;
        if response.status() == reqwest::StatusCode::FORBIDDEN {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body.get("status").and_then(Value::as_str) {
            Some("KILLED") => Ok(CancelOutcome::Killed),
            Some("FINISHED") => Ok(CancelOutcome::AlreadyFinished),
            other => Err(ExecutorError::Refused(format!(
                "unexpected cancel status {other:?}"
            ))),
        }
    }

    async fn status(&self, job_id: &str) -> Result<Option<JobReport>, ExecutorError> {
        let response = self
            .http
            .get(format!("{}/jobs/{job_id}", self.url))
            .traced()
            .send()
            .await
            .map_err(unreachable)?;
        // Upstream's executor answers an unknown id with an error (500): it keeps jobs in memory.
        if matches!(response.status().as_u16(), 404 | 500) {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| ExecutorError::Refused(format!("unreadable answer: {e}")))?;
        // The result entry carries the count or group; the job's own status wins.
        let mut report = body
            .get("result")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .map(report_from_wire)
            .unwrap_or_default();
        if let Some(status) = body.get("status").and_then(Value::as_str) {
            report.status = status.to_string();
        }
        Ok(Some(report))
    }
}

/// One result entry of the executor's job status (upstream's fields, read leniently: numbers may
/// come as strings, the group as `group.id`/`group.count`).
fn report_from_wire(body: &Value) -> JobReport {
    let text = |key: &str| -> Option<String> {
        match body.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    let number = |key: &str| -> Option<i64> {
        match body.get(key)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let extra = match body.get("extra") {
        Some(Value::Object(map)) => map.clone().into_iter().collect(),
        _ => Default::default(),
    };
    JobReport {
        status: text("request_job_status")
            .or_else(|| text("status"))
            .unwrap_or_default(),
        count: number("count").or_else(|| number("group.count")),
        minimum: number("minimum"),
        maximum: number("maximum"),
        extra,
        group_id: text("group.id").or_else(|| text("group_id")),
        message: text("message").or_else(|| text("request_job_fail_msg")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_reports_accept_numbers_as_strings() {
        let r = report_from_wire(&json!({
            "request_job_status": "FINISHED", "group.id": "123", "group.count": "456",
            "extra": {"criteria_count_1": "10"}
        }));
        assert_eq!(r.status, "FINISHED");
        assert_eq!(r.group_id.as_deref(), Some("123"));
        assert_eq!(r.count, Some(456));
        assert_eq!(r.extra["criteria_count_1"], json!("10"));
        let r = report_from_wire(
            &json!({"request_job_status": "FINISHED", "count": 7, "minimum": "1"}),
        );
        assert_eq!((r.count, r.minimum), (Some(7), Some(1)));
    }

    use super::*;

    #[test]
    fn the_query_is_rewritten_as_upstream_does() {
        let q =
            r#"{"a":null,"b":["All"],"c":[true],"d":[false],"e":["x","y"],"f":{"g":null,"h":1}}"#;
        let out: Value = serde_json::from_str(&executor_syntax(q)).unwrap();
        assert_eq!(
            out,
            json!({"b":"all","c":true,"d":false,"e":["x","y"],"f":{"h":1}})
        );
    }

    #[test]
    fn mode_options_carry_sampling_and_details() {
        let job = JobSubmission {
            mode: ExecutorMode::Count,
            query: "{}".into(),
            owner: "alice".into(),
            target: uuid::Uuid::nil(),
            callback_path: None,
            sampling: None,
            details: Some("ratio".into()),
        };
        let input = job_input(&job);
        assert_eq!(input["mode"], "count");
        assert_eq!(input["modeOptions"], json!({"details": "ratio"}));
        assert!(input.get("callbackPath").is_none());
    }
}
