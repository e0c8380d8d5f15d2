//! `/logs/`: request logs, for full administrators (as upstream).

use axum::Json;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::HeaderMap;
use axum::routing;
use commands::authz::Permission;
use projections::parse_ordering;
use projections::request_logs::{ORDERINGS, RequestLog, RequestLogFilter};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{Documented, FullAdmin, ParamType, Shape, op, param};
use crate::pagination::{
    Envelope, Params, datetime_param, int_param, list_param, page_envelope, page_window, text_param,
};
use crate::state::AppState;

/// `GET /logs/`: page-numbered (20 per page), newest first unless `ordering` says otherwise.
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<Envelope<RequestLog>>, ApiError> {
    super::require(&state, &caller, Permission::ReadRequestLogs).await?;
    let window = page_window(&params)?;
    let status_codes = list_param(&params, "status_code")
        .iter()
        .map(|s| {
            s.parse::<i64>().map_err(|_| {
                ApiError::invalid_field("status_code", format!("'{s}' is not a status code"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let filter = RequestLogFilter {
        methods: list_param(&params, "method")
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        status_codes,
        user: text_param(&params, "user").or_else(|| text_param(&params, "username")),
        requested_at_after: datetime_param(&params, "requested_at_after")?,
        requested_at_before: datetime_param(&params, "requested_at_before")?,
        response_ms_min: int_param(&params, "response_ms_min")?,
        response_ms_max: int_param(&params, "response_ms_max")?,
        path_contains: text_param(&params, "path_contains"),
        trace_id: text_param(&params, "trace_id"),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), ORDERINGS),
    };
    let page = state.request_logs.list(&filter, window).await?;
    Ok(Json(page_envelope(page, window, &uri, &headers, &params)))
}

/// `GET /logs/{id}/`.
pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestLog>, ApiError> {
    super::require(&state, &caller, Permission::ReadRequestLogs).await?;
    let id = super::path_int(&id, "request log", "request_log_not_found")?;
    state
        .request_logs
        .get(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("request_log_not_found", "request log"))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/logs/",
            routing::get(list),
            [
                op(
                    "GET",
                    "Operations",
                    FullAdmin,
                    200,
                    "Request logs of writes and downloads (filters: method, status_code, user, requested_at_after/_before, response_ms_min/_max, path_contains, trace_id)",
                )
                .answers(Shape::Page(None))
                .query(&[param("status_code", ParamType::List), param("method", ParamType::List), param("user", ParamType::Text), param("username", ParamType::Text), param("requested_at_after", ParamType::DateTime), param("requested_at_before", ParamType::DateTime), param("response_ms_min", ParamType::Integer), param("response_ms_max", ParamType::Integer), param("path_contains", ParamType::Text), param("trace_id", ParamType::Text), param("ordering", ParamType::Text), param("page", ParamType::Integer)]),
            ],
        )
        .route(
            "/logs/{id}/",
            routing::get(retrieve),
            [
                op(
                    "GET",
                    "Operations",
                    FullAdmin,
                    200,
                    "One request log",
                )
                .returns::<RequestLog>(),
            ],
        )
}
