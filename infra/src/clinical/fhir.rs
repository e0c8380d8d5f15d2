//! FHIR searches over the clinical store in SQL, always restricted to the caller's perimeters
//! (the dashboards' Patient and Encounter searches from the in-memory index when it is loaded,
//! see [`super::index_search`]).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::cohort_query::fhir_search::{Prefix, SearchParam, SearchValue};
use domain::terminology::CodeSelection;
use projections::ReadError;
use projections::clinical::{
    ClinicalReader, DocumentRecord, EncounterRecord, FactRecord, FhirPage, FhirRecord, FhirSearch,
    FhirSearchError, FhirType, PatientRecord, ReadScope, SortField,
};
use projections::terminology::TerminologyReader;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use super::EmbeddedExecutor;
use super::catalog::FactResource;
use crate::sql::read_error;
use crate::terminology::store::PgTerminology;

pub struct PgClinical {
    pool: PgPool,
    terminology: PgTerminology,
    /// The embedded executor's index, for the searches it can answer (the dashboards').
    index: Option<Arc<EmbeddedExecutor>>,
}

impl PgClinical {
    pub fn new(pool: PgPool) -> Self {
        Self {
            terminology: PgTerminology::new(pool.clone()),
            pool,
            index: None,
        }
    }

    /// Answers what it can from the embedded executor's in-memory index (when loaded and
    /// current), the rest in SQL.
    pub fn with_index(mut self, executor: Option<Arc<EmbeddedExecutor>>) -> Self {
        self.index = executor;
        self
    }

    /// The search from the index, its page's rows read by id; `None`: the SQL search answers.
    async fn search_on_index(
        &self,
        search: &FhirSearch,
        scope: &ReadScope,
    ) -> Result<Option<FhirPage>, FhirSearchError> {
        let Some(executor) = &self.index else {
            return Ok(None);
        };
        if !matches!(search.resource, FhirType::Patient | FhirType::Encounter) {
            return Ok(None);
        }
        let Some(index) = executor.ready_index().await else {
            return Ok(None);
        };
        let Some(answer) = super::index_search::search(&self.pool, &index, search, scope)
            .await
            .map_err(read_error)?
        else {
            return Ok(None);
        };
        let mut records = Vec::with_capacity(answer.page.len());
        if !answer.page.is_empty() {
            let t = search.resource;
            let mut q = QueryBuilder::new(columns(t));
            nominative_expr(&mut q, scope);
            q.push(" AS nominative");
            from_scope(&mut q, t, scope);
            q.push(" AND c.id = ANY(").push_bind(&answer.page).push(")");
            let rows = q.build().fetch_all(&self.pool).await.map_err(read_error)?;
            let mut by_id: HashMap<i64, FhirRecord> = HashMap::new();
            for row in &rows {
                let record = record(t, row).map_err(read_error)?;
                if let FhirRecord::Patient(p) = &record {
                    by_id.insert(p.id, record);
                }
            }
            records.extend(answer.page.iter().filter_map(|id| by_id.remove(id)));
        }
        Ok(Some(FhirPage {
            total: answer.total,
            records,
            facets: answer.facets,
        }))
    }
}

fn fact_resource(t: FhirType) -> Option<FactResource> {
    Some(match t {
        FhirType::Condition => FactResource::Condition,
        FhirType::Observation => FactResource::Observation,
        FhirType::MedicationRequest => FactResource::MedicationRequest,
        FhirType::Procedure => FactResource::Procedure,
        FhirType::Patient | FhirType::Encounter | FhirType::DocumentReference => return None,
    })
}

/// `FROM … WHERE` of a type: the resource's rows joined to their patient (`c`) and the patient's
/// perimeter (`pp`), within the scope.
pub(crate) fn from_scope<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    t: FhirType,
    scope: &'a ReadScope,
) {
    match t {
        FhirType::Patient => q.push(" FROM clinical.patients c"),
        FhirType::Encounter => {
            q.push(" FROM clinical.encounters x JOIN clinical.patients c ON c.id = x.patient_id")
        }
        FhirType::DocumentReference => {
            q.push(" FROM clinical.documents x JOIN clinical.patients c ON c.id = x.patient_id")
        }
        _ => q.push(" FROM clinical.facts x JOIN clinical.patients c ON c.id = x.patient_id"),
    };
    q.push(" JOIN identity.perimeters pp ON pp.id = c.perimeter_id WHERE (pp.id = ANY(")
        .push_bind(&scope.readable)
        .push(") OR pp.ancestors && ")
        .push_bind(&scope.readable)
        .push(")");
    if let Some(r) = fact_resource(t) {
        q.push(" AND x.resource = ")
            .push_bind(r.code().to_string())
            .push("::\"char\"");
    }
}

