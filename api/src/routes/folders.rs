//! `/cohort/folders/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use projections::parse_ordering;
use projections::workspace::{FOLDER_ORDERING, FolderFilter, FolderView};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid, path_uuid_list};
use crate::openapi::{Documented, LIMIT_OFFSET, ParamType, User, op, param};
use crate::pagination::{Envelope, Params, datetime_param, envelope, text_param, window};
use crate::routes::{after_commit, written};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateFolder {
    name: String,
    description: Option<String>,
    owner: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateFolder {
    name: Option<String>,
    description: Option<String>,
    owner: Option<String>,
}

/// Upstream accepts `owner` only when it is the caller.
pub(crate) fn check_owner(owner: Option<&String>, caller: &Caller) -> Result<(), ApiError> {
    match owner {
        Some(o) if *o != caller.username => {
            Err(ApiError::invalid_field("owner", "owner must be the caller"))
        }
        _ => Ok(()),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<FolderView>>, ApiError> {
    let window = window(&params)?;
    let filter = FolderFilter {
        name: text_param(&params, "name"),
        min_created_at: datetime_param(&params, "min_created_at")?,
        max_created_at: datetime_param(&params, "max_created_at")?,
        search: text_param(&params, "search"),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), FOLDER_ORDERING),
    };
    let page = state
        .reader
        .list_folders(&caller.username, &filter, window)
        .await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FolderView>, ApiError> {
    let id = path_uuid(&id, "folder", "folder_not_found")?;
    state
        .reader
        .folder(&caller.username, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("folder_not_found", "folder"))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateFolder>,
) -> Result<Response, ApiError> {
    check_owner(body.owner.as_ref(), &caller)?;
    let ctx = command_context(&caller, &trace);
    let w = state
        .workspace
        .create_folder(&ctx, body.name, body.description)
        .await?;
    let view = after_commit(state.reader.folder(&caller.username, w.value)).await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateFolder>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "folder", "folder_not_found")?;
    check_owner(body.owner.as_ref(), &caller)?;
    let ctx = command_context(&caller, &trace);
    let w = state
        .workspace
        .update_folder(&ctx, id, body.name, body.description)
        .await?;
    let view = after_commit(state.reader.folder(&caller.username, id)).await;
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
    state.workspace.delete_folders(&ctx, &ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/cohort/folders/",
            routing::get(list).post(create),
            [
                op("GET", "Workspace", User, 200, "The caller's folders")
                    .returns_page::<FolderView>()
                    .query(&[
                        param("name", ParamType::Text),
                        param("min_created_at", ParamType::DateTime),
                        param("max_created_at", ParamType::DateTime),
                        param("search", ParamType::Text),
                        param("ordering", ParamType::Text),
                    ])
                    .query(LIMIT_OFFSET),
                op("POST", "Workspace", User, 201, "Create a folder")
                    .body::<CreateFolder>()
                    .writes::<FolderView>(),
            ],
        )
        .route(
            "/cohort/folders/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Workspace", User, 200, "One folder").returns::<FolderView>(),
                op(
                    "PATCH",
                    "Workspace",
                    User,
                    200,
                    "Rename or describe a folder",
                )
                .body::<UpdateFolder>()
                .writes::<FolderView>(),
                op(
                    "DELETE",
                    "Workspace",
                    User,
                    204,
                    "Delete folders (comma list of uuids) and their requests",
                ),
            ],
        )
}
