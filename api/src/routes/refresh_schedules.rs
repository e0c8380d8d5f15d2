//! `/cohort/refresh-schedules/`: periodic re-counts of the caller's snapshots.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::NaiveTime;
use commands::refresh::ScheduleChanges;
use domain::refresh::Frequency;
use projections::cohorts::{ScheduleFilter, ScheduleView};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context, path_uuid, path_uuid_list};
use crate::openapi::{Documented, LIMIT_OFFSET, ParamType, User, op, param};
use crate::pagination::{Envelope, Params, envelope, text_param, uuid_param, window};
use crate::routes::{after_commit, written};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateSchedule {
    request_snapshot: Option<Uuid>,
    request_snapshot_id: Option<Uuid>,
    refresh_time: Option<String>,
    refresh_frequency: Option<String>,
    #[serde(default)]
    notify_owner: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateSchedule {
    refresh_time: Option<String>,
    refresh_frequency: Option<String>,
    notify_owner: Option<bool>,
}

fn time(raw: &str) -> Result<NaiveTime, ApiError> {
    NaiveTime::parse_from_str(raw, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(raw, "%H:%M"))
        .map_err(|_| {
            ApiError::invalid_field(
                "refresh_time",
                "refresh_time must be HH:MM or HH:MM:SS (UTC)",
            )
        })
}

fn frequency(raw: &str) -> Result<Frequency, ApiError> {
    Frequency::parse(raw).ok_or_else(|| {
        ApiError::invalid_field(
            "refresh_frequency",
            "refresh_frequency must be daily, every_other_day or weekly",
        )
    })
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<ScheduleView>>, ApiError> {
    let window = window(&params)?;
    let filter = ScheduleFilter {
        request_snapshot: uuid_param(&params, "request_snapshot_id")?,
        refresh_time: text_param(&params, "refresh_time"),
        refresh_frequency: text_param(&params, "refresh_frequency"),
    };
    let page = state
        .cohort_reader
        .list_schedules(&caller.username, &filter, window)
        .await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = path_uuid(&id, "refresh schedule", "refresh_schedule_not_found")?;
    state
        .cohort_reader
        .schedule(&caller.username, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("refresh_schedule_not_found", "refresh schedule"))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateSchedule>,
) -> Result<Response, ApiError> {
    let snapshot = body
        .request_snapshot
        .or(body.request_snapshot_id)
        .ok_or_else(|| {
            ApiError::invalid_field("request_snapshot", "request_snapshot is required")
        })?;
    let at = time(
        body.refresh_time
            .as_deref()
            .ok_or_else(|| ApiError::invalid_field("refresh_time", "refresh_time is required"))?,
    )?;
    let every = frequency(body.refresh_frequency.as_deref().unwrap_or("weekly"))?;
    let ctx = command_context(&caller, &trace);
    let w = state
        .schedules
        .create(&ctx, snapshot, at, every, body.notify_owner)
        .await?;
    let view = after_commit(state.cohort_reader.schedule(&caller.username, w.value)).await;
    Ok(written(StatusCode::CREATED, w.caught_up, view, w.value))
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateSchedule>,
) -> Result<Response, ApiError> {
    let id = path_uuid(&id, "refresh schedule", "refresh_schedule_not_found")?;
    let changes = ScheduleChanges {
        time: body.refresh_time.as_deref().map(time).transpose()?,
        frequency: body
            .refresh_frequency
            .as_deref()
            .map(frequency)
            .transpose()?,
        notify_owner: body.notify_owner,
    };
    let ctx = command_context(&caller, &trace);
    let w = state.schedules.update(&ctx, id, changes).await?;
    let view = after_commit(state.cohort_reader.schedule(&caller.username, id)).await;
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
    state.schedules.delete(&ctx, &ids).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/cohort/refresh-schedules/",
            routing::get(list).post(create),
            [
                op(
                    "GET",
                    "Cohorts",
                    User,
                    200,
                    "The caller's refresh schedules",
                )
                .returns_page::<ScheduleView>()
                .query(&[
                    param("request_snapshot_id", ParamType::Uuid),
                    param("refresh_time", ParamType::Text),
                    param("refresh_frequency", ParamType::Text),
                ])
                .query(LIMIT_OFFSET),
                op(
                    "POST",
                    "Cohorts",
                    User,
                    201,
                    "Schedule the recount of a query version",
                )
                .body::<CreateSchedule>()
                .writes::<ScheduleView>(),
            ],
        )
        .route(
            "/cohort/refresh-schedules/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Cohorts", User, 200, "One refresh schedule").returns::<ScheduleView>(),
                op("PATCH", "Cohorts", User, 200, "Change a refresh schedule")
                    .body::<UpdateSchedule>()
                    .writes::<ScheduleView>(),
                op("DELETE", "Cohorts", User, 204, "Delete a refresh schedule"),
            ],
        )
}
