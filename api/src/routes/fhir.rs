//! `/fhir/…`: a FHIR R4 read API over the clinical store, so that the front-end can list and open
//! patients without a FHIR server. Every answer is restricted to the perimeters the caller may
//! read; patients read only pseudonymously lose their identifiers and names, and their birth date
//! is cut to the month. Errors are OperationOutcomes whose `details` carry our stable codes.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing;
use chrono::{DateTime, Utc};
use commands::authz::AuthzError;
use domain::cohort_query::fhir_search::{SearchParam, parse_search};
use projections::clinical::{
    Facet, FacetCounts, FhirRecord, FhirSearch, FhirSearchError, FhirSort, FhirType, PatientRecord,
    ReadScope, SortField,
};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::openapi::{Documented, Shape, User, op};
use crate::state::AppState;

/// Default and largest page sizes (`_count`).
const DEFAULT_COUNT: i64 = 20;
const MAX_COUNT: i64 = 1000;

/// An error as an OperationOutcome.
pub(crate) struct FhirError {
    status: StatusCode,
    /// FHIR's issue type.
    issue: &'static str,
    /// Our stable error code.
    code: &'static str,
    message: String,
}

impl FhirError {
    pub(crate) fn new(
        status: StatusCode,
        issue: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            issue,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": self.issue,
                "details": {"coding": [{"system": "https://cohort360/error-codes", "code": self.code}], "text": self.message},
                "diagnostics": self.message,
            }]
        });
        (
            self.status,
            [("content-type", "application/fhir+json")],
            Json(body),
        )
            .into_response()
    }
}

impl From<projections::ReadError> for FhirError {
    fn from(e: projections::ReadError) -> Self {
        tracing::error!(error = %e, "FHIR read failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "read_model_unavailable",
            "the clinical store cannot be read now",
        )
    }
}

pub(crate) fn fhir_json(body: Value) -> Response {
    ([("content-type", "application/fhir+json")], Json(body)).into_response()
}

/// The perimeters the caller reads patient data on (`commands::authz::patient_read_scope`);
/// 403 when there are none.
async fn scope(state: &AppState, caller: &Caller) -> Result<ReadScope, FhirError> {
    match state.access.patient_read_scope(caller).await {
        Ok(scope) => Ok(ReadScope {
            readable: scope.readable,
            nominative: scope.nominative,
        }),
        Err(AuthzError::Refused(r)) => Err(FhirError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            r.code,
            r.message,
        )),
        Err(AuthzError::Unavailable(e)) => {
            tracing::error!(error = %e.0, "rights cannot be read for a FHIR search");
            Err(FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "read_model_unavailable",
                "reading rights cannot be checked now",
            ))
        }
    }
}

/// `GET /fhir/metadata` (authenticated): what this server answers.
pub(super) async fn metadata(_caller: Caller) -> Response {
    let resources: Vec<Value> = FhirType::ALL
        .iter()
        .map(|t| {
            let mut params: Vec<Value> = t
                .search_params()
                .iter()
                .chain(["_id", "_list"].iter())
                .map(|p| json!({"name": p, "type": if *p == "date" || *p == "birthdate" { "date" } else { "token" }}))
                .collect();
            params.sort_by_key(|p| p["name"].as_str().unwrap_or_default().to_string());
            json!({"type": t.name(), "interaction": [{"code": "read"}, {"code": "search-type"}], "searchParam": params})
        })
        .chain(["List", "Group"].map(|t| json!({"type": t, "interaction": [{"code": "read"}]})))
        .chain([json!({"type": "Organization", "interaction": [{"code": "read"}, {"code": "search-type"}],
                       "searchParam": [{"name": "_id", "type": "token"}]})])
        .chain([
            json!({"type": "ValueSet", "interaction": [{"code": "read"}, {"code": "search-type"}],
                   "searchParam": [{"name": "reference", "type": "uri"}, {"name": "url", "type": "uri"}],
                   "operation": [{"name": "expand", "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"}]}),
            json!({"type": "CodeSystem", "interaction": [{"code": "read"}, {"code": "search-type"}],
                   "searchParam": [{"name": "system", "type": "uri"}, {"name": "url", "type": "uri"}]}),
        ])
        .collect();
    fhir_json(json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {"name": "cohort360-backend", "version": env!("CARGO_PKG_VERSION")},
        "rest": [{"mode": "server", "resource": resources}]
    }))
}

fn resource_type(name: &str) -> Result<FhirType, FhirError> {
    FhirType::parse(name).ok_or_else(|| {
        FhirError::new(
            StatusCode::NOT_FOUND,
            "not-supported",
            "unknown_resource_type",
            format!("this server has no `{name}` resources"),
        )
    })
}

