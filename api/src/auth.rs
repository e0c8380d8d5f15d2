//! Bearer-JWT authentication (interim: the identity issue adds login, refresh and OIDC).
//!
//! A request is authenticated by `Authorization: Bearer <jwt>`, an HS256 token signed with
//! `JWT_SIGNING_KEY` whose `username` claim names the caller. Refresh tokens are refused here.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// Claims of our tokens (SimpleJWT-compatible names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub username: String,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    /// Keys for HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::unauthenticated(format!("invalid token: {e}")))?;
        if data
            .claims
            .token_type
            .as_deref()
            .is_some_and(|t| t != "access")
        {
            return Err(ApiError::unauthenticated("an access token is required"));
        }
        if data.claims.username.is_empty() {
            return Err(ApiError::unauthenticated("the token names no user"));
        }
        Ok(data.claims)
    }

    /// Mints an access token (used by tests and the benchmark; login arrives with identity).
    pub fn mint(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthenticated("authentication credentials were not provided")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && *t != "null")
            .ok_or_else(|| ApiError::unauthenticated("expected 'Authorization: Bearer <token>'"))?;
        let claims = state.jwt.verify(token)?;
        Ok(Caller {
            username: claims.username,
        })
    }
}
