//! Owner-scoped queries of the `workspace` read model, and the lookups the command side needs.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::ports::{PortError, WorkspaceDirectory};
use projections::workspace::{
    FolderFilter, FolderRef, FolderView, RequestFilter, RequestView, SnapshotFilter,
    SnapshotSummary, SnapshotView, WorkspaceReader,
};
use projections::{Page, ReadError, SortKey, Window};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::sql::{by_primary_key, contains_pattern, push_window, read_error};

/// Reads the workspace schema.
#[derive(Debug, Clone)]
pub struct PgWorkspace {
    pool: PgPool,
}

impl PgWorkspace {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn push_order(
    qb: &mut QueryBuilder<'_, Postgres>,
    prefix: &str,
    ordering: &[SortKey],
    default: &str,
) {
    qb.push(" ORDER BY ");
    if ordering.is_empty() {
        qb.push(default);
    } else {
        for (i, key) in ordering.iter().enumerate() {
            if i > 0 {
                qb.push(", ");
            }
            // Column names come from the fixed allow-lists in `projections`, never from the client.
            qb.push(format!(
                "{prefix}{} {}",
                key.column,
                if key.descending { "DESC" } else { "ASC" }
            ));
        }
    }
    qb.push(format!(", {prefix}uuid ASC"));
}

#[derive(sqlx::FromRow)]
struct FolderRow {
    uuid: Uuid,
    owner: String,
    name: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    requests_count: i64,
}

impl From<FolderRow> for FolderView {
    fn from(r: FolderRow) -> Self {
        FolderView {
            uuid: r.uuid,
            owner: r.owner,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            modified_at: r.modified_at,
            deleted: None,
            requests_count: r.requests_count,
        }
    }
}

const FOLDER_SELECT: &str = "SELECT f.uuid, f.owner, f.name, f.description, f.created_at, f.modified_at,
        (SELECT count(*) FROM workspace.requests r WHERE r.parent_folder = f.uuid AND r.deleted_at IS NULL) AS requests_count
   FROM workspace.folders f";

/// `select` (from `table` as `alias`) reading one live row of an owner, found by its primary
/// key first: `$1` its uuid, `$2` the owner.
fn live_of_owner(select: &str, table: &str, alias: &str) -> String {
    format!(
        "{} WHERE {alias}.owner = $2 AND {alias}.deleted_at IS NULL",
        by_primary_key(select, table, alias).with_first_bind()
    )
}

/// The statement reading one live folder of an owner: `$1` its uuid, `$2` the owner.
pub fn folder_lookup_sql() -> &'static str {
    static SQL: LazyLock<String> =
        LazyLock::new(|| live_of_owner(FOLDER_SELECT, "workspace.folders", "f"));
    &SQL
}

fn push_folder_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    owner: &'a str,
    filter: &'a FolderFilter,
) {
    qb.push(" WHERE f.deleted_at IS NULL AND f.owner = ")
        .push_bind(owner);
    if let Some(name) = &filter.name {
        qb.push(" AND f.name ILIKE ")
            .push_bind(contains_pattern(name));
    }
    if let Some(min) = filter.min_created_at {
        qb.push(" AND f.created_at >= ").push_bind(min);
    }
    if let Some(max) = filter.max_created_at {
        qb.push(" AND f.created_at <= ").push_bind(max);
    }
    if let Some(search) = &filter.search {
        qb.push(" AND f.name ~* ").push_bind(search.as_str());
    }
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    uuid: Uuid,
    owner: String,
    name: String,
    description: Option<String>,
    favorite: bool,
    parent_folder: Uuid,
    folder_name: Option<String>,
    folder_description: Option<String>,
    shared_by: Option<String>,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const REQUEST_SELECT: &str =
    "SELECT r.uuid, r.owner, r.name, r.description, r.favorite, r.parent_folder,
        f.name AS folder_name, f.description AS folder_description, r.shared_by,
        r.created_at, r.modified_at, r.updated_at
   FROM workspace.requests r LEFT JOIN workspace.folders f ON f.uuid = r.parent_folder";

/// The statement reading one live request of an owner: `$1` its uuid, `$2` the owner.
pub fn request_lookup_sql() -> &'static str {
    static SQL: LazyLock<String> =
        LazyLock::new(|| live_of_owner(REQUEST_SELECT, "workspace.requests", "r"));
    &SQL
}

