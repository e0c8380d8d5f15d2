//! Request extractors that answer with our error envelope.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use chrono::Utc;
use commands::CommandContext;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;

/// A JSON body; malformed JSON and wrong types become 400s with a stable code.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    ApiError::bad_request("invalid_field", e.to_string())
                }
                _ => ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")),
            })
    }
}

/// The correlation id of the request (`X-Trace-Id` or `X-Request-Id` if the client sent one),
/// and the causation id of what it writes when that is not the same: the request id of an
/// `Idempotency-Key` claim ([`RequestId`]).
pub struct TraceId(pub String, pub Option<String>);

impl TraceId {
    /// The causation id of the commands this request runs.
    pub fn causation(&self) -> String {
        self.1.clone().unwrap_or_else(|| self.0.clone())
    }
}

/// Set by the idempotency layer: the id under which a keyed request writes (the `causation_id`
/// of its events), so that its outcome can be found again if its answer is lost.
#[derive(Debug, Clone)]
pub struct RequestId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TraceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let given = ["x-trace-id", "x-request-id"]
            .iter()
            .filter_map(|h| parts.headers.get(*h))
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .find(|v| !v.is_empty() && v.len() <= 128);
        let causation = parts.extensions.get::<RequestId>().map(|r| r.0.to_string());
        Ok(TraceId(
            given.map_or_else(|| Uuid::new_v4().to_string(), str::to_string),
            causation,
        ))
    }
}

/// The command context of an authenticated request: the clock is read here, at the edge.
pub fn command_context(caller: &Caller, trace: &TraceId) -> CommandContext {
    CommandContext {
        user: caller.username.clone(),
        impersonator: caller.impersonator.clone(),
        correlation_id: trace.0.clone(),
        causation_id: trace.causation(),
        at: Utc::now(),
    }
}

/// Parses a path id; anything that is not a uuid cannot name an object (404).
pub fn path_uuid(raw: &str, what: &'static str, code: &'static str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(code, what))
}

/// Parses the comma list of a multi-delete path (`/…/{uuid1,uuid2}/`).
pub fn path_uuid_list(raw: &str) -> Result<Vec<Uuid>, ApiError> {
    let mut ids = Vec::new();
    for part in raw.split(',') {
        let id = part.trim().parse::<Uuid>().map_err(|_| {
            ApiError::bad_request("invalid_id_list", format!("'{part}' is not a valid uuid"))
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}
