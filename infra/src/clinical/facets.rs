//! Dashboard facets of a FHIR search (AP-HP's `facet=`, `pivot-facet=`, `unique-facet=`):
//! counts per value of a field over every match of the search, within the caller's scope. One
//! grouped SQL statement per facet, with the search's own filters.

use projections::clinical::{Facet, FacetCounts, FhirSearch, FhirSearchError, FhirType, ReadScope};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::fhir::{ResolvedCodes, from_scope, push_filters};
use crate::sql::read_error;

/// The reference date ages are taken at (the data's, never the clock's).
const REFERENCE_DATE: &str =
    "(SELECT reference_date FROM clinical.data_versions ORDER BY version DESC LIMIT 1)";

/// The SQL value of a facet field on a type; `None`: the type has no such field.
pub(crate) fn field_expr(t: FhirType, field: &str) -> Option<String> {
    let patient = match field {
        "gender" => Some(
            "CASE c.gender WHEN 'f' THEN 'female' WHEN 'm' THEN 'male' ELSE c.gender END"
                .to_string(),
        ),
        "deceased" => Some("CASE WHEN c.deceased THEN 'true' ELSE 'false' END".to_string()),
        // Whole years, in months: the front-end's age pyramid reads `months / 12` as a year.
        "age-month" => Some(format!(
            "(extract(year FROM age({REFERENCE_DATE}, c.birth_date)) * 12)::int::text"
        )),
        "age-year" => Some(format!(
            "extract(year FROM age({REFERENCE_DATE}, c.birth_date))::int::text"
        )),
        "subject" | "patient" => Some("c.id::text".to_string()),
        _ => None,
    };
    if patient.is_some() {
        return patient;
    }
    match (t, field) {
        (FhirType::Patient, _) => None,
        (FhirType::Encounter, "class") => Some("x.class".to_string()),
        (FhirType::Encounter, "visit-year-month" | "start-date-year-month") => {
            Some("to_char(x.start_at, 'YYYY-MM')".to_string())
        }
        (FhirType::Encounter, "status") => Some("'finished'".to_string()),
        (FhirType::DocumentReference, "type") => Some("x.type".to_string()),
        (FhirType::DocumentReference, "code") => None,
        (_, "code") => Some("x.code".to_string()),
        (_, "encounter") => Some("x.encounter_id::text".to_string()),
        _ => None,
    }
}

/// Counts one facet over a search's matches.
pub(crate) async fn count(
    pool: &PgPool,
    search: &FhirSearch,
    facet: &Facet,
    scope: &ReadScope,
    codes: &ResolvedCodes,
    total: i64,
) -> Result<FacetCounts, FhirSearchError> {
    let t = search.resource;
    let unknown = |f: &str| {
        FhirSearchError::Unsupported(format!("the facet `{f}` is not supported on {}", t.name()))
    };
    let expr = |f: &str| field_expr(t, f).ok_or_else(|| unknown(f));
    let (select, group) = match facet {
        Facet::Field(f) => (
            format!("SELECT {} AS a, NULL::text AS b, count(*)", expr(f)?),
            " GROUP BY 1, 2",
        ),
        Facet::Pivot(a, b) => (
            format!("SELECT {} AS a, {} AS b, count(*)", expr(a)?, expr(b)?),
            " GROUP BY 1, 2",
        ),
        Facet::Unique(f) => (
            format!(
                "SELECT NULL::text AS a, NULL::text AS b, count(DISTINCT {})",
                expr(f)?
            ),
            "",
        ),
    };
    if total == 0 {
        return Ok(FacetCounts {
            facet: facet.clone(),
            counts: Vec::new(),
        });
    }
    let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new(select);
    from_scope(&mut q, t, scope);
    push_filters(&mut q, t, &search.params, scope, codes)?;
    q.push(group);
    if !group.is_empty() {
        q.push(" ORDER BY 1, 2");
    }
    let rows = q.build().fetch_all(pool).await.map_err(read_error)?;
    let mut counts = Vec::with_capacity(rows.len());
    for r in rows {
        let a: Option<String> = r.try_get(0).map_err(read_error)?;
        let b: Option<String> = r.try_get(1).map_err(read_error)?;
        let n: i64 = r.try_get(2).map_err(read_error)?;
        counts.push((a.into_iter().chain(b).collect(), n));
    }
    Ok(FacetCounts {
        facet: facet.clone(),
        counts,
    })
}
