//! `/cohort/fhir-filters/`: the caller's saved FHIR filters.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use commands::fhir_filters::NewFhirFilter;
use domain::fhir_filter::{DEFAULT_QUERY_VERSION, FhirFilterChanges, FhirFilterFields};
use projections::cohorts::{FHIR_FILTER_ORDERING, FhirFilterQuery, FhirFilterView};
use projections::parse_ordering;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid, path_uuid_list};
use crate::openapi::{Documented, LIMIT_OFFSET, ParamType, Shape, User, op, param};
use crate::pagination::{Envelope, Params, bool_param, envelope, text_param, window};
use crate::routes::folders::check_owner;
use crate::routes::{after_commit, written};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateFilter {
    fhir_resource: Option<String>,
    fhir_version: Option<String>,
    query_version: Option<String>,
    name: Option<String>,
    filter: Option<String>,
    #[serde(default)]
    identifying: bool,
    #[serde(default)]
    auto_generated: bool,
    owner: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateFilter {
    fhir_resource: Option<String>,
    fhir_version: Option<String>,
    query_version: Option<String>,
    name: Option<String>,
    filter: Option<String>,
    identifying: Option<bool>,
    owner: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct DeleteMany {
    uuids: Vec<Uuid>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<FhirFilterView>>, ApiError> {
    if let Some(owner) = text_param(&params, "owner") {
        check_owner(Some(&owner), &caller)?;
    }
    let window = window(&params)?;
    let query = FhirFilterQuery {
        name: text_param(&params, "name"),
        fhir_resource: text_param(&params, "fhir_resource"),
        fhir_filter: text_param(&params, "fhir_filter"),
        query_version: text_param(&params, "query_version"),
        identifying: bool_param(&params, "identifying")?,
        ordering: parse_ordering(
            params.get("ordering").map(String::as_str),
            FHIR_FILTER_ORDERING,
        ),
    };
    let page = state
        .cohort_reader
        .list_fhir_filters(&caller.username, &query, window)
        .await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FhirFilterView>, ApiError> {
    let id = path_uuid(&id, "filter", "fhir_filter_not_found")?;
    state
        .cohort_reader
        .fhir_filter(&caller.username, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("fhir_filter_not_found", "filter"))
}

fn required(value: Option<String>, field: &'static str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_field(field, format!("{field} is required")))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateFilter>,
) -> Result<Response, ApiError> {
    check_owner(body.owner.as_ref(), &caller)?;
    let new = NewFhirFilter {
        fields: FhirFilterFields {
            fhir_resource: required(body.fhir_resource, "fhir_resource")?,
            fhir_version: required(body.fhir_version, "fhir_version")?,
            query_version: body
                .query_version
                .unwrap_or_else(|| DEFAULT_QUERY_VERSION.into()),
            name: required(body.name, "name")?,
            identifying: body.identifying,
        },
        filter: body.filter.unwrap_or_default(),
        auto_generated: body.auto_generated,
    };
    let ctx = command_context(&caller, &trace);
    let w = state.fhir_filters.create(&ctx, new).await?;
    let view = after_commit(state.cohort_reader.fhir_filter(&caller.username, w.value)).await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateFilter>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "filter", "fhir_filter_not_found")?;
    check_owner(body.owner.as_ref(), &caller)?;
    let changes = FhirFilterChanges {
        fhir_resource: body.fhir_resource,
        fhir_version: body.fhir_version,
        query_version: body.query_version,
        name: body.name,
        identifying: body.identifying,
        filter: body.filter,
    };
    let ctx = command_context(&caller, &trace);
    let w = state.fhir_filters.update(&ctx, id, changes).await?;
    let view = after_commit(state.cohort_reader.fhir_filter(&caller.username, id)).await;
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(ids): Path<String>,
) -> Result<Response, ApiError> {
    let ids = path_uuid_list(&ids)?;
    let ctx = command_context(&caller, &trace);
    state.fhir_filters.delete(&ctx, &ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /cohort/fhir-filters/delete_multiple/ {"uuids": […]}`: the caller's filters only.
pub(super) async fn delete_multiple(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<DeleteMany>,
) -> Result<Response, ApiError> {
    if body.uuids.is_empty() {
        return Err(ApiError::invalid_field("uuids", "uuids may not be empty"));
    }
    let ctx = command_context(&caller, &trace);
    state.fhir_filters.delete(&ctx, &body.uuids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/exports/fhir-filters/",
            routing::get(list),
            [op(
                "GET",
                "Exports",
                User,
                200,
                "The caller's saved FHIR filters, for export tables",
            )
            .returns_page::<FhirFilterView>()
            .query(&[
                param("owner", ParamType::Text),
                param("name", ParamType::Text),
                param("fhir_resource", ParamType::Text),
                param("fhir_filter", ParamType::Text),
                param("query_version", ParamType::Text),
                param("identifying", ParamType::Boolean),
                param("ordering", ParamType::Text),
            ])
            .query(LIMIT_OFFSET)],
        )
        .route(
            "/exports/fhir-filters/{id}/",
            routing::get(retrieve),
            [op(
                "GET",
                "Exports",
                User,
                200,
                "One of the caller's saved FHIR filters",
            )
            .returns::<FhirFilterView>()],
        )
        .route(
            "/cohort/fhir-filters/",
            routing::get(list).post(create),
            [
                op(
                    "GET",
                    "Cohorts",
                    User,
                    200,
                    "The caller's saved FHIR filters",
                )
                .returns_page::<FhirFilterView>()
                .query(&[
                    param("owner", ParamType::Text),
                    param("name", ParamType::Text),
                    param("fhir_resource", ParamType::Text),
                    param("fhir_filter", ParamType::Text),
                    param("query_version", ParamType::Text),
                    param("identifying", ParamType::Boolean),
                    param("ordering", ParamType::Text),
                ])
                .query(LIMIT_OFFSET),
                op("POST", "Cohorts", User, 201, "Save a FHIR filter")
                    .body::<CreateFilter>()
                    .writes::<FhirFilterView>(),
            ],
        )
        .route(
            "/cohort/fhir-filters/delete_multiple/",
            routing::delete(delete_multiple),
            [op(
                "DELETE",
                "Cohorts",
                User,
                204,
                "Delete several of the caller's filters (uuids in the body)",
            )
            .reads(Some(Shape::Json))],
        )
        .route(
            "/cohort/fhir-filters/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Cohorts", User, 200, "One saved filter").returns::<FhirFilterView>(),
                op("PATCH", "Cohorts", User, 200, "Change a saved filter")
                    .body::<UpdateFilter>()
                    .writes::<FhirFilterView>(),
                op("DELETE", "Cohorts", User, 204, "Delete a saved filter"),
            ],
        )
}
