//! `/audit/…`: the stored history of aggregates (full administrators only).

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use projections::audit::AuditEvent;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Aggregate types an auditor may name in a path.
const AUDITABLE: &[&str] = &[
    "Access",
    "User",
    "Role",
    "Perimeter",
    "MaintenancePhase",
    "Session",
    "Folder",
    "Request",
];

async fn require_full_admin(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let authority = state
        .identity
        .authority(&caller.username, Utc::now())
        .await?;
    if caller.applicative || !authority.is_full_admin() {
        return Err(ApiError::forbidden(
            "permission_denied",
            "only full administrators may read the audit trail",
        ));
    }
    Ok(())
}

/// `GET /audit/{aggregate_type}/{id}/events/`.
pub(super) async fn aggregate_history(
    State(state): State<AppState>,
    caller: Caller,
    Path((aggregate_type, id)): Path<(String, String)>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    require_full_admin(&state, &caller).await?;
    if !AUDITABLE.contains(&aggregate_type.as_str()) {
        return Err(ApiError::not_found(
            "aggregate_type_unknown",
            "aggregate type",
        ));
    }
    Ok(Json(
        state.audit.aggregate_history(&aggregate_type, &id).await?,
    ))
}

/// `GET /audit/users/{username}/accesses/`: every event of every access granted to a user.
pub(super) async fn user_accesses(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    require_full_admin(&state, &caller).await?;
    Ok(Json(state.audit.user_access_history(&username).await?))
}
