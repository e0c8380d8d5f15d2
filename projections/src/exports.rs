//! Read models of exports, their statistics, datalabs and infrastructure providers, as upstream's
//! `/exports/…` serves them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::export::ExportState;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Page, ReadError, SortKey, Window};

/// Name of the projection (and of its schema).
pub const PROJECTION: &str = "exports";

/// An export in `/exports/` lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportListItem {
    pub uuid: Uuid,
    pub owner: String,
    pub output_format: String,
    pub motivation: Option<String>,
    /// The exported cohort's group id.
    pub cohort_id: Option<String>,
    pub cohort_name: Option<String>,
    pub patients_count: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub request_job_status: String,
    pub target_datalab: Option<String>,
    pub target_name: String,
}

/// The full export (`/exports/{uuid}/`, and lists with `return_full_objects=true`).
pub fn export_view(s: &ExportState, keep_days: i64) -> Value {
    let tables: Vec<Value> = s
        .tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "table_name": t.name,
                "columns": t.columns,
                "respect_table_relationships": t.respect_table_relationships,
                "cohort_result_source": t.source_cohort,
                "cohort_result_source_group_id": t.source_group_id,
                "fhir_filter": t.filter.as_ref().map(|f| f.id),
                "fhir_filter_resource": t.filter.as_ref().map(|f| f.resource.clone()),
                "cohort_result_subset": t.subset_cohort,
                "cohort_result_subset_group_id": t.subset_group_id,
                "pivot_merge": t.pivot_merge,
                "pivot_merge_columns": t.pivot_merge_columns,
                "pivot_merge_ids": t.pivot_merge_ids,
            })
        })
        .collect();
    let duration = match (s.started_at, s.finished_at) {
        (Some(a), Some(b)) => Some((b - a).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    json!({
        "uuid": s.id,
        "owner": s.owner,
        "output_format": s.output_format.as_str(),
        "nominative": s.nominative,
        "datalab": s.datalab,
        "target_datalab": s.datalab_name,
        "target_name": s.target_name,
        "target_location": s.target_location,
        "target_full_path": s.target_full_path(),
        "shift_dates": s.shift_dates,
        "group_tables": s.group_tables,
        "motivation": s.motivation,
        "export_tables": tables,
        "request_job_id": s.task_id,
        "request_job_status": s.status.as_str(),
        "request_job_fail_msg": s.fail_msg,
        "request_job_duration": duration,
        "retried": s.retried,
        "relaunched_from": s.relaunched_from,
        "is_user_notified": s.status == domain::job::JobStatus::Finished,
        "created_at": s.requested_at,
        "modified_at": s.modified_at,
        "finished_at": s.finished_at,
        "downloadable_until": if s.output_format.is_file() { s.downloadable_until(keep_days) } else { None },
        "clean_datetime": s.cleaned_at,
        "cohort_id": s.group_id(),
    })
}

/// Filters of `/exports/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportFilter {
    /// Only this owner's exports (everyone but full admins).
    pub owner: Option<String>,
    pub output_format: Option<String>,
    pub statuses: Vec<String>,
    pub motivation: Option<String>,
    /// Case-insensitive "contains" over the target name, the motivation and the cohort's name.
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Orderings `/exports/` accepts.
pub const EXPORT_ORDERINGS: &[(&str, &str)] = &[
    ("created_at", "e.created_at"),
    ("modified_at", "e.modified_at"),
    ("output_format", "e.output_format"),
    ("status", "e.status"),
    ("patients_count", "c.result_size"),
    ("owner", "e.owner"),
];

/// A statistic of a finished export (`/exports/export-stats/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ExportStatView {
    pub export: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub export_target: String,
}

/// Filters of `/exports/export-stats/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatFilter {
    pub owner: Option<String>,
    pub export: Option<Uuid>,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub export_target_name: Option<String>,
}

/// An infrastructure provider.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ProviderView {
    pub uuid: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

/// The provider embedded in a datalab.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ProviderRef {
    pub uuid: Uuid,
    pub name: String,
}

/// A datalab.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DatalabView {
    pub uuid: Uuid,
    pub name: String,
    pub infrastructure_provider: ProviderRef,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

/// A cohort that may be exported (`/exports/cohorts/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ExportableCohort {
    pub uuid: Uuid,
    pub owner: String,
    pub name: String,
    pub group_id: Option<String>,
    pub result_size: Option<i64>,
}

/// Reads the exports read model.
#[async_trait]
pub trait ExportReader: Send + Sync {
    async fn exports(
        &self,
        filter: &ExportFilter,
        window: Window,
    ) -> Result<Page<(ExportListItem, ExportState)>, ReadError>;
    async fn export(&self, id: Uuid) -> Result<Option<ExportState>, ReadError>;
    async fn stats(
        &self,
        filter: &StatFilter,
        window: Window,
    ) -> Result<Page<ExportStatView>, ReadError>;
    async fn providers(&self, window: Window) -> Result<Page<ProviderView>, ReadError>;
    async fn provider(&self, id: Uuid) -> Result<Option<ProviderView>, ReadError>;
    async fn datalabs(
        &self,
        name: Option<&str>,
        provider: Option<Uuid>,
        window: Window,
    ) -> Result<Page<DatalabView>, ReadError>;
    async fn datalab(&self, id: Uuid) -> Result<Option<DatalabView>, ReadError>;
    /// Finished cohorts of `owner` that are not export subsets.
    async fn exportable_cohorts(
        &self,
        owner: &str,
        window: Window,
    ) -> Result<Page<ExportableCohort>, ReadError>;
}
