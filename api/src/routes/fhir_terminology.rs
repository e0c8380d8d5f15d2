//! The FHIR terminology API the front-end's code pickers use: `CodeSystem` and `ValueSet` search
//! and read, and `ValueSet/$expand` by GET (`url`, `filter`, `count`, `offset`) and POST (a
//! `Parameters` resource, possibly with an inline `valueSet`). Any authenticated user may read
//! terminologies: they hold no patient data.
//!
//! Hierarchies: each expanded concept says whether it has children (the `has-children`
//! extension, and `abstract` for the groupings that are not codes of their own such as ICD-10
//! chapters); a picker opens a node by expanding the value set with `parent=CODE` (GET) or with an
//! inline value set filtered on `concept is-a CODE` (POST), and lists the roots with `parent=`
//! left empty.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing;
use domain::cohort_query::fhir_search::{parse_search, percent_decode};
use projections::terminology::{ExpandRequest, Expansion, ValueSetInfo};
use serde_json::{Value, json};

use super::fhir::{FhirError, fhir_json};
use crate::auth::Caller;
use crate::openapi::{Documented, ParamType, Shape, User, op, param, text};
use crate::state::AppState;

/// Default and largest numbers of concepts per expansion page.
const DEFAULT_COUNT: i64 = 100;
const MAX_COUNT: i64 = 1000;

/// The extension saying whether an expanded concept has children.
pub const HAS_CHILDREN: &str = "https://cohort360.fr/fhir/StructureDefinition/has-children";
/// The extension giving an expanded concept's parent code.
pub const PARENT: &str = "https://cohort360.fr/fhir/StructureDefinition/parent";

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::new(
        StatusCode::BAD_REQUEST,
        "invalid",
        "invalid_parameter",
        message,
    )
}

fn not_found(what: String) -> FhirError {
    FhirError::new(StatusCode::NOT_FOUND, "not-found", "not_found", what)
}

fn bundle(entries: Vec<Value>, kind: &str) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": format!("/fhir/{kind}")}],
        "entry": entries.into_iter().map(|resource| json!({
            "fullUrl": format!("{kind}/{}", resource["id"].as_str().unwrap_or_default()),
            "resource": resource,
            "search": {"mode": "match"},
        })).collect::<Vec<_>>(),
    })
}

/// The search parameters of a terminology search: `name` → its single value.
fn single_params(query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, FhirError> {
    let mut out = Vec::new();
    for p in parse_search(query) {
        if p.modifier.is_some() || !allowed.contains(&p.name.as_str()) {
            return Err(FhirError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "unsupported_search_parameter",
                format!(
                    "the parameter `{}` is not supported here (supported: {})",
                    p.name,
                    allowed.join(", ")
                ),
            ));
        }
        let value = p.values.first().map(|v| v.text.clone()).unwrap_or_default();
        out.push((p.name, value));
    }
    Ok(out)
}

fn value_of<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, v)| n == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn value_set_resource(vs: &ValueSetInfo) -> Value {
    let mut r = vs.resource.clone();
    r["resourceType"] = json!("ValueSet");
    r["id"] = json!(vs.id);
    r["url"] = json!(vs.url);
    r["name"] = json!(vs.name);
    r["title"] = json!(vs.title);
    if r.get("status").and_then(Value::as_str).is_none() {
        r["status"] = json!("active");
    }
    if let Some(v) = &vs.version {
        r["version"] = json!(v);
    }
    r
}

