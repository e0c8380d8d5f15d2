//! `/audit/…`: the event log read by auditors (full administrators, or holders of the
//! `right_read_audit` extension right). Every read is itself recorded as an `AuditReadRecorded`
//! event before it is answered.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, OriginalUri, Path, Query, State};
use axum::http::Uri;
use axum::http::request::Parts;
use axum::routing;
use chrono::{DateTime, Utc};
use domain::audit_read::AuditReadCommand;
use projections::Cursor;
use projections::audit::{AggregateState, AsOf, AuditEvent, EventFilter};
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{Auditor, Documented, ParamType, Shape, op, param};
use crate::pagination::{Params, datetime_param, int_param, text_param};
use crate::state::AppState;

/// Aggregate types an auditor may name in a path.
pub(crate) const AUDITABLE: &[&str] = &[
    "Access",
    "AuditRead",
    "User",
    "Role",
    "Perimeter",
    "MaintenancePhase",
    "Session",
    "Folder",
    "Request",
    "Count",
    "Cohort",
    "FhirFilter",
    "MailDelivery",
    "FeasibilityStudy",
    "RefreshSchedule",
    "WebContent",
    "ReleaseNote",
    "Export",
    "Datalab",
    "InfrastructureProvider",
];

/// Longest page of `/audit/events/`.
const MAX_EVENTS_PAGE: i64 = 1000;
const DEFAULT_EVENTS_PAGE: i64 = 100;

/// Who asks the audit API, and what they asked (kept in the record of the read).
pub(super) struct AuditRequest {
    caller: Caller,
    route: String,
    target: Uri,
}

impl FromRequestParts<AppState> for AuditRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(String::new, |p| p.as_str().to_string());
        let target = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |u| u.0.clone());
        Ok(Self {
            caller,
            route,
            target,
        })
    }
}

impl AuditRequest {
    /// The caller may read the audit trail; the read is recorded before anything is answered.
    async fn authorize_and_record(&self, state: &AppState) -> Result<(), ApiError> {
        let caller = &self.caller;
        super::require(state, caller, commands::authz::Permission::ReadAudit).await?;
        let at = Utc::now();
        let record = AuditReadCommand::Record {
            reader: caller.username.clone(),
            route: self.route.clone(),
            target: self.target.to_string(),
            at,
        };
        let trace = commands::trace::current().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let ctx = commands::CommandContext {
            user: caller.username.clone(),
            impersonator: caller.impersonator.clone(),
            correlation_id: trace.clone(),
            causation_id: trace,
            at,
        };
        let id = uuid::Uuid::new_v4().to_string();
        state
            .audit_reads
            .execute(&id, record, &ctx)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "audit read not recorded");
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "audit_record_failed",
                    "this read could not be recorded in the audit trail, so it is not answered; \
                     retry shortly",
                )
            })?;
        Ok(())
    }
}

fn known_type(aggregate_type: &str) -> Result<(), ApiError> {
    if AUDITABLE.contains(&aggregate_type) {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "aggregate_type_unknown",
            "aggregate type",
        ))
    }
}

/// A page of `/audit/events/`.
#[derive(Debug, Serialize)]
pub(super) struct EventsPage {
    results: Vec<AuditEvent>,
    /// Cursor to pass as `after` for the next page; `null` on the last page.
    next_cursor: Option<String>,
    next: Option<String>,
}

