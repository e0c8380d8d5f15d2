//! Captures request logs (`/logs/`): every write request (POST, PUT, PATCH, DELETE) and every
//! download, with its user, status, duration and JSON body (secrets redacted).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use projections::request_logs::NewRequestLog;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest body read for a logged request (the input guard refused larger ones already).
const MAX_BODY: usize = crate::input_guard::MAX_BODY_BYTES;
/// Larger JSON bodies are logged as their size only.
const MAX_LOGGED_BODY: usize = 64 * 1024;

/// `(user, impersonator)` as the log records them.
type LoggedUser = (String, Option<String>);

/// Where the caller extractor leaves the authenticated user for the log.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<Mutex<Option<LoggedUser>>>);

impl CallerSlot {
    pub fn set(&self, username: &str, impersonator: Option<&str>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some((username.to_string(), impersonator.map(str::to_string)));
        }
    }

    fn take(&self) -> Option<LoggedUser> {
        self.0.lock().ok()?.take()
    }
}

fn is_logged(method: &Method, route: &str) -> bool {
    let write = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    (write || route.ends_with("/download/")) && !route.starts_with("/auth/refresh")
}

/// Keys whose values never reach the log.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "token", "secret", "key"]
        .iter()
        .any(|s| key.contains(s))
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret(key) {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The body as logged: redacted JSON, its size when too large, `null` when not JSON.
fn logged_body(headers: &HeaderMap, bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !json {
        return None;
    }
    if bytes.len() > MAX_LOGGED_BODY {
        return Some(serde_json::json!({"truncated": true, "size": bytes.len()}));
    }
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    redact(&mut value);
    Some(value)
}

/// Route middleware: logs the request once answered (never delays nor fails it on the log's
/// account; the entry is queued).
pub async fn capture(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    if !is_logged(request.method(), route.as_deref().unwrap_or_default()) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let requested_at = Utc::now();
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return ApiError::payload_too_large(MAX_BODY).into_response();
    };
    let data = logged_body(&parts.headers, &bytes);
    let query_params =
        Query::<std::collections::BTreeMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| serde_json::to_value(q.0).unwrap_or_default())
            .unwrap_or_else(|_| Value::Object(Default::default()));
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (host, remote_addr) = (header("host"), header("x-forwarded-for"));
    let trace_id = header("x-trace-id").unwrap_or_default();
    let (method, path) = (parts.method.to_string(), parts.uri.path().to_string());
    let slot = CallerSlot::default();
    parts.extensions.insert(slot.clone());
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    // Set by the Caller extractor, or by the login handler (JSON, form or multipart body).
    let (user, impersonating) = match slot.take() {
        Some((user, impersonator)) => (Some(user), impersonator),
        None => (None, None),
    };
    state.request_logs.record(NewRequestLog {
        requested_at,
        response_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        user,
        impersonating,
        method,
        path,
        view: route,
        query_params,
        data,
        remote_addr,
        host,
        status_code: i64::from(response.status().as_u16()),
        trace_id,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_downloads_are_logged_reads_and_refreshes_are_not() {
        assert!(is_logged(&Method::POST, "/cohort/folders/"));
        assert!(is_logged(&Method::DELETE, "/cohort/folders/{id}/"));
        assert!(is_logged(
            &Method::GET,
            "/cohort/feasibility-studies/{id}/download/"
        ));
        assert!(!is_logged(&Method::GET, "/cohort/folders/"));
        assert!(!is_logged(&Method::POST, "/auth/refresh/"));
    }

    #[test]
    fn secrets_are_redacted_and_large_or_non_json_bodies_are_not_kept() {
        let mut json = HeaderMap::new();
        json.insert("content-type", "application/json".parse().unwrap());
        let body = br#"{"username":"a","password":"p","nested":{"refresh_token":"t","name":"n"}}"#;
        let logged = logged_body(&json, body).unwrap();
        assert_eq!(logged["password"], "<redacted>");
        assert_eq!(logged["nested"]["refresh_token"], "<redacted>");
        assert_eq!(logged["nested"]["name"], "n");
        assert_eq!(logged["username"], "a");
        let big = vec![b' '; MAX_LOGGED_BODY + 1];
        assert_eq!(logged_body(&json, &big).unwrap()["truncated"], true);
        assert_eq!(logged_body(&HeaderMap::new(), b"a=b"), None);
    }
}
