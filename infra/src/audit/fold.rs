//! Folding stored events into an aggregate's state, for auditors: the same `apply` the command
//! side uses, fed with events upcast to the current version.

use cqrs_es::Aggregate;
use domain::access::Access;
use domain::audit_read::AuditRead;
use domain::cohort::Cohort;
use domain::count::Count;
use domain::feasibility::FeasibilityStudy;
use domain::fhir_filter::FhirFilter;
use domain::folder::Folder;
use domain::mail::MailDelivery;
use domain::maintenance::MaintenancePhase;
use domain::perimeter::Perimeter;
use domain::refresh::RefreshSchedule;
use domain::request::Request;
use domain::role::Role;
use domain::session::Session;
use domain::user::User;
use serde_json::Value;

/// One stored event, as read for a fold.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
}

/// Decodes one stored event of `A`, upcast to the current version.
pub fn decode<A: Aggregate>(event: &StoredEvent) -> Result<A::Event, String> {
    let payload = domain::upcast::upcast(
        &event.event_type,
        &event.event_version,
        event.payload.clone(),
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_value(payload)
        .map_err(|e| format!("{} v{}: {e}", event.event_type, event.event_version))
}

/// Folds `events` into `start` (or the empty aggregate).
pub fn fold<A: Aggregate>(start: Option<A>, events: &[StoredEvent]) -> Result<A, String> {
    let mut aggregate = start.unwrap_or_default();
    for event in events {
        aggregate.apply(decode::<A>(event)?);
    }
    Ok(aggregate)
}

fn fold_json<A: Aggregate>(
    snapshot: Option<Value>,
    events: &[StoredEvent],
) -> Result<Value, String> {
    let start = snapshot
        .map(serde_json::from_value::<A>)
        .transpose()
        .map_err(|e| format!("snapshot does not decode: {e}"))?;
    let aggregate = fold(start, events)?;
    serde_json::to_value(&aggregate).map_err(|e| e.to_string())
}

/// Folds the events of an aggregate of type `aggregate_type` (from its snapshot when given) and
/// returns the state as JSON; `None` for a type this build does not know.
pub fn fold_by_type(
    aggregate_type: &str,
    snapshot: Option<Value>,
    events: &[StoredEvent],
) -> Option<Result<Value, String>> {
    let folded = match aggregate_type {
        "Access" => fold_json::<Access>(snapshot, events),
        "AuditRead" => fold_json::<AuditRead>(snapshot, events),
        "Cohort" => fold_json::<Cohort>(snapshot, events),
        "ReleaseNote" => fold_json::<domain::content::ReleaseNote>(snapshot, events),
        "WebContent" => fold_json::<domain::content::WebContent>(snapshot, events),
        "Count" => fold_json::<Count>(snapshot, events),
        "Datalab" => fold_json::<domain::datalab::Datalab>(snapshot, events),
        "Export" => fold_json::<domain::export::Export>(snapshot, events),
        "InfrastructureProvider" => {
            fold_json::<domain::datalab::InfrastructureProvider>(snapshot, events)
        }
        "FeasibilityStudy" => fold_json::<FeasibilityStudy>(snapshot, events),
        "FhirFilter" => fold_json::<FhirFilter>(snapshot, events),
        "Folder" => fold_json::<Folder>(snapshot, events),
        "MailDelivery" => fold_json::<MailDelivery>(snapshot, events),
        "MaintenancePhase" => fold_json::<MaintenancePhase>(snapshot, events),
        "Perimeter" => fold_json::<Perimeter>(snapshot, events),
        "RefreshSchedule" => fold_json::<RefreshSchedule>(snapshot, events),
        "Request" => fold_json::<Request>(snapshot, events),
        "Role" => fold_json::<Role>(snapshot, events),
        "Session" => fold_json::<Session>(snapshot, events),
        "User" => fold_json::<User>(snapshot, events),
        _ => return None,
    };
    Some(folded)
}
