//! `/cohort/dated-measures/` and `/cohort/cohorts/`: counts, cohorts, samples, the executor's
//! and the Solr ETL's callbacks, `jobs/active/` and `cohort-rights/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::{Duration, Utc};
use commands::authz::{JobReporter, Permission};
use commands::cohorts::{NewCohort, NewSample, Settled};
use domain::authz::PerimeterRef;
use domain::cohort::CohortChanges;
use projections::cohorts::{
    COHORT_ORDERING, CohortFilter, CohortView, DATED_MEASURE_ORDERING, DatedMeasureFilter,
    DatedMeasureView, Reader,
};
use projections::parse_ordering;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::job_callback::JobCallback;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid, path_uuid_list};
use crate::openapi::{
    Documented, LIMIT_OFFSET, ParamType, Shape, User, UserOrApplicative, op, param,
};
use crate::pagination::{
    Envelope, Params, bool_param, datetime_param, envelope, int_param, list_param, text_param,
    uuid_param, window,
};
use crate::routes::{after_commit, written};
use crate::small_cells::protected_of_snapshot;
use crate::state::AppState;

/// The owner scoping of `commands::authz` (`Principal::reads_every_owner`) as the cohorts
/// reader takes it.
pub(crate) fn reader(caller: &Caller) -> Reader<'_> {
    if caller.reads_every_owner() {
        Reader::Everyone
    } else {
        Reader::Owner(&caller.username)
    }
}

/// A count with upstream's computed fields.
#[derive(Serialize)]
pub(crate) struct DatedMeasureOut {
    #[serde(flatten)]
    view: DatedMeasureView,
    count_outdated: bool,
    cohort_limit: i64,
}

fn dated_measure_out(state: &AppState, view: DatedMeasureView) -> DatedMeasureOut {
    let validity = Duration::hours(state.settings.last_count_validity_hours);
    DatedMeasureOut {
        count_outdated: Utc::now() - view.created_at > validity,
        cohort_limit: state.settings.cohort_size_limit,
        view,
    }
}

/// A cohort with upstream's computed fields.
#[derive(Serialize)]
pub(crate) struct CohortOut {
    #[serde(flatten)]
    view: CohortView,
    exportable: bool,
}

fn cohort_out(state: &AppState, view: CohortView) -> CohortOut {
    let limit = state.settings.cohort_size_limit;
    CohortOut {
        exportable: view.result_size.is_some_and(|n| n <= limit),
        view,
    }
}

/// The JSON of counts and cohorts for the snapshot view.
pub(crate) fn snapshot_children(
    state: &AppState,
    measures: Vec<DatedMeasureView>,
    cohorts: Vec<CohortView>,
) -> (Vec<Value>, Vec<Value>) {
    let m = measures
        .into_iter()
        .map(|v| serde_json::to_value(dated_measure_out(state, v)).unwrap_or_default())
        .collect();
    let c = cohorts
        .into_iter()
        .map(|v| serde_json::to_value(cohort_out(state, v)).unwrap_or_default())
        .collect();
    (m, c)
}

// ---- dated measures ----

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateCount {
    request_query_snapshot: Option<Uuid>,
    request_query_snapshot_id: Option<Uuid>,
    request: Option<Uuid>,
    request_id: Option<Uuid>,
    #[serde(rename = "stageDetails")]
    stage_details: Option<String>,
}

