//! `/webcontent/contents/` (anonymous read, full-admin write, as upstream) and
//! `/release-notes/` (authenticated read; writes restricted to full administrators, unlike
//! upstream, where any authenticated user may write them).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing;
use commands::content::ContentPatch;
use domain::content::{CONTENT_TYPES, ContentFields};
use projections::content::{CONTENT_ORDERINGS, ContentFilter, ReleaseNoteView, WebContentView};
use projections::parse_ordering;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{after_commit, path_int, written_json};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context};
use crate::openapi::{Anyone, Documented, FullAdmin, ParamType, Shape, User, op, param};
use crate::pagination::{Envelope, Params, list_param, page_envelope, page_window, text_param};
use crate::state::AppState;

/// Body of a content write. Metadata values may be strings or numbers (`"order": 1`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ContentBody {
    title: Option<String>,
    content: Option<String>,
    page: Option<String>,
    content_type: Option<String>,
    metadata: Option<BTreeMap<String, Value>>,
    #[serde(default, rename = "id")]
    _id: Option<Value>,
}

fn metadata(
    raw: Option<BTreeMap<String, Value>>,
) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    raw.map(|m| {
        m.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                _ => Err(ApiError::invalid_field(
                    "metadata",
                    format!("metadata '{k}' must be a string or a number"),
                )),
            })
            .collect()
    })
    .transpose()
}

/// `GET /webcontent/contents/` (anyone): `content_type` and `page_source` comma lists, `search`,
/// `ordering` (`created_at`, `modified_at`, `title`), page-numbered.
pub(super) async fn list_contents(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<Envelope<WebContentView>>, ApiError> {
    let content_types = list_param(&params, "content_type");
    if let Some(unknown) = content_types
        .iter()
        .find(|t| !CONTENT_TYPES.iter().any(|(known, _)| known == t))
    {
        return Err(ApiError::invalid_field(
            "content_type",
            format!("unknown content type '{unknown}'"),
        ));
    }
    let window = page_window(&params)?;
    let filter = ContentFilter {
        content_types,
        pages: list_param(&params, "page_source"),
        search: text_param(&params, "search"),
        ordering: parse_ordering(
            params.get("ordering").map(String::as_str),
            CONTENT_ORDERINGS,
        ),
    };
    let page = state.content_reader.contents(&filter, window).await?;
    Ok(Json(page_envelope(page, window, &uri, &headers, &params)))
}

/// `GET /webcontent/contents/content_types/`: the types and their labels.
pub(super) async fn content_types() -> Json<Value> {
    let labels: serde_json::Map<String, Value> = CONTENT_TYPES
        .iter()
        .map(|(t, label)| ((*t).to_string(), json!(label)))
        .collect();
    Json(Value::Object(labels))
}

pub(super) async fn retrieve_content(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebContentView>, ApiError> {
    let id = path_int(&id, "content", "content_not_found")?;
    state
        .content_reader
        .content(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("content_not_found", "content"))
}

pub(super) async fn create_content(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<ContentBody>,
) -> Result<Response, ApiError> {
    let required = |v: Option<String>, field: &'static str| {
        v.ok_or_else(|| ApiError::invalid_field(field, format!("{field} is required")))
    };
    let fields = ContentFields {
        title: required(body.title, "title")?,
        content: body.content.unwrap_or_default(),
        page: required(body.page, "page")?,
        content_type: required(body.content_type, "content_type")?,
        metadata: metadata(body.metadata)?.unwrap_or_default(),
    };
    let written = state
        .contents
        .create_content(&command_context(&caller, &trace), &caller, fields)
        .await?;
    let view = after_commit(state.content_reader.content(written.value)).await;
    Ok(written_json(
        StatusCode::CREATED,
        written.caught_up,
        view,
        json!({"id": written.value}),
    ))
}

pub(super) async fn update_content(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ContentBody>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "content", "content_not_found")?;
    let patch = ContentPatch {
        title: body.title,
        content: body.content,
        page: body.page,
        content_type: body.content_type,
        metadata: metadata(body.metadata)?,
    };
    let written = state
        .contents
        .update_content(&command_context(&caller, &trace), &caller, id, patch)
        .await?;
    let view = after_commit(state.content_reader.content(id)).await;
    Ok(written_json(
        StatusCode::OK,
        written.caught_up,
        view,
        json!({"id": id}),
    ))
}

