//! `/users/` and `/accesses/profiles/`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::Utc;
use commands::identity::{NewUser, UserPatch};
use commands::ports::ExternalAuthError;
use projections::identity::{ProfileView, USER_ORDERING, UserFilter, UserView};
use projections::parse_ordering;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, TraceId, command_context};
use crate::openapi::{Documented, LIMIT_OFFSET, ParamType, Shape, User, op, param};
use crate::pagination::{
    Envelope, Params, bool_param, envelope, page_envelope, page_window, text_param, window,
};
use crate::routes::{after_commit, requester, written_json};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateUser {
    username: String,
    firstname: String,
    lastname: String,
    email: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateUser {
    firstname: Option<String>,
    lastname: Option<String>,
    email: Option<String>,
}

/// Whether the caller may see users' e-mails and audit fields: user and access managers.
/// Others (the share dialog of every researcher) get names only; upstream shows everything to
/// everyone.
async fn sees_contacts(state: &AppState, caller: &Caller) -> Result<bool, ApiError> {
    Ok(state.access.sees_user_contacts(caller).await?)
}

fn names_only(mut user: UserView) -> UserView {
    user.email = None;
    user.created_by = None;
    user.updated_by = None;
    user.last_login = None;
    user
}

pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<UserView>>, ApiError> {
    let window = page_window(&params)?;
    let filter = UserFilter {
        username: text_param(&params, "username"),
        firstname: text_param(&params, "firstname"),
        lastname: text_param(&params, "lastname"),
        email: text_param(&params, "email"),
        manual_only: bool_param(&params, "manual_only")?.unwrap_or(false),
        with_access: bool_param(&params, "with_access")?.unwrap_or(false),
        search: text_param(&params, "search"),
        ordering: parse_ordering(params.get("ordering").map(String::as_str), USER_ORDERING),
    };
    let mut page = state
        .identity
        .list_users(&filter, Utc::now(), window)
        .await?;
    if !sees_contacts(&state, &caller).await? {
        page.results = page.results.into_iter().map(names_only).collect();
    }
    Ok(Json(page_envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .identity
        .user(&username)
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "user"))?;
    if username == caller.username || sees_contacts(&state, &caller).await? {
        Ok(Json(user))
    } else {
        Ok(Json(names_only(user)))
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<Response, ApiError> {
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .create_user(
            &ctx,
            &by,
            NewUser {
                username: body.username,
                firstname: body.firstname,
                lastname: body.lastname,
                email: body.email.filter(|e| !e.is_empty()),
                password: body.password,
            },
        )
        .await?;
    let view = after_commit(state.identity.user(&written.value)).await;
    Ok(written_json(
        StatusCode::CREATED,
        written.caught_up,
        view,
        json!({"username": written.value}),
    ))
}

pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    trace: TraceId,
    Path(username): Path<String>,
    JsonBody(body): JsonBody<UpdateUser>,
) -> Result<Response, ApiError> {
    let by = requester(&state, &caller).await?;
    let ctx = command_context(&caller, &trace);
    let written = state
        .identity_service
        .update_user(
            &ctx,
            &by,
            &username,
            UserPatch {
                firstname: body.firstname,
                lastname: body.lastname,
                email: body.email,
            },
        )
        .await?;
    let view = after_commit(state.identity.user(&username)).await;
    Ok(written_json(
        StatusCode::OK,
        written.caught_up,
        view,
        json!({"username": username}),
    ))
}

/// `GET /users/{username}/check/`: does this user exist here (or, later, in the identity
/// service)?
pub(super) async fn check(
    State(state): State<AppState>,
    _caller: Caller,
    Path(username): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(u) = state.identity.user(&username).await? {
        return Ok(Json(json!({
            "username": u.username,
            "firstname": u.firstname,
            "lastname": u.lastname,
            "email": u.email,
            "already_exists": true,
            "found": false,
        }))
        .into_response());
    }
    if !state.username_regex.is_match(&username) {
        return Err(ApiError::invalid_field(
            "username",
            format!("'{username}' does not match the username pattern"),
        ));
    }
    match state.providers.user_info(&username).await {
        Ok(Some(found)) => Ok(Json(json!({
            "username": found.username,
            "firstname": found.firstname,
            "lastname": found.lastname,
            "email": found.email,
            "already_exists": false,
            "found": true,
        }))
        .into_response()),
        Ok(None) | Err(ExternalAuthError::NotConfigured(_)) => {
            Err(ApiError::not_found("user_not_found", "user"))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_profiles(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<ProfileView>>, ApiError> {
    let window = window(&params)?;
    let mut page = state
        .identity
        .list_profiles(
            text_param(&params, "user_id").as_deref(),
            text_param(&params, "search").as_deref(),
            window,
        )
        .await?;
    if !sees_contacts(&state, &caller).await? {
        for profile in &mut page.results {
            profile.email = None;
        }
    }
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve_profile(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProfileView>, ApiError> {
    let id = id
        .parse()
        .map_err(|_| ApiError::not_found("profile_not_found", "profile"))?;
    let mut profile = state
        .identity
        .profile(id)
        .await?
        .ok_or_else(|| ApiError::not_found("profile_not_found", "profile"))?;
    if profile.user_id != caller.username && !sees_contacts(&state, &caller).await? {
        profile.email = None;
    }
    Ok(Json(profile))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/users/",
            routing::get(list).post(create),
            [
                op("GET", "Users", User, 200, "List users")
                    .returns_page::<UserView>()
                    .query(&[
                        param("username", ParamType::Text),
                        param("firstname", ParamType::Text),
                        param("lastname", ParamType::Text),
                        param("email", ParamType::Text),
                        param("manual_only", ParamType::Boolean),
                        param("with_access", ParamType::Boolean),
                        param("search", ParamType::Text),
                        param("ordering", ParamType::Text),
                        param("page", ParamType::Integer),
                    ]),
                op(
                    "POST",
                    "Users",
                    User,
                    201,
                    "Create a user (right_manage_users)",
                )
                .body::<CreateUser>()
                .writes::<UserView>(),
            ],
        )
        .route(
            "/users/{username}/",
            routing::get(retrieve).patch(update),
            [
                op("GET", "Users", User, 200, "One user").returns::<UserView>(),
                op("PATCH", "Users", User, 200, "Change a user's details")
                    .body::<UpdateUser>()
                    .writes::<UserView>(),
            ],
        )
        .route(
            "/users/{username}/check/",
            routing::get(check),
            [op(
                "GET",
                "Users",
                User,
                200,
                "Whether a username is known, here or by the identity service",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/accesses/profiles/",
            routing::get(list_profiles),
            [op("GET", "Accesses", User, 200, "Profiles")
                .returns_page::<ProfileView>()
                .query(&[
                    param("user_id", ParamType::Text),
                    param("search", ParamType::Text),
                ])
                .query(LIMIT_OFFSET)],
        )
        .route(
            "/accesses/profiles/{id}/",
            routing::get(retrieve_profile),
            [op("GET", "Accesses", User, 200, "One profile").returns::<ProfileView>()],
        )
}
