//! The one place where errors become HTTP responses.
//!
//! Every error body is `{"code": <stable snake_case>, "message": <human text>}` plus `field` when
//! one input field is at fault. Codes are part of the API contract (README, "Error codes").

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::cohorts::CohortsError;
use commands::identity::IdentityError;
use commands::ports::ExternalAuthError;
use commands::workspace::WorkspaceError;
use domain::access::AccessError;
use domain::cohort::CohortError;
use domain::count::CountError;
use domain::feasibility::StudyError;
use domain::fhir_filter::FhirFilterError;
use domain::folder::FolderError;
use domain::maintenance::MaintenanceError;
use domain::refresh::ScheduleError;
use domain::request::RequestError;
use domain::role::RoleError;
use domain::user::UserError;
use projections::ReadError;
use serde::Serialize;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid_field(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::bad_request("invalid_field", message)
        }
    }

    pub fn not_found(code: &'static str, what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, format!("{what} not found"))
    }

    /// No route matches the path.
    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "page not found")
    }

    /// The path exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this path",
        )
    }

    /// A body over the size limit.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {limit_bytes} bytes"),
        )
    }

    /// Text Postgres cannot store (U+0000), found in `place`.
    pub fn invalid_text(place: &str) -> Self {
        Self::bad_request(
            "invalid_text",
            format!("the {place} contains the character U+0000, which cannot be stored"),
        )
    }

    /// An `Idempotency-Key` first used for another request.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request (another path or body)",
        )
    }

    /// An `Idempotency-Key` whose first request has not answered yet (retry shortly).
    pub fn idempotency_key_in_progress() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_progress",
            "a request with this Idempotency-Key is still running; retry shortly",
        )
    }

    /// The caller is known but may not do this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// A token that failed verification (`token_invalid`, `token_expired`, …).
    pub fn token_rejected(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// A bug or broken invariant: `detail` goes to the log only.
    pub fn bug(detail: &str) -> Self {
        Self::internal(detail)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authenticated", message)
    }

    fn internal(detail: &str) -> Self {
        // The detail goes to the log, never to the client.
        tracing::error!(error = detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    fn unavailable(detail: &str) -> Self {
        tracing::warn!(error = detail, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "a required service is unavailable; retry shortly",
        )
    }
}

/// The answer to a request refused because of an active maintenance phase: upstream's body
/// (`message`, `maintenance_start`, `maintenance_end`, `active`) plus our `code` and `type`.
pub fn maintenance_refusal(message: String, details: serde_json::Value) -> Response {
    let mut body = serde_json::json!({"code": "maintenance", "message": message, "active": true});
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), details) {
        body.extend(extra);
    }
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
            field: self.field,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.code == "idempotency_key_in_progress"
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<FolderError> for ApiError {
    fn from(e: FolderError) -> Self {
        match e {
            FolderError::AlreadyExists => {
                Self::new(StatusCode::CONFLICT, "folder_already_exists", e.to_string())
            }
            FolderError::NotFound => Self::not_found("folder_not_found", "folder"),
            FolderError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::AlreadyExists => Self::new(
                StatusCode::CONFLICT,
                "request_already_exists",
                e.to_string(),
            ),
            RequestError::NotFound => Self::not_found("request_not_found", "request"),
            RequestError::SnapshotNotFound => {
                Self::not_found("snapshot_not_found", "query snapshot")
            }
            RequestError::SnapshotAlreadyExists => Self::new(
                StatusCode::CONFLICT,
                "snapshot_already_exists",
                e.to_string(),
            ),
            RequestError::PreviousSnapshotRequired => Self {
                field: Some("previous_snapshot"),
                ..Self::bad_request("previous_snapshot_required", e.to_string())
            },
            RequestError::InvalidQuery(_) => Self {
                field: Some("serialized_query"),
                ..Self::bad_request("invalid_serialized_query", e.to_string())
            },
            RequestError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            RequestError::NoRecipients => Self::invalid_field("recipients", e.to_string()),
        }
    }
}

impl From<CountError> for ApiError {
    fn from(e: CountError) -> Self {
        match e {
            CountError::AlreadyExists => Self::new(
                StatusCode::CONFLICT,
                "dated_measure_already_exists",
                e.to_string(),
            ),
            CountError::NotFound => Self::not_found("dated_measure_not_found", "dated measure"),
            CountError::Job(_) => {
                Self::new(StatusCode::CONFLICT, "job_state_conflict", e.to_string())
            }
        }
    }
}

impl From<CohortError> for ApiError {
    fn from(e: CohortError) -> Self {
        match e {
            CohortError::AlreadyExists => {
                Self::new(StatusCode::CONFLICT, "cohort_already_exists", e.to_string())
            }
            CohortError::NotFound => Self::not_found("cohort_not_found", "cohort"),
            CohortError::Job(_) => {
                Self::new(StatusCode::CONFLICT, "job_state_conflict", e.to_string())
            }
            CohortError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
        }
    }
}

impl From<CohortsError> for ApiError {
    fn from(e: CohortsError) -> Self {
        match e {
            CohortsError::Count(e) => e.into(),
            CohortsError::Cohort(e) => e.into(),
            CohortsError::Request(e) => e.into(),
            CohortsError::FhirFilter(e) => match e {
                FhirFilterError::AlreadyExists => Self::new(
                    StatusCode::CONFLICT,
                    "fhir_filter_already_exists",
                    e.to_string(),
                ),
                FhirFilterError::NotFound => Self::not_found("fhir_filter_not_found", "filter"),
                FhirFilterError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            },
            CohortsError::Study(e) => match e {
                StudyError::NotFound => {
                    Self::not_found("feasibility_study_not_found", "feasibility study")
                }
                StudyError::AlreadyExists | StudyError::Job(_) => {
                    Self::new(StatusCode::CONFLICT, "job_state_conflict", e.to_string())
                }
            },
            CohortsError::Schedule(e) => match e {
                ScheduleError::NotFound => {
                    Self::not_found("refresh_schedule_not_found", "refresh schedule")
                }
                ScheduleError::AlreadyExists | ScheduleError::AlreadyRan => Self::new(
                    StatusCode::CONFLICT,
                    "refresh_schedule_conflict",
                    e.to_string(),
                ),
            },
            CohortsError::FilterNameTaken => Self {
                field: Some("name"),
                ..Self::bad_request("fhir_filter_name_taken", e.to_string())
            },
            CohortsError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            CohortsError::Technical(t) => t.into(),
        }
    }
}

impl From<commands::exports::ExportsError> for ApiError {
    fn from(e: commands::exports::ExportsError) -> Self {
        use commands::exports::ExportsError as E;
        use domain::datalab::DatalabError;
        use domain::export::{ExportError, ExportRefusal};
        let message = e.to_string();
        match e {
            E::Refused(ExportRefusal::Forbidden(m)) => Self::forbidden("export_not_allowed", m),
            E::Refused(ExportRefusal::Invalid { field, reason }) => Self {
                field: Some(field),
                ..Self::bad_request("invalid_export", reason)
            },
            E::Export(ExportError::NotFound) => Self::not_found("export_not_found", "export"),
            E::Export(ExportError::NoSuchTable(_)) => Self::bad_request("invalid_export", message),
            E::Export(_) => Self::new(StatusCode::CONFLICT, "export_state_conflict", message),
            E::Datalab(DatalabError::NotFound) => Self::not_found("datalab_not_found", "datalab"),
            E::Datalab(DatalabError::AlreadyExists) => {
                Self::new(StatusCode::CONFLICT, "datalab_conflict", message)
            }
            E::Datalab(DatalabError::Invalid(f)) => Self::invalid_field(f.field, f.to_string()),
            E::DatalabNameTaken => Self {
                field: Some("name"),
                ..Self::bad_request("datalab_name_taken", message)
            },
            E::ProviderInUse => Self::new(StatusCode::CONFLICT, "provider_in_use", message),
            E::NotDownloadable(_) => Self::bad_request("export_not_downloadable", message),
            E::NoTask => Self::bad_request("export_without_task", message),
            E::ExporterTimeout => {
                Self::new(StatusCode::REQUEST_TIMEOUT, "exporter_timeout", message)
            }
            E::Exporter(_) => Self::new(StatusCode::BAD_GATEWAY, "exporter_error", message),
            E::Cohorts(e) => e.into(),
            E::Authz(e) => e.into(),
            E::Technical(t) => t.into(),
        }
    }
}

impl From<WorkspaceError> for ApiError {
    fn from(e: WorkspaceError) -> Self {
        match e {
            WorkspaceError::Folder(e) => e.into(),
            WorkspaceError::Request(e) => e.into(),
            WorkspaceError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            WorkspaceError::Technical(t) => t.into(),
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let message = e.to_string();
        match e {
            IdentityError::Forbidden(_) => Self::forbidden("permission_denied", message),
            IdentityError::NotFound(what) => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            IdentityError::BadCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", message)
            }
            IdentityError::External(e) => e.into(),
            IdentityError::SessionEnded => {
                Self::new(StatusCode::UNAUTHORIZED, "session_ended", message)
            }
            IdentityError::UnknownUser => {
                Self::new(StatusCode::UNAUTHORIZED, "user_unknown", message)
            }
            IdentityError::RoleNameTaken(_) => Self {
                field: Some("name"),
                ..Self::bad_request("role_name_taken", message)
            },
            IdentityError::User(e) => match e {
                UserError::AlreadyExists => {
                    Self::new(StatusCode::CONFLICT, "user_already_exists", message)
                }
                UserError::NotFound => Self::not_found("user_not_found", "user"),
                UserError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            },
            IdentityError::Role(e) => match e {
                RoleError::NotFound => Self::not_found("role_not_found", "role"),
                RoleError::AlreadyExists => {
                    Self::new(StatusCode::CONFLICT, "role_already_exists", message)
                }
                RoleError::Inconsistent(_) => Self::bad_request("inconsistent_rights", message),
                RoleError::FullAdminRoleIsPermanent | RoleError::InUse => {
                    Self::forbidden("role_not_deletable", message)
                }
                RoleError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            },
            IdentityError::Access(e) => match e {
                AccessError::NotFound => Self::not_found("access_not_found", "access"),
                AccessError::AlreadyExists => {
                    Self::new(StatusCode::CONFLICT, "access_already_exists", message)
                }
                AccessError::DateInPast { field } | AccessError::PastDateFrozen { field } => Self {
                    field: Some(field),
                    ..Self::bad_request("invalid_access_dates", message)
                },
                AccessError::EndBeforeStart | AccessError::NothingToChange => {
                    Self::bad_request("invalid_access_dates", message)
                }
                AccessError::AlreadyEnded
                | AccessError::NotStarted
                | AccessError::AlreadyStarted
                | AccessError::AlreadyAlerted => Self::bad_request("invalid_access_state", message),
            },
            IdentityError::Maintenance(e) => match e {
                MaintenanceError::NotFound => {
                    Self::not_found("maintenance_not_found", "maintenance phase")
                }
                MaintenanceError::AlreadyExists => {
                    Self::new(StatusCode::CONFLICT, "maintenance_already_exists", message)
                }
                MaintenanceError::EndBeforeStart => Self {
                    field: Some("end_datetime"),
                    ..Self::bad_request("invalid_maintenance_dates", message)
                },
                MaintenanceError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            },
            IdentityError::Perimeter(e) => Self::bad_request("invalid_perimeter", e.to_string()),
            IdentityError::Invalid(f) => Self::invalid_field(f.field, f.to_string()),
            IdentityError::Technical(t) => t.into(),
        }
    }
}

impl From<ExternalAuthError> for ApiError {
    fn from(e: ExternalAuthError) -> Self {
        match e {
            ExternalAuthError::NotConfigured(what) => Self::new(
                StatusCode::UNAUTHORIZED,
                "provider_not_configured",
                format!("{what} is not configured on this server"),
            ),
            ExternalAuthError::Rejected(m) => {
                Self::new(StatusCode::UNAUTHORIZED, "provider_rejected", m)
            }
            ExternalAuthError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "identity provider unavailable");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_unavailable",
                    "the identity provider could not be reached; retry shortly",
                )
            }
        }
    }
}

