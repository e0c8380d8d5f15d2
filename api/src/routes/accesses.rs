//! `/accesses/accesses/…`: grants of roles on perimeters.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing;
use chrono::{DateTime, Duration, Utc};
use commands::authz::{self, Permission};
use commands::identity::{NewAccess, Requester};
use domain::access::AccessCommand;
use domain::authz::{Authority, PerimeterRef};
use projections::identity::{ACCESS_ORDERING, AccessFilter, AccessRow};
use projections::parse_ordering;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context};
use crate::openapi::{Documented, ParamType, Shape, User, op, param};
use crate::pagination::{
    ALL, Envelope, Params, bool_param, page_envelope, page_window, text_param,
};
use crate::routes::{after_commit, path_int, requester, written_json};
use crate::state::AppState;

fn perimeter_of(row: &AccessRow) -> PerimeterRef<'_> {
    PerimeterRef {
        id: row.perimeter.id,
        ancestors: &row.perimeter.ancestors,
    }
}

/// The `editable` flag of an access in an answer (`commands::authz::may_edit_access`).
fn editable(authority: &Authority, row: &AccessRow) -> bool {
    authz::may_edit_access(authority, perimeter_of(row), &row.role.rights)
}

fn int_param(params: &Params, key: &'static str) -> Result<Option<i64>, ApiError> {
    text_param(params, key)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid_field(key, format!("{key} must be an integer")))
        })
        .transpose()
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let now = Utc::now();
    let authority = super::require(&state, &caller, Permission::ListAccesses).await?;
    let window = page_window(&params)?;
    let mut filter = AccessFilter {
        source: text_param(&params, "source"),
        role_id: int_param(&params, "role_id")?,
        profile_id: int_param(&params, "profile_id")?,
        search: text_param(&params, "search"),
        within: authz::access_listing_scope(&authority),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), ACCESS_ORDERING),
        ..AccessFilter::default()
    };
    if let Some(perimeter_id) = int_param(&params, "perimeter_id")? {
        let perimeter = state
            .identity
            .perimeter(perimeter_id)
            .await?
            .ok_or_else(|| ApiError::not_found("perimeter_not_found", "perimeter"))?;
        let mut ids = vec![perimeter_id];
        if bool_param(&params, "include_parents")?.unwrap_or(false) {
            filter.inherited_from = perimeter.ancestors.clone();
        }
        if bool_param(&params, "include_children")?.unwrap_or(false) {
            let below = projections::identity::PerimeterFilter {
                within: Some(vec![perimeter_id]),
                ..Default::default()
            };
            let rows = state.identity.list_perimeters(&below, ALL).await?.results;
            ids.extend(rows.iter().map(|p| p.id).filter(|id| *id != perimeter_id));
        }
        filter.valid_only = true;
        filter.perimeter_ids = Some(ids);
    }
    let with_editable = filter.profile_id.is_some() || filter.perimeter_ids.is_some();
    let page = state.identity.list_accesses(&filter, now, window).await?;
    let page = projections::Page {
        count: page.count,
        results: page
            .results
            .iter()
            .map(|a| a.to_json(now, with_editable.then(|| editable(&authority, a))))
            .collect(),
    };
    Ok(Json(page_envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_int(&id, "access", "access_not_found")?;
    let now = Utc::now();
    let authority = state.access.authority(&caller).await?;
    let row = state
        .identity
        .access(id)
        .await?
        .filter(|a| {
            a.username == caller.username || authz::sees_access(&authority, perimeter_of(a))
        })
        .ok_or_else(|| ApiError::not_found("access_not_found", "access"))?;
    let can = editable(&authority, &row);
    Ok(Json(row.to_json(now, Some(can))))
}

fn datetime_field(
    body: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<Option<DateTime<Utc>>>, ApiError> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) if s.is_empty() => Ok(Some(None)),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|d| Some(Some(d.with_timezone(&Utc))))
            .map_err(|_| {
                ApiError::invalid_field(key, format!("{key} must be an RFC 3339 date-time"))
            }),
        Some(_) => Err(ApiError::invalid_field(
            key,
            format!("{key} must be a date-time string"),
        )),
    }
}

fn required_int(body: &Map<String, Value>, key: &'static str) -> Result<i64, ApiError> {
    body.get(key)
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| ApiError::invalid_field(key, format!("{key} is required (an integer)")))
}

/// The answer to an access write: the access as the requester now sees it (the authority
/// computed to authorize the write also gives the `editable` flag).
async fn respond(
    state: &AppState,
    by: &Requester,
    status: StatusCode,
    caught_up: bool,
    id: i64,
) -> Result<Response, ApiError> {
    let nobody = Authority::default();
    let authority = match by {
        Requester::User(authority) => authority,
        _ => &nobody,
    };
    let view = after_commit(state.identity.access(id))
        .await
        .map(|row| row.to_json(Utc::now(), Some(editable(authority, &row))));
    Ok(written_json(status, caught_up, view, json!({"id": id})))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let new = NewAccess {
        profile_id: required_int(&body, "profile_id")?,
        role_id: required_int(&body, "role_id")?,
        perimeter_id: required_int(&body, "perimeter_id")?,
        start: datetime_field(&body, "start_datetime")?.flatten(),
        end: datetime_field(&body, "end_datetime")?.flatten(),
    };
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state.identity_service.grant_access(&ctx, &by, new).await?;
    respond(
        &state,
        &by,
        StatusCode::CREATED,
        written.caught_up,
        written.value,
    )
    .await
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "access", "access_not_found")?;
    let start = datetime_field(&body, "start_datetime")?;
    let end = datetime_field(&body, "end_datetime")?;
    if matches!(start, Some(None)) || matches!(end, Some(None)) {
        return Err(ApiError::bad_request(
            "invalid_access_dates",
            "a date given in the body must not be empty",
        ));
    }
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .change_access(
            &ctx,
            &by,
            id,
            AccessCommand::ChangeDates {
                start: start.flatten(),
                end: end.flatten(),
                at: ctx.at,
            },
        )
        .await?;
    respond(&state, &by, StatusCode::OK, written.caught_up, id).await
}

