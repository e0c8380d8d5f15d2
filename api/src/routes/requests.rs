//! `/cohort/requests/` and `/cohort/folders/{id}/requests/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use commands::workspace::{NewRequest, RequestChanges};
use projections::parse_ordering;
use projections::workspace::{REQUEST_ORDERING, RequestFilter, RequestView};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid, path_uuid_list};
use crate::openapi::{Documented, Shape, User, op};
use crate::pagination::{
    Envelope, Params, bool_param, datetime_param, envelope, text_param, uuid_param, window,
};
use crate::routes::folders::check_owner;
use crate::routes::{after_commit, written};
use crate::small_cells::protect_of_snapshot;
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateRequest {
    name: String,
    description: Option<String>,
    favorite: Option<bool>,
    parent_folder: Option<Uuid>,
    parent_folder_id: Option<Uuid>,
    owner: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateRequest {
    name: Option<String>,
    description: Option<String>,
    favorite: Option<bool>,
    parent_folder: Option<Uuid>,
    parent_folder_id: Option<Uuid>,
    owner: Option<String>,
}

fn filter(params: &Params, forced_folder: Option<Uuid>) -> Result<RequestFilter, ApiError> {
    Ok(RequestFilter {
        favorite: bool_param(params, "favorite")?,
        shared_by: text_param(params, "shared_by"),
        parent_folder: match forced_folder {
            Some(f) => Some(f),
            None => uuid_param(params, "parent_folder")?,
        },
        min_updated_at: datetime_param(params, "min_updated_at")?,
        max_updated_at: datetime_param(params, "max_updated_at")?,
        search: text_param(params, "search"),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), REQUEST_ORDERING),
    })
}

async fn list_filtered(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    folder: Option<Uuid>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let window = window(params)?;
    let page = state
        .reader
        .list_requests(&caller.username, &filter(params, folder)?, window)
        .await?;
    let mut results = Vec::with_capacity(page.results.len());
    for view in page.results {
        results.push(protected(state, caller, view).await?);
    }
    let page = projections::Page {
        count: page.count,
        results,
    };
    Ok(Json(envelope(page, window, uri, headers, params)))
}

/// [`protected`] for a request that may not be visible yet (read-your-writes timed out).
async fn protected_view(
    state: &AppState,
    caller: &Caller,
    view: Option<RequestView>,
) -> Result<Option<Value>, ApiError> {
    match view {
        Some(v) => Ok(Some(protected(state, caller, v).await?)),
        None => Ok(None),
    }
}

/// A request with the small counts of its snapshots protected, each against its own perimeters.
async fn protected(
    state: &AppState,
    caller: &Caller,
    view: RequestView,
) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(&view).map_err(|e| ApiError::bug(&e.to_string()))?;
    if let Some(summaries) = value
        .get_mut("query_snapshots")
        .and_then(Value::as_array_mut)
    {
        for summary in summaries {
            let Some(id) = summary
                .get("uuid")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            protect_of_snapshot(state, caller, &view.owner, id, summary).await?;
        }
    }
    Ok(value)
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    list_filtered(&state, &caller, &params, None, &uri, &headers).await
}

pub(super) async fn list_in_folder(
    State(state): State<AppState>,
    caller: Caller,
    Path(folder): Path<String>,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let folder = path_uuid(&folder, "folder", "folder_not_found")?;
    if state
        .reader
        .folder(&caller.username, folder)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("folder_not_found", "folder"));
    }
    list_filtered(&state, &caller, &params, Some(folder), &uri, &headers).await
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid(&id, "request", "request_not_found")?;
    let view = state
        .reader
        .request(&caller.username, id)
        .await?
        .ok_or_else(|| ApiError::not_found("request_not_found", "request"))?;
    Ok(Json(protected(&state, &caller, view).await?))
}

async fn create_with(
    state: &AppState,
    caller: &Caller,
    trace: &TraceId,
    body: CreateRequest,
    forced_folder: Option<Uuid>,
) -> Result<Response, ApiError> {
    check_owner(body.owner.as_ref(), caller)?;
    let parent_folder = forced_folder
        .or(body.parent_folder)
        .or(body.parent_folder_id)
        .ok_or_else(|| {
            ApiError::invalid_field("parent_folder", "parent_folder: this field is required")
        })?;
    let ctx = command_context(caller, trace);
    let new = NewRequest {
        name: body.name,
        description: body.description,
        favorite: body.favorite.unwrap_or(false),
        parent_folder,
    };
    let w = state.workspace.create_request(&ctx, new).await?;
    let view = after_commit(async {
        let view = state.reader.request(&caller.username, w.value).await?;
        protected_view(state, caller, view).await
    })
    .await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    create_with(&state, &caller, &trace, body, None).await
}

pub(super) async fn create_in_folder(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(folder): Path<String>,
    JsonBody(body): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let folder = path_uuid(&folder, "folder", "folder_not_found")?;
    create_with(&state, &caller, &trace, body, Some(folder)).await
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateRequest>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "request", "request_not_found")?;
    check_owner(body.owner.as_ref(), &caller)?;
    let ctx = command_context(&caller, &trace);
    let changes = RequestChanges {
        name: body.name,
        description: body.description,
        favorite: body.favorite,
        parent_folder: body.parent_folder.or(body.parent_folder_id),
    };
    let w = state.workspace.update_request(&ctx, id, changes).await?;
    let view = after_commit(async {
        let view = state.reader.request(&caller.username, id).await?;
        protected_view(&state, &caller, view).await
    })
    .await;
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
    state.workspace.delete_requests(&ctx, &ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/cohort/folders/{id}/requests/",
            routing::get(list_in_folder).post(create_in_folder),
            [
                op("GET", "Workspace", User, 200, "Requests of a folder")
                    .answers(Shape::Page(None)),
                op(
                    "POST",
                    "Workspace",
                    User,
                    201,
                    "Create a request in a folder",
                )
                .body::<CreateRequest>()
                .answers(Shape::Json),
            ],
        )
        .route(
            "/cohort/requests/",
            routing::get(list).post(create),
            [
                op("GET", "Workspace", User, 200, "The caller's requests")
                    .answers(Shape::Page(None)),
                op("POST", "Workspace", User, 201, "Create a request")
                    .body::<CreateRequest>()
                    .answers(Shape::Json),
            ],
        )
        .route(
            "/cohort/requests/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Workspace", User, 200, "One request").answers(Shape::Json),
                op("PATCH", "Workspace", User, 200, "Change a request")
                    .body::<UpdateRequest>()
                    .answers(Shape::Json),
                op(
                    "DELETE",
                    "Workspace",
                    User,
                    204,
                    "Delete requests (comma list of uuids)",
                ),
            ],
        )
}
