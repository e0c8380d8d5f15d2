//! The `cohorts` read model: counts (dated measures) and cohorts, as the API serves them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Page, ReadError, SortKey, Window};

/// Name of the projection and of its schema.
pub const PROJECTION: &str = "cohorts";

/// `ordering=` names of the cohort list and their columns.
pub const COHORT_ORDERING: &[(&str, &str)] = &[
    ("created_at", "c.created_at"),
    ("modified_at", "c.modified_at"),
    ("name", "c.name"),
    ("result_size", "c.result_size"),
    ("favorite", "c.favorite"),
    ("request", "r.name"),
    ("request__name", "r.name"),
    ("status", "c.request_job_status"),
    ("request_job_status", "c.request_job_status"),
];

/// `ordering=` names of the dated-measure list.
pub const DATED_MEASURE_ORDERING: &[(&str, &str)] = &[
    ("created_at", "d.created_at"),
    ("modified_at", "d.modified_at"),
    ("measure", "d.measure"),
];

/// One count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatedMeasureView {
    pub uuid: Uuid,
    pub owner: String,
    pub request: Uuid,
    pub request_query_snapshot: Uuid,
    pub measure: Option<i64>,
    pub measure_min: Option<i64>,
    pub measure_max: Option<i64>,
    pub extra: serde_json::Value,
    pub mode: String,
    pub request_job_id: Option<String>,
    pub request_job_status: String,
    pub request_job_fail_msg: Option<String>,
    /// Seconds from the request to the result.
    pub request_job_duration: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

/// A request, as a cohort names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRef {
    pub uuid: Uuid,
    pub name: String,
    pub description: Option<String>,
}

/// A cohort, as a sample names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CohortRef {
    pub uuid: Uuid,
    pub name: String,
}

/// A sample, as its parent lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRef {
    pub uuid: Uuid,
    pub name: String,
    pub sampling_ratio: Option<f64>,
}

/// One cohort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortView {
    pub uuid: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub request: Option<RequestRef>,
    pub request_query_snapshot: Uuid,
    pub dated_measure: Option<Uuid>,
    pub dated_measure_global: Option<Uuid>,
    pub group_id: Option<String>,
    pub result_size: Option<i64>,
    pub measure_min: Option<i64>,
    pub measure_max: Option<i64>,
    pub parent_cohort: Option<CohortRef>,
    pub sampling_ratio: Option<f64>,
    pub sample_cohorts: Vec<SampleRef>,
    pub is_subset: bool,
    pub request_job_id: Option<String>,
    pub request_job_status: String,
    pub request_job_fail_msg: Option<String>,
    pub request_job_duration: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    /// The perimeter cohort ids of the cohort's snapshot (cohort rights are computed on them).
    #[serde(skip)]
    pub perimeters_ids: Vec<String>,
}

