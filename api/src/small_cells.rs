//! Small-cell protection in answers (see `domain::small_cells`): counts under
//! `SMALL_CELL_THRESHOLD` are shown as `"< N"` unless the caller reads every perimeter of the
//! count's query nominatively. Applicative callers (the executor, the ETL) see exact counts.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use commands::ports::{PatientReadRights, PortError};
use domain::authz::PerimeterRef;
use projections::identity::IdentityReader;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Nominative reading computed from the identity read model.
pub struct IdentityReadRights(pub Arc<dyn IdentityReader>);

#[async_trait]
impl PatientReadRights for IdentityReadRights {
    async fn reads_nominatively(
        &self,
        username: &str,
        perimeter_cohort_ids: &[String],
    ) -> Result<bool, PortError> {
        if perimeter_cohort_ids.is_empty() {
            return Ok(false);
        }
        let unavailable = |e: projections::ReadError| PortError(e.to_string());
        let perimeters = self
            .0
            .perimeters_by_cohort_ids(perimeter_cohort_ids)
            .await
            .map_err(unavailable)?;
        // A cohort used as a population (a sample's parent) is not a perimeter: not exempt.
        if perimeters.len() < perimeter_cohort_ids.len() {
            return Ok(false);
        }
        let authority = self
            .0
            .authority(username, Utc::now())
            .await
            .map_err(unavailable)?;
        Ok(perimeters.iter().all(|p| {
            authority
                .data_rights(PerimeterRef {
                    id: p.id,
                    ancestors: &p.ancestors,
                })
                .right_read_patient_nominative
        }))
    }
}

/// Masks the small counts of `value` unless the caller is exempt for these perimeters.
pub(crate) async fn protect(
    state: &AppState,
    caller: &Caller,
    perimeters: &[String],
    value: &mut Value,
) -> Result<(), ApiError> {
    if caller.applicative || !state.small_cells.has_small(value) {
        return Ok(());
    }
    if !state
        .read_rights
        .reads_nominatively(&caller.username, perimeters)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot check reading rights for small-cell protection");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "read_model_unavailable",
                "reading rights cannot be checked now",
            )
        })?
    {
        state.small_cells.mask(value);
    }
    Ok(())
}

/// [`protect`] for an object of a snapshot (a count, a cohort): the snapshot's perimeters are
/// looked up only when there is a small count to hide.
pub(crate) async fn protect_of_snapshot(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    snapshot: uuid::Uuid,
    value: &mut Value,
) -> Result<(), ApiError> {
    if caller.applicative || !state.small_cells.has_small(value) {
        return Ok(());
    }
    let perimeters = state
        .reader
        .snapshot(owner, snapshot)
        .await?
        .map(|s| s.perimeters_ids)
        .unwrap_or_default();
    protect(state, caller, &perimeters, value).await
}

/// A serializable answer with its small counts protected.
pub(crate) async fn protected_of_snapshot<T: serde::Serialize>(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    snapshot: uuid::Uuid,
    answer: T,
) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(answer).map_err(|e| ApiError::bug(&e.to_string()))?;
    protect_of_snapshot(state, caller, owner, snapshot, &mut value).await?;
    Ok(value)
}
