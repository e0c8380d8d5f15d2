//! Wiring: the only module (with `main.rs`) that knows `infra`.
//!
//! [`Application::build`] prepares everything and binds the listener (port 0 allowed, which the
//! tests use); [`Application::run_until_stopped`] serves until the shutdown token is cancelled,
//! with the relay and the projectors running beside the HTTP server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commands::workspace::Workspace;
use infra::cohorts::reactions::{ExecutorReaction, JobNotifications, MailReaction, PublicEvents};
use infra::cohorts::{CohortsProjection, PgCohorts};
use infra::consistency::ProjectorConsistency;
use infra::identity::{IdentityProjection, PgIdentity};
use infra::nats::NatsSettings;
use infra::projector::{Projection, Projector, ProjectorSettings};
use infra::reactor::{Reaction, Reactor, ReactorSettings};
use infra::relay::{Relay, RelaySettings};
use infra::workspace::{PgWorkspace, WorkspaceProjection};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{ApplicativeToken, JwtKeys};
use crate::config::{IdentitySettings, Settings};
use crate::state::{AppState, Check, Readiness};

/// The projections this service maintains.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(WorkspaceProjection),
        Arc::new(IdentityProjection),
        Arc::new(CohortsProjection),
        Arc::new(infra::content::ContentProjection),
        Arc::new(infra::exports::ExportsProjection),
    ]
}

/// Results of the embedded executor, to apply as callbacks.
type Completions = tokio::sync::mpsc::UnboundedReceiver<commands::ports::JobCompletion>;

