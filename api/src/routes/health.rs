//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// The process answers.
pub(super) async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Whether this instance can serve: `ok`; `degraded` (200) when it serves but something is
/// wrong (NATS away, a relay, projector or reactor stalled or far behind), with each cause;
/// `unavailable` (503) when it cannot serve (Postgres unreachable).
pub(super) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let checks = state.readiness.checks().await;
    let (status, word) = if checks.iter().any(|c| c.critical && !c.ok) {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if checks.iter().any(|c| !c.ok) {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    (status, Json(json!({ "status": word, "checks": checks })))
}
