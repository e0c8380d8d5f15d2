//! The HTTP routes. Paths keep upstream's mandatory trailing slash.

mod folders;
mod health;
mod requests;
mod snapshots;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

/// Answer of a write: the object as the read model shows it, or, when the read models have not
/// caught up in time, the bare id with `X-Cohort360-Consistency: pending` (the write is durable).
pub(crate) fn written<T: serde::Serialize>(
    status: StatusCode,
    caught_up: bool,
    view: Option<T>,
    id: uuid::Uuid,
) -> Response {
    match view {
        Some(view) if caught_up => (status, axum::Json(view)).into_response(),
        _ => (
            status,
            [("x-cohort360-consistency", "pending")],
            axum::Json(serde_json::json!({ "uuid": id })),
        )
            .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::route_not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The application's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/cohort/folders/", get(folders::list).post(folders::create))
        .route(
            "/cohort/folders/{id}/",
            get(folders::retrieve)
                .patch(folders::update)
                .delete(folders::delete),
        )
        .route(
            "/cohort/folders/{id}/requests/",
            get(requests::list_in_folder).post(requests::create_in_folder),
        )
        .route(
            "/cohort/requests/",
            get(requests::list).post(requests::create),
        )
        .route(
            "/cohort/requests/{id}/",
            get(requests::retrieve)
                .patch(requests::update)
                .delete(requests::delete),
        )
        .route(
            "/cohort/requests/{id}/query-snapshots/",
            get(snapshots::list_of_request).post(snapshots::create_for_request),
        )
        .route(
            "/cohort/request-query-snapshots/",
            get(snapshots::list).post(snapshots::create),
        )
        .route(
            "/cohort/request-query-snapshots/{id}/",
            get(snapshots::retrieve).patch(snapshots::update),
        )
        .route(
            "/cohort/request-query-snapshots/{id}/next-snapshots/",
            get(snapshots::list_next).post(snapshots::create_next),
        )
        .route(
            "/cohort/request-query-snapshots/{id}/share/",
            post(snapshots::share),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
