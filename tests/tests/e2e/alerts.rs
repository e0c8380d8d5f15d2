//! Access-expiry e-mails over SMTP, sent once per alert.

use std::time::Duration;

use chrono::Utc;
use commands::CommandContext;
use tests::identity::{APHP, add_user, grant_dated, seed, user_with};
use tests::smtp::SmtpServer;
use tests::{TestApp, eventually, nats_url, settings, unique_id};

#[tokio::test]
async fn expiry_alerts_reach_holders_30_and_2_days_before_and_only_once() {
    let smtp = SmtpServer::start().await;
    let id = unique_id();
    let mut s = settings(&id, &nats_url());
    s.identity.smtp.smtp_port = smtp.port;
    // The accesses are granted first, with no scheduler running: a run between two grants of
    // one user would rightly alert about each access in its own mail.
    s.identity.enable_access_expiry_alerts = false;
    let app = TestApp::spawn_with(s, id).await;
    let fixture = seed(&app).await;
    let now = Utc::now();
    add_user(&app, "soon", None).await;
    grant_dated(
        &app,
        &fixture,
        "soon",
        "nominative_reader",
        2,
        None,
        Some(now + chrono::Duration::days(30)),
    )
    .await;
    grant_dated(
        &app,
        &fixture,
        "soon",
        "pseudo_reader",
        6,
        None,
        Some(now + chrono::Duration::days(30)),
    )
    .await;
    add_user(&app, "sooner", None).await;
    grant_dated(
        &app,
        &fixture,
        "sooner",
        "nominative_reader",
        3,
        None,
        Some(now + chrono::Duration::days(2)),
    )
    .await;
    // Not due: ends in 10 days; and one user the default 365 days.
    add_user(&app, "later", None).await;
    grant_dated(
        &app,
        &fixture,
        "later",
        "nominative_reader",
        4,
        None,
        Some(now + chrono::Duration::days(10)),
    )
    .await;
    user_with(&app, &fixture, "calm", "nominative_reader", APHP).await;
    app.settle().await;

    // A second instance runs the scheduler (every second here): one mail per due user.
    let mut alerting = app.settings.clone();
    alerting.identity.enable_access_expiry_alerts = true;
    alerting.identity.access_expiry_check_seconds = 1;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let scheduler = api::startup::Application::build(&alerting, shutdown.clone())
        .await
        .expect("the alerting instance builds");
    let scheduler = tokio::spawn(scheduler.run_until_stopped(shutdown.clone()));
    assert!(
        eventually(tests::PATIENCE, || async { smtp.received().len() >= 2 }).await,
        "two alerts arrive"
    );
    // Several more runs pass: nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let received = smtp.received();
    let mut recipients: Vec<String> = received.iter().flat_map(|m| m.to.clone()).collect();
    recipients.sort();
    assert_eq!(recipients, ["soon@example.org", "sooner@example.org"]);
    let soon = received
        .iter()
        .find(|m| m.to == ["soon@example.org"])
        .unwrap();
    assert!(
        soon.data.contains("P2") && soon.data.contains("P6"),
        "{}",
        soon.data
    );

    // A direct run the same day finds every alert claimed.
    let ctx = CommandContext {
        user: "system".into(),
        impersonator: None,
        correlation_id: "t".into(),
        causation_id: "t".into(),
        at: Utc::now(),
    };
    let report = app
        .state
        .identity_service
        .send_expiry_alerts(
            &ctx,
            ctx.at.date_naive(),
            &[30, 2],
            app.state.mailer.as_ref(),
        )
        .await
        .unwrap();
    assert_eq!(report.mails_sent, 0);
    assert_eq!(report.already_alerted, 2);
    let claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'AccessExpiryAlertRecorded'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(claims, 3, "one claim per access");
    shutdown.cancel();
    scheduler.await.unwrap().unwrap();
    app.stop().await;
    smtp.stop();
}
