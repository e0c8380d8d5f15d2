//! TLS to every service, each against a real TLS server started on loopback with a certificate
//! the test generates: HTTPS (an OIDC provider), SMTP (STARTTLS and implicit TLS), Postgres
//! (`sslmode=verify-full`) and NATS (`tls://`).

use std::time::Duration;

use commands::ports::{Mail, Mailer};
use infra::mail::{SmtpMailer, SmtpSecurity, SmtpSettings};
use infra::runtime::config::OidcProviderSettings;
use infra::tls::TlsSettings;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tests::identity::add_user;
use tests::nats_server::{NatsProcess, free_port};
use tests::pg_cluster::PgCluster;
use tests::providers::{AUDIENCE, CLIENT_ID, CLIENT_SECRET, GOOD_CODE, OIDC_USER, Providers};
use tests::smtp::{SmtpServer, SmtpTls};
use tests::tls::{TestCa, TlsProxy};
use tests::{TestApp, eventually, settings, unique_id};

fn scratch(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("c360-tls-{what}-{}", unique_id()))
}

#[tokio::test]
async fn outbound_https_trusts_the_configured_ca_and_refuses_unknown_ones() {
    let dir = scratch("https");
    let ca = TestCa::generate(&dir.join("ca"));
    let (private_pem, _public, modulus) = tests::providers::rsa_key_pair(&dir.join("rsa"));
    // The provider speaks plain HTTP behind a TLS terminator, and names itself by its https URL.
    let (proxy_listener, proxy_port) = TlsProxy::bind().await;
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let providers = Providers::serve(
        &private_pem,
        &modulus,
        backend,
        format!("https://localhost:{proxy_port}"),
    );
    let _proxy = TlsProxy::forward(proxy_listener, &ca, backend_port);
    let jwks = format!("{}/protocol/openid-connect/certs", providers.issuer);

    // A client trusting only the system's roots refuses the test CA's certificate...
    let untrusting = infra::tls::http_client_builder(&TlsSettings::default())
        .unwrap()
        .build()
        .unwrap();
    assert!(untrusting.get(&jwks).send().await.is_err());
    // ... one given TLS_CA_FILE accepts it.
    let trusting = infra::tls::http_client_builder(&TlsSettings {
        ca_file: Some(ca.ca_pem.clone()),
    })
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(
        trusting.get(&jwks).send().await.unwrap().status(),
        StatusCode::OK
    );

    // End to end: an OIDC login and a request with the provider's token, over HTTPS.
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.tls_ca_file = Some(ca.ca_pem.clone());
    s.identity.oidc_providers = vec![OidcProviderSettings {
        issuer: providers.issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uri: "http://front.example.org/login".into(),
    }];
    s.identity.oidc_audience = AUDIENCE.into();
    let app = TestApp::spawn_with(s, id).await;
    add_user(&app, OIDC_USER, None).await;
    let login = app
        .send(
            app.request(Method::POST, "/auth/login/")
                .header("AuthorizationMethod", "OIDC")
                .json(&json!({"auth_code": GOOD_CODE, "redirect_uri": "http://front.example.org/login"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    let access = login.body["access_token"].as_str().unwrap().to_string();
    let folders = app
        .send(
            app.request(Method::GET, "/cohort/folders/")
                .bearer_auth(access)
                .header("AuthorizationMethod", "OIDC"),
        )
        .await;
    assert_eq!(folders.status, StatusCode::OK, "{:?}", folders.body);
    app.stop().await;
    providers.stop();
    let _ = std::fs::remove_dir_all(dir);
}

fn mail() -> Mail {
    Mail {
        to: "ada@example.org".into(),
        subject: "Over TLS".into(),
        text: "hello".into(),
        html: None,
    }
}

fn mailer(port: u16, security: SmtpSecurity, ca: Option<&TestCa>) -> SmtpMailer {
    SmtpMailer::new(&SmtpSettings {
        host: "localhost".into(),
        port,
        username: None,
        password: None,
        sender: "cohort360@example.org".into(),
        timeout: Duration::from_secs(10),
        security,
        tls: TlsSettings {
            ca_file: ca.map(|c| c.ca_pem.clone()),
        },
    })
    .expect("mailer builds")
}

#[tokio::test]
async fn mail_goes_out_over_starttls_and_implicit_tls_and_never_in_clear_to_a_tls_relay() {
    let dir = scratch("smtp");
    let ca = TestCa::generate(&dir);
    let starttls = SmtpServer::start_with(SmtpTls::StartTls(ca.acceptor())).await;
    let implicit = SmtpServer::start_with(SmtpTls::Implicit(ca.acceptor())).await;

    mailer(starttls.port, SmtpSecurity::StartTls, Some(&ca))
        .send(mail())
        .await
        .expect("sent with STARTTLS");
    assert_eq!(starttls.received().len(), 1);
    assert_eq!(starttls.received()[0].to, vec!["ada@example.org"]);
    mailer(implicit.port, SmtpSecurity::Tls, Some(&ca))
        .send(mail())
        .await
        .expect("sent over TLS");
    assert_eq!(implicit.received().len(), 1);

    // Not without trusting the relay's CA, and not in clear to a relay that requires TLS.
    assert!(
        mailer(implicit.port, SmtpSecurity::Tls, None)
            .send(mail())
            .await
            .is_err()
    );
    assert!(
        mailer(starttls.port, SmtpSecurity::None, None)
            .send(mail())
            .await
            .is_err()
    );
    assert_eq!(starttls.received().len(), 1, "nothing more was accepted");
    starttls.stop();
    implicit.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_is_reached_over_tls_with_its_certificate_verified() {
    let dir = scratch("pg");
    let ca = TestCa::generate(&dir.join("ca"));
    let cluster = PgCluster::start_with_tls("tls", &ca);
    let url = |root: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/cohort360?sslmode=verify-full&sslrootcert={}",
            cluster.port,
            root.display()
        )
    };
    // A server certificate from another CA is refused.
    let stranger = TestCa::generate(&dir.join("other"));
    let refused = infra::db::ensure_database(&url(&stranger.ca_pem)).await;
    assert!(refused.is_err(), "an unknown CA is refused");

    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.database_url = url(&ca.ca_pem);
    let app = TestApp::spawn_with(s, id).await;
    let folder = app
        .post("/cohort/folders/", "tina", json!({"name": "Encrypted"}))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED, "{:?}", folder.body);
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(encrypted, "the service's connections use TLS");
    app.stop().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits until `stream`, read through `client`, holds every event of `app`'s log.
async fn assert_published(client: async_nats::Client, app: &TestApp, stream: &str) {
    let js = async_nats::jetstream::new(client);
    let stored = app.event_count().await as u64;
    assert!(
        eventually(tests::PATIENCE, || async {
            match js.get_stream(stream).await {
                Ok(mut st) => st.info().await.is_ok_and(|i| i.state.messages == stored),
                Err(_) => false,
            }
        })
        .await,
        "every event published"
    );
}

#[tokio::test]
async fn nats_is_reached_over_tls() {
    let dir = scratch("nats");
    let ca = TestCa::generate(&dir.join("ca"));
    let nats = NatsProcess::start_with_tls(free_port(), &dir.join("store"), &ca).await;
    let id = unique_id();
    let mut s = settings(&id, &nats.url());
    s.nats_tls.nats_tls_ca_file = Some(ca.ca_pem.clone());
    let app = TestApp::spawn_with(s.clone(), id).await;
    let folder = app
        .post("/cohort/folders/", "noor", json!({"name": "Published"}))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED);
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.ca_pem.clone())
        .require_tls(true)
        .connect(nats.url())
        .await
        .expect("a TLS client connects");
    assert_published(client, &app, &s.nats_stream).await;
    let ready = app.call(Method::GET, "/health/ready", None, None).await;
    assert_eq!(ready.body["status"], "ok", "{:?}", ready.body);
    app.stop().await;
    drop(nats);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn nats_in_decentralized_auth_mode_is_reached_with_a_credentials_file() {
    let dir = scratch("creds");
    let (nats, creds) = NatsProcess::start_with_credentials(free_port(), &dir).await;
    // Without the credentials, the server refuses the connection.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client is refused");

    let id = unique_id();
    let mut s = settings(&id, &nats.url());
    s.nats_tls.nats_credentials_file = Some(creds.clone());
    let app = TestApp::spawn_with(s.clone(), id).await;
    let folder = app
        .post("/cohort/folders/", "cora", json!({"name": "Authenticated"}))
        .await;
    assert_eq!(folder.status, StatusCode::CREATED);
    let client = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .expect("credentials read")
        .connect(nats.url())
        .await
        .expect("the credentials are accepted");
    assert_published(client, &app, &s.nats_stream).await;
    app.stop().await;
    drop(nats);
    let _ = std::fs::remove_dir_all(dir);
}
