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
    "Count",
    "Cohort",
    "FhirFilter",
    "MailDelivery",
    "FeasibilityStudy",
    "RefreshSchedule",
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

/// `GET /audit/cohorts/{id}/lineage/`: where a cohort comes from, from the event log alone: the
/// query version it was created from (its `QuerySnapshotSaved` and later patches), the counts
/// (with their executor jobs and results) and the cohort's own lifecycle.
pub(super) async fn cohort_lineage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_full_admin(&state, &caller).await?;
    let cohort = state.audit.aggregate_history("Cohort", &id).await?;
    let Some(requested) = cohort
        .iter()
        .find(|e| e.event_type == "CohortRequested")
        .map(|e| e.payload["CohortRequested"].clone())
    else {
        return Err(ApiError::not_found("cohort_not_found", "cohort"));
    };
    let text = |key: &str| requested[key].as_str().map(str::to_string);
    let mut counts = Vec::new();
    for key in ["dated_measure", "global_measure"] {
        if let Some(count) = text(key) {
            counts.push(state.audit.aggregate_history("Count", &count).await?);
        }
    }
    let snapshot = text("snapshot_id").unwrap_or_default();
    let query_version: Vec<AuditEvent> = match text("request_id") {
        Some(request) => state
            .audit
            .aggregate_history("Request", &request)
            .await?
            .into_iter()
            .filter(|e| {
                e.payload
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|v| v.get("snapshot_id"))
                    .and_then(|v| v.as_str())
                    == Some(snapshot.as_str())
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(serde_json::json!({
        "cohort": cohort,
        "counts": counts,
        "query_version": query_version,
    })))
}