pub(super) async fn delete_content(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_int(&id, "content", "content_not_found")?;
    state
        .contents
        .delete_content(&command_context(&caller, &trace), &caller, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of a release-note write.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NoteBody {
    title: Option<String>,
    /// A list of lines (upstream's array of text); a single string is one line.
    message: Option<Value>,
}

fn message_lines(raw: Option<Value>) -> Result<Option<Vec<String>>, ApiError> {
    match raw {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s])),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid_field(
                    "message",
                    "message lines must be strings",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::invalid_field(
            "message",
            "message must be a list of strings",
        )),
    }
}

/// `GET /release-notes/` (authenticated users): newest first, `search`, page-numbered.
pub(super) async fn list_notes(
    State(state): State<AppState>,
    _caller: Caller,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<Envelope<ReleaseNoteView>>, ApiError> {
    let window = page_window(&params)?;
    let search = text_param(&params, "search");
    let page = state
        .content_reader
        .release_notes(search.as_deref(), window)
        .await?;
    Ok(Json(page_envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve_note(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ReleaseNoteView>, ApiError> {
    let id = path_int(&id, "release note", "release_note_not_found")?;
    state
        .content_reader
        .release_note(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("release_note_not_found", "release note"))
}

pub(super) async fn create_note(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<NoteBody>,
) -> Result<Response, ApiError> {
    let title = body
        .title
        .ok_or_else(|| ApiError::invalid_field("title", "title is required"))?;
    let message = message_lines(body.message)?
        .ok_or_else(|| ApiError::invalid_field("message", "message is required"))?;
    let written = state
        .contents
        .create_release_note(&command_context(&caller, &trace), &caller, title, message)
        .await?;
    let view = after_commit(state.content_reader.release_note(written.value)).await;
    Ok(written_json(
        StatusCode::CREATED,
        written.caught_up,
        view,
        json!({"id": written.value}),
    ))
}

pub(super) async fn update_note(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NoteBody>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "release note", "release_note_not_found")?;
    let written = state
        .contents
        .update_release_note(
            &command_context(&caller, &trace),
            &caller,
            id,
            body.title,
            message_lines(body.message)?,
        )
        .await?;
    let view = after_commit(state.content_reader.release_note(id)).await;
    Ok(written_json(
        StatusCode::OK,
        written.caught_up,
        view,
        json!({"id": id}),
    ))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/webcontent/contents/",
            routing::get(list_contents).post(create_content),
            [
                op(
                    "GET",
                    "Web content",
                    Anyone,
                    200,
                    "Banners and news (filters: content_type, page_source, search, ordering)",
                )
                .answers(Shape::Page(None))
                .query(&[
                    param("content_type", ParamType::List),
                    param("page_source", ParamType::List),
                    param("search", ParamType::Text),
                    param("ordering", ParamType::Text),
                    param("page", ParamType::Integer),
                ]),
                op(
                    "POST",
                    "Web content",
                    FullAdmin,
                    201,
                    "Create a web content",
                )
                .body::<ContentBody>()
                .writes::<WebContentView>(),
            ],
        )
        .route(
            "/webcontent/contents/content_types/",
            routing::get(content_types),
            [op(
                "GET",
                "Web content",
                Anyone,
                200,
                "Content types and their labels",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/webcontent/contents/{id}/",
            routing::get(retrieve_content)
                .patch(update_content)
                .delete(delete_content),
            [
                op("GET", "Web content", Anyone, 200, "One web content")
                    .returns::<WebContentView>(),
                op(
                    "PATCH",
                    "Web content",
                    FullAdmin,
                    200,
                    "Change a web content",
                )
                .body::<ContentBody>()
                .writes::<WebContentView>(),
                op(
                    "DELETE",
                    "Web content",
                    FullAdmin,
                    204,
                    "Delete a web content",
                ),
            ],
        )
        .route(
            "/release-notes/",
            routing::get(list_notes).post(create_note),
            [
                op(
                    "GET",
                    "Web content",
                    User,
                    200,
                    "Release notes, newest first (search)",
                )
                .answers(Shape::Page(None))
                .query(&[
                    param("search", ParamType::Text),
                    param("page", ParamType::Integer),
                ]),
                op(
                    "POST",
                    "Web content",
                    FullAdmin,
                    201,
                    "Create a release note",
                )
                .body::<NoteBody>()
                .writes::<ReleaseNoteView>(),
            ],
        )
        .route(
            "/release-notes/{id}/",
            routing::get(retrieve_note).patch(update_note),
            [
                op("GET", "Web content", User, 200, "One release note")
                    .returns::<ReleaseNoteView>(),
                op(
                    "PATCH",
                    "Web content",
                    FullAdmin,
                    200,
                    "Change a release note",
                )
                .body::<NoteBody>()
                .writes::<ReleaseNoteView>(),
            ],
        )
}
