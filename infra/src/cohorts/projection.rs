//! Folds count and cohort events into the `cohorts` schema.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::cohort::{Cohort, CohortEvent};
use domain::count::{Count, CountEvent};
use domain::feasibility::{FeasibilityStudy, StudyEvent};
use domain::fhir_filter::{FhirFilter, FhirFilterEvent};
use domain::refresh::{Cadence, RefreshSchedule, ScheduleEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::CommittedEvent;
use crate::projector::{Projection, ProjectionError, aggregate_uuid, decode};

/// The cohorts projection (dated measures and cohorts).
#[derive(Debug, Default, Clone, Copy)]
pub struct CohortsProjection;

#[async_trait]
impl Projection for CohortsProjection {
    fn name(&self) -> &'static str {
        projections::cohorts::PROJECTION
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        aggregate_type == Count::TYPE
            || aggregate_type == Cohort::TYPE
            || aggregate_type == FhirFilter::TYPE
            || aggregate_type == FeasibilityStudy::TYPE
            || aggregate_type == RefreshSchedule::TYPE
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &CommittedEvent,
    ) -> Result<(), ProjectionError> {
        match event.aggregate_type.as_str() {
            Count::TYPE => apply_count(conn, aggregate_uuid(event)?, decode(event)?).await,
            Cohort::TYPE => apply_cohort(conn, aggregate_uuid(event)?, decode(event)?).await,
            FhirFilter::TYPE => {
                apply_fhir_filter(conn, aggregate_uuid(event)?, decode(event)?).await
            }
            FeasibilityStudy::TYPE => {
                apply_study(conn, aggregate_uuid(event)?, decode(event)?).await
            }
            RefreshSchedule::TYPE => {
                apply_schedule(conn, aggregate_uuid(event)?, decode(event)?).await
            }
            _ => Ok(()),
        }
    }
}

