//! `/maintenances/` and the maintenance gate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::maintenance::{MaintenanceFields, MaintenanceKind, MaintenancePatch};
use projections::identity::{MAINTENANCE_ORDERING, MaintenanceFilter, MaintenanceView};
use projections::parse_ordering;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::auth::{Caller, bearer};
use crate::error::{ApiError, maintenance_refusal};
use crate::extract::{JsonBody, TraceId, command_context};
use crate::pagination::{Envelope, Params, datetime_param, page_envelope, page_window, text_param};
use crate::routes::{after_commit, path_int, requester, written_json};
use crate::state::AppState;
use crate::ws::ALL;

#[derive(Deserialize)]
pub(super) struct MaintenanceBody {
    subject: Option<String>,
    #[serde(default, with = "double_option")]
    message: Option<Option<String>>,
    #[serde(rename = "type")]
    kind: Option<MaintenanceKind>,
    start_datetime: Option<DateTime<Utc>>,
    end_datetime: Option<DateTime<Utc>>,
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

/// The websocket message announcing a phase's state.
pub(crate) fn broadcast_message(m: &MaintenanceView) -> Value {
    json!({
        "type": "maintenance",
        "info": {
            "id": m.id,
            "subject": m.subject,
            "maintenance_start": m.maintenance_start,
            "maintenance_end": m.maintenance_end,
            "active": m.active,
            "type": m.kind,
            "message": m.message,
        }
    })
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
        state.hub.push(ALL, broadcast_message(m)).await;
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
        state.hub.push(ALL, broadcast_message(&m)).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// How long the gate trusts its copy of the current phase.
const GATE_TTL: Duration = Duration::from_secs(1);

/// The current maintenance phase, cached for [`GATE_TTL`] so that the gate costs no query on
/// most requests.
#[derive(Default)]
pub struct MaintenanceGate {
    cached: Mutex<Option<(Instant, Option<MaintenanceView>)>>,
}

impl MaintenanceGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    async fn current(&self, state: &AppState) -> Result<Option<MaintenanceView>, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, value)) = cached.as_ref()
            && at.elapsed() < GATE_TTL
        {
            return Ok(value.clone().filter(|m| {
                let now = Utc::now();
                m.start_datetime < now && now < m.end_datetime
            }));
        }
        let value = state.identity.next_maintenance(Utc::now()).await?;
        *cached = Some((Instant::now(), value.clone()));
        Ok(value.filter(|m| m.active))
    }

    /// Forgets the cached phase (after a maintenance write on this instance).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
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
    let phase = match state.maintenance_gate.current(&state).await {
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

/// How often the announcer looks for phases starting or ending.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Broadcasts "maintenance started" and "maintenance ended" to every socket when the current
/// phase changes (each instance announces to the sockets of every instance; a client may see
/// the same transition once per instance).
pub async fn announce_transitions(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    let mut current: Option<MaintenanceView> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
        let active = match state.identity.next_maintenance(Utc::now()).await {
            Ok(next) => next.filter(|m| m.active),
            Err(e) => {
                tracing::debug!(error = %e, "maintenance announcer: read failed");
                continue;
            }
        };
        let changed = active.as_ref().map(|m| m.id) != current.as_ref().map(|m| m.id);
        if !changed {
            continue;
        }
        match (&current, &active) {
            (_, Some(started)) => state.hub.push(ALL, broadcast_message(started)).await,
            (Some(ended), None) => {
                let mut ended = ended.clone();
                ended.active = false;
                state.hub.push(ALL, broadcast_message(&ended)).await;
            }
            (None, None) => {}
        }
        current = active;
    }
}
