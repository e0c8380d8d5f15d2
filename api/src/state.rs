//! What every handler can reach.

use std::sync::Arc;

use async_trait::async_trait;
use commands::cohorts::Cohorts;
use commands::identity::Identity;
use commands::ports::{IdentityProviders, Mailer};
use commands::workspace::Workspace;
use projections::audit::AuditReader;
use projections::cohorts::CohortReader;
use projections::identity::IdentityReader;
use projections::workspace::WorkspaceReader;
use serde::Serialize;

use crate::auth::{ApplicativeToken, JwtKeys};
use crate::config::{CohortArgs, IdentitySettings};
use crate::routes::maintenances::MaintenanceGate;
use crate::ws::Hub;

/// One dependency's state in `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// Whether the instance cannot serve at all while this check fails (Postgres): the answer
    /// is then 503 `unavailable`; a failed non-critical check only makes it `degraded`.
    #[serde(skip)]
    pub critical: bool,
}

/// Readiness probes of the dependencies (implemented by the startup code).
#[async_trait]
pub trait Readiness: Send + Sync {
    async fn checks(&self) -> Vec<Check>;
}

/// Where the log consumers stand (implemented by the startup code).
#[async_trait]
pub trait PipelineAdmin: Send + Sync {
    /// Each projector's, reactor's and the relay's checkpoint, backlog, lag and last error.
    async fn status(&self) -> Result<serde_json::Value, String>;
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub workspace: Arc<Workspace>,
    pub reader: Arc<dyn WorkspaceReader>,
    pub jwt: Arc<JwtKeys>,
    pub readiness: Arc<dyn Readiness>,
    pub identity: Arc<dyn IdentityReader>,
    pub identity_service: Arc<Identity>,
    pub applicative: Arc<Vec<ApplicativeToken>>,
    pub identity_settings: Arc<IdentitySettings>,
    pub username_regex: Arc<regex::Regex>,
    pub hub: Hub,
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
    pub cohort_settings: Arc<CohortArgs>,
    pub pipeline: Arc<dyn PipelineAdmin>,
    pub contents: Arc<commands::content::Contents>,
    pub content_reader: Arc<dyn projections::content::ContentReader>,
    /// Small-cell protection of counts (`SMALL_CELL_THRESHOLD`), and who is exempt from it.
    pub small_cells: domain::small_cells::SmallCells,
    pub read_rights: Arc<dyn commands::ports::PatientReadRights>,
    /// The clinical store, for the FHIR read API.
    pub clinical: Arc<dyn projections::clinical::ClinicalReader>,
    pub request_logs: Arc<dyn projections::request_logs::RequestLogs>,
    /// `Idempotency-Key` claims and the answers kept for repeats.
    pub idempotency: Arc<dyn projections::idempotency::IdempotencyKeys>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bearer token `/metrics` requires, if set.
    pub metrics_token: Option<String>,
}

impl AppState {
    /// Whether `token` is one of the configured applicative tokens.
    pub fn is_applicative_token(&self, token: &str) -> bool {
        self.applicative.iter().any(|a| a.matches(token))
    }
}
