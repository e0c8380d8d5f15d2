//! The composition root: connects Postgres and NATS, starts the relay, the projectors and the
//! reactors, builds every context's services ([`contexts`]) and runs the background work (the
//! schedulers, the embedded executor's deliveries, the websocket fan-out, the maintenance
//! announcer). The HTTP edge (`api`) receives the [`Services`] and serves them; command-line
//! operations ([`operations`]) drive them directly.

pub mod config;
pub mod contexts;
pub mod embedded;
pub mod hub;
pub mod maintenance_announcer;
pub mod operations;
pub mod probes;
pub mod schedulers;
pub mod streams;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use commands::ports::{Consistency, Notifier, PushFeed};
use projections::Cursor;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::config::Settings;
use self::contexts::{ProgressByName, Shared, projections};
use crate::consistency::ProjectorConsistency;
use crate::live_feed::LiveFeed;
use crate::nats::NatsSettings;
use crate::projector::{Projector, ProjectorSettings};
use crate::reactor::{Reactor, ReactorSettings};
use crate::relay::{Relay, RelaySettings};

/// Every service and reader the HTTP edge and the operator commands use.
#[derive(Clone)]
pub struct Services {
    pub workspace: Arc<commands::workspace::Workspace>,
    pub workspace_reader: Arc<dyn projections::workspace::WorkspaceReader>,
    pub identity: Arc<commands::identity::Identity>,
    pub identity_reader: Arc<dyn projections::identity::IdentityReader>,
    pub access: commands::authz::AccessControl,
    pub providers: Arc<dyn commands::ports::IdentityProviders>,
    pub mailer: Arc<dyn commands::ports::Mailer>,
    pub cohorts: Arc<commands::cohorts::Cohorts>,
    pub cohort_reader: Arc<dyn projections::cohorts::CohortReader>,
    pub feasibility: Arc<commands::feasibility::Feasibility>,
    pub schedules: Arc<commands::refresh::Schedules>,
    pub read_rights: Arc<dyn commands::ports::PatientReadRights>,
    pub exports: Arc<commands::exports::Exports>,
    pub export_reader: Arc<dyn projections::exports::ExportReader>,
    pub fhir_filters: Arc<commands::fhir_filters::FhirFilters>,
    pub contents: Arc<commands::content::Contents>,
    pub content_reader: Arc<dyn projections::content::ContentReader>,
    pub clinical: Arc<dyn projections::clinical::ClinicalReader>,
    pub terminology: Arc<dyn projections::terminology::TerminologyReader>,
    pub audit: Arc<dyn projections::audit::AuditReader>,
    pub audit_reads: Arc<dyn commands::Execute<domain::audit_read::AuditRead>>,
    pub request_logs: Arc<dyn projections::request_logs::RequestLogs>,
    pub idempotency: Arc<dyn projections::idempotency::IdempotencyKeys>,
    /// Pushes to websocket sessions (on every instance).
    pub notifier: Arc<dyn Notifier>,
    /// The pushes this instance's sockets receive.
    pub pushes: Arc<dyn PushFeed>,
    pub readiness: Arc<dyn projections::health::Readiness>,
    pub pipeline: Arc<dyn projections::health::PipelineAdmin>,
}

/// The running service minus its HTTP listener.
pub struct Runtime {
    pub services: Services,
    pub pool: PgPool,
    pub tasks: JoinSet<()>,
    /// Each projector's progress (benchmarks measure lag with it).
    pub progress: Vec<watch::Receiver<Cursor>>,
}

/// NATS settings from the service settings.
pub fn nats_settings(settings: &Settings) -> NatsSettings {
    NatsSettings {
        url: settings.nats_url.clone(),
        subject_prefix: settings.nats_subject_prefix.clone(),
        stream: settings.nats_stream.clone(),
        security: crate::nats::NatsSecurity {
            require_tls: settings.nats_tls.nats_require_tls,
            ca_file: settings.nats_tls.nats_tls_ca_file.clone(),
            client_cert: settings
                .nats_tls
                .nats_tls_cert_file
                .clone()
                .zip(settings.nats_tls.nats_tls_key_file.clone()),
            credentials_file: settings.nats_tls.nats_credentials_file.clone(),
        },
    }
}

