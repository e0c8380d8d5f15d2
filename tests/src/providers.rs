//! Real HTTP servers on loopback standing in for an OIDC provider (Keycloak-style endpoints,
//! RS256 tokens, a JWKS) and for the external identity service.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// An RSA key pair made by `openssl`: (private PEM, public PEM, modulus as base64url).
pub fn rsa_key_pair(dir: &Path) -> (String, String, String) {
    std::fs::create_dir_all(dir).expect("key directory");
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?} failed");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let p = private.to_str().expect("utf-8 path");
    let q = public.to_str().expect("utf-8 path");
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        p,
    ]);
    run(&["pkey", "-pubout", "-in", p, "-out", q]);
    let modulus_hex = run(&["rsa", "-pubin", "-in", q, "-modulus", "-noout"]);
    let hex = modulus_hex.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex modulus"))
        .collect();
    (
        std::fs::read_to_string(private).expect("private key"),
        std::fs::read_to_string(public).expect("public key"),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    )
}

/// The provider's fixed configuration.
pub const CLIENT_ID: &str = "cohort360";
pub const CLIENT_SECRET: &str = "client-secret";
pub const AUDIENCE: &str = "cohort360-api";
pub const KID: &str = "test-key-1";
/// The code the provider accepts, and the user it logs in.
pub const GOOD_CODE: &str = "good-code";
/// A code that logs in a user unknown to the back-end.
pub const STRANGER_CODE: &str = "stranger-code";
pub const OIDC_USER: &str = "oidc.user";
/// The identity service's `Key-auth` and the password it accepts.
pub const HOOK_KEY: &str = "hook-key";
pub const HOOK_PASSWORD: &str = "hook-pass";
/// A user the identity service knows and the back-end does not.
pub const KNOWN_ELSEWHERE: &str = "known.elsewhere";
/// A username the identity service fails on (HTTP 500).
pub const BROKEN_ELSEWHERE: &str = "broken.elsewhere";

struct Provider {
    issuer: String,
    key: EncodingKey,
    jwks: Value,
    revoked: Mutex<HashSet<String>>,
    issued: Mutex<u64>,
    certs_served: std::sync::atomic::AtomicU64,
}

impl Provider {
    /// A token signed by the provider, with these claims on top of the usual ones.
    fn sign(&self, claims: Value) -> String {
        self.sign_as(claims, KID)
    }

    fn sign_as(&self, claims: Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("token signs")
    }

    fn token_pair(&self, username: &str) -> Value {
        let n = {
            let mut issued = self.issued.lock().expect("lock");
            *issued += 1;
            *issued
        };
        let exp = chrono::Utc::now().timestamp() + 300;
        let base = json!({
            "iss": self.issuer, "aud": AUDIENCE, "azp": CLIENT_ID,
            "preferred_username": username, "exp": exp, "jti": format!("a{n}"),
        });
        let refresh = json!({
            "iss": self.issuer, "azp": CLIENT_ID, "preferred_username": username,
            "exp": exp + 3600, "typ": "Refresh", "jti": format!("r{n}"),
        });
        json!({
            "access_token": self.sign(base),
            "refresh_token": self.sign(refresh),
            "token_type": "Bearer",
        })
    }
}

async fn token(
    State(p): State<Arc<Provider>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        );
    }
    match field("grant_type") {
        "authorization_code" => match field("code") {
            GOOD_CODE => (StatusCode::OK, Json(p.token_pair(OIDC_USER))),
            STRANGER_CODE => (StatusCode::OK, Json(p.token_pair("stranger"))),
            _ => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            ),
        },
        "refresh_token" => {
            let presented = field("refresh_token").to_string();
            let user = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&presented)
                .ok()
                .and_then(|c| c["preferred_username"].as_str().map(str::to_string));
            let revoked = p.revoked.lock().expect("lock").contains(&presented);
            match user {
                Some(user) if !revoked => (StatusCode::OK, Json(p.token_pair(&user))),
                _ => (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_grant"})),
                ),
            }
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        ),
    }
}