pub(super) async fn list_dated_measures(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let window = window(&params)?;
    let filter = DatedMeasureFilter {
        request_query_snapshot: uuid_param(&params, "request_query_snapshot")?,
        request: uuid_param(&params, "request_id")?.or(uuid_param(&params, "request")?),
        status: list_param(&params, "request_job_status"),
        ordering: parse_ordering(
            params.get("ordering").map(String::as_str),
            DATED_MEASURE_ORDERING,
        ),
    };
    let page = state
        .cohort_reader
        .list_dated_measures(reader(&caller), &filter, window)
        .await?;
    let mut results = Vec::with_capacity(page.results.len());
    for v in page.results {
        let (owner, snapshot) = (v.owner.clone(), v.request_query_snapshot);
        let out = dated_measure_out(&state, v);
        results.push(protected_of_snapshot(&state, &caller, &owner, snapshot, out).await?);
    }
    let page = projections::Page {
        count: page.count,
        results,
    };
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve_dated_measure(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid(&id, "dated measure", "dated_measure_not_found")?;
    let v = state
        .cohort_reader
        .dated_measure(reader(&caller), id)
        .await?
        .ok_or_else(|| ApiError::not_found("dated_measure_not_found", "dated measure"))?;
    let (owner, snapshot) = (v.owner.clone(), v.request_query_snapshot);
    let out = dated_measure_out(&state, v);
    Ok(Json(
        protected_of_snapshot(&state, &caller, &owner, snapshot, out).await?,
    ))
}

pub(super) async fn create_dated_measure(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateCount>,
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
    let w = state
        .cohorts
        .request_count(
            &ctx,
            snapshot,
            body.request.or(body.request_id),
            body.stage_details,
        )
        .await?;
    let view = after_commit(
        state
            .cohort_reader
            .dated_measure(Reader::Owner(&caller.username), w.value),
    )
    .await
    .map(|v| dated_measure_out(&state, v));
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

/// `PATCH /cohort/dated-measures/{uuid}/`: the executor's callback.
pub(super) async fn patch_dated_measure(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "dated measure", "dated_measure_not_found")?;
    super::require(&state, &caller, Permission::ReportJobResult).await?;
    let report = JobCallback::read(&body).report();
    let ctx = command_context(&caller, &trace);
    let w = state.cohorts.settle_count(&ctx, id, report).await?;
    if w.value == Settled::InvalidStatus {
        return Err(invalid_status(&body));
    }
    let view = after_commit(state.cohort_reader.dated_measure(Reader::Everyone, id))
        .await
        .map(|v| dated_measure_out(&state, v));
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

pub(crate) fn invalid_status(body: &Value) -> ApiError {
    ApiError {
        field: Some("request_job_status"),
        ..ApiError::bad_request(
            "invalid_job_status",
            format!(
                "request_job_status {} is not a job status; the job was marked failed",
                body.get("request_job_status").unwrap_or(&Value::Null)
            ),
        )
    }
}

// ---- cohorts ----

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateCohort {
    name: Option<String>,
    description: Option<String>,
    request_query_snapshot: Option<Uuid>,
    request_query_snapshot_id: Option<Uuid>,
    request: Option<Uuid>,
    request_id: Option<Uuid>,
    dated_measure: Option<Uuid>,
    dated_measure_id: Option<Uuid>,
    #[serde(default)]
    global_estimate: bool,
    parent_cohort: Option<Uuid>,
    sampling_ratio: Option<f64>,
}

pub(super) async fn list_cohorts(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let window = window(&params)?;
    let limit = state.settings.cohort_size_limit;
    let filter = CohortFilter {
        name: text_param(&params, "name"),
        min_result_size: int_param(&params, "min_result_size")?,
        max_result_size: int_param(&params, "max_result_size")?,
        min_created_at: datetime_param(&params, "min_created_at")?,
        max_created_at: datetime_param(&params, "max_created_at")?,
        request_id: uuid_param(&params, "request_id")?,
        favorite: bool_param(&params, "favorite")?,
        group_id: list_param(&params, "group_id"),
        status: list_param(&params, "status"),
        parent_cohort: uuid_param(&params, "parent_cohort")?,
        is_sample: bool_param(&params, "is_sample")?,
        exportable: bool_param(&params, "exportable")?.map(|e| (e, limit)),
        search: text_param(&params, "search"),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), COHORT_ORDERING),
    };
    let page = state
        .cohort_reader
        .list_cohorts(reader(&caller), &filter, window)
        .await?;
    let mut results = Vec::with_capacity(page.results.len());
    for v in page.results {
        let (owner, snapshot) = (v.owner.clone(), v.request_query_snapshot);
        let out = cohort_out(&state, v);
        results.push(protected_of_snapshot(&state, &caller, &owner, snapshot, out).await?);
    }
    let page = projections::Page {
        count: page.count,
        results,
    };
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve_cohort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_uuid(&id, "cohort", "cohort_not_found")?;
    let v = state
        .cohort_reader
        .cohort(reader(&caller), id)
        .await?
        .ok_or_else(|| ApiError::not_found("cohort_not_found", "cohort"))?;
    let (owner, snapshot) = (v.owner.clone(), v.request_query_snapshot);
    let out = cohort_out(&state, v);
    Ok(Json(
        protected_of_snapshot(&state, &caller, &owner, snapshot, out).await?,
    ))
}

