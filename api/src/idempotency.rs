//! `Idempotency-Key` on POST: a repeat of a request (same user, key, path and body) gets the
//! first request's answer, and the write is stored once.
//!
//! The key is claimed before the handler runs and the answer kept after it; the request's
//! events carry the claim's request id as their `causation_id`. A repeat while the first is
//! still running is told so (409); a repeat of a request that died between its commit and its
//! answer finds its events and is answered as a write whose read models may lag (the usual
//! status, the new object's id, `X-Cohort360-Consistency: pending`). Keys are scoped to the
//! authenticated user and kept at least `IDEMPOTENCY_KEY_RETENTION_HOURS`. Login, refresh and
//! logout ignore the header: their answers hold tokens, which are never stored.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use projections::idempotency::{Claim, StoredAnswer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::RequestId;
use crate::state::AppState;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on an answer that repeats a stored one.
const REPLAYED: &str = "idempotent-replayed";
/// Longest key accepted.
const MAX_KEY_LENGTH: usize = 255;
/// Largest answer kept (POST answers are one object; anything larger is not replayable).
const MAX_STORED_ANSWER: usize = 1024 * 1024;

/// The key, if it is 1 to 255 visible ASCII characters.
fn valid_key(raw: &HeaderValue) -> Result<String, ApiError> {
    raw.to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LENGTH && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters"),
            )
        })
}

/// What makes two requests "the same": method, path and query, impersonation target, content
/// type and body.
fn fingerprint(method: &Method, headers: &HeaderMap, path: &str, body: &[u8]) -> Vec<u8> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    };
    let mut hash = Sha256::new();
    for part in [
        method.as_str().as_bytes(),
        path.as_bytes(),
        &header("x-impersonate"),
        &header("content-type"),
        body,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().to_vec()
}

/// Whether an answer is kept for repeats: successes and refusals that a repeat would meet
/// again. Not kept (the key is released, a repeat runs again): failures that a retry may not
/// meet (authentication, a timeout, a concurrent modification, throttling, 5xx).
fn is_kept(status: StatusCode) -> bool {
    (status.is_success() || status.is_client_error())
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::CONFLICT
                | StatusCode::TOO_MANY_REQUESTS
        )
}

/// The answer given back for a stored one.
fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(v) = answer
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        headers.insert(CONTENT_TYPE, v);
    }
    if let Some(v) = answer
        .consistency
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        headers.insert("x-cohort360-consistency", v);
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The answer of a request that stored its write and died before answering: the new object's
/// id, read models pending (as when read-your-writes times out).
fn interrupted_answer(aggregate_type: &str, aggregate_id: &str) -> StoredAnswer {
    let id = if let Ok(uuid) = aggregate_id.parse::<Uuid>() {
        serde_json::json!({ "uuid": uuid })
    } else if let Ok(n) = aggregate_id.parse::<i64>() {
        serde_json::json!({ "id": n })
    } else if aggregate_type == "User" {
        serde_json::json!({ "username": aggregate_id })
    } else {
        serde_json::json!({ "id": aggregate_id })
    };
    StoredAnswer {
        status: StatusCode::CREATED.as_u16(),
        content_type: Some("application/json".into()),
        consistency: Some("pending".into()),
        body: id.to_string().into_bytes(),
    }
}

