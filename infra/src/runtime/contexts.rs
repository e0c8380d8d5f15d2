//! One builder per bounded context: each returns its service(s), its reader and the reactions
//! that follow its events. The projections are listed in [`projections()`]; they start before the
//! services, which wait on them for read-your-writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use commands::ports::{Consistency, Notifier, PatientReadRights};
use projections::Cursor;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::{self, ExportArgs, IdentitySettings, Settings, SmtpSecurityArg};
use crate::cohorts::reactions::{ExecutorReaction, JobNotifications, MailReaction, PublicEvents};
use crate::cohorts::{CohortsProjection, PgCohorts};
use crate::identity::{IdentityProjection, PgIdentity};
use crate::projector::Projection;
use crate::reactor::Reaction;
use crate::tls::TlsSettings;
use crate::workspace::{PgWorkspace, WorkspaceProjection};

/// The projections this service maintains: workspace, identity, cohorts, content, exports.
/// (The audit, clinical, request-log and idempotency stores are not folded from events.)
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(WorkspaceProjection),
        Arc::new(IdentityProjection),
        Arc::new(CohortsProjection),
        Arc::new(crate::content::ContentProjection),
        Arc::new(crate::exports::ExportsProjection),
    ]
}

/// Where each projector of this process stands, by projection name.
pub type ProgressByName = BTreeMap<&'static str, watch::Receiver<Cursor>>;

/// A reaction and the read models it waits for before it acts.
pub type Reacting = (
    Arc<dyn Reaction>,
    Vec<(&'static str, watch::Receiver<Cursor>)>,
);

/// What every context is built on.
pub struct Shared {
    pub pool: PgPool,
    /// The one command bus of requests: the requests it holds in memory
    /// ([`crate::aggregate_cache`]) serve every context.
    pub requests: Arc<dyn commands::Execute<domain::request::Request>>,
    pub consistency: Arc<dyn Consistency>,
    pub progress: ProgressByName,
    /// What outbound TLS (HTTP clients, SMTP) trusts beside the system's roots.
    pub tls: TlsSettings,
}

impl Shared {
    /// The progress of projection `name`, for reactions that read its read model.
    fn after(
        &self,
        name: &'static str,
    ) -> anyhow::Result<Vec<(&'static str, watch::Receiver<Cursor>)>> {
        let progress = self
            .progress
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("the {name} projector is missing"))?;
        Ok(vec![(name, progress)])
    }
}

/// Folders and requests.
pub struct WorkspaceContext {
    pub service: Arc<commands::workspace::Workspace>,
    pub reader: Arc<PgWorkspace>,
}

pub fn workspace(shared: &Shared) -> WorkspaceContext {
    let reader = Arc::new(PgWorkspace::new(shared.pool.clone()));
    let service = commands::workspace::Workspace::new(
        crate::stores::folders(&shared.pool),
        shared.requests.clone(),
        reader.clone(),
        shared.consistency.clone(),
    );
    WorkspaceContext {
        service: Arc::new(service),
        reader,
    }
}

/// Users, roles, perimeters, accesses, maintenance; the providers and the mailer they use.
pub struct IdentityContext {
    pub service: Arc<commands::identity::Identity>,
    pub reader: Arc<PgIdentity>,
    pub providers: Arc<crate::identity_providers::HttpIdentityProviders>,
    pub mailer: Arc<dyn commands::ports::Mailer>,
    pub access: commands::authz::AccessControl,
}

pub fn identity(settings: &Settings, shared: &Shared) -> anyhow::Result<IdentityContext> {
    let reader = Arc::new(PgIdentity::new(shared.pool.clone()));
    let providers = Arc::new(identity_providers(&settings.identity, shared.tls.clone())?);
    let service = commands::identity::Identity::new(
        crate::stores::identity(&shared.pool),
        reader.clone(),
        shared.consistency.clone(),
        providers.clone(),
        settings.identity.default_access_validity_days,
    )
    .with_token_check_cache(Duration::from_millis(
        settings.identity.token_check_cache_ms,
    ));
    Ok(IdentityContext {
        service: Arc::new(service),
        access: commands::authz::AccessControl::new(Arc::new(
            crate::identity::IdentityAuthorities(reader.clone()),
        )),
        reader,
        providers,
        mailer: mailer(settings, shared)?,
    })
}