pub(super) async fn create_cohort(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateCohort>,
) -> Result<Response, ApiError> {
    let ctx = command_context(&caller, &trace);
    let name = body.name.unwrap_or_default();
    let w = match (
        body.parent_cohort,
        body.dated_measure.or(body.dated_measure_id),
    ) {
        (Some(parent), _) => {
            let ratio = body.sampling_ratio.ok_or_else(|| {
                ApiError::invalid_field("sampling_ratio", "sampling_ratio is required for a sample")
            })?;
            let sample = NewSample {
                name,
                description: body.description,
                parent_cohort: parent,
                sampling_ratio: ratio,
            };
            state.cohorts.create_sample(&ctx, sample).await?
        }
        (None, Some(dated_measure)) => {
            let new = NewCohort {
                name,
                description: body.description,
                snapshot: body
                    .request_query_snapshot
                    .or(body.request_query_snapshot_id),
                request: body.request.or(body.request_id),
                dated_measure,
                global_estimate: body.global_estimate,
            };
            state.cohorts.create_cohort(&ctx, new).await?
        }
        (None, None) => {
            return Err(ApiError::invalid_field(
                "dated_measure",
                "dated_measure (or parent_cohort and sampling_ratio for a sample) is required",
            ));
        }
    };
    let view = after_commit(
        state
            .cohort_reader
            .cohort(Reader::Owner(&caller.username), w.value),
    )
    .await
    .map(|v| cohort_out(&state, v));
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

/// Fields only the executor and the ETL may set; an owner sending them gets a 400.
const JOB_FIELDS: &[&str] = &[
    "request_job_status",
    "request_job_fail_msg",
    "group_id",
    "group.id",
    "group.count",
    "owner",
    "request_query_snapshot",
    "dated_measure",
];

/// `PATCH /cohort/cohorts/{uuid}/`: the owner's edits, or the executor's and ETL's callbacks.
pub(super) async fn patch_cohort(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "cohort", "cohort_not_found")?;
    let ctx = command_context(&caller, &trace);
    if let Some(kind) = caller.job_reporter() {
        let report = JobCallback::read(&body).report();
        let via_etl = kind == JobReporter::SolrEtl;
        let w = state
            .cohorts
            .settle_cohort(&ctx, id, report, via_etl)
            .await?;
        if w.value == Settled::InvalidStatus {
            return Err(invalid_status(&body));
        }
        let view = after_commit(state.cohort_reader.cohort(Reader::Everyone, id))
            .await
            .map(|v| cohort_out(&state, v));
        return Ok(written(StatusCode::OK, w.caught_up, view, id));
    }
    if let Some(field) = JOB_FIELDS.iter().find(|f| body.get(**f).is_some()) {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} cannot be changed; only the query executor reports a cohort's job"),
        ));
    }
    let text = |key: &'static str| -> Result<Option<String>, ApiError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid_field(
                key,
                format!("{key} must be a string"),
            )),
        }
    };
    let favorite = match body.get("favorite") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "favorite",
                "favorite must be a boolean",
            ));
        }
    };
    let changes = CohortChanges {
        name: text("name")?,
        description: text("description")?,
        favorite,
    };
    let w = state.cohorts.update_cohort(&ctx, id, changes).await?;
    let view = after_commit(
        state
            .cohort_reader
            .cohort(Reader::Owner(&caller.username), id),
    )
    .await
    .map(|v| cohort_out(&state, v));
    Ok(written(StatusCode::OK, w.caught_up, view, id))
}