fn push_request_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    owner: &'a str,
    filter: &'a RequestFilter,
) {
    qb.push(" WHERE r.deleted_at IS NULL AND r.owner = ")
        .push_bind(owner);
    if let Some(favorite) = filter.favorite {
        qb.push(" AND r.favorite = ").push_bind(favorite);
    }
    if let Some(shared_by) = &filter.shared_by {
        qb.push(" AND r.shared_by = ").push_bind(shared_by.as_str());
    }
    if let Some(folder) = filter.parent_folder {
        qb.push(" AND r.parent_folder = ").push_bind(folder);
    }
    if let Some(min) = filter.min_updated_at {
        qb.push(" AND r.updated_at >= ").push_bind(min);
    }
    if let Some(max) = filter.max_updated_at {
        qb.push(" AND r.updated_at <= ").push_bind(max);
    }
    if let Some(search) = &filter.search {
        qb.push(" AND (r.name ~* ")
            .push_bind(search.as_str())
            .push(" OR coalesce(r.description, '') ~* ")
            .push_bind(search.as_str())
            .push(")");
    }
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    request: Uuid,
    uuid: Uuid,
    name: Option<String>,
    created_at: DateTime<Utc>,
    version: i32,
    cohorts_count: i64,
    patients_count: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    uuid: Uuid,
    owner: String,
    name: Option<String>,
    version: i32,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    request: Uuid,
    previous_snapshot: Option<Uuid>,
    serialized_query: String,
    perimeters_ids: Vec<String>,
    shared_by: Option<String>,
}

impl From<SnapshotRow> for SnapshotView {
    fn from(r: SnapshotRow) -> Self {
        SnapshotView {
            uuid: r.uuid,
            owner: r.owner,
            name: r.name,
            version: r.version,
            created_at: r.created_at,
            modified_at: r.modified_at,
            request: r.request,
            previous_snapshot: r.previous_snapshot,
            serialized_query: r.serialized_query,
            perimeters_ids: r.perimeters_ids,
            shared_by: r.shared_by,
            dated_measures: Vec::new(),
            cohort_results: Vec::new(),
        }
    }
}

const SNAPSHOT_SELECT: &str =
    "SELECT s.uuid, s.owner, s.name, s.version, s.created_at, s.modified_at, s.request,
        s.previous_snapshot, s.serialized_query, s.perimeters_ids, s.shared_by
   FROM workspace.query_snapshots s";

/// The statement reading one live query snapshot of an owner: `$1` its uuid, `$2` the owner.
pub fn snapshot_lookup_sql() -> &'static str {
    static SQL: LazyLock<String> =
        LazyLock::new(|| live_of_owner(SNAPSHOT_SELECT, "workspace.query_snapshots", "s"));
    &SQL
}

fn push_snapshot_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    owner: &'a str,
    filter: &'a SnapshotFilter,
) {
    qb.push(" WHERE s.deleted_at IS NULL AND s.owner = ")
        .push_bind(owner);
    if let Some(request) = filter.request {
        qb.push(" AND s.request = ").push_bind(request);
    }
    if let Some(name) = &filter.name {
        qb.push(" AND s.name ILIKE ")
            .push_bind(contains_pattern(name));
    }
    if let Some(shared_by) = &filter.shared_by {
        qb.push(" AND s.shared_by = ").push_bind(shared_by.as_str());
    }
    if let Some(previous) = filter.previous_snapshot {
        qb.push(" AND s.previous_snapshot = ").push_bind(previous);
    }
    if let Some(folder) = filter.request_parent_folder {
        qb.push(" AND s.request IN (SELECT uuid FROM workspace.requests WHERE parent_folder = ")
            .push_bind(folder)
            .push(")");
    }
}

/// What distinguishes one list query from another.
struct List<'a> {
    /// `FROM` target with its alias, for the count.
    table: &'static str,
    /// The row query up to its WHERE clause.
    select: &'static str,
    /// Alias prefix of the ordering columns (`f.`).
    prefix: &'static str,
    ordering: &'a [SortKey],
    default_order: &'static str,
    window: Window,
}

impl PgWorkspace {
    /// One page of a list: the count of matches, then the window of rows in order. `filter`
    /// pushes the WHERE clause onto both queries, so they always agree.
    async fn page<'a, R>(
        &self,
        list: List<'a>,
        filter: impl Fn(&mut QueryBuilder<'a, Postgres>),
    ) -> Result<(i64, Vec<R>), ReadError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut count_qb = QueryBuilder::new(format!("SELECT count(*) FROM {}", list.table));
        filter(&mut count_qb);
        let count = count_qb
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(read_error)?;
        let mut qb = QueryBuilder::new(list.select);
        filter(&mut qb);
        push_order(&mut qb, list.prefix, list.ordering, list.default_order);
        push_window(&mut qb, list.window);
        let rows = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        Ok((count, rows))
    }

    async fn with_snapshots(&self, rows: Vec<RequestRow>) -> Result<Vec<RequestView>, ReadError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.uuid).collect();
        let summaries: Vec<SummaryRow> = sqlx::query_as(
            // patients_count: the newest count of the snapshot (global estimates aside).
            "SELECT s.request, s.uuid, s.name, s.created_at, s.version,
                    (SELECT count(*) FROM cohorts.cohorts c
                      WHERE c.request_query_snapshot = s.uuid AND c.deleted_at IS NULL
                        AND NOT c.is_subset) AS cohorts_count,
                    (SELECT d.measure FROM cohorts.dated_measures d
                      WHERE d.request_query_snapshot = s.uuid AND d.mode = 'Snapshot'
                      ORDER BY d.created_at DESC LIMIT 1) AS patients_count
               FROM workspace.query_snapshots s
              WHERE s.request = ANY($1) AND s.deleted_at IS NULL
              ORDER BY s.created_at DESC, s.version DESC",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        let mut by_request: HashMap<Uuid, Vec<SnapshotSummary>> = HashMap::new();
        for s in summaries {
            by_request
                .entry(s.request)
                .or_default()
                .push(SnapshotSummary {
                    uuid: s.uuid,
                    name: s.name,
                    created_at: s.created_at,
                    version: s.version,
                    cohorts_count: s.cohorts_count,
                    patients_count: s.patients_count,
                });
        }
        Ok(rows
            .into_iter()
            .map(|r| RequestView {
                query_snapshots: by_request.remove(&r.uuid).unwrap_or_default(),
                uuid: r.uuid,
                owner: r.owner,
                name: r.name,
                description: r.description,
                favorite: r.favorite,
                parent_folder: FolderRef {
                    uuid: r.parent_folder,
                    name: r.folder_name.unwrap_or_default(),
                    description: r.folder_description,
                },
                shared_by: r.shared_by,
                created_at: r.created_at,
                modified_at: r.modified_at,
                updated_at: r.updated_at,
                deleted: None,
            })
            .collect())
    }
}