pub(super) async fn close(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "access", "access_not_found")?;
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .change_access(&ctx, &by, id, AccessCommand::Close { at: ctx.at })
        .await?;
    respond(&state, &by, StatusCode::OK, written.caught_up, id).await
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_int(&id, "access", "access_not_found")?;
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    state
        .identity_service
        .change_access(&ctx, &by, id, AccessCommand::Delete { at: ctx.at })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn my_valid_accesses(
    state: &AppState,
    username: &str,
    now: DateTime<Utc>,
) -> Result<Vec<AccessRow>, ApiError> {
    let filter = AccessFilter {
        username: Some(username.to_string()),
        valid_only: true,
        ..AccessFilter::default()
    };
    Ok(state
        .identity
        .list_accesses(&filter, now, ALL)
        .await?
        .results)
}

/// `GET /accesses/accesses/my-accesses/` (`?expiring=true`: the ones ending soon; `false`, the
/// default: every valid access).
pub(super) async fn mine(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let accesses = my_valid_accesses(&state, &caller.username, now).await?;
    // Upstream reads the value (`expiring=false` is no filter), not the key's presence.
    if bool_param(&params, "expiring")? != Some(true) {
        return Ok(Json(Value::Array(
            accesses.iter().map(|a| a.to_json(now, None)).collect(),
        )));
    }
    let days = state.settings.access_expiry_first_alert_days;
    let horizon = now + Duration::days(days);
    // The earliest-ending access per perimeter, among those ending within the horizon.
    let mut soonest: BTreeMap<i64, &AccessRow> = BTreeMap::new();
    for a in accesses.iter().filter(|a| a.end_datetime <= horizon) {
        soonest
            .entry(a.perimeter.id)
            .and_modify(|kept| {
                if a.end_datetime < kept.end_datetime {
                    *kept = a;
                }
            })
            .or_insert(a);
    }
    if soonest.is_empty() {
        return Ok(Json(json!({
            "message": format!("No accesses to expire in the next {days} days")
        })));
    }
    Ok(Json(Value::Array(
        soonest
            .values()
            .map(|a| {
                json!({
                    "start_datetime": a.start_datetime,
                    "end_datetime": a.end_datetime,
                    "profile": projections::identity::display_name(&a.firstname, &a.lastname, &a.username),
                    "perimeter": a.perimeter.name,
                })
            })
            .collect(),
    )))
}

/// `GET /accesses/accesses/my-data-rights/?perimeters_ids=1,2`.
pub(super) async fn my_data_rights(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let authority = state.access.authority(&caller).await?;
    let ids: Vec<i64> = match text_param(&params, "perimeters_ids") {
        Some(raw) => raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse().map_err(|_| {
                    ApiError::invalid_field("perimeters_ids", "perimeters_ids must be integers")
                })
            })
            .collect::<Result<_, _>>()?,
        None => authority.reading_perimeters(),
    };
    let perimeters = state.identity.perimeters_by_ids(&ids).await?;
    Ok(Json(
        perimeters
            .iter()
            .map(|p| {
                authority.data_rights(PerimeterRef {
                    id: p.id,
                    ancestors: &p.ancestors,
                })
            })
            .filter(|r| r.reads())
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("user_id".into(), Value::String(caller.username.clone()));
                }
                v
            })
            .collect(),
    ))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/accesses/accesses/",
            routing::get(list).post(create),
            [
                op("GET", "Accesses", User, 200, "Accesses the caller may see")
                    .answers(Shape::Page(None))
                    .query(&[
                        param("source", ParamType::Text),
                        param("role_id", ParamType::Integer),
                        param("profile_id", ParamType::Integer),
                        param("search", ParamType::Text),
                        param("perimeter_id", ParamType::Integer),
                        param("include_parents", ParamType::Boolean),
                        param("include_children", ParamType::Boolean),
                        param("ordering", ParamType::Text),
                        param("page", ParamType::Integer),
                    ]),
                op(
                    "POST",
                    "Accesses",
                    User,
                    201,
                    "Grant an access (managing rules apply)",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/accesses/accesses/my-accesses/",
            routing::get(mine),
            [
                op("GET", "Accesses", User, 200, "The caller's valid accesses")
                    .answers(Shape::Json),
            ],
        )
        .route(
            "/accesses/accesses/my-data-rights/",
            routing::get(my_data_rights),
            [op("GET", "Accesses", User, 200, "The caller's data rights")
                .answers(Shape::List(None))
                .query(&[param("perimeters_ids", ParamType::Text)])],
        )
        .route(
            "/accesses/accesses/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Accesses", User, 200, "One access").answers(Shape::Json),
                op("PATCH", "Accesses", User, 200, "Change an access's dates").answers(Shape::Json),
                op(
                    "DELETE",
                    "Accesses",
                    User,
                    204,
                    "Withdraw an access that has not started",
                ),
            ],
        )
        .route(
            "/accesses/accesses/{id}/close/",
            routing::patch(close),
            [op("PATCH", "Accesses", User, 200, "End an access now")
                .answers(Shape::Json)
                .reads(None)],
        )
}
