//! OIDC providers (Keycloak-style endpoints) and the external identity service, over HTTP.
//!
//! * Login exchanges an authorization code at the provider whose `redirect_uri` matches;
//!   refresh and logout go to the provider named by the token's `azp` (client id).
//! * Provider access tokens are verified with the issuer's JWKS, fetched on first use and again
//!   when an unknown `kid` shows up (key rotation). Only RS256 is accepted, the issuer must be
//!   configured and the audience, when configured, must match.
//! * The identity service (upstream's protocol, `admin_cohort/tools/hooks.py`) is asked with
//!   the `Key-auth` header and form-encoded bodies: `POST {url}/user/authenticate`
//!   (`username`, `password`; 200 = valid credentials) and `POST {url}/user/info` (`username`;
//!   200 = `{"data": {"attributes": {givenName, sn, cn, mail}}}`, 404 = unknown).

use std::collections::HashMap;

use crate::trace::Traced;
use std::time::Duration;

use async_trait::async_trait;
use commands::ports::{ExternalAuthError, ExternalUser, IdentityProviders, ProviderTokens};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

/// One OIDC provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// Issuer URL, e.g. `https://sso.example.org/realms/aphp`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

/// The external identity service.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityServer {
    pub url: String,
    pub key: String,
}

impl std::fmt::Debug for IdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityServer({}, <redacted>)", self.url)
    }
}

/// What [`HttpIdentityProviders`] talks to.
#[derive(Debug, Clone, Default)]
pub struct ProvidersSettings {
    pub oidc: Vec<OidcProvider>,
    /// Issuers accepted on access tokens besides the providers' own.
    pub extra_issuers: Vec<String>,
    /// Accepted `aud` values; empty: the audience is not checked.
    pub audiences: Vec<String>,
    pub identity_server: Option<IdentityServer>,
    pub timeout: Duration,
    /// CAs trusted beside the system's (HTTPS providers on an internal CA).
    pub tls: crate::tls::TlsSettings,
}

/// [`IdentityProviders`] over HTTP, with a per-issuer JWKS cache.
pub struct HttpIdentityProviders {
    settings: ProvidersSettings,
    http: reqwest::Client,
    jwks: RwLock<HashMap<String, IssuerKeys>>,
}

/// One issuer's signing keys and when they were fetched.
struct IssuerKeys {
    fetched_at: std::time::Instant,
    keys: HashMap<String, DecodingKey>,
}

/// An unknown `kid` refetches the issuer's JWKS at most this often, so that tokens with made-up
/// key ids cannot make us hammer the provider.
const JWKS_REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct AccessClaims {
    preferred_username: Option<String>,
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: Option<String>,
    azp: Option<String>,
}

/// `POST /user/info`'s answer: `{"data": {"attributes": {givenName, sn, cn, mail}}}`.
#[derive(Deserialize)]
struct UserInfoResponse {
    data: UserInfoData,
}

#[derive(Deserialize)]
struct UserInfoData {
    attributes: UserAttributes,
}

/// LDAP-style attributes; each may be missing, null, a string or a list of strings.
#[derive(Deserialize)]
struct UserAttributes {
    #[serde(rename = "givenName")]
    given_name: Option<Attribute>,
    sn: Option<Attribute>,
    cn: Option<Attribute>,
    mail: Option<Attribute>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Attribute {
    One(String),
    Many(Vec<String>),
}

impl Attribute {
    /// The value, or a list's first one; empty strings count as absent.
    fn first(self) -> Option<String> {
        match self {
            Attribute::One(v) => Some(v),
            Attribute::Many(vs) => vs.into_iter().next(),
        }
        .filter(|v| !v.is_empty())
    }
}

fn unavailable(e: impl std::fmt::Display) -> ExternalAuthError {
    ExternalAuthError::Unavailable(e.to_string())
}

fn rejected(m: &str) -> ExternalAuthError {
    ExternalAuthError::Rejected(m.to_string())
}

impl HttpIdentityProviders {
    pub fn new(settings: ProvidersSettings) -> Result<Self, crate::tls::TlsError> {
        let http = crate::tls::http_client_builder(&settings.tls)?
            .timeout(if settings.timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                settings.timeout
            })
            .build()?;
        Ok(Self {
            settings,
            http,
            jwks: RwLock::new(HashMap::new()),
        })
    }

