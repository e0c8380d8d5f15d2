//! OIDC login end to end against a provider on loopback, and the external identity service.

use infra::runtime::config::OidcProviderSettings;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::identity::add_user;
use tests::providers::{
    AUDIENCE, BROKEN_ELSEWHERE, CLIENT_ID, CLIENT_SECRET, GOOD_CODE, HOOK_KEY, HOOK_PASSWORD,
    KNOWN_ELSEWHERE, OIDC_USER, Providers, STRANGER_CODE, rsa_key_pair,
};
use tests::{TestApp, cleanup, nats_url, settings, unique_id};

const REDIRECT: &str = "http://front.example.org/login";

async fn oidc(app: &TestApp, method: Method, path: &str, body: serde_json::Value) -> tests::Answer {
    app.send(
        app.request(method, path)
            .header("AuthorizationMethod", "OIDC")
            .json(&body),
    )
    .await
}

#[tokio::test]
async fn oidc_login_token_checks_refresh_and_logout_and_identity_service_hooks() {
    let id = unique_id();
    let dir = std::env::temp_dir().join(format!("c360-oidc-{id}"));
    let (private_pem, _public, modulus) = rsa_key_pair(&dir);
    let providers = Providers::start(&private_pem, &modulus).await;
    let mut s = settings(&id, &nats_url());
    s.identity.oidc_providers = vec![OidcProviderSettings {
        issuer: providers.issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uri: REDIRECT.into(),
    }];
    s.identity.oidc_audience = AUDIENCE.into();
    s.identity.identity_server_url = Some(providers.base.clone());
    s.identity.identity_server_auth_token = Some(HOOK_KEY.into());
    let app = TestApp::spawn_with(s.clone(), id.clone()).await;
    add_user(&app, OIDC_USER, None).await;

    // Authorization-code login.
    let login = oidc(
        &app,
        Method::POST,
        "/auth/login/",
        json!({"auth_code": GOOD_CODE, "redirect_uri": REDIRECT}),
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.body["user"]["username"], OIDC_USER);
    let access = login.body["access_token"].as_str().unwrap().to_string();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_string();
    let with_oidc = |token: String| {
        app.request(Method::GET, "/cohort/folders/")
            .bearer_auth(token)
            .header("AuthorizationMethod", "OIDC")
    };
    assert_eq!(
        app.send(with_oidc(access.clone())).await.status,
        StatusCode::OK
    );
    // The same token without the OIDC method is not one of ours.
    let as_jwt = app
        .send(
            app.request(Method::GET, "/cohort/folders/")
                .bearer_auth(&access),
        )
        .await;
    assert_eq!(as_jwt.status, StatusCode::UNAUTHORIZED);

    // Forgeries signed with the provider's key but wrong claims are refused.
    let exp = chrono::Utc::now().timestamp() + 300;
    let forged = [
        (
            "wrong issuer",
            json!({"iss": "http://evil.example.org/realms/test", "aud": AUDIENCE, "preferred_username": OIDC_USER, "exp": exp}),
        ),
        (
            "wrong audience",
            json!({"iss": providers.issuer, "aud": "someone-else", "preferred_username": OIDC_USER, "exp": exp}),
        ),
        (
            "expired",
            json!({"iss": providers.issuer, "aud": AUDIENCE, "preferred_username": OIDC_USER, "exp": exp - 3600}),
        ),
        (
            "no username",
            json!({"iss": providers.issuer, "aud": AUDIENCE, "exp": exp}),
        ),
    ];
    for (what, claims) in forged {
        let answer = app.send(with_oidc(providers.sign(claims))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(answer.body["code"], "provider_rejected", "{what}");
    }

    // Made-up key ids are refused without refetching the JWKS each time.
    let fetched = providers.certs_served();
    for n in 0..5 {
        let claims = json!({"iss": providers.issuer, "aud": AUDIENCE, "preferred_username": OIDC_USER, "exp": exp});
        let answer = app
            .send(with_oidc(
                providers.sign_with_kid(claims, &format!("bogus-{n}")),
            ))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        providers.certs_served(),
        fetched,
        "the JWKS was fetched recently: no refetch"
    );

    // Bad code, unknown redirect, and a provider user unknown here.
    for (what, body, code) in [
        (
            "bad code",
            json!({"auth_code": "nope", "redirect_uri": REDIRECT}),
            "provider_rejected",
        ),
        (
            "unknown redirect",
            json!({"auth_code": GOOD_CODE, "redirect_uri": "http://elsewhere/"}),
            "provider_rejected",
        ),
        (
            "unknown user",
            json!({"auth_code": STRANGER_CODE, "redirect_uri": REDIRECT}),
            "invalid_credentials",
        ),
    ] {
        let answer = oidc(&app, Method::POST, "/auth/login/", body).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(answer.body["code"], code, "{what}");
    }

    // Refresh and logout at the provider.
    let refreshed = oidc(
        &app,
        Method::POST,
        "/auth/refresh/",
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let new_refresh = refreshed.body["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.send(with_oidc(
            refreshed.body["access_token"].as_str().unwrap().into()
        ))
        .await
        .status,
        StatusCode::OK
    );
    let out = oidc(
        &app,
        Method::POST,
        "/auth/logout/",
        json!({"refresh_token": new_refresh}),
    )
    .await;
    assert_eq!(out.status, StatusCode::OK);
    let after = oidc(
        &app,
        Method::POST,
        "/auth/refresh/",
        json!({"refresh_token": new_refresh}),
    )
    .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    // The identity service vouches for passwords of local users without a local hash.
    add_user(&app, "hooked", None).await;
    let login = |password: &'static str| {
        app.send(
            app.request(Method::POST, "/auth/login/")
                .json(&json!({"username": "hooked", "password": password})),
        )
    };
    assert_eq!(login(HOOK_PASSWORD).await.status, StatusCode::OK);
    assert_eq!(login("wrong").await.status, StatusCode::UNAUTHORIZED);
    let found = app
        .get(&format!("/users/{KNOWN_ELSEWHERE}/check/"), OIDC_USER)
        .await;
    assert_eq!(found.status, StatusCode::OK, "{:?}", found.body);
    assert_eq!(found.body["found"], true);
    assert_eq!(found.body["already_exists"], false);
    // Upstream's protocol: givenName, sn, cn and mail under data.attributes.
    assert_eq!(found.body["username"], KNOWN_ELSEWHERE);
    assert_eq!(found.body["firstname"], "Ada");
    assert_eq!(found.body["lastname"], "Lovelace");
    assert_eq!(found.body["email"], "ada@example.org");
    let local = app
        .get(&format!("/users/{OIDC_USER}/check/"), OIDC_USER)
        .await;
    assert_eq!(local.body["already_exists"], true);
    let unknown = app.get("/users/nobody.anywhere/check/", OIDC_USER).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let invalid = app.get("/users/bad%20name/check/", OIDC_USER).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    // The identity service failing is not "unknown user".
    let broken = app
        .get(&format!("/users/{BROKEN_ELSEWHERE}/check/"), OIDC_USER)
        .await;
    assert_eq!(broken.status, StatusCode::BAD_GATEWAY, "{:?}", broken.body);
    assert_eq!(broken.body["code"], "provider_unavailable");

    app.stop().await;
    providers.stop();
    let _ = std::fs::remove_dir_all(dir);
    cleanup(&id, &s).await;
}