/// Route middleware (inside the input guard and the request log).
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keyed = request.method() == Method::POST
        && !request.uri().path().starts_with("/auth/")
        && request.headers().contains_key(HEADER);
    if !keyed {
        return next.run(request).await;
    }
    let key = match request.headers().get(HEADER).map(valid_key) {
        Some(Ok(key)) => key,
        Some(Err(e)) => return e.into_response(),
        None => return next.run(request).await,
    };
    let (mut parts, body) = request.into_parts();
    // Whom the key belongs to. A caller who cannot be authenticated gets the answer the
    // handler would give (every keyed route needs a caller), without asking twice.
    let method = crate::auth::Method::of(&parts.headers);
    let caller = match (crate::auth::bearer(&parts), method) {
        (Ok(token), Ok(method)) => crate::auth::authenticate(&state, token, method).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let username = match caller {
        Ok(caller) => caller.username,
        Err(e) => return e.into_response(),
    };
    // Bodies were read whole by the input guard already: this only collects them.
    let Ok(bytes) = to_bytes(body, crate::input_guard::MAX_BODY_BYTES).await else {
        return ApiError::bad_request("invalid_body", "the body could not be read").into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let print = fingerprint(&parts.method, &parts.headers, &path, &bytes);
    let claim = match state.idempotency.claim(&username, &key, &print).await {
        Ok(claim) => claim,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let request_id = match claim {
        Claim::Run { request_id } => request_id,
        Claim::Answered(answer) => return replay(answer),
        Claim::Mismatch => return ApiError::idempotency_key_reused().into_response(),
        Claim::InProgress => return ApiError::idempotency_key_in_progress().into_response(),
        Claim::Interrupted {
            request_id,
            aggregate_type,
            aggregate_id,
        } => {
            let answer = interrupted_answer(&aggregate_type, &aggregate_id);
            if let Err(e) = state
                .idempotency
                .complete(&username, &key, request_id, &answer)
                .await
            {
                tracing::warn!(error = %e, "the answer of an interrupted request was not kept");
            }
            return replay(answer);
        }
    };
    parts.extensions.insert(RequestId(request_id));
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    keep(&state, &username, &key, request_id, response).await
}

/// Keeps (or releases) the answer of the request that claimed the key, and returns it.
async fn keep(
    state: &AppState,
    username: &str,
    key: &str,
    request_id: Uuid,
    response: Response,
) -> Response {
    let status = response.status();
    if !is_kept(status) {
        if let Err(e) = state.idempotency.release(username, key, request_id).await {
            tracing::warn!(error = %e, "an idempotency key was not released");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes: Bytes = match to_bytes(body, MAX_STORED_ANSWER).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "the answer of a keyed request could not be read");
            return ApiError::bug("answer body unreadable").into_response();
        }
    };
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let answer = StoredAnswer {
        status: status.as_u16(),
        content_type: header(CONTENT_TYPE.as_str()),
        consistency: header("x-cohort360-consistency"),
        body: bytes.to_vec(),
    };
    if let Err(e) = state
        .idempotency
        .complete(username, key, request_id, &answer)
        .await
    {
        // The write stands; a repeat will find it through its events.
        tracing::warn!(error = %e, "the answer of a keyed request was not kept");
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_visible_ascii() {
        let key = |s: &str| valid_key(&HeaderValue::from_str(s).unwrap());
        assert_eq!(key(" abc-1 ").unwrap(), "abc-1");
        assert!(key("").is_err());
        assert!(key("a b").is_err());
        assert!(key(&"k".repeat(256)).is_err());
    }

    #[test]
    fn fingerprints_differ_by_path_body_and_impersonation() {
        let mut headers = HeaderMap::new();
        let a = fingerprint(&Method::POST, &headers, "/cohort/folders/", b"{}");
        assert_eq!(
            a,
            fingerprint(&Method::POST, &headers, "/cohort/folders/", b"{}")
        );
        assert_ne!(
            a,
            fingerprint(&Method::POST, &headers, "/cohort/requests/", b"{}")
        );
        assert_ne!(
            a,
            fingerprint(&Method::POST, &headers, "/cohort/folders/", b"{ }")
        );
        headers.insert("x-impersonate", HeaderValue::from_static("bob"));
        assert_ne!(
            a,
            fingerprint(&Method::POST, &headers, "/cohort/folders/", b"{}")
        );
    }

    #[test]
    fn refusals_a_repeat_would_meet_again_are_kept_transient_failures_are_not() {
        assert!(is_kept(StatusCode::CREATED));
        assert!(is_kept(StatusCode::BAD_REQUEST));
        assert!(is_kept(StatusCode::FORBIDDEN));
        assert!(!is_kept(StatusCode::CONFLICT));
        assert!(!is_kept(StatusCode::UNAUTHORIZED));
        assert!(!is_kept(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!is_kept(StatusCode::INTERNAL_SERVER_ERROR));
    }

    #[test]
    fn an_interrupted_request_is_answered_with_the_new_object_s_id() {
        let uuid = Uuid::from_u128(5);
        let a = interrupted_answer("Folder", &uuid.to_string());
        assert_eq!(a.status, 201);
        assert_eq!(a.consistency.as_deref(), Some("pending"));
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["uuid"], uuid.to_string());
        let body: serde_json::Value =
            serde_json::from_slice(&interrupted_answer("Role", "12").body).unwrap();
        assert_eq!(body["id"], 12);
    }
}
