//! What every handler can reach: the services and readers the runtime built, the token keys,
//! and the few settings answers depend on.

use std::sync::Arc;

use commands::authz::AccessControl;
use commands::cohorts::Cohorts;
use commands::identity::Identity;
use commands::ports::{IdentityProviders, Mailer, Notifier, PushFeed};
use commands::workspace::Workspace;
use projections::audit::AuditReader;
use projections::cohorts::CohortReader;
use projections::health::{PipelineAdmin, Readiness};
use projections::identity::IdentityReader;
use projections::workspace::WorkspaceReader;

use crate::maintenance_gate::MaintenanceGate;
use crate::tokens::{ApplicativeToken, JwtKeys};

/// The settings the HTTP answers depend on.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Lifetime of access tokens, in seconds.
    pub access_ttl_seconds: i64,
    /// Lifetime of refresh tokens, in seconds.
    pub refresh_ttl_seconds: i64,
    /// Days before its end an access is listed as expiring.
    pub access_expiry_first_alert_days: i64,
    /// Patients above which a cohort cannot be created.
    pub cohort_size_limit: i64,
    /// Hours a count stays fresh.
    pub last_count_validity_hours: i64,
    /// The front-end's URL (links in reports).
    pub frontend_url: String,
}

/// Shared handler state: one allocation, which every extractor and middleware clones (one
/// reference count, where cloning the fields took forty, and an allocation).
#[derive(Clone)]
pub struct AppState(Arc<HandlerState>);

impl AppState {
    pub fn new(fields: HandlerState) -> Self {
        Self(Arc::new(fields))
    }
}

impl std::ops::Deref for AppState {
    type Target = HandlerState;

    fn deref(&self) -> &HandlerState {
        &self.0
    }
}

/// What the handlers share.
pub struct HandlerState {
    pub workspace: Arc<Workspace>,
    pub reader: Arc<dyn WorkspaceReader>,
    pub jwt: Arc<JwtKeys>,
    pub readiness: Arc<dyn Readiness>,
    pub identity: Arc<dyn IdentityReader>,
    pub identity_service: Arc<Identity>,
    /// The authorization rules, applied with the callers' current rights.
    pub access: AccessControl,
    pub applicative: Arc<Vec<ApplicativeToken>>,
    pub settings: Arc<EdgeSettings>,
    pub username_regex: Arc<regex::Regex>,
    /// Pushes to websocket sessions (maintenance announcements).
    pub notifier: Arc<dyn Notifier>,
    /// The pushes this instance's sockets receive.
    pub pushes: Arc<dyn PushFeed>,
    pub maintenance_gate: Arc<MaintenanceGate>,
    pub audit: Arc<dyn AuditReader>,
    /// Records each read of the audit API.
    pub audit_reads: Arc<dyn commands::Execute<domain::audit_read::AuditRead>>,
    pub providers: Arc<dyn IdentityProviders>,
    pub mailer: Arc<dyn Mailer>,
    pub cohorts: Arc<Cohorts>,
    pub schedules: Arc<commands::refresh::Schedules>,
    pub feasibility: Arc<commands::feasibility::Feasibility>,
    pub exports: Arc<commands::exports::Exports>,
    pub export_reader: Arc<dyn projections::exports::ExportReader>,
    pub fhir_filters: Arc<commands::fhir_filters::FhirFilters>,
    pub cohort_reader: Arc<dyn CohortReader>,
    pub pipeline: Arc<dyn PipelineAdmin>,
    pub contents: Arc<commands::content::Contents>,
    pub content_reader: Arc<dyn projections::content::ContentReader>,
    /// Small-cell protection of counts (`SMALL_CELL_THRESHOLD`), and who is exempt from it.
    pub small_cells: domain::small_cells::SmallCells,
    pub read_rights: Arc<dyn commands::ports::PatientReadRights>,
    /// The clinical store, for the FHIR read API.
    pub clinical: Arc<dyn projections::clinical::ClinicalReader>,
    /// Code systems and value sets, for the FHIR terminology API.
    pub terminology: Arc<dyn projections::terminology::TerminologyReader>,
    pub request_logs: Arc<dyn projections::request_logs::RequestLogs>,
    /// `Idempotency-Key` claims and the answers kept for repeats.
    pub idempotency: Arc<dyn projections::idempotency::IdempotencyKeys>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bearer token `/metrics` requires, if set.
    pub metrics_token: Option<String>,
}

impl HandlerState {
    /// Whether `token` is one of the configured applicative tokens.
    pub fn is_applicative_token(&self, token: &str) -> bool {
        self.applicative.iter().any(|a| a.matches(token))
    }
}