#[async_trait]
impl WorkspaceReader for PgWorkspace {
    async fn list_folders(
        &self,
        owner: &str,
        filter: &FolderFilter,
        window: Window,
    ) -> Result<Page<FolderView>, ReadError> {
        let list = List {
            table: "workspace.folders f",
            select: FOLDER_SELECT,
            prefix: "f.",
            ordering: &filter.ordering,
            default_order: "f.created_at DESC",
            window,
        };
        let (count, rows): (i64, Vec<FolderRow>) = self
            .page(list, |qb| push_folder_where(qb, owner, filter))
            .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(FolderView::from).collect(),
        })
    }

    async fn folder(&self, owner: &str, id: Uuid) -> Result<Option<FolderView>, ReadError> {
        let row: Option<FolderRow> = sqlx::query_as(folder_lookup_sql())
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(FolderView::from))
    }

    async fn list_requests(
        &self,
        owner: &str,
        filter: &RequestFilter,
        window: Window,
    ) -> Result<Page<RequestView>, ReadError> {
        let list = List {
            table: "workspace.requests r",
            select: REQUEST_SELECT,
            prefix: "r.",
            ordering: &filter.ordering,
            default_order: "r.updated_at DESC",
            window,
        };
        let (count, rows): (i64, Vec<RequestRow>) = self
            .page(list, |qb| push_request_where(qb, owner, filter))
            .await?;
        Ok(Page {
            count,
            results: self.with_snapshots(rows).await?,
        })
    }

    async fn request(&self, owner: &str, id: Uuid) -> Result<Option<RequestView>, ReadError> {
        let rows: Vec<RequestRow> = sqlx::query_as(request_lookup_sql())
            .bind(id)
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(self.with_snapshots(rows).await?.pop())
    }

    async fn list_snapshots(
        &self,
        owner: &str,
        filter: &SnapshotFilter,
        window: Window,
    ) -> Result<Page<SnapshotView>, ReadError> {
        let list = List {
            table: "workspace.query_snapshots s",
            select: SNAPSHOT_SELECT,
            prefix: "s.",
            ordering: &filter.ordering,
            default_order: "s.created_at DESC",
            window,
        };
        let (count, rows): (i64, Vec<SnapshotRow>) = self
            .page(list, |qb| push_snapshot_where(qb, owner, filter))
            .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(SnapshotView::from).collect(),
        })
    }

    async fn snapshot(&self, owner: &str, id: Uuid) -> Result<Option<SnapshotView>, ReadError> {
        let row: Option<SnapshotRow> = sqlx::query_as(snapshot_lookup_sql())
            .bind(id)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(SnapshotView::from))
    }
}

#[async_trait]
impl WorkspaceDirectory for PgWorkspace {
    async fn request_of_snapshot(&self, snapshot: Uuid) -> Result<Option<Uuid>, PortError> {
        sqlx::query_scalar("SELECT request FROM workspace.query_snapshots WHERE uuid = $1")
            .bind(snapshot)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| PortError(e.to_string()))
    }

    async fn requests_in_folder(&self, folder: Uuid) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM workspace.requests WHERE parent_folder = $1 AND deleted_at IS NULL",
        )
        .bind(folder)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| PortError(e.to_string()))
    }

    async fn unknown_users(&self, usernames: &[String]) -> Result<Vec<String>, PortError> {
        sqlx::query_scalar(
            "SELECT name FROM unnest($1::text[]) AS name
              WHERE NOT EXISTS (SELECT 1 FROM identity.users u WHERE u.username = name)
              ORDER BY name",
        )
        .bind(usernames)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| PortError(e.to_string()))
    }
}