/// The executor counts and cohorts go to: the embedded one, with its results on the returned
/// channel, unless `QUERY_EXECUTOR_URL` names an external one.
fn query_executor(
    settings: &Settings,
    pool: &PgPool,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<(Arc<dyn commands::ports::QueryExecutor>, Option<Completions>)> {
    if !settings.cohorts.query_executor_url.trim().is_empty() {
        let http = infra::cohorts::executor::HttpQueryExecutor::new(
            &infra::cohorts::executor::ExecutorSettings {
                url: settings.cohorts.query_executor_url.clone(),
                timeout: Duration::from_secs(
                    settings.cohorts.query_executor_timeout_seconds.max(1),
                ),
                tls: outbound_tls(settings),
            },
        )?;
        return Ok((Arc::new(http), None));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let embedded = Arc::new(infra::clinical::EmbeddedExecutor::new(pool.clone(), tx));
    // Load the index in the background rather than on the first count (a million patients take
    // tens of seconds); counts submitted meanwhile wait for it.
    let loading = embedded.clone();
    tasks.spawn(async move {
        if let Err(e) = loading.index().await {
            tracing::warn!(error = %e, "the clinical index could not be loaded at start");
        }
    });
    Ok((embedded, Some(rx)))
}

/// The exporter: the upstream Export API (with the Hadoop API) when `EXPORT_API_URL` is set,
/// else the built-in one, which writes into `EXPORT_STORAGE_DIR`.
fn exporter(
    settings: &crate::config::ExportArgs,
    tls: &infra::tls::TlsSettings,
    pool: &PgPool,
) -> anyhow::Result<Arc<dyn commands::ports::Exporter>> {
    if settings.export_api_url.trim().is_empty() {
        return Ok(Arc::new(infra::exports::builtin::BuiltinExporter::new(
            pool.clone(),
            settings.storage_dir.clone().into(),
        )));
    }
    use infra::exports::export_api::{ExportApiExporter, ExportApiSettings};
    let http = infra::tls::http_client_builder(tls)?
        .timeout(Duration::from_secs(60))
        .build()?;
    Ok(Arc::new(ExportApiExporter::new(
        http,
        ExportApiSettings {
            export_api_url: settings.export_api_url.clone(),
            export_api_token: settings.export_api_token.clone().unwrap_or_default(),
            hadoop_api_url: settings.hadoop_api_url.clone(),
            hadoop_api_token: settings.hadoop_api_token.clone().unwrap_or_default(),
            hive_user: settings.hive_user.clone(),
            disable_terminology: settings.disable_data_translation,
            poll_interval: Duration::from_millis(settings.poll_ms.max(1)),
            http_timeout: Duration::from_secs(60),
            logs_timeout: Duration::from_secs(30),
        },
    )))
}

/// Where export files are read from and deleted: HDFS through WebHDFS when `WEBHDFS_URL` is set,
/// else `EXPORT_STORAGE_DIR`.
fn export_storage(
    settings: &crate::config::ExportArgs,
    tls: &infra::tls::TlsSettings,
) -> anyhow::Result<Arc<dyn commands::ports::ExportStorage>> {
    if settings.webhdfs_url.trim().is_empty() {
        return Ok(Arc::new(infra::exports::local_storage::LocalStorage::new(
            settings.storage_dir.clone().into(),
        )));
    }
    let http = infra::tls::http_client_builder(tls)?.build()?;
    let storage = infra::exports::webhdfs::WebHdfsStorage::new(
        http,
        &settings.webhdfs_url,
        settings.webhdfs_user.clone(),
    )
    .map_err(|e| anyhow::anyhow!("WEBHDFS_URL: {e}"))?;
    Ok(Arc::new(storage))
}

/// What outbound TLS (HTTP clients, SMTP) trusts beside the system's roots.
fn outbound_tls(settings: &Settings) -> infra::tls::TlsSettings {
    infra::tls::TlsSettings {
        ca_file: settings.tls_ca_file.clone(),
    }
}

/// NATS settings from the service settings.
pub fn nats_settings(settings: &Settings) -> NatsSettings {
    NatsSettings {
        url: settings.nats_url.clone(),
        subject_prefix: settings.nats_subject_prefix.clone(),
        stream: settings.nats_stream.clone(),
        security: infra::nats::NatsSecurity {
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
fn pool_limits(settings: &Settings) -> infra::db::PoolLimits {
    infra::db::PoolLimits {
        max_connections: settings.database_max_connections,
        acquire_timeout: Duration::from_millis(settings.database_acquire_timeout_ms.max(1)),
        statement_timeout: Duration::from_millis(settings.database_statement_timeout_ms),
    }
}

/// Creates the database if needed, connects and migrates.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<PgPool> {
    infra::db::ensure_database(&settings.database_url).await?;
    let pool = infra::db::connect(&settings.database_url, pool_limits(settings)).await?;
    infra::db::migrate(&pool).await?;
    Ok(pool)
}

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

/// OIDC providers and the identity service, from the settings.
fn identity_providers(
    identity: &IdentitySettings,
    tls: infra::tls::TlsSettings,
) -> anyhow::Result<infra::identity_providers::HttpIdentityProviders> {
    use infra::identity_providers::{IdentityServer, OidcProvider, ProvidersSettings};
    let settings = ProvidersSettings {
        oidc: identity
            .oidc_providers
            .iter()
            .map(|p| OidcProvider {
                issuer: p.issuer.clone(),
                client_id: p.client_id.clone(),
                client_secret: p.client_secret.clone(),
                redirect_uri: p.redirect_uri.clone(),
            })
            .collect(),
        extra_issuers: crate::config::comma_list(&identity.oidc_extra_server_urls),
        audiences: crate::config::comma_list(&identity.oidc_audience),
        identity_server: identity
            .identity_server_url
            .as_ref()
            .filter(|u| !u.is_empty())
            .map(|url| IdentityServer {
                url: url.clone(),
                key: identity
                    .identity_server_auth_token
                    .clone()
                    .unwrap_or_default(),
            }),
        timeout: Duration::from_secs(60),
        tls,
    };
    Ok(infra::identity_providers::HttpIdentityProviders::new(
        settings,
    )?)
}

/// The configured applicative tokens.
fn applicative_tokens(identity: &IdentitySettings) -> Vec<ApplicativeToken> {
    [
        (
            &identity.query_executor_token,
            &identity.query_executor_username,
        ),
        (&identity.solr_etl_token, &identity.solr_etl_username),
        (&identity.rollout_token, &identity.rollout_username),
    ]
    .into_iter()
    .filter_map(|(token, user)| {
        token
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|t| ApplicativeToken::new(user.clone(), t.clone()))
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

struct Probes {
    pool: PgPool,
    nats: async_nats::Client,
    monitor: infra::health::PipelineMonitor,
}

/// The pipeline's status from the checkpoints and this process's last errors.
struct Pipeline {
    pool: PgPool,
}

#[async_trait]
impl crate::state::PipelineAdmin for Pipeline {
    async fn status(&self) -> Result<serde_json::Value, String> {
        let names: Vec<&str> = projections().iter().map(|p| p.name()).collect();
        let status = infra::health::pipeline_status(&self.pool, &names)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::to_value(status).map_err(|e| e.to_string())
    }
}

/// How long `/health/ready` waits for Postgres before calling it unreachable.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[async_trait]
impl Readiness for Probes {
    async fn checks(&self) -> Vec<Check> {
        let pg = tokio::time::timeout(
            READY_PROBE_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool),
        )
        .await;
        let postgres = match pg {
            Ok(Ok(_)) => Ok("reachable".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                READY_PROBE_TIMEOUT.as_millis()
            )),
        };
        let nats_state = self.nats.connection_state();
        let nats_ok = matches!(nats_state, async_nats::connection::State::Connected);
        let nats_detail = if nats_ok {
            "connected".to_string()
        } else {
            format!(
                "{nats_state:?}: reconnecting in the background; writes are stored and \
                 projected from Postgres meanwhile"
            )
        };
        let pipeline = pipeline_check(&self.monitor);
        vec![
            Check {
                name: "postgres",
                ok: postgres.is_ok(),
                detail: postgres.unwrap_or_else(|e| e),
                critical: true,
            },
            Check {
                name: "nats",
                ok: nats_ok,
                detail: nats_detail,
                critical: false,
            },
            pipeline,
        ]
    }
}

/// The relay, projectors and reactors as the monitor last read them: degraded when one of them
/// lets events wait beyond the threshold (stalled or far behind), with the causes.
fn pipeline_check(monitor: &infra::health::PipelineMonitor) -> Check {
    let Some(reading) = monitor.last() else {
        return Check {
            name: "pipeline",
            ok: true,
            detail: "not read yet".into(),
            critical: false,
        };
    };
    let causes = reading.causes();
    let age = (chrono::Utc::now() - reading.read_at).num_seconds();
    let detail = if causes.is_empty() {
        format!(
            "relay, projectors and reactors keep up (read {age} s ago, threshold {} s)",
            monitor.threshold().as_secs()
        )
    } else {
        causes.join("; ")
    };
    Check {
        name: "pipeline",
        ok: causes.is_empty(),
        detail,
        critical: false,
    }
}

/// How long the start waits for NATS before going on without it.
const NATS_START_PATIENCE: Duration = Duration::from_secs(2);

/// Makes sure the events and public streams exist. When NATS answers at start, a failure is
/// fatal (JetStream disabled, a stream of another shape): the operator must fix it. When NATS
/// is away, the service starts degraded and a background task creates the streams once it
/// comes (the relay also recreates its stream before retrying a failed publish).
async fn start_streams(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    nats: &NatsSettings,
    public_root: &str,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connected = || {
        matches!(
            client.connection_state(),
            async_nats::connection::State::Connected
        )
    };
    let deadline = tokio::time::Instant::now() + NATS_START_PATIENCE;
    while !connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if connected() {
        ensure_streams(js, nats, public_root).await?;
        return Ok(());
    }
    tracing::warn!(
        url = %nats.url,
        "NATS does not answer: starting degraded (writes are stored and projected from \
         Postgres; events are published once NATS is back)"
    );
    let (js, nats, public_root, shutdown) = (
        js.clone(),
        nats.clone(),
        public_root.to_string(),
        shutdown.clone(),
    );
    tasks.spawn(async move {
        loop {
            match ensure_streams(&js, &nats, &public_root).await {
                Ok(()) => {
                    tracing::info!("NATS streams ready");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "NATS streams not ready yet"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    Ok(())
}

/// The events stream and the public events stream.
async fn ensure_streams(
    js: &async_nats::jetstream::Context,
    nats: &NatsSettings,
    public_root: &str,
) -> anyhow::Result<()> {
    infra::nats::ensure_stream(js, nats).await?;
    infra::cohorts::reactions::ensure_public_stream(js, &nats.stream, public_root)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the public events stream: {e}"))
}

/// Everything but the HTTP listener: database, NATS, relay, projectors, services.
pub struct Core {
    pub state: AppState,
    pub pool: PgPool,
    pub tasks: JoinSet<()>,
    pub progress: Vec<tokio::sync::watch::Receiver<projections::Cursor>>,
}

impl Core {
    /// Connects Postgres (creating and migrating the database) and NATS, starts the relay and
    /// the projectors, and builds the services. Command-line operations use this directly.
    pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let pool = prepare_database(settings).await?;
        let nats = nats_settings(settings);
        let public_root = format!("{}.public", settings.nats_subject_prefix);
        let client = infra::nats::connect(&nats).await?;
        let js = infra::nats::jetstream(client.clone());

        let mut tasks = JoinSet::new();
        start_streams(&client, &js, &nats, &public_root, &mut tasks, &shutdown).await?;
        let relay = Relay::new(
            pool.clone(),
            js.clone(),
            nats.clone(),
            RelaySettings::default(),
        );
        tasks.spawn(relay.run(shutdown.clone()));
        let monitor = infra::health::PipelineMonitor::new(settings.pipeline_stall_threshold());
        tasks.spawn(monitor.clone().run(
            pool.clone(),
            projections().iter().map(|p| p.name()).collect(),
            settings.pipeline_check_interval(),
            shutdown.clone(),
        ));

        let mut progress = Vec::new();
        let mut followed = Vec::new();
        let mut cohorts_progress = None;
        let mut exports_progress = None;
        for projection in projections() {
            let projector = Projector::new(
                pool.clone(),
                projection.clone(),
                ProjectorSettings {
                    poll_interval: settings.projector_poll_interval(),
                },
            );
            progress.push(projector.progress());
            if projection.name() == projections::cohorts::PROJECTION {
                cohorts_progress = Some(projector.progress());
            }
            if projection.name() == projections::exports::PROJECTION {
                exports_progress = Some(projector.progress());
            }
            followed.push((projection, projector.progress()));
            tasks.spawn(projector.run(Some(js.clone()), nats.clone(), shutdown.clone()));
        }

        let reader = Arc::new(PgWorkspace::new(pool.clone()));
        let consistency = Arc::new(ProjectorConsistency::new(
            pool.clone(),
            followed,
            settings.read_your_writes_timeout(),
        ));
        let workspace = Workspace::new(
            infra::stores::folders(&pool),
            infra::stores::requests(&pool),
            reader.clone(),
            consistency.clone(),
        );
        let jwt = Arc::new(jwt_keys(settings)?);
        let identity_reader = Arc::new(PgIdentity::new(pool.clone()));
        let providers = Arc::new(identity_providers(
            &settings.identity,
            outbound_tls(settings),
        )?);
        let identity = Arc::new(
            commands::identity::Identity::new(
                infra::stores::identity(&pool),
                identity_reader.clone(),
                consistency.clone(),
                providers.clone(),
                settings.identity.default_access_validity_days,
            )
            .with_token_check_cache(Duration::from_millis(
                settings.identity.token_check_cache_ms,
            )),
        );
        let applicative = applicative_tokens(&settings.identity);
        ensure_applicative_users(&identity, &applicative).await?;
        let username_regex = regex::Regex::new(&settings.identity.username_regex)
            .map_err(|e| anyhow::anyhow!("USERNAME_REGEX is not a valid pattern: {e}"))?;
        let hub = crate::ws::Hub::over_nats(
            client.clone(),
            format!("{}.ws.push", settings.nats_subject_prefix),
        );
        tasks.spawn(hub.clone().forward_from_nats(shutdown.clone()));

        let smtp = &settings.identity.smtp;
        let mailer: Arc<dyn commands::ports::Mailer> =
            Arc::new(infra::mail::SmtpMailer::new(&infra::mail::SmtpSettings {
                host: smtp.smtp_host.clone(),
                port: smtp.smtp_port,
                username: smtp.smtp_username.clone(),
                password: smtp.smtp_password.clone(),
                sender: smtp.email_sender_address.clone(),
                timeout: Duration::from_secs(30),
                security: match smtp.smtp_security {
                    crate::config::SmtpSecurityArg::None => infra::mail::SmtpSecurity::None,
                    crate::config::SmtpSecurityArg::Starttls => infra::mail::SmtpSecurity::StartTls,
                    crate::config::SmtpSecurityArg::Tls => infra::mail::SmtpSecurity::Tls,
                },
                tls: outbound_tls(settings),
            })?);
        let cohort_reader = Arc::new(PgCohorts::new(pool.clone()));
        let read_rights: Arc<dyn commands::ports::PatientReadRights> = Arc::new(
            crate::small_cells::IdentityReadRights(identity_reader.clone()),
        );
        let (executor, completions) = query_executor(settings, &pool, &mut tasks)?;
        let feasibility = Arc::new(commands::feasibility::Feasibility::new(
            commands::feasibility::FeasibilityPorts {
                studies: infra::stores::feasibility_studies(&pool),
                requests: infra::stores::requests(&pool),
                workspace: reader.clone(),
                directory: cohort_reader.clone(),
                perimeters: cohort_reader.clone(),
                executor: executor.clone(),
                consistency: consistency.clone(),
            },
            crate::config::comma_list(&settings.cohorts.reporting_perimeter_types),
        ));
        let cohorts = Arc::new(
            commands::cohorts::Cohorts::new(
                infra::stores::cohorts(&pool),
                reader.clone(),
                cohort_reader.clone(),
                executor,
                consistency.clone(),
                commands::cohorts::CohortSettings {
                    size_limit: settings.cohorts.cohort_size_limit,
                },
            )
            .with_small_cells(
                domain::small_cells::SmallCells::new(settings.cohorts.small_cell_threshold),
                read_rights.clone(),
            ),
        );
        if let Some(completions) = completions {
            tasks.spawn(crate::embedded::deliver_completions(
                completions,
                cohorts.clone(),
                feasibility.clone(),
                settings.identity.query_executor_username.clone(),
                shutdown.clone(),
            ));
        }
        let cohorts_read_model = vec![(
            projections::cohorts::PROJECTION,
            cohorts_progress.ok_or_else(|| anyhow::anyhow!("the cohorts projector is missing"))?,
        )];
        let mut reactions: Vec<(Arc<dyn Reaction>, _)> = vec![
            // Reads the cohorts read model (older counts of the same request).
            (
                Arc::new(ExecutorReaction {
                    cohorts: cohorts.clone(),
                    feasibility: feasibility.clone(),
                }),
                cohorts_read_model.clone(),
            ),
            // The front-end reads the count or cohort when told: the read model first.
            (
                Arc::new(JobNotifications {
                    cohorts: cohorts.clone(),
                    notifier: Arc::new(hub.clone()),
                }),
                cohorts_read_model.clone(),
            ),
            (
                Arc::new(PublicEvents {
                    cohorts: cohorts.clone(),
                    js: js.clone(),
                    subject_root: public_root,
                }),
                vec![],
            ),
        ];
        let schedules = Arc::new(commands::refresh::Schedules::new(
            commands::refresh::SchedulePorts {
                schedules: infra::stores::refresh_schedules(&pool),
                counts: infra::stores::counts(&pool),
                requests: infra::stores::requests(&pool),
                workspace: reader.clone(),
                directory: cohort_reader.clone(),
                consistency: consistency.clone(),
            },
        ));
        let mails = Arc::new(commands::mails::Mails::new(
            infra::stores::mail_deliveries(&pool),
            infra::stores::users(&pool),
            mailer.clone(),
            settings.cohorts.frontend_url.clone(),
        ));
        let export_reader = Arc::new(infra::exports::PgExports::new(pool.clone()));
        let exports = Arc::new(commands::exports::Exports::new(
            commands::exports::ExportPorts {
                exports: infra::stores::exports(&pool),
                datalabs: infra::stores::datalabs(&pool),
                providers: infra::stores::infrastructure_providers(&pool),
                filters: infra::stores::fhir_filters(&pool),
                cohorts: cohorts.clone(),
                rights: Arc::new(crate::export_rights::IdentityExportRights(
                    identity_reader.clone(),
                )),
                directory: export_reader.clone(),
                exporter: exporter(&settings.exports, &outbound_tls(settings), &pool)?,
                storage: export_storage(&settings.exports, &outbound_tls(settings))?,
                mails: mails.clone(),
                consistency: consistency.clone(),
            },
            commands::exports::ExportSettings {
                keep_days: settings.exports.keep_days,
                csv_path: settings.exports.csv_path.clone(),
                xlsx_path: settings.exports.xlsx_path.clone(),
                hive_path: settings.exports.hive_path.clone(),
                admins: crate::config::comma_list(&settings.exports.admins),
                max_poll_errors: 5,
            },
        ));
        let exports_read_model = vec![(
            projections::exports::PROJECTION,
            exports_progress.ok_or_else(|| anyhow::anyhow!("the exports projector is missing"))?,
        )];
        reactions.push((
            Arc::new(infra::exports::reactions::ExportReaction {
                exports: exports.clone(),
            }),
            exports_read_model.clone(),
        ));
        reactions.push((
            Arc::new(infra::exports::reactions::ExportMails {
                exports: exports.clone(),
            }),
            exports_read_model,
        ));
        reactions.push((
            Arc::new(MailReaction {
                mails,
                cohorts: cohorts.clone(),
                feasibility: feasibility.clone(),
                schedules: schedules.clone(),
                requests: infra::stores::requests(&pool),
            }),
            vec![],
        ));
        for (reaction, after) in reactions {
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
            tasks.spawn(reactor.run(Some(js.clone()), nats.clone(), shutdown.clone()));
        }

        let (request_logs, request_log_queue) =
            infra::request_logs::PgRequestLogs::new(pool.clone());
        tasks.spawn(infra::request_logs::run_writer(
            pool.clone(),
            request_log_queue,
            chrono::Duration::days(settings.request_log_retention_days),
            shutdown.clone(),
        ));
        tasks.spawn(infra::idempotency::run_purger(
            pool.clone(),
            Duration::from_secs(settings.idempotency_key_retention_hours.max(24) * 3600),
            shutdown.clone(),
        ));
        let state = AppState {
            workspace: Arc::new(workspace),
            reader,
            jwt,
            readiness: Arc::new(Probes {
                pool: pool.clone(),
                nats: client,
                monitor: monitor.clone(),
            }),
            identity: identity_reader,
            identity_service: identity,
            applicative: Arc::new(applicative),
            identity_settings: Arc::new(settings.identity.clone()),
            username_regex: Arc::new(username_regex),
            hub,
            maintenance_gate: crate::routes::maintenances::MaintenanceGate::new(),
            audit: Arc::new(infra::audit::PgAudit::new(pool.clone())),
            audit_reads: infra::stores::audit_reads(&pool),
            providers,
            mailer,
            cohorts,
            schedules,
            feasibility,
            exports,
            export_reader,
            fhir_filters: Arc::new(commands::fhir_filters::FhirFilters::new(
                infra::stores::fhir_filters(&pool),
                cohort_reader.clone(),
                consistency.clone(),
            )),
            cohort_reader,
            cohort_settings: Arc::new(settings.cohorts.clone()),
            pipeline: Arc::new(Pipeline { pool: pool.clone() }),
            contents: Arc::new(commands::content::Contents::new(
                infra::stores::web_contents(&pool),
                infra::stores::release_notes(&pool),
                Arc::new(infra::content::PgContent::new(pool.clone())),
                consistency.clone(),
            )),
            content_reader: Arc::new(infra::content::PgContent::new(pool.clone())),
            clinical: Arc::new(infra::clinical::fhir::PgClinical::new(pool.clone())),
            small_cells: domain::small_cells::SmallCells::new(
                settings.cohorts.small_cell_threshold,
            ),
            read_rights,
            request_logs: Arc::new(request_logs),
            idempotency: Arc::new(infra::idempotency::PgIdempotencyKeys::new(pool.clone())),
            metrics: crate::observability::recorder(),
            metrics_token: settings.metrics_token.clone(),
        };
        Ok(Self {
            state,
            pool,
            tasks,
            progress,
        })
    }

    /// Stops the background tasks and closes the pool.
    pub async fn stop(mut self, shutdown: CancellationToken) {
        shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.pool.close().await;
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
    state: AppState,
}

impl Application {
    /// Starts the [`Core`], the maintenance announcer, and binds the listener.
    pub async fn build(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let Core {
            state,
            pool,
            mut tasks,
            progress,
        } = Core::start(settings, shutdown.clone()).await?;
        tasks.spawn(crate::routes::maintenances::announce_transitions(
            state.clone(),
            shutdown.clone(),
        ));
        if settings.identity.enable_access_expiry_alerts {
            tasks.spawn(crate::scheduler::expiry_alerts(
                state.clone(),
                shutdown.clone(),
            ));
        } else {
            tracing::info!("access-expiry e-mails are disabled (ENABLE_ACCESS_EXPIRY_ALERTS)");
        }
        if settings.cohorts.refresh_check_seconds > 0 {
            tasks.spawn(crate::scheduler::refresh_counts(
                state.clone(),
                shutdown.clone(),
            ));
        }
        if settings.cohorts.reconcile_every_seconds > 0 {
            tasks.spawn(crate::scheduler::reconcile_jobs(
                state.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(crate::scheduler::poll_exports(
            state.clone(),
            Duration::from_millis(settings.exports.poll_ms.max(1)),
            shutdown.clone(),
        ));
        if settings.exports.clean_every_seconds > 0 {
            tasks.spawn(crate::scheduler::clean_exports(
                state.clone(),
                Duration::from_secs(settings.exports.clean_every_seconds),
                shutdown.clone(),
            ));
        }
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
        })
    }

    /// The handlers' state (tests and operator commands drive services through it).
    pub fn state(&self) -> AppState {
        self.state.clone()
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