/// The Postgres pool's size and timeouts.
fn pool_limits(settings: &Settings) -> crate::db::PoolLimits {
    crate::db::PoolLimits {
        max_connections: settings.database_max_connections,
        acquire_timeout: Duration::from_millis(settings.database_acquire_timeout_ms.max(1)),
        statement_timeout: Duration::from_millis(settings.database_statement_timeout_ms),
    }
}

/// Creates the database if needed, connects and migrates.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<PgPool> {
    crate::db::ensure_database(&settings.database_url).await?;
    let pool = crate::db::connect(&settings.database_url, pool_limits(settings)).await?;
    crate::db::migrate(&pool).await?;
    Ok(pool)
}

impl Runtime {
    /// Connects Postgres (creating and migrating the database) and NATS, starts the relay, the
    /// projectors and the reactors, and builds the services. Command-line operations use this
    /// alone; the server also runs [`Runtime::spawn_background_work`].
    pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let pool = prepare_database(settings).await?;
        let nats = nats_settings(settings);
        let public_root = format!("{}.public", settings.nats_subject_prefix);
        let client = crate::nats::connect(&nats).await?;
        let js = crate::nats::jetstream(client.clone());

        let mut tasks = JoinSet::new();
        streams::start_streams(&client, &js, &nats, &public_root, &mut tasks, &shutdown).await?;
        let relay = Relay::new(
            pool.clone(),
            js.clone(),
            nats.clone(),
            RelaySettings::default(),
        );
        tasks.spawn(relay.run(shutdown.clone()));
        let monitor = crate::health::PipelineMonitor::new(settings.pipeline_stall_threshold());
        tasks.spawn(monitor.clone().run(
            pool.clone(),
            projections().iter().map(|p| p.name()).collect(),
            settings.pipeline_check_interval(),
            shutdown.clone(),
        ));

        // One JetStream consumer for the whole process, which every projector and reactor follows.
        let feed = LiveFeed::default();
        tasks.spawn(feed.clone().run(js.clone(), nats.clone(), shutdown.clone()));
        let mut progress = ProgressByName::new();
        let mut followed = Vec::new();
        for projection in projections() {
            let projector = Projector::new(
                pool.clone(),
                projection.clone(),
                ProjectorSettings {
                    poll_interval: settings.projector_poll_interval(),
                },
            );
            progress.insert(projection.name(), projector.progress());
            followed.push(projector.handle());
            tasks.spawn(projector.run(Some(feed.clone()), shutdown.clone()));
        }
        let consistency: Arc<dyn Consistency> = Arc::new(ProjectorConsistency::new(
            pool.clone(),
            followed,
            settings.read_your_writes_timeout(),
        ));
        let shared = Shared {
            pool: pool.clone(),
            requests: crate::stores::requests(&pool),
            consistency,
            progress,
            tls: crate::tls::TlsSettings {
                ca_file: settings.tls_ca_file.clone(),
            },
        };

        let hub = hub::Hub::over_nats(
            client.clone(),
            format!("{}.ws.push", settings.nats_subject_prefix),
        );
        tasks.spawn(hub.clone().forward_from_nats(shutdown.clone()));
        let notifier: Arc<dyn Notifier> = Arc::new(hub.clone());

        let workspace = contexts::workspace(&shared);
        let identity = contexts::identity(settings, &shared)?;
        let cohorts = contexts::cohorts(
            settings,
            &shared,
            &workspace,
            &identity,
            notifier.clone(),
            contexts::PublicSubjects {
                js: js.clone(),
                root: public_root,
            },
            &mut tasks,
        )?;
        let exports = contexts::exports(settings, &shared, &identity, &cohorts)?;
        let content = contexts::content(&shared, &identity);
        let clinical = contexts::clinical(&shared, cohorts.embedded.clone()).await?;

