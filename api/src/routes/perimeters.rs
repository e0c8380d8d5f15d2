//! `/accesses/perimeters/…`: the tree, what the caller may manage, and what they may read.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::routing;
use domain::authz::{Manageable, PerimeterRef, ReadMode};
use projections::identity::{PERIMETER_ORDERING, PerimeterFilter, PerimeterRow};
use projections::parse_ordering;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{Documented, LIMIT_OFFSET, Param, ParamType, Shape, User, op, param};
use crate::pagination::{ALL, Envelope, Params, envelope, list_param, text_param, window};
use crate::routes::path_int;
use crate::state::AppState;
use projections::cohorts::{CohortFilter, Reader};

fn int_list_param(params: &Params, key: &'static str) -> Result<Vec<i64>, ApiError> {
    list_param(params, key)
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid_field(key, format!("{key} must be integers")))
        })
        .collect()
}

/// The filters of every perimeter list.
fn filter(params: &Params) -> Result<PerimeterFilter, ApiError> {
    Ok(PerimeterFilter {
        name: text_param(params, "name"),
        source_value: text_param(params, "source_value"),
        type_source_value: list_param(params, "type_source_value"),
        cohort_id: list_param(params, "cohort_id"),
        parent_id: int_list_param(params, "parent_id")?,
        local_id: list_param(params, "local_id"),
        ids: None,
        search: text_param(params, "search"),
        within: None,
        ordering: parse_ordering(
            params.get("ordering").map(String::as_str),
            PERIMETER_ORDERING,
        ),
    })
}

pub(super) async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let window = window(&params)?;
    let page = state
        .identity
        .list_perimeters(&filter(&params)?, window)
        .await?;
    let page = projections::Page {
        count: page.count,
        results: page.results.iter().map(PerimeterRow::full).collect(),
    };
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

pub(super) async fn retrieve(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_int(&id, "perimeter", "perimeter_not_found")?;
    state
        .identity
        .perimeter(id)
        .await?
        .map(|p| Json(p.full()))
        .ok_or_else(|| ApiError::not_found("perimeter_not_found", "perimeter"))
}

