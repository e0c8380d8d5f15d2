//! Our bearer tokens: their claims, the keys that sign and verify them, and the configured
//! applicative tokens (the `auth` module authenticates requests with them).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;

/// Claims of our tokens (SimpleJWT-compatible names, plus the session of refresh tokens).
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
    /// Login session of the token (access and refresh tokens alike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// Rotation generation of a refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

/// Signs our tokens and verifies incoming ones.
#[derive(Clone)]
pub struct JwtKeys {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    encoding: EncodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

/// A JWT that failed verification, with the stable code clients see.
fn rejected(code: &'static str, message: &str) -> ApiError {
    ApiError::token_rejected(code, message)
}

impl JwtKeys {
    /// HS256 only, with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            hs256: Some(DecodingKey::from_secret(secret)),
            rs256: None,
            encoding: EncodingKey::from_secret(secret),
        }
    }

    /// Keys for the configured algorithms. `secret` always signs our own (HS256) tokens.
    pub fn configured(
        secret: &[u8],
        algorithms: &str,
        rs256_public_pem: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut keys = Self::hs256(secret);
        let allowed: Vec<&str> = algorithms
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        for alg in &allowed {
            if !matches!(*alg, "HS256" | "RS256") {
                anyhow::bail!("JWT_ALGORITHMS: unsupported algorithm '{alg}' (use HS256, RS256)");
            }
        }
        if !allowed.contains(&"HS256") {
            keys.hs256 = None;
        }
        if allowed.contains(&"RS256") {
            let pem = rs256_public_pem.ok_or_else(|| {
                anyhow::anyhow!("JWT_ALGORITHMS lists RS256 but JWT_RS256_PUBLIC_KEY is not set")
            })?;
            keys.rs256 = Some(
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("JWT_RS256_PUBLIC_KEY: {e}"))?,
            );
        }
        Ok(keys)
    }

    /// Verifies a token's signature and expiry and returns its claims.
    pub fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        self.decode_with_algorithm(token).map(|(claims, _)| claims)
    }

    /// [`JwtKeys::decode`], also telling which algorithm (hence which key) verified it.
    fn decode_with_algorithm(&self, token: &str) -> Result<(Claims, Algorithm), ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| rejected("token_invalid", "the token is malformed"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            rejected(
                "token_algorithm_not_allowed",
                "the token's signing algorithm is not accepted",
            )
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => rejected("token_expired", "the token has expired"),
            ErrorKind::InvalidSignature => {
                rejected("token_invalid", "the token's signature is invalid")
            }
            _ => rejected("token_invalid", "the token is invalid"),
        })?;
        if data.claims.username.is_empty() {
            return Err(rejected("token_invalid", "the token names no user"));
        }
        Ok((data.claims, header.alg))
    }

    /// Verifies an access token: `token_type` must be `access`, and our own (HS256) tokens must
    /// name their session. Whether the user and the session are still valid is checked by the
    /// caller (`auth::authenticate`).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let (claims, algorithm) = self.decode_with_algorithm(token)?;
        match claims.token_type.as_deref() {
            Some("access") => {}
            Some(_) => {
                return Err(rejected(
                    "token_invalid",
                    "an access token is required, not a refresh token",
                ));
            }
            None => {
                return Err(rejected(
                    "token_invalid",
                    "the token does not say it is an access token (token_type)",
                ));
            }
        }
        if algorithm == Algorithm::HS256 && claims.sid.is_none() {
            return Err(rejected(
                "token_invalid",
                "the token names no login session; log in again",
            ));
        }
        Ok(claims)
    }

    /// Mints a token (always HS256 with the signing key).
    pub fn mint(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }
}

/// An applicative user, the application it stands for, and its token.
#[derive(Clone)]
pub struct ApplicativeToken {
    pub username: String,
    pub application: commands::authz::Application,
    token: String,
}

impl ApplicativeToken {
    pub fn new(username: String, application: commands::authz::Application, token: String) -> Self {
        Self {
            username,
            application,
            token,
        }
    }

    pub(crate) fn matches(&self, presented: &str) -> bool {
        self.token.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for ApplicativeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApplicativeToken({}, <redacted>)", self.username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            username: "alice".into(),
            exp,
            iat: None,
            token_type: Some("access".into()),
            jti: None,
            sid: Some(Uuid::from_u128(7)),
            generation: None,
        }
    }

    #[test]
    fn access_tokens_must_say_so_and_name_their_session() {
        let keys = JwtKeys::hs256(b"secret-one");
        let far = chrono::Utc::now().timestamp() + 600;
        let untyped = keys
            .mint(&Claims {
                token_type: None,
                ..claims(far)
            })
            .unwrap();
        assert_eq!(keys.verify(&untyped).unwrap_err().code, "token_invalid");
        let refresh = keys
            .mint(&Claims {
                token_type: Some("refresh".into()),
                ..claims(far)
            })
            .unwrap();
        assert_eq!(keys.verify(&refresh).unwrap_err().code, "token_invalid");
        let sessionless = keys
            .mint(&Claims {
                sid: None,
                ..claims(far)
            })
            .unwrap();
        let refused = keys.verify(&sessionless).unwrap_err();
        assert!(refused.message.contains("session"), "{}", refused.message);
    }

    #[test]
    fn tokens_verify_only_with_the_right_key_and_algorithm() {
        let keys = JwtKeys::hs256(b"secret-one");
        let far = chrono::Utc::now().timestamp() + 600;
        let token = keys.mint(&claims(far)).unwrap();
        assert_eq!(keys.verify(&token).unwrap().username, "alice");
        let other = JwtKeys::hs256(b"secret-two");
        assert_eq!(other.verify(&token).unwrap_err().code, "token_invalid");
        let expired = keys.mint(&claims(far - 1200)).unwrap();
        assert_eq!(keys.verify(&expired).unwrap_err().code, "token_expired");
        // HS256 disabled: our own HS256 tokens are refused.
        let rs_only = JwtKeys {
            hs256: None,
            ..keys.clone()
        };
        assert_eq!(
            rs_only.verify(&token).unwrap_err().code,
            "token_algorithm_not_allowed"
        );
    }

    #[test]
    fn unsupported_algorithm_lists_are_refused_at_startup() {
        assert!(JwtKeys::configured(b"k", "HS256,none", None).is_err());
        assert!(JwtKeys::configured(b"k", "RS256", None).is_err());
        assert!(JwtKeys::configured(b"k", "HS256", None).is_ok());
    }
}
