//! The Export aggregate: one export of a cohort's data (CSV, XLSX or a Hive database in a
//! datalab), from the request to the files' deletion; and the pure rules that validate a request
//! (spec §5.1, with upstream's silent skip of unreadable perimeters closed).
//!
//! Lifecycle: `ExportRequested` (`new`) → one `ExportSubsetRequested` per filtered table, whose
//! cohorts run the normal creation pipeline → `ExportValidated` once every subset is created →
//! `ExportSubmitted` (claimed for the exporter, `pending`) → `ExportStarted` (the exporter's task
//! id) → `ExportProgressed`… → `ExportFinished` | `ExportFailed`; `ExportRetried` puts a finished or
//! failed export back to `new`; `ExportFilesCleaned` records the deletion of its files.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::authz::DataRights;
use crate::job::JobStatus;
use crate::rights::Rights;

/// An export's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Csv,
    Xlsx,
    Hive,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Xlsx => "xlsx",
            Self::Hive => "hive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Csv, Self::Xlsx, Self::Hive]
            .into_iter()
            .find(|f| f.as_str() == s)
    }

    /// CSV and XLSX exports are files the owner downloads; Hive databases are not.
    pub fn is_file(self) -> bool {
        self != Self::Hive
    }
}

/// The kind of an export statistic (upstream's `ExportResultStat.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatKind {
    Integer,
    Text,
    SizeBytes,
}

impl StatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integer => "Integer",
            Self::Text => "Text",
            Self::SizeBytes => "SizeBytes",
        }
    }
}

/// One figure about a finished export (rows of a table, size of the archive, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStat {
    pub name: String,
    pub kind: StatKind,
    pub value: String,
}

/// A saved FHIR filter as a table uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFilter {
    pub id: Uuid,
    pub resource: String,
    pub filter_fhir: String,
}

/// One table of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportTable {
    /// The table's name (`person`, `condition_occurrence`, …).
    pub name: String,
    /// The columns to export; all of them when `None`.
    pub columns: Option<Vec<String>>,
    /// The cohort whose patients the table is restricted to, and its group id.
    pub source_cohort: Option<Uuid>,
    pub source_group_id: Option<String>,
    /// The saved filter the rows must match (as it was when the export was requested).
    pub filter: Option<TableFilter>,
    pub respect_table_relationships: bool,
    pub pivot_merge: bool,
    pub pivot_merge_columns: Vec<String>,
    pub pivot_merge_ids: Vec<String>,
    /// The subset cohort created for a filtered table, and its group id once created.
    pub subset_cohort: Option<Uuid>,
    pub subset_group_id: Option<String>,
}

/// Tables upstream never makes subsets for (their rows are not FHIR resources of their own).
pub const NO_SUBSET_TABLES: [&str; 4] = [
    "imaging_series",
    "questionnaire__item",
    "questionnaireresponse__item",
    "questionnaireresponse__item__answer",
];

impl ExportTable {
    /// Whether the table is restricted through a subset cohort of its own.
    pub fn needs_subset(&self) -> bool {
        self.source_cohort.is_some()
            && self.filter.is_some()
            && !NO_SUBSET_TABLES.contains(&self.name.as_str())
    }

    /// The group id the table's rows are restricted to: the subset's, else the source's.
    pub fn cohort_group_id(&self) -> Option<&str> {
        self.subset_group_id
            .as_deref()
            .or(self.source_group_id.as_deref())
    }
}

/// A new export, validated and derived by the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    pub export_id: Uuid,
    pub owner: String,
    pub output_format: ExportFormat,
    pub nominative: bool,
    pub datalab: Option<Uuid>,
    pub datalab_name: Option<String>,
    pub shift_dates: bool,
    pub group_tables: bool,
    pub motivation: Option<String>,
    pub target_name: String,
    pub target_location: String,
    pub tables: Vec<ExportTable>,
    /// The export this one copies (`relaunch`).
    pub relaunched_from: Option<Uuid>,
}

/// What an exporter reports about its task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportReport {
    pub status: Option<JobStatus>,
    pub message: Option<String>,
    pub stats: Vec<ExportStat>,
}

/// What may be asked of an export.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportCommand {
    Request {
        export: ExportRequest,
        at: DateTime<Utc>,
    },
    /// Links table `table` (its index) to the subset cohort created for it.
    LinkSubset {
        table: usize,
        cohort: Uuid,
        at: DateTime<Utc>,
    },
    /// Every subset is created: their group ids, by table index.
    Validate {
        subset_group_ids: Vec<(usize, String)>,
        at: DateTime<Utc>,
    },
    ClaimSubmission {
        at: DateTime<Utc>,
    },
    RecordTask {
        task_id: String,
        at: DateTime<Utc>,
    },
    Settle {
        report: ExportReport,
        at: DateTime<Utc>,
    },
    Fail {
        message: String,
        at: DateTime<Utc>,
    },
    Retry {
        by: String,
        at: DateTime<Utc>,
    },
    CleanFiles {
        at: DateTime<Utc>,
    },
}

