//! `/auth/login/`, `/auth/refresh/`, `/auth/logout/`.
//!
//! Login takes a multipart form (what the front-end sends), a urlencoded form or JSON. Refresh
//! needs only the refresh token, so it works after the access token has expired; each refresh
//! token is good once (rotation), and presenting a used one ends the whole session.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing;
use chrono::Utc;
use commands::CommandContext;
use commands::identity::SessionTicket;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Method;
use crate::error::ApiError;
use crate::extract::TraceId;
use crate::openapi::{Anyone, Documented, Shape, op};
use crate::state::AppState;
use crate::tokens::Claims;

/// The fields of a form or JSON body, as strings.
async fn body_fields(state: &AppState, req: Request) -> Result<HashMap<String, String>, ApiError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let invalid = |m: String| ApiError::bad_request("invalid_body", m);
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| invalid(e.body_text()))?;
        let mut fields = HashMap::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| invalid(e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let value = field.text().await.map_err(|e| invalid(e.body_text()))?;
            fields.insert(name, value);
        }
        return Ok(fields);
    }
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| invalid(e.body_text()))?;
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return serde_urlencoded_pairs(&bytes).map_err(invalid);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(HashMap::new());
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(invalid("expected a JSON object".into()));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Null => None,
            other => Some((k, other.to_string())),
        })
        .collect())
}

fn serde_urlencoded_pairs(bytes: &[u8]) -> Result<HashMap<String, String>, String> {
    let query = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| "malformed form".to_string())?;
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

fn required(fields: &HashMap<String, String>, name: &'static str) -> Result<String, ApiError> {
    fields
        .get(name)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::invalid_field(name, format!("{name} is required")))
}

fn context(user: &str, trace: &TraceId) -> CommandContext {
    CommandContext {
        user: user.to_string(),
        impersonator: None,
        correlation_id: trace.0.clone(),
        causation_id: trace.causation(),
        at: Utc::now(),
    }
}

/// Mints the access and refresh tokens of a session ticket.
fn token_pair(state: &AppState, ticket: &SessionTicket) -> Result<(String, String), ApiError> {
    let now = Utc::now().timestamp();
    let settings = &state.settings;
    let access = Claims {
        username: ticket.username.clone(),
        exp: now + settings.access_ttl_seconds,
        iat: Some(now),
        token_type: Some("access".into()),
        jti: Some(Uuid::new_v4().simple().to_string()),
        sid: Some(ticket.session_id),
        generation: None,
    };
    let refresh = Claims {
        username: ticket.username.clone(),
        exp: now + settings.refresh_ttl_seconds,
        iat: Some(now),
        token_type: Some("refresh".into()),
        jti: Some(format!(
            "{}:{}",
            ticket.session_id.simple(),
            ticket.generation
        )),
        sid: Some(ticket.session_id),
        generation: Some(ticket.generation),
    };
    let mint = |c: &Claims| {
        state
            .jwt
            .mint(c)
            .map_err(|e| ApiError::bug(&format!("token signing failed: {e}")))
    };
    Ok((mint(&access)?, mint(&refresh)?))
}

