//! `/exports/datalabs/` and `/exports/infrastructure-providers/`: where Hive exports land.
//! Reading needs `right_read_datalabs`; writing needs it and `right_manage_datalabs` (full
//! admins hold both).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing;
use commands::authz::Permission;
use projections::exports::{DatalabView, ProviderView};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid};
use crate::openapi::{Documented, LIMIT_OFFSET, ParamType, Shape, User, op, param};
use crate::pagination::{Envelope, Params, envelope, text_param, window};
use crate::routes::{after_commit, written};
use crate::state::AppState;

/// Refuses unless the caller may read (or, with `write`, manage) datalabs.
async fn require(state: &AppState, caller: &Caller, write: bool) -> Result<(), ApiError> {
    let permission = if write {
        Permission::ManageDatalabs
    } else {
        Permission::ReadDatalabs
    };
    super::require(state, caller, permission).await.map(drop)
}

fn datalab_id(raw: &str) -> Result<Uuid, ApiError> {
    path_uuid(raw, "datalab", "datalab_not_found")
}

fn provider_id(raw: &str) -> Result<Uuid, ApiError> {
    path_uuid(
        raw,
        "infrastructure provider",
        "infrastructure_provider_not_found",
    )
}

pub(super) async fn list_datalabs(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<DatalabView>>, ApiError> {
    require(&state, &caller, false).await?;
    let window = window(&params)?;
    let provider = match text_param(&params, "infra_provider") {
        Some(raw) => Some(raw.parse::<Uuid>().map_err(|_| {
            ApiError::invalid_field("infra_provider", "infra_provider must be a provider uuid")
        })?),
        None => None,
    };
    let name = text_param(&params, "name");
    let page = state
        .export_reader
        .datalabs(name.as_deref(), provider, window)
        .await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve_datalab(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DatalabView>, ApiError> {
    require(&state, &caller, false).await?;
    let id = datalab_id(&id)?;
    state
        .export_reader
        .datalab(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("datalab_not_found", "datalab"))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct DatalabBody {
    name: Option<String>,
    infrastructure_provider: Option<Uuid>,
}

pub(super) async fn create_datalab(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<DatalabBody>,
) -> Result<Response, ApiError> {
    require(&state, &caller, true).await?;
    let name = body
        .name
        .ok_or_else(|| ApiError::invalid_field("name", "name is required"))?;
    let provider = body.infrastructure_provider.ok_or_else(|| {
        ApiError::invalid_field(
            "infrastructure_provider",
            "infrastructure_provider is required",
        )
    })?;
    let ctx = command_context(&caller, &trace);
    let w = state.exports.create_datalab(&ctx, name, provider).await?;
    let view = after_commit(state.export_reader.datalab(w.value)).await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn update_datalab(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DatalabBody>,
) -> Result<Response, ApiError> {
    require(&state, &caller, true).await?;
    let id = datalab_id(&id)?;
    let ctx = command_context(&caller, &trace);
    let w = state
        .exports
        .change_datalab(&ctx, id, body.name, body.infrastructure_provider)
        .await?;
    let view = after_commit(state.export_reader.datalab(id)).await;
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

pub(super) async fn list_providers(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<ProviderView>>, ApiError> {
    require(&state, &caller, false).await?;
    let window = window(&params)?;
    let page = state.export_reader.providers(window).await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    require(&state, &caller, false).await?;
    let id = provider_id(&id)?;
    state
        .export_reader
        .provider(id)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                "infrastructure_provider_not_found",
                "infrastructure provider",
            )
        })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ProviderBody {
    name: Option<String>,
}

pub(super) async fn create_provider(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<ProviderBody>,
) -> Result<Response, ApiError> {
    require(&state, &caller, true).await?;
    let name = body
        .name
        .ok_or_else(|| ApiError::invalid_field("name", "name is required"))?;
    let ctx = command_context(&caller, &trace);
    let w = state.exports.create_provider(&ctx, name).await?;
    let view = after_commit(state.export_reader.provider(w.value)).await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn update_provider(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ProviderBody>,
) -> Result<Response, ApiError> {
    require(&state, &caller, true).await?;
    let id = provider_id(&id)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::invalid_field("name", "name is required"))?;
    let ctx = command_context(&caller, &trace);
    let w = state.exports.rename_provider(&ctx, id, name).await?;
    let view = after_commit(state.export_reader.provider(id)).await;
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

pub(super) async fn delete_provider(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&state, &caller, true).await?;
    let id = provider_id(&id)?;
    let ctx = command_context(&caller, &trace);
    state.exports.delete_provider(&ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/exports/datalabs/",
            routing::get(list_datalabs).post(create_datalab),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "Datalabs (needs right_read_datalabs)",
                )
                .answers(Shape::Page(None))
                .query(&[
                    param("infra_provider", ParamType::Text),
                    param("name", ParamType::Text),
                ])
                .query(LIMIT_OFFSET),
                op(
                    "POST",
                    "Exports",
                    User,
                    201,
                    "Create a datalab (needs right_read_datalabs and right_manage_datalabs)",
                )
                .body::<DatalabBody>()
                .writes::<DatalabView>(),
            ],
        )
        .route(
            "/exports/datalabs/{id}/",
            routing::get(retrieve_datalab).patch(update_datalab),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "One datalab (needs right_read_datalabs)",
                )
                .answers(Shape::Object(None)),
                op(
                    "PATCH",
                    "Exports",
                    User,
                    200,
                    "Rename a datalab or move it to another provider",
                )
                .body::<DatalabBody>()
                .writes::<DatalabView>(),
            ],
        )
        .route(
            "/exports/infrastructure-providers/",
            routing::get(list_providers).post(create_provider),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "Infrastructure providers (needs right_read_datalabs)",
                )
                .answers(Shape::Page(None))
                .query(LIMIT_OFFSET),
                op(
                    "POST",
                    "Exports",
                    User,
                    201,
                    "Create an infrastructure provider",
                )
                .body::<ProviderBody>()
                .writes::<ProviderView>(),
            ],
        )
        .route(
            "/exports/infrastructure-providers/{id}/",
            routing::get(retrieve_provider)
                .patch(update_provider)
                .delete(delete_provider),
            [
                op("GET", "Exports", User, 200, "One infrastructure provider")
                    .returns::<ProviderView>(),
                op(
                    "PATCH",
                    "Exports",
                    User,
                    200,
                    "Rename an infrastructure provider",
                )
                .body::<ProviderBody>()
                .writes::<ProviderView>(),
                op(
                    "DELETE",
                    "Exports",
                    User,
                    204,
                    "Delete an infrastructure provider no datalab uses",
                ),
            ],
        )
}
