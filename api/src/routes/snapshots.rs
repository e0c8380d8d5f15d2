//! `/cohort/request-query-snapshots/` and `/cohort/requests/{id}/query-snapshots/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use commands::workspace::NewSnapshot;
use projections::cohorts::{CohortView, DatedMeasureView};
use projections::parse_ordering;
use projections::workspace::{SNAPSHOT_ORDERING, SnapshotFilter, SnapshotView};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid};
use crate::openapi::{Documented, Shape, User, op};
use crate::pagination::{Envelope, Params, envelope, text_param, uuid_param, window};
use crate::routes::{after_commit, written};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateSnapshot {
    serialized_query: String,
    request: Option<Uuid>,
    request_id: Option<Uuid>,
    previous_snapshot: Option<Uuid>,
    previous_snapshot_id: Option<Uuid>,
    name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateSnapshot {
    name: Option<String>,
    serialized_query: Option<String>,
    // Present only to be refused: a snapshot never changes request or parent.
    request: Option<serde_json::Value>,
    request_id: Option<serde_json::Value>,
    previous_snapshot: Option<serde_json::Value>,
    previous_snapshot_id: Option<serde_json::Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct Share {
    recipients: String,
    name: Option<String>,
    /// Tell the recipients by e-mail.
    notify_by_email: Option<bool>,
}

enum Forced {
    Nothing,
    Request(Uuid),
    Previous(Uuid),
}

fn snapshot_id(raw: &str) -> Result<Uuid, ApiError> {
    path_uuid(raw, "query snapshot", "snapshot_not_found")
}

async fn list_filtered(
    state: &AppState,
    caller: &Caller,
    params: &Params,
    forced: Forced,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Json<Envelope<SnapshotView>>, ApiError> {
    let window = window(params)?;
    let mut filter = SnapshotFilter {
        request: uuid_param(params, "request")?,
        name: text_param(params, "name"),
        shared_by: text_param(params, "shared_by"),
        previous_snapshot: uuid_param(params, "previous_snapshot")?,
        request_parent_folder: uuid_param(params, "request__parent_folder")?,
        ordering: parse_ordering(
            params.get("ordering").map(String::as_str),
            SNAPSHOT_ORDERING,
        ),
    };
    match forced {
        Forced::Nothing => {}
        Forced::Request(r) => filter.request = Some(r),
        Forced::Previous(p) => filter.previous_snapshot = Some(p),
    }
    let mut page = state
        .reader
        .list_snapshots(&caller.username, &filter, window)
        .await?;
    page.results = with_jobs(state, caller, page.results).await?;
    Ok(Json(envelope(page, window, uri, headers, params)))
}

/// Fills the snapshots' `dated_measures` and `cohort_results` from the cohorts read model.
async fn with_jobs(
    state: &AppState,
    caller: &Caller,
    views: Vec<SnapshotView>,
) -> Result<Vec<SnapshotView>, ApiError> {
    let ids: Vec<_> = views.iter().map(|v| v.uuid).collect();
    if ids.is_empty() {
        return Ok(views);
    }
    let jobs = state.cohort_reader.of_snapshots(&ids).await?;
    attach_jobs(state, caller, views, jobs).await
}

/// Puts each snapshot's dated measures and cohorts (`jobs`, read for all of them) in its view,
/// small counts protected as the caller's rights require.
async fn attach_jobs(
    state: &AppState,
    caller: &Caller,
    mut views: Vec<SnapshotView>,
    (measures, cohorts): (Vec<DatedMeasureView>, Vec<CohortView>),
) -> Result<Vec<SnapshotView>, ApiError> {
    for view in &mut views {
        let (m, c) = crate::routes::cohorts::snapshot_children(
            state,
            measures
                .iter()
                .filter(|m| m.request_query_snapshot == view.uuid)
                .cloned()
                .collect(),
            cohorts
                .iter()
                .filter(|c| c.request_query_snapshot == view.uuid)
                .cloned()
                .collect(),
        );
        let (mut m, mut c) = (Value::Array(m), Value::Array(c));
        crate::small_cells::protect(state, caller, &view.perimeters_ids, &mut m).await?;
        crate::small_cells::protect(state, caller, &view.perimeters_ids, &mut c).await?;
        view.dated_measures = array(m);
        view.cohort_results = array(c);
    }
    Ok(views)
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// The caller's snapshot `id` with its jobs, `None` when it has no such snapshot. The snapshot
/// and its jobs are read side by side (one round trip of waiting instead of three): the jobs
/// read for a snapshot the caller may not see are dropped unseen.
async fn one_with_jobs(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Option<SnapshotView>, ApiError> {
    let ids = [id];
    let (view, jobs) = tokio::try_join!(
        state.reader.snapshot(&caller.username, id),
        state.cohort_reader.of_snapshots(&ids),
    )?;
    Ok(match view {
        Some(v) => attach_jobs(state, caller, vec![v], jobs).await?.pop(),
        None => None,
    })
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<SnapshotView>>, ApiError> {
    list_filtered(&state, &caller, &params, Forced::Nothing, &uri, &headers).await
}

pub(super) async fn list_of_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(request): Path<String>,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<SnapshotView>>, ApiError> {
    let request = path_uuid(&request, "request", "request_not_found")?;
    if state
        .reader
        .request(&caller.username, request)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("request_not_found", "request"));
    }
    list_filtered(
        &state,
        &caller,
        &params,
        Forced::Request(request),
        &uri,
        &headers,
    )
    .await
}

pub(super) async fn list_next(
    State(state): State<AppState>,
    caller: Caller,
    Path(previous): Path<String>,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<SnapshotView>>, ApiError> {
    let previous = snapshot_id(&previous)?;
    if state
        .reader
        .snapshot(&caller.username, previous)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("snapshot_not_found", "query snapshot"));
    }
    list_filtered(
        &state,
        &caller,
        &params,
        Forced::Previous(previous),
        &uri,
        &headers,
    )
    .await
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    let id = snapshot_id(&id)?;
    one_with_jobs(&state, &caller, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("snapshot_not_found", "query snapshot"))
}

async fn create_with(
    state: &AppState,
    caller: &Caller,
    trace: &TraceId,
    body: CreateSnapshot,
    forced: Forced,
) -> Result<Response, ApiError> {
    let mut new = NewSnapshot {
        request: body.request.or(body.request_id),
        previous_snapshot: body.previous_snapshot.or(body.previous_snapshot_id),
        serialized_query: body.serialized_query,
        name: body.name,
    };
    match forced {
        Forced::Nothing => {}
        Forced::Request(r) => new.request = Some(r),
        Forced::Previous(p) => new.previous_snapshot = Some(p),
    }
    let ctx = command_context(caller, trace);
    let w = state.workspace.save_snapshot(&ctx, new).await?;
    let view = after_commit(one_with_jobs(state, caller, w.value)).await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateSnapshot>,
) -> Result<Response, ApiError> {
    create_with(&state, &caller, &trace, body, Forced::Nothing).await
}

pub(super) async fn create_for_request(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(request): Path<String>,
    JsonBody(body): JsonBody<CreateSnapshot>,
) -> Result<Response, ApiError> {
    let request = path_uuid(&request, "request", "request_not_found")?;
    create_with(&state, &caller, &trace, body, Forced::Request(request)).await
}

pub(super) async fn create_next(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(previous): Path<String>,
    JsonBody(body): JsonBody<CreateSnapshot>,
) -> Result<Response, ApiError> {
    let previous = snapshot_id(&previous)?;
    create_with(&state, &caller, &trace, body, Forced::Previous(previous)).await
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateSnapshot>,
) -> Result<Response, ApiError> {
    let id = snapshot_id(&id)?;
    let immutable = [
        ("request", &body.request),
        ("request_id", &body.request_id),
        ("previous_snapshot", &body.previous_snapshot),
        ("previous_snapshot_id", &body.previous_snapshot_id),
    ];
    if let Some((field, _)) = immutable.iter().find(|(_, v)| v.is_some()) {
        return Err(ApiError {
            field: Some(field),
            ..ApiError::bad_request("immutable_field", format!("{field} cannot be changed"))
        });
    }
    let ctx = command_context(&caller, &trace);
    let w = state
        .workspace
        .update_snapshot(&ctx, id, body.name, body.serialized_query)
        .await?;
    let view = after_commit(one_with_jobs(&state, &caller, id)).await;
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

pub(super) async fn share(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Share>,
) -> Result<Response, ApiError> {
    let id = snapshot_id(&id)?;
    let ctx = command_context(&caller, &trace);
    let w = state
        .workspace
        .share_snapshot(
            &ctx,
            id,
            &body.recipients,
            body.name,
            body.notify_by_email.unwrap_or(false),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "shared_requests": w.value })),
    )
        .into_response())
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/cohort/requests/{id}/query-snapshots/",
            routing::get(list_of_request).post(create_for_request),
            [
                op("GET", "Workspace", User, 200, "Query versions of a request")
                    .returns_page::<SnapshotView>(),
                op(
                    "POST",
                    "Workspace",
                    User,
                    201,
                    "Save a query version of a request",
                )
                .body::<CreateSnapshot>()
                .writes::<SnapshotView>(),
            ],
        )
        .route(
            "/cohort/request-query-snapshots/",
            routing::get(list).post(create),
            [
                op("GET", "Workspace", User, 200, "The caller's query versions")
                    .returns_page::<SnapshotView>(),
                op("POST", "Workspace", User, 201, "Save a query version")
                    .body::<CreateSnapshot>()
                    .writes::<SnapshotView>(),
            ],
        )
        .route(
            "/cohort/request-query-snapshots/{id}/",
            routing::get(retrieve).patch(update),
            [
                op("GET", "Workspace", User, 200, "One query version").returns::<SnapshotView>(),
                op(
                    "PATCH",
                    "Workspace",
                    User,
                    200,
                    "Rename a query version or patch its query",
                )
                .body::<UpdateSnapshot>()
                .writes::<SnapshotView>(),
            ],
        )
        .route(
            "/cohort/request-query-snapshots/{id}/next-snapshots/",
            routing::get(list_next).post(create_next),
            [
                op(
                    "GET",
                    "Workspace",
                    User,
                    200,
                    "Versions saved from this one",
                )
                .returns_page::<SnapshotView>(),
                op(
                    "POST",
                    "Workspace",
                    User,
                    201,
                    "Save a version from this one",
                )
                .body::<CreateSnapshot>()
                .writes::<SnapshotView>(),
            ],
        )
        .route(
            "/cohort/request-query-snapshots/{id}/share/",
            routing::post(share),
            [op(
                "POST",
                "Workspace",
                User,
                201,
                "Share a query version with other users",
            )
            .body::<Share>()
            .answers(Shape::Json)],
        )
}