/// How a search's answer is shaped (besides paging).
#[derive(Debug, Default)]
struct Shaping {
    /// `_summary=count`: the total only.
    summary_count: bool,
    /// `_elements`: the top-level elements to keep (`None`: all).
    elements: Option<Vec<String>>,
}

fn invalid_parameter(message: impl Into<String>) -> FhirError {
    FhirError::new(
        StatusCode::BAD_REQUEST,
        "invalid",
        "invalid_parameter",
        message,
    )
}

fn unsupported_parameter(message: impl Into<String>) -> FhirError {
    FhirError::new(
        StatusCode::BAD_REQUEST,
        "not-supported",
        "unsupported_search_parameter",
        message,
    )
}

/// The facets a `facet=`, `pivot-facet=` or `unique-facet=` parameter asks for. Pivots are
/// written `a_b` (`age-month_gender`); `visit-year-month-gender-facet` is the pivot of an
/// encounter's start month and its patient's gender.
fn facets_of(p: &SearchParam) -> Result<Vec<Facet>, FhirError> {
    let mut out = Vec::new();
    for v in &p.values {
        let name = v.text.as_str();
        out.push(match p.name.as_str() {
            "facet" if name == "visit-year-month-gender-facet" => {
                Facet::Pivot("visit-year-month".into(), "gender".into())
            }
            "facet" => Facet::Field(name.to_string()),
            "unique-facet" => Facet::Unique(name.to_string()),
            _ => {
                let (a, b) = name.split_once('_').ok_or_else(|| {
                    invalid_parameter(format!(
                        "the pivot facet `{name}` is not two fields joined by `_`"
                    ))
                })?;
                Facet::Pivot(a.to_string(), b.to_string())
            }
        });
    }
    Ok(out)
}

/// The search's filtering parameters, its paging, sorting and facets, and its shaping.
fn search_of(t: FhirType, query: &str) -> Result<(FhirSearch, Shaping), FhirError> {
    let mut search = FhirSearch {
        resource: t,
        params: Vec::new(),
        count: DEFAULT_COUNT,
        offset: 0,
        sort: Vec::new(),
        facets: Vec::new(),
    };
    let mut shaping = Shaping::default();
    let number = |p: &SearchParam| -> Result<i64, FhirError> {
        p.values
            .first()
            .and_then(|v| v.text.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                invalid_parameter(format!("`{}` must be a non-negative integer", p.name))
            })
    };
    for p in parse_search(query) {
        match p.name.as_str() {
            "_count" => search.count = number(&p)?.min(MAX_COUNT),
            "_offset" => search.offset = number(&p)?,
            "_summary" => shaping.summary_count = p.values.iter().any(|v| v.text == "count"),
            "_sort" => {
                for v in &p.values {
                    let (descending, name) = match v.text.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, v.text.as_str()),
                    };
                    let field = SortField::parse(t, name).ok_or_else(|| {
                        unsupported_parameter(format!("{} cannot be sorted by `{name}`", t.name()))
                    })?;
                    search.sort.push(FhirSort { field, descending });
                }
            }
            "_elements" => {
                shaping.elements = Some(p.values.iter().map(|v| v.text.clone()).collect())
            }
            "_total" => {
                // The total is always exact: every accepted value gets it.
                if p.values
                    .iter()
                    .any(|v| !matches!(v.text.as_str(), "none" | "estimate" | "accurate"))
                {
                    return Err(invalid_parameter(
                        "`_total` is one of none, estimate, accurate",
                    ));
                }
            }
            "_format" => {}
            "facet" | "pivot-facet" | "unique-facet" if p.modifier.is_none() => {
                search.facets.extend(facets_of(&p)?)
            }
            _ => search.params.push(p),
        }
    }
    if shaping.summary_count {
        search.count = 0;
    }
    Ok((search, shaping))
}