/// What happened to an export. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExportEvent {
    ExportRequested {
        export_id: Uuid,
        owner: String,
        output_format: ExportFormat,
        nominative: bool,
        datalab: Option<Uuid>,
        datalab_name: Option<String>,
        shift_dates: bool,
        group_tables: bool,
        motivation: Option<String>,
        target_name: String,
        target_location: String,
        tables: Vec<ExportTable>,
        relaunched_from: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// A subset cohort was requested for table `table` (index in `tables`).
    ExportSubsetRequested {
        table: usize,
        cohort: Uuid,
        at: DateTime<Utc>,
    },
    /// Every subset is created; the export may run.
    ExportValidated {
        subset_group_ids: Vec<(usize, String)>,
        at: DateTime<Utc>,
    },
    /// Claimed for submission to the exporter (`pending`).
    ExportSubmitted {
        at: DateTime<Utc>,
    },
    /// The exporter took the job: its task id.
    ExportStarted {
        task_id: String,
        at: DateTime<Utc>,
    },
    /// The exporter reported a new intermediate status (`pending`, `started`).
    ExportProgressed {
        status: JobStatus,
        at: DateTime<Utc>,
    },
    ExportFinished {
        stats: Vec<ExportStat>,
        at: DateTime<Utc>,
    },
    ExportFailed {
        message: String,
        at: DateTime<Utc>,
    },
    /// Back to `new` (by a full admin).
    ExportRetried {
        by: String,
        at: DateTime<Utc>,
    },
    /// The export's files were deleted (retention).
    ExportFilesCleaned {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ExportEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ExportRequested { .. } => "ExportRequested",
            Self::ExportSubsetRequested { .. } => "ExportSubsetRequested",
            Self::ExportValidated { .. } => "ExportValidated",
            Self::ExportSubmitted { .. } => "ExportSubmitted",
            Self::ExportStarted { .. } => "ExportStarted",
            Self::ExportProgressed { .. } => "ExportProgressed",
            Self::ExportFinished { .. } => "ExportFinished",
            Self::ExportFailed { .. } => "ExportFailed",
            Self::ExportRetried { .. } => "ExportRetried",
            Self::ExportFilesCleaned { .. } => "ExportFilesCleaned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why an export command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExportError {
    #[error("an export with this id already exists")]
    AlreadyExists,
    /// Missing, or someone else's.
    #[error("export not found")]
    NotFound,
    #[error("no table {0} in this export")]
    NoSuchTable(usize),
    #[error("the export is {0}: this cannot be done now")]
    WrongStatus(&'static str),
    #[error("the export was already submitted")]
    AlreadySubmitted,
    #[error("the export's files were already deleted")]
    AlreadyCleaned,
}

/// Current state of an export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub state: Option<ExportState>,
}

/// The fields of a requested export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportState {
    pub id: Uuid,
    pub owner: String,
    pub output_format: ExportFormat,
    pub nominative: bool,
    pub datalab: Option<Uuid>,
    pub datalab_name: Option<String>,
    pub shift_dates: bool,
    pub group_tables: bool,
    pub motivation: Option<String>,
    pub target_name: String,
    pub target_location: String,
    pub tables: Vec<ExportTable>,
    pub relaunched_from: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub status: JobStatus,
    /// Every subset is created (or none was needed).
    pub validated: bool,
    pub submitted: bool,
    pub task_id: Option<String>,
    pub fail_msg: Option<String>,
    pub retried: bool,
    /// How many times the export was retried (subsets of each attempt get their own ids).
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub stats: Vec<ExportStat>,
    pub cleaned_at: Option<DateTime<Utc>>,
}

impl ExportState {
    /// `{target_location}/{target_name}`.
    pub fn target_full_path(&self) -> String {
        format!(
            "{}/{}",
            self.target_location.trim_end_matches('/'),
            self.target_name
        )
    }

    /// The archive of a CSV/XLSX export: `{target_full_path}.zip`.
    pub fn archive_path(&self) -> String {
        format!("{}.zip", self.target_full_path())
    }