fn nominative_expr<'a>(q: &mut QueryBuilder<'a, Postgres>, scope: &'a ReadScope) {
    q.push("(pp.id = ANY(")
        .push_bind(&scope.nominative)
        .push(") OR pp.ancestors && ")
        .push_bind(&scope.nominative)
        .push(")");
}

fn unsupported(t: FhirType, p: &SearchParam) -> FhirSearchError {
    let name = match &p.modifier {
        Some(m) => format!("{}:{m}", p.name),
        None => p.name.clone(),
    };
    FhirSearchError::Unsupported(format!(
        "the search parameter `{name}` is not supported on {}",
        t.name()
    ))
}

fn invalid(p: &SearchParam, v: &SearchValue, what: &str) -> FhirSearchError {
    FhirSearchError::Unsupported(format!("`{}` of `{}` is not {what}", v.text, p.name))
}

/// The instants a date value stands for (see [`SearchValue::instant_range`]).
fn instants(
    p: &SearchParam,
    v: &SearchValue,
) -> Result<(DateTime<Utc>, DateTime<Utc>), FhirSearchError> {
    let (lo, hi) = v.instant_range().ok_or_else(|| invalid(p, v, "a date"))?;
    match (
        DateTime::from_timestamp(lo, 0),
        DateTime::from_timestamp(hi, 0),
    ) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Err(invalid(p, v, "a date")),
    }
}

/// `column <prefix> value` for one alternative; `lo`/`hi` bound the value's range.
fn push_compare<'a, T>(
    q: &mut QueryBuilder<'a, Postgres>,
    column: &str,
    prefix: Option<Prefix>,
    lo: T,
    hi: T,
) where
    T: 'a + sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + Clone,
{
    match prefix {
        None | Some(Prefix::Eq) => {
            q.push(format!("({column} >= "))
                .push_bind(lo)
                .push(format!(" AND {column} <= "))
                .push_bind(hi)
                .push(")");
        }
        Some(Prefix::Ne) => {
            q.push(format!("({column} < "))
                .push_bind(lo)
                .push(format!(" OR {column} > "))
                .push_bind(hi)
                .push(")");
        }
        Some(Prefix::Ge) => {
            q.push(format!("{column} >= ")).push_bind(lo);
        }
        Some(Prefix::Gt) => {
            q.push(format!("{column} > ")).push_bind(hi);
        }
        Some(Prefix::Le) => {
            q.push(format!("{column} <= ")).push_bind(hi);
        }
        Some(Prefix::Lt) => {
            q.push(format!("{column} < ")).push_bind(lo);
        }
    }
}

/// ` AND (alt1 OR alt2 …)` over a parameter's alternatives.
fn push_alternatives<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    p: &'a SearchParam,
    mut one: impl FnMut(&mut QueryBuilder<'a, Postgres>, &'a SearchValue) -> Result<(), FhirSearchError>,
) -> Result<(), FhirSearchError> {
    if p.values.is_empty() {
        return Ok(());
    }
    q.push(" AND (");
    for (i, v) in p.values.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        one(q, v)?;
    }
    q.push(")");
    Ok(())
}

fn ids(p: &SearchParam) -> Result<Vec<i64>, FhirSearchError> {
    p.values
        .iter()
        .map(|v| {
            let text = v.text.rsplit('/').next().unwrap_or(&v.text);
            text.parse().map_err(|_| invalid(p, v, "an id"))
        })
        .collect()
}

/// The codes `code` values select (their descendants, their ranges), resolved in the
/// terminology before the SQL is built: the same selections as the query engine's.
#[derive(Debug, Default)]
pub(crate) struct ResolvedCodes {
    by_value: HashMap<String, CodeSelection>,
}

impl ResolvedCodes {
    /// Resolves every `code` value of a search on `t`.
    pub(crate) async fn of(
        terminology: &PgTerminology,
        t: FhirType,
        params: &[SearchParam],
    ) -> Result<Self, ReadError> {
        let mut out = Self::default();
        let (Some(resource), true) = (fact_resource(t), params.iter().any(|p| p.name == "code"))
        else {
            return Ok(out);
        };
        let values: Vec<String> = params
            .iter()
            .filter(|p| p.name == "code")
            .flat_map(|p| p.values.iter().map(|v| v.code().to_string()))
            .collect();
        let selections = terminology
            .resolve_codes(resource.code_system(), &values)
            .await?;
        out.by_value = values.into_iter().zip(selections).collect();
        Ok(out)
    }

