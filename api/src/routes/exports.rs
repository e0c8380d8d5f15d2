//! `/exports/…`: export jobs (owner-scoped, unlike upstream), their downloads, retries and logs,
//! the exportable cohorts and filters, datalabs, infrastructure providers and export statistics.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::Utc;
use commands::exports::{NewExport, NewExportTable};
use domain::export::ExportFormat;
use futures::TryStreamExt;
use projections::exports::{EXPORT_ORDERINGS, ExportFilter, StatFilter, export_view};
use projections::parse_ordering;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid};
use crate::openapi::{Documented, FullAdmin, LIMIT_OFFSET, ParamType, Shape, User, op, param};
use crate::pagination::{Envelope, Params, bool_param, envelope, text_param, window};
use crate::routes::{after_commit, written_json};
use crate::state::AppState;

fn export_id(raw: &str) -> Result<Uuid, ApiError> {
    path_uuid(raw, "export", "export_not_found")
}

fn keep_days(state: &AppState) -> i64 {
    state.exports.settings().keep_days
}

/// `GET /exports/`: the caller's exports (every export for full admins).
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let window = window(&params)?;
    let owner = state.access.export_owner(&caller).await?;
    let filter = ExportFilter {
        owner,
        output_format: text_param(&params, "output_format"),
        statuses: text_param(&params, "status")
            .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
            .unwrap_or_default(),
        motivation: text_param(&params, "motivation"),
        search: text_param(&params, "search"),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), EXPORT_ORDERINGS),
    };
    let page = state.export_reader.exports(&filter, window).await?;
    if bool_param(&params, "return_full_objects")?.unwrap_or(false) {
        let days = keep_days(&state);
        let page = projections::Page {
            count: page.count,
            results: page
                .results
                .iter()
                .map(|(_, s)| export_view(s, days))
                .collect::<Vec<Value>>(),
        };
        return Ok(Json(envelope(page, window, &uri, &headers, &params)).into_response());
    }
    let page = projections::Page {
        count: page.count,
        results: page.results.into_iter().map(|(item, _)| item).collect(),
    };
    Ok(Json(envelope(page, window, &uri, &headers, &params)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateTable {
    table_name: Option<String>,
    name: Option<String>,
    columns: Option<Vec<String>>,
    cohort_result_source: Option<Uuid>,
    fhir_filter: Option<Uuid>,
    respect_table_relationships: Option<bool>,
    #[serde(default)]
    pivot_merge: bool,
    #[serde(default)]
    pivot_merge_columns: Vec<String>,
    #[serde(default)]
    pivot_merge_ids: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateExport {
    output_format: Option<String>,
    nominative: Option<bool>,
    datalab: Option<Uuid>,
    #[serde(default)]
    shift_dates: bool,
    #[serde(default)]
    group_tables: bool,
    motivation: Option<String>,
    #[serde(default)]
    export_tables: Vec<CreateTable>,
}

/// `POST /exports/`: validates (spec §5.1, every perimeter of the source cohorts checked) and
/// records a new export; subsets and the exporter follow in the background.
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateExport>,
) -> Result<Response, ApiError> {
    let format = body
        .output_format
        .as_deref()
        .ok_or_else(|| ApiError::invalid_field("output_format", "output_format is required"))?;
    let output_format = ExportFormat::parse(format).ok_or_else(|| {
        ApiError::invalid_field(
            "output_format",
            format!("unknown output_format {format:?}: expected csv, xlsx or hive"),
        )
    })?;
    let mut tables = Vec::with_capacity(body.export_tables.len());
    for t in body.export_tables {
        let table_name = t.table_name.or(t.name).unwrap_or_default();
        tables.push(NewExportTable {
            table_name,
            columns: t.columns,
            cohort_result_source: t.cohort_result_source,
            fhir_filter: t.fhir_filter,
            respect_table_relationships: t.respect_table_relationships.unwrap_or(true),
            pivot_merge: t.pivot_merge,
            pivot_merge_columns: t.pivot_merge_columns,
            pivot_merge_ids: t.pivot_merge_ids,
        });
    }
    let new = NewExport {
        output_format,
        nominative: body.nominative.unwrap_or(false),
        datalab: body.datalab,
        shift_dates: body.shift_dates,
        group_tables: body.group_tables,
        motivation: body.motivation,
        tables,
    };
    let ctx = command_context(&caller, &trace);
    let w = state.exports.request(&ctx, new).await?;
    let view = after_commit(state.export_reader.export(w.value))
        .await
        .map(|s| export_view(&s, keep_days(&state)));
    Ok(written_json(
        StatusCode::CREATED,
        w.caught_up,
        view,
        serde_json::json!({ "uuid": w.value }),
    ))
}

/// `GET /exports/{uuid}/`: the owner's export.
pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = export_id(&id)?;
    state
        .export_reader
        .export(id)
        .await?
        .filter(|s| s.owner == caller.username)
        .map(|s| Json(export_view(&s, keep_days(&state))))
        .ok_or_else(|| ApiError::not_found("export_not_found", "export"))
}

/// `GET /exports/{uuid}/download/`: the archive, streamed from storage, to its owner only, while
/// within the retention window.
pub(super) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let download = state
        .exports
        .download(&caller.username, id, Utc::now())
        .await?;
    let Some((size, stream)) = state.exports.open(&download.path).await? else {
        tracing::error!(export = %id, "a downloadable export's archive is missing from storage");
        return Err(ApiError::not_found("export_file_missing", "export file"));
    };
    let mut response = Response::new(Body::from_stream(stream.map_ok(axum::body::Bytes::from)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) =
        header::HeaderValue::from_str(&format!("attachment; filename=\"{}\"", download.file_name))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(size) = size
        && let Ok(v) = header::HeaderValue::from_str(&size.to_string())
    {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    Ok(response)
}

/// `POST /exports/{uuid}/retry/` (full admins): back to `new`, run again.
pub(super) async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let ctx = command_context(&caller, &trace);
    let w = state.exports.retry(&ctx, &caller, id).await?;
    let view = after_commit(state.export_reader.export(id))
        .await
        .map(|s| export_view(&s, keep_days(&state)));
    Ok(written_json(
        StatusCode::OK,
        w.caught_up,
        view,
        serde_json::json!({ "uuid": id }),
    ))
}

/// `POST /exports/{uuid}/relaunch/` (full admins): a new export with the same configuration,
/// for the same owner, validated against the owner's current rights.
pub(super) async fn relaunch(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    let ctx = command_context(&caller, &trace);
    let w = state.exports.relaunch(&ctx, &caller, id).await?;
    let view = after_commit(state.export_reader.export(w.value))
        .await
        .map(|s| export_view(&s, keep_days(&state)));
    Ok(written_json(
        StatusCode::CREATED,
        w.caught_up,
        view,
        serde_json::json!({ "uuid": w.value }),
    ))
}

/// `GET /exports/{uuid}/logs/` (full admins): the exporter's logs as a JSON attachment.
pub(super) async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = export_id(&id)?;
    match state.exports.logs(&caller, id).await? {
        None => Ok((StatusCode::OK, "no logs").into_response()),
        Some(logs) => Ok((
            [(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"export_{id}_logs.json\""),
            )],
            Json(logs),
        )
            .into_response()),
    }
}