/// `GET /fhir/ValueSet?url=&reference=`: value sets, all or of one url, or those drawing on a
/// code system.
async fn search_value_sets(
    State(state): State<AppState>,
    _caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, FhirError> {
    let params = single_params(
        &query.unwrap_or_default(),
        &["url", "reference", "_count", "_elements", "_format"],
    )?;
    let sets = state
        .terminology
        .value_sets(value_of(&params, "url"), value_of(&params, "reference"))
        .await?;
    Ok(fhir_json(bundle(
        sets.iter().map(value_set_resource).collect(),
        "ValueSet",
    )))
}

/// `GET /fhir/ValueSet/{id}`.
async fn read_value_set(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let sets = state.terminology.value_sets(None, None).await?;
    let vs = sets
        .iter()
        .find(|vs| vs.id == id)
        .ok_or_else(|| not_found(format!("ValueSet/{id} is not known")))?;
    Ok(fhir_json(value_set_resource(vs)))
}

fn code_system_resource(cs: &projections::terminology::CodeSystemInfo) -> Value {
    let mut r = json!({
        "resourceType": "CodeSystem",
        "id": cs.id,
        "url": cs.url,
        "name": cs.name,
        "title": cs.title,
        "status": "active",
        "content": "not-present",
        "count": cs.count,
        "hierarchyMeaning": "is-a",
        "valueSet": cs.url,
    });
    if let Some(v) = &cs.version {
        r["version"] = json!(v);
    }
    r
}

/// `GET /fhir/CodeSystem?system=|url=`: code systems (their concepts come by `$expand`).
async fn search_code_systems(
    State(state): State<AppState>,
    _caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, FhirError> {
    let params = single_params(
        &query.unwrap_or_default(),
        &["url", "system", "_count", "_elements", "_format"],
    )?;
    let url = value_of(&params, "url").or_else(|| value_of(&params, "system"));
    let systems = state.terminology.code_systems(url).await?;
    Ok(fhir_json(bundle(
        systems.iter().map(code_system_resource).collect(),
        "CodeSystem",
    )))
}

/// `GET /fhir/CodeSystem/{id}`.
async fn read_code_system(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    let systems = state.terminology.code_systems(None).await?;
    let cs = systems
        .iter()
        .find(|cs| cs.id == id)
        .ok_or_else(|| not_found(format!("CodeSystem/{id} is not known")))?;
    Ok(fhir_json(code_system_resource(cs)))
}

fn number(name: &str, text: &str) -> Result<i64, FhirError> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad(format!("`{name}` must be a non-negative integer")))
}

/// An expansion request from its parameters (name, value), and an inline value set.
fn expand_request(
    params: &[(String, String)],
    value_set: Option<Value>,
) -> Result<ExpandRequest, FhirError> {
    let mut request = ExpandRequest {
        count: DEFAULT_COUNT,
        value_set,
        ..ExpandRequest::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "url" => request.url = value.clone(),
            "filter" => request.filter = Some(value.clone()).filter(|f| !f.trim().is_empty()),
            "count" => request.count = number(name, value)?.min(MAX_COUNT),
            "offset" => request.offset = number(name, value)?,
            "parent" => request.parent = Some(value.clone()),
            "code" => request.codes.extend(
                value
                    .split(',')
                    .map(|c| c.rsplit('|').next().unwrap_or(c).trim().to_string())
                    .filter(|c| !c.is_empty()),
            ),
            // Accepted, with nothing to change: displays are in the stored language.
            "displayLanguage" | "includeDesignations" | "activeOnly" | "_format" => {}
            other => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    "unsupported_search_parameter",
                    format!("the $expand parameter `{other}` is not supported"),
                ));
            }
        }
    }
    if request.url.is_empty() {
        request.url = request
            .value_set
            .as_ref()
            .and_then(|v| v.get("url"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
    }
    if request.url.is_empty() && request.value_set.is_none() {
        return Err(bad("`url` (or an inline `valueSet`) is required"));
    }
    Ok(request)
}

fn expansion_resource(e: &Expansion, request: &ExpandRequest) -> Value {
    let mut parameters = vec![
        json!({"name": "count", "valueInteger": request.count}),
        json!({"name": "offset", "valueInteger": request.offset}),
    ];
    if let Some(f) = &request.filter {
        parameters.push(json!({"name": "filter", "valueString": f}));
    }
    let contains: Vec<Value> = e
        .concepts
        .iter()
        .map(|c| {
            let mut extension = vec![json!({"url": HAS_CHILDREN, "valueBoolean": c.has_children})];
            if let Some(p) = &c.parent {
                extension.push(json!({"url": PARENT, "valueCode": p}));
            }
            json!({
                "system": c.system,
                "code": c.code,
                "display": c.display,
                "extension": extension,
            })
        })
        .collect();
    let mut vs = json!({
        "resourceType": "ValueSet",
        "status": "active",
        "expansion": {
            "identifier": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "total": e.total,
            "offset": e.offset,
            "parameter": parameters,
            "contains": contains,
        }
    });
    // An inline value set may have no url (then neither has the answer).
    if !e.url.is_empty() {
        vs["id"] = json!(projections::terminology::resource_id(&e.url));
        vs["url"] = json!(e.url);
    }
    if let Some(v) = &e.version {
        vs["version"] = json!(v);
    }
    if e.concepts.is_empty() {
        // FHIR: `contains` must not be empty when present.
        if let Some(x) = vs["expansion"].as_object_mut() {
            x.remove("contains");
        }
    }
    vs
}

async fn expand(state: &AppState, request: ExpandRequest) -> Result<Response, FhirError> {
    let expansion = state.terminology.expand(&request).await?.ok_or_else(|| {
        not_found(format!(
            "no value set or code system has the url `{}`",
            request.url
        ))
    })?;
    Ok(fhir_json(expansion_resource(&expansion, &request)))
}

/// `GET /fhir/ValueSet/$expand?url=&filter=&count=&offset=` (also `parent=` for one level of a
/// hierarchy, `code=` for given codes).
async fn expand_get(
    State(state): State<AppState>,
    _caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, FhirError> {
    let mut params = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A query string's `+` is a space; `%XX` escapes are decoded.
        let decode = |s: &str| percent_decode(&s.replace('+', " "));
        params.push((decode(name), decode(value)));
    }
    let request = expand_request(&params, None)?;
    expand(&state, request).await
}

/// `POST /fhir/ValueSet/$expand` with a `Parameters` body (`url`, `filter`, `count`, `offset`,
/// `valueSet`).
async fn expand_post(
    State(state): State<AppState>,
    _caller: Caller,
    body: Option<Json<Value>>,
) -> Result<Response, FhirError> {
    let Some(Json(body)) = body else {
        return Err(bad("the body must be a FHIR Parameters resource in JSON"));
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("the body must be a FHIR Parameters resource"));
    }
    let mut params = Vec::new();
    let mut value_set = None;
    for p in body
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            return Err(bad("every parameter needs a `name`"));
        };
        if name == "valueSet" {
            let vs = p
                .get("resource")
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("ValueSet"))
                .ok_or_else(|| bad("`valueSet` must carry a ValueSet resource"))?;
            value_set = Some(vs.clone());
            continue;
        }
        let value = [
            "valueUri",
            "valueString",
            "valueCode",
            "valueInteger",
            "valueBoolean",
            "valueCanonical",
        ]
        .iter()
        .find_map(|k| p.get(*k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
        params.push((name.to_string(), value));
    }
    let request = expand_request(&params, value_set)?;
    expand(&state, request).await
}