    fn endpoint(issuer: &str, what: &str) -> String {
        format!(
            "{}/protocol/openid-connect/{what}",
            issuer.trim_end_matches('/')
        )
    }

    fn issuer_allowed(&self, iss: &str) -> bool {
        self.settings.oidc.iter().any(|p| p.issuer == iss)
            || self.settings.extra_issuers.iter().any(|i| i == iss)
    }

    /// The provider a refresh token belongs to (its `azp`), or the only one.
    fn provider_of(&self, token: &str) -> Result<&OidcProvider, ExternalAuthError> {
        let azp = jsonwebtoken::dangerous::insecure_decode_claims::<UnverifiedClaims>(token)
            .ok()
            .and_then(|c| c.azp);
        match (azp, self.settings.oidc.as_slice()) {
            (_, []) => Err(ExternalAuthError::NotConfigured("OIDC")),
            (Some(azp), providers) => providers
                .iter()
                .find(|p| p.client_id == azp)
                .ok_or_else(|| rejected("the token's client is not a configured provider")),
            (None, [only]) => Ok(only),
            (None, _) => Err(rejected("the token names no client (azp)")),
        }
    }

    async fn fetch_jwks(&self, issuer: &str) -> Result<(), ExternalAuthError> {
        let set: JwkSet = self
            .http
            .get(Self::endpoint(issuer, "certs"))
            .traced()
            .send()
            .await
            .map_err(unavailable)?
            .error_for_status()
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|k| (kid, k))
            })
            .collect();
        self.jwks.write().await.insert(
            issuer.to_string(),
            IssuerKeys {
                fetched_at: std::time::Instant::now(),
                keys,
            },
        );
        Ok(())
    }

    async fn key(&self, issuer: &str, kid: &str) -> Result<DecodingKey, ExternalAuthError> {
        {
            let jwks = self.jwks.read().await;
            if let Some(known) = jwks.get(issuer) {
                if let Some(key) = known.keys.get(kid) {
                    return Ok(key.clone());
                }
                if known.fetched_at.elapsed() < JWKS_REFETCH_MIN_INTERVAL {
                    return Err(rejected("unknown signing key (kid)"));
                }
            }
        }
        // First use, or an unknown kid after a while: the provider may have rotated its keys.
        self.fetch_jwks(issuer).await?;
        self.jwks
            .read()
            .await
            .get(issuer)
            .and_then(|known| known.keys.get(kid).cloned())
            .ok_or_else(|| rejected("unknown signing key (kid)"))
    }

    async fn token_request(
        &self,
        provider: &OidcProvider,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, ExternalAuthError> {
        let response = self
            .http
            .post(Self::endpoint(&provider.issuer, "token"))
            .form(form)
            .traced()
            .send()
            .await
            .map_err(unavailable)?;
        if response.status().is_client_error() {
            return Err(rejected("the identity provider refused the grant"));
        }
        response
            .error_for_status()
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)
    }

    async fn tokens(&self, response: TokenResponse) -> Result<ProviderTokens, ExternalAuthError> {
        let username = self.oidc_verify(&response.access_token).await?;
        Ok(ProviderTokens {
            username,
            access_token: response.access_token,
            refresh_token: response.refresh_token,
        })
    }

    fn identity_server(&self) -> Option<&IdentityServer> {
        self.settings.identity_server.as_ref()
    }
}

#[async_trait]
impl IdentityProviders for HttpIdentityProviders {
    async fn oidc_login(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<ProviderTokens, ExternalAuthError> {
        if self.settings.oidc.is_empty() {
            return Err(ExternalAuthError::NotConfigured("OIDC"));
        }
        let provider = self
            .settings
            .oidc
            .iter()
            .find(|p| p.redirect_uri == redirect_uri)
            .ok_or_else(|| rejected("no OIDC provider is configured for this redirect_uri"))?;
        let response = self
            .token_request(
                provider,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("client_id", &provider.client_id),
                    ("client_secret", &provider.client_secret),
                ],
            )
            .await?;
        self.tokens(response).await
    }

