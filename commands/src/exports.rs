//! The exports service: requests validated against the owner's rights on every perimeter of the
//! source cohorts, subsets created through the cohort lifecycle, the exporter driven to the end,
//! downloads within the retention window, the retention cleaner, and the e-mails.
//!
//! HTTP handlers call `request`, `retry`, `relaunch`, `download` and `logs`; the reactors call
//! `prepare`, `check_subsets` and `submit` once per event (each idempotent: subset cohorts have
//! ids derived from the export, submission is claimed by an event first); the scheduler calls
//! `poll` and `clean_expired`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use domain::authz::DataRights;
use domain::cohort::CohortState;
use domain::datalab::{
    Datalab, DatalabCommand, DatalabError, InfrastructureProvider, ProviderCommand,
};
use domain::export::{
    CohortFacts, Export, ExportCommand, ExportError, ExportFormat, ExportRefusal, ExportReport,
    ExportRequest, ExportState, ExportTable, TableFilter, check_motivation, check_perimeter_rights,
    check_permission, check_tables, clean_motivation, target_name,
};
use domain::fhir_filter::FhirFilter;
use domain::job::JobStatus;
use domain::rights::Rights;
use thiserror::Error;
use uuid::Uuid;

use crate::authz::{AccessControl, AuthzError, Permission, Principal};
use crate::bus::{Committed, Execute};
use crate::cohorts::{Cohorts, CohortsError};
use crate::context::CommandContext;
use crate::error::{CommandError, Technical};
use crate::mails::{Mails, Recipient};
use crate::ports::{
    Consistency, ExportJob, ExportJobTable, ExportStorage, Exporter, ExporterError, PortError,
};
use crate::workspace::Written;

/// Namespace of the ids of export subsets (derived from export, table and attempt).
const SUBSET_NAMESPACE: Uuid = Uuid::from_u128(0x6c0e_51a2_93d4_4b7f_a1e8_2f90_47c3_0007);