/// `GET /exports/cohorts/`: the caller's created cohorts (not subsets), which may be exported.
pub(super) async fn cohorts(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<projections::exports::ExportableCohort>>, ApiError> {
    let window = window(&params)?;
    let page = state
        .export_reader
        .exportable_cohorts(&caller.username, window)
        .await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

/// `GET /exports/export-stats/`: statistics of the caller's exports (every export's for full
/// admins). They are computed by the exporters; nobody writes them (upstream let anyone).
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<projections::exports::ExportStatView>>, ApiError> {
    let window = window(&params)?;
    let owner = state.access.export_owner(&caller).await?;
    let export = match text_param(&params, "export") {
        Some(raw) => Some(
            raw.parse::<Uuid>()
                .map_err(|_| ApiError::invalid_field("export", "export must be an export uuid"))?,
        ),
        None => None,
    };
    let filter = StatFilter {
        owner,
        export,
        name: text_param(&params, "name"),
        kind: text_param(&params, "type"),
        export_target_name: text_param(&params, "export_target_name"),
    };
    let page = state.export_reader.stats(&filter, window).await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

/// `GET /exports/export-stats/{uuid}/`: the statistics of one of the caller's exports.
pub(super) async fn export_stats(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<projections::exports::ExportStatView>>, ApiError> {
    let id = export_id(&id)?;
    let owner = state.access.export_owner(&caller).await?;
    let filter = StatFilter {
        owner,
        export: Some(id),
        ..Default::default()
    };
    let page = state
        .export_reader
        .stats(
            &filter,
            projections::Window {
                limit: 1000,
                offset: 0,
            },
        )
        .await?;
    if page.count == 0 {
        return Err(ApiError::not_found("export_not_found", "export"));
    }
    Ok(Json(page.results))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/exports/",
            routing::get(list).post(create),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "The caller's exports (every export for full admins); `return_full_objects=true` for full objects",
                )
                .answers(Shape::Json)
                .query(&[param("output_format", ParamType::Text), param("status", ParamType::Text), param("motivation", ParamType::Text), param("search", ParamType::Text), param("return_full_objects", ParamType::Boolean), param("ordering", ParamType::Text)])
                .query(LIMIT_OFFSET),
                op(
                    "POST",
                    "Exports",
                    User,
                    201,
                    "Request an export (validated against the owner's rights on every perimeter of its cohorts)",
                )
                .body::<CreateExport>()
                .answers(Shape::Json),
            ],
        )
        .route(
            "/exports/cohorts/",
            routing::get(cohorts),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "The caller's created cohorts, which may be exported",
                )
                .returns_page::<projections::exports::ExportableCohort>()
                .query(&[param("limit", ParamType::Integer), param("offset", ParamType::Integer)]),
            ],
        )
        .route(
            "/exports/export-stats/",
            routing::get(stats),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "Statistics of the caller's finished exports",
                )
                .returns_page::<projections::exports::ExportStatView>()
                .query(&[param("export", ParamType::Text), param("name", ParamType::Text), param("type", ParamType::Text), param("export_target_name", ParamType::Text)])
                .query(LIMIT_OFFSET),
            ],
        )
        .route(
            "/exports/export-stats/{id}/",
            routing::get(export_stats),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "Statistics of one of the caller's exports",
                )
                .returns_list::<projections::exports::ExportStatView>(),
            ],
        )
        .route(
            "/exports/{id}/",
            routing::get(retrieve),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "One of the caller's exports",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/exports/{id}/download/",
            routing::get(download),
            [
                op(
                    "GET",
                    "Exports",
                    User,
                    200,
                    "The export's files as export_{group_id}.zip (owner only, within the retention window)",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/exports/{id}/retry/",
            routing::post(retry),
            [
                op(
                    "POST",
                    "Exports",
                    FullAdmin,
                    200,
                    "Run a finished or failed export again",
                )
                .answers(Shape::Json)
                .reads(None),
            ],
        )
        .route(
            "/exports/{id}/relaunch/",
            routing::post(relaunch),
            [
                op(
                    "POST",
                    "Exports",
                    FullAdmin,
                    201,
                    "A new export copying this one, for the same owner",
                )
                .answers(Shape::Json)
                .reads(None),
            ],
        )
        .route(
            "/exports/{id}/logs/",
            routing::get(logs),
            [
                op(
                    "GET",
                    "Exports",
                    FullAdmin,
                    200,
                    "The exporter's logs of an export",
                )
                .answers(Shape::Json),
            ],
        )
}
