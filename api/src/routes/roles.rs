//! `/accesses/rights/` and `/accesses/roles/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::Utc;
use domain::authz::PerimeterRef;
use domain::rights::{CATALOGUE, Rights};
use projections::identity::{ROLE_ORDERING, RoleFilter, RoleView};
use projections::parse_ordering;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context};
use crate::openapi::{Documented, FullAdmin, LIMIT_OFFSET, ParamType, Shape, User, op, param};
use crate::pagination::{Envelope, Params, bool_param, envelope, text_param, window};
use crate::routes::{after_commit, path_int, requester, written_json};
use crate::state::AppState;

/// `GET /accesses/rights/`: the catalogue grouped by category.
pub(super) async fn rights(_caller: Caller) -> Json<Value> {
    let mut categories: Vec<(String, bool, Vec<Value>)> = Vec::new();
    for right in CATALOGUE.iter() {
        let entry =
            json!({"name": right.name, "label": right.label, "depends_on": right.depends_on});
        match categories
            .iter_mut()
            .find(|(name, ..)| name == right.category)
        {
            Some((_, _, rights)) => rights.push(entry),
            None => categories.push((right.category.to_string(), right.is_global, vec![entry])),
        }
    }
    Json(Value::Array(
        categories
            .into_iter()
            .map(|(name, is_global, rights)| {
                json!({"name": name, "is_global": is_global, "rights": rights})
            })
            .collect(),
    ))
}

/// `GET /accesses/rights/{id}/`.
pub(super) async fn right(
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let right = id
        .parse::<u32>()
        .ok()
        .and_then(|id| CATALOGUE.iter().find(|r| r.id == id))
        .ok_or_else(|| ApiError::not_found("right_not_found", "right"))?;
    Ok(Json(json!({
        "id": right.id,
        "name": right.name,
        "label": right.label,
        "depends_on": right.depends_on,
        "category": right.category,
        "is_global": right.is_global,
    })))
}

/// The `right_*` keys of a role body, validated against the catalogue.
fn right_changes(body: &Map<String, Value>) -> Result<Vec<(&'static str, bool)>, ApiError> {
    let mut changes = Vec::new();
    for (key, value) in body {
        if !key.starts_with("right_") {
            continue;
        }
        let Some(info) = CATALOGUE.iter().find(|r| r.name == key) else {
            return Err(ApiError::bad_request(
                "unknown_right",
                format!("'{key}' is not a right"),
            ));
        };
        let Some(value) = value.as_bool() else {
            return Err(ApiError::invalid_field(
                info.name,
                format!("{key} must be true or false"),
            ));
        };
        changes.push((info.name, value));
    }
    Ok(changes)
}