/// Why an exports operation failed.
#[derive(Debug, Error)]
pub enum ExportsError {
    #[error(transparent)]
    Refused(#[from] ExportRefusal),
    #[error(transparent)]
    Export(ExportError),
    #[error(transparent)]
    Datalab(DatalabError),
    #[error("a datalab with this name already exists")]
    DatalabNameTaken,
    #[error("this infrastructure provider still has datalabs")]
    ProviderInUse,
    #[error("{0}")]
    NotDownloadable(&'static str),
    #[error("the export has no exporter task")]
    NoTask,
    #[error("the exporter did not answer in time")]
    ExporterTimeout,
    #[error("the exporter failed: {0}")]
    Exporter(String),
    #[error(transparent)]
    Cohorts(#[from] CohortsError),
    /// The caller may not do this (or their rights cannot be read now).
    #[error(transparent)]
    Authz(#[from] AuthzError),
    /// Conflict, unavailability, bug.
    #[error(transparent)]
    Technical(#[from] Technical),
}

impl From<CommandError<ExportError>> for ExportsError {
    fn from(e: CommandError<ExportError>) -> Self {
        crate::error::from_command(e, ExportsError::Export)
    }
}

impl From<CommandError<DatalabError>> for ExportsError {
    fn from(e: CommandError<DatalabError>) -> Self {
        crate::error::from_command(e, ExportsError::Datalab)
    }
}

impl From<PortError> for ExportsError {
    fn from(e: PortError) -> Self {
        Technical::from(e).into()
    }
}

/// The owner's rights, as export validation needs them.
#[async_trait::async_trait]
pub trait ExportRights: Send + Sync {
    /// The union of the user's valid grants' rights.
    async fn global_rights(&self, username: &str) -> Result<Rights, PortError>;
    /// The user's data rights on each perimeter (by cohort id); `None` for an unknown one.
    async fn data_rights(
        &self,
        username: &str,
        perimeter_cohort_ids: &[String],
    ) -> Result<Vec<(String, Option<DataRights>)>, PortError>;
}

/// Lookups in the exports read model.
#[async_trait::async_trait]
pub trait ExportDirectory: Send + Sync {
    /// Exports submitted to the exporter and not ended.
    async fn running_exports(&self) -> Result<Vec<Uuid>, PortError>;
    /// Exports still waiting for their subsets.
    async fn exports_waiting_for_subsets(&self) -> Result<Vec<Uuid>, PortError>;
    /// The export a subset cohort was created for.
    async fn export_of_subset(&self, cohort: Uuid) -> Result<Option<Uuid>, PortError>;
    /// Finished file exports (CSV, XLSX) finished before `before` whose files are not deleted.
    async fn expired_exports(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, PortError>;
    /// The datalab named `name`, if any.
    async fn datalab_named(&self, name: &str) -> Result<Option<Uuid>, PortError>;
    /// Whether any datalab runs on `provider`.
    async fn provider_in_use(&self, provider: Uuid) -> Result<bool, PortError>;
}

/// What the exports service needs.
pub struct ExportPorts {
    pub exports: Arc<dyn Execute<Export>>,
    pub datalabs: Arc<dyn Execute<Datalab>>,
    pub providers: Arc<dyn Execute<InfrastructureProvider>>,
    pub filters: Arc<dyn Execute<FhirFilter>>,
    pub cohorts: Arc<Cohorts>,
    pub rights: Arc<dyn ExportRights>,
    pub directory: Arc<dyn ExportDirectory>,
    pub exporter: Arc<dyn Exporter>,
    /// The authorization rules (retrying, relaunching and reading logs are for full admins).
    pub access: AccessControl,
    pub storage: Arc<dyn ExportStorage>,
    pub mails: Arc<Mails>,
    pub consistency: Arc<dyn Consistency>,
}

/// Tuning of the exports service.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// `DAYS_TO_KEEP_EXPORTED_FILES`: the download window, and when the cleaner deletes files.
    pub keep_days: i64,
    /// Where each format's outputs go (`EXPORT_CSV_PATH`, `EXPORT_XLSX_PATH`, `HIVE_DB_PATH`).
    pub csv_path: String,
    pub xlsx_path: String,
    pub hive_path: String,
    /// `ADMINS`: addresses told of every failed export.
    pub admins: Vec<String>,
    /// Consecutive unanswered status polls after which an export is failed (upstream: 5).
    pub max_poll_errors: u32,
}

/// One table of a new export, as the front-end sends it.
#[derive(Debug, Clone, Default)]
pub struct NewExportTable {
    pub table_name: String,
    pub columns: Option<Vec<String>>,
    pub cohort_result_source: Option<Uuid>,
    pub fhir_filter: Option<Uuid>,
    pub respect_table_relationships: bool,
    pub pivot_merge: bool,
    pub pivot_merge_columns: Vec<String>,
    pub pivot_merge_ids: Vec<String>,
}

/// A new export.
#[derive(Debug, Clone)]
pub struct NewExport {
    pub output_format: ExportFormat,
    pub nominative: bool,
    pub datalab: Option<Uuid>,
    pub shift_dates: bool,
    pub group_tables: bool,
    pub motivation: Option<String>,
    pub tables: Vec<NewExportTable>,
}

/// What a download needs: the archive's path in storage and the name to give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub path: String,
    pub file_name: String,
}

/// The exports application service.
pub struct Exports {
    ports: ExportPorts,
    settings: ExportSettings,
    /// Consecutive failed status polls, by export (reset by an answer).
    poll_errors: Mutex<HashMap<Uuid, u32>>,
}

/// The job an export's state describes.
pub fn export_job(s: &ExportState) -> ExportJob {
    ExportJob {
        export: s.id,
        owner: s.owner.clone(),
        format: s.output_format,
        nominative: s.nominative,
        shift_dates: s.shift_dates,
        group_tables: s.group_tables,
        target_name: s.target_name.clone(),
        target_location: s.target_location.clone(),
        datalab: s.datalab_name.clone(),
        tables: s.tables.iter().map(job_table).collect(),
    }
}

fn job_table(t: &ExportTable) -> ExportJobTable {
    ExportJobTable {
        name: t.name.clone(),
        columns: t.columns.clone(),
        cohort_group_id: t.cohort_group_id().map(str::to_string),
        filter: t
            .filter
            .as_ref()
            .map(|f| (f.resource.clone(), f.filter_fhir.clone())),
        respect_table_relationships: t.respect_table_relationships,
        pivot_merge: t.pivot_merge,
        pivot_merge_columns: t.pivot_merge_columns.clone(),
        pivot_merge_ids: t.pivot_merge_ids.clone(),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ExportsError {
    ExportsError::Refused(ExportRefusal::Invalid {
        field,
        reason: reason.into(),
    })
}

impl Exports {
    pub fn new(ports: ExportPorts, settings: ExportSettings) -> Self {
        Self {
            ports,
            settings,
            poll_errors: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &ExportSettings {
        &self.settings
    }

    async fn written<T>(
        &self,
        value: T,
        committed: &[Committed],
    ) -> Result<Written<T>, ExportsError> {
        let caught_up = self.ports.consistency.wait_for(committed).await;
        Ok(Written { value, caught_up })
    }

    async fn cohort(&self, id: Uuid) -> Result<Option<CohortState>, ExportsError> {
        Ok(self.ports.cohorts.cohort(id).await?)
    }

    /// The perimeters (cohort ids) a cohort was computed on: its query's source population, or
    /// for a sample its parent's.
    async fn cohort_perimeters(&self, cohort: &CohortState) -> Result<Vec<String>, ExportsError> {
        let query = match cohort.parent_cohort {
            Some(parent) => match self.cohort(parent).await? {
                Some(p) => p.serialized_query,
                None => return Ok(Vec::new()),
            },
            None => cohort.serialized_query.clone(),
        };
        Ok(domain::query::perimeters_ids(&query).unwrap_or_default())
    }

    /// Validates a new export (spec §5.1, every perimeter checked) and records it.
    pub async fn request(
        &self,
        ctx: &CommandContext,
        new: NewExport,
    ) -> Result<Written<Uuid>, ExportsError> {
        self.request_as(ctx, &ctx.user, new, None).await
    }

    async fn request_as(
        &self,
        ctx: &CommandContext,
        owner: &str,
        new: NewExport,
        relaunched_from: Option<Uuid>,
    ) -> Result<Written<Uuid>, ExportsError> {
        let format = new.output_format;
        let global = self.ports.rights.global_rights(owner).await?;
        check_permission(format, new.nominative, &global)?;
        let mut tables = Vec::with_capacity(new.tables.len());
        let mut cohorts: Vec<CohortFacts> = Vec::new();
        let mut states: Vec<CohortState> = Vec::new();
        for t in &new.tables {
            let filter = match t.fhir_filter {
                Some(id) => {
                    let f = self
                        .ports
                        .filters
                        .load(&id.to_string())
                        .await
                        .map_err(|e| ExportsError::from(Technical::Unavailable(e.to_string())))?;
                    let Some(f) = f.owned_by(owner) else {
                        return Err(invalid(
                            "fhir_filter",
                            format!("FHIR filter {id} does not exist or is not yours"),
                        ));
                    };
                    Some(TableFilter {
                        id,
                        resource: f.fields.fhir_resource.clone(),
                        filter_fhir: f.filter.clone(),
                    })
                }
                None => None,
            };
            if let Some(id) = t.cohort_result_source
                && !cohorts.iter().any(|c| c.id == id)
                && let Some(c) = self.cohort(id).await?.filter(|c| !c.deleted)
            {
                cohorts.push(CohortFacts {
                    id,
                    owner: c.owner.clone(),
                    status: c.job.status,
                    is_subset: c.is_subset,
                    group_id: c.group_id.clone(),
                });
                states.push(c);
            }
            let group_id = t.cohort_result_source.and_then(|id| {
                cohorts
                    .iter()
                    .find(|c| c.id == id)
                    .and_then(|c| c.group_id.clone())
            });
            tables.push(ExportTable {
                name: t.table_name.trim().to_string(),
                columns: t.columns.clone().filter(|c| !c.is_empty()),
                source_cohort: t.cohort_result_source,
                source_group_id: group_id,
                filter,
                respect_table_relationships: t.respect_table_relationships,
                pivot_merge: t.pivot_merge,
                pivot_merge_columns: t.pivot_merge_columns.clone(),
                pivot_merge_ids: t.pivot_merge_ids.clone(),
                subset_cohort: None,
                subset_group_id: None,
            });
        }
        check_tables(format, owner, &tables, &cohorts, false)?;
        check_motivation(new.motivation.as_deref())?;
        let job_tables: Vec<ExportJobTable> = tables.iter().map(job_table).collect();
        self.ports
            .exporter
            .check_tables(format, &job_tables)
            .map_err(|reason| invalid("export_tables", reason))?;
        let datalab = match (format, new.datalab) {
            (ExportFormat::Hive, None) => {
                return Err(invalid("datalab", "a Hive export needs a datalab"));
            }
            (ExportFormat::Hive, Some(id)) => {
                let d = self
                    .ports
                    .datalabs
                    .load(&id.to_string())
                    .await
                    .map_err(|e| ExportsError::from(Technical::Unavailable(e.to_string())))?;
                if d.id.is_none() {
                    return Err(invalid("datalab", format!("datalab {id} does not exist")));
                }
                Some((id, d.name))
            }
            (_, _) => None,
        };
        let email = self
            .ports
            .mails
            .recipient(owner)
            .await?
            .map(|r| r.email)
            .unwrap_or_default();
        if domain::validation::email("email", &email).is_err() {
            return Err(invalid(
                "owner",
                "the export's owner has no valid e-mail address: notifications could not reach them",
            ));
        }
        let mut perimeters = Vec::new();
        for c in &states {
            for p in self.cohort_perimeters(c).await? {
                if !perimeters.contains(&p) {
                    perimeters.push(p);
                }
            }
        }
        let rights = self.ports.rights.data_rights(owner, &perimeters).await?;
        check_perimeter_rights(format, new.nominative, &rights)?;
        let (location, prefix) = match format {
            ExportFormat::Csv => (self.settings.csv_path.clone(), owner.to_string()),
            ExportFormat::Xlsx => (self.settings.xlsx_path.clone(), owner.to_string()),
            ExportFormat::Hive => (
                self.settings.hive_path.clone(),
                datalab.as_ref().map(|d| d.1.clone()).unwrap_or_default(),
            ),
        };
        let id = Uuid::new_v4();
        let command = ExportCommand::Request {
            export: ExportRequest {
                export_id: id,
                owner: owner.to_string(),
                output_format: format,
                nominative: new.nominative,
                datalab: datalab.as_ref().map(|d| d.0),
                datalab_name: datalab.map(|d| d.1),
                shift_dates: new.shift_dates,
                group_tables: new.group_tables,
                motivation: new
                    .motivation
                    .as_deref()
                    .map(clean_motivation)
                    .filter(|m| !m.trim().is_empty()),
                target_name: target_name(&prefix, ctx.at),
                target_location: location,
                tables,
                relaunched_from,
            },
            at: ctx.at,
        };
        let c = self
            .ports
            .exports
            .execute_new(&id.to_string(), command, ctx)
            .await?;
        self.written(id, &[c]).await
    }

    /// An export as its owner sees it (`None`: anyone's, for admins and reactors).
    pub async fn export(
        &self,
        owner: Option<&str>,
        id: Uuid,
    ) -> Result<Option<ExportState>, ExportsError> {
        let e = self.ports.exports.load(&id.to_string()).await?;
        Ok(e.state.filter(|s| owner.is_none_or(|o| o == s.owner)))
    }

    /// Reactor (`ExportRequested`, `ExportRetried`): creates the subset cohort of each filtered
    /// table, as the owner, then checks whether they are all done. The subset's id derives from
    /// the export, the table and the attempt, so a redelivered event creates nothing twice.
    pub async fn prepare(&self, ctx: &CommandContext, id: Uuid) -> Result<(), ExportsError> {
        let Some(export) = self.export(None, id).await? else {
            return Ok(());
        };
        if export.validated || export.status != JobStatus::New {
            return Ok(());
        }
        let owner_ctx = CommandContext {
            user: export.owner.clone(),
            ..ctx.clone()
        };
        let attempt = export.attempt;
        for (i, table) in export.tables.iter().enumerate() {
            if !table.needs_subset() {
                continue;
            }
            let (Some(source), Some(filter)) = (table.source_cohort, &table.filter) else {
                continue;
            };
            let subset = Uuid::new_v5(&SUBSET_NAMESPACE, format!("{id}|{i}|{attempt}").as_bytes());
            // Linked first: when the subset's result arrives, the export already names it.
            if table.subset_cohort != Some(subset) {
                let link = ExportCommand::LinkSubset {
                    table: i,
                    cohort: subset,
                    at: ctx.at,
                };
                let c = self
                    .ports
                    .exports
                    .execute(&id.to_string(), link, ctx)
                    .await?;
                self.ports.consistency.wait_for(&[c]).await;
            }
            // Created unless it exists (a run interrupted between the link and the creation
            // creates it now).
            if self.cohort(subset).await?.is_some() {
                continue;
            }
            let refused = match self
                .ports
                .cohorts
                .create_subset_with_id(
                    &owner_ctx,
                    subset,
                    source,
                    &table.name,
                    Some((filter.resource.clone(), filter.filter_fhir.clone())),
                )
                .await
            {
                Ok(_) | Err(CohortsError::Cohort(domain::cohort::CohortError::AlreadyExists)) => {
                    continue;
                }
                // The source cohort is gone or no longer created: the export cannot run.
                Err(CohortsError::Invalid(reason)) => reason.to_string(),
                Err(CohortsError::Cohort(e)) => e.to_string(),
                Err(e) => return Err(e.into()),
            };
            let fail = ExportCommand::Fail {
                message: format!(
                    "the subset of table `{}` cannot be created: {refused}",
                    table.name
                ),
                at: ctx.at,
            };
            self.ports
                .exports
                .execute(&id.to_string(), fail, ctx)
                .await?;
            return Ok(());
        }
        self.check_subsets(ctx, id).await
    }

    /// Reactor (a subset cohort settled) and scheduler: fails the export if a subset failed,
    /// validates it once every subset is created.
    pub async fn check_subsets(&self, ctx: &CommandContext, id: Uuid) -> Result<(), ExportsError> {
        let Some(export) = self.export(None, id).await? else {
            return Ok(());
        };
        if export.validated || export.status != JobStatus::New {
            return Ok(());
        }
        let mut groups = Vec::new();
        for (i, table) in export.tables.iter().enumerate() {
            if !table.needs_subset() {
                continue;
            }
            let Some(subset) = table.subset_cohort else {
                return Ok(());
            };
            let Some(cohort) = self.cohort(subset).await? else {
                return Ok(());
            };
            match (cohort.job.status, &cohort.group_id) {
                (JobStatus::Finished, Some(group)) => groups.push((i, group.clone())),
                (JobStatus::Failed | JobStatus::Cancelled | JobStatus::Unknown, _) => {
                    let message = format!(
                        "the subset of table `{}` failed: {}",
                        table.name,
                        cohort.job.fail_msg.as_deref().unwrap_or("no reason given")
                    );
                    let fail = ExportCommand::Fail {
                        message,
                        at: ctx.at,
                    };
                    self.ports
                        .exports
                        .execute(&id.to_string(), fail, ctx)
                        .await?;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        let validate = ExportCommand::Validate {
            subset_group_ids: groups,
            at: ctx.at,
        };
        self.ports
            .exports
            .execute(&id.to_string(), validate, ctx)
            .await?;
        Ok(())
    }

    /// Reactor: a subset cohort settled; checks its export.
    pub async fn subset_settled(
        &self,
        ctx: &CommandContext,
        cohort: Uuid,
    ) -> Result<(), ExportsError> {
        match self.ports.directory.export_of_subset(cohort).await? {
            Some(export) => self.check_subsets(ctx, export).await,
            None => Ok(()),
        }
    }

    /// Reactor (`ExportValidated`, `ExportRetried`): hands a validated export to the exporter,
    /// unless already claimed.
    pub async fn submit(&self, ctx: &CommandContext, id: Uuid) -> Result<(), ExportsError> {
        let key = id.to_string();
        let claim = ExportCommand::ClaimSubmission { at: ctx.at };
        match self.ports.exports.execute(&key, claim, ctx).await {
            Ok(_) => {}
            Err(CommandError::Rejected(
                ExportError::AlreadySubmitted | ExportError::WrongStatus(_) | ExportError::NotFound,
            )) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let Some(export) = self.export(None, id).await? else {
            return Ok(());
        };
        let command = match self.ports.exporter.submit(export_job(&export)).await {
            Ok(task_id) => ExportCommand::RecordTask {
                task_id,
                at: ctx.at,
            },
            Err(e) => ExportCommand::Fail {
                message: e.to_string(),
                at: ctx.at,
            },
        };
        self.ports.exports.execute(&key, command, ctx).await?;
        Ok(())
    }

    /// Scheduler: asks the exporter about every running export and records what changed; an
    /// export whose exporter stays unreachable for `max_poll_errors` polls in a row fails. Also
    /// re-checks the exports waiting for subsets (a lost reaction never blocks one). Returns how
    /// many exports changed.
    pub async fn poll(&self, ctx: &CommandContext) -> Result<usize, ExportsError> {
        for id in self.ports.directory.exports_waiting_for_subsets().await? {
            self.check_subsets(ctx, id).await?;
        }
        let mut changed = 0;
        for id in self.ports.directory.running_exports().await? {
            let Some(export) = self.export(None, id).await? else {
                continue;
            };
            let Some(task) = export.task_id.clone() else {
                continue;
            };
            let report = match self.ports.exporter.status(&task).await {
                Ok(Some(report)) => {
                    self.poll_errors_mut(|m| m.remove(&id));
                    report
                }
                Ok(None) => ExportReport {
                    status: Some(JobStatus::Failed),
                    message: Some(format!(
                        "the exporter no longer knows task {task}; retry the export"
                    )),
                    stats: Vec::new(),
                },
                Err(e) => {
                    let errors = self.poll_errors_mut(|m| {
                        let n = m.entry(id).or_default();
                        *n += 1;
                        Some(*n)
                    });
                    if errors.unwrap_or(0) < self.settings.max_poll_errors {
                        tracing::warn!(export = %id, error = %e, "export status poll failed");
                        continue;
                    }
                    self.poll_errors_mut(|m| m.remove(&id));
                    ExportReport {
                        status: Some(JobStatus::Failed),
                        message: Some(format!(
                            "the exporter could not be asked about the export {} times in a row: {e}",
                            self.settings.max_poll_errors
                        )),
                        stats: Vec::new(),
                    }
                }
            };
            let finished = report.status == Some(JobStatus::Finished);
            let c = self
                .ports
                .exports
                .execute(
                    &id.to_string(),
                    ExportCommand::Settle { report, at: ctx.at },
                    ctx,
                )
                .await?;
            if c.last_sequence.is_some() {
                changed += 1;
                if finished
                    && let Err(e) = self.ports.exporter.hand_over(&export_job(&export)).await
                {
                    tracing::error!(export = %id, error = %e, "the Hive database could not be handed over to the datalab");
                }
            }
        }
        Ok(changed)
    }

    fn poll_errors_mut<T>(
        &self,
        f: impl FnOnce(&mut HashMap<Uuid, u32>) -> Option<T>,
    ) -> Option<T> {
        match self.poll_errors.lock() {
            Ok(mut m) => f(&mut m),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Puts a finished or failed export back to `new` (full admins).
    pub async fn retry(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        id: Uuid,
    ) -> Result<Written<()>, ExportsError> {
        self.ports
            .access
            .require(by, Permission::AdministerExports)
            .await?;
        let command = ExportCommand::Retry {
            by: ctx.user.clone(),
            at: ctx.at,
        };
        let c = self
            .ports
            .exports
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.written((), &[c]).await
    }

    /// A new export with the configuration and tables of `id`, for its owner, validated again
    /// against the owner's current rights (full admins).
    pub async fn relaunch(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        id: Uuid,
    ) -> Result<Written<Uuid>, ExportsError> {
        self.ports
            .access
            .require(by, Permission::AdministerExports)
            .await?;
        let Some(original) = self.export(None, id).await? else {
            return Err(ExportsError::Export(ExportError::NotFound));
        };
        let new = NewExport {
            output_format: original.output_format,
            nominative: original.nominative,
            datalab: original.datalab,
            shift_dates: original.shift_dates,
            group_tables: original.group_tables,
            motivation: original.motivation.clone(),
            tables: original
                .tables
                .iter()
                .map(|t| NewExportTable {
                    table_name: t.name.clone(),
                    columns: t.columns.clone(),
                    cohort_result_source: t.source_cohort,
                    fhir_filter: t.filter.as_ref().map(|f| f.id),
                    respect_table_relationships: t.respect_table_relationships,
                    pivot_merge: t.pivot_merge,
                    pivot_merge_columns: t.pivot_merge_columns.clone(),
                    pivot_merge_ids: t.pivot_merge_ids.clone(),
                })
                .collect(),
        };
        self.request_as(ctx, &original.owner, new, Some(id)).await
    }

    /// What the owner may download now: the archive of a finished CSV/XLSX export within the
    /// retention window, as `export_{group_id}.zip`.
    pub async fn download(
        &self,
        owner: &str,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Download, ExportsError> {
        let export = self
            .export(Some(owner), id)
            .await?
            .ok_or(ExportsError::Export(ExportError::NotFound))?;
        export
            .download_check(now, self.settings.keep_days)
            .map_err(ExportsError::NotDownloadable)?;
        Ok(Download {
            path: export.archive_path(),
            file_name: format!("export_{}.zip", export.group_id().unwrap_or("cohort")),
        })
    }

    /// Opens an archive in storage.
    pub async fn open(
        &self,
        path: &str,
    ) -> Result<Option<(Option<u64>, crate::ports::ByteStream)>, ExportsError> {
        Ok(self.ports.storage.open(path).await?)
    }

    /// The exporter's logs of an export (full admins): `None` for a finished export (upstream
    /// answers "no logs").
    pub async fn logs(
        &self,
        by: &Principal,
        id: Uuid,
    ) -> Result<Option<serde_json::Value>, ExportsError> {
        self.ports
            .access
            .require(by, Permission::AdministerExports)
            .await?;
        let export = self
            .export(None, id)
            .await?
            .ok_or(ExportsError::Export(ExportError::NotFound))?;
        if export.status == JobStatus::Finished {
            return Ok(None);
        }
        let task = export.task_id.ok_or(ExportsError::NoTask)?;
        match self.ports.exporter.logs(&task).await {
            Ok(logs) => Ok(Some(logs)),
            Err(ExporterError::Timeout) => Err(ExportsError::ExporterTimeout),
            Err(e) => Err(ExportsError::Exporter(e.to_string())),
        }
    }

    /// Scheduler: deletes the files of exports past the retention window and records it. Stops
    /// at the first storage error (the next run tries again). Returns how many were cleaned.
    pub async fn clean_expired(&self, ctx: &CommandContext) -> Result<usize, ExportsError> {
        let before = ctx.at - chrono::Duration::days(self.settings.keep_days);
        let mut cleaned = 0;
        for id in self.ports.directory.expired_exports(before).await? {
            let Some(export) = self.export(None, id).await? else {
                continue;
            };
            self.ports.storage.delete(&export.archive_path()).await?;
            match self
                .ports
                .exports
                .execute(
                    &id.to_string(),
                    ExportCommand::CleanFiles { at: ctx.at },
                    ctx,
                )
                .await
            {
                Ok(_) => cleaned += 1,
                Err(CommandError::Rejected(ExportError::AlreadyCleaned)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(cleaned)
    }

    /// Reactor: the e-mail an export event calls for (received, succeeded, failed — to the
    /// owner and `ADMINS` —, files deleted), sent once per event and recipient.
    pub async fn notify(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        event_type: &str,
        cause: &str,
    ) -> Result<(), ExportsError> {
        let Some(export) = self.export(None, id).await? else {
            return Ok(());
        };
        let Some(owner) = self.ports.mails.recipient(&export.owner).await? else {
            return Ok(());
        };
        let m = &self.ports.mails;
        let (kind, mails) = match event_type {
            "ExportSubmitted" => (
                "export_received",
                vec![crate::mails::export_received(
                    &owner,
                    &export,
                    &m.frontend_url,
                )],
            ),
            "ExportFinished" => {
                let until = export
                    .downloadable_until(self.settings.keep_days)
                    .unwrap_or(ctx.at);
                (
                    "export_succeeded",
                    vec![crate::mails::export_succeeded(
                        &owner,
                        &export,
                        until,
                        &m.frontend_url,
                    )],
                )
            }
            "ExportFailed" => {
                let mut mails = vec![crate::mails::export_failed(
                    &owner,
                    &export,
                    &m.frontend_url,
                )];
                for admin in &self.settings.admins {
                    let to = Recipient {
                        name: "administrateur".into(),
                        email: admin.clone(),
                    };
                    mails.push(crate::mails::export_failed_admins(
                        &to,
                        &export,
                        &m.frontend_url,
                    ));
                }
                ("export_failed", mails)
            }
            "ExportFilesCleaned" => (
                "exported_files_deleted",
                vec![crate::mails::exported_files_deleted(
                    &owner,
                    &export,
                    &m.frontend_url,
                )],
            ),
            _ => return Ok(()),
        };
        for mail in mails {
            m.deliver(ctx, cause, kind, mail).await?;
        }
        Ok(())
    }

    /// Creates an infrastructure provider (datalab managers).
    pub async fn create_provider(
        &self,
        ctx: &CommandContext,
        name: String,
    ) -> Result<Written<Uuid>, ExportsError> {
        let id = Uuid::new_v4();
        let c = self
            .ports
            .providers
            .execute_new(
                &id.to_string(),
                ProviderCommand::Create {
                    id,
                    name,
                    at: ctx.at,
                },
                ctx,
            )
            .await?;
        self.written(id, &[c]).await
    }

    /// Renames a provider.
    pub async fn rename_provider(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        name: String,
    ) -> Result<Written<()>, ExportsError> {
        let c = self
            .ports
            .providers
            .execute(
                &id.to_string(),
                ProviderCommand::Rename { name, at: ctx.at },
                ctx,
            )
            .await?;
        self.written((), &[c]).await
    }

    /// Deletes a provider no datalab runs on.
    pub async fn delete_provider(
        &self,
        ctx: &CommandContext,
        id: Uuid,
    ) -> Result<Written<()>, ExportsError> {
        if self.ports.directory.provider_in_use(id).await? {
            return Err(ExportsError::ProviderInUse);
        }
        let c = self
            .ports
            .providers
            .execute(&id.to_string(), ProviderCommand::Delete { at: ctx.at }, ctx)
            .await?;
        self.written((), &[c]).await
    }

    async fn require_provider(&self, id: Uuid) -> Result<(), ExportsError> {
        let p = self.ports.providers.load(&id.to_string()).await?;
        if p.exists() {
            Ok(())
        } else {
            Err(invalid(
                "infrastructure_provider",
                format!("infrastructure provider {id} does not exist"),
            ))
        }
    }

    async fn require_free_name(
        &self,
        name: &str,
        except: Option<Uuid>,
    ) -> Result<(), ExportsError> {
        match self.ports.directory.datalab_named(name).await? {
            Some(other) if Some(other) != except => Err(ExportsError::DatalabNameTaken),
            _ => Ok(()),
        }
    }

    /// Creates a datalab on an existing provider, with a name no other datalab has.
    pub async fn create_datalab(
        &self,
        ctx: &CommandContext,
        name: String,
        provider: Uuid,
    ) -> Result<Written<Uuid>, ExportsError> {
        domain::datalab::datalab_name(&name).map_err(|e| invalid(e.field, e.reason))?;
        self.require_provider(provider).await?;
        self.require_free_name(&name, None).await?;
        let id = Uuid::new_v4();
        let command = DatalabCommand::Create {
            id,
            name,
            provider,
            at: ctx.at,
        };
        let c = self
            .ports
            .datalabs
            .execute_new(&id.to_string(), command, ctx)
            .await?;
        self.written(id, &[c]).await
    }

    /// Renames a datalab or moves it to another provider.
    pub async fn change_datalab(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        name: Option<String>,
        provider: Option<Uuid>,
    ) -> Result<Written<()>, ExportsError> {
        if let Some(p) = provider {
            self.require_provider(p).await?;
        }
        if let Some(n) = &name {
            self.require_free_name(n, Some(id)).await?;
        }
        let command = DatalabCommand::Change {
            name,
            provider,
            at: ctx.at,
        };
        let c = self
            .ports
            .datalabs
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.written((), &[c]).await
    }
}