    /// The group id of the exported cohort (the source cohort of the tables).
    pub fn group_id(&self) -> Option<&str> {
        self.tables
            .iter()
            .find(|t| t.name == "person" && t.source_group_id.is_some())
            .or_else(|| self.tables.iter().find(|t| t.source_group_id.is_some()))
            .and_then(|t| t.source_group_id.as_deref())
    }

    /// The source cohort of the export (first table naming one, `person` first).
    pub fn source_cohort(&self) -> Option<Uuid> {
        self.tables
            .iter()
            .find(|t| t.name == "person" && t.source_cohort.is_some())
            .or_else(|| self.tables.iter().find(|t| t.source_cohort.is_some()))
            .and_then(|t| t.source_cohort)
    }

    /// Until when the files may be downloaded: `keep_days` after the export finished.
    pub fn downloadable_until(&self, keep_days: i64) -> Option<DateTime<Utc>> {
        self.finished_at
            .map(|at| at + chrono::Duration::days(keep_days))
    }

    /// Whether the owner may download the files at `now`: a finished CSV/XLSX export, within
    /// the retention window, whose files were not deleted. `Err` says why not.
    pub fn download_check(&self, now: DateTime<Utc>, keep_days: i64) -> Result<(), &'static str> {
        if !self.output_format.is_file() {
            return Err("only CSV and XLSX exports can be downloaded");
        }
        if self.status != JobStatus::Finished {
            return Err("the export is not finished");
        }
        if self.cleaned_at.is_some() {
            return Err("the export's files were deleted");
        }
        match self.downloadable_until(keep_days) {
            Some(until) if until > now => Ok(()),
            _ => Err("the export's files are no longer available (retention period over)"),
        }
    }
}

impl Export {
    fn require(&self) -> Result<&ExportState, ExportError> {
        self.state.as_ref().ok_or(ExportError::NotFound)
    }

    /// Decides a command.
    pub fn decide(&self, command: ExportCommand) -> Result<Vec<ExportEvent>, ExportError> {
        match command {
            ExportCommand::Request { export, at } => {
                if self.state.is_some() {
                    return Err(ExportError::AlreadyExists);
                }
                let needs_subsets = export.tables.iter().any(ExportTable::needs_subset);
                let mut events = vec![ExportEvent::ExportRequested {
                    export_id: export.export_id,
                    owner: export.owner,
                    output_format: export.output_format,
                    nominative: export.nominative,
                    datalab: export.datalab,
                    datalab_name: export.datalab_name,
                    shift_dates: export.shift_dates,
                    group_tables: export.group_tables,
                    motivation: export.motivation,
                    target_name: export.target_name,
                    target_location: export.target_location,
                    tables: export.tables,
                    relaunched_from: export.relaunched_from,
                    at,
                }];
                if !needs_subsets {
                    events.push(ExportEvent::ExportValidated {
                        subset_group_ids: Vec::new(),
                        at,
                    });
                }
                Ok(events)
            }
            ExportCommand::LinkSubset { table, cohort, at } => {
                let s = self.require()?;
                let t = s.tables.get(table).ok_or(ExportError::NoSuchTable(table))?;
                if t.subset_cohort == Some(cohort) {
                    return Ok(vec![]);
                }
                if s.validated || s.status != JobStatus::New {
                    return Err(ExportError::WrongStatus(s.status.as_str()));
                }
                Ok(vec![ExportEvent::ExportSubsetRequested {
                    table,
                    cohort,
                    at,
                }])
            }
            ExportCommand::Validate {
                subset_group_ids,
                at,
            } => {
                let s = self.require()?;
                if s.validated || s.status != JobStatus::New {
                    return Ok(vec![]);
                }
                if let Some((i, _)) = subset_group_ids.iter().find(|(i, _)| *i >= s.tables.len()) {
                    return Err(ExportError::NoSuchTable(*i));
                }
                Ok(vec![ExportEvent::ExportValidated {
                    subset_group_ids,
                    at,
                }])
            }
            ExportCommand::ClaimSubmission { at } => {
                let s = self.require()?;
                if s.submitted {
                    return Err(ExportError::AlreadySubmitted);
                }
                if !s.validated || s.status != JobStatus::New {
                    return Err(ExportError::WrongStatus(s.status.as_str()));
                }
                Ok(vec![ExportEvent::ExportSubmitted { at }])
            }
            ExportCommand::RecordTask { task_id, at } => {
                let s = self.require()?;
                if s.status.is_final() || s.task_id.as_deref() == Some(&task_id) {
                    return Ok(vec![]);
                }
                if !s.submitted {
                    return Err(ExportError::WrongStatus(s.status.as_str()));
                }
                Ok(vec![ExportEvent::ExportStarted { task_id, at }])
            }
            ExportCommand::Settle { report, at } => {
                let s = self.require()?;
                if s.status.is_final() || !s.submitted {
                    return Ok(vec![]);
                }
                Ok(match report.status {
                    Some(JobStatus::Finished) => vec![ExportEvent::ExportFinished {
                        stats: report.stats,
                        at,
                    }],
                    Some(JobStatus::Failed | JobStatus::Cancelled) => {
                        vec![ExportEvent::ExportFailed {
                            message: report
                                .message
                                .filter(|m| !m.trim().is_empty())
                                .unwrap_or_else(|| "Export terminated with an error".into()),
                            at,
                        }]
                    }
                    Some(status @ (JobStatus::Pending | JobStatus::Started))
                        if status != s.status =>
                    {
                        vec![ExportEvent::ExportProgressed { status, at }]
                    }
                    _ => vec![],
                })
            }
            ExportCommand::Fail { message, at } => {
                if self.require()?.status.is_final() {
                    return Ok(vec![]);
                }
                Ok(vec![ExportEvent::ExportFailed { message, at }])
            }
            ExportCommand::Retry { by, at } => {
                let s = self.require()?;
                if !matches!(
                    s.status,
                    JobStatus::Failed | JobStatus::Finished | JobStatus::Cancelled
                ) {
                    return Err(ExportError::WrongStatus(s.status.as_str()));
                }
                Ok(vec![ExportEvent::ExportRetried { by, at }])
            }
            ExportCommand::CleanFiles { at } => {
                let s = self.require()?;
                if s.cleaned_at.is_some() {
                    return Err(ExportError::AlreadyCleaned);
                }
                if s.status != JobStatus::Finished {
                    return Err(ExportError::WrongStatus(s.status.as_str()));
                }
                Ok(vec![ExportEvent::ExportFilesCleaned { at }])
            }
        }
    }

