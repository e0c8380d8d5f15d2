//! FHIR searches answered from the in-memory index when they can be (the dashboards' calls):
//! Patient searches whose parameters the query engine reads, and Encounter totals and facets.
//! Patients are filtered by the engine's own reading of the parameters (so a list and a count
//! agree), totals and facets come from bitmaps and columns, and a page is the first ids in sort
//! order; the page's rows are then read from Postgres. Anything the index cannot answer (a
//! parameter, a sort key or a facet it does not hold) returns `None`, and the SQL search answers.

use std::collections::{BinaryHeap, HashMap};

use chrono::{DateTime, Datelike};
use domain::cohort_query::fhir_search::{Prefix, SearchParam};
use domain::cohort_query::model::{Comparator, Criterion, Occurrence};
use domain::cohort_query::{CriterionSource, Fetched, Needs, PatientSet};
use projections::clinical::{Facet, FacetCounts, FhirSearch, FhirType, ReadScope, SortField};
use sqlx::PgPool;

use super::index::ClinicalIndex;
use super::source::{ClinicalSource, CodeExpansions, DocumentRows};

/// What the index answered: the total, the page's ids in order, the facets.
pub struct IndexAnswer {
    pub total: i64,
    pub page: Vec<i64>,
    pub facets: Vec<FacetCounts>,
}

/// The patients of perimeters (each with its subtree).
async fn perimeter_patients(
    pool: &PgPool,
    index: &ClinicalIndex,
    perimeters: &[i64],
) -> Result<PatientSet, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM identity.perimeters WHERE id = ANY($1) OR ancestors && $1",
    )
    .bind(perimeters)
    .fetch_all(pool)
    .await?;
    let mut set = PatientSet::new();
    for id in ids {
        if let Some(b) = index.perimeter_patients.get(&id) {
            set |= b;
        }
    }
    Ok(set)
}

/// `_list`: perimeters by cohort id (with their subtrees) and created cohorts by group id.
async fn list_patients(
    pool: &PgPool,
    index: &ClinicalIndex,
    list: &SearchParam,
) -> Result<PatientSet, sqlx::Error> {
    let names: Vec<String> = list.values.iter().map(|v| v.text.clone()).collect();
    let groups: Vec<i64> = names.iter().filter_map(|l| l.parse().ok()).collect();
    let perimeters: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM identity.perimeters WHERE cohort_id = ANY($1) AND removed_at IS NULL",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    let mut set = perimeter_patients(pool, index, &perimeters).await?;
    let members: Vec<i32> = sqlx::query_scalar(
        "SELECT patient_id FROM clinical.cohort_members WHERE group_id = ANY($1)",
    )
    .bind(&groups)
    .fetch_all(pool)
    .await?;
    set.extend(members.into_iter().filter_map(|p| u32::try_from(p).ok()));
    Ok(set)
}

fn prefix_text(p: Option<Prefix>) -> &'static str {
    match p {
        None => "",
        Some(Prefix::Eq) => "eq",
        Some(Prefix::Ne) => "ne",
        Some(Prefix::Gt) => "gt",
        Some(Prefix::Lt) => "lt",
        Some(Prefix::Ge) => "ge",
        Some(Prefix::Le) => "le",
    }
}

