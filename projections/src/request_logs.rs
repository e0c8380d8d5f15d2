//! Request logs (`/logs/`): one row per write request and per download, as upstream keeps them.
//!
//! These are operational records with a retention period, not domain facts: the domain facts a
//! write produced are its events (kept forever); the log adds the HTTP view (status, duration,
//! redacted body) for support. See the README, "Request logs".

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Page, ReadError, SortKey, Window};

/// One logged request, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RequestLog {
    pub id: i64,
    #[serde(flatten)]
    pub entry: NewRequestLog,
}

/// A request to log (the id is drawn when it is stored).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NewRequestLog {
    pub requested_at: DateTime<Utc>,
    pub response_ms: i64,
    /// The authenticated user (`username_persistent` upstream).
    pub user: Option<String>,
    /// The full administrator acting as `user`, if any.
    pub impersonating: Option<String>,
    pub method: String,
    pub path: String,
    /// The route template (upstream's `view`).
    pub view: Option<String>,
    pub query_params: serde_json::Value,
    /// The JSON body, secrets redacted, `null` for other bodies.
    pub data: Option<serde_json::Value>,
    pub remote_addr: Option<String>,
    pub host: Option<String>,
    pub status_code: i64,
    pub trace_id: String,
}

/// Filters of `/logs/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestLogFilter {
    pub methods: Vec<String>,
    pub status_codes: Vec<i64>,
    pub user: Option<String>,
    pub requested_at_after: Option<DateTime<Utc>>,
    pub requested_at_before: Option<DateTime<Utc>>,
    pub response_ms_min: Option<i64>,
    pub response_ms_max: Option<i64>,
    pub path_contains: Option<String>,
    pub trace_id: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Orderings `/logs/` accepts (public name, column).
pub const ORDERINGS: &[(&str, &str)] = &[
    ("requested_at", "requested_at"),
    ("response_ms", "response_ms"),
    ("status_code", "status_code"),
];

/// Stores and reads request logs.
#[async_trait]
pub trait RequestLogs: Send + Sync {
    /// Queues a log entry; never blocks nor fails the request (a full queue drops the entry and
    /// counts it).
    fn record(&self, entry: NewRequestLog);

    async fn list(
        &self,
        filter: &RequestLogFilter,
        window: Window,
    ) -> Result<Page<RequestLog>, ReadError>;

    async fn get(&self, id: i64) -> Result<Option<RequestLog>, ReadError>;
}
