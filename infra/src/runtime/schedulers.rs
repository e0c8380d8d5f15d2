//! Scheduled jobs of the service, started by [`spawn`] as its settings say.

use std::time::Duration;

use chrono::Utc;
use commands::CommandContext;
use tokio_util::sync::CancellationToken;

use super::Services;
use super::config::Settings;
use tokio::task::JoinSet;

/// Sends the access-expiry e-mails every `ACCESS_EXPIRY_CHECK_SECONDS` (first run right away).
/// Each alert is claimed on its access before it is sent, so several runs a day, or several
/// instances, send it once.
async fn expiry_alerts(
    state: Services,
    settings: crate::runtime::config::IdentitySettings,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(settings.access_expiry_check_seconds.max(1));
    let days = [
        settings.access_expiry_first_alert_days,
        settings.access_expiry_second_alert_days,
    ];
    loop {
        let ctx = scheduler_context("expiry-alerts");
        match state
            .identity
            .send_expiry_alerts(&ctx, ctx.at.date_naive(), &days, state.mailer.as_ref())
            .await
        {
            Ok(report) if report.mails_sent + report.failed > 0 => {
                tracing::info!(?report, "access-expiry alerts")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "access-expiry alerts failed; next run retries"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Every `EXECUTOR_RECONCILE_EVERY_SECONDS`, asks the executor about the jobs without news for
/// `EXECUTOR_RECONCILE_AFTER_SECONDS` (a lost callback, a forgotten job, an interrupted submission).
async fn reconcile_jobs(
    state: Services,
    settings: crate::runtime::config::CohortArgs,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(settings.reconcile_every_seconds.max(1));
    let after = chrono::Duration::seconds(settings.reconcile_after_seconds as i64);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ctx = scheduler_context("reconcile-jobs");
        let jobs = state.cohorts.reconcile(&ctx, ctx.at - after).await;
        let studies = state.feasibility.reconcile(&ctx, ctx.at - after).await;
        match jobs.and_then(|j| studies.map(|s| j + s)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "jobs reconciled with the query executor"),
            Err(e) => tracing::warn!(error = %e, "job reconciliation failed; next run retries"),
        }
    }
}

/// Every `REFRESH_SCHEDULE_CHECK_SECONDS`, requests a count for each due refresh schedule.
async fn refresh_counts(state: Services, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ctx = scheduler_context("refresh-counts");
        match state.schedules.run_all_due(&ctx, ctx.at).await {
            Ok(counts) if !counts.is_empty() => {
                tracing::info!(counts = counts.len(), "scheduled counts requested")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "refresh schedules failed; next run retries"),
        }
    }
}

fn scheduler_context(name: &str) -> CommandContext {
    CommandContext {
        user: "system".into(),
        impersonator: None,
        correlation_id: format!("scheduler:{name}"),
        causation_id: format!("scheduler:{name}"),
        at: Utc::now(),
    }
}

/// Every `EXPORT_POLL_MS`, asks the exporter about the running exports (and re-checks the
/// exports waiting for their subsets).
async fn poll_exports(state: Services, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ctx = scheduler_context("poll-exports");
        match state.exports.poll(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(exports = n, "export statuses recorded"),
            Err(e) => tracing::warn!(error = %e, "export polling failed; next run retries"),
        }
    }
}

/// Every `EXPORT_CLEAN_EVERY_SECONDS` (first run right away), deletes the files of exports past
/// `DAYS_TO_KEEP_EXPORTED_FILES` and records it.
async fn clean_exports(state: Services, every: Duration, shutdown: CancellationToken) {
    loop {
        let ctx = scheduler_context("clean-exports");
        match state.exports.clean_expired(&ctx).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(exports = n, "expired export files deleted"),
            Err(e) => tracing::warn!(error = %e, "export file cleaning stopped; next run retries"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Starts the scheduled jobs the settings enable.
pub fn spawn(
    tasks: &mut JoinSet<()>,
    services: &Services,
    settings: &Settings,
    shutdown: &CancellationToken,
) {
    if settings.identity.enable_access_expiry_alerts {
        tasks.spawn(expiry_alerts(
            services.clone(),
            settings.identity.clone(),
            shutdown.clone(),
        ));
    } else {
        tracing::info!("access-expiry e-mails are disabled (ENABLE_ACCESS_EXPIRY_ALERTS)");
    }
    if settings.cohorts.refresh_check_seconds > 0 {
        tasks.spawn(refresh_counts(
            services.clone(),
            Duration::from_secs(settings.cohorts.refresh_check_seconds.max(1)),
            shutdown.clone(),
        ));
    }
    if settings.cohorts.reconcile_every_seconds > 0 {
        tasks.spawn(reconcile_jobs(
            services.clone(),
            settings.cohorts.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(poll_exports(
        services.clone(),
        Duration::from_millis(settings.exports.poll_ms.max(1)),
        shutdown.clone(),
    ));
    if settings.exports.clean_every_seconds > 0 {
        tasks.spawn(clean_exports(
            services.clone(),
            Duration::from_secs(settings.exports.clean_every_seconds),
            shutdown.clone(),
        ));
    }
}
