//! The `exports` read model: its projection, its reader, and the lookups the exports service
//! needs ([`ExportDirectory`]).
//!
//! An export row keeps the aggregate's state folded by the domain's own `apply` (stored as JSON),
//! so the read model can never disagree with the write side on what an event means; the other
//! columns are copies lists filter and sort on.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::exports::ExportDirectory;
use commands::ports::PortError;
use cqrs_es::Aggregate;
use domain::datalab::{Datalab, DatalabEvent, InfrastructureProvider, ProviderEvent};
use domain::export::{Export, ExportEvent, ExportState};
use projections::exports::{
    DatalabView, ExportFilter, ExportListItem, ExportReader, ExportStatView, ExportableCohort,
    ProviderRef, ProviderView, StatFilter,
};
use projections::{Page, ReadError, Window};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::log::CommittedEvent;
use crate::projector::{Projection, ProjectionError, aggregate_uuid, decode};
use crate::sql::{fetch_page, push_contains_any, read_error};

/// The exports projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportsProjection;

fn undecodable(event: &CommittedEvent, reason: String) -> ProjectionError {
    ProjectionError::Undecodable {
        message_id: event.message_id(),
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        reason,
    }
}

async fn apply_export(
    conn: &mut PgConnection,
    raw: &CommittedEvent,
    id: Uuid,
    event: ExportEvent,
) -> Result<(), ProjectionError> {
    let stored: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT state FROM exports WHERE uuid = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let mut export = Export {
        state: stored
            .map(serde_json::from_value::<ExportState>)
            .transpose()
            .map_err(|e| undecodable(raw, format!("stored export state: {e}")))?,
    };
    if let ExportEvent::ExportSubsetRequested { table, cohort, .. } = &event {
        sqlx::query(
            "INSERT INTO subsets (cohort, export, table_index) VALUES ($1, $2, $3)
             ON CONFLICT (cohort) DO NOTHING",
        )
        .bind(cohort)
        .bind(id)
        .bind(*table as i32)
        .execute(&mut *conn)
        .await?;
    }
    export.apply(event);
    let Some(s) = export.state else {
        return Ok(());
    };
    sqlx::query("DELETE FROM stats WHERE export = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for stat in &s.stats {
        sqlx::query("INSERT INTO stats (export, name, type, value) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(&stat.name)
            .bind(stat.kind.as_str())
            .bind(&stat.value)
            .execute(&mut *conn)
            .await?;
    }
    let state = serde_json::to_value(&s).map_err(|e| undecodable(raw, e.to_string()))?;
    sqlx::query(
        "INSERT INTO exports (uuid, owner, output_format, status, motivation, source_cohort,
                              group_id, datalab_name, target_name, validated, submitted,
                              created_at, modified_at, finished_at, cleaned_at, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (uuid) DO UPDATE SET status = $4, validated = $10, submitted = $11,
             modified_at = $13, finished_at = $14, cleaned_at = $15, state = $16",
    )
    .bind(id)
    .bind(&s.owner)
    .bind(s.output_format.as_str())
    .bind(s.status.as_str())
    .bind(&s.motivation)
    .bind(s.source_cohort())
    .bind(s.group_id())
    .bind(&s.datalab_name)
    .bind(&s.target_name)
    .bind(s.validated)
    .bind(s.submitted)
    .bind(s.requested_at)
    .bind(s.modified_at)
    .bind(s.finished_at)
    .bind(s.cleaned_at)
    .bind(state)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn apply_provider(
    conn: &mut PgConnection,
    id: Uuid,
    event: ProviderEvent,
) -> Result<(), ProjectionError> {
    match event {
        ProviderEvent::InfrastructureProviderCreated { name, at, .. } => {
            sqlx::query(
                "INSERT INTO providers (uuid, name, created_at, modified_at) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        ProviderEvent::InfrastructureProviderRenamed { name, at } => {
            sqlx::query("UPDATE providers SET name = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(name)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        ProviderEvent::InfrastructureProviderDeleted { at } => {
            sqlx::query("UPDATE providers SET deleted_at = $2, modified_at = $2 WHERE uuid = $1")
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_datalab(
    conn: &mut PgConnection,
    id: Uuid,
    event: DatalabEvent,
) -> Result<(), ProjectionError> {
    match event {
        DatalabEvent::DatalabCreated {
            name, provider, at, ..
        } => {
            sqlx::query(
                "INSERT INTO datalabs (uuid, name, provider, created_at, modified_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(provider)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        DatalabEvent::DatalabChanged { name, provider, at } => {
            sqlx::query(
                "UPDATE datalabs SET name = $2, provider = $3, modified_at = $4 WHERE uuid = $1",
            )
            .bind(id)
            .bind(name)
            .bind(provider)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Projection for ExportsProjection {
    fn name(&self) -> &'static str {
        projections::exports::PROJECTION
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        [Export::TYPE, Datalab::TYPE, InfrastructureProvider::TYPE].contains(&aggregate_type)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &CommittedEvent,
    ) -> Result<(), ProjectionError> {
        match event.aggregate_type.as_str() {
            Export::TYPE => apply_export(conn, event, aggregate_uuid(event)?, decode(event)?).await,
            Datalab::TYPE => apply_datalab(conn, aggregate_uuid(event)?, decode(event)?).await,
            InfrastructureProvider::TYPE => {
                apply_provider(conn, aggregate_uuid(event)?, decode(event)?).await
            }
            _ => Ok(()),
        }
    }
}

/// Reads the exports schema.
#[derive(Debug, Clone)]
pub struct PgExports {
    pool: PgPool,
}

impl PgExports {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    uuid: Uuid,
    owner: String,
    output_format: String,
    motivation: Option<String>,
    group_id: Option<String>,
    cohort_name: Option<String>,
    patients_count: Option<i64>,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    status: String,
    datalab_name: Option<String>,
    target_name: String,
    state: serde_json::Value,
}

const EXPORT_FROM: &str =
    " FROM exports.exports e LEFT JOIN cohorts.cohorts c ON c.uuid = e.source_cohort WHERE true";

fn push_export_where<'a>(qb: &mut QueryBuilder<'a, Postgres>, f: &'a ExportFilter) {
    if let Some(owner) = &f.owner {
        qb.push(" AND e.owner = ").push_bind(owner);
    }
    if let Some(format) = &f.output_format {
        qb.push(" AND e.output_format = ").push_bind(format);
    }
    if !f.statuses.is_empty() {
        qb.push(" AND e.status = ANY(")
            .push_bind(&f.statuses)
            .push(")");
    }
    if let Some(m) = &f.motivation {
        push_contains_any(qb, m, &["e.motivation"]);
    }
    if let Some(search) = &f.search {
        push_contains_any(qb, search, &["e.target_name", "e.motivation", "c.name"]);
    }
}

fn port(e: sqlx::Error) -> PortError {
    PortError(e.to_string())
}

#[async_trait]
impl ExportReader for PgExports {
    async fn exports(
        &self,
        filter: &ExportFilter,
        window: Window,
    ) -> Result<Page<(ExportListItem, ExportState)>, ReadError> {
        let (count, rows) = fetch_page::<ExportRow>(
            &self.pool,
            &format!("SELECT count(*){EXPORT_FROM}"),
            &format!(
                "SELECT e.uuid, e.owner, e.output_format, e.motivation, e.group_id, c.name AS cohort_name,
                        c.result_size AS patients_count, e.created_at, e.modified_at, e.status,
                        e.datalab_name, e.target_name, e.state{EXPORT_FROM}"
            ),
            |qb| push_export_where(qb, filter),
            (&filter.ordering, "e.created_at DESC", "e.uuid"),
            window,
        )
        .await?;
        let mut results = Vec::with_capacity(rows.len());
        for r in rows {
            let state: ExportState = serde_json::from_value(r.state)
                .map_err(|e| ReadError::Internal(format!("export state: {e}")))?;
            results.push((
                ExportListItem {
                    uuid: r.uuid,
                    owner: r.owner,
                    output_format: r.output_format,
                    motivation: r.motivation,
                    cohort_id: r.group_id,
                    cohort_name: r.cohort_name,
                    patients_count: r.patients_count,
                    created_at: r.created_at,
                    modified_at: r.modified_at,
                    request_job_status: r.status,
                    target_datalab: r.datalab_name,
                    target_name: r.target_name,
                },
                state,
            ));
        }
        Ok(Page { count, results })
    }

    async fn export(&self, id: Uuid) -> Result<Option<ExportState>, ReadError> {
        let state: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT state FROM exports.exports WHERE uuid = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(read_error)?;
        state
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ReadError::Internal(format!("export state: {e}")))
    }

    async fn stats(
        &self,
        filter: &StatFilter,
        window: Window,
    ) -> Result<Page<ExportStatView>, ReadError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            export: Uuid,
            name: String,
            kind: String,
            value: String,
            export_target: String,
        }
        let from = " FROM exports.stats s JOIN exports.exports e ON e.uuid = s.export WHERE true";
        let (count, rows) = fetch_page::<Row>(
            &self.pool,
            &format!("SELECT count(*){from}"),
            &format!(
                "SELECT s.export, s.name, s.type AS kind, s.value, e.target_name AS export_target{from}"
            ),
            |qb| {
                if let Some(o) = &filter.owner {
                    qb.push(" AND e.owner = ").push_bind(o);
                }
                if let Some(x) = filter.export {
                    qb.push(" AND s.export = ").push_bind(x);
                }
                if let Some(n) = &filter.name {
                    qb.push(" AND s.name = ").push_bind(n);
                }
                if let Some(k) = &filter.kind {
                    qb.push(" AND s.type = ").push_bind(k);
                }
                if let Some(t) = &filter.export_target_name {
                    qb.push(" AND e.target_name = ").push_bind(t);
                }
            },
            (&[], "e.created_at DESC", "s.name"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows
                .into_iter()
                .map(|r| ExportStatView {
                    export: r.export,
                    name: r.name,
                    kind: r.kind,
                    value: r.value,
                    export_target: r.export_target,
                })
                .collect(),
        })
    }

    async fn providers(&self, window: Window) -> Result<Page<ProviderView>, ReadError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            uuid: Uuid,
            name: String,
            created_at: DateTime<Utc>,
            modified_at: DateTime<Utc>,
        }
        let (count, rows) = fetch_page::<Row>(
            &self.pool,
            "SELECT count(*) FROM exports.providers WHERE deleted_at IS NULL",
            "SELECT uuid, name, created_at, modified_at FROM exports.providers WHERE deleted_at IS NULL",
            |_| {},
            (&[], "name", "uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows
                .into_iter()
                .map(|r| ProviderView {
                    uuid: r.uuid,
                    name: r.name,
                    created_at: r.created_at,
                    modified_at: r.modified_at,
                })
                .collect(),
        })
    }

    async fn provider(&self, id: Uuid) -> Result<Option<ProviderView>, ReadError> {
        let row: Option<(Uuid, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT uuid, name, created_at, modified_at FROM exports.providers
              WHERE uuid = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)?;
        Ok(
            row.map(|(uuid, name, created_at, modified_at)| ProviderView {
                uuid,
                name,
                created_at,
                modified_at,
            }),
        )
    }

    async fn datalabs(
        &self,
        name: Option<&str>,
        provider: Option<Uuid>,
        window: Window,
    ) -> Result<Page<DatalabView>, ReadError> {
        let from =
            " FROM exports.datalabs d JOIN exports.providers p ON p.uuid = d.provider WHERE true";
        let name = name.map(str::to_string);
        let (count, rows) = fetch_page::<DatalabRow>(
            &self.pool,
            &format!("SELECT count(*){from}"),
            &format!("{DATALAB_SELECT}{from}"),
            |qb| {
                if let Some(n) = &name {
                    push_contains_any(qb, n, &["d.name"]);
                }
                if let Some(p) = provider {
                    qb.push(" AND d.provider = ").push_bind(p);
                }
            },
            (&[], "d.name", "d.uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn datalab(&self, id: Uuid) -> Result<Option<DatalabView>, ReadError> {
        let row: Option<DatalabRow> = sqlx::query_as(&format!(
            "{DATALAB_SELECT} FROM exports.datalabs d JOIN exports.providers p ON p.uuid = d.provider
              WHERE d.uuid = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)?;
        Ok(row.map(Into::into))
    }

    async fn exportable_cohorts(
        &self,
        owner: &str,
        window: Window,
    ) -> Result<Page<ExportableCohort>, ReadError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            uuid: Uuid,
            owner: String,
            name: String,
            group_id: Option<String>,
            result_size: Option<i64>,
        }
        let from = " FROM cohorts.cohorts WHERE deleted_at IS NULL AND NOT is_subset
                      AND request_job_status = 'finished' AND group_id IS NOT NULL";
        let (count, rows) = fetch_page::<Row>(
            &self.pool,
            &format!("SELECT count(*){from}"),
            &format!("SELECT uuid, owner, name, group_id, result_size{from}"),
            |qb| {
                qb.push(" AND owner = ").push_bind(owner.to_string());
            },
            (&[], "created_at DESC", "uuid"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows
                .into_iter()
                .map(|r| ExportableCohort {
                    uuid: r.uuid,
                    owner: r.owner,
                    name: r.name,
                    group_id: r.group_id,
                    result_size: r.result_size,
                })
                .collect(),
        })
    }
}

const DATALAB_SELECT: &str = "SELECT d.uuid, d.name, d.created_at, d.modified_at,
        p.uuid AS provider_uuid, p.name AS provider_name";

#[derive(sqlx::FromRow)]
struct DatalabRow {
    uuid: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
    provider_uuid: Uuid,
    provider_name: String,
}

impl From<DatalabRow> for DatalabView {
    fn from(r: DatalabRow) -> Self {
        DatalabView {
            uuid: r.uuid,
            name: r.name,
            infrastructure_provider: ProviderRef {
                uuid: r.provider_uuid,
                name: r.provider_name,
            },
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

#[async_trait]
impl ExportDirectory for PgExports {
    async fn running_exports(&self) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM exports.exports WHERE submitted AND status IN ('pending', 'started')
              ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(port)
    }

    async fn exports_waiting_for_subsets(&self) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM exports.exports WHERE status = 'new' AND NOT validated
              ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(port)
    }

    async fn export_of_subset(&self, cohort: Uuid) -> Result<Option<Uuid>, PortError> {
        sqlx::query_scalar("SELECT export FROM exports.subsets WHERE cohort = $1")
            .bind(cohort)
            .fetch_optional(&self.pool)
            .await
            .map_err(port)
    }

    async fn expired_exports(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, PortError> {
        sqlx::query_scalar(
            "SELECT uuid FROM exports.exports WHERE status = 'finished' AND cleaned_at IS NULL
                AND output_format IN ('csv', 'xlsx') AND finished_at < $1 ORDER BY finished_at",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await
        .map_err(port)
    }

    async fn datalab_named(&self, name: &str) -> Result<Option<Uuid>, PortError> {
        sqlx::query_scalar("SELECT uuid FROM exports.datalabs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(port)
    }

    async fn provider_in_use(&self, provider: Uuid) -> Result<bool, PortError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM exports.datalabs WHERE provider = $1)")
            .bind(provider)
            .fetch_one(&self.pool)
            .await
            .map_err(port)
    }
}