pub(super) async fn delete_cohorts(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(ids): Path<String>,
) -> Result<Response, ApiError> {
    let ids = path_uuid_list(&ids)?;
    let ctx = command_context(&caller, &trace);
    state.cohorts.delete_cohorts(&ctx, &ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /cohort/cohorts/jobs/active/`: cohorts being created, all users (authenticated callers
/// only, unlike upstream).
pub(super) async fn active_jobs(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let n = state.cohort_reader.active_jobs().await?;
    Ok(Json(json!({ "jobs_count": n })))
}

/// `GET /cohort/cohorts/cohort-rights/?group_id=a,b`: what the caller may do with the patients
/// of each of their cohorts; a right holds only if it holds on every perimeter of the cohort.
pub(super) async fn cohort_rights(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let group_ids = list_param(&params, "group_id");
    if group_ids.is_empty() {
        return Err(ApiError::invalid_field("group_id", "group_id is required"));
    }
    let filter = CohortFilter {
        group_id: group_ids,
        ..Default::default()
    };
    let cohorts = state
        .cohort_reader
        .list_cohorts(
            Reader::Owner(&caller.username),
            &filter,
            crate::pagination::ALL,
        )
        .await?
        .results;
    if cohorts.is_empty() {
        return Err(ApiError::not_found("cohort_not_found", "cohort"));
    }
    let authority = state.access.authority(&caller).await?;
    let mut answer = Vec::new();
    for cohort in cohorts {
        let perimeters = state
            .identity
            .perimeters_by_cohort_ids(&cohort.perimeters_ids)
            .await?;
        let rights: Vec<_> = perimeters
            .iter()
            .map(|p| {
                authority.data_rights(PerimeterRef {
                    id: p.id,
                    ancestors: &p.ancestors,
                })
            })
            .collect();
        let all = |f: &dyn Fn(&domain::authz::DataRights) -> bool| {
            !rights.is_empty() && rights.iter().all(f)
        };
        answer.push(json!({
            "cohort_id": cohort.group_id,
            "rights": {
                "read_patient_nomi": all(&|r| r.right_read_patient_nominative),
                "read_patient_pseudo": all(&|r| r.reads()),
                "export_csv_xlsx_nomi": all(&|r| r.reads() && r.right_export_csv_xlsx_nominative),
                "export_jupyter_nomi": all(&|r| r.reads() && r.right_export_jupyter_nominative),
                "export_jupyter_pseudo": all(&|r| r.reads()
                    && (r.right_export_jupyter_pseudonymized || r.right_export_jupyter_nominative)),
            }
        }));
    }
    Ok(Json(Value::Array(answer)))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/cohort/dated-measures/",
            routing::get(list_dated_measures).post(create_dated_measure),
            [
                op("GET", "Cohorts", User, 200, "The caller's counts")
                    .answers(Shape::Page(None))
                    .query(&[
                        param("request_query_snapshot", ParamType::Uuid),
                        param("request_id", ParamType::Uuid),
                        param("request", ParamType::Uuid),
                        param("request_job_status", ParamType::List),
                        param("ordering", ParamType::Text),
                    ])
                    .query(LIMIT_OFFSET),
                op("POST", "Cohorts", User, 201, "Count a query version")
                    .body::<CreateCount>()
                    .answers(Shape::Json),
            ],
        )
        .route(
            "/cohort/dated-measures/{id}/",
            routing::get(retrieve_dated_measure).patch(patch_dated_measure),
            [
                op("GET", "Cohorts", User, 200, "One count").answers(Shape::Json),
                op(
                    "PATCH",
                    "Cohorts",
                    UserOrApplicative,
                    200,
                    "QueryExecutor callback with a count's result",
                )
                .answers(Shape::Json)
                .body::<JobCallback>(),
            ],
        )
        .route(
            "/cohort/cohorts/",
            routing::get(list_cohorts).post(create_cohort),
            [
                op("GET", "Cohorts", User, 200, "The caller's cohorts")
                    .answers(Shape::Page(None))
                    .query(&[
                        param("name", ParamType::Text),
                        param("min_result_size", ParamType::Integer),
                        param("max_result_size", ParamType::Integer),
                        param("min_created_at", ParamType::DateTime),
                        param("max_created_at", ParamType::DateTime),
                        param("request_id", ParamType::Uuid),
                        param("favorite", ParamType::Boolean),
                        param("group_id", ParamType::List),
                        param("status", ParamType::List),
                        param("parent_cohort", ParamType::Uuid),
                        param("is_sample", ParamType::Boolean),
                        param("exportable", ParamType::Boolean),
                        param("search", ParamType::Text),
                        param("ordering", ParamType::Text),
                    ])
                    .query(LIMIT_OFFSET),
                op(
                    "POST",
                    "Cohorts",
                    User,
                    201,
                    "Create a cohort (or a sample of one)",
                )
                .body::<CreateCohort>()
                .answers(Shape::Json),
            ],
        )
        .route(
            "/cohort/cohorts/jobs/active/",
            routing::get(active_jobs),
            [op(
                "GET",
                "Cohorts",
                User,
                200,
                "How many cohort jobs are running",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/cohort/cohorts/cohort-rights/",
            routing::get(cohort_rights),
            [op(
                "GET",
                "Cohorts",
                User,
                200,
                "The caller's rights on the perimeters of given cohorts",
            )
            .answers(Shape::Json)
            .query(&[param("group_id", ParamType::List)])],
        )
        .route(
            "/cohort/cohorts/{id}/",
            routing::get(retrieve_cohort)
                .patch(patch_cohort)
                .delete(delete_cohorts),
            [
                op("GET", "Cohorts", User, 200, "One cohort").answers(Shape::Json),
                op(
                    "PATCH",
                    "Cohorts",
                    UserOrApplicative,
                    200,
                    "Rename a cohort, or the executor's / ETL's callback",
                )
                .answers(Shape::Json),
                op(
                    "DELETE",
                    "Cohorts",
                    User,
                    204,
                    "Delete cohorts (comma list of uuids)",
                ),
            ],
        )
}