/// `GET /fhir/{type}?…` (patient-data readers): a searchset Bundle.
pub(super) async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Path(resource): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, FhirError> {
    if resource == "Organization" {
        return organizations(&state, &query.unwrap_or_default()).await;
    }
    let t = resource_type(&resource)?;
    let scope = scope(&state, &caller).await?;
    let query = query.unwrap_or_default();
    let (search, shaping) = search_of(t, &query)?;
    let page = state
        .clinical
        .search(&search, &scope)
        .await
        .map_err(|e| match e {
            FhirSearchError::Unsupported(m) => FhirError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "unsupported_search_parameter",
                m,
            ),
            FhirSearchError::Read(e) => e.into(),
        })?;
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": page.total});
    if !page.facets.is_empty() {
        bundle["meta"] = json!({"extension": facet_extensions(&page.facets)});
    }
    if shaping.summary_count {
        return Ok(fhir_json(bundle));
    }
    let base = format!("/fhir/{}", t.name());
    let without_offset: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("_offset="))
        .collect();
    let link = |offset: i64| {
        let mut parts = without_offset.clone();
        let o = format!("_offset={offset}");
        parts.push(&o);
        format!("{base}?{}", parts.join("&"))
    };
    let mut links = vec![json!({"relation": "self", "url": link(search.offset)})];
    if search.count > 0 && search.offset + search.count < page.total {
        links.push(json!({"relation": "next", "url": link(search.offset + search.count)}));
    }
    bundle["link"] = Value::Array(links);
    bundle["entry"] = page
        .records
        .iter()
        .map(|r| {
            let resource = elements(to_fhir(r), shaping.elements.as_deref());
            json!({"fullUrl": format!("{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default()),
                   "resource": resource, "search": {"mode": "match"}})
        })
        .collect();
    Ok(fhir_json(bundle))
}

/// `_elements`: the resource with only the listed top-level elements (and those FHIR keeps:
/// `resourceType`, `id`, `meta`), marked SUBSETTED as FHIR asks.
fn elements(mut resource: Value, keep: Option<&[String]>) -> Value {
    let Some(keep) = keep else {
        return resource;
    };
    let Some(object) = resource.as_object_mut() else {
        return resource;
    };
    // `deceased` stands for `deceasedBoolean` and `deceasedDateTime` (choice types).
    object.retain(|k, _| {
        matches!(k.as_str(), "resourceType" | "id" | "meta")
            || keep.iter().any(|e| {
                k == e
                    || (k.starts_with(e.as_str()) && k[e.len()..].starts_with(char::is_uppercase))
            })
    });
    let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    match object.get_mut("meta").and_then(Value::as_object_mut) {
        Some(meta) => {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Some(list) = tags.as_array_mut() {
                list.push(tag);
            }
        }
        None => {
            object.insert("meta".into(), json!({"tag": [tag]}));
        }
    }
    resource
}

/// Facet counts as `Bundle.meta.extension`, in the shape the front-end reads (AP-HP's), each
/// grouping element also carrying a `url` (its value) as FHIR requires of every extension:
/// - `facet=<f>`: `{url: "facet-<f>-simple", extension: [{extension: [{url: value, valueDecimal: n}]}, …]}`;
/// - `pivot-facet=<a>_<b>`: `{url: "facet-<a>", extension: [{extension: [{url: a value,
///   valueDecimal: n}, {url: "<b>.display", extension: [{url: b value, valueDecimal: n}, …]}]}, …]}`;
/// - `facet=visit-year-month-gender-facet`: `{url: "facet-visit-year-month-gender-facet",
///   extension: [{extension: [{url: "YYYY-MM-<gender>", valueDecimal: n}]}, …]}`;
/// - `unique-facet=<f>`: `{url: "unique-facet-<f>", valueDecimal: n}` (distinct values).
fn facet_extensions(facets: &[FacetCounts]) -> Vec<Value> {
    facets
        .iter()
        .map(|f| match &f.facet {
            Facet::Field(name) => json!({
                "url": format!("facet-{name}-simple"),
                "extension": f.counts.iter().map(|(values, n)| {
                    let value = values.first().cloned().unwrap_or_default();
                    json!({"url": value, "extension": [{"url": value, "valueDecimal": n}]})
                }).collect::<Vec<_>>(),
            }),
            Facet::Pivot(a, b) if a == "visit-year-month" && b == "gender" => json!({
                "url": "facet-visit-year-month-gender-facet",
                "extension": f.counts.iter().map(|(values, n)| {
                    let value = values.join("-");
                    json!({"url": value, "extension": [{"url": value, "valueDecimal": n}]})
                }).collect::<Vec<_>>(),
            }),
            Facet::Pivot(a, b) => {
                let mut groups: Vec<(String, i64, Vec<Value>)> = Vec::new();
                for (values, n) in &f.counts {
                    let (Some(x), Some(y)) = (values.first(), values.get(1)) else {
                        continue;
                    };
                    if groups.last().is_none_or(|g| &g.0 != x) {
                        groups.push((x.clone(), 0, Vec::new()));
                    }
                    if let Some(g) = groups.last_mut() {
                        g.1 += n;
                        g.2.push(json!({"url": y, "valueDecimal": n}));
                    }
                }
                json!({
                    "url": format!("facet-{a}"),
                    "extension": groups.into_iter().map(|(x, total, inner)| json!({"url": x, "extension": [
                        {"url": x, "valueDecimal": total},
                        {"url": format!("{b}.display"), "extension": inner},
                    ]})).collect::<Vec<_>>(),
                })
            }
            Facet::Unique(name) => json!({
                "url": format!("unique-facet-{name}"),
                "valueDecimal": f.counts.first().map_or(0, |(_, n)| *n),
            }),
        })
        .collect()
}

