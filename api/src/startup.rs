//! Wiring: the only module (with `main.rs`) that knows `infra`.
//!
//! [`Application::build`] prepares everything and binds the listener (port 0 allowed, which the
//! tests use); [`Application::run_until_stopped`] serves until the shutdown token is cancelled,
//! with the relay and the projectors running beside the HTTP server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commands::workspace::Workspace;
use infra::consistency::ProjectorConsistency;
use infra::nats::NatsSettings;
use infra::projector::{Projection, Projector, ProjectorSettings};
use infra::relay::{Relay, RelaySettings};
use infra::workspace::{PgWorkspace, WorkspaceProjection};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::state::{AppState, Check, Readiness};

/// The projections this service maintains.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(WorkspaceProjection)]
}

/// NATS settings from the service settings.
pub fn nats_settings(settings: &Settings) -> NatsSettings {
    NatsSettings {
        url: settings.nats_url.clone(),
        subject_prefix: settings.nats_subject_prefix.clone(),
        stream: settings.nats_stream.clone(),
    }
}

/// Creates the database if needed, connects and migrates.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<PgPool> {
    infra::db::ensure_database(&settings.database_url).await?;
    let pool =
        infra::db::connect(&settings.database_url, settings.database_max_connections).await?;
    infra::db::migrate(&pool).await?;
    Ok(pool)
}

/// The signing key: configured, or random with a loud warning.
fn jwt_keys(settings: &Settings) -> JwtKeys {
    match &settings.jwt_signing_key {
        Some(key) if !key.is_empty() => JwtKeys::hs256(key.as_bytes()),
        _ => {
            tracing::warn!(
                "JWT_SIGNING_KEY is not set: using a random key. Tokens will not survive a restart \
                 and no other instance can verify them. Set JWT_SIGNING_KEY in any real deployment."
            );
            let key: [u8; 32] = rand::random();
            JwtKeys::hs256(&key)
        }
    }
}

struct Probes {
    pool: PgPool,
    nats: async_nats::Client,
}

#[async_trait]
impl Readiness for Probes {
    async fn checks(&self) -> Vec<Check> {
        let pg = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await;
        let nats_state = self.nats.connection_state();
        let nats_ok = matches!(nats_state, async_nats::connection::State::Connected);
        let relay = match infra::relay::checkpoint(&self.pool, &RelaySettings::default().name).await
        {
            Ok(cp) => infra::log::count_after(&self.pool, cp)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        vec![
            Check {
                name: "postgres",
                ok: pg.is_ok(),
                detail: pg.map_or_else(|e| e.to_string(), |_| "reachable".into()),
            },
            Check {
                name: "nats",
                ok: nats_ok,
                detail: format!("{nats_state:?}"),
            },
            Check {
                name: "relay",
                // Lag is reported, not judged: a backlog drains once NATS is back.
                ok: relay.is_ok(),
                detail: relay.map_or_else(|e| e, |lag| format!("{lag} events not yet published")),
            },
        ]
    }
}

/// A built, bound application.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    pool: PgPool,
    tasks: JoinSet<()>,
    jwt: Arc<JwtKeys>,
    progress: Vec<tokio::sync::watch::Receiver<projections::Cursor>>,
}

impl Application {
    /// Connects Postgres (creating and migrating the database) and NATS, starts the relay and
    /// the projectors, and binds the listener.
    pub async fn build(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let pool = prepare_database(settings).await?;
        let nats = nats_settings(settings);
        let client = infra::nats::connect(&nats).await?;
        let js = infra::nats::ensure_stream(client.clone(), &nats).await?;

        let mut tasks = JoinSet::new();
        let relay = Relay::new(
            pool.clone(),
            js.clone(),
            nats.clone(),
            RelaySettings::default(),
        );
        tasks.spawn(relay.run(shutdown.clone()));

        let mut progress = Vec::new();
        for projection in projections() {
            let projector = Projector::new(
                pool.clone(),
                projection,
                ProjectorSettings {
                    poll_interval: settings.projector_poll_interval(),
                },
            );
            progress.push(projector.progress());
            tasks.spawn(projector.run(Some(js.clone()), nats.clone(), shutdown.clone()));
        }

        let reader = Arc::new(PgWorkspace::new(pool.clone()));
        let consistency = Arc::new(ProjectorConsistency::new(
            pool.clone(),
            progress.clone(),
            settings.read_your_writes_timeout(),
        ));
        let workspace = Workspace::new(
            infra::stores::folders(&pool),
            infra::stores::requests(&pool),
            reader.clone(),
            consistency,
        );
        let jwt = Arc::new(jwt_keys(settings));
        let state = AppState {
            workspace: Arc::new(workspace),
            reader,
            jwt: jwt.clone(),
            readiness: Arc::new(Probes {
                pool: pool.clone(),
                nats: client,
            }),
        };
        let router = crate::routes::router(state)
            .layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ))
            .layer(TraceLayer::new_for_http());
        let listener = TcpListener::bind(settings.listen_addr).await?;
        Ok(Self {
            listener,
            router,
            pool,
            tasks,
            jwt,
            progress,
        })
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
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.pool.close().await;
        tracing::info!("cohort360 stopped");
        Ok(())
    }
}