    async fn oidc_refresh(&self, refresh_token: &str) -> Result<ProviderTokens, ExternalAuthError> {
        let provider = self.provider_of(refresh_token)?;
        let response = self
            .token_request(
                provider,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", &provider.client_id),
                    ("client_secret", &provider.client_secret),
                ],
            )
            .await?;
        self.tokens(response).await
    }

    async fn oidc_logout(&self, refresh_token: &str) -> Result<(), ExternalAuthError> {
        let provider = self.provider_of(refresh_token)?;
        self.http
            .post(Self::endpoint(&provider.issuer, "logout"))
            .form(&[
                ("refresh_token", refresh_token),
                ("client_id", &provider.client_id),
                ("client_secret", &provider.client_secret),
            ])
            .traced()
            .send()
            .await
            .map_err(unavailable)?
            .error_for_status()
            .map_err(unavailable)?;
        Ok(())
    }

    async fn oidc_verify(&self, access_token: &str) -> Result<String, ExternalAuthError> {
        if self.settings.oidc.is_empty() {
            return Err(ExternalAuthError::NotConfigured("OIDC"));
        }
        let header =
            jsonwebtoken::decode_header(access_token).map_err(|_| rejected("malformed token"))?;
        if header.alg != Algorithm::RS256 {
            return Err(rejected("provider tokens must be signed with RS256"));
        }
        let kid = header.kid.ok_or_else(|| rejected("the token has no kid"))?;
        let issuer =
            jsonwebtoken::dangerous::insecure_decode_claims::<UnverifiedClaims>(access_token)
                .ok()
                .and_then(|c| c.iss)
                .filter(|iss| self.issuer_allowed(iss))
                .ok_or_else(|| rejected("the token's issuer is not accepted"))?;
        let key = self.key(&issuer, &kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&issuer]);
        validation.leeway = 0;
        if self.settings.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.settings.audiences);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(access_token, &key, &validation)
            .map_err(|e| rejected(&format!("provider token refused: {:?}", e.kind())))?;
        data.claims
            .preferred_username
            .filter(|u| !u.is_empty())
            .ok_or_else(|| rejected("the token has no preferred_username"))
    }

    async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<bool>, ExternalAuthError> {
        let Some(server) = self.identity_server() else {
            return Ok(None);
        };
        let response = self
            .http
            .post(format!(
                "{}/user/authenticate",
                server.url.trim_end_matches('/')
            ))
            .header("Key-auth", &server.key)
            .form(&[("username", username), ("password", password)])
            .traced()
            .send()
            .await
            .map_err(unavailable)?;
        // The protocol: 200 means the credentials are valid, any other answer that they are not.
        // A server error is reported as such rather than as a wrong password (deliberate: the
        // user gets "try again later", not "bad credentials"; nobody gets in either way).
        if response.status().is_server_error() {
            return Err(unavailable(format!("status {}", response.status())));
        }
        Ok(Some(response.status() == reqwest::StatusCode::OK))
    }

    async fn user_info(&self, username: &str) -> Result<Option<ExternalUser>, ExternalAuthError> {
        let Some(server) = self.identity_server() else {
            return Err(ExternalAuthError::NotConfigured("the identity service"));
        };
        let response = self
            .http
            .post(format!("{}/user/info", server.url.trim_end_matches('/')))
            .header("Key-auth", &server.key)
            .form(&[("username", username)])
            .traced()
            .send()
            .await
            .map_err(unavailable)?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(unavailable(format!("/user/info answered status {status}"))),
        }
        let body: UserInfoResponse = response.json().await.map_err(|e| {
            unavailable(format!(
                "/user/info answered no data.attributes object: {e}"
            ))
        })?;
        let attributes = body.data.attributes;
        Ok(Some(ExternalUser {
            username: attributes
                .cn
                .and_then(Attribute::first)
                .unwrap_or_else(|| username.to_string()),
            firstname: attributes.given_name.and_then(Attribute::first),
            lastname: attributes.sn.and_then(Attribute::first),
            email: attributes.mail.and_then(Attribute::first),
        }))
    }
}