/// `GET /fhir/{type}/{id}` (patient-data readers); `List/{group_id}` and `Group/{group_id}` are a
/// created cohort's patients (those the caller may read).
pub(super) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((resource, id)): Path<(String, String)>,
) -> Result<Response, FhirError> {
    let not_found = || {
        FhirError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "not_found",
            format!("{resource}/{id} is not known or not readable"),
        )
    };
    let scope = scope(&state, &caller).await?;
    let id: i64 = id.parse().map_err(|_| not_found())?;
    if resource == "Organization" {
        let perimeter = state.identity.perimeter(id).await?.ok_or_else(not_found)?;
        return Ok(fhir_json(organization(&perimeter)));
    }
    if resource == "List" || resource == "Group" {
        let members = state
            .clinical
            .list_members(id, &scope)
            .await?
            .ok_or_else(not_found)?;
        let reference = |p: &i64| json!({"reference": format!("Patient/{p}")});
        return Ok(fhir_json(if resource == "List" {
            json!({
                "resourceType": "List", "id": id.to_string(), "status": "current", "mode": "snapshot",
                "entry": members.iter().map(|p| json!({"item": reference(p)})).collect::<Vec<_>>()
            })
        } else {
            json!({
                "resourceType": "Group", "id": id.to_string(), "type": "person", "actual": true,
                "quantity": members.len(),
                "member": members.iter().map(|p| json!({"entity": reference(p)})).collect::<Vec<_>>()
            })
        }));
    }
    let t = resource_type(&resource)?;
    let record = state
        .clinical
        .read(t, id, &scope)
        .await?
        .ok_or_else(not_found)?;
    Ok(fhir_json(to_fhir(&record)))
}

/// A perimeter as the `Organization` its patients' `managingOrganization` and its stays'
/// `serviceProvider` point to (the perimeter tree is not patient data: any user may read it).
fn organization(p: &projections::identity::PerimeterRow) -> Value {
    let mut v = json!({
        "resourceType": "Organization",
        "id": p.id.to_string(),
        "active": true,
        "name": p.name,
        "alias": [p.short_name],
        "identifier": [{"value": p.source_value}],
        "type": [{"coding": [{"system": "https://cohort360.fr/fhir/CodeSystem/perimeter-type", "code": p.type_source_value}]}],
    });
    if let Some(parent) = p.parent_id {
        v["partOf"] = json!({"reference": format!("Organization/{parent}")});
    }
    v
}

/// `GET /fhir/Organization?_id=…`: the perimeters named (the caller's stays' care sites).
async fn organizations(state: &AppState, query: &str) -> Result<Response, FhirError> {
    let mut ids = Vec::new();
    for p in parse_search(query) {
        match p.name.as_str() {
            "_id" if p.modifier.is_none() => {
                for v in &p.values {
                    let id = v.text.rsplit('/').next().unwrap_or_default();
                    ids.push(id.parse::<i64>().map_err(|_| {
                        invalid_parameter(format!("`{}` is not an Organization id", v.text))
                    })?);
                }
            }
            "_count" | "_elements" | "_total" | "_format" => {}
            _ => {
                return Err(unsupported_parameter(format!(
                    "the search parameter `{}` is not supported on Organization (only `_id`)",
                    p.name
                )));
            }
        }
    }
    if ids.is_empty() {
        return Err(invalid_parameter("an Organization search needs `_id`"));
    }
    ids.truncate(MAX_COUNT as usize);
    let rows = state.identity.perimeters_by_ids(&ids).await?;
    Ok(fhir_json(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": rows.len(),
        "entry": rows.iter().map(|p| json!({
            "fullUrl": format!("Organization/{}", p.id),
            "resource": organization(p),
            "search": {"mode": "match"},
        })).collect::<Vec<_>>(),
    })))
}

