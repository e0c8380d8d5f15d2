//! `/exports/datalabs/` and `/exports/infrastructure-providers/`: where Hive exports land.
//! Reading needs `right_read_datalabs`; writing needs it and `right_manage_datalabs` (full
//! admins hold both).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use chrono::Utc;
use projections::exports::{DatalabView, ProviderView};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid};
use crate::pagination::{Envelope, Params, envelope, text_param, window};
use crate::routes::{after_commit, written};
use crate::state::AppState;

/// What the caller may do with datalabs.
async fn require(state: &AppState, caller: &Caller, write: bool) -> Result<(), ApiError> {
    let authority = state
        .identity
        .authority(&caller.username, Utc::now())
        .await?;
    let rights = authority.global();
    let full = rights.right_full_admin;
    let read = full || rights.right_read_datalabs;
    let manage = full || (read && rights.right_manage_datalabs);
    let allowed = !caller.applicative && if write { manage } else { read };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "permission_denied",
            if write {
                "managing datalabs needs right_read_datalabs and right_manage_datalabs"
            } else {
                "reading datalabs needs right_read_datalabs"
            },
        ))
    }
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

#[derive(Deserialize)]
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

#[derive(Deserialize)]
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