impl From<commands::content::ContentFailure> for ApiError {
    fn from(e: commands::content::ContentFailure) -> Self {
        use commands::content::ContentFailure;
        use domain::content::ContentError;
        match e {
            ContentFailure::Rejected(ContentError::NotFound) => {
                Self::not_found("content_not_found", "content")
            }
            ContentFailure::Rejected(ContentError::NoteNotFound) => {
                Self::not_found("release_note_not_found", "release note")
            }
            ContentFailure::Rejected(ContentError::AlreadyExists) => Self::new(
                StatusCode::CONFLICT,
                "content_already_exists",
                "this content already exists",
            ),
            ContentFailure::Rejected(ContentError::Invalid(f)) => {
                Self::invalid_field(f.field, f.to_string())
            }
            ContentFailure::Authz(e) => e.into(),
            ContentFailure::Technical(t) => t.into(),
        }
    }
}

impl From<commands::authz::AuthzError> for ApiError {
    fn from(e: commands::authz::AuthzError) -> Self {
        match e {
            commands::authz::AuthzError::Refused(r) => Self::forbidden(r.code, r.message),
            commands::authz::AuthzError::Unavailable(detail) => Self::unavailable(&detail.0),
        }
    }
}

/// The technical half of every service error, mapped once.
impl From<commands::error::Technical> for ApiError {
    fn from(e: commands::error::Technical) -> Self {
        use commands::error::Technical;
        match e {
            Technical::Conflict => Self::new(
                StatusCode::CONFLICT,
                "concurrent_modification",
                "the object was modified concurrently; retry",
            ),
            Technical::Unavailable(detail) => Self::unavailable(&detail),
            Technical::Internal(detail) => Self::internal(&detail),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::InvalidSearch(m) => Self {
                field: Some("search"),
                ..Self::bad_request("invalid_search", format!("invalid search pattern: {m}"))
            },
            ReadError::Unavailable(detail) => Self::unavailable(&detail),
            ReadError::Internal(detail) => Self::internal(&detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use commands::error::Technical;

    use super::*;

    #[test]
    fn conflicts_unavailability_and_bugs_map_to_their_statuses_without_leaking_details() {
        let conflict = ApiError::from(WorkspaceError::from(Technical::Conflict));
        assert_eq!(
            (conflict.status, conflict.code),
            (StatusCode::CONFLICT, "concurrent_modification")
        );
        let down = ApiError::from(WorkspaceError::from(Technical::Unavailable(
            "pool timed out at 10.0.0.3".into(),
        )));
        assert_eq!(
            (down.status, down.code),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        );
        assert!(!down.message.contains("10.0.0.3"));
        let bug = ApiError::from(WorkspaceError::from(Technical::Internal(
            "column x does not exist".into(),
        )));
        assert_eq!(
            (bug.status, bug.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        assert!(!bug.message.contains("column"));
        let hidden = ApiError::from(RequestError::NotFound);
        assert_eq!(
            (hidden.status, hidden.code),
            (StatusCode::NOT_FOUND, "request_not_found")
        );
    }
}