    /// ` AND (x.code = ANY(…) OR x.code in a range …)` for a parameter's values.
    fn push<'a>(&self, q: &mut QueryBuilder<'a, Postgres>, p: &'a SearchParam) {
        let mut selection = CodeSelection::default();
        for v in &p.values {
            match self.by_value.get(v.code()) {
                Some(s) => selection.extend(s.clone()),
                None => {
                    selection.codes.insert(v.code().to_string());
                }
            }
        }
        let codes: Vec<String> = selection.codes.into_iter().collect();
        q.push(" AND (x.code = ANY(").push_bind(codes).push(")");
        for r in selection.ranges {
            q.push(" OR (x.code >= ")
                .push_bind(r.lo)
                .push(" AND (x.code <= ")
                .push_bind(r.hi.clone())
                .push(" OR starts_with(x.code, ")
                .push_bind(r.hi)
                .push(")))");
        }
        q.push(")");
    }
}

/// The WHERE conditions of the search's parameters.
pub(crate) fn push_filters<'a>(
    q: &mut QueryBuilder<'a, Postgres>,
    t: FhirType,
    params: &'a [SearchParam],
    scope: &'a ReadScope,
    codes: &ResolvedCodes,
) -> Result<(), FhirSearchError> {
    let own_id = if t == FhirType::Patient {
        "c.id"
    } else {
        "x.id"
    };
    let date_column = match t {
        FhirType::Patient => "c.birth_date",
        FhirType::Encounter => "x.start_at",
        _ => "x.at",
    };
    for p in params {
        let name = p.name.as_str();
        match (name, p.modifier.as_deref()) {
            (_, None) | ("code", Some("below")) => {}
            ("part-of", Some("missing")) if t == FhirType::Encounter => {
                // Every stored encounter is a visit, part of nothing.
                if p.values.iter().any(|v| v.text != "true") {
                    q.push(" AND false");
                }
                continue;
            }
            _ => return Err(unsupported(t, p)),
        }
        if name != "_id" && name != "_list" && !t.search_params().contains(&name) {
            return Err(unsupported(t, p));
        }
        match name {
            "active" | "subject.active" => {
                if p.values.iter().any(|v| v.text != "true") {
                    // Every stored patient is active.
                    q.push(" AND false");
                }
            }
            "_id" => {
                q.push(format!(" AND {own_id} = ANY("))
                    .push_bind(ids(p)?)
                    .push(")");
            }
            "subject" | "patient" => {
                q.push(" AND c.id = ANY(").push_bind(ids(p)?).push(")");
            }
            "encounter" => {
                q.push(" AND x.encounter_id = ANY(")
                    .push_bind(ids(p)?)
                    .push(")");
            }
            "_list" => {
                let lists: Vec<String> = p.values.iter().map(|v| v.text.clone()).collect();
                let groups: Vec<i64> = lists.iter().filter_map(|l| l.parse().ok()).collect();
                q.push(
                    " AND (c.perimeter_id IN (SELECT s.id FROM identity.perimeters s JOIN identity.perimeters l \
                     ON s.id_path LIKE l.id_path || '%' WHERE l.cohort_id = ANY(",
                )
                .push_bind(lists)
                .push(")) OR c.id IN (SELECT patient_id FROM clinical.cohort_members WHERE group_id = ANY(")
                .push_bind(groups)
                .push(")))");
            }
            "gender" => {
                let genders: Vec<String> = p
                    .values
                    .iter()
                    .map(|v| match v.code() {
                        "female" | "f" => "f".to_string(),
                        "male" | "m" => "m".to_string(),
                        other => other.to_string(),
                    })
                    .collect();
                q.push(" AND c.gender = ANY(").push_bind(genders).push(")");
            }
            "deceased" => {
                let wanted: Vec<bool> = p.values.iter().map(|v| v.text == "true").collect();
                q.push(" AND c.deceased = ANY(").push_bind(wanted).push(")");
            }
            "identifier" => {
                // Only patients the caller reads nominatively can be found by their IPP.
                let ipps: Vec<String> = p.values.iter().map(|v| v.code().to_string()).collect();
                q.push(" AND c.ipp = ANY(").push_bind(ipps).push(") AND ");
                nominative_expr(q, scope);
            }
            "class" => {
                let classes: Vec<String> = p.values.iter().map(|v| v.code().to_string()).collect();
                q.push(" AND x.class = ANY(").push_bind(classes).push(")");
            }
            "type" => {
                let kinds: Vec<String> = p.values.iter().map(|v| v.code().to_string()).collect();
                q.push(" AND x.type = ANY(").push_bind(kinds).push(")");
            }
            "_text" => {
                // Web-search syntax (words, "phrases", or, -word), French stemming; the values
                // of one parameter are alternatives.
                push_alternatives(q, p, |q, v| {
                    q.push("to_tsvector('french', x.text) @@ websearch_to_tsquery('french', ")
                        .push_bind(v.text.clone())
                        .push(")");
                    Ok(())
                })?;
            }
            "code" => codes.push(q, p),
            "birthdate" | "death-date" => {
                let column = if name == "birthdate" {
                    "c.birth_date"
                } else {
                    "c.death_date"
                };
                push_alternatives(q, p, |q, v| {
                    let (lo, hi) = instants(p, v)?;
                    push_compare(q, column, v.prefix, lo.date_naive(), hi.date_naive());
                    Ok(())
                })?;
            }
            "date" => {
                push_alternatives(q, p, |q, v| {
                    let (lo, hi) = instants(p, v)?;
                    push_compare(q, date_column, v.prefix, lo, hi);
                    Ok(())
                })?;
            }
            "value-quantity" => {
                push_alternatives(q, p, |q, v| {
                    let n: f64 = v
                        .text
                        .split('|')
                        .next()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|_| invalid(p, v, "a number"))?;
                    push_compare(q, "x.value", v.prefix, n, n);
                    Ok(())
                })?;
            }
            _ => return Err(unsupported(t, p)),
        }
    }
    Ok(())
}

