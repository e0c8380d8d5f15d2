//! The `workspace` read model: folders, requests and query snapshots, as the API serves them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Page, ReadError, SortKey, Window};

/// Name of the projection (checkpoint, `rebuild workspace`, status output).
pub const PROJECTION: &str = "workspace";

/// Public `ordering` names of each list, and the column behind each.
pub const FOLDER_ORDERING: &[(&str, &str)] = &[
    ("name", "name"),
    ("created_at", "created_at"),
    ("modified_at", "modified_at"),
];
pub const REQUEST_ORDERING: &[(&str, &str)] = &[
    ("name", "name"),
    ("updated_at", "updated_at"),
    ("parent_folder", "parent_folder"),
    ("created_at", "created_at"),
    ("modified_at", "modified_at"),
];
pub const SNAPSHOT_ORDERING: &[(&str, &str)] = &[
    ("name", "name"),
    ("version", "version"),
    ("created_at", "created_at"),
    ("modified_at", "modified_at"),
];

/// A folder (`/cohort/folders/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FolderView {
    pub uuid: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub deleted: Option<DateTime<Utc>>,
    pub requests_count: i64,
}

/// The folder of a request, as embedded in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FolderRef {
    pub uuid: Uuid,
    pub name: String,
    pub description: Option<String>,
}

/// A snapshot as embedded in its request (`query_snapshots`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotSummary {
    pub uuid: Uuid,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub version: i32,
    /// Cohorts created from this snapshot (always 0 until the cohort lifecycle lands).
    pub cohorts_count: i64,
    /// Measure of the newest count of this snapshot (null until counts land).
    pub patients_count: Option<i64>,
}

/// A request (`/cohort/requests/`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestView {
    pub uuid: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub parent_folder: FolderRef,
    pub shared_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted: Option<DateTime<Utc>>,
    /// Newest first.
    pub query_snapshots: Vec<SnapshotSummary>,
}

/// A query snapshot (`/cohort/request-query-snapshots/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub uuid: Uuid,
    pub owner: String,
    pub name: Option<String>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
    pub request: Uuid,
    pub previous_snapshot: Option<Uuid>,
    pub serialized_query: String,
    pub perimeters_ids: Vec<String>,
    pub shared_by: Option<String>,
    /// Counts of this snapshot, newest first.
    pub dated_measures: Vec<serde_json::Value>,
    /// Cohorts of this snapshot, newest first.
    pub cohort_results: Vec<serde_json::Value>,
}

/// Filters of the folder list.
#[derive(Debug, Clone, Default)]
pub struct FolderFilter {
    pub name: Option<String>,
    pub min_created_at: Option<DateTime<Utc>>,
    pub max_created_at: Option<DateTime<Utc>>,
    /// Case-insensitive regular expression over the name.
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Filters of the request list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub favorite: Option<bool>,
    pub shared_by: Option<String>,
    pub parent_folder: Option<Uuid>,
    pub min_updated_at: Option<DateTime<Utc>>,
    pub max_updated_at: Option<DateTime<Utc>>,
    /// Case-insensitive regular expression over name and description.
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Filters of the snapshot list.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub request: Option<Uuid>,
    pub name: Option<String>,
    pub shared_by: Option<String>,
    pub previous_snapshot: Option<Uuid>,
    pub request_parent_folder: Option<Uuid>,
    pub ordering: Vec<SortKey>,
}

/// Owner-scoped reads of the workspace read model. Every method takes the caller: other users'
/// objects do not exist for them.
#[async_trait]
pub trait WorkspaceReader: Send + Sync {
    async fn list_folders(
        &self,
        owner: &str,
        filter: &FolderFilter,
        window: Window,
    ) -> Result<Page<FolderView>, ReadError>;
    async fn folder(&self, owner: &str, id: Uuid) -> Result<Option<FolderView>, ReadError>;
    async fn list_requests(
        &self,
        owner: &str,
        filter: &RequestFilter,
        window: Window,
    ) -> Result<Page<RequestView>, ReadError>;
    async fn request(&self, owner: &str, id: Uuid) -> Result<Option<RequestView>, ReadError>;
    async fn list_snapshots(
        &self,
        owner: &str,
        filter: &SnapshotFilter,
        window: Window,
    ) -> Result<Page<SnapshotView>, ReadError>;
    async fn snapshot(&self, owner: &str, id: Uuid) -> Result<Option<SnapshotView>, ReadError>;
}