/// Counts, cohorts, feasibility studies, refresh schedules and the mails they send.
pub struct CohortsContext {
    pub cohorts: Arc<commands::cohorts::Cohorts>,
    pub feasibility: Arc<commands::feasibility::Feasibility>,
    pub schedules: Arc<commands::refresh::Schedules>,
    pub mails: Arc<commands::mails::Mails>,
    pub reader: Arc<PgCohorts>,
    pub read_rights: Arc<dyn PatientReadRights>,
    /// Results of the embedded executor, to deliver as its callbacks would be.
    pub completions: Option<Completions>,
    /// The embedded executor (its index also answers the FHIR dashboards), when it is the one.
    pub embedded: Option<Arc<crate::clinical::EmbeddedExecutor>>,
    pub reactions: Vec<Reacting>,
}

/// Where the public NATS events (`<prefix>.public.…`) are published.
pub struct PublicSubjects {
    pub js: async_nats::jetstream::Context,
    pub root: String,
}

/// The cohorts context.
pub fn cohorts(
    settings: &Settings,
    shared: &Shared,
    workspace: &WorkspaceContext,
    identity: &IdentityContext,
    notifier: Arc<dyn Notifier>,
    public: PublicSubjects,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<CohortsContext> {
    let pool = &shared.pool;
    let reader = Arc::new(PgCohorts::new(pool.clone()));
    let read_rights: Arc<dyn PatientReadRights> =
        Arc::new(crate::identity::IdentityReadRights(identity.reader.clone()));
    let (executor, completions, embedded) = query_executor(settings, pool, &shared.tls, tasks)?;
    let feasibility = Arc::new(commands::feasibility::Feasibility::new(
        commands::feasibility::FeasibilityPorts {
            studies: crate::stores::feasibility_studies(pool),
            requests: shared.requests.clone(),
            workspace: workspace.reader.clone(),
            directory: reader.clone(),
            perimeters: reader.clone(),
            executor: executor.clone(),
            consistency: shared.consistency.clone(),
        },
        config::comma_list(&settings.cohorts.reporting_perimeter_types),
    ));
    let cohorts = Arc::new(
        commands::cohorts::Cohorts::new(
            crate::stores::cohorts(pool, shared.requests.clone()),
            workspace.reader.clone(),
            reader.clone(),
            executor,
            shared.consistency.clone(),
            commands::cohorts::CohortSettings {
                size_limit: settings.cohorts.cohort_size_limit,
            },
        )
        .with_small_cells(
            domain::small_cells::SmallCells::new(settings.cohorts.small_cell_threshold),
            read_rights.clone(),
        ),
    );
    let schedules = Arc::new(commands::refresh::Schedules::new(
        commands::refresh::SchedulePorts {
            schedules: crate::stores::refresh_schedules(pool),
            counts: crate::stores::counts(pool),
            requests: shared.requests.clone(),
            workspace: workspace.reader.clone(),
            directory: reader.clone(),
            consistency: shared.consistency.clone(),
        },
    ));
    let mails = Arc::new(commands::mails::Mails::new(
        crate::stores::mail_deliveries(pool),
        crate::stores::users(pool),
        identity.mailer.clone(),
        settings.cohorts.frontend_url.clone(),
    ));
    let read_model = shared.after(projections::cohorts::PROJECTION)?;
    let reactions: Vec<Reacting> = vec![
        // Reads the cohorts read model (older counts of the same request).
        (
            Arc::new(ExecutorReaction {
                cohorts: cohorts.clone(),
                feasibility: feasibility.clone(),
            }),
            read_model.clone(),
        ),
        // The front-end reads the count or cohort when told: the read model first.
        (
            Arc::new(JobNotifications {
                cohorts: cohorts.clone(),
                notifier,
            }),
            read_model,
        ),
        (
            Arc::new(PublicEvents {
                cohorts: cohorts.clone(),
                js: public.js,
                subject_root: public.root,
            }),
            vec![],
        ),
        (
            Arc::new(MailReaction {
                mails: mails.clone(),
                cohorts: cohorts.clone(),
                feasibility: feasibility.clone(),
                schedules: schedules.clone(),
                requests: shared.requests.clone(),
            }),
            vec![],
        ),
    ];
    Ok(CohortsContext {
        cohorts,
        feasibility,
        schedules,
        mails,
        reader,
        read_rights,
        completions,
        embedded,
        reactions,
    })
}

/// Exports, datalabs, infrastructure providers and FHIR filters.
pub struct ExportsContext {
    pub exports: Arc<commands::exports::Exports>,
    pub fhir_filters: Arc<commands::fhir_filters::FhirFilters>,
    pub reader: Arc<crate::exports::PgExports>,
    pub reactions: Vec<Reacting>,
}

pub fn exports(
    settings: &Settings,
    shared: &Shared,
    identity: &IdentityContext,
    cohorts: &CohortsContext,
) -> anyhow::Result<ExportsContext> {
    let pool = &shared.pool;
    let reader = Arc::new(crate::exports::PgExports::new(pool.clone()));
    let args = &settings.exports;
    let exports = Arc::new(commands::exports::Exports::new(
        commands::exports::ExportPorts {
            exports: crate::stores::exports(pool),
            datalabs: crate::stores::datalabs(pool),
            providers: crate::stores::infrastructure_providers(pool),
            filters: crate::stores::fhir_filters(pool),
            cohorts: cohorts.cohorts.clone(),
            rights: Arc::new(crate::exports::IdentityExportRights(
                identity.reader.clone(),
            )),
            directory: reader.clone(),
            exporter: exporter(args, &shared.tls, pool)?,
            access: identity.access.clone(),
            storage: export_storage(args, &shared.tls)?,
            mails: cohorts.mails.clone(),
            consistency: shared.consistency.clone(),
        },
        commands::exports::ExportSettings {
            keep_days: args.keep_days,
            csv_path: args.csv_path.clone(),
            xlsx_path: args.xlsx_path.clone(),
            hive_path: args.hive_path.clone(),
            admins: config::comma_list(&args.admins),
            max_poll_errors: 5,
        },
    ));
    let read_model = shared.after(projections::exports::PROJECTION)?;
    let reactions: Vec<Reacting> = vec![
        (
            Arc::new(crate::exports::reactions::ExportReaction {
                exports: exports.clone(),
            }),
            read_model.clone(),
        ),
        (
            Arc::new(crate::exports::reactions::ExportMails {
                exports: exports.clone(),
            }),
            read_model,
        ),
    ];
    let fhir_filters = Arc::new(commands::fhir_filters::FhirFilters::new(
        crate::stores::fhir_filters(pool),
        cohorts.reader.clone(),
        shared.consistency.clone(),
    ));
    Ok(ExportsContext {
        exports,
        fhir_filters,
        reader,
        reactions,
    })
}

/// Web contents and release notes.
pub struct ContentContext {
    pub service: Arc<commands::content::Contents>,
    pub reader: Arc<crate::content::PgContent>,
}

pub fn content(shared: &Shared, identity: &IdentityContext) -> ContentContext {
    let reader = Arc::new(crate::content::PgContent::new(shared.pool.clone()));
    let service = commands::content::Contents::new(
        crate::stores::web_contents(&shared.pool),
        crate::stores::release_notes(&shared.pool),
        reader.clone(),
        shared.consistency.clone(),
        identity.access.clone(),
    );
    ContentContext {
        service: Arc::new(service),
        reader,
    }
}

/// The clinical store the FHIR API reads, and the terminologies (loaded data, not folded from
/// events).
pub struct ClinicalContext {
    pub reader: Arc<crate::clinical::fhir::PgClinical>,
    pub terminology: Arc<crate::terminology::store::PgTerminology>,
}

/// Writes the built-in terminologies (what changed in the catalogue since the last start; an
/// operator's imports are left alone).
pub async fn clinical(
    shared: &Shared,
    embedded: Option<Arc<crate::clinical::EmbeddedExecutor>>,
) -> anyhow::Result<ClinicalContext> {
    use crate::terminology::{builtin, store};
    let report = store::apply(
        &shared.pool,
        &builtin::terminologies(),
        store::Origin::Builtin,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot write the built-in terminologies: {e}"))?;
    if report.added + report.changed + report.removed > 0 {
        tracing::info!(
            added = report.added,
            changed = report.changed,
            removed = report.removed,
            "built-in terminologies updated"
        );
    }
    Ok(ClinicalContext {
        reader: Arc::new(
            crate::clinical::fhir::PgClinical::new(shared.pool.clone()).with_index(embedded),
        ),
        terminology: Arc::new(crate::terminology::store::PgTerminology::new(
            shared.pool.clone(),
        )),
    })
}

/// Results of the embedded executor, to apply as callbacks.
pub type Completions = tokio::sync::mpsc::UnboundedReceiver<commands::ports::JobCompletion>;

/// The executor counts go to, the embedded one's results, and the embedded one itself.
type ChosenExecutor = (
    Arc<dyn commands::ports::QueryExecutor>,
    Option<Completions>,
    Option<Arc<crate::clinical::EmbeddedExecutor>>,
);

/// The executor counts and cohorts go to: the embedded one, with its results on the returned
/// channel, unless `QUERY_EXECUTOR_URL` names an external one.
fn query_executor(
    settings: &Settings,
    pool: &PgPool,
    tls: &TlsSettings,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<ChosenExecutor> {
    if !settings.cohorts.query_executor_url.trim().is_empty() {
        let http = crate::cohorts::executor::HttpQueryExecutor::new(
            &crate::cohorts::executor::ExecutorSettings {
                url: settings.cohorts.query_executor_url.clone(),
                timeout: Duration::from_secs(
                    settings.cohorts.query_executor_timeout_seconds.max(1),
                ),
                tls: tls.clone(),
            },
        )?;
        return Ok((Arc::new(http), None, None));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let embedded = Arc::new(crate::clinical::EmbeddedExecutor::new(pool.clone(), tx));
    // Load the index in the background rather than on the first count (a million patients take
    // tens of seconds); counts submitted meanwhile wait for it.
    let loading = embedded.clone();
    tasks.spawn(async move {
        if let Err(e) = loading.index().await {
            tracing::warn!(error = %e, "the clinical index could not be loaded at start");
        }
    });
    Ok((embedded.clone(), Some(rx), Some(embedded)))
}

/// The exporter: the upstream Export API (with the Hadoop API) when `EXPORT_API_URL` is set,
/// else the built-in one, which writes into `EXPORT_STORAGE_DIR`.
fn exporter(
    settings: &ExportArgs,
    tls: &TlsSettings,
    pool: &PgPool,
) -> anyhow::Result<Arc<dyn commands::ports::Exporter>> {
    if settings.export_api_url.trim().is_empty() {
        return Ok(Arc::new(crate::exports::builtin::BuiltinExporter::new(
            pool.clone(),
            settings.storage_dir.clone().into(),
        )));
    }
    use crate::exports::export_api::{ExportApiExporter, ExportApiSettings};
    let http = crate::tls::http_client_builder(tls)?
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
    settings: &ExportArgs,
    tls: &TlsSettings,
) -> anyhow::Result<Arc<dyn commands::ports::ExportStorage>> {
    if settings.webhdfs_url.trim().is_empty() {
        return Ok(Arc::new(crate::exports::local_storage::LocalStorage::new(
            settings.storage_dir.clone().into(),
        )));
    }
    let http = crate::tls::http_client_builder(tls)?.build()?;
    let storage = crate::exports::webhdfs::WebHdfsStorage::new(
        http,
        &settings.webhdfs_url,
        settings.webhdfs_user.clone(),
    )
    .map_err(|e| anyhow::anyhow!("WEBHDFS_URL: {e}"))?;
    Ok(Arc::new(storage))
}

/// OIDC providers and the identity service, from the settings.
fn identity_providers(
    identity: &IdentitySettings,
    tls: TlsSettings,
) -> anyhow::Result<crate::identity_providers::HttpIdentityProviders> {
    use crate::identity_providers::{IdentityServer, OidcProvider, ProvidersSettings};
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
        extra_issuers: config::comma_list(&identity.oidc_extra_server_urls),
        audiences: config::comma_list(&identity.oidc_audience),
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
    Ok(crate::identity_providers::HttpIdentityProviders::new(
        settings,
    )?)
}

/// The SMTP mailer.
fn mailer(
    settings: &Settings,
    shared: &Shared,
) -> anyhow::Result<Arc<dyn commands::ports::Mailer>> {
    let smtp = &settings.identity.smtp;
    Ok(Arc::new(crate::mail::SmtpMailer::new(
        &crate::mail::SmtpSettings {
            host: smtp.smtp_host.clone(),
            port: smtp.smtp_port,
            username: smtp.smtp_username.clone(),
            password: smtp.smtp_password.clone(),
            sender: smtp.email_sender_address.clone(),
            timeout: Duration::from_secs(30),
            security: match smtp.smtp_security {
                SmtpSecurityArg::None => crate::mail::SmtpSecurity::None,
                SmtpSecurityArg::Starttls => crate::mail::SmtpSecurity::StartTls,
                SmtpSecurityArg::Tls => crate::mail::SmtpSecurity::Tls,
            },
            tls: shared.tls.clone(),
        },
    )?))
}