/// The column a sort field reads on a type (fields a type lacks fall back to its id).
fn sort_column(t: FhirType, field: SortField) -> &'static str {
    match (t, field) {
        (FhirType::Patient, SortField::Family) => "c.family_name",
        (FhirType::Patient, SortField::Given) => "c.given_name",
        (FhirType::Patient, SortField::BirthDate) => "c.birth_date",
        (FhirType::Patient, SortField::Gender) => "c.gender",
        (FhirType::Patient, SortField::DeathDate) => "c.death_date",
        (FhirType::Patient, _) => "c.id",
        (FhirType::Encounter, SortField::Date) => "x.start_at",
        (FhirType::Encounter, SortField::End) => "x.end_at",
        (FhirType::Encounter, SortField::Class) => "x.class",
        (_, SortField::Date) => "x.at",
        (FhirType::DocumentReference, SortField::Code) => "x.type",
        (_, SortField::Code) => "x.code",
        _ => "x.id",
    }
}

fn columns(t: FhirType) -> &'static str {
    match t {
        FhirType::Patient => {
            "SELECT c.id::bigint AS id, c.ipp, c.gender, c.birth_date, c.death_date, c.deceased, c.family_name, \
             c.given_name, c.perimeter_id, "
        }
        FhirType::Encounter => {
            "SELECT x.id::bigint AS id, x.patient_id::bigint AS patient_id, x.class, x.start_at, x.end_at, \
             x.episode_id::bigint AS episode_id, x.perimeter_id, "
        }
        FhirType::DocumentReference => {
            "SELECT x.id, x.patient_id::bigint AS patient_id, x.encounter_id::bigint AS encounter_id, x.at, x.type, \
             x.title, x.text, "
        }
        _ => {
            "SELECT x.id, x.patient_id::bigint AS patient_id, x.encounter_id::bigint AS encounter_id, x.code, x.at, \
             x.value, x.unit, "
        }
    }
}

