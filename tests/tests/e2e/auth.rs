//! Login, refresh rotation, logout, token verification and impersonation.

use api::tokens::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::identity::{APHP, add_user, grant, seed};
use tests::{TestApp, cleanup, nats_url, settings, unique_id};

async fn login_json(app: &TestApp, username: &str, password: &str) -> tests::Answer {
    app.send(
        app.request(Method::POST, "/auth/login/")
            .header("AuthorizationMethod", "JWT")
            .json(&json!({"username": username, "password": password})),
    )
    .await
}

async fn refresh(app: &TestApp, token: &str) -> tests::Answer {
    app.send(
        app.request(Method::POST, "/auth/refresh/")
            .json(&json!({"refresh_token": token})),
    )
    .await
}

async fn get_with_token(app: &TestApp, path: &str, token: &str) -> tests::Answer {
    app.send(app.request(Method::GET, path).bearer_auth(token))
        .await
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn password_login_refresh_rotation_reuse_and_logout() {
    let app = TestApp::spawn().await;
    add_user(&app, "jdupont", Some("correct horse")).await;

    // The front-end's form: multipart, header in lower case.
    let form = reqwest::multipart::Form::new()
        .text("username", "jdupont")
        .text("password", "correct horse");
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .header("authorizationMethod", "JWT")
                .multipart(form),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.body["user"]["username"], "jdupont");
    assert_eq!(login.body["user"]["display_name"], "Test User (jdupont)");
    assert!(login.body["last_login"].is_string(), "{:?}", login.body);
    let access = text(&login.body, "access_token");
    let first_refresh = text(&login.body, "refresh_token");
    assert_eq!(
        get_with_token(&app, "/cohort/folders/", &access)
            .await
            .status,
        StatusCode::OK
    );
    // A refresh token is not an access token.
    let refused = get_with_token(&app, "/cohort/folders/", &first_refresh).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["code"], "token_invalid");

    // Wrong password and unknown user answer the same.
    for (user, password) in [("jdupont", "wrong"), ("nobody", "correct horse")] {
        let bad = login_json(&app, user, password).await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(bad.body["code"], "invalid_credentials", "{user}");
    }

    // Refresh needs no access token and rotates.
    let rotated = refresh(&app, &first_refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{:?}", rotated.body);
    let second_refresh = text(&rotated.body, "refresh_token");
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        get_with_token(
            &app,
            "/cohort/folders/",
            &text(&rotated.body, "access_token")
        )
        .await
        .status,
        StatusCode::OK
    );
    // Replaying the first refresh token revokes the whole family, and its access tokens: both
    // the first one and the rotated one, although neither has expired.
    let replay = refresh(&app, &first_refresh).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.body["code"], "session_ended");
    let after_replay = refresh(&app, &second_refresh).await;
    assert_eq!(after_replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after_replay.body["code"], "session_ended");
    for token in [&access, &text(&rotated.body, "access_token")] {
        let dead = get_with_token(&app, "/cohort/folders/", token).await;
        assert_eq!(dead.status, StatusCode::UNAUTHORIZED, "{:?}", dead.body);
        assert_eq!(dead.body["code"], "session_ended");
    }

    // Logout ends a fresh session's family.
    let login = login_json(&app, "jdupont", "correct horse").await;
    let refresh_token = text(&login.body, "refresh_token");
    let logout = app
        .send(
            app.request(Method::POST, "/auth/logout/")
                .bearer_auth(text(&login.body, "access_token"))
                .json(&json!({"refresh_token": refresh_token})),
        )
        .await;
    assert_eq!(logout.status, StatusCode::OK);
    let after_logout = refresh(&app, &refresh_token).await;
    assert_eq!(after_logout.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after_logout.body["code"], "session_ended");
    // The session's access token dies with it, at once.
    let dead = get_with_token(&app, "/cohort/folders/", &text(&login.body, "access_token")).await;
    assert_eq!(dead.status, StatusCode::UNAUTHORIZED, "{:?}", dead.body);
    assert_eq!(dead.body["code"], "session_ended");

    // The sessions are audited as events.
    let reuse: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('SessionReuseDetected', 'SessionLoggedOut')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reuse, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_legacy_sha256_password_works_once_and_is_rehashed_and_no_secret_is_published() {
    let app = TestApp::spawn().await;
    add_user(&app, "legacy", None).await;
    // An imported user carries upstream's unsalted SHA-256 hash.
    let ctx = commands::CommandContext {
        user: "system".into(),
        impersonator: None,
        correlation_id: "t".into(),
        causation_id: "t".into(),
        at: chrono::Utc::now(),
    };
    let users = infra::stores::identity(&app.pool).users;
    users
        .execute(
            "legacy",
            domain::user::UserCommand::SetPasswordHash {
                hash: commands::passwords::legacy_sha256("old-pass"),
                at: ctx.at,
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(
        login_json(&app, "legacy", "old-pass").await.status,
        StatusCode::OK
    );
    let state = users.load("legacy").await.unwrap().state.unwrap();
    let stored = state.password_hash.unwrap();
    assert!(stored.starts_with("$argon2id$"), "re-hashed: {stored}");
    assert_eq!(
        login_json(&app, "legacy", "old-pass").await.status,
        StatusCode::OK
    );

    // Published envelopes redact the hashes; nothing stores the clear password.
    let mut published = Vec::new();
    for _ in 0..100 {
        published = tests::published(&app.settings.nats_url, &app.settings.nats_stream)
            .await
            .into_iter()
            .filter(|p| p.envelope.event_type == "UserPasswordHashSet")
            .collect();
        if published.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(published.len(), 2, "the legacy hash and its re-hash");
    for p in &published {
        let text = serde_json::to_string(&p.envelope.payload).unwrap();
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains("$argon2id$"), "{text}");
    }
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload::text LIKE '%old-pass%' OR metadata::text LIKE '%old-pass%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);
    app.stop().await;
}

fn claims(username: &str, exp_in: i64) -> Claims {
    Claims {
        username: username.into(),
        exp: chrono::Utc::now().timestamp() + exp_in,
        iat: None,
        token_type: Some("access".into()),
        jti: None,
        sid: None,
        generation: None,
    }
}

#[tokio::test]
async fn forged_expired_and_confused_tokens_are_refused_with_stable_codes() {
    let id = unique_id();
    let dir = std::env::temp_dir().join(format!("c360-rsa-{id}"));
    let (private_pem, public_pem, _) = tests::providers::rsa_key_pair(&dir);
    let mut s = settings(&id, &nats_url());
    s.identity.algorithms = "HS256,RS256".into();
    s.identity.rs256_public_key = Some(public_pem.clone());
    let app = TestApp::spawn_with(s.clone(), id.clone()).await;

    let rs256 = |c: &Claims| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            c,
            &EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    // An externally minted RS256 token of a known user is accepted (it has no session here).
    tests::identity::add_user(&app, "extuser", None).await;
    let external = rs256(&claims("extuser", 300));
    assert_eq!(
        get_with_token(&app, "/cohort/folders/", &external)
            .await
            .status,
        StatusCode::OK
    );

    let signing_key = s.jwt_signing_key.clone().unwrap();
    let hs256 = |c: &Claims, key: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let valid = hs256(&claims("alice", 300), signing_key.as_bytes());
    let mut tampered = valid.clone();
    tampered.pop();
    tampered.push(if valid.ends_with('A') { 'B' } else { 'A' });
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(claims("alice", 300)).unwrap())
    );
    let cases = [
        ("alg none", alg_none, "token_invalid"),
        (
            "HS256 signed with the RSA public key",
            hs256(&claims("alice", 300), public_pem.as_bytes()),
            "token_invalid",
        ),
        (
            "expired",
            hs256(&claims("alice", -60), signing_key.as_bytes()),
            "token_expired",
        ),
        ("tampered signature", tampered, "token_invalid"),
        (
            "HS512 is not an accepted algorithm",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &claims("alice", 300),
                &EncodingKey::from_secret(signing_key.as_bytes()),
            )
            .unwrap(),
            "token_algorithm_not_allowed",
        ),
        ("garbage", "not.a.token".to_string(), "token_invalid"),
    ];
    // Not for a user that does not exist.
    let ghost = get_with_token(&app, "/cohort/folders/", &rs256(&claims("ghost", 300))).await;
    assert_eq!(ghost.status, StatusCode::UNAUTHORIZED);
    assert_eq!(ghost.body["code"], "user_unknown", "{:?}", ghost.body);
    for (what, token, code) in cases {
        let answer = get_with_token(&app, "/cohort/folders/", &token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(answer.body["code"], code, "{what}: {:?}", answer.body);
    }
    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    cleanup(&id, &s).await;
}

