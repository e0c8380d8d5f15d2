//! `/maintenances/` and the maintenance gate.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::{DateTime, Utc};
use domain::maintenance::{MaintenanceFields, MaintenanceKind, MaintenancePatch};
use projections::identity::{MAINTENANCE_ORDERING, MaintenanceFilter, MaintenanceView};
use projections::parse_ordering;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Caller, bearer};
use crate::error::{ApiError, maintenance_refusal};
use crate::extract::{JsonBody, TraceId, command_context};
use crate::openapi::{Anyone, Documented, FullAdmin, ParamType, Shape, op, param};
use crate::pagination::{Envelope, Params, datetime_param, page_envelope, page_window, text_param};
use crate::routes::{after_commit, path_int, requester, written_json};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct MaintenanceBody {
    subject: Option<String>,
    #[serde(default, with = "double_option")]
    message: Option<Option<String>>,
    #[serde(rename = "type")]
    #[schema(value_type = Option<MaintenanceKindSchema>)]
    kind: Option<MaintenanceKind>,
    start_datetime: Option<DateTime<Utc>>,
    end_datetime: Option<DateTime<Utc>>,
}

/// The wire values of `MaintenanceKind`, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(as = MaintenanceKind)]
#[allow(dead_code, reason = "only its schema is used")]
enum MaintenanceKindSchema {
    #[schema(rename = "partial")]
    Partial,
    #[schema(rename = "full")]
    Full,
}

/// Tells "absent" (keep) from `null` (clear) for optional text fields.
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<MaintenanceView>>, ApiError> {
    let window = page_window(&params)?;
    let filter = MaintenanceFilter {
        subject: text_param(&params, "subject"),
        min_start_datetime: datetime_param(&params, "min_start_datetime")?,
        max_end_datetime: datetime_param(&params, "max_end_datetime")?,
        search: text_param(&params, "search"),
        ordering: parse_ordering(
            params.get("ordering").map(String::as_str),
            MAINTENANCE_ORDERING,
        ),
    };
    let page = state
        .identity
        .list_maintenances(&filter, Utc::now(), window)
        .await?;
    Ok(Json(page_envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MaintenanceView>, ApiError> {
    let id = path_int(&id, "maintenance phase", "maintenance_not_found")?;
    state
        .identity
        .maintenance(id, Utc::now())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("maintenance_not_found", "maintenance phase"))
}

/// `GET /maintenances/next/`: the current phase, else the next one, else `{}`.
pub(super) async fn next(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let next = state.identity.next_maintenance(Utc::now()).await?;
    Ok(Json(next.map_or_else(
        || json!({}),
        |m| serde_json::to_value(m).unwrap_or_default(),
    )))
}

async fn announce(state: &AppState, id: i64) -> Result<Option<MaintenanceView>, ApiError> {
    let view = state.identity.maintenance(id, Utc::now()).await?;
    if let Some(m) = &view {
        state.notifier.announce_maintenance(&m.notice()).await;
    }
    Ok(view)
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<MaintenanceBody>,
) -> Result<Response, ApiError> {
    let fields = MaintenanceFields {
        subject: body
            .subject
            .ok_or_else(|| ApiError::invalid_field("subject", "subject is required"))?,
        message: body.message.flatten(),
        kind: body.kind.unwrap_or(MaintenanceKind::Partial),
        start_datetime: body.start_datetime.ok_or_else(|| {
            ApiError::invalid_field("start_datetime", "start_datetime is required")
        })?,
        end_datetime: body
            .end_datetime
            .ok_or_else(|| ApiError::invalid_field("end_datetime", "end_datetime is required"))?,
    };
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .schedule_maintenance(&ctx, &by, fields)
        .await?;
    state.maintenance_gate.invalidate().await;
    let view = after_commit(announce(&state, written.value)).await;
    Ok(written_json(
        StatusCode::CREATED,
        written.caught_up,
        view,
        json!({"id": written.value}),
    ))
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MaintenanceBody>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "maintenance phase", "maintenance_not_found")?;
    let patch = MaintenancePatch {
        subject: body.subject,
        message: body.message,
        kind: body.kind,
        start_datetime: body.start_datetime,
        end_datetime: body.end_datetime,
    };
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .change_maintenance(&ctx, &by, id, Some(patch))
        .await?;
    state.maintenance_gate.invalidate().await;
    let view = after_commit(announce(&state, id)).await;
    Ok(written_json(
        StatusCode::OK,
        written.caught_up,
        view,
        json!({"id": id}),
    ))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_int(&id, "maintenance phase", "maintenance_not_found")?;
    let before = state.identity.maintenance(id, Utc::now()).await?;
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    state
        .identity_service
        .change_maintenance(&ctx, &by, id, None)
        .await?;
    state.maintenance_gate.invalidate().await;
    // Deleting the running phase ends it: tell the clients.
    if let Some(mut m) = before.filter(|m| m.active) {
        m.active = false;
        state.notifier.announce_maintenance(&m.notice()).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn always_open(path: &str) -> bool {
    ["/auth/", "/maintenances/", "/health/", "/ws/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Refuses what the active maintenance phase forbids: writes during `partial`, everything but
/// authentication, maintenance, health and applicative callers during `full`.
pub async fn gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if always_open(path) {
        return next.run(req).await;
    }
    let phase = match state
        .maintenance_gate
        .current(state.identity.as_ref())
        .await
    {
        Ok(phase) => phase,
        Err(e) => return e.into_response(),
    };
    let Some(phase) = phase else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    // Only applicative tokens matter here: no need to verify JWTs or ask a provider.
    let applicative = bearer(&parts).is_ok_and(|t| state.is_applicative_token(t));
    let read_only = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let allowed = applicative || (phase.kind == "partial" && read_only);
    if allowed {
        return next.run(Request::from_parts(parts, body)).await;
    }
    maintenance_refusal(
        format!(
            "Cohort360 is unavailable during maintenance, up to {}: {}",
            phase.end_datetime.format("%d/%m/%Y, %H:%M:%S"),
            phase.subject
        ),
        json!({
            "maintenance_start": phase.maintenance_start,
            "maintenance_end": phase.maintenance_end,
            "type": phase.kind,
        }),
    )
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/maintenances/",
            routing::get(list).post(create),
            [
                op("GET", "Maintenance", Anyone, 200, "Maintenance phases")
                    .returns_page::<MaintenanceView>()
                    .query(&[
                        param("subject", ParamType::Text),
                        param("min_start_datetime", ParamType::DateTime),
                        param("max_end_datetime", ParamType::DateTime),
                        param("search", ParamType::Text),
                        param("ordering", ParamType::Text),
                        param("page", ParamType::Integer),
                    ]),
                op(
                    "POST",
                    "Maintenance",
                    FullAdmin,
                    201,
                    "Schedule a maintenance phase",
                )
                .body::<MaintenanceBody>()
                .writes::<MaintenanceView>(),
            ],
        )
        .route(
            "/maintenances/next/",
            routing::get(next),
            [op(
                "GET",
                "Maintenance",
                Anyone,
                200,
                "The current or next maintenance phase",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/maintenances/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Maintenance", Anyone, 200, "One maintenance phase")
                    .returns::<MaintenanceView>(),
                op(
                    "PATCH",
                    "Maintenance",
                    FullAdmin,
                    200,
                    "Change a maintenance phase",
                )
                .body::<MaintenanceBody>()
                .writes::<MaintenanceView>(),
                op(
                    "DELETE",
                    "Maintenance",
                    FullAdmin,
                    204,
                    "Delete a maintenance phase",
                ),
            ],
        )
}