    /// The export as its owner sees it (others do not see it at all).
    pub fn owned_by(&self, user: &str) -> Option<&ExportState> {
        self.state.as_ref().filter(|s| s.owner == user)
    }
}

impl Aggregate for Export {
    const TYPE: &'static str = "Export";
    type Command = ExportCommand;
    type Event = ExportEvent;
    type Error = ExportError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let ExportEvent::ExportRequested {
            export_id,
            owner,
            output_format,
            nominative,
            datalab,
            datalab_name,
            shift_dates,
            group_tables,
            motivation,
            target_name,
            target_location,
            tables,
            relaunched_from,
            at,
        } = event
        {
            self.state = Some(ExportState {
                id: export_id,
                owner,
                output_format,
                nominative,
                datalab,
                datalab_name,
                shift_dates,
                group_tables,
                motivation,
                target_name,
                target_location,
                tables,
                relaunched_from,
                requested_at: at,
                modified_at: at,
                status: JobStatus::New,
                validated: false,
                submitted: false,
                task_id: None,
                fail_msg: None,
                retried: false,
                attempt: 0,
                started_at: None,
                finished_at: None,
                stats: Vec::new(),
                cleaned_at: None,
            });
            return;
        }
        let Some(s) = &mut self.state else { return };
        match event {
            ExportEvent::ExportRequested { .. } => {}
            ExportEvent::ExportSubsetRequested { table, cohort, at } => {
                if let Some(t) = s.tables.get_mut(table) {
                    t.subset_cohort = Some(cohort);
                    t.subset_group_id = None;
                }
                s.modified_at = at;
            }
            ExportEvent::ExportValidated {
                subset_group_ids,
                at,
            } => {
                for (i, group) in subset_group_ids {
                    if let Some(t) = s.tables.get_mut(i) {
                        t.subset_group_id = Some(group);
                    }
                }
                s.validated = true;
                s.modified_at = at;
            }
            ExportEvent::ExportSubmitted { at } => {
                s.submitted = true;
                s.status = JobStatus::Pending;
                s.modified_at = at;
            }
            ExportEvent::ExportStarted { task_id, at } => {
                s.task_id = Some(task_id);
                s.started_at = Some(at);
                s.modified_at = at;
            }
            ExportEvent::ExportProgressed { status, at } => {
                s.status = status;
                s.modified_at = at;
            }
            ExportEvent::ExportFinished { stats, at } => {
                s.status = JobStatus::Finished;
                s.stats = stats;
                s.finished_at = Some(at);
                s.modified_at = at;
            }
            ExportEvent::ExportFailed { message, at } => {
                s.status = JobStatus::Failed;
                s.fail_msg = Some(message);
                s.modified_at = at;
            }
            ExportEvent::ExportRetried { at, .. } => {
                s.status = JobStatus::New;
                s.retried = true;
                s.attempt += 1;
                s.submitted = false;
                s.task_id = None;
                s.fail_msg = None;
                s.started_at = None;
                s.finished_at = None;
                s.stats.clear();
                s.cleaned_at = None;
                // Subsets that never all got created are requested again.
                if !s.validated {
                    for t in &mut s.tables {
                        t.subset_cohort = None;
                        t.subset_group_id = None;
                    }
                }
                s.modified_at = at;
            }
            ExportEvent::ExportFilesCleaned { at } => {
                s.cleaned_at = Some(at);
                s.modified_at = at;
            }
        }
    }
}

