//! `/admin/…`: operations views for full administrators.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /admin/projections/`: each projector's, reactor's and the relay's checkpoint, how many
/// events it is behind, the age of the oldest of those (`lag_seconds`) and the last error this
/// instance saw.
pub(super) async fn projections(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    super::require_full_admin(
        &state,
        &caller,
        "only full administrators may read the pipeline's status",
    )
    .await?;
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
