//! The HTTP routes. Paths keep upstream's mandatory trailing slash.

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
pub(crate) mod folders;
mod health;
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
use axum::routing::{get, patch, post};
use chrono::Utc;
use commands::identity::Requester;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// What the caller may do, for the identity service.
pub(crate) async fn requester(state: &AppState, caller: &Caller) -> Result<Requester, ApiError> {
    if caller.applicative {
        return Ok(Requester::Applicative);
    }
    Ok(Requester::User(
        state
            .identity
            .authority(&caller.username, Utc::now())
            .await?,
    ))
}

/// Whether the caller is a full administrator (applicative tokens never are).
pub(crate) async fn is_full_admin(state: &AppState, caller: &Caller) -> Result<bool, ApiError> {
    if caller.applicative {
        return Ok(false);
    }
    Ok(state
        .identity
        .authority(&caller.username, Utc::now())
        .await?
        .is_full_admin())
}

/// Refuses (403 `permission_denied`, with `refusal` as the message) anyone but a full
/// administrator; applicative tokens included.
pub(crate) async fn require_full_admin(
    state: &AppState,
    caller: &Caller,
    refusal: &str,
) -> Result<(), ApiError> {
    if !is_full_admin(state, caller).await? {
        return Err(ApiError::forbidden(
            "permission_denied",
            refusal.to_string(),
        ));
    }
    Ok(())
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

/// The application's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(crate::observability::metrics_endpoint))
        .route("/admin/projections/", get(admin::projections))
        .route("/logs/", get(logs::list))
        .route(
            "/webcontent/contents/",
            get(content::list_contents).post(content::create_content),
        )
        .route(
            "/webcontent/contents/content_types/",
            get(content::content_types),
        )
        .route(
            "/webcontent/contents/{id}/",
            get(content::retrieve_content)
                .patch(content::update_content)
                .delete(content::delete_content),
        )
        .route(
            "/release-notes/",
            get(content::list_notes).post(content::create_note),
        )
        .route(
            "/release-notes/{id}/",
            get(content::retrieve_note).patch(content::update_note),
        )
        .route("/logs/{id}/", get(logs::retrieve))
        .route("/auth/login/", post(auth::login))
        .route("/auth/refresh/", post(auth::refresh))
        .route("/auth/logout/", post(auth::logout))
        .route("/ws/", get(crate::ws::upgrade))
        .route("/users/", get(users::list).post(users::create))
        .route(
            "/users/{username}/",
            get(users::retrieve).patch(users::update),
        )
        .route("/users/{username}/check/", get(users::check))
        .route(
            "/maintenances/",
            get(maintenances::list).post(maintenances::create),
        )
        .route("/maintenances/next/", get(maintenances::next))
        .route(
            "/maintenances/{id}/",
            get(maintenances::retrieve)
                .patch(maintenances::update)
                .delete(maintenances::delete),
        )
        .route("/accesses/rights/", get(roles::rights))
        .route("/accesses/rights/{id}/", get(roles::right))
        .route("/accesses/roles/", get(roles::list).post(roles::create))
        .route("/accesses/roles/assignable/", get(roles::assignable))
        .route(
            "/accesses/roles/{id}/",
            get(roles::retrieve)
                .patch(roles::update)
                .delete(roles::delete),
        )
        .route("/accesses/roles/{id}/users/", get(roles::holders))
        .route("/accesses/profiles/", get(users::list_profiles))
        .route("/accesses/profiles/{id}/", get(users::retrieve_profile))
        .route("/accesses/perimeters/", get(perimeters::list))
        .route(
            "/accesses/perimeters/manageable/",
            get(perimeters::manageable),
        )
        .route(
            "/accesses/perimeters/patient-data/rights/",
            get(perimeters::data_rights),
        )
        .route(
            "/accesses/perimeters/patient-data/read/",
            get(perimeters::read_check),
        )
        .route("/accesses/perimeters/{id}/", get(perimeters::retrieve))
        .route(
            "/accesses/perimeters/{id}/children/",
            get(perimeters::children),
        )
        .route(
            "/accesses/accesses/",
            get(accesses::list).post(accesses::create),
        )
        .route("/accesses/accesses/my-accesses/", get(accesses::mine))
        .route(
            "/accesses/accesses/my-data-rights/",
            get(accesses::my_data_rights),
        )
        .route(
            "/accesses/accesses/{id}/",
            get(accesses::retrieve)
                .patch(accesses::update)
                .delete(accesses::delete),
        )
        .route("/accesses/accesses/{id}/close/", patch(accesses::close))
        .route("/fhir/metadata", get(fhir::metadata))
        .route("/fhir/{resource}", get(fhir::search))
        .route("/fhir/{resource}/{id}", get(fhir::read))
        .route("/audit/events/", get(audit::events))
        .route(
            "/audit/users/{username}/accesses/",
            get(audit::user_accesses),
        )
        .route("/audit/users/{username}/grants/", get(audit::user_grants))
        .route(
            "/audit/perimeters/{id}/readers/",
            get(audit::perimeter_readers),
        )
        .route(
            "/audit/requests/{id}/versions/",
            get(audit::request_versions),
        )
        .route("/audit/requests/{id}/diff/", get(audit::request_diff))
        .route("/audit/cohorts/{id}/lineage/", get(audit::cohort_lineage))
        .route(
            "/audit/{aggregate_type}/{id}/events/",
            get(audit::aggregate_history),
        )
        .route(
            "/audit/{aggregate_type}/{id}/state/",
            get(audit::aggregate_state),
        )
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
        .route(
            "/cohort/dated-measures/",
            get(cohorts::list_dated_measures).post(cohorts::create_dated_measure),
        )
        .route(
            "/cohort/dated-measures/{id}/",
            get(cohorts::retrieve_dated_measure).patch(cohorts::patch_dated_measure),
        )
        .route(
            "/cohort/cohorts/",
            get(cohorts::list_cohorts).post(cohorts::create_cohort),
        )
        .route("/cohort/cohorts/jobs/active/", get(cohorts::active_jobs))
        .route(
            "/cohort/cohorts/cohort-rights/",
            get(cohorts::cohort_rights),
        )
        .route(
            "/cohort/cohorts/{id}/",
            get(cohorts::retrieve_cohort)
                .patch(cohorts::patch_cohort)
                .delete(cohorts::delete_cohorts),
        )
        .route(
            "/cohort/feasibility-studies/",
            get(feasibility::list).post(feasibility::create),
        )
        .route(
            "/cohort/feasibility-studies/{id}/",
            get(feasibility::retrieve).patch(feasibility::patch),
        )
        .route(
            "/cohort/feasibility-studies/{id}/download/",
            get(feasibility::download),
        )
        .route(
            "/cohort/refresh-schedules/",
            get(refresh_schedules::list).post(refresh_schedules::create),
        )
        .route(
            "/cohort/refresh-schedules/{id}/",
            get(refresh_schedules::retrieve)
                .patch(refresh_schedules::update)
                .delete(refresh_schedules::delete),
        )
        .route("/exports/", get(exports::list).post(exports::create))
        .route("/exports/cohorts/", get(exports::cohorts))
        .route("/exports/fhir-filters/", get(fhir_filters::list))
        .route("/exports/fhir-filters/{id}/", get(fhir_filters::retrieve))
        .route(
            "/exports/datalabs/",
            get(datalabs::list_datalabs).post(datalabs::create_datalab),
        )
        .route(
            "/exports/datalabs/{id}/",
            get(datalabs::retrieve_datalab).patch(datalabs::update_datalab),
        )
        .route(
            "/exports/infrastructure-providers/",
            get(datalabs::list_providers).post(datalabs::create_provider),
        )
        .route(
            "/exports/infrastructure-providers/{id}/",
            get(datalabs::retrieve_provider)
                .patch(datalabs::update_provider)
                .delete(datalabs::delete_provider),
        )
        .route("/exports/export-stats/", get(exports::stats))
        .route("/exports/export-stats/{id}/", get(exports::export_stats))
        .route("/exports/{id}/", get(exports::retrieve))
        .route("/exports/{id}/download/", get(exports::download))
        .route("/exports/{id}/retry/", post(exports::retry))
        .route("/exports/{id}/relaunch/", post(exports::relaunch))
        .route("/exports/{id}/logs/", get(exports::logs))
        .route(
            "/cohort/fhir-filters/",
            get(fhir_filters::list).post(fhir_filters::create),
        )
        .route(
            "/cohort/fhir-filters/delete_multiple/",
            axum::routing::delete(fhir_filters::delete_multiple),
        )
        .route(
            "/cohort/fhir-filters/{id}/",
            get(fhir_filters::retrieve)
                .patch(fhir_filters::update)
                .delete(fhir_filters::delete),
        )
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
        .merge(crate::openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            maintenances::gate,
        ))
        .with_state(state)
}