/// Filters of the cohort list (upstream's names).
#[derive(Debug, Clone, Default)]
pub struct CohortFilter {
    pub name: Option<String>,
    pub min_result_size: Option<i64>,
    pub max_result_size: Option<i64>,
    pub min_created_at: Option<DateTime<Utc>>,
    pub max_created_at: Option<DateTime<Utc>>,
    pub request_id: Option<Uuid>,
    pub favorite: Option<bool>,
    pub group_id: Vec<String>,
    pub status: Vec<String>,
    pub parent_cohort: Option<Uuid>,
    pub is_sample: Option<bool>,
    /// `Some((true, limit))`: result size known and at most `limit`.
    pub exportable: Option<(bool, i64)>,
    /// Case-insensitive regular expression over name and description.
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Filters of the dated-measure list.
#[derive(Debug, Clone, Default)]
pub struct DatedMeasureFilter {
    pub request_query_snapshot: Option<Uuid>,
    pub request: Option<Uuid>,
    pub status: Vec<String>,
    pub ordering: Vec<SortKey>,
}

/// `ordering=` names of the saved-filter list.
pub const FHIR_FILTER_ORDERING: &[(&str, &str)] = &[
    ("name", "f.name"),
    ("created_at", "f.created_at"),
    ("modified_at", "f.modified_at"),
    ("fhir_resource", "f.fhir_resource"),
];

/// One saved FHIR filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FhirFilterView {
    pub uuid: Uuid,
    pub owner: String,
    pub fhir_resource: String,
    pub fhir_version: String,
    pub query_version: String,
    pub name: String,
    pub filter: String,
    pub identifying: bool,
    pub auto_generated: bool,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

/// Filters of the saved-filter list (auto-generated filters are never listed).
#[derive(Debug, Clone, Default)]
pub struct FhirFilterQuery {
    pub name: Option<String>,
    pub fhir_resource: Option<String>,
    /// Contained in the filter text.
    pub fhir_filter: Option<String>,
    pub query_version: Option<String>,
    pub identifying: Option<bool>,
    pub ordering: Vec<SortKey>,
}

/// One feasibility study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StudyView {
    pub uuid: Uuid,
    pub owner: String,
    pub request_query_snapshot: Uuid,
    pub total_count: Option<i64>,
    pub request_job_status: String,
    pub request_job_fail_msg: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// One refresh schedule, with what its newest run gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub uuid: Uuid,
    pub owner: String,
    pub request_snapshot: Uuid,
    /// `HH:MM:SS`, UTC.
    pub refresh_time: String,
    pub refresh_frequency: String,
    pub notify_owner: bool,
    pub next_refresh: DateTime<Utc>,
    pub last_refresh: Option<DateTime<Utc>>,
    /// `None` while the newest run's count is still running (or before any run).
    pub last_refresh_succeeded: Option<bool>,
    pub last_refresh_count: Option<i64>,
    pub last_refresh_error_msg: Option<String>,
    pub last_refresh_dated_measure: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

/// Filters of the schedule list.
#[derive(Debug, Clone, Default)]
pub struct ScheduleFilter {
    pub request_snapshot: Option<Uuid>,
    pub refresh_time: Option<String>,
    pub refresh_frequency: Option<String>,
}

/// Who reads: a user sees their own objects; the executor and the ETL see all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader<'a> {
    Owner(&'a str),
    Everyone,
}

impl<'a> Reader<'a> {
    /// The owner to filter on, if any.
    pub fn owner(self) -> Option<&'a str> {
        match self {
            Reader::Owner(o) => Some(o),
            Reader::Everyone => None,
        }
    }
}

/// Reads of the cohorts read model.
#[async_trait]
pub trait CohortReader: Send + Sync {
    async fn list_dated_measures(
        &self,
        reader: Reader<'_>,
        filter: &DatedMeasureFilter,
        window: Window,
    ) -> Result<Page<DatedMeasureView>, ReadError>;
    async fn dated_measure(
        &self,
        reader: Reader<'_>,
        id: Uuid,
    ) -> Result<Option<DatedMeasureView>, ReadError>;
    async fn list_cohorts(
        &self,
        reader: Reader<'_>,
        filter: &CohortFilter,
        window: Window,
    ) -> Result<Page<CohortView>, ReadError>;
    async fn cohort(&self, reader: Reader<'_>, id: Uuid) -> Result<Option<CohortView>, ReadError>;
    /// The counts and (non-subset, live) cohorts of the given snapshots, newest first.
    async fn of_snapshots(
        &self,
        snapshots: &[Uuid],
    ) -> Result<(Vec<DatedMeasureView>, Vec<CohortView>), ReadError>;
    async fn list_fhir_filters(
        &self,
        owner: &str,
        query: &FhirFilterQuery,
        window: Window,
    ) -> Result<Page<FhirFilterView>, ReadError>;
    async fn fhir_filter(&self, owner: &str, id: Uuid)
    -> Result<Option<FhirFilterView>, ReadError>;
    async fn list_studies(
        &self,
        reader: Reader<'_>,
        window: Window,
    ) -> Result<Page<StudyView>, ReadError>;
    async fn study(&self, reader: Reader<'_>, id: Uuid) -> Result<Option<StudyView>, ReadError>;
    async fn list_schedules(
        &self,
        owner: &str,
        filter: &ScheduleFilter,
        window: Window,
    ) -> Result<Page<ScheduleView>, ReadError>;
    async fn schedule(&self, owner: &str, id: Uuid) -> Result<Option<ScheduleView>, ReadError>;
    /// Cohorts (of everyone) whose job is new, validated, pending or started.
    async fn active_jobs(&self) -> Result<i64, ReadError>;
}
