//! `/cohort/feasibility-studies/`: per-perimeter feasibility reports, the executor's callback,
//! and the zipped report download.

use std::io::Write;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use commands::cohorts::Settled;
use commands::mails::escape_html;
use domain::feasibility::{ReportNode, StudyState};
use domain::job::JobStatus;
use projections::cohorts::{Reader, StudyView};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::job_callback::JobCallback;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid};
use crate::openapi::{Documented, LIMIT_OFFSET, Shape, User, UserOrApplicative, op};
use crate::pagination::{Envelope, Params, envelope, window};
use crate::routes::cohorts::{invalid_status, reader};
use crate::routes::{after_commit, written};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateStudy {
    request_query_snapshot: Option<Uuid>,
    request_query_snapshot_id: Option<Uuid>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<StudyView>>, ApiError> {
    let window = window(&params)?;
    let page = state
        .cohort_reader
        .list_studies(reader(&caller), window)
        .await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<StudyView>, ApiError> {
    let id = path_uuid(&id, "feasibility study", "feasibility_study_not_found")?;
    state
        .cohort_reader
        .study(reader(&caller), id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("feasibility_study_not_found", "feasibility study"))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateStudy>,
) -> Result<Response, ApiError> {
    let snapshot = body
        .request_query_snapshot
        .or(body.request_query_snapshot_id)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "request_query_snapshot",
                "request_query_snapshot is required",
            )
        })?;
    let ctx = command_context(&caller, &trace);
    let w = state.feasibility.request(&ctx, snapshot).await?;
    let view = after_commit(
        state
            .cohort_reader
            .study(Reader::Owner(&caller.username), w.value),
    )
    .await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

/// `PATCH /cohort/feasibility-studies/{uuid}/`: the executor's callback.
pub(super) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "feasibility study", "feasibility_study_not_found")?;
    super::require(
        &state,
        &caller,
        commands::authz::Permission::ReportJobResult,
    )
    .await?;
    let ctx = command_context(&caller, &trace);
    let w = state
        .feasibility
        .settle(&ctx, id, JobCallback::read(&body).report())
        .await?;
    if w.value == Settled::InvalidStatus {
        return Err(invalid_status(&body));
    }
    let view = after_commit(state.cohort_reader.study(Reader::Everyone, id)).await;
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

/// `GET …/{uuid}/download/`: the report as a zip of an HTML page and its JSON.
pub(super) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "feasibility study", "feasibility_study_not_found")?;
    let not_found = || ApiError::not_found("feasibility_report_not_found", "feasibility report");
    let study = state
        .feasibility
        .study(Some(&caller.username), id)
        .await?
        .filter(|s| s.job.status == JobStatus::Finished)
        .ok_or_else(not_found)?;
    let name = report_name(&study);
    let zip = report_zip(&study, &name, &state.settings.frontend_url)
        .map_err(|e| ApiError::bug(&format!("report archive: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.zip\""),
            ),
        ],
        zip,
    )
        .into_response())
}

/// `Rapport_{dd-mm-YYYY}_{first four words of the request name}`, safe as a file name.
fn report_name(study: &StudyState) -> String {
    let date = study
        .finished_at
        .unwrap_or(study.requested_at)
        .format("%d-%m-%Y");
    let words: Vec<String> = study
        .request_name
        .split_whitespace()
        .take(4)
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .filter(|w: &String| !w.is_empty())
        .collect();
    format!("Rapport_{date}_{}", words.join("_"))
}

fn html_list(nodes: &[ReportNode], out: &mut String) {
    if nodes.is_empty() {
        return;
    }
    out.push_str("<ul>");
    for n in nodes {
        out.push_str(&format!(
            "<li>{} : <strong>{}</strong>",
            escape_html(&n.name),
            escape_html(&n.bucket)
        ));
        html_list(&n.children, out);
        out.push_str("</li>");
    }
    out.push_str("</ul>");
}

fn json_buckets(nodes: &[ReportNode], out: &mut serde_json::Map<String, Value>) {
    for n in nodes {
        out.insert(n.cohort_id.clone(), Value::String(n.bucket.clone()));
        json_buckets(&n.children, out);
    }
}

/// The report archive: `{name}.html` (the nested list of perimeters and their bucketed counts)
/// and `{name}.json` (perimeter cohort id → bucket).
fn report_zip(
    study: &StudyState,
    name: &str,
    frontend_url: &str,
) -> zip::result::ZipResult<Vec<u8>> {
    let mut list = String::new();
    html_list(&study.tree, &mut list);
    let html = format!(
        "<!DOCTYPE html><html lang=\"fr\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>Rapport de faisabilité</h1>\
         <p>Requête : <a href=\"{link}\">{request}</a>, version {version}, du {date}.</p>\
         <p>Effectifs par périmètre (0, « &lt; 10 », puis par dizaines) :</p>{list}</body></html>",
        title = escape_html(name),
        link = escape_html(&format!(
            "{}/cohort/new/{}",
            frontend_url.trim_end_matches('/'),
            study.request_id
        )),
        request = escape_html(&study.request_name),
        version = study.snapshot_version,
        date = study.requested_at.format("%d/%m/%Y"),
    );
    let mut buckets = serde_json::Map::new();
    json_buckets(&study.tree, &mut buckets);
    let json = serde_json::to_vec_pretty(&Value::Object(buckets)).unwrap_or_default();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{name}.html"), options)?;
    zip.write_all(html.as_bytes())?;
    zip.start_file(format!("{name}.json"), options)?;
    zip.write_all(&json)?;
    Ok(zip.finish()?.into_inner())
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/cohort/feasibility-studies/",
            routing::get(list).post(create),
            [
                op(
                    "GET",
                    "Cohorts",
                    User,
                    200,
                    "The caller's feasibility studies",
                )
                .returns_page::<StudyView>()
                .query(LIMIT_OFFSET),
                op("POST", "Cohorts", User, 201, "Request a feasibility report")
                    .body::<CreateStudy>()
                    .answers(Shape::Json),
            ],
        )
        .route(
            "/cohort/feasibility-studies/{id}/",
            routing::get(retrieve).patch(patch),
            [
                op("GET", "Cohorts", User, 200, "One feasibility study").returns::<StudyView>(),
                op(
                    "PATCH",
                    "Cohorts",
                    UserOrApplicative,
                    200,
                    "QueryExecutor callback with a study's report",
                )
                .answers(Shape::Json)
                .body::<JobCallback>(),
            ],
        )
        .route(
            "/cohort/feasibility-studies/{id}/download/",
            routing::get(download),
            [op(
                "GET",
                "Cohorts",
                User,
                200,
                "The report as a zip (HTML and JSON)",
            )
            .answers(Shape::Json)],
        )
}
