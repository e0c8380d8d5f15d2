//! Bearer authentication: our JWTs, externally minted RS256 tokens, applicative tokens, and
//! impersonation.
//!
//! * `Authorization: Bearer <token>`; a token equal to a configured applicative token
//!   (QueryExecutor, Solr ETL, rollout) authenticates as that user without anything else.
//! * Otherwise the token is a JWT. Its header's `alg` picks the key: HS256 ↔ `JWT_SIGNING_KEY`,
//!   RS256 ↔ `JWT_RS256_PUBLIC_KEY`, each only if listed in `JWT_ALGORITHMS`. A key is never
//!   used with another algorithm, which rules out algorithm confusion; `alg: none` never parses.
//! * An access token must say so (`token_type: access`), and its user must exist and be active.
//!   Our own (HS256) access tokens name their login session (`sid`) and die with it: after a
//!   logout, or once a replayed refresh token revoked the session, they are refused
//!   (`session_ended`) although not expired. Externally minted RS256 tokens have no session of
//!   ours; only their user is checked.
//! * `X-Impersonate: <username>` lets a full admin act as someone else; events record both.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller, as the authorization rules of `commands::authz` see it.
pub type Caller = commands::authz::Principal;

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("authentication credentials were not provided"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != "null")
        .ok_or_else(|| ApiError::unauthenticated("expected 'Authorization: Bearer <token>'"))
}

/// How a bearer token is to be verified (`AuthorizationMethod` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Our JWTs (and externally minted RS256 ones).
    Jwt,
    /// An OIDC provider's access token.
    Oidc,
}

impl Method {
    /// From the `AuthorizationMethod` header (JWT when absent).
    pub fn of(headers: &axum::http::HeaderMap) -> Result<Self, ApiError> {
        Self::parse(
            headers
                .get("authorizationmethod")
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// From a header or handshake value.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        match raw.map(str::trim) {
            None | Some("") => Ok(Self::Jwt),
            Some(m) if m.eq_ignore_ascii_case("JWT") => Ok(Self::Jwt),
            Some(m) if m.eq_ignore_ascii_case("OIDC") => Ok(Self::Oidc),
            Some(other) => Err(ApiError::bad_request(
                "invalid_authorization_method",
                format!("unknown AuthorizationMethod '{other}' (expected JWT or OIDC)"),
            )),
        }
    }
}

/// Authenticates a bearer token (without impersonation). Applicative tokens need no method.
pub async fn authenticate(
    state: &AppState,
    token: &str,
    method: Method,
) -> Result<Caller, ApiError> {
    if let Some(app) = state.applicative.iter().find(|a| a.matches(token)) {
        return Ok(Caller::application(app.username.clone(), app.application));
    }
    let (username, session) = match method {
        Method::Jwt => {
            let claims = state.jwt.verify(token)?;
            (claims.username, claims.sid)
        }
        Method::Oidc => (state.providers.oidc_verify(token).await?, None),
    };
    state
        .identity_service
        .check_token_holder(&username, session)
        .await?;
    Ok(Caller::user(username))
}

/// Applies `X-Impersonate`: only a full admin may, and only towards an existing user.
pub async fn impersonate(
    state: &AppState,
    caller: Caller,
    target: Option<&str>,
) -> Result<Caller, ApiError> {
    let Some(target) = target.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(caller);
    };
    if target == caller.username {
        return Ok(caller);
    }
    state
        .access
        .require(&caller, commands::authz::Permission::Impersonate)
        .await?;
    if state.identity.user(target).await?.is_none() {
        return Err(ApiError::bad_request(
            "impersonation_target_unknown",
            format!("cannot impersonate '{target}': no such user"),
        ));
    }
    tracing::info!(real_user = %caller.username, impersonated = target, "impersonation");
    Ok(Caller {
        impersonator: Some(caller.username),
        ..Caller::user(target)
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(state, bearer(parts)?, Method::of(&parts.headers)?).await?;
        let target = parts
            .headers
            .get("x-impersonate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let caller = impersonate(state, caller, target.as_deref()).await?;
        if let Some(slot) = parts.extensions.get::<crate::request_log::CallerSlot>() {
            slot.set(&caller.username, caller.impersonator.as_deref());
        }
        Ok(caller)
    }
}
