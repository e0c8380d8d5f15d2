//! The OpenAPI 3.1 document (`/schema`) and Swagger UI (`/docs`).
//!
//! Every operation the router serves is listed in [`OPERATIONS`]: who may call it, what it does,
//! its success status; the error statuses follow from those (see [`error_statuses`]). The
//! document is built from that table with utoipa's builders. `tests/tests/e2e/openapi.rs` probes
//! the router for every route in `routes/mod.rs` and fails when one is missing here (or listed
//! here but not served).

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    Required, ResponseBuilder, ResponsesBuilder,
};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No token needed.
    Anyone,
    /// Any authenticated user (object scoping and rights apply).
    User,
    /// An authenticated user, or the QueryExecutor / Solr ETL with their applicative tokens.
    UserOrApplicative,
    /// Full administrators only.
    FullAdmin,
    /// Full administrators and holders of `right_read_audit`.
    Auditor,
}

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub caller: Caller,
    /// The success status.
    pub status: u16,
}

const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    caller: Caller,
    status: u16,
    summary: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        tag,
        summary,
        caller,
        status,
    }
}

use Caller::{Anyone, Auditor, FullAdmin, User, UserOrApplicative};

/// Every operation of the API.
pub const OPERATIONS: &[Operation] = &[
    op(
        "GET",
        "/health/live",
        "Operations",
        Anyone,
        200,
        "The process answers",
    ),
    op(
        "GET",
        "/health/ready",
        "Operations",
        Anyone,
        200,
        "Postgres, NATS and the relay are usable (503 with each check otherwise)",
    ),
    op(
        "GET",
        "/metrics",
        "Operations",
        Anyone,
        200,
        "Prometheus metrics (bearer METRICS_TOKEN when configured)",
    ),
    op(
        "GET",
        "/admin/projections/",
        "Operations",
        FullAdmin,
        200,
        "Each projection's, reactor's and the relay's position, backlog, lag and last error",
    ),
    op(
        "GET",
        "/logs/",
        "Operations",
        FullAdmin,
        200,
        "Request logs of writes and downloads (filters: method, status_code, user, requested_at_after/_before, response_ms_min/_max, path_contains, trace_id)",
    ),
    op(
        "GET",
        "/logs/{id}/",
        "Operations",
        FullAdmin,
        200,
        "One request log",
    ),
    op(
        "GET",
        "/webcontent/contents/",
        "Web content",
        Anyone,
        200,
        "Banners and news (filters: content_type, page_source, search, ordering)",
    ),
    op(
        "POST",
        "/webcontent/contents/",
        "Web content",
        FullAdmin,
        201,
        "Create a web content",
    ),
    op(
        "GET",
        "/webcontent/contents/content_types/",
        "Web content",
        Anyone,
        200,
        "Content types and their labels",
    ),
    op(
        "GET",
        "/webcontent/contents/{id}/",
        "Web content",
        Anyone,
        200,
        "One web content",
    ),
    op(
        "PATCH",
        "/webcontent/contents/{id}/",
        "Web content",
        FullAdmin,
        200,
        "Change a web content",
    ),
    op(
        "DELETE",
        "/webcontent/contents/{id}/",
        "Web content",
        FullAdmin,
        204,
        "Delete a web content",
    ),
    op(
        "GET",
        "/release-notes/",
        "Web content",
        User,
        200,
        "Release notes, newest first (search)",
    ),
    op(
        "POST",
        "/release-notes/",
        "Web content",
        FullAdmin,
        201,
        "Create a release note",
    ),
    op(
        "GET",
        "/release-notes/{id}/",
        "Web content",
        User,
        200,
        "One release note",
    ),
    op(
        "PATCH",
        "/release-notes/{id}/",
        "Web content",
        FullAdmin,
        200,
        "Change a release note",
    ),
    op(
        "POST",
        "/auth/login/",
        "Authentication",
        Anyone,
        200,
        "Log in (JWT: username and password; OIDC: authorization code)",
    ),
    op(
        "POST",
        "/auth/refresh/",
        "Authentication",
        Anyone,
        200,
        "Exchange a refresh token for a new pair",
    ),
    op(
        "POST",
        "/auth/logout/",
        "Authentication",
        Anyone,
        200,
        "End the session of a refresh token",
    ),
    op(
        "GET",
        "/ws/",
        "Authentication",
        Anyone,
        101,
        "WebSocket: job statuses and maintenance announcements (token sent in the first message)",
    ),
    op("GET", "/users/", "Users", User, 200, "List users"),
    op(
        "POST",
        "/users/",
        "Users",
        User,
        201,
        "Create a user (right_manage_users)",
    ),
    op("GET", "/users/{username}/", "Users", User, 200, "One user"),
    op(
        "PATCH",
        "/users/{username}/",
        "Users",
        User,
        200,
        "Change a user's details",
    ),
    op(
        "GET",
        "/users/{username}/check/",
        "Users",
        User,
        200,
        "Whether a username is known, here or by the identity service",
    ),
    op(
        "GET",
        "/maintenances/",
        "Maintenance",
        Anyone,
        200,
        "Maintenance phases",
    ),
    op(
        "POST",
        "/maintenances/",
        "Maintenance",
        FullAdmin,
        201,
        "Schedule a maintenance phase",
    ),
    op(
        "GET",
        "/maintenances/next/",
        "Maintenance",
        Anyone,
        200,
        "The current or next maintenance phase",
    ),
    op(
        "GET",
        "/maintenances/{id}/",
        "Maintenance",
        Anyone,
        200,
        "One maintenance phase",
    ),
    op(
        "PATCH",
        "/maintenances/{id}/",
        "Maintenance",
        FullAdmin,
        200,
        "Change a maintenance phase",
    ),
    op(
        "DELETE",
        "/maintenances/{id}/",
        "Maintenance",
        FullAdmin,
        204,
        "Delete a maintenance phase",
    ),
    op(
        "GET",
        "/accesses/rights/",
        "Accesses",
        User,
        200,
        "The rights catalogue by category",
    ),
    op(
        "GET",
        "/accesses/rights/{id}/",
        "Accesses",
        User,
        200,
        "One right",
    ),
    op("GET", "/accesses/roles/", "Accesses", User, 200, "Roles"),
    op(
        "POST",
        "/accesses/roles/",
        "Accesses",
        FullAdmin,
        201,
        "Create a role",
    ),
    op(
        "GET",
        "/accesses/roles/assignable/",
        "Accesses",
        User,
        200,
        "Roles the caller may grant on a perimeter",
    ),
    op(
        "GET",
        "/accesses/roles/{id}/",
        "Accesses",
        User,
        200,
        "One role",
    ),
    op(
        "PATCH",
        "/accesses/roles/{id}/",
        "Accesses",
        FullAdmin,
        200,
        "Change a role",
    ),
    op(
        "DELETE",
        "/accesses/roles/{id}/",
        "Accesses",
        FullAdmin,
        204,
        "Delete an unused role",
    ),
    op(
        "GET",
        "/accesses/roles/{id}/users/",
        "Accesses",
        User,
        200,
        "Holders of a role on the perimeters the caller manages",
    ),
    op(
        "GET",
        "/accesses/profiles/",
        "Accesses",
        User,
        200,
        "Profiles",
    ),
    op(
        "GET",
        "/accesses/profiles/{id}/",
        "Accesses",
        User,
        200,
        "One profile",
    ),
    op(
        "GET",
        "/accesses/perimeters/",
        "Perimeters",
        User,
        200,
        "Perimeters",
    ),
    op(
        "GET",
        "/accesses/perimeters/manageable/",
        "Perimeters",
        User,
        200,
        "Perimeters the caller manages",
    ),
    op(
        "GET",
        "/accesses/perimeters/patient-data/rights/",
        "Perimeters",
        User,
        200,
        "The caller's data rights per perimeter",
    ),
    op(
        "GET",
        "/accesses/perimeters/patient-data/read/",
        "Perimeters",
        User,
        200,
        "Whether the caller may read given perimeters or cohorts",
    ),
    op(
        "GET",
        "/accesses/perimeters/{id}/",
        "Perimeters",
        User,
        200,
        "One perimeter",
    ),
    op(
        "GET",
        "/accesses/perimeters/{id}/children/",
        "Perimeters",
        User,
        200,
        "A perimeter's children",
    ),
    op(
        "GET",
        "/accesses/accesses/",
        "Accesses",
        User,
        200,
        "Accesses the caller may see",
    ),
    op(
        "POST",
        "/accesses/accesses/",
        "Accesses",
        User,
        201,
        "Grant an access (managing rules apply)",
    ),
    op(
        "GET",
        "/accesses/accesses/my-accesses/",
        "Accesses",
        User,
        200,
        "The caller's valid accesses",
    ),
    op(
        "GET",
        "/accesses/accesses/my-data-rights/",
        "Accesses",
        User,
        200,
        "The caller's data rights",
    ),
    op(
        "GET",
        "/accesses/accesses/{id}/",
        "Accesses",
        User,
        200,
        "One access",
    ),
    op(
        "PATCH",
        "/accesses/accesses/{id}/",
        "Accesses",
        User,
        200,
        "Change an access's dates",
    ),
    op(
        "DELETE",
        "/accesses/accesses/{id}/",
        "Accesses",
        User,
        204,
        "Withdraw an access that has not started",
    ),
    op(
        "PATCH",
        "/accesses/accesses/{id}/close/",
        "Accesses",
        User,
        200,
        "End an access now",
    ),
    op(
        "GET",
        "/fhir/metadata",
        "FHIR",
        User,
        200,
        "The FHIR CapabilityStatement of the clinical store",
    ),
    op(
        "GET",
        "/fhir/{resource}",
        "FHIR",
        User,
        200,
        "FHIR search (Patient, Encounter, Condition, Observation, MedicationRequest, Procedure) within the caller's reading perimeters",
    ),
    op(
        "GET",
        "/fhir/{resource}/{id}",
        "FHIR",
        User,
        200,
        "FHIR read of one resource, or List/{group_id} and Group/{group_id} for a created cohort",
    ),
    op(
        "GET",
        "/audit/events/",
        "Audit",
        Auditor,
        200,
        "The event log, filtered and paged by cursor",
    ),
    op(
        "GET",
        "/audit/users/{username}/accesses/",
        "Audit",
        Auditor,
        200,
        "Every event of every access granted to a user",
    ),
    op(
        "GET",
        "/audit/users/{username}/grants/",
        "Audit",
        Auditor,
        200,
        "A user's accesses in force at a date (at=)",
    ),
    op(
        "GET",
        "/audit/perimeters/{id}/readers/",
        "Audit",
        Auditor,
        200,
        "Who could read a perimeter at a date (at=), through which grant",
    ),
    op(
        "GET",
        "/audit/requests/{id}/versions/",
        "Audit",
        Auditor,
        200,
        "A request's query-version tree",
    ),
    op(
        "GET",
        "/audit/requests/{id}/diff/",
        "Audit",
        Auditor,
        200,
        "What changed between two query versions (from=, to=)",
    ),
    op(
        "GET",
        "/audit/cohorts/{id}/lineage/",
        "Audit",
        Auditor,
        200,
        "A cohort's query version, counts and jobs",
    ),
    op(
        "GET",
        "/audit/{aggregate_type}/{id}/events/",
        "Audit",
        Auditor,
        200,
        "One aggregate's stored events",
    ),
    op(
        "GET",
        "/audit/{aggregate_type}/{id}/state/",
        "Audit",
        Auditor,
        200,
        "One aggregate's state as of a version (version=) or a time (at=)",
    ),
    op(
        "GET",
        "/cohort/folders/",
        "Workspace",
        User,
        200,
        "The caller's folders",
    ),
    op(
        "POST",
        "/cohort/folders/",
        "Workspace",
        User,
        201,
        "Create a folder",
    ),
    op(
        "GET",
        "/cohort/folders/{id}/",
        "Workspace",
        User,
        200,
        "One folder",
    ),
    op(
        "PATCH",
        "/cohort/folders/{id}/",
        "Workspace",
        User,
        200,
        "Rename or describe a folder",
    ),
    op(
        "DELETE",
        "/cohort/folders/{id}/",
        "Workspace",
        User,
        204,
        "Delete folders (comma list of uuids) and their requests",
    ),
    op(
        "GET",
        "/cohort/folders/{id}/requests/",
        "Workspace",
        User,
        200,
        "Requests of a folder",
    ),
    op(
        "POST",
        "/cohort/folders/{id}/requests/",
        "Workspace",
        User,
        201,
        "Create a request in a folder",
    ),
    op(
        "GET",
        "/cohort/requests/",
        "Workspace",
        User,
        200,
        "The caller's requests",
    ),
    op(
        "POST",
        "/cohort/requests/",
        "Workspace",
        User,
        201,
        "Create a request",
    ),
    op(
        "GET",
        "/cohort/requests/{id}/",
        "Workspace",
        User,
        200,
        "One request",
    ),
    op(
        "PATCH",
        "/cohort/requests/{id}/",
        "Workspace",
        User,
        200,
        "Change a request",
    ),
    op(
        "DELETE",
        "/cohort/requests/{id}/",
        "Workspace",
        User,
        204,
        "Delete requests (comma list of uuids)",
    ),
    op(
        "GET",
        "/cohort/requests/{id}/query-snapshots/",
        "Workspace",
        User,
        200,
        "Query versions of a request",
    ),
    op(
        "POST",
        "/cohort/requests/{id}/query-snapshots/",
        "Workspace",
        User,
        201,
        "Save a query version of a request",
    ),
    op(
        "GET",
        "/cohort/request-query-snapshots/",
        "Workspace",
        User,
        200,
        "The caller's query versions",
    ),
    op(
        "POST",
        "/cohort/request-query-snapshots/",
        "Workspace",
        User,
        201,
        "Save a query version",
    ),
    op(
        "GET",
        "/cohort/request-query-snapshots/{id}/",
        "Workspace",
        User,
        200,
        "One query version",
    ),
    op(
        "PATCH",
        "/cohort/request-query-snapshots/{id}/",
        "Workspace",
        User,
        200,
        "Rename a query version or patch its query",
    ),
    op(
        "GET",
        "/cohort/request-query-snapshots/{id}/next-snapshots/",
        "Workspace",
        User,
        200,
        "Versions saved from this one",
    ),
    op(
        "POST",
        "/cohort/request-query-snapshots/{id}/next-snapshots/",
        "Workspace",
        User,
        201,
        "Save a version from this one",
    ),
    op(
        "POST",
        "/cohort/request-query-snapshots/{id}/share/",
        "Workspace",
        User,
        201,
        "Share a query version with other users",
    ),
    op(
        "GET",
        "/cohort/dated-measures/",
        "Cohorts",
        User,
        200,
        "The caller's counts",
    ),
    op(
        "POST",
        "/cohort/dated-measures/",
        "Cohorts",
        User,
        201,
        "Count a query version",
    ),
    op(
        "GET",
        "/cohort/dated-measures/{id}/",
        "Cohorts",
        User,
        200,
        "One count",
    ),
    op(
        "PATCH",
        "/cohort/dated-measures/{id}/",
        "Cohorts",
        UserOrApplicative,
        200,
        "QueryExecutor callback with a count's result",
    ),
    op(
        "GET",
        "/cohort/cohorts/",
        "Cohorts",
        User,
        200,
        "The caller's cohorts",
    ),
    op(
        "POST",
        "/cohort/cohorts/",
        "Cohorts",
        User,
        201,
        "Create a cohort (or a sample of one)",
    ),
    op(
        "GET",
        "/cohort/cohorts/jobs/active/",
        "Cohorts",
        User,
        200,
        "How many cohort jobs are running",
    ),
    op(
        "GET",
        "/cohort/cohorts/cohort-rights/",
        "Cohorts",
        User,
        200,
        "The caller's rights on the perimeters of given cohorts",
    ),
    op(
        "GET",
        "/cohort/cohorts/{id}/",
        "Cohorts",
        User,
        200,
        "One cohort",
    ),
    op(
        "PATCH",
        "/cohort/cohorts/{id}/",
        "Cohorts",
        UserOrApplicative,
        200,
        "Rename a cohort, or the executor's / ETL's callback",
    ),
    op(
        "DELETE",
        "/cohort/cohorts/{id}/",
        "Cohorts",
        User,
        204,
        "Delete cohorts (comma list of uuids)",
    ),
    op(
        "GET",
        "/cohort/feasibility-studies/",
        "Cohorts",
        User,
        200,
        "The caller's feasibility studies",
    ),
    op(
        "POST",
        "/cohort/feasibility-studies/",
        "Cohorts",
        User,
        201,
        "Request a feasibility report",
    ),
    op(
        "GET",
        "/cohort/feasibility-studies/{id}/",
        "Cohorts",
        User,
        200,
        "One feasibility study",
    ),
    op(
        "PATCH",
        "/cohort/feasibility-studies/{id}/",
        "Cohorts",
        UserOrApplicative,
        200,
        "QueryExecutor callback with a study's report",
    ),
    op(
        "GET",
        "/cohort/feasibility-studies/{id}/download/",
        "Cohorts",
        User,
        200,
        "The report as a zip (HTML and JSON)",
    ),
    op(
        "GET",
        "/exports/",
        "Exports",
        User,
        200,
        "The caller's exports (every export for full admins); `return_full_objects=true` for full objects",
    ),
    op(
        "POST",
        "/exports/",
        "Exports",
        User,
        201,
        "Request an export (validated against the owner's rights on every perimeter of its cohorts)",
    ),
    op(
        "GET",
        "/exports/cohorts/",
        "Exports",
        User,
        200,
        "The caller's created cohorts, which may be exported",
    ),
    op(
        "GET",
        "/exports/fhir-filters/",
        "Exports",
        User,
        200,
        "The caller's saved FHIR filters, for export tables",
    ),
    op(
        "GET",
        "/exports/fhir-filters/{id}/",
        "Exports",
        User,
        200,
        "One of the caller's saved FHIR filters",
    ),
    op(
        "GET",
        "/exports/datalabs/",
        "Exports",
        User,
        200,
        "Datalabs (needs right_read_datalabs)",
    ),
    op(
        "POST",
        "/exports/datalabs/",
        "Exports",
        User,
        201,
        "Create a datalab (needs right_read_datalabs and right_manage_datalabs)",
    ),
    op(
        "GET",
        "/exports/datalabs/{id}/",
        "Exports",
        User,
        200,
        "One datalab (needs right_read_datalabs)",
    ),
    op(
        "PATCH",
        "/exports/datalabs/{id}/",
        "Exports",
        User,
        200,
        "Rename a datalab or move it to another provider",
    ),
    op(
        "GET",
        "/exports/infrastructure-providers/",
        "Exports",
        User,
        200,
        "Infrastructure providers (needs right_read_datalabs)",
    ),
    op(
        "POST",
        "/exports/infrastructure-providers/",
        "Exports",
        User,
        201,
        "Create an infrastructure provider",
    ),
    op(
        "GET",
        "/exports/infrastructure-providers/{id}/",
        "Exports",
        User,
        200,
        "One infrastructure provider",
    ),
    op(
        "PATCH",
        "/exports/infrastructure-providers/{id}/",
        "Exports",
        User,
        200,
        "Rename an infrastructure provider",
    ),
    op(
        "DELETE",
        "/exports/infrastructure-providers/{id}/",
        "Exports",
        User,
        204,
        "Delete an infrastructure provider no datalab uses",
    ),
    op(
        "GET",
        "/exports/export-stats/",
        "Exports",
        User,
        200,
        "Statistics of the caller's finished exports",
    ),
    op(
        "GET",
        "/exports/export-stats/{id}/",
        "Exports",
        User,
        200,
        "Statistics of one of the caller's exports",
    ),
    op(
        "GET",
        "/exports/{id}/",
        "Exports",
        User,
        200,
        "One of the caller's exports",
    ),
    op(
        "GET",
        "/exports/{id}/download/",
        "Exports",
        User,
        200,
        "The export's files as export_{group_id}.zip (owner only, within the retention window)",
    ),
    op(
        "POST",
        "/exports/{id}/retry/",
        "Exports",
        FullAdmin,
        200,
        "Run a finished or failed export again",
    ),
    op(
        "POST",
        "/exports/{id}/relaunch/",
        "Exports",
        FullAdmin,
        201,
        "A new export copying this one, for the same owner",
    ),
    op(
        "GET",
        "/exports/{id}/logs/",
        "Exports",
        FullAdmin,
        200,
        "The exporter's logs of an export",
    ),
    op(
        "GET",
        "/cohort/refresh-schedules/",
        "Cohorts",
        User,
        200,
        "The caller's refresh schedules",
    ),
    op(
        "POST",
        "/cohort/refresh-schedules/",
        "Cohorts",
        User,
        201,
        "Schedule the recount of a query version",
    ),
    op(
        "GET",
        "/cohort/refresh-schedules/{id}/",
        "Cohorts",
        User,
        200,
        "One refresh schedule",
    ),
    op(
        "PATCH",
        "/cohort/refresh-schedules/{id}/",
        "Cohorts",
        User,
        200,
        "Change a refresh schedule",
    ),
    op(
        "DELETE",
        "/cohort/refresh-schedules/{id}/",
        "Cohorts",
        User,
        204,
        "Delete a refresh schedule",
    ),
    op(
        "GET",
        "/cohort/fhir-filters/",
        "Cohorts",
        User,
        200,
        "The caller's saved FHIR filters",
    ),
    op(
        "POST",
        "/cohort/fhir-filters/",
        "Cohorts",
        User,
        201,
        "Save a FHIR filter",
    ),
    op(
        "DELETE",
        "/cohort/fhir-filters/delete_multiple/",
        "Cohorts",
        User,
        204,
        "Delete several of the caller's filters (uuids in the body)",
    ),
    op(
        "GET",
        "/cohort/fhir-filters/{id}/",
        "Cohorts",
        User,
        200,
        "One saved filter",
    ),
    op(
        "PATCH",
        "/cohort/fhir-filters/{id}/",
        "Cohorts",
        User,
        200,
        "Change a saved filter",
    ),
    op(
        "DELETE",
        "/cohort/fhir-filters/{id}/",
        "Cohorts",
        User,
        204,
        "Delete a saved filter",
    ),
];