/// `POST /auth/login/`.
pub async fn login(
    State(state): State<AppState>,
    trace: TraceId,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let method = Method::of(req.headers())?;
    // The request log names the user a login was for, whatever the body's encoding.
    let logged_user = req
        .extensions()
        .get::<crate::request_log::CallerSlot>()
        .cloned();
    let fields = body_fields(&state, req).await?;
    let (username, access_token, refresh_token, logged_in_at) = match method {
        Method::Oidc => {
            let code = required(&fields, "auth_code")?;
            let redirect_uri = required(&fields, "redirect_uri")?;
            let ctx = context("anonymous", &trace);
            let tokens = state
                .identity_service
                .login_with_oidc(&ctx, &code, &redirect_uri)
                .await
                .inspect_err(|e| tracing::info!(error = %e, "OIDC login refused"))?;
            if let Some(slot) = &logged_user {
                slot.set(&tokens.username, None);
            }
            (
                tokens.username,
                tokens.access_token,
                tokens.refresh_token,
                ctx.at,
            )
        }
        Method::Jwt => {
            let username = required(&fields, "username")?;
            if let Some(slot) = &logged_user {
                slot.set(&username, None);
            }
            let password = required(&fields, "password")?;
            let ctx = context(&username, &trace);
            let ticket = state
                .identity_service
                .login_with_password(&ctx, &username, password)
                .await
                .inspect_err(|_| tracing::info!(user = %username, "login refused"))?;
            let (access, refresh) = token_pair(&state, &ticket)?;
            (username, access, Some(refresh), ctx.at)
        }
    };
    // The session is stored: a failing read must not turn the login into an error. The read
    // model may not have folded this login yet (a login does not wait for it): its time is the
    // last login all the same.
    let user = crate::routes::after_commit(state.identity.user(&username)).await;
    let last_login = user
        .as_ref()
        .and_then(|u| u.last_login)
        .max(Some(logged_in_at));
    Ok(Json(json!({
        "user": user.map(|u| json!({
            "username": u.username,
            "firstname": u.firstname,
            "lastname": u.lastname,
            "email": u.email,
            "display_name": u.display_name,
            "created_by": u.created_by,
            "updated_by": u.updated_by,
        })),
        "last_login": last_login,
        "access_token": access_token,
        "refresh_token": refresh_token,
    })))
}

/// A verified refresh token's session, generation and user.
struct RefreshToken {
    session: Uuid,
    generation: u32,
    username: String,
}

fn refresh_claims(state: &AppState, token: &str) -> Result<RefreshToken, ApiError> {
    let claims = state.jwt.decode(token)?;
    match (claims.token_type.as_deref(), claims.sid, claims.generation) {
        (Some("refresh"), Some(session), Some(generation)) => Ok(RefreshToken {
            session,
            generation,
            username: claims.username,
        }),
        _ => Err(ApiError::token_rejected(
            "token_invalid",
            "a refresh token is required",
        )),
    }
}

/// `POST /auth/refresh/`.
pub async fn refresh(
    State(state): State<AppState>,
    trace: TraceId,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let method = Method::of(req.headers())?;
    let fields = body_fields(&state, req).await?;
    let token = required(&fields, "refresh_token")?;
    if method == Method::Oidc {
        let tokens = state.providers.oidc_refresh(&token).await?;
        return Ok(Json(json!({
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
        })));
    }
    let presented = refresh_claims(&state, &token)?;
    let ctx = context(&presented.username, &trace);
    let ticket = state
        .identity_service
        .refresh(&ctx, presented.session, presented.generation)
        .await?;
    let (access_token, refresh_token) = token_pair(&state, &ticket)?;
    Ok(Json(json!({
        "access_token": access_token,
        "refresh_token": refresh_token,
    })))
}

/// `POST /auth/logout/`: ends the session of the given refresh token.
pub async fn logout(
    State(state): State<AppState>,
    trace: TraceId,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let method = Method::of(req.headers())?;
    let fields = body_fields(&state, req).await?;
    let token = required(&fields, "refresh_token")?;
    if method == Method::Oidc {
        state.providers.oidc_logout(&token).await?;
        return Ok(Json(json!({})));
    }
    // An expired refresh token's session is over anyway; only a valid one needs revoking.
    let presented = refresh_claims(&state, &token)?;
    let ctx = context(&presented.username, &trace);
    state
        .identity_service
        .logout(&ctx, presented.session)
        .await?;
    Ok(Json(json!({})))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/auth/login/",
            routing::post(login),
            [op(
                "POST",
                "Authentication",
                Anyone,
                200,
                "Log in (JWT: username and password; OIDC: authorization code)",
            )
            .answers(Shape::Json)
            .reads(None)],
        )
        .route(
            "/auth/refresh/",
            routing::post(refresh),
            [op(
                "POST",
                "Authentication",
                Anyone,
                200,
                "Exchange a refresh token for a new pair",
            )
            .answers(Shape::Json)
            .reads(None)],
        )
        .route(
            "/auth/logout/",
            routing::post(logout),
            [op(
                "POST",
                "Authentication",
                Anyone,
                200,
                "End the session of a refresh token",
            )
            .answers(Shape::Json)
            .reads(None)],
        )
}