        if let Some(completions) = cohorts.completions {
            tasks.spawn(embedded::deliver_completions(
                completions,
                cohorts.cohorts.clone(),
                cohorts.feasibility.clone(),
                settings.identity.query_executor_username.clone(),
                shutdown.clone(),
            ));
        }
        let mut reaction_names = Vec::new();
        for (reaction, after) in cohorts.reactions.into_iter().chain(exports.reactions) {
            reaction_names.push(reaction.name());
            let reactor = Reactor::new(
                pool.clone(),
                reaction,
                ReactorSettings {
                    poll_interval: settings.projector_poll_interval(),
                    after,
                    wait_for_projections: settings.read_your_writes_timeout(),
                },
            );
            reactor.start().await?;
            tasks.spawn(reactor.run(Some(feed.clone()), shutdown.clone()));
        }
        let legacy = crate::live_feed::legacy_durable_names(
            &nats.stream,
            &projections().iter().map(|p| p.name()).collect::<Vec<_>>(),
            &reaction_names,
        );
        tasks.spawn({
            let (js, nats) = (js.clone(), nats.clone());
            async move { crate::live_feed::retire_durable_consumers(&js, &nats, &legacy).await }
        });

        let (request_logs, request_log_queue) =
            crate::request_logs::PgRequestLogs::new(pool.clone());
        tasks.spawn(crate::request_logs::run_writer(
            pool.clone(),
            request_log_queue,
            chrono::Duration::days(settings.request_log_retention_days),
            shutdown.clone(),
        ));
        tasks.spawn(crate::idempotency::run_purger(
            pool.clone(),
            Duration::from_secs(settings.idempotency_key_retention_hours.max(24) * 3600),
            shutdown.clone(),
        ));
        let progress = shared.progress.values().cloned().collect();
        let services = Services {
            workspace: workspace.service,
            workspace_reader: workspace.reader,
            identity: identity.service,
            identity_reader: identity.reader,
            access: identity.access,
            providers: identity.providers,
            mailer: identity.mailer,
            cohorts: cohorts.cohorts,
            cohort_reader: cohorts.reader,
            feasibility: cohorts.feasibility,
            schedules: cohorts.schedules,
            read_rights: cohorts.read_rights,
            exports: exports.exports,
            export_reader: exports.reader,
            fhir_filters: exports.fhir_filters,
            contents: content.service,
            content_reader: content.reader,
            clinical: clinical.reader,
            terminology: clinical.terminology,
            audit: Arc::new(crate::audit::PgAudit::new(pool.clone())),
            audit_reads: crate::stores::audit_reads(&pool),
            request_logs: Arc::new(request_logs),
            idempotency: Arc::new(crate::idempotency::PgIdempotencyKeys::new(pool.clone())),
            notifier,
            pushes: Arc::new(hub),
            readiness: Arc::new(probes::Probes {
                pool: pool.clone(),
                nats: client,
                monitor,
            }),
            pipeline: Arc::new(probes::Pipeline { pool: pool.clone() }),
        };
        Ok(Self {
            services,
            pool,
            tasks,
            progress,
        })
    }

    /// The server's background work: the maintenance announcer and the schedulers (access
    /// expiry e-mails, refresh schedules, job reconciliation, export polling and cleaning).
    pub fn spawn_background_work(&mut self, settings: &Settings, shutdown: &CancellationToken) {
        let s = &self.services;
        self.tasks
            .spawn(maintenance_announcer::announce_transitions(
                s.identity_reader.clone(),
                s.notifier.clone(),
                shutdown.clone(),
            ));
        schedulers::spawn(&mut self.tasks, s, settings, shutdown);
    }

    /// Stops the background tasks and closes the pool.
    pub async fn stop(mut self, shutdown: CancellationToken) {
        shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.pool.close().await;
    }
}