/// The error statuses an operation may answer, from who may call it and what it does.
pub fn error_statuses(operation: &Operation) -> Vec<u16> {
    let mut statuses = Vec::new();
    let writes = operation.method != "GET";
    if writes || operation.path.contains("{") || operation.summary.contains('(') {
        statuses.push(400);
    }
    if operation.caller != Anyone || operation.path == "/metrics" {
        statuses.push(401);
    }
    if operation.caller != Anyone {
        statuses.push(403);
    }
    if operation.path.contains('{') {
        statuses.push(404);
    }
    if writes {
        statuses.push(409);
    }
    // Writes are refused during maintenance; anything may meet an unavailable database.
    statuses.push(503);
    statuses
}

fn http_method(method: &str) -> HttpMethod {
    match method {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching protocols",
        200 => "OK",
        201 => "Created",
        204 => "No content",
        400 => "Invalid input (`invalid_field`, `invalid_json`, …; `field` names the field)",
        401 => "Not authenticated (`not_authenticated`, `token_rejected`, …)",
        403 => "Not allowed (`permission_denied`, …)",
        404 => "Not found, or not visible to the caller (`*_not_found`)",
        409 => "Conflict (`concurrent_modification`, `*_already_exists`, …)",
        503 => "Maintenance (`maintenance`) or a dependency unavailable (`service_unavailable`)",
        _ => "",
    }
}