#[tokio::test]
async fn every_protected_endpoint_refuses_anonymous_callers_the_same_way() {
    let app = TestApp::spawn().await;
    let protected = [
        (Method::GET, "/users/"),
        (Method::POST, "/users/"),
        (Method::GET, "/users/someone/"),
        (Method::GET, "/users/someone/check/"),
        (Method::GET, "/accesses/rights/"),
        (Method::GET, "/accesses/roles/"),
        (Method::POST, "/accesses/roles/"),
        (Method::GET, "/accesses/roles/assignable/?perimeter_id=1"),
        (Method::GET, "/accesses/roles/1/users/"),
        (Method::GET, "/accesses/profiles/"),
        (Method::GET, "/accesses/perimeters/"),
        (Method::GET, "/accesses/perimeters/1/"),
        (Method::GET, "/accesses/perimeters/1/children/"),
        (Method::GET, "/accesses/perimeters/manageable/"),
        (Method::GET, "/accesses/perimeters/patient-data/rights/"),
        (
            Method::GET,
            "/accesses/perimeters/patient-data/read/?cohort_ids=1",
        ),
        (Method::GET, "/accesses/accesses/"),
        (Method::POST, "/accesses/accesses/"),
        (Method::GET, "/accesses/accesses/1/"),
        (Method::PATCH, "/accesses/accesses/1/close/"),
        (Method::GET, "/accesses/accesses/my-accesses/"),
        (Method::GET, "/accesses/accesses/my-data-rights/"),
        (Method::POST, "/maintenances/"),
        (Method::DELETE, "/maintenances/1/"),
        (Method::GET, "/audit/Access/1/events/"),
        (Method::GET, "/cohort/folders/"),
    ];
    for (method, path) in protected {
        let answer = app
            .send(app.request(method.clone(), path).json(&json!({})))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(answer.body["code"], "not_authenticated", "{method} {path}");
    }
    // Public by design: maintenance information and health.
    for path in ["/maintenances/", "/maintenances/next/", "/health/live"] {
        assert_eq!(
            app.send(app.request(Method::GET, path)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn full_admins_impersonate_others_cannot_and_events_record_both_users() {
    let app = TestApp::spawn().await;
    let fixture = seed(&app).await;
    add_user(&app, "boss", None).await;
    grant(&app, &fixture, "boss", "full_admin", APHP).await;
    add_user(&app, "reader", None).await;
    grant(&app, &fixture, "reader", "nominative_reader", 0).await;
    add_user(&app, "target", None).await;

    let as_boss = app
        .send(
            app.request(Method::POST, "/cohort/folders/")
                .bearer_auth(app.token("boss").await)
                .header("X-Impersonate", "target")
                .json(&json!({"name": "made for target"})),
        )
        .await;
    assert_eq!(as_boss.status, StatusCode::CREATED, "{:?}", as_boss.body);
    assert_eq!(as_boss.body["owner"], "target");
    let metadata: Value =
        sqlx::query_scalar("SELECT metadata::jsonb FROM events WHERE event_type = 'FolderCreated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(metadata["user"], "target");
    assert_eq!(metadata["impersonator"], "boss");

    let refused = app
        .send(
            app.request(Method::GET, "/cohort/folders/")
                .bearer_auth(app.token("reader").await)
                .header("X-Impersonate", "target"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.body["code"], "impersonation_forbidden");

    let unknown = app
        .send(
            app.request(Method::GET, "/cohort/folders/")
                .bearer_auth(app.token("boss").await)
                .header("X-Impersonate", "ghost"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["code"], "impersonation_target_unknown");
    app.stop().await;
}