/// The parameters back as a `filterFhir` string, for the engine's reader.
fn as_filter(params: &[&SearchParam]) -> String {
    params
        .iter()
        .map(|p| {
            let values: Vec<String> = p
                .values
                .iter()
                .map(|v| format!("{}{}", prefix_text(v.prefix), v.text))
                .collect();
            format!("{}={}", p.name, values.join(","))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A facet field's value for one patient as a number (`None`: the index does not hold the
/// field); [`patient_label`] names it. Numbers, not strings: a facet over a million patients
/// allocates nothing per patient.
fn patient_key(index: &ClinicalIndex, field: &str, patient: u32) -> Option<u64> {
    let p = &index.patients;
    let i = patient as usize;
    Some(match field {
        "gender" => u64::from(!p.female[i]),
        "deceased" => u64::from(p.death[i].is_some()),
        "age-month" | "age-year" => {
            let birth = p.birth[i];
            let at = index.reference_date;
            let mut years = at.year() - birth.year();
            if (at.month(), at.day()) < (birth.month(), birth.day()) {
                years -= 1;
            }
            let years = years.max(0) as u64;
            if field == "age-month" {
                years * 12
            } else {
                years
            }
        }
        "subject" | "patient" => u64::from(patient),
        _ => return None,
    })
}

fn patient_label(field: &str, key: u64) -> String {
    match field {
        "gender" => if key == 0 { "female" } else { "male" }.to_string(),
        "deceased" => (key == 1).to_string(),
        _ => key.to_string(),
    }
}

/// Counts facets over rows: `key(row, field)` reads a field as a number (`None`: not held),
/// `label(field, key)` names it; values are ordered by name, as the SQL facets are.
fn count_facets<R: Copy>(
    facets: &[Facet],
    rows: impl Iterator<Item = R> + Clone,
    key: impl Fn(R, &str) -> Option<u64>,
    label: impl Fn(&str, u64) -> String,
) -> Option<Vec<FacetCounts>> {
    let mut out = Vec::new();
    for facet in facets {
        let mut counts: Vec<(Vec<String>, i64)> = match facet {
            Facet::Field(f) => {
                let mut by: HashMap<u64, i64> = HashMap::new();
                for r in rows.clone() {
                    *by.entry(key(r, f)?).or_default() += 1;
                }
                by.into_iter()
                    .map(|(k, n)| (vec![label(f, k)], n))
                    .collect()
            }
            Facet::Pivot(a, b) => {
                let mut by: HashMap<(u64, u64), i64> = HashMap::new();
                for r in rows.clone() {
                    *by.entry((key(r, a)?, key(r, b)?)).or_default() += 1;
                }
                by.into_iter()
                    .map(|((x, y), n)| (vec![label(a, x), label(b, y)], n))
                    .collect()
            }
            Facet::Unique(f) => {
                let mut seen = std::collections::HashSet::new();
                for r in rows.clone() {
                    seen.insert(key(r, f)?);
                }
                vec![(Vec::new(), seen.len() as i64)]
            }
        };
        counts.sort();
        out.push(FacetCounts {
            facet: facet.clone(),
            counts,
        });
    }
    Some(out)
}

/// A Patient or Encounter search from the index, or `None` when it cannot answer.
pub async fn search(
    pool: &PgPool,
    index: &ClinicalIndex,
    search: &FhirSearch,
    scope: &ReadScope,
) -> Result<Option<IndexAnswer>, sqlx::Error> {
    let mut rest: Vec<&SearchParam> = Vec::new();
    let mut list = None;
    let mut subjects: Option<PatientSet> = None;
    let mut part_of_missing = true;
    let mut classes: Option<Vec<String>> = None;
    for p in &search.params {
        match (p.name.as_str(), p.modifier.as_deref(), search.resource) {
            ("_list", None, _) => list = Some(p),
            ("part-of", Some("missing"), FhirType::Encounter) => {
                part_of_missing &= p.values.iter().all(|v| v.text == "true")
            }
            ("subject" | "patient", None, FhirType::Encounter) => {
                let ids: Option<PatientSet> = p
                    .values
                    .iter()
                    .map(|v| {
                        v.text
                            .rsplit('/')
                            .next()
                            .and_then(|t| t.parse::<u32>().ok())
                    })
                    .collect();
                let Some(ids) = ids else { return Ok(None) };
                subjects = Some(ids);
            }
            ("class", None, FhirType::Encounter) => {
                classes = Some(p.values.iter().map(|v| v.code().to_string()).collect())
            }
            // A malformed id is the SQL search's 400, not an empty answer.
            ("_id", None, FhirType::Patient)
                if p.values.iter().any(|v| v.text.parse::<u32>().is_err()) =>
            {
                return Ok(None);
            }
            (_, None, FhirType::Patient) => rest.push(p),
            ("subject.active" | "active", None, FhirType::Encounter) => rest.push(p),
            _ => return Ok(None),
        }
    }
    let mut population = perimeter_patients(pool, index, &scope.readable).await?;
    if let Some(list) = list {
        population &= list_patients(pool, index, list).await?;
    }
    if let Some(s) = &subjects {
        population &= s;
    }
    // The engine's reading of the parameters (Encounter's `subject.active`: every patient).
    let criterion = Criterion {
        id: 0,
        inclusive: true,
        resource_type: "Patient".into(),
        filter_fhir: as_filter(&rest),
        occurrence: Occurrence {
            n: 1,
            operator: Comparator::Ge,
            same_encounter: false,
            same_day: false,
        },
        patient_age: None,
        unique_fields: Vec::new(),
    };
    let codes = CodeExpansions::default();
    let documents = DocumentRows::default();
    let source = ClinicalSource {
        index,
        population: &population,
        codes: &codes,
        documents: &documents,
    };
    let patients = match source.fetch(&criterion, Needs { rows: false }, None) {
        Ok(Fetched::Patients(set)) => set,
        Ok(Fetched::Rows(rows)) => rows.iter().map(|r| r.patient).collect(),
        Err(_) => return Ok(None),
    };
    match search.resource {
        FhirType::Patient => Ok(patient_page(index, search, scope, pool, patients).await?),
        FhirType::Encounter if search.count == 0 => Ok(encounter_totals(
            index,
            search,
            &patients,
            part_of_missing,
            classes,
        )),
        _ => Ok(None),
    }
}

async fn patient_page(
    index: &ClinicalIndex,
    search: &FhirSearch,
    scope: &ReadScope,
    pool: &PgPool,
    patients: PatientSet,
) -> Result<Option<IndexAnswer>, sqlx::Error> {
    let Some(facets) = count_facets(
        &search.facets,
        patients.iter(),
        |p, f| patient_key(index, f, p),
        patient_label,
    ) else {
        return Ok(None);
    };
    let total = patients.len() as i64;
    let wanted = (search.offset + search.count).max(0) as usize;
    if search.count == 0 || search.offset >= total {
        return Ok(Some(IndexAnswer {
            total,
            page: Vec::new(),
            facets,
        }));
    }
    if search.sort.len() > 3 {
        return Ok(None);
    }
    // Names sort only where the caller reads them (as the SQL search does).
    let needs_names = search
        .sort
        .iter()
        .any(|k| matches!(k.field, SortField::Family));
    let nominative = if needs_names {
        perimeter_patients(pool, index, &scope.nominative).await?
    } else {
        PatientSet::new()
    };
    let p = &index.patients;
    // Per key: (missing, value), missing last whatever the direction.
    // The first `wanted` in sort order, kept in a bounded max-heap: no per-patient allocation.
    let mut best: BinaryHeap<([(bool, i64); 3], u32)> =
        BinaryHeap::with_capacity(wanted.min(4096) + 1);
    for id in patients.iter() {
        let i = id as usize;
        let mut key = [(false, 0i64); 3];
        for (slot, k) in key.iter_mut().zip(&search.sort) {
            let v: Option<i64> = match k.field {
                SortField::Id => Some(i64::from(id)),
                SortField::Family => nominative.contains(id).then(|| i64::from(p.family_rank[i])),
                SortField::BirthDate => Some(i64::from(p.birth[i].num_days_from_ce())),
                SortField::Gender => Some(if p.female[i] { 0 } else { 1 }),
                SortField::DeathDate => p.death[i].map(|d| i64::from(d.num_days_from_ce())),
                _ => return Ok(None),
            };
            *slot = match v {
                Some(v) if k.descending => (false, -v),
                Some(v) => (false, v),
                None => (true, 0),
            };
        }
        if best.len() < wanted {
            best.push((key, id));
        } else if best.peek().is_some_and(|top| (key, id) < *top) {
            best.pop();
            best.push((key, id));
        }
    }
    let page = best
        .into_sorted_vec()
        .into_iter()
        .skip(search.offset as usize)
        .map(|(_, id)| i64::from(id))
        .collect();
    Ok(Some(IndexAnswer {
        total,
        page,
        facets,
    }))
}

/// The dashboard's encounter call (`_count=0`): the total and facets over the patients'
/// encounters.
fn encounter_totals(
    index: &ClinicalIndex,
    search: &FhirSearch,
    patients: &PatientSet,
    part_of_missing: bool,
    classes: Option<Vec<String>>,
) -> Option<IndexAnswer> {
    let e = &index.encounters;
    let class_ids: Option<Vec<u8>> = classes.map(|wanted| {
        e.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| wanted.contains(c))
            .map(|(k, _)| k as u8)
            .collect()
    });
    let rows = (1..e.patient.len()).filter(|&i| {
        part_of_missing
            && e.patient[i] != 0
            && patients.contains(e.patient[i])
            && class_ids.as_ref().is_none_or(|c| c.contains(&e.class[i]))
    });
    let total = rows.clone().count() as i64;
    let key = |i: usize, field: &str| -> Option<u64> {
        match field {
            "class" => Some(u64::from(e.class[i])),
            "visit-year-month" | "start-date-year-month" => DateTime::from_timestamp(e.start[i], 0)
                .map(|t| t.year() as u64 * 100 + u64::from(t.month())),
            "status" => Some(0),
            other => patient_key(index, other, e.patient[i]),
        }
    };
    let label = |field: &str, k: u64| -> String {
        match field {
            "class" => e.classes.get(k as usize).cloned().unwrap_or_default(),
            "visit-year-month" | "start-date-year-month" => {
                format!("{:04}-{:02}", k / 100, k % 100)
            }
            "status" => "finished".into(),
            other => patient_label(other, k),
        }
    };
    let facets = count_facets(&search.facets, rows, key, label)?;
    Some(IndexAnswer {
        total,
        page: Vec::new(),
        facets,
    })
}
