//! Small-cell protection in answers (see `domain::small_cells`): counts under
//! `SMALL_CELL_THRESHOLD` are shown as `"< N"` unless the caller reads every perimeter of the
//! count's query nominatively. Applicative callers (the executor, the ETL) see exact counts.

use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Masks the small counts of `value` unless the caller is exempt for these perimeters.
pub(crate) async fn protect(
    state: &AppState,
    caller: &Caller,
    perimeters: &[String],
    value: &mut Value,
) -> Result<(), ApiError> {
    if caller.exempt_from_small_cells() || !state.small_cells.has_small(value) {
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
    if caller.exempt_from_small_cells() || !state.small_cells.has_small(value) {
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