fn instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn patient(p: &PatientRecord) -> Value {
    let mut v = json!({
        "resourceType": "Patient",
        "id": p.id.to_string(),
        "active": true,
        "gender": if p.gender == "f" { "female" } else { "male" },
        "managingOrganization": {"reference": format!("Organization/{}", p.perimeter_id)},
    });
    if p.nominative {
        v["identifier"] = json!([{"type": {"coding": [{"code": "IPP"}]}, "value": p.ipp}]);
        v["name"] = json!([{"family": p.family_name, "given": [p.given_name]}]);
        v["birthDate"] = json!(p.birth_date.to_string());
        match p.death_date {
            Some(d) => v["deceasedDateTime"] = json!(d.to_string()),
            None => v["deceasedBoolean"] = json!(false),
        }
    } else {
        // Pseudonymized reading: no identifier, no name, month of birth only, no death date.
        v["birthDate"] = json!(p.birth_date.format("%Y-%m").to_string());
        v["deceasedBoolean"] = json!(p.deceased);
        v["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "PSEUDED"}]});
    }
    v
}

fn to_fhir(record: &FhirRecord) -> Value {
    match record {
        FhirRecord::Patient(p) => patient(p),
        FhirRecord::Encounter(e) => json!({
            "resourceType": "Encounter",
            "id": e.id.to_string(),
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": e.class},
            "subject": {"reference": format!("Patient/{}", e.patient_id)},
            "period": {"start": instant(&e.start_at), "end": instant(&e.end_at)},
            "episodeOfCare": [{"reference": format!("EpisodeOfCare/{}", e.episode_id)}],
            "serviceProvider": {"reference": format!("Organization/{}", e.perimeter_id)},
        }),
        FhirRecord::Document(d) => {
            let mut v = json!({
                "resourceType": "DocumentReference",
                "id": d.id.to_string(),
                "status": "current",
                "docStatus": "final",
                "type": {"coding": [{"system": "http://loinc.org", "code": d.kind}]},
                "subject": {"reference": format!("Patient/{}", d.patient_id)},
                "date": instant(&d.at),
                "description": d.title,
                "context": {"encounter": [{"reference": format!("Encounter/{}", d.encounter_id)}]},
            });
            // The text is nominative data: pseudonymized readers get the note without it.
            let mut attachment =
                json!({"contentType": "text/plain; charset=utf-8", "title": d.title});
            if d.nominative {
                use base64::Engine;
                attachment["data"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(d.text.as_bytes()));
            }
            v["content"] = json!([{"attachment": attachment}]);
            v
        }
        FhirRecord::Fact(f) => {
            let system = f.resource.code_system().unwrap_or_default();
            let code = json!({"coding": [{"system": system, "code": f.code}]});
            let mut v = json!({
                "resourceType": f.resource.name(),
                "id": f.id.to_string(),
                "subject": {"reference": format!("Patient/{}", f.patient_id)},
                "encounter": {"reference": format!("Encounter/{}", f.encounter_id)},
            });
            let at = instant(&f.at);
            match f.resource {
                FhirType::Condition => {
                    v["code"] = code;
                    v["recordedDate"] = json!(at);
                }
                FhirType::Observation => {
                    v["status"] = json!("final");
                    v["code"] = code;
                    v["effectiveDateTime"] = json!(at);
                    if let Some(value) = f.value {
                        v["valueQuantity"] = json!({"value": value, "unit": f.unit});
                    }
                }
                FhirType::MedicationRequest => {
                    v["status"] = json!("completed");
                    v["intent"] = json!("order");
                    v["medicationCodeableConcept"] = code;
                    v["authoredOn"] = json!(at);
                }
                _ => {
                    v["status"] = json!("completed");
                    v["code"] = code;
                    v["performedDateTime"] = json!(at);
                }
            }
            v
        }
    }
}

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/fhir/metadata",
            routing::get(metadata),
            [
                op(
                    "GET",
                    "FHIR",
                    User,
                    200,
                    "The FHIR CapabilityStatement of the clinical store",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/fhir/{resource}",
            routing::get(search),
            [
                op(
                    "GET",
                    "FHIR",
                    User,
                    200,
                    "FHIR search (Patient, Encounter, Condition, Observation, MedicationRequest, Procedure, DocumentReference; Organization by `_id`) within the caller's reading perimeters, with sorting, `_elements` and dashboard facets",
                )
                .answers(Shape::Json),
            ],
        )
        .route(
            "/fhir/{resource}/{id}",
            routing::get(read),
            [
                op(
                    "GET",
                    "FHIR",
                    User,
                    200,
                    "FHIR read of one resource, or List/{group_id} and Group/{group_id} for a created cohort",
                )
                .answers(Shape::Json),
            ],
        )
}