pub(super) async fn children(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let id = path_int(&id, "perimeter", "perimeter_not_found")?;
    let window = window(&params)?;
    let mut f = filter(&params)?;
    f.parent_id = vec![id];
    let page = state.identity.list_perimeters(&f, window).await?;
    let page = projections::Page {
        count: page.count,
        results: page.results.iter().map(PerimeterRow::full).collect(),
    };
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

/// `GET /accesses/perimeters/manageable/`: the top perimeters where the caller can manage
/// accesses; with any filter, those tops and everything under them, filtered.
pub(super) async fn manageable(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let authority = state.access.authority(&caller).await?;
    let tops: Vec<PerimeterRow> = match authority.manageable() {
        Manageable::Roots => state.identity.roots().await?,
        Manageable::Perimeters { tops, children_of } => {
            let mut rows = state.identity.perimeters_by_ids(&tops).await?;
            if !children_of.is_empty() {
                let f = PerimeterFilter {
                    parent_id: children_of,
                    ..PerimeterFilter::default()
                };
                rows.extend(state.identity.list_perimeters(&f, ALL).await?.results);
            }
            rows
        }
    };
    let f = filter(&params)?;
    if !f.is_filtered() || tops.is_empty() {
        return Ok(Json(tops.iter().map(PerimeterRow::lite).collect()));
    }
    let within = PerimeterFilter {
        within: Some(tops.iter().map(|p| p.id).collect()),
        ..f
    };
    let rows = state.identity.list_perimeters(&within, ALL).await?.results;
    Ok(Json(rows.iter().map(PerimeterRow::lite).collect()))
}

/// `GET /accesses/perimeters/patient-data/rights/`.
pub(super) async fn data_rights(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Envelope<Value>>, ApiError> {
    let window = window(&params)?;
    let authority = state.access.authority(&caller).await?;
    let reading: Vec<i64> = authority.reading_perimeters();
    let f = filter(&params)?;
    let scoped = if f.is_filtered() {
        PerimeterFilter {
            within: Some(reading.clone()),
            ..f
        }
    } else {
        // The top-most reading perimeters: those with no reading ancestor.
        let set: BTreeSet<i64> = reading.iter().copied().collect();
        let tops: Vec<i64> = authority
            .grants()
            .iter()
            .filter(|g| set.contains(&g.perimeter_id))
            .filter(|g| !g.perimeter_ancestors.iter().any(|a| set.contains(a)))
            .map(|g| g.perimeter_id)
            .collect();
        PerimeterFilter {
            ids: Some(tops),
            ordering: f.ordering,
            ..PerimeterFilter::default()
        }
    };
    let page = state.identity.list_perimeters(&scoped, window).await?;
    let results = page
        .results
        .iter()
        .map(|p| {
            let rights = authority.data_rights(PerimeterRef {
                id: p.id,
                ancestors: &p.ancestors,
            });
            let nominative = rights.right_read_patient_nominative;
            json!({
                "perimeter": p.lite(),
                "read_role": if nominative { "READ_PATIENT_NOMINATIVE" } else { "READ_PATIENT_PSEUDO_ANONYMIZE" },
                "right_read_patient_nominative": nominative,
                "right_read_patient_pseudonymized": nominative || rights.right_read_patient_pseudonymized,
                "right_search_patients_by_ipp": rights.right_search_patients_by_ipp,
                "right_read_opposed_patients_data": rights.right_search_opposed_patients,
            })
        })
        .collect();
    let page = projections::Page {
        count: page.count,
        results,
    };
    Ok(Json(envelope(page, window, &uri, &headers, &params)))
}

/// `GET /accesses/perimeters/patient-data/read/?cohort_ids=&mode=min|max`.
pub(super) async fn read_check(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let cohort_ids = list_param(&params, "cohort_ids");
    if cohort_ids.is_empty() {
        return Err(ApiError::invalid_field(
            "cohort_ids",
            "cohort_ids is required",
        ));
    }
    let mode: ReadMode = params
        .get("mode")
        .map(String::as_str)
        .unwrap_or("max")
        .parse()
        .map_err(|_| ApiError::invalid_field("mode", "mode must be 'min' or 'max'"))?;
    let authority = state.access.authority(&caller).await?;
    // Cohort group ids stand for the perimeters of their snapshot.
    let cohorts = state
        .cohort_reader
        .list_cohorts(
            Reader::Owner(&caller.username),
            &CohortFilter {
                group_id: cohort_ids.clone(),
                ..Default::default()
            },
            ALL,
        )
        .await?
        .results;
    let mut cohort_ids = cohort_ids;
    for c in cohorts {
        cohort_ids.extend(c.perimeters_ids);
    }
    let targets = state.identity.perimeters_by_cohort_ids(&cohort_ids).await?;
    let refs: Vec<PerimeterRef<'_>> = targets
        .iter()
        .map(|p| PerimeterRef {
            id: p.id,
            ancestors: &p.ancestors,
        })
        .collect();
    let permission = authority.read_check(&refs, mode).ok_or_else(|| {
        ApiError::not_found("no_reading_right", "reading right on these perimeters")
    })?;
    Ok(Json(serde_json::to_value(permission).unwrap_or_default()))
}

/// The query parameters `filter` reads.
const PERIMETER_FILTERS: &[Param] = &[
    param("name", ParamType::Text),
    param("source_value", ParamType::Text),
    param("type_source_value", ParamType::List),
    param("cohort_id", ParamType::List),
    param("parent_id", ParamType::List),
    param("local_id", ParamType::List),
    param("search", ParamType::Text),
    param("ordering", ParamType::Text),
];

/// The routes of this module, with their documentation.
pub(super) fn routes() -> Documented {
    Documented::new()
        .route(
            "/accesses/perimeters/",
            routing::get(list),
            [op("GET", "Perimeters", User, 200, "Perimeters")
                .answers(Shape::Page(None))
                .query(LIMIT_OFFSET)
                .query(PERIMETER_FILTERS)],
        )
        .route(
            "/accesses/perimeters/manageable/",
            routing::get(manageable),
            [op(
                "GET",
                "Perimeters",
                User,
                200,
                "Perimeters the caller manages",
            )
            .answers(Shape::List(None))
            .query(PERIMETER_FILTERS)],
        )
        .route(
            "/accesses/perimeters/patient-data/rights/",
            routing::get(data_rights),
            [op(
                "GET",
                "Perimeters",
                User,
                200,
                "The caller's data rights per perimeter",
            )
            .answers(Shape::Page(None))
            .query(LIMIT_OFFSET)
            .query(PERIMETER_FILTERS)],
        )
        .route(
            "/accesses/perimeters/patient-data/read/",
            routing::get(read_check),
            [op(
                "GET",
                "Perimeters",
                User,
                200,
                "Whether the caller may read given perimeters or cohorts",
            )
            .answers(Shape::Json)
            .query(&[
                param("cohort_ids", ParamType::List),
                param("mode", ParamType::Text),
            ])],
        )
        .route(
            "/accesses/perimeters/{id}/",
            routing::get(retrieve),
            [op("GET", "Perimeters", User, 200, "One perimeter").answers(Shape::Json)],
        )
        .route(
            "/accesses/perimeters/{id}/children/",
            routing::get(children),
            [op("GET", "Perimeters", User, 200, "A perimeter's children")
                .answers(Shape::Page(None))
                .query(LIMIT_OFFSET)
                .query(PERIMETER_FILTERS)],
        )
}