/// A cohort named by an export table, as validation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortFacts {
    pub id: Uuid,
    pub owner: String,
    pub status: JobStatus,
    pub is_subset: bool,
    pub group_id: Option<String>,
}

/// Why an export request is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExportRefusal {
    /// The caller's roles do not allow this kind of export (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request breaks a rule (400): the field and why.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ExportRefusal {
    ExportRefusal::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Step 1 of §5.1: the role-level permission for the format and reading mode, from the union of
/// the caller's valid grants.
pub fn check_permission(
    format: ExportFormat,
    nominative: bool,
    global: &Rights,
) -> Result<(), ExportRefusal> {
    let (allowed, right) = match (format, nominative) {
        (ExportFormat::Csv | ExportFormat::Xlsx, true) => (
            global.right_export_csv_xlsx_nominative,
            "right_export_csv_xlsx_nominative",
        ),
        (ExportFormat::Csv | ExportFormat::Xlsx, false) => {
            return Err(ExportRefusal::Forbidden(
                "CSV and XLSX exports must be nominative: pseudonymized data leaves only through a datalab (Hive)".into(),
            ));
        }
        (ExportFormat::Hive, true) => (
            global.right_export_jupyter_nominative,
            "right_export_jupyter_nominative",
        ),
        (ExportFormat::Hive, false) => (
            global.right_export_jupyter_pseudonymized,
            "right_export_jupyter_pseudonymized",
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(ExportRefusal::Forbidden(format!(
            "this export needs the right {right}, which none of your valid accesses gives"
        )))
    }
}

/// Step 2 of §5.1: the exporter-specific rules on the tables' source cohorts (`cohorts` holds
/// every cohort a table names; a missing one does not exist for the caller). Unlike upstream,
/// every source cohort must belong to the caller and be created, whatever the format.
pub fn check_tables(
    format: ExportFormat,
    owner: &str,
    tables: &[ExportTable],
    cohorts: &[CohortFacts],
    requires_person: bool,
) -> Result<(), ExportRefusal> {
    if tables.is_empty() {
        return Err(invalid(
            "export_tables",
            "an export needs at least one table",
        ));
    }
    for (i, t) in tables.iter().enumerate() {
        if t.name.trim().is_empty() || t.name.chars().count() > 55 {
            return Err(invalid(
                "export_tables",
                format!("table {i}: the table name must have 1 to 55 characters"),
            ));
        }
        if t.filter.is_some() && t.source_cohort.is_none() {
            return Err(invalid(
                "export_tables",
                format!(
                    "table `{}`: a table with a FHIR filter needs a source cohort",
                    t.name
                ),
            ));
        }
    }
    let person = tables.iter().find(|t| t.name == "person");
    if requires_person && person.is_none() {
        return Err(invalid(
            "export_tables",
            "the exporter requires a `person` table",
        ));
    }
    let named: Vec<Uuid> = tables.iter().filter_map(|t| t.source_cohort).collect();
    if named.is_empty() {
        return Err(invalid(
            "export_tables",
            "at least one table must name a source cohort (cohort_result_source)",
        ));
    }
    match format {
        ExportFormat::Csv | ExportFormat::Xlsx => {
            if named.iter().any(|c| *c != named[0]) {
                return Err(invalid(
                    "export_tables",
                    "every table of a CSV or XLSX export must name the same source cohort",
                ));
            }
        }
        ExportFormat::Hive => {
            if person.is_some_and(|p| p.source_cohort.is_none()) {
                return Err(invalid(
                    "export_tables",
                    "the `person` table must name a source cohort",
                ));
            }
        }
    }
    for id in &named {
        let Some(c) = cohorts.iter().find(|c| c.id == *id && c.owner == owner) else {
            return Err(invalid(
                "cohort_result_source",
                format!("cohort {id} does not exist or is not yours"),
            ));
        };
        if c.is_subset {
            return Err(invalid(
                "cohort_result_source",
                format!("cohort {id} is an export subset, not a cohort of yours"),
            ));
        }
        if c.status != JobStatus::Finished || c.group_id.is_none() {
            return Err(invalid(
                "cohort_result_source",
                format!(
                    "cohort {id} is {}: only created (finished) cohorts can be exported",
                    c.status.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Step 3 of §5.1, hole closed: on **every** perimeter of the source cohorts (`rights`, one entry
/// per perimeter, `None` when the perimeter is unknown), the owner must read patient data in the
/// export's mode and hold the format's export flag. Upstream skips the perimeters the owner
/// cannot read at all; here they refuse the export.
pub fn check_perimeter_rights(
    format: ExportFormat,
    nominative: bool,
    rights: &[(String, Option<DataRights>)],
) -> Result<(), ExportRefusal> {
    if rights.is_empty() {
        return Err(invalid(
            "cohort_result_source",
            "the source cohort's perimeters cannot be determined",
        ));
    }
    for (perimeter, r) in rights {
        let Some(r) = r else {
            return Err(invalid(
                "cohort_result_source",
                format!("perimeter {perimeter} of the source cohort is unknown"),
            ));
        };
        let (reads, mode) = if nominative {
            (r.right_read_patient_nominative, "nominative")
        } else {
            (r.right_read_patient_pseudonymized, "pseudonymized")
        };
        if !reads {
            return Err(invalid(
                "cohort_result_source",
                format!("you do not have {mode} reading of patient data on perimeter {perimeter}"),
            ));
        }
        let flag = match (format, nominative) {
            (ExportFormat::Hive, true) => r.right_export_jupyter_nominative,
            (ExportFormat::Hive, false) => r.right_export_jupyter_pseudonymized,
            (_, _) => r.right_export_csv_xlsx_nominative,
        };
        if !flag {
            return Err(invalid(
                "cohort_result_source",
                format!(
                    "you may not export {} data of perimeter {perimeter}",
                    format.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a motivation over [`crate::validation::limits::DESCRIPTION_MAX_BYTES`].
pub fn check_motivation(motivation: Option<&str>) -> Result<(), ExportRefusal> {
    crate::validation::bounded_optional_text(
        "motivation",
        motivation,
        crate::validation::limits::DESCRIPTION_MAX_BYTES,
    )
    .map_err(|e| invalid(e.field, e.reason))
}

/// Upstream's motivation clean-up: newlines become " - ".
pub fn clean_motivation(m: &str) -> String {
    m.replace("\r\n", "\n").replace(['\n', '\r'], " - ")
}

/// `{username or datalab}_{YYYYMMDD_HHMMSSffffff}`.
pub fn target_name(prefix: &str, at: DateTime<Utc>) -> String {
    format!("{prefix}_{}", at.format("%Y%m%d_%H%M%S%6f"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, cohort: Option<Uuid>, filtered: bool) -> ExportTable {
        ExportTable {
            name: name.into(),
            columns: None,
            source_cohort: cohort,
            source_group_id: cohort.map(|_| "1000001".into()),
            filter: filtered.then(|| TableFilter {
                id: Uuid::from_u128(9),
                resource: "Condition".into(),
                filter_fhir: "code=E11".into(),
            }),
            respect_table_relationships: true,
            pivot_merge: false,
            pivot_merge_columns: vec![],
            pivot_merge_ids: vec![],
            subset_cohort: None,
            subset_group_id: None,
        }
    }

    fn request(tables: Vec<ExportTable>) -> ExportRequest {
        ExportRequest {
            export_id: Uuid::from_u128(1),
            owner: "u1".into(),
            output_format: ExportFormat::Csv,
            nominative: true,
            datalab: None,
            datalab_name: None,
            shift_dates: false,
            group_tables: false,
            motivation: None,
            target_name: "u1_x".into(),
            target_location: "exports/csv".into(),
            tables,
            relaunched_from: None,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn run(export: &mut Export, command: ExportCommand) -> Vec<ExportEvent> {
        let events = export.decide(command).unwrap();
        for e in events.clone() {
            export.apply(e);
        }
        events
    }

    #[test]
    fn an_export_without_filters_is_validated_at_once_and_runs_to_its_end() {
        let c = Some(Uuid::from_u128(5));
        let mut e = Export::default();
        let events = run(
            &mut e,
            ExportCommand::Request {
                export: request(vec![table("person", c, false)]),
                at: at(0),
            },
        );
        assert_eq!(events.len(), 2, "requested and validated");
        run(&mut e, ExportCommand::ClaimSubmission { at: at(1) });
        assert_eq!(
            e.decide(ExportCommand::ClaimSubmission { at: at(2) }),
            Err(ExportError::AlreadySubmitted)
        );
        run(
            &mut e,
            ExportCommand::RecordTask {
                task_id: "t1".into(),
                at: at(2),
            },
        );
        let progressed = run(
            &mut e,
            ExportCommand::Settle {
                report: ExportReport {
                    status: Some(JobStatus::Started),
                    ..Default::default()
                },
                at: at(3),
            },
        );
        assert_eq!(progressed.len(), 1);
        let again = e
            .decide(ExportCommand::Settle {
                report: ExportReport {
                    status: Some(JobStatus::Started),
                    ..Default::default()
                },
                at: at(4),
            })
            .unwrap();
        assert!(again.is_empty(), "an unchanged status records nothing");
        run(
            &mut e,
            ExportCommand::Settle {
                report: ExportReport {
                    status: Some(JobStatus::Finished),
                    stats: vec![ExportStat {
                        name: "rows".into(),
                        kind: StatKind::Integer,
                        value: "3".into(),
                    }],
                    message: None,
                },
                at: at(5),
            },
        );
        let s = e.state.as_ref().unwrap();
        assert_eq!(s.status, JobStatus::Finished);
        assert_eq!(s.stats.len(), 1);
        assert_eq!(s.download_check(at(6), 7), Ok(()));
        assert!(
            s.download_check(at(5) + chrono::Duration::days(7), 7)
                .is_err()
        );
        run(&mut e, ExportCommand::CleanFiles { at: at(7) });
        assert!(e.state.as_ref().unwrap().download_check(at(8), 7).is_err());
        assert_eq!(
            e.decide(ExportCommand::CleanFiles { at: at(9) }),
            Err(ExportError::AlreadyCleaned)
        );
    }

    #[test]
    fn filtered_tables_wait_for_their_subsets_and_a_retry_asks_again() {
        let c = Some(Uuid::from_u128(5));
        let mut e = Export::default();
        let events = run(
            &mut e,
            ExportCommand::Request {
                export: request(vec![
                    table("person", c, false),
                    table("condition_occurrence", c, true),
                ]),
                at: at(0),
            },
        );
        assert_eq!(events.len(), 1, "not validated before its subset exists");
        assert_eq!(
            e.decide(ExportCommand::ClaimSubmission { at: at(1) }),
            Err(ExportError::WrongStatus("new"))
        );
        let subset = Uuid::from_u128(77);
        run(
            &mut e,
            ExportCommand::LinkSubset {
                table: 1,
                cohort: subset,
                at: at(1),
            },
        );
        assert!(
            e.decide(ExportCommand::LinkSubset {
                table: 1,
                cohort: subset,
                at: at(2)
            })
            .unwrap()
            .is_empty(),
            "linking twice is idempotent"
        );
        run(
            &mut e,
            ExportCommand::Fail {
                message: "subset failed".into(),
                at: at(3),
            },
        );
        run(
            &mut e,
            ExportCommand::Retry {
                by: "admin".into(),
                at: at(4),
            },
        );
        let s = e.state.as_ref().unwrap();
        assert_eq!(s.status, JobStatus::New);
        assert!(s.retried && s.fail_msg.is_none());
        assert_eq!(s.tables[1].subset_cohort, None, "a new subset is requested");
        run(
            &mut e,
            ExportCommand::Validate {
                subset_group_ids: vec![(1, "2000002".into())],
                at: at(5),
            },
        );
        let s = e.state.as_ref().unwrap();
        assert!(s.validated);
        assert_eq!(s.tables[1].cohort_group_id(), Some("2000002"));
        assert_eq!(s.tables[0].cohort_group_id(), Some("1000001"));
    }

    fn rights(nominative: bool, pseudo: bool, csv: bool) -> DataRights {
        DataRights {
            perimeter_id: 1,
            right_read_patient_nominative: nominative,
            right_read_patient_pseudonymized: pseudo,
            right_search_patients_by_ipp: false,
            right_search_opposed_patients: false,
            right_export_csv_xlsx_nominative: csv,
            right_export_jupyter_nominative: false,
            right_export_jupyter_pseudonymized: pseudo,
        }
    }

    #[test]
    fn permission_follows_format_and_mode() {
        let mut r = Rights::default();
        assert!(matches!(
            check_permission(ExportFormat::Csv, true, &r),
            Err(ExportRefusal::Forbidden(_))
        ));
        r.right_export_csv_xlsx_nominative = true;
        assert!(check_permission(ExportFormat::Xlsx, true, &r).is_ok());
        assert!(
            check_permission(ExportFormat::Csv, false, &r).is_err(),
            "pseudonymized CSV is always refused"
        );
        assert!(check_permission(ExportFormat::Hive, false, &r).is_err());
        r.right_export_jupyter_pseudonymized = true;
        assert!(check_permission(ExportFormat::Hive, false, &r).is_ok());
        assert!(check_permission(ExportFormat::Hive, true, &r).is_err());
    }

    #[test]
    fn every_perimeter_must_be_readable_in_the_mode_and_exportable() {
        let ok = vec![("1".to_string(), Some(rights(true, false, true)))];
        assert!(check_perimeter_rights(ExportFormat::Csv, true, &ok).is_ok());
        let unreadable = vec![
            ("1".to_string(), Some(rights(true, false, true))),
            ("2".to_string(), Some(rights(false, false, false))),
        ];
        let err = check_perimeter_rights(ExportFormat::Csv, true, &unreadable).unwrap_err();
        assert!(err.to_string().contains("perimeter 2"), "{err}");
        let pseudo_only = vec![("1".to_string(), Some(rights(false, true, true)))];
        assert!(check_perimeter_rights(ExportFormat::Csv, true, &pseudo_only).is_err());
        assert!(check_perimeter_rights(ExportFormat::Hive, false, &pseudo_only).is_ok());
        let no_flag = vec![("1".to_string(), Some(rights(true, false, false)))];
        assert!(check_perimeter_rights(ExportFormat::Csv, true, &no_flag).is_err());
        assert!(check_perimeter_rights(ExportFormat::Csv, true, &[("9".into(), None)]).is_err());
        assert!(check_perimeter_rights(ExportFormat::Csv, true, &[]).is_err());
    }

    #[test]
    fn table_rules() {
        let mine = Uuid::from_u128(5);
        let other = Uuid::from_u128(6);
        let cohort = |id, owner: &str, status| CohortFacts {
            id,
            owner: owner.into(),
            status,
            is_subset: false,
            group_id: Some("1".into()),
        };
        let cohorts = [
            cohort(mine, "u1", JobStatus::Finished),
            cohort(other, "u1", JobStatus::Finished),
        ];
        let check = |format, tables: Vec<ExportTable>, person| {
            check_tables(format, "u1", &tables, &cohorts, person)
        };
        assert!(
            check(
                ExportFormat::Csv,
                vec![table("person", Some(mine), false)],
                true
            )
            .is_ok()
        );
        assert!(check(ExportFormat::Csv, vec![], false).is_err());
        assert!(
            check(
                ExportFormat::Csv,
                vec![
                    table("person", Some(mine), false),
                    table("note", Some(other), false)
                ],
                false
            )
            .is_err(),
            "CSV tables must name one cohort"
        );
        assert!(
            check(
                ExportFormat::Hive,
                vec![
                    table("person", Some(mine), false),
                    table("note", Some(other), false)
                ],
                false
            )
            .is_ok(),
            "Hive tables may name several"
        );
        assert!(
            check(
                ExportFormat::Hive,
                vec![
                    table("person", None, false),
                    table("note", Some(mine), false)
                ],
                false
            )
            .is_err(),
            "Hive's person table needs a cohort"
        );
        let mut filtered_without_cohort = table("condition_occurrence", None, true);
        filtered_without_cohort.source_group_id = None;
        assert!(
            check(
                ExportFormat::Csv,
                vec![table("person", Some(mine), false), filtered_without_cohort],
                false
            )
            .is_err()
        );
        assert!(
            check(
                ExportFormat::Csv,
                vec![table("note", Some(mine), false)],
                true
            )
            .is_err()
        );
        assert!(check(ExportFormat::Csv, vec![table("person", None, false)], false).is_err());
        let foreign = [CohortFacts {
            owner: "u2".into(),
            ..cohorts[0].clone()
        }];
        assert!(
            check_tables(
                ExportFormat::Csv,
                "u1",
                &[table("person", Some(mine), false)],
                &foreign,
                false
            )
            .is_err()
        );
        let running = [cohort(mine, "u1", JobStatus::Pending)];
        assert!(
            check_tables(
                ExportFormat::Csv,
                "u1",
                &[table("person", Some(mine), false)],
                &running,
                false
            )
            .is_err()
        );
    }

    #[test]
    fn derived_fields() {
        assert_eq!(clean_motivation("a\nb\r\nc"), "a - b - c");
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:11:12.345678Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(target_name("alice", t), "alice_20261201_101112345678");
    }
}
