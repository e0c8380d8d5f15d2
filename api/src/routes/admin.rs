//! `/admin/…`: operations views for full administrators.

use axum::Json;
use axum::extract::State;
use axum::routing;
use chrono::Utc;
use commands::authz::Permission;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{Documented, FullAdmin, Shape, op};
use crate::state::AppState;

/// `GET /admin/projections/`: each projector's, reactor's and the relay's checkpoint, how many
/// events it is behind, the age of the oldest of those (`lag_seconds`) and the last error this
/// instance saw.
pub(super) async fn projections(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    super::require(&state, &caller, Permission::ReadPipeline).await?;
    let consumers = state.pipeline.status().await.map_err(|e| {
        tracing::warn!(error = %e, "pipeline status unavailable");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the pipeline's status cannot be read; retry shortly",
        )
    })?;
    Ok(Json(json!({ "at": Utc::now(), "consumers": consumers })))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new().route(
        "/admin/projections/",
        routing::get(projections),
        [op(
            "GET",
            "Operations",
            FullAdmin,
            200,
            "Each projection's, reactor's and the relay's position, backlog, lag and last error",
        )
        .answers(Shape::Json)],
    )
}