/// `GET /audit/events/`: the whole log, filtered and paged by cursor (log order).
pub(super) async fn events(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Query(params): Query<Params>,
) -> Result<Json<EventsPage>, ApiError> {
    let after = match text_param(&params, "after") {
        None => Cursor::START,
        Some(raw) => raw.parse::<Cursor>().map_err(|_| {
            ApiError::invalid_field("after", "after must be a cursor given by a previous page")
        })?,
    };
    let limit = int_param(&params, "limit")?.unwrap_or(DEFAULT_EVENTS_PAGE);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("limit must be between 1 and {MAX_EVENTS_PAGE}"),
        ));
    }
    let filter = EventFilter {
        aggregate_type: text_param(&params, "aggregate_type"),
        aggregate_id: text_param(&params, "aggregate_id"),
        event_type: text_param(&params, "event_type"),
        actor: text_param(&params, "actor"),
        impersonator: text_param(&params, "impersonator"),
        recorded_from: datetime_param(&params, "recorded_from")?,
        recorded_before: datetime_param(&params, "recorded_before")?,
    };
    auditor.authorize_and_record(&state).await?;
    let rows = state.audit.events(&filter, after, limit).await?;
    let next_cursor = if rows.len() as i64 == limit {
        rows.last().map(|(cursor, _)| cursor.to_string())
    } else {
        None
    };
    let next = next_cursor.as_ref().map(|cursor| {
        let mut query: BTreeMap<&str, &str> = params
            .iter()
            .filter(|(k, _)| k.as_str() != "after")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        query.insert("after", cursor);
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        format!("{}?{}", auditor.target.path(), encoded.join("&"))
    });
    Ok(Json(EventsPage {
        results: rows.into_iter().map(|(_, e)| e).collect(),
        next_cursor,
        next,
    }))
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /audit/{aggregate_type}/{id}/events/`.
pub(super) async fn aggregate_history(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path((aggregate_type, id)): Path<(String, String)>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    known_type(&aggregate_type)?;
    auditor.authorize_and_record(&state).await?;
    Ok(Json(
        state.audit.aggregate_history(&aggregate_type, &id).await?,
    ))
}

/// `GET /audit/{aggregate_type}/{id}/state/?version=N` or `?at=<instant>`: the aggregate's
/// state after its event `N`, or as the log knew it at that instant (latest when neither).
pub(super) async fn aggregate_state(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path((aggregate_type, id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Result<Json<AggregateState>, ApiError> {
    known_type(&aggregate_type)?;
    let as_of = match (
        int_param(&params, "version")?,
        datetime_param(&params, "at")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "ambiguous_as_of",
                "give either version or at, not both",
            ));
        }
        (Some(v), None) if v < 1 => {
            return Err(ApiError::invalid_field(
                "version",
                "version must be 1 or more",
            ));
        }
        (Some(v), None) => AsOf::Version(v),
        (None, Some(t)) => AsOf::Time(t),
        (None, None) => AsOf::Time(Utc::now()),
    };
    auditor.authorize_and_record(&state).await?;
    state
        .audit
        .state_as_of(&aggregate_type, &id, as_of)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("state_not_found", "aggregate state at that point"))
}

/// `GET /audit/users/{username}/accesses/`: every event of every access granted to a user.
pub(super) async fn user_accesses(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path(username): Path<String>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    auditor.authorize_and_record(&state).await?;
    Ok(Json(state.audit.user_access_history(&username).await?))
}

fn at_param(params: &Params) -> Result<DateTime<Utc>, ApiError> {
    Ok(datetime_param(params, "at")?.unwrap_or_else(Utc::now))
}

/// `GET /audit/users/{username}/grants/?at=<instant>`: the user's accesses in force at that
/// instant, with each role's rights then, as the log knew them then.
pub(super) async fn user_grants(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path(username): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let at = at_param(&params)?;
    auditor.authorize_and_record(&state).await?;
    let known = state.audit.known_at(at).await?;
    Ok(Json(json!({
        "username": username,
        "at": at,
        "grants": known.grants_in_force(at, Some(&username)),
    })))
}

/// `GET /audit/perimeters/{id}/readers/?at=<instant>`: who could read the perimeter's patients
/// at that instant, nominatively or not, and through which grant (on it or on an ancestor).
pub(super) async fn perimeter_readers(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let perimeter = super::path_int(&id, "perimeter", "perimeter_not_found")?;
    let at = at_param(&params)?;
    auditor.authorize_and_record(&state).await?;
    let known = state.audit.known_at(at).await?;
    if !known.perimeter_exists(perimeter) {
        return Err(ApiError::not_found(
            "perimeter_not_found",
            "perimeter in the tree at that date",
        ));
    }
    Ok(Json(json!({
        "perimeter_id": perimeter,
        "at": at,
        "readers": known.readers_of(perimeter, at),
    })))
}

/// One query version of a request, as its events tell.
#[derive(Debug, Clone, Serialize)]
struct VersionNode {
    snapshot_id: String,
    version: Value,
    previous_snapshot: Value,
    name: Value,
    saved_at: Value,
    saved_by: Value,
    shared_by: Value,
    /// In-place changes of the query text (`QuerySnapshotPatched`).
    patches: Vec<Value>,
    next_snapshots: Vec<String>,
    #[serde(skip)]
    query: String,
}

/// The query versions of a request by snapshot id, in the order they were saved.
async fn versions(state: &AppState, request: &str) -> Result<Vec<VersionNode>, ApiError> {
    let history = state.audit.aggregate_history("Request", request).await?;
    if history.is_empty() {
        return Err(ApiError::not_found("request_not_found", "request"));
    }
    let mut nodes: Vec<VersionNode> = Vec::new();
    for event in &history {
        let body = &event.payload[&event.event_type];
        let snapshot = body["snapshot_id"].as_str().unwrap_or_default().to_string();
        match event.event_type.as_str() {
            "QuerySnapshotSaved" => nodes.push(VersionNode {
                snapshot_id: snapshot,
                version: body["version"].clone(),
                previous_snapshot: body["previous_snapshot"].clone(),
                name: body["name"].clone(),
                saved_at: body["at"].clone(),
                saved_by: event.metadata["user"].clone(),
                shared_by: body["shared_by"].clone(),
                patches: Vec::new(),
                next_snapshots: Vec::new(),
                query: body["serialized_query"].as_str().unwrap_or_default().into(),
            }),
            "QuerySnapshotPatched" => {
                if let Some(node) = nodes.iter_mut().find(|n| n.snapshot_id == snapshot) {
                    node.patches.push(json!({
                        "patch_version": body["patch_version"],
                        "at": body["at"],
                        "by": event.metadata["user"],
                    }));
                    node.query = body["serialized_query"].as_str().unwrap_or_default().into();
                }
            }
            "QuerySnapshotRenamed" => {
                if let Some(node) = nodes.iter_mut().find(|n| n.snapshot_id == snapshot) {
                    node.name = body["name"].clone();
                }
            }
            _ => {}
        }
    }
    let links: Vec<(String, String)> = nodes
        .iter()
        .filter_map(|n| {
            n.previous_snapshot
                .as_str()
                .map(|p| (p.to_string(), n.snapshot_id.clone()))
        })
        .collect();
    for (parent, child) in links {
        if let Some(node) = nodes.iter_mut().find(|n| n.snapshot_id == parent) {
            node.next_snapshots.push(child);
        }
    }
    Ok(nodes)
}

/// `GET /audit/requests/{id}/versions/`: the tree of a request's query versions (each with its
/// previous version, the versions saved from it, its patches and who saved it).
pub(super) async fn request_versions(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auditor.authorize_and_record(&state).await?;
    let nodes = versions(&state, &id).await?;
    let roots: Vec<&str> = nodes
        .iter()
        .filter(|n| n.previous_snapshot.is_null())
        .map(|n| n.snapshot_id.as_str())
        .collect();
    Ok(Json(
        json!({ "request_id": id, "roots": roots, "versions": nodes }),
    ))
}

/// `GET /audit/requests/{id}/diff/?from=<snapshot>&to=<snapshot>`: what changed in the query
/// between two versions (`from` defaults to the previous version of `to`).
pub(super) async fn request_diff(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let Some(to) = text_param(&params, "to") else {
        return Err(ApiError::invalid_field(
            "to",
            "give the snapshot to compare (to=<uuid>)",
        ));
    };
    auditor.authorize_and_record(&state).await?;
    let nodes = versions(&state, &id).await?;
    let find = |snapshot: &str, field: &'static str| {
        nodes
            .iter()
            .find(|n| n.snapshot_id == snapshot)
            .ok_or_else(|| ApiError::not_found("snapshot_not_found", field))
    };
    let after = find(&to, "snapshot `to` in this request")?;
    let from = match text_param(&params, "from") {
        Some(from) => from,
        None => after
            .previous_snapshot
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid_field("from", "the first version has no previous one; give from")
            })?,
    };
    let before = find(&from, "snapshot `from` in this request")?;
    let diff = domain::query_diff::diff(&before.query, &after.query).map_err(|e| {
        ApiError::bad_request(
            "query_not_comparable",
            format!("a stored query cannot be read: {e}"),
        )
    })?;
    Ok(Json(json!({
        "request_id": id,
        "from": {"snapshot_id": before.snapshot_id, "version": before.version},
        "to": {"snapshot_id": after.snapshot_id, "version": after.version},
        "diff": diff,
    })))
}

/// `GET /audit/cohorts/{id}/lineage/`: where a cohort comes from, from the event log alone: the
/// query version it was created from (its `QuerySnapshotSaved` and later patches), the counts
/// (with their executor jobs and results) and the cohort's own lifecycle.
pub(super) async fn cohort_lineage(
    State(state): State<AppState>,
    auditor: AuditRequest,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auditor.authorize_and_record(&state).await?;
    let cohort = state.audit.aggregate_history("Cohort", &id).await?;
    let Some(requested) = cohort
        .iter()
        .find(|e| e.event_type == "CohortRequested")
        .map(|e| e.payload["CohortRequested"].clone())
    else {
        return Err(ApiError::not_found("cohort_not_found", "cohort"));
    };
    let text = |key: &str| requested[key].as_str().map(str::to_string);
    let mut counts = Vec::new();
    for key in ["dated_measure", "global_measure"] {
        if let Some(count) = text(key) {
            counts.push(state.audit.aggregate_history("Count", &count).await?);
        }
    }
    let snapshot = text("snapshot_id").unwrap_or_default();
    let query_version: Vec<AuditEvent> = match text("request_id") {
        Some(request) => state
            .audit
            .aggregate_history("Request", &request)
            .await?
            .into_iter()
            .filter(|e| {
                e.payload
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|v| v.get("snapshot_id"))
                    .and_then(|v| v.as_str())
                    == Some(snapshot.as_str())
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(json!({
        "cohort": cohort,
        "counts": counts,
        "query_version": query_version,
    })))
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/audit/events/",
            routing::get(events),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "The event log, filtered and paged by cursor",
            )
            .answers(Shape::Object(None))
            .query(&[
                param("after", ParamType::Text),
                param("limit", ParamType::Integer),
                param("aggregate_type", ParamType::Text),
                param("aggregate_id", ParamType::Text),
                param("event_type", ParamType::Text),
                param("actor", ParamType::Text),
                param("impersonator", ParamType::Text),
                param("recorded_from", ParamType::DateTime),
                param("recorded_before", ParamType::DateTime),
            ])],
        )
        .route(
            "/audit/users/{username}/accesses/",
            routing::get(user_accesses),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "Every event of every access granted to a user",
            )
            .returns_list::<AuditEvent>()],
        )
        .route(
            "/audit/users/{username}/grants/",
            routing::get(user_grants),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "A user's accesses in force at a date (at=)",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/audit/perimeters/{id}/readers/",
            routing::get(perimeter_readers),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "Who could read a perimeter at a date (at=), through which grant",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/audit/requests/{id}/versions/",
            routing::get(request_versions),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "A request's query-version tree",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/audit/requests/{id}/diff/",
            routing::get(request_diff),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "What changed between two query versions (from=, to=)",
            )
            .answers(Shape::Json)
            .query(&[param("to", ParamType::Text), param("from", ParamType::Text)])],
        )
        .route(
            "/audit/cohorts/{id}/lineage/",
            routing::get(cohort_lineage),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "A cohort's query version, counts and jobs",
            )
            .answers(Shape::Json)],
        )
        .route(
            "/audit/{aggregate_type}/{id}/events/",
            routing::get(aggregate_history),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "One aggregate's stored events",
            )
            .returns_list::<AuditEvent>()],
        )
        .route(
            "/audit/{aggregate_type}/{id}/state/",
            routing::get(aggregate_state),
            [op(
                "GET",
                "Audit",
                Auditor,
                200,
                "One aggregate's state as of a version (version=) or a time (at=)",
            )
            .answers(Shape::Object(None))
            .query(&[
                param("version", ParamType::Integer),
                param("at", ParamType::DateTime),
            ])],
        )
}