fn role_name(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match body.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_field("name", "name must be a string")),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<RoleView>>, ApiError> {
    let window = window(&params)?;
    let mut rights = Vec::new();
    for info in CATALOGUE.iter() {
        if let Some(v) = bool_param(&params, info.name)? {
            rights.push((info.name, v));
        }
    }
    let filter = RoleFilter {
        name: text_param(&params, "name"),
        rights,
        ordering: parse_ordering(params.get("ordering").map(String::as_str), ROLE_ORDERING),
    };
    let page = state.identity.list_roles(&filter, window).await?;
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoleView>, ApiError> {
    let id = path_int(&id, "role", "role_not_found")?;
    state
        .identity
        .role(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("role_not_found", "role"))
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let name =
        role_name(&body)?.ok_or_else(|| ApiError::invalid_field("name", "name is required"))?;
    let mut rights = Rights::default();
    for (right, value) in right_changes(&body)? {
        rights.set(right, value);
    }
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .create_role(&ctx, &by, name, rights)
        .await?;
    let view = after_commit(state.identity.role(written.value)).await;
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
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "role", "role_not_found")?;
    let changes = right_changes(&body)?;
    let name = role_name(&body)?;
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .update_role(&ctx, &by, id, name, &changes)
        .await?;
    let view = after_commit(state.identity.role(id)).await;
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
    let id = path_int(&id, "role", "role_not_found")?;
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    state.identity_service.delete_role(&ctx, &by, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /accesses/roles/{id}/users/`: holders of a valid access with the role (204 if none).
/// Restricted to callers who may read accesses (upstream shows names and e-mails to anyone).
pub(super) async fn holders(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let id = path_int(&id, "role", "role_not_found")?;
    super::require(&state, &caller, commands::authz::Permission::ListAccesses).await?;
    let order = params
        .get("order")
        .map(String::as_str)
        .unwrap_or("lastname");
    let holders = state
        .identity
        .role_holders(
            id,
            Utc::now(),
            text_param(&params, "filter_by_name").as_deref(),
            order.starts_with('-'),
        )
        .await?;
    if holders.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(holders).into_response())
}

/// `GET /accesses/roles/assignable/?perimeter_id=`: the roles the caller may grant there.
pub(super) async fn assignable(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> Result<Json<Vec<RoleView>>, ApiError> {
    let perimeter_id: i64 = text_param(&params, "perimeter_id")
        .ok_or_else(|| ApiError::invalid_field("perimeter_id", "perimeter_id is required"))?
        .parse()
        .map_err(|_| ApiError::invalid_field("perimeter_id", "perimeter_id must be an integer"))?;
    let perimeter = state
        .identity
        .perimeter(perimeter_id)
        .await?
        .ok_or_else(|| ApiError::not_found("perimeter_not_found", "perimeter"))?;
    let authority = state.access.authority(&caller).await?;
    let roles = state
        .identity
        .list_roles(&RoleFilter::default(), crate::pagination::ALL)
        .await?;
    let target = PerimeterRef {
        id: perimeter.id,
        ancestors: &perimeter.ancestors,
    };
    Ok(Json(
        roles
            .results
            .into_iter()
            .filter(|r| authority.can_manage(target, &r.rights))
            .collect(),
    ))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/accesses/rights/",
            routing::get(rights),
            [op(
                "GET",
                "Accesses",
                User,
                200,
                "The rights catalogue by category",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/accesses/rights/{id}/",
            routing::get(right),
            [op("GET", "Accesses", User, 200, "One right").answers(Shape::Json)],
        )
        .route(
            "/accesses/roles/",
            routing::get(list).post(create),
            [
                op("GET", "Accesses", User, 200, "Roles")
                    .returns_page::<RoleView>()
                    .query(&[
                        param("name", ParamType::Text),
                        param("ordering", ParamType::Text),
                    ])
                    .query(LIMIT_OFFSET),
                op("POST", "Accesses", FullAdmin, 201, "Create a role").writes::<RoleView>(),
            ],
        )
        .route(
            "/accesses/roles/assignable/",
            routing::get(assignable),
            [op(
                "GET",
                "Accesses",
                User,
                200,
                "Roles the caller may grant on a perimeter",
            )
            .returns_list::<RoleView>()
            .query(&[param("perimeter_id", ParamType::Text)])],
        )
        .route(
            "/accesses/roles/{id}/",
            routing::get(retrieve).patch(update).delete(delete),
            [
                op("GET", "Accesses", User, 200, "One role").returns::<RoleView>(),
                op("PATCH", "Accesses", FullAdmin, 200, "Change a role").writes::<RoleView>(),
                op(
                    "DELETE",
                    "Accesses",
                    FullAdmin,
                    204,
                    "Delete an unused role",
                ),
            ],
        )
        .route(
            "/accesses/roles/{id}/users/",
            routing::get(holders),
            [op(
                "GET",
                "Accesses",
                User,
                200,
                "Holders of a role on the perimeters the caller manages",
            )
            .answers(Shape::Json)
            .query(&[
                param("filter_by_name", ParamType::Text),
                param("order", ParamType::Text),
            ])],
        )
}