const EXPAND_PARAMS: &[crate::openapi::Param] = &[
    text("url"),
    text("filter"),
    param("count", ParamType::Integer),
    param("offset", ParamType::Integer),
    text("parent"),
    param("code", ParamType::List),
];

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/fhir/ValueSet",
            routing::get(search_value_sets),
            [op("GET", "FHIR", User, 200, "FHIR ValueSet search (`url`, `reference`: the code system a set draws on)")
                .answers(Shape::Json)
                .query(&[text("url"), text("reference")])],
        )
        .route(
            "/fhir/ValueSet/$expand",
            routing::get(expand_get).post(expand_post),
            [
                op("GET", "FHIR", User, 200, "Expands a value set or code system: filtered by text, paged, one hierarchy level with `parent`")
                    .answers(Shape::Json)
                    .query(EXPAND_PARAMS),
                op("POST", "FHIR", User, 200, "Expands a value set given by a FHIR Parameters body (`url`, `filter`, `count`, `offset`, inline `valueSet`)")
                    .answers(Shape::Json),
            ],
        )
        .route(
            "/fhir/ValueSet/{id}",
            routing::get(read_value_set),
            [op("GET", "FHIR", User, 200, "FHIR read of one value set").answers(Shape::Json)],
        )
        .route(
            "/fhir/CodeSystem",
            routing::get(search_code_systems),
            [op("GET", "FHIR", User, 200, "FHIR CodeSystem search (`system` or `url`)")
                .answers(Shape::Json)
                .query(&[text("system"), text("url")])],
        )
        .route(
            "/fhir/CodeSystem/{id}",
            routing::get(read_code_system),
            [op("GET", "FHIR", User, 200, "FHIR read of one code system's header").answers(Shape::Json)],
        )
}
