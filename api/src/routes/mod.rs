//! The HTTP routes. Paths keep upstream's mandatory trailing slash.
//!
//! Each module declares its routes with their documented operations (`fn routes()`, see
//! [`crate::openapi::Documented`]); [`documented`] gathers them, [`router`] adds the layers.

mod accesses;
mod admin;
mod audit;
mod auth;
pub(crate) mod cohorts;
mod content;
mod datalabs;
mod exports;
mod feasibility;
pub(crate) mod fhir;
mod fhir_filters;
mod fhir_terminology;
pub(crate) mod folders;
mod health;
mod job_callback;
mod logs;
pub mod maintenances;
mod perimeters;
mod refresh_schedules;
mod requests;
mod roles;
mod snapshots;
mod users;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commands::identity::Requester;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::Documented;
use crate::state::AppState;

/// What the caller may do, for the identity service.
pub(crate) async fn requester(state: &AppState, caller: &Caller) -> Result<Requester, ApiError> {
    Ok(state.access.requester(caller).await?)
}

/// Refuses the operation unless the caller holds `permission` (the rule is in
/// `commands::authz`); returns the caller's rights as the rule read them.
pub(crate) async fn require(
    state: &AppState,
    caller: &Caller,
    permission: commands::authz::Permission,
) -> Result<domain::authz::Authority, ApiError> {
    Ok(state.access.require(caller, permission).await?)
}

/// Runs the reads that build a write's answer, after the write is stored. Their failure must
/// not become the answer: the client would retry a write that is already stored. It is logged,
/// and the answer becomes the pending one ([`written`] without a view).
pub(crate) async fn after_commit<T, E: Into<ApiError>>(
    read: impl std::future::Future<Output = Result<Option<T>, E>>,
) -> Option<T> {
    match read.await {
        Ok(view) => view,
        Err(e) => {
            let e: ApiError = e.into();
            tracing::warn!(
                code = e.code,
                "the answer of a stored write could not be read; answering it as pending"
            );
            None
        }
    }
}

/// Like [`written`], for objects identified by something other than a uuid.
pub(crate) fn written_json<T: serde::Serialize>(
    status: StatusCode,
    caught_up: bool,
    view: Option<T>,
    id: serde_json::Value,
) -> Response {
    match view {
        Some(view) if caught_up => (status, axum::Json(view)).into_response(),
        _ => (
            status,
            [("x-cohort360-consistency", "pending")],
            axum::Json(id),
        )
            .into_response(),
    }
}

/// Parses an integer path id; anything else cannot name an object (404).
pub(crate) fn path_int(raw: &str, what: &'static str, code: &'static str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(code, what))
}

/// Answer of a write: the object as the read model shows it, or, when the read models have not
/// caught up in time, the bare id with `X-Cohort360-Consistency: pending` (the write is durable).
pub(crate) fn written<T: serde::Serialize>(
    status: StatusCode,
    caught_up: bool,
    view: Option<T>,
    id: uuid::Uuid,
) -> Response {
    written_json(status, caught_up, view, serde_json::json!({ "uuid": id }))
}

async fn not_found() -> ApiError {
    ApiError::route_not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Every route of the API with its documentation, each module contributing its own.
pub fn documented() -> Documented {
    Documented::new()
        .merge(health::routes())
        .merge(admin::routes())
        .merge(logs::routes())
        .merge(content::routes())
        .merge(auth::routes())
        .merge(users::routes())
        .merge(maintenances::routes())
        .merge(roles::routes())
        .merge(perimeters::routes())
        .merge(accesses::routes())
        .merge(fhir_terminology::routes())
        .merge(fhir::routes())
        .merge(audit::routes())
        .merge(folders::routes())
        .merge(requests::routes())
        .merge(snapshots::routes())
        .merge(cohorts::routes())
        .merge(feasibility::routes())
        .merge(refresh_schedules::routes())
        .merge(exports::routes())
        .merge(fhir_filters::routes())
        .merge(datalabs::routes())
}

/// The application's router.
pub fn router(state: AppState) -> Router {
    let Documented { router, operations } = documented();
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::layer,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::request_log::capture,
        ))
        // Outside the request log: refused input is never logged (nor could it be stored).
        .route_layer(axum::middleware::from_fn(crate::input_guard::guard))
        .route_layer(axum::middleware::from_fn(crate::observability::measure))
        .merge(crate::openapi::routes(&operations))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            maintenances::gate,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use crate::openapi::document;

    use super::*;

    #[test]
    fn operations_are_unique_and_path_parameters_are_declared() {
        let mut seen = std::collections::HashSet::new();
        let operations = documented().operations;
        for operation in &operations {
            assert!(
                seen.insert((operation.method, operation.path)),
                "{} {} listed twice",
                operation.method,
                operation.path
            );
        }
        let doc = serde_json::to_value(document(&operations)).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let op = &doc["paths"]["/audit/{aggregate_type}/{id}/state/"]["get"];
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, vec!["aggregate_type", "id"]);
        assert!(
            op["responses"]["403"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .ends_with("/Error")
        );
        assert!(
            doc["paths"]["/health/live"]["get"]
                .get("security")
                .is_none()
        );
    }
}