async fn logout(
    State(p): State<Arc<Provider>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> StatusCode {
    if let Some(token) = form.get("refresh_token") {
        p.revoked.lock().expect("lock").insert(token.clone());
    }
    StatusCode::NO_CONTENT
}

async fn certs(State(p): State<Arc<Provider>>) -> Json<Value> {
    p.certs_served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Json(p.jwks.clone())
}

type FormFields = Form<std::collections::HashMap<String, String>>;

/// Upstream's identity service: form-encoded body, 200 (whatever the body) = valid.
async fn authenticate(headers: HeaderMap, Form(form): FormFields) -> impl IntoResponse {
    if headers.get("key-auth").and_then(|v| v.to_str().ok()) != Some(HOOK_KEY) {
        return (StatusCode::FORBIDDEN, "bad key");
    }
    match form.get("password").map(String::as_str) {
        Some(HOOK_PASSWORD) => (StatusCode::OK, "authenticated"),
        _ => (StatusCode::UNAUTHORIZED, "invalid credentials"),
    }
}

/// Upstream's identity service: `{"data": {"attributes": {givenName, sn, cn, mail}}}`.
async fn user_info(headers: HeaderMap, Form(form): FormFields) -> impl IntoResponse {
    if headers.get("key-auth").and_then(|v| v.to_str().ok()) != Some(HOOK_KEY) {
        return (StatusCode::FORBIDDEN, Json(json!({})));
    }
    match form.get("username").map(String::as_str) {
        Some(KNOWN_ELSEWHERE) => (
            StatusCode::OK,
            Json(json!({"data": {"type": "user", "attributes": {
                "givenName": "Ada", "sn": "Lovelace", "cn": KNOWN_ELSEWHERE,
                "mail": "ada@example.org",
            }}})),
        ),
        Some(BROKEN_ELSEWHERE) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "directory down"})),
        ),
        _ => (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))),
    }
}

/// A running provider and identity service.
pub struct Providers {
    /// `http://127.0.0.1:<port>/realms/test`.
    pub issuer: String,
    /// `http://127.0.0.1:<port>` (identity service base URL).
    pub base: String,
    provider: Arc<Provider>,
    server: tokio::task::JoinHandle<()>,
}

impl Providers {
    /// Starts both servers on one loopback port, signing with `private_pem`.
    pub async fn start(private_pem: &str, modulus_b64: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        Self::serve(private_pem, modulus_b64, listener, base)
    }

    /// Serves on `listener`, naming itself `base` (the URL clients use: behind a TLS proxy,
    /// an `https://` one) in its issuer and tokens.
    pub fn serve(
        private_pem: &str,
        modulus_b64: &str,
        listener: TcpListener,
        base: String,
    ) -> Self {
        let issuer = format!("{base}/realms/test");
        let provider = Arc::new(Provider {
            issuer: issuer.clone(),
            key: EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("RSA key"),
            jwks: json!({"keys": [{
                "kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
                "n": modulus_b64, "e": "AQAB",
            }]}),
            revoked: Mutex::new(HashSet::new()),
            issued: Mutex::new(0),
            certs_served: std::sync::atomic::AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/realms/test/protocol/openid-connect/token", post(token))
            .route("/realms/test/protocol/openid-connect/logout", post(logout))
            .route("/realms/test/protocol/openid-connect/certs", get(certs))
            .with_state(provider.clone())
            .route("/user/authenticate", post(authenticate))
            .route("/user/info", post(user_info));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            base,
            provider,
            server,
        }
    }

    /// A token signed with the provider's key but carrying other claims (forgeries).
    pub fn sign(&self, claims: Value) -> String {
        self.provider.sign(claims)
    }

    /// The same, under another key id (the signature matches no published key).
    pub fn sign_with_kid(&self, claims: Value, kid: &str) -> String {
        self.provider.sign_as(claims, kid)
    }

    /// How many times the JWKS was served.
    pub fn certs_served(&self) -> u64 {
        self.provider
            .certs_served
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stop(self) {
        self.server.abort();
    }
}
