//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing;
use serde_json::{Value, json};

use crate::openapi::{Anyone, Documented, Shape, op};
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

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/health/live",
            routing::get(live),
            [
                op(
                    "GET",
                    "Operations",
                    Anyone,
                    200,
                    "The process answers",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/health/ready",
            routing::get(ready),
            [
                op(
                    "GET",
                    "Operations",
                    Anyone,
                    200,
                    "Postgres, NATS and the relay are usable (503 with each check otherwise)",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/metrics",
            routing::get(crate::observability::metrics_endpoint),
            [
                op(
                    "GET",
                    "Operations",
                    Anyone,
                    200,
                    "Prometheus metrics (bearer METRICS_TOKEN when configured)",
                )
                .answers(Shape::File("text/plain")),
            ],
        )
        .route(
            "/asyncapi.json",
            routing::get(crate::asyncapi::serve),
            [op(
                "GET",
                "Operations",
                Anyone,
                200,
                "AsyncAPI 3.0 document of the public NATS events",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/ws/",
            routing::get(crate::ws::upgrade),
            [
                op(
                    "GET",
                    "Authentication",
                    Anyone,
                    101,
                    "WebSocket: job statuses and maintenance announcements (token sent in the first message)",
                ),
            ],
        )
}