fn caller_text(caller: Caller) -> &'static str {
    match caller {
        Anyone => "No token needed.",
        User => "Any authenticated user; objects are scoped to their owner and rights apply.",
        UserOrApplicative => {
            "An authenticated user, or the QueryExecutor / Solr ETL with their applicative token."
        }
        FullAdmin => "Full administrators only.",
        Auditor => "Full administrators and holders of `right_read_audit` (an extension right).",
    }
}

fn json_object() -> ContentBuilder {
    ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
}

fn operation_id(operation: &Operation) -> String {
    let path: String = operation
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!(
        "{}{}",
        operation.method.to_ascii_lowercase(),
        path.trim_end_matches('_')
    )
}

/// The OpenAPI 3.1 document of the API.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for operation in OPERATIONS {
        let mut responses = ResponsesBuilder::new().response(
            operation.status.to_string(),
            match operation.status {
                101 | 204 => ResponseBuilder::new().description(status_text(operation.status)),
                _ => ResponseBuilder::new()
                    .description(status_text(operation.status))
                    .content("application/json", json_object().build()),
            },
        );
        for status in error_statuses(operation) {
            responses = responses.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(status_text(status))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Error")))
                            .build(),
                    ),
            );
        }
        let mut builder = OperationBuilder::new()
            .tag(operation.tag)
            .summary(Some(operation.summary))
            .description(Some(caller_text(operation.caller)))
            .operation_id(Some(operation_id(operation)))
            .responses(responses.build());
        for segment in operation.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                builder = builder.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                );
            }
        }
        if matches!(operation.method, "POST" | "PATCH" | "PUT") {
            builder = builder.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json_object().build())
                    .build(),
            ));
        }
        if operation.caller != Anyone {
            builder = builder.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        paths = paths.path(
            operation.path,
            PathItem::new(http_method(operation.method), builder),
        );
    }
    let error = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Every error: a stable machine code, a human message and, for invalid input, the \
             field. Codes are listed in the README (\"Error codes\").",
        ))
        .property("code", ObjectBuilder::new().schema_type(Type::String))
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .property("field", ObjectBuilder::new().schema_type(Type::String));
    let mut tags: Vec<&str> = OPERATIONS.iter().map(|o| o.tag).collect();
    tags.dedup();
    tags.sort_unstable();
    tags.dedup();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cohort360 back-end (event-sourced)")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Wire-compatible with the Cohort360 back-end. Paths keep the mandatory \
                     trailing slash. Bearer tokens are our JWTs (`AuthorizationMethod: JWT`) or \
                     OIDC access tokens (`AuthorizationMethod: OIDC`).",
                )),
        )
        .paths(paths.build())
        .components(Some(
            ComponentsBuilder::new()
                .schema("Error", error)
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
                )
                .build(),
        ))
        .tags(Some(
            tags.into_iter().map(|t| TagBuilder::new().name(t).build()),
        ))
        .build()
}

/// Swagger UI at `/docs`, reading the document at `/schema`.
pub fn routes() -> utoipa_swagger_ui::SwaggerUi {
    utoipa_swagger_ui::SwaggerUi::new("/docs").url("/schema", document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique_and_path_parameters_are_declared() {
        let mut seen = std::collections::HashSet::new();
        for operation in OPERATIONS {
            assert!(
                seen.insert((operation.method, operation.path)),
                "{} {} listed twice",
                operation.method,
                operation.path
            );
        }
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let op = &doc["paths"]["/audit/{aggregate_type}/{id}/state/"]["get"];
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(params, vec!["aggregate_type", "id"]);
        assert!(
            op["responses"]["403"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .ends_with("/Error")
        );
        assert!(
            doc["paths"]["/health/live"]["get"]
                .get("security")
                .is_none()
        );
    }
}
