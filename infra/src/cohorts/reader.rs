//! Queries of the `cohorts` read model, and the lookups the cohorts service needs.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::feasibility::ReportPerimeters;
use commands::fhir_filters::FhirFilterDirectory;
use commands::ports::{CohortDirectory, PortError, StaleJob};
use commands::refresh::ScheduleDirectory;
use domain::feasibility::ReportPerimeter;
use projections::cohorts::{
    CohortFilter, CohortReader, CohortRef, CohortView, DatedMeasureFilter, DatedMeasureView,
    FhirFilterQuery, FhirFilterView, Reader, RequestRef, SampleRef, ScheduleFilter, ScheduleView,
    StudyView,
};
use projections::{Page, ReadError, Window};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::sql::{KeyFirst, by_primary_key, contains_pattern, fetch_page, push_window, read_error};

/// Reads the cohorts schema.
#[derive(Debug, Clone)]
pub struct PgCohorts {
    pool: PgPool,
}

impl PgCohorts {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct DatedMeasureRow {
    uuid: Uuid,
    owner: String,
    request: Uuid,
    request_query_snapshot: Uuid,
    measure: Option<i64>,
    measure_min: Option<i64>,
    measure_max: Option<i64>,
    extra: serde_json::Value,
    mode: String,
    request_job_id: Option<String>,
    request_job_status: String,
    request_job_fail_msg: Option<String>,
    request_job_duration: Option<f64>,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

impl From<DatedMeasureRow> for DatedMeasureView {
    fn from(r: DatedMeasureRow) -> Self {
        DatedMeasureView {
            uuid: r.uuid,
            owner: r.owner,
            request: r.request,
            request_query_snapshot: r.request_query_snapshot,
            measure: r.measure,
            measure_min: r.measure_min,
            measure_max: r.measure_max,
            extra: r.extra,
            mode: r.mode,
            request_job_id: r.request_job_id,
            request_job_status: r.request_job_status,
            request_job_fail_msg: r.request_job_fail_msg,
            request_job_duration: r.request_job_duration,
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

const DATED_MEASURE_SELECT: &str = "SELECT d.uuid, d.owner, d.request, d.request_query_snapshot,
        d.measure, d.measure_min, d.measure_max, d.extra, d.mode, d.request_job_id,
        d.request_job_status, d.request_job_fail_msg, d.request_job_duration, d.created_at,
        d.modified_at
   FROM cohorts.dated_measures d";

fn push_dated_measure_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    reader: Reader<'a>,
    filter: &'a DatedMeasureFilter,
) {
    qb.push(" WHERE true");
    if let Some(owner) = reader.owner() {
        qb.push(" AND d.owner = ").push_bind(owner);
    }
    if let Some(s) = filter.request_query_snapshot {
        qb.push(" AND d.request_query_snapshot = ").push_bind(s);
    }
    if let Some(r) = filter.request {
        qb.push(" AND d.request = ").push_bind(r);
    }
    if !filter.status.is_empty() {
        qb.push(" AND d.request_job_status = ANY(")
            .push_bind(&filter.status)
            .push(")");
    }
}

#[derive(sqlx::FromRow)]
struct CohortRow {
    uuid: Uuid,
    owner: String,
    name: String,
    description: Option<String>,
    favorite: bool,
    request: Uuid,
    request_name: Option<String>,
    request_description: Option<String>,
    request_query_snapshot: Uuid,
    perimeters_ids: Option<Vec<String>>,
    dated_measure: Option<Uuid>,
    dated_measure_global: Option<Uuid>,
    group_id: Option<String>,
    result_size: Option<i64>,
    measure_min: Option<i64>,
    measure_max: Option<i64>,
    parent_cohort: Option<Uuid>,
    parent_name: Option<String>,
    sampling_ratio: Option<f64>,
    is_subset: bool,
    request_job_id: Option<String>,
    request_job_status: String,
    request_job_fail_msg: Option<String>,
    request_job_duration: Option<f64>,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

impl CohortRow {
    fn into_view(self, sample_cohorts: Vec<SampleRef>) -> CohortView {
        CohortView {
            uuid: self.uuid,
            owner: self.owner,
            name: self.name,
            description: self.description,
            favorite: self.favorite,
            request: self.request_name.map(|name| RequestRef {
                uuid: self.request,
                name,
                description: self.request_description,
            }),
            request_query_snapshot: self.request_query_snapshot,
            dated_measure: self.dated_measure,
            dated_measure_global: self.dated_measure_global,
            group_id: self.group_id,
            result_size: self.result_size,
            measure_min: self.measure_min,
            measure_max: self.measure_max,
            parent_cohort: self.parent_cohort.map(|uuid| CohortRef {
                uuid,
                name: self.parent_name.unwrap_or_default(),
            }),
            sampling_ratio: self.sampling_ratio,
            sample_cohorts,
            is_subset: self.is_subset,
            request_job_id: self.request_job_id,
            request_job_status: self.request_job_status,
            request_job_fail_msg: self.request_job_fail_msg,
            request_job_duration: self.request_job_duration,
            created_at: self.created_at,
            modified_at: self.modified_at,
            perimeters_ids: self.perimeters_ids.unwrap_or_default(),
        }
    }
}

// The result size is the cohort's own (from the executor), else its count's measure.
const COHORT_SELECT: &str = "SELECT c.uuid, c.owner, c.name, c.description, c.favorite,
        c.request, r.name AS request_name, r.description AS request_description,
        c.request_query_snapshot, s.perimeters_ids, c.dated_measure, c.dated_measure_global,
        c.group_id, COALESCE(c.result_size, dm.measure) AS result_size,
        g.measure_min, g.measure_max, c.parent_cohort, p.name AS parent_name, c.sampling_ratio,
        c.is_subset, c.request_job_id, c.request_job_status, c.request_job_fail_msg,
        c.request_job_duration, c.created_at, c.modified_at
   FROM cohorts.cohorts c
   LEFT JOIN workspace.requests r ON r.uuid = c.request
   LEFT JOIN workspace.query_snapshots s ON s.uuid = c.request_query_snapshot
   LEFT JOIN cohorts.dated_measures dm ON dm.uuid = c.dated_measure
   LEFT JOIN cohorts.dated_measures g ON g.uuid = c.dated_measure_global
   LEFT JOIN cohorts.cohorts p ON p.uuid = c.parent_cohort";

const RESULT_SIZE: &str = "COALESCE(c.result_size, dm.measure)";

fn push_cohort_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    reader: Reader<'a>,
    filter: &'a CohortFilter,
) {
    qb.push(" WHERE c.deleted_at IS NULL");
    if let Some(owner) = reader.owner() {
        // Export subsets are the system's, not the user's to list.
        qb.push(" AND NOT c.is_subset AND c.owner = ")
            .push_bind(owner);
    }
    if let Some(name) = &filter.name {
        qb.push(" AND c.name ILIKE ")
            .push_bind(contains_pattern(name));
    }
    if let Some(min) = filter.min_result_size {
        qb.push(format!(" AND {RESULT_SIZE} >= ")).push_bind(min);
    }
    if let Some(max) = filter.max_result_size {
        qb.push(format!(" AND {RESULT_SIZE} <= ")).push_bind(max);
    }
    if let Some(min) = filter.min_created_at {
        qb.push(" AND c.created_at >= ").push_bind(min);
    }
    if let Some(max) = filter.max_created_at {
        qb.push(" AND c.created_at <= ").push_bind(max);
    }
    if let Some(r) = filter.request_id {
        qb.push(" AND c.request = ").push_bind(r);
    }
    if let Some(f) = filter.favorite {
        qb.push(" AND c.favorite = ").push_bind(f);
    }
    if !filter.group_id.is_empty() {
        qb.push(" AND c.group_id = ANY(")
            .push_bind(&filter.group_id)
            .push(")");
    }
    if !filter.status.is_empty() {
        qb.push(" AND c.request_job_status = ANY(")
            .push_bind(&filter.status)
            .push(")");
    }
    if let Some(p) = filter.parent_cohort {
        qb.push(" AND c.parent_cohort = ").push_bind(p);
    }
    match filter.is_sample {
        Some(true) => {
            qb.push(" AND c.parent_cohort IS NOT NULL");
        }
        Some(false) => {
            qb.push(" AND c.parent_cohort IS NULL");
        }
        None => {}
    }
    match filter.exportable {
        Some((true, limit)) => {
            qb.push(format!(
                " AND {RESULT_SIZE} IS NOT NULL AND {RESULT_SIZE} <= "
            ))
            .push_bind(limit);
        }
        Some((false, limit)) => {
            qb.push(format!(" AND ({RESULT_SIZE} IS NULL OR {RESULT_SIZE} > "))
                .push_bind(limit)
                .push(")");
        }
        None => {}
    }
    if let Some(search) = &filter.search {
        qb.push(" AND (c.name ~* ")
            .push_bind(search.as_str())
            .push(" OR COALESCE(c.description, '') ~* ")
            .push_bind(search.as_str())
            .push(")");
    }
}

impl PgCohorts {
    async fn with_samples(&self, rows: Vec<CohortRow>) -> Result<Vec<CohortView>, ReadError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.uuid).collect();
        let samples: Vec<(Uuid, Uuid, String, Option<f64>)> = sqlx::query_as(
            "SELECT parent_cohort, uuid, name, sampling_ratio FROM cohorts.cohorts
              WHERE parent_cohort = ANY($1) AND deleted_at IS NULL ORDER BY created_at",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        let mut by_parent: HashMap<Uuid, Vec<SampleRef>> = HashMap::new();
        for (parent, uuid, name, sampling_ratio) in samples {
            by_parent.entry(parent).or_default().push(SampleRef {
                uuid,
                name,
                sampling_ratio,
            });
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let samples = by_parent.remove(&r.uuid).unwrap_or_default();
                r.into_view(samples)
            })
            .collect())
    }
}

#[async_trait]
impl CohortReader for PgCohorts {
    async fn list_dated_measures(
        &self,
        reader: Reader<'_>,
        filter: &DatedMeasureFilter,
        window: Window,
    ) -> Result<Page<DatedMeasureView>, ReadError> {
        let (count, rows) = fetch_page::<DatedMeasureRow>(
            &self.pool,
            "SELECT count(*) FROM cohorts.dated_measures d",
            DATED_MEASURE_SELECT,
            |qb| push_dated_measure_where(qb, reader, filter),
            (&filter.ordering, "d.created_at DESC", "d.uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn dated_measure(
        &self,
        reader: Reader<'_>,
        id: Uuid,
    ) -> Result<Option<DatedMeasureView>, ReadError> {
        let filter = DatedMeasureFilter::default();
        let mut qb = QueryBuilder::new(DATED_MEASURE_SELECT);
        push_dated_measure_where(&mut qb, reader, &filter);
        qb.push(" AND d.uuid = ").push_bind(id);
        let row: Option<DatedMeasureRow> = qb
            .build_query_as()
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }

    async fn list_cohorts(
        &self,
        reader: Reader<'_>,
        filter: &CohortFilter,
        window: Window,
    ) -> Result<Page<CohortView>, ReadError> {
        let (count, rows) = fetch_page::<CohortRow>(
            &self.pool,
            "SELECT count(*) FROM cohorts.cohorts c
               LEFT JOIN cohorts.dated_measures dm ON dm.uuid = c.dated_measure",
            COHORT_SELECT,
            |qb| push_cohort_where(qb, reader, filter),
            (&filter.ordering, "c.created_at DESC", "c.uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: self.with_samples(rows).await?,
        })
    }

    async fn cohort(&self, reader: Reader<'_>, id: Uuid) -> Result<Option<CohortView>, ReadError> {
        let filter = CohortFilter::default();
        static BY_KEY: LazyLock<KeyFirst> =
            LazyLock::new(|| by_primary_key(COHORT_SELECT, "cohorts.cohorts", "c"));
        let mut qb = BY_KEY.builder(id);
        push_cohort_where(&mut qb, reader, &filter);
        let rows: Vec<CohortRow> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(self.with_samples(rows).await?.into_iter().next())
    }

    async fn of_snapshots(
        &self,
        snapshots: &[Uuid],
    ) -> Result<(Vec<DatedMeasureView>, Vec<CohortView>), ReadError> {
        let mut measures = QueryBuilder::new(DATED_MEASURE_SELECT);
        measures
            .push(" WHERE d.request_query_snapshot = ANY(")
            .push_bind(snapshots)
            .push(") ORDER BY d.created_at DESC");
        let mut cohorts = QueryBuilder::new(COHORT_SELECT);
        cohorts
            .push(
                " WHERE c.deleted_at IS NULL AND NOT c.is_subset AND c.request_query_snapshot = ANY(",
            )
            .push_bind(snapshots)
            .push(") ORDER BY c.created_at DESC");
        // Side by side, on two connections: one round trip of waiting instead of two.
        let (measures, cohorts): (Vec<DatedMeasureRow>, Vec<CohortRow>) = tokio::try_join!(
            measures.build_query_as().fetch_all(&self.pool),
            cohorts.build_query_as().fetch_all(&self.pool),
        )
        .map_err(read_error)?;
        Ok((
            measures.into_iter().map(Into::into).collect(),
            self.with_samples(cohorts).await?,
        ))
    }

    async fn list_fhir_filters(
        &self,
        owner: &str,
        query: &FhirFilterQuery,
        window: Window,
    ) -> Result<Page<FhirFilterView>, ReadError> {
        let (count, rows) = fetch_page::<FhirFilterRow>(
            &self.pool,
            "SELECT count(*) FROM cohorts.fhir_filters f",
            FHIR_FILTER_SELECT,
            |qb| push_fhir_filter_where(qb, owner, query),
            (&query.ordering, "f.created_at DESC", "f.uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn fhir_filter(
        &self,
        owner: &str,
        id: Uuid,
    ) -> Result<Option<FhirFilterView>, ReadError> {
        static BY_KEY: LazyLock<KeyFirst> =
            LazyLock::new(|| by_primary_key(FHIR_FILTER_SELECT, "cohorts.fhir_filters", "f"));
        let mut qb = BY_KEY.builder(id);
        qb.push(" WHERE f.deleted_at IS NULL AND f.owner = ")
            .push_bind(owner);
        let row: Option<FhirFilterRow> = qb
            .build_query_as()
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }

    async fn list_studies(
        &self,
        reader: Reader<'_>,
        window: Window,
    ) -> Result<Page<StudyView>, ReadError> {
        let owner = reader.owner();
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cohorts.feasibility_studies WHERE $1::text IS NULL OR owner = $1",
        )
        .bind(owner)
        .fetch_one(&self.pool)
        .await
        .map_err(read_error)?;
        let mut qb = QueryBuilder::new(STUDY_SELECT);
        qb.push(" WHERE ")
            .push_bind(owner)
            .push("::text IS NULL OR owner = ")
            .push_bind(owner)
            .push(" ORDER BY created_at DESC, uuid");
        push_window(&mut qb, window);
        let rows: Vec<StudyRow> = qb
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn study(&self, reader: Reader<'_>, id: Uuid) -> Result<Option<StudyView>, ReadError> {
        let mut qb = QueryBuilder::new(STUDY_SELECT);
        qb.push(" WHERE uuid = ")
            .push_bind(id)
            .push(" AND (")
            .push_bind(reader.owner())
            .push("::text IS NULL OR owner = ")
            .push_bind(reader.owner())
            .push(")");
        let row: Option<StudyRow> = qb
            .build_query_as()
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }

    async fn list_schedules(
        &self,
        owner: &str,
        filter: &ScheduleFilter,
        window: Window,
    ) -> Result<Page<ScheduleView>, ReadError> {
        let (count, rows) = fetch_page::<ScheduleRow>(
            &self.pool,
            "SELECT count(*) FROM cohorts.refresh_schedules s",
            SCHEDULE_SELECT,
            |qb| push_schedule_where(qb, owner, filter),
            (&[], "s.created_at DESC", "s.uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn schedule(&self, owner: &str, id: Uuid) -> Result<Option<ScheduleView>, ReadError> {
        let filter = ScheduleFilter::default();
        static BY_KEY: LazyLock<KeyFirst> =
            LazyLock::new(|| by_primary_key(SCHEDULE_SELECT, "cohorts.refresh_schedules", "s"));
        let mut qb = BY_KEY.builder(id);
        push_schedule_where(&mut qb, owner, &filter);
        let row: Option<ScheduleRow> = qb
            .build_query_as()
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }

    async fn active_jobs(&self) -> Result<i64, ReadError> {
        sqlx::query_scalar(
            "SELECT count(*) FROM cohorts.cohorts
              WHERE deleted_at IS NULL
                AND request_job_status IN ('new', 'validated', 'pending', 'started')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(read_error)
    }
}

#[derive(sqlx::FromRow)]
struct FhirFilterRow {
    uuid: Uuid,
    owner: String,
    fhir_resource: String,
    fhir_version: String,
    query_version: String,
    name: String,
    filter: String,
    identifying: bool,
    auto_generated: bool,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

impl From<FhirFilterRow> for FhirFilterView {
    fn from(r: FhirFilterRow) -> Self {
        FhirFilterView {
            uuid: r.uuid,
            owner: r.owner,
            fhir_resource: r.fhir_resource,
            fhir_version: r.fhir_version,
            query_version: r.query_version,
            name: r.name,
            filter: r.filter,
            identifying: r.identifying,
            auto_generated: r.auto_generated,
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

const FHIR_FILTER_SELECT: &str = "SELECT f.uuid, f.owner, f.fhir_resource, f.fhir_version,
        f.query_version, f.name, f.filter, f.identifying, f.auto_generated, f.created_at,
        f.modified_at
   FROM cohorts.fhir_filters f";

fn push_fhir_filter_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    owner: &'a str,
    query: &'a FhirFilterQuery,
) {
    qb.push(" WHERE f.deleted_at IS NULL AND NOT f.auto_generated AND f.owner = ")
        .push_bind(owner);
    if let Some(name) = &query.name {
        qb.push(" AND f.name ILIKE ")
            .push_bind(contains_pattern(name));
    }
    if let Some(r) = &query.fhir_resource {
        qb.push(" AND f.fhir_resource = ").push_bind(r.as_str());
    }
    if let Some(text) = &query.fhir_filter {
        qb.push(" AND f.filter ILIKE ")
            .push_bind(contains_pattern(text));
    }
    if let Some(v) = &query.query_version {
        qb.push(" AND f.query_version = ").push_bind(v.as_str());
    }
    if let Some(i) = query.identifying {
        qb.push(" AND f.identifying = ").push_bind(i);
    }
}

#[derive(sqlx::FromRow)]
struct StudyRow {
    uuid: Uuid,
    owner: String,
    request_query_snapshot: Uuid,
    total_count: Option<i64>,
    request_job_status: String,
    request_job_fail_msg: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<StudyRow> for StudyView {
    fn from(r: StudyRow) -> Self {
        StudyView {
            uuid: r.uuid,
            owner: r.owner,
            request_query_snapshot: r.request_query_snapshot,
            total_count: r.total_count,
            request_job_status: r.request_job_status,
            request_job_fail_msg: r.request_job_fail_msg,
            created_at: r.created_at,
        }
    }
}

const STUDY_SELECT: &str = "SELECT uuid, owner, request_query_snapshot, total_count,
        request_job_status, request_job_fail_msg, created_at
   FROM cohorts.feasibility_studies";

#[async_trait]
impl ReportPerimeters for PgCohorts {
    async fn report_perimeters(&self) -> Result<Vec<ReportPerimeter>, PortError> {
        let rows: Vec<(i64, Option<i64>, String, String, String)> = sqlx::query_as(
            "SELECT id, parent_id, cohort_id, name, type_source_value FROM identity.perimeters
              WHERE removed_at IS NULL AND cohort_id IS NOT NULL ORDER BY full_path, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, parent_id, cohort_id, name, type_source_value)| ReportPerimeter {
                    id,
                    parent_id,
                    cohort_id,
                    name,
                    type_source_value,
                },
            )
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    uuid: Uuid,
    owner: String,
    request_snapshot: Uuid,
    refresh_time: String,
    refresh_frequency: String,
    notify_owner: bool,
    next_refresh: DateTime<Utc>,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    last_refresh: Option<DateTime<Utc>>,
    last_status: Option<String>,
    last_refresh_count: Option<i64>,
    last_refresh_error_msg: Option<String>,
    last_refresh_dated_measure: Option<Uuid>,
}

impl From<ScheduleRow> for ScheduleView {
    fn from(r: ScheduleRow) -> Self {
        ScheduleView {
            uuid: r.uuid,
            owner: r.owner,
            request_snapshot: r.request_snapshot,
            refresh_time: r.refresh_time,
            refresh_frequency: r.refresh_frequency,
            notify_owner: r.notify_owner,
            next_refresh: r.next_refresh,
            last_refresh: r.last_refresh,
            last_refresh_succeeded: match r.last_status.as_deref() {
                Some("finished") => Some(true),
                Some("failed" | "cancelled") => Some(false),
                _ => None,
            },
            last_refresh_count: r.last_refresh_count,
            last_refresh_error_msg: r.last_refresh_error_msg,
            last_refresh_dated_measure: r.last_refresh_dated_measure,
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

const SCHEDULE_SELECT: &str = "SELECT s.uuid, s.owner, s.request_snapshot,
        to_char(s.refresh_time, 'HH24:MI:SS') AS refresh_time, s.refresh_frequency,
        s.notify_owner, s.next_refresh, s.created_at, s.modified_at,
        d.created_at AS last_refresh, d.request_job_status AS last_status,
        d.measure AS last_refresh_count, d.request_job_fail_msg AS last_refresh_error_msg,
        d.uuid AS last_refresh_dated_measure
   FROM cohorts.refresh_schedules s
   LEFT JOIN LATERAL (SELECT * FROM cohorts.dated_measures m WHERE m.refresh_schedule = s.uuid
                       ORDER BY m.created_at DESC LIMIT 1) d ON true";

fn push_schedule_where<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    owner: &'a str,
    filter: &'a ScheduleFilter,
) {
    qb.push(" WHERE s.deleted_at IS NULL AND s.owner = ")
        .push_bind(owner);
    if let Some(snapshot) = filter.request_snapshot {
        qb.push(" AND s.request_snapshot = ").push_bind(snapshot);
    }
    if let Some(t) = &filter.refresh_time {
        qb.push(" AND to_char(s.refresh_time, 'HH24:MI:SS') LIKE ")
            .push_bind(format!("{}%", t.replace('%', "")));
    }
    if let Some(f) = &filter.refresh_frequency {
        qb.push(" AND s.refresh_frequency = ").push_bind(f.as_str());
    }
}

#[async_trait]
impl ScheduleDirectory for PgCohorts {
    async fn schedule_of_snapshot(&self, snapshot: Uuid) -> Result<Option<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM cohorts.refresh_schedules
              WHERE request_snapshot = $1 AND deleted_at IS NULL",
        )
        .bind(snapshot)
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM cohorts.refresh_schedules
              WHERE next_refresh <= $1 AND deleted_at IS NULL ORDER BY next_refresh",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)
    }
}

#[async_trait]
impl FhirFilterDirectory for PgCohorts {
    async fn name_taken(
        &self,
        owner: &str,
        name: &str,
        fhir_resource: &str,
        except: Option<Uuid>,
    ) -> Result<bool, PortError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cohorts.fhir_filters
              WHERE owner = $1 AND lower(name) = lower($2) AND fhir_resource = $3
                AND deleted_at IS NULL AND uuid IS DISTINCT FROM $4)",
        )
        .bind(owner)
        .bind(name)
        .bind(fhir_resource)
        .bind(except)
        .fetch_one(&self.pool)
        .await
        .map_err(port_error)
    }
}

fn port_error(e: sqlx::Error) -> PortError {
    PortError(e.to_string())
}

#[async_trait]
impl CohortDirectory for PgCohorts {
    async fn running_counts_of_request(
        &self,
        request: Uuid,
        before: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT d.uuid FROM cohorts.dated_measures d
              WHERE d.request = $1 AND d.created_at < $2 AND d.mode = 'Snapshot'
                AND d.refresh_schedule IS NULL
                AND d.request_job_status IN ('new', 'pending', 'started')
                AND NOT EXISTS (SELECT 1 FROM cohorts.cohorts c WHERE c.dated_measure = d.uuid)",
        )
        .bind(request)
        .bind(before)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn stale_studies(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM cohorts.feasibility_studies
              WHERE request_job_status IN ('pending', 'started') AND status_changed_at < $1",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn cohort_of_global_count(&self, count: Uuid) -> Result<Option<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM cohorts.cohorts WHERE dated_measure_global = $1 LIMIT 1",
        )
        .bind(count)
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn root_perimeter_cohort_id(&self) -> Result<Option<String>, PortError> {
        sqlx::query_scalar(
            "SELECT cohort_id FROM identity.perimeters
              WHERE parent_id IS NULL AND cohort_id IS NOT NULL AND removed_at IS NULL
              ORDER BY id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn stale_jobs(&self, before: DateTime<Utc>) -> Result<Vec<StaleJob>, PortError> {
        let rows: Vec<(bool, Uuid)> = sqlx::query_as(
            "SELECT true, uuid FROM cohorts.dated_measures
              WHERE request_job_status IN ('pending', 'started') AND status_changed_at < $1
             UNION ALL
             SELECT false, uuid FROM cohorts.cohorts
              WHERE (request_job_status IN ('pending', 'started')
                     -- a large cohort whose submission never got a job id
                     OR (request_job_status = 'long_pending' AND request_job_id IS NULL))
                AND status_changed_at < $1 AND deleted_at IS NULL",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(rows
            .into_iter()
            .map(|(is_count, id)| {
                if is_count {
                    StaleJob::Count(id)
                } else {
                    StaleJob::Cohort(id)
                }
            })
            .collect())
    }
}