/// Sets a job's status (and optionally its fail message and end), stamping the change.
async fn set_status(
    conn: &mut PgConnection,
    table: &str,
    id: Uuid,
    status: &str,
    fail_msg: Option<String>,
    ended: bool,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    // `table` is one of this module's constants.
    sqlx::query(&format!(
        "UPDATE {table} SET request_job_status = $2,
                request_job_fail_msg = COALESCE($3, request_job_fail_msg),
                request_job_duration = CASE WHEN $4 THEN extract(epoch FROM $5 - created_at)
                                            ELSE request_job_duration END,
                status_changed_at = $5, modified_at = $5
          WHERE uuid = $1"
    ))
    .bind(id)
    .bind(status)
    .bind(fail_msg)
    .bind(ended)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a job's id. A fast callback can overtake it: only a job still `new` or `pending`
/// becomes `started` (a `long_pending` or ended one keeps its status).
async fn set_started(
    conn: &mut PgConnection,
    table: &str,
    id: Uuid,
    job_id: String,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    // `table` is one of this module's constants.
    sqlx::query(&format!(
        "UPDATE {table} SET request_job_id = $2, modified_at = $3,
                request_job_status = CASE WHEN request_job_status IN ('new', 'pending')
                                          THEN 'started' ELSE request_job_status END,
                status_changed_at = CASE WHEN request_job_status IN ('new', 'pending')
                                         THEN $3 ELSE status_changed_at END
          WHERE uuid = $1"
    ))
    .bind(id)
    .bind(job_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_count(
    conn: &mut PgConnection,
    id: Uuid,
    event: CountEvent,
) -> Result<(), ProjectionError> {
    const T: &str = "dated_measures";
    match event {
        CountEvent::CountRequested {
            owner,
            request_id,
            snapshot_id,
            snapshot_version,
            mode,
            stage_details,
            refresh_schedule,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO dated_measures (uuid, owner, request, request_query_snapshot,
                        snapshot_version, mode, stage_details, refresh_schedule,
                        request_job_status, created_at, modified_at, status_changed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'new', $9, $9, $9)
                 ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(request_id)
            .bind(snapshot_id)
            .bind(snapshot_version as i32)
            .bind(mode.as_str())
            .bind(stage_details)
            .bind(refresh_schedule)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        CountEvent::CountSubmitted { at } => {
            set_status(conn, T, id, "pending", None, false, at).await?;
        }
        CountEvent::CountStarted { job_id, at } => {
            set_started(conn, T, id, job_id, at).await?;
        }
        CountEvent::CountFinished {
            measure,
            measure_min,
            measure_max,
            extra,
            at,
        } => {
            sqlx::query(
                "UPDATE dated_measures SET measure = $2, measure_min = $3, measure_max = $4,
                        extra = $5 WHERE uuid = $1",
            )
            .bind(id)
            .bind(measure)
            .bind(measure_min)
            .bind(measure_max)
            .bind(sqlx::types::Json(extra))
            .execute(&mut *conn)
            .await?;
            set_status(conn, T, id, "finished", None, true, at).await?;
        }
        CountEvent::CountFailed { message, at } => {
            set_status(conn, T, id, "failed", Some(message), true, at).await?;
        }
        CountEvent::CountCancelled { message, at } => {
            set_status(conn, T, id, "cancelled", Some(message), true, at).await?;
        }
    }
    Ok(())
}

async fn apply_cohort(
    conn: &mut PgConnection,
    id: Uuid,
    event: CohortEvent,
) -> Result<(), ProjectionError> {
    const T: &str = "cohorts";
    match event {
        CohortEvent::CohortRequested {
            owner,
            name,
            description,
            request_id,
            snapshot_id,
            dated_measure,
            global_measure,
            parent_cohort,
            sampling_ratio,
            expected_size,
            is_subset,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO cohorts (uuid, owner, name, description, request,
                        request_query_snapshot, dated_measure, dated_measure_global, parent_cohort,
                        sampling_ratio, expected_size, is_subset, request_job_status, created_at,
                        modified_at, status_changed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, 'new', $12, $12, $12)
                 ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(name)
            .bind(description)
            .bind(request_id)
            .bind(snapshot_id)
            .bind(dated_measure)
            .bind(global_measure)
            .bind(parent_cohort)
            .bind(sampling_ratio)
            .bind(expected_size)
            .bind(at)
            .bind(is_subset)
            .execute(&mut *conn)
            .await?;
        }
        CohortEvent::CohortSubmitted { long_pending, at } => {
            let status = if long_pending {
                "long_pending"
            } else {
                "pending"
            };
            set_status(conn, T, id, status, None, false, at).await?;
        }
        CohortEvent::CohortStarted { job_id, at } => {
            set_started(conn, T, id, job_id, at).await?;
        }
        CohortEvent::CohortLongPending { group_id, size, at } => {
            set_group(conn, id, group_id, size).await?;
            set_status(conn, T, id, "long_pending", None, false, at).await?;
        }
        CohortEvent::CohortCreated {
            group_id, size, at, ..
        } => {
            set_group(conn, id, group_id, size).await?;
            set_status(conn, T, id, "finished", None, true, at).await?;
        }
        CohortEvent::CohortFailed { message, at } => {
            set_status(conn, T, id, "failed", Some(message), true, at).await?;
        }
        CohortEvent::CohortCancelled { message, at } => {
            set_status(conn, T, id, "cancelled", Some(message), true, at).await?;
        }
        CohortEvent::CohortRenamed { name, at } => {
            sqlx::query("UPDATE cohorts SET name = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(name)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        CohortEvent::CohortDescriptionChanged { description, at } => {
            sqlx::query("UPDATE cohorts SET description = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(description)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        CohortEvent::CohortFavoriteChanged { favorite, at } => {
            sqlx::query("UPDATE cohorts SET favorite = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(favorite)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        CohortEvent::CohortDeleted { at } => {
            sqlx::query("UPDATE cohorts SET deleted_at = $2, modified_at = $2 WHERE uuid = $1")
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn set_group(
    conn: &mut PgConnection,
    id: Uuid,
    group_id: Option<String>,
    size: Option<i64>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE cohorts SET group_id = COALESCE($2, group_id),
                result_size = COALESCE($3, result_size) WHERE uuid = $1",
    )
    .bind(id)
    .bind(group_id)
    .bind(size)
    .execute(&mut *conn)
    .await?;
    // Upstream's callback sets the cohort's dated measure to `group.count` too (its result_size
    // *is* that measure): the dated measure shows the cohort's size from now on.
    if size.is_some() {
        sqlx::query(
            "UPDATE dated_measures SET measure = $2
              WHERE uuid = (SELECT dated_measure FROM cohorts WHERE uuid = $1)",
        )
        .bind(id)
        .bind(size)
        .execute(conn)
        .await?;
    }
    Ok(())
}

async fn apply_fhir_filter(
    conn: &mut PgConnection,
    id: Uuid,
    event: FhirFilterEvent,
) -> Result<(), ProjectionError> {
    match event {
        FhirFilterEvent::FhirFilterCreated {
            owner,
            fields,
            filter,
            auto_generated,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO fhir_filters (uuid, owner, fhir_resource, fhir_version, query_version,
                        name, filter, identifying, auto_generated, created_at, modified_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                 ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(fields.fhir_resource)
            .bind(fields.fhir_version)
            .bind(fields.query_version)
            .bind(fields.name)
            .bind(filter)
            .bind(fields.identifying)
            .bind(auto_generated)
            .bind(at)
            .execute(conn)
            .await?;
        }
        FhirFilterEvent::FhirFilterDescribed { fields, at } => {
            sqlx::query(
                "UPDATE fhir_filters SET fhir_resource = $2, fhir_version = $3, query_version = $4,
                        name = $5, identifying = $6, modified_at = $7 WHERE uuid = $1",
            )
            .bind(id)
            .bind(fields.fhir_resource)
            .bind(fields.fhir_version)
            .bind(fields.query_version)
            .bind(fields.name)
            .bind(fields.identifying)
            .bind(at)
            .execute(conn)
            .await?;
        }
        FhirFilterEvent::FhirFilterTextChanged {
            patch_version,
            previous_filter,
            filter,
            at,
        } => {
            sqlx::query(
                "INSERT INTO fhir_filter_patches (filter, patch_version, filter_text, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(patch_version as i32)
            .bind(previous_filter)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE fhir_filters SET filter = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(filter)
                .bind(at)
                .execute(conn)
                .await?;
        }
        FhirFilterEvent::FhirFilterDeleted { at } => {
            sqlx::query(
                "UPDATE fhir_filters SET deleted_at = $2, modified_at = $2 WHERE uuid = $1",
            )
            .bind(id)
            .bind(at)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

async fn apply_study(
    conn: &mut PgConnection,
    id: Uuid,
    event: StudyEvent,
) -> Result<(), ProjectionError> {
    const T: &str = "feasibility_studies";
    match event {
        StudyEvent::FeasibilityStudyRequested {
            owner,
            request_id,
            snapshot_id,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO feasibility_studies (uuid, owner, request, request_query_snapshot,
                        request_job_status, created_at, modified_at, status_changed_at)
                 VALUES ($1, $2, $3, $4, 'new', $5, $5, $5) ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(request_id)
            .bind(snapshot_id)
            .bind(at)
            .execute(conn)
            .await?;
        }
        StudyEvent::FeasibilityStudySubmitted { at } => {
            set_status(conn, T, id, "pending", None, false, at).await?;
        }
        StudyEvent::FeasibilityStudyStarted { job_id, at } => {
            set_started(conn, T, id, job_id, at).await?;
        }
        StudyEvent::FeasibilityStudyFinished {
            total_count, at, ..
        } => {
            sqlx::query("UPDATE feasibility_studies SET total_count = $2 WHERE uuid = $1")
                .bind(id)
                .bind(total_count)
                .execute(&mut *conn)
                .await?;
            set_status(conn, T, id, "finished", None, true, at).await?;
        }
        StudyEvent::FeasibilityStudyFailed { message, at } => {
            set_status(conn, T, id, "failed", Some(message), true, at).await?;
        }
    }
    Ok(())
}

/// The schedule's cadence as the read model holds it.
async fn cadence(conn: &mut PgConnection, id: Uuid) -> Result<Option<Cadence>, ProjectionError> {
    let row: Option<(chrono::NaiveTime, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT refresh_time, refresh_frequency, created_at FROM refresh_schedules WHERE uuid = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(time, frequency, anchor)| {
        domain::refresh::Frequency::parse(&frequency).map(|frequency| Cadence {
            time,
            frequency,
            anchor,
        })
    }))
}

async fn apply_schedule(
    conn: &mut PgConnection,
    id: Uuid,
    event: ScheduleEvent,
) -> Result<(), ProjectionError> {
    match event {
        ScheduleEvent::RefreshScheduleCreated {
            owner,
            request_id,
            snapshot_id,
            time,
            frequency,
            notify_owner,
            at,
            ..
        } => {
            let first = Cadence {
                time,
                frequency,
                anchor: at,
            }
            .first();
            sqlx::query(
                "INSERT INTO refresh_schedules (uuid, owner, request, request_snapshot, refresh_time,
                        refresh_frequency, notify_owner, next_refresh, created_at, modified_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(request_id)
            .bind(snapshot_id)
            .bind(time)
            .bind(frequency.as_str())
            .bind(notify_owner)
            .bind(first)
            .bind(at)
            .execute(conn)
            .await?;
        }
        ScheduleEvent::RefreshScheduleChanged {
            time,
            frequency,
            notify_owner,
            at,
        } => {
            sqlx::query(
                "UPDATE refresh_schedules SET refresh_time = $2, refresh_frequency = $3,
                        notify_owner = $4, modified_at = $5 WHERE uuid = $1",
            )
            .bind(id)
            .bind(time)
            .bind(frequency.as_str())
            .bind(notify_owner)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            set_next_refresh(conn, id, at).await?;
        }
        ScheduleEvent::RefreshScheduleRan { due, .. } => {
            set_next_refresh(conn, id, due).await?;
        }
        ScheduleEvent::RefreshScheduleDeleted { at } => {
            sqlx::query(
                "UPDATE refresh_schedules SET deleted_at = $2, modified_at = $2 WHERE uuid = $1",
            )
            .bind(id)
            .bind(at)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

async fn set_next_refresh(
    conn: &mut PgConnection,
    id: Uuid,
    after: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    if let Some(c) = cadence(&mut *conn, id).await? {
        sqlx::query("UPDATE refresh_schedules SET next_refresh = $2 WHERE uuid = $1")
            .bind(id)
            .bind(c.next_after(after))
            .execute(conn)
            .await?;
    }
    Ok(())
}
