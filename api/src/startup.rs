//! Wiring of the HTTP edge: the runtime (`infra::runtime`) builds and runs every service; this
//! module adds what HTTP needs (token keys, applicative tokens, the handlers' state), builds the
//! router and binds the listener. With `main.rs`, the only module of `api` that knows `infra`.
//!
//! [`Application::build`] prepares everything and binds the listener (port 0 allowed, which the
//! tests use); [`Application::run_until_stopped`] serves until the shutdown token is cancelled,
//! with the relay and the projectors running beside the HTTP server.

use std::sync::Arc;
use std::time::Duration;

use commands::authz::Application as App;
use infra::runtime::config::{IdentitySettings, Settings};
use infra::runtime::{Runtime, Services};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::{AppState, EdgeSettings, HandlerState};
use crate::tokens::{ApplicativeToken, JwtKeys};

/// The token keys: the configured signing key, or a random one with a loud warning.
fn jwt_keys(settings: &Settings) -> anyhow::Result<JwtKeys> {
    let secret: Vec<u8> = match &settings.jwt_signing_key {
        Some(key) if !key.is_empty() => key.as_bytes().to_vec(),
        _ => {
            tracing::warn!(
                "JWT_SIGNING_KEY is not set: using a random key. Tokens will not survive a restart \
                 and no other instance can verify them. Set JWT_SIGNING_KEY in any real deployment."
            );
            rand::random::<[u8; 32]>().to_vec()
        }
    };
    JwtKeys::configured(
        &secret,
        &settings.identity.algorithms,
        settings.identity.rs256_public_key.as_deref(),
    )
}

/// The configured applicative tokens.
fn applicative_tokens(identity: &IdentitySettings) -> Vec<ApplicativeToken> {
    [
        (
            &identity.query_executor_token,
            &identity.query_executor_username,
            App::QueryExecutor,
        ),
        (
            &identity.solr_etl_token,
            &identity.solr_etl_username,
            App::SolrEtl,
        ),
        (
            &identity.rollout_token,
            &identity.rollout_username,
            App::Rollout,
        ),
    ]
    .into_iter()
    .filter_map(|(token, user, application)| {
        token
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|t| ApplicativeToken::new(user.clone(), application, t.clone()))
    })
    .collect()
}

/// Creates the applicative users that do not exist yet (they own callbacks and audit entries).
async fn ensure_applicative_users(
    identity: &commands::identity::Identity,
    tokens: &[ApplicativeToken],
) -> anyhow::Result<()> {
    for app in tokens {
        let ctx = commands::CommandContext {
            user: "system".into(),
            impersonator: None,
            correlation_id: "startup".into(),
            causation_id: "startup".into(),
            at: chrono::Utc::now(),
        };
        let new = commands::identity::NewUser {
            username: app.username.clone(),
            firstname: "Application".into(),
            lastname: "Cohort".into(),
            email: None,
            password: None,
        };
        match identity
            .create_user(&ctx, &commands::identity::Requester::System, new)
            .await
        {
            Ok(_)
            | Err(commands::identity::IdentityError::User(
                domain::user::UserError::AlreadyExists,
            )) => {}
            Err(e) => anyhow::bail!("cannot create applicative user {}: {e}", app.username),
        }
    }
    Ok(())
}

/// The handlers' state over the runtime's services; creates the applicative users.
pub async fn app_state(settings: &Settings, services: &Services) -> anyhow::Result<AppState> {
    let applicative = applicative_tokens(&settings.identity);
    ensure_applicative_users(&services.identity, &applicative).await?;
    let username_regex = regex::Regex::new(&settings.identity.username_regex)
        .map_err(|e| anyhow::anyhow!("USERNAME_REGEX is not a valid pattern: {e}"))?;
    let s = services.clone();
    Ok(AppState::new(HandlerState {
        workspace: s.workspace,
        reader: s.workspace_reader,
        jwt: Arc::new(jwt_keys(settings)?),
        readiness: s.readiness,
        identity: s.identity_reader,
        identity_service: s.identity,
        access: s.access,
        applicative: Arc::new(applicative),
        settings: Arc::new(EdgeSettings {
            access_ttl_seconds: settings.identity.access_ttl_seconds,
            refresh_ttl_seconds: settings.identity.refresh_ttl_seconds,
            access_expiry_first_alert_days: settings.identity.access_expiry_first_alert_days,
            cohort_size_limit: settings.cohorts.cohort_size_limit,
            last_count_validity_hours: settings.cohorts.last_count_validity_hours,
            frontend_url: settings.cohorts.frontend_url.clone(),
        }),
        username_regex: Arc::new(username_regex),
        notifier: s.notifier,
        pushes: s.pushes,
        maintenance_gate: crate::maintenance_gate::MaintenanceGate::new(),
        audit: s.audit,
        audit_reads: s.audit_reads,
        providers: s.providers,
        mailer: s.mailer,
        cohorts: s.cohorts,
        schedules: s.schedules,
        feasibility: s.feasibility,
        exports: s.exports,
        export_reader: s.export_reader,
        fhir_filters: s.fhir_filters,
        cohort_reader: s.cohort_reader,
        pipeline: s.pipeline,
        contents: s.contents,
        content_reader: s.content_reader,
        small_cells: domain::small_cells::SmallCells::new(settings.cohorts.small_cell_threshold),
        read_rights: s.read_rights,
        clinical: s.clinical,
        terminology: s.terminology,
        request_logs: s.request_logs,
        idempotency: s.idempotency,
        metrics: crate::observability::recorder(),
        metrics_token: settings.metrics_token.clone(),
    }))
}

/// A built, bound application.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    pool: PgPool,
    tasks: JoinSet<()>,
    jwt: Arc<JwtKeys>,
    progress: Vec<tokio::sync::watch::Receiver<projections::Cursor>>,
    state: AppState,
    services: Services,
}

impl Application {
    /// Starts the [`Runtime`] and its background work, and binds the listener.
    pub async fn build(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let mut runtime = Runtime::start(settings, shutdown.clone()).await?;
        runtime.spawn_background_work(settings, &shutdown);
        let state = app_state(settings, &runtime.services).await?;
        let Runtime {
            services,
            pool,
            tasks,
            progress,
        } = runtime;
        let jwt = state.jwt.clone();
        let router = crate::routes::router(state.clone())
            .layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ))
            .layer(TraceLayer::new_for_http())
            .layer(axum::middleware::from_fn(crate::observability::trace_id));
        let listener = TcpListener::bind(settings.listen_addr).await?;
        Ok(Self {
            listener,
            router,
            pool,
            tasks,
            jwt,
            progress,
            state,
            services,
        })
    }

    /// The handlers' state (tests and operator commands drive services through it).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The runtime's services (tests and operator commands drive them directly).
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The keys that verify (and, for tests and benchmarks, mint) bearer tokens.
    pub fn jwt(&self) -> Arc<JwtKeys> {
        self.jwt.clone()
    }

    /// The progress of each projector of this process (benchmarks measure lag with it).
    pub fn progress(&self) -> Vec<tokio::sync::watch::Receiver<projections::Cursor>> {
        self.progress.clone()
    }

    /// The database pool.
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Serves until `shutdown` is cancelled, then waits for the background tasks.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "cohort360 listening");
        let stop = shutdown.clone();
        // Small responses go out at once, never behind Nagle's wait for an acknowledgement.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        axum::serve(listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.pool.close().await;
        tracing::info!("cohort360 stopped");
        Ok(())
    }
}