fn record(t: FhirType, row: &PgRow) -> Result<FhirRecord, sqlx::Error> {
    Ok(match t {
        FhirType::Patient => FhirRecord::Patient(PatientRecord {
            id: row.try_get("id")?,
            ipp: row.try_get("ipp")?,
            gender: row.try_get("gender")?,
            birth_date: row.try_get("birth_date")?,
            death_date: row.try_get("death_date")?,
            deceased: row.try_get("deceased")?,
            family_name: row.try_get("family_name")?,
            given_name: row.try_get("given_name")?,
            perimeter_id: row.try_get("perimeter_id")?,
            nominative: row.try_get("nominative")?,
        }),
        FhirType::Encounter => FhirRecord::Encounter(EncounterRecord {
            id: row.try_get("id")?,
            patient_id: row.try_get("patient_id")?,
            class: row.try_get("class")?,
            start_at: row.try_get("start_at")?,
            end_at: row.try_get("end_at")?,
            episode_id: row.try_get("episode_id")?,
            perimeter_id: row.try_get("perimeter_id")?,
        }),
        FhirType::DocumentReference => FhirRecord::Document(DocumentRecord {
            id: row.try_get("id")?,
            patient_id: row.try_get("patient_id")?,
            encounter_id: row.try_get("encounter_id")?,
            at: row.try_get("at")?,
            kind: row.try_get("type")?,
            title: row.try_get("title")?,
            text: row.try_get("text")?,
            nominative: row.try_get("nominative")?,
        }),
        _ => FhirRecord::Fact(FactRecord {
            id: row.try_get("id")?,
            resource: t,
            patient_id: row.try_get("patient_id")?,
            encounter_id: row.try_get("encounter_id")?,
            code: row.try_get("code")?,
            at: row.try_get("at")?,
            value: row.try_get("value")?,
            unit: row.try_get("unit")?,
        }),
    })
}

#[async_trait]
impl ClinicalReader for PgClinical {
    async fn search(
        &self,
        search: &FhirSearch,
        scope: &ReadScope,
    ) -> Result<FhirPage, FhirSearchError> {
        if let Some(page) = self.search_on_index(search, scope).await? {
            return Ok(page);
        }
        let t = search.resource;
        let codes = ResolvedCodes::of(&self.terminology, t, &search.params).await?;
        let mut count = QueryBuilder::new("SELECT count(*)");
        from_scope(&mut count, t, scope);
        push_filters(&mut count, t, &search.params, scope, &codes)?;
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(read_error)?;
        let mut facets = Vec::new();
        for facet in &search.facets {
            facets
                .push(super::facets::count(&self.pool, search, facet, scope, &codes, total).await?);
        }
        if search.count == 0 || total == 0 {
            return Ok(FhirPage {
                total,
                records: Vec::new(),
                facets,
            });
        }
        let mut q = QueryBuilder::new(columns(t));
        nominative_expr(&mut q, scope);
        q.push(" AS nominative");
        from_scope(&mut q, t, scope);
        push_filters(&mut q, t, &search.params, scope, &codes)?;
        q.push(" ORDER BY ");
        for key in &search.sort {
            // Pseudonymized readers see no names: sorting by them must not reveal them.
            if matches!(key.field, SortField::Family | SortField::Given) {
                q.push("CASE WHEN ");
                nominative_expr(&mut q, scope);
                q.push(format!(" THEN {} END", sort_column(t, key.field)));
            } else {
                q.push(sort_column(t, key.field));
            }
            q.push(if key.descending {
                " DESC NULLS LAST, "
            } else {
                " ASC NULLS LAST, "
            });
        }
        q.push(sort_column(t, SortField::Id));
        q.push(" LIMIT ")
            .push_bind(search.count)
            .push(" OFFSET ")
            .push_bind(search.offset);
        let rows = q.build().fetch_all(&self.pool).await.map_err(read_error)?;
        let records = rows
            .iter()
            .map(|r| record(t, r))
            .collect::<Result<_, _>>()
            .map_err(read_error)?;
        Ok(FhirPage {
            total,
            records,
            facets,
        })
    }

    async fn read(
        &self,
        resource: FhirType,
        id: i64,
        scope: &ReadScope,
    ) -> Result<Option<FhirRecord>, ReadError> {
        let mut q = QueryBuilder::new(columns(resource));
        nominative_expr(&mut q, scope);
        q.push(" AS nominative");
        from_scope(&mut q, resource, scope);
        let own = if resource == FhirType::Patient {
            "c.id"
        } else {
            "x.id"
        };
        q.push(format!(" AND {own} = ")).push_bind(id);
        let row = q
            .build()
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        row.map(|r| record(resource, &r))
            .transpose()
            .map_err(read_error)
    }

    async fn list_members(
        &self,
        group_id: i64,
        scope: &ReadScope,
    ) -> Result<Option<Vec<i64>>, ReadError> {
        let exists: Option<i64> =
            sqlx::query_scalar("SELECT group_id FROM clinical.cohort_lists WHERE group_id = $1")
                .bind(group_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(read_error)?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut q = QueryBuilder::new("SELECT c.id::bigint");
        from_scope(&mut q, FhirType::Patient, scope);
        q.push(" AND c.id IN (SELECT patient_id FROM clinical.cohort_members WHERE group_id = ")
            .push_bind(group_id)
            .push(") ORDER BY c.id");
        let ids = q
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(Some(ids))
    }
}
