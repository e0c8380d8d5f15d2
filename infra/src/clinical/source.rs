//! The embedded store as the evaluator's data source: a criterion's resource type and FHIR search
//! parameters become a scan of the in-memory index, restricted to the source population.
//!
//! Supported parameters (those the front-end writes for these resources):
//! - every resource: `active`, `subject.active`, `patient.active` (`true`: every stored patient
//!   is active);
//! - Patient: `gender`, `deceased`, `birthdate`, `death-date`, `age-day`, `age-month` (age at the
//!   data's reference date), `_id`; IPPList: `identifier.value` (or `identifier`);
//! - Encounter: `class`, `date`/`period-start`/`start-date`, `period-end`/`end-date`, `length`
//!   (days), `start-age-visit` (age in days at the start);
//! - Condition, Observation, MedicationRequest, Procedure: `code` or `code:below` (`system|code`;
//!   the system is not compared, each resource having one terminology; a code selects its
//!   descendants in the terminology, and a range such as `X60-X84` every code in it: see
//!   [`CodeExpansions`]), their date parameters (`date`,
//!   `onset-date`, `recorded-date`, `effective-date`, `validity-period-start`, `authored-on`,
//!   `performed-date`), and `value-quantity` for observations;
//! - DocumentReference (clinical notes): `_text`, `type`, `date`, `subject`, `encounter`, read
//!   from Postgres with the FHIR search's filters before the evaluation ([`DocumentRows`]).
//!
//! Any other parameter, modifier or resource type is an error naming the criterion.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDate};
use domain::cohort_query::fhir_filter::{FilterExpr, parse_filter};
use domain::cohort_query::fhir_search::{Prefix, SearchParam, SearchValue, parse_search};
use domain::cohort_query::model::base_resource_type;
use domain::cohort_query::{
    ConstraintKind, Criterion, CriterionSource, Fetched, Needs, PatientSet, QueryError, Row,
};

use super::catalog::FactResource;
use super::index::{ClinicalIndex, Facts};

/// What a criterion reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Patient,
    IppList,
    Encounter,
    Fact(FactResource),
    /// Clinical notes: their rows are read from Postgres before the evaluation (full-text
    /// search), see [`DocumentRows`].
    Document,
}

fn target(resource_type: &str) -> Option<Target> {
    Some(match base_resource_type(resource_type).as_str() {
        "patient" => Target::Patient,
        "ipplist" => Target::IppList,
        "encounter" => Target::Encounter,
        "condition" => Target::Fact(FactResource::Condition),
        "observation" => Target::Fact(FactResource::Observation),
        "medicationrequest" => Target::Fact(FactResource::MedicationRequest),
        "procedure" => Target::Fact(FactResource::Procedure),
        "documentreference" | "document" => Target::Document,
        _ => return None,
    })
}

/// Date parameters a `_filter` may name on encounters (the start unless it names the end).
const ENCOUNTER_FILTER_PARAMS: &[&str] = &[
    "date",
    "period-start",
    "start-date",
    "period-end",
    "end-date",
    "encounter.period-start",
    "encounter.period-end",
];

/// Date parameters a `_filter` may name on the other facts: their own dates, and their
/// encounter's.
fn fact_filter_param(name: &str) -> bool {
    FACT_DATE_PARAMS.contains(&name)
        || matches!(name, "encounter.period-start" | "encounter.period-end")
}

const FACT_DATE_PARAMS: &[&str] = &[
    "date",
    "onset-date",
    "recorded-date",
    "effective-date",
    "validity-period-start",
    "authored-on",
    "performed-date",
];

/// Reads one number of an encounter (by id) for a [`Test`].
type EncounterMeasure = fn(&ClinicalIndex, usize) -> f64;

/// The index seen through one source population.
pub struct ClinicalSource<'a> {
    pub index: &'a ClinicalIndex,
    pub population: &'a PatientSet,
    pub codes: &'a CodeExpansions,
    pub documents: &'a DocumentRows,
}

/// The rows of a query's document criteria (by criterion id), read before the evaluation with
/// the FHIR search's own filters (`_text`, `type`, dates).
#[derive(Debug, Default, Clone)]
pub struct DocumentRows {
    pub by_criterion: HashMap<i64, Vec<Row>>,
}

/// The document criteria of a query.
pub fn document_criteria(query: &domain::cohort_query::CohortQuery) -> Vec<&Criterion> {
    query
        .criteria()
        .into_iter()
        .filter(|c| target(&c.resource_type) == Some(Target::Document))
        .collect()
}

/// The codes of the index each criterion code stands for: the code, its descendants in the
/// terminology, the codes of a range. Resolved before an evaluation (the hierarchy is in the
/// terminology store); a code absent from here stands for itself.
#[derive(Debug, Default, Clone)]
pub struct CodeExpansions {
    pub by_value: HashMap<(FactResource, String), Vec<String>>,
}

impl CodeExpansions {
    fn codes<'a>(&'a self, resource: FactResource, value: &'a str) -> Vec<&'a str> {
        match self.by_value.get(&(resource, value.to_string())) {
            Some(codes) => codes.iter().map(String::as_str).collect(),
            None => vec![value],
        }
    }
}

/// The `code` values of a query's fact criteria, by resource: what [`CodeExpansions`] resolves.
pub fn code_values(query: &domain::cohort_query::CohortQuery) -> Vec<(FactResource, Vec<String>)> {
    let mut out: HashMap<FactResource, Vec<String>> = HashMap::new();
    for c in query.criteria() {
        let Some(Target::Fact(resource)) = target(&c.resource_type) else {
            continue;
        };
        for p in parse_search(&c.filter_fhir) {
            if is_code_param(&p) {
                out.entry(resource)
                    .or_default()
                    .extend(p.values.iter().map(|v| v.code().to_string()));
            }
        }
    }
    out.into_iter().collect()
}

/// `code`, `code:below` (and upstream's `codeList`).
fn is_code_param(p: &SearchParam) -> bool {
    matches!(p.name.as_str(), "code" | "codeList")
        && matches!(p.modifier.as_deref(), None | Some("below"))
}

/// The instants a date value stands for (see [`SearchValue::instant_range`]).
fn instant_range(c: &Criterion, v: &SearchValue) -> Result<(i64, i64), QueryError> {
    v.instant_range()
        .ok_or_else(|| QueryError::criterion(c.id, format!("`{}` is not a date", v.text)))
}

/// Whether `x` (a point, or a range for dates) compares to the value's range as its prefix says.
fn compare(prefix: Option<Prefix>, x: f64, lo: f64, hi: f64) -> bool {
    match prefix {
        None | Some(Prefix::Eq) => x >= lo && x <= hi,
        Some(Prefix::Ne) => x < lo || x > hi,
        Some(Prefix::Ge) => x >= lo,
        Some(Prefix::Gt) => x > hi,
        Some(Prefix::Le) => x <= hi,
        Some(Prefix::Lt) => x < lo,
    }
}

/// A parameter's alternatives as numeric ranges (a number is its own range).
fn number_ranges(
    c: &Criterion,
    p: &SearchParam,
) -> Result<Vec<(Option<Prefix>, f64, f64)>, QueryError> {
    p.values
        .iter()
        .map(|v| {
            let n: f64 = v.text.trim().parse().map_err(|_| {
                QueryError::criterion(
                    c.id,
                    format!("`{}` of `{}` is not a number", v.text, p.name),
                )
            })?;
            Ok((v.prefix, n, n))
        })
        .collect()
}

fn date_ranges(
    c: &Criterion,
    p: &SearchParam,
) -> Result<Vec<(Option<Prefix>, f64, f64)>, QueryError> {
    p.values
        .iter()
        .map(|v| {
            let (lo, hi) = instant_range(c, v)?;
            Ok((v.prefix, lo as f64, hi as f64))
        })
        .collect()
}

/// One parameter as a test over a row's number (every alternative ORed).
struct Test {
    ranges: Vec<(Option<Prefix>, f64, f64)>,
}

impl Test {
    fn holds(&self, x: f64) -> bool {
        self.ranges
            .iter()
            .any(|(p, lo, hi)| compare(*p, x, *lo, *hi))
    }
}

fn unsupported(c: &Criterion, p: &SearchParam, what: &str) -> QueryError {
    let name = match &p.modifier {
        Some(m) => format!("{}:{m}", p.name),
        None => p.name.clone(),
    };
    QueryError::criterion(
        c.id,
        format!("the search parameter `{name}` is not supported on {what} by the embedded engine"),
    )
}

/// A `_filter` expression whose parameters are all dates among `known`.
fn date_filter(
    c: &Criterion,
    p: &SearchParam,
    known: impl Fn(&str) -> bool,
) -> Result<FilterExpr, QueryError> {
    let text = p
        .values
        .iter()
        .map(|v| v.text.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let expr = parse_filter(&text)
        .map_err(|e| QueryError::criterion(c.id, format!("`_filter` cannot be read: {e}")))?;
    if let Some(other) = expr.params().into_iter().find(|n| !known(n)) {
        return Err(QueryError::criterion(
            c.id,
            format!("`_filter` on `{other}` is not supported by the embedded engine"),
        ));
    }
    fn dates_ok(e: &FilterExpr) -> bool {
        match e {
            FilterExpr::And(a, b) | FilterExpr::Or(a, b) => dates_ok(a) && dates_ok(b),
            FilterExpr::Not(a) => dates_ok(a),
            FilterExpr::Compare { value, .. } => value.instant_range().is_some(),
            FilterExpr::Present { .. } => true,
        }
    }
    if !dates_ok(&expr) {
        return Err(QueryError::criterion(
            c.id,
            "`_filter` compares a date with something that is not a date",
        ));
    }
    Ok(expr)
}

/// Whether a row passes a date `_filter`, given the row's time for each parameter.
fn filter_holds(expr: &FilterExpr, time_of: impl Fn(&str) -> Option<i64>) -> bool {
    expr.eval(&|param, value| {
        let t = time_of(param)?;
        Some(match value {
            None => true,
            Some(v) => v
                .instant_range()
                .is_some_and(|(lo, hi)| compare(v.prefix, t as f64, lo as f64, hi as f64)),
        })
    })
}

/// `active=true` and its variants; `Ok(false)` when the parameter is something else.
fn is_active_filter(c: &Criterion, p: &SearchParam) -> Result<bool, QueryError> {
    if !matches!(
        p.name.as_str(),
        "active" | "subject.active" | "patient.active"
    ) {
        return Ok(false);
    }
    if p.values.iter().all(|v| v.text == "true") {
        Ok(true)
    } else {
        Err(QueryError::criterion(
            c.id,
            format!(
                "`{}` only accepts `true`: every stored patient is active",
                p.name
            ),
        ))
    }
}

/// Completed months from `birth` to `at` (0 before birth).
fn whole_months(birth: NaiveDate, at: NaiveDate) -> i32 {
    let months = (at.year() * 12 + at.month0() as i32)
        - (birth.year() * 12 + birth.month0() as i32)
        - i32::from(at.day() < birth.day());
    months.max(0)
}

impl CriterionSource for ClinicalSource<'_> {
    /// Every stored encounter belongs to an episode of care, so every resource linked to an
    /// encounter carries one here (upstream's sources only have it on questionnaire responses);
    /// patients carry neither an encounter nor a date.
    fn carries(&self, resource_type: &str, _kind: ConstraintKind) -> bool {
        !matches!(
            target(resource_type),
            None | Some(Target::Patient | Target::IppList)
        )
    }

    fn fetch(
        &self,
        c: &Criterion,
        needs: Needs,
        within: Option<&PatientSet>,
    ) -> Result<Fetched, QueryError> {
        let Some(target) = target(&c.resource_type) else {
            return Err(QueryError::criterion(
                c.id,
                format!(
                    "the embedded clinical store has no `{}` resources",
                    c.resource_type
                ),
            ));
        };
        let params = parse_search(&c.filter_fhir);
        // Only the patients still in play, when the evaluator says which.
        let restricted;
        let scoped = match within {
            Some(w) => {
                restricted = self.population & w;
                ClinicalSource {
                    index: self.index,
                    population: &restricted,
                    codes: self.codes,
                    documents: self.documents,
                }
            }
            None => ClinicalSource {
                index: self.index,
                population: self.population,
                codes: self.codes,
                documents: self.documents,
            },
        };
        match target {
            Target::Patient | Target::IppList => scoped.patients(c, target, &params, needs),
            Target::Encounter => scoped.encounters(c, &params),
            Target::Fact(resource) => scoped.facts(c, resource, &params, needs),
            Target::Document => {
                let rows: Vec<Row> = scoped
                    .documents
                    .by_criterion
                    .get(&c.id)
                    .into_iter()
                    .flatten()
                    .filter(|r| scoped.population.contains(r.patient))
                    .copied()
                    .collect();
                if needs.rows {
                    Ok(Fetched::Rows(rows))
                } else {
                    Ok(Fetched::Patients(rows.iter().map(|r| r.patient).collect()))
                }
            }
        }
    }
}

impl ClinicalSource<'_> {
    fn patient_row(&self, patient: u32) -> Row {
        Row {
            patient,
            birth_date: self.index.patients.birth.get(patient as usize).copied(),
            ..Row::default()
        }
    }

    fn patients(
        &self,
        c: &Criterion,
        target: Target,
        params: &[SearchParam],
        needs: Needs,
    ) -> Result<Fetched, QueryError> {
        let p = &self.index.patients;
        let reference = self.index.reference_date;
        let mut set = self.population.clone();
        let mut ipp_given = false;
        for param in params {
            if is_active_filter(c, param)? {
                continue;
            }
            if param.modifier.is_some() {
                return Err(unsupported(c, param, "patients"));
            }
            let keep: Box<dyn Fn(u32) -> bool + '_> = match param.name.as_str() {
                "gender" => {
                    let mut female = false;
                    let mut male = false;
                    for v in &param.values {
                        match v.code() {
                            "f" | "female" | "F" => female = true,
                            "m" | "male" | "M" => male = true,
                            "o" | "other" | "u" | "unknown" => {}
                            other => {
                                return Err(QueryError::criterion(
                                    c.id,
                                    format!("`{other}` is not a gender"),
                                ));
                            }
                        }
                    }
                    Box::new(move |i| {
                        let f = p.female[i as usize];
                        (f && female) || (!f && male)
                    })
                }
                "deceased" => {
                    let want: Vec<bool> = param.values.iter().map(|v| v.text == "true").collect();
                    Box::new(move |i| want.contains(&p.death[i as usize].is_some()))
                }
                "birthdate" | "death-date" => {
                    let test = Test {
                        ranges: date_ranges(c, param)?,
                    };
                    let death = param.name == "death-date";
                    Box::new(move |i| {
                        let d = if death {
                            p.death[i as usize]
                        } else {
                            Some(p.birth[i as usize])
                        };
                        d.and_then(|d| d.and_hms_opt(12, 0, 0))
                            .is_some_and(|t| test.holds(t.and_utc().timestamp() as f64))
                    })
                }
                "age-day" | "age-month" => {
                    let test = Test {
                        ranges: number_ranges(c, param)?,
                    };
                    let months = param.name == "age-month";
                    Box::new(move |i| {
                        let birth = p.birth[i as usize];
                        let age = if months {
                            f64::from(whole_months(birth, reference))
                        } else {
                            (reference - birth).num_days() as f64
                        };
                        test.holds(age)
                    })
                }
                "_id" => {
                    let ids: PatientSet = param
                        .values
                        .iter()
                        .filter_map(|v| v.text.parse::<u32>().ok())
                        .collect();
                    Box::new(move |i| ids.contains(i))
                }
                "identifier.value" | "identifier" if target == Target::IppList => {
                    ipp_given = true;
                    let ids: PatientSet = param
                        .values
                        .iter()
                        .filter_map(|v| p.by_ipp.get(v.code()).copied())
                        .collect();
                    Box::new(move |i| ids.contains(i))
                }
                _ => return Err(unsupported(c, param, "patients")),
            };
            set = set.into_iter().filter(|i| keep(*i)).collect();
        }
        if target == Target::IppList && !ipp_given {
            return Err(QueryError::criterion(
                c.id,
                "the IPP list is empty (identifier.value)",
            ));
        }
        if needs.rows {
            Ok(Fetched::Rows(
                set.iter().map(|i| self.patient_row(i)).collect(),
            ))
        } else {
            Ok(Fetched::Patients(set))
        }
    }

    fn encounters(&self, c: &Criterion, params: &[SearchParam]) -> Result<Fetched, QueryError> {
        let e = &self.index.encounters;
        let p = &self.index.patients;
        let mut tests: Vec<(Test, EncounterMeasure)> = Vec::new();
        let mut filters = Vec::new();
        let mut classes: Option<Vec<u8>> = None;
        for param in params {
            if is_active_filter(c, param)? {
                continue;
            }
            if param.modifier.is_some() {
                return Err(unsupported(c, param, "encounters"));
            }
            match param.name.as_str() {
                "class" => {
                    classes = Some(
                        param
                            .values
                            .iter()
                            .filter_map(|v| {
                                e.classes
                                    .iter()
                                    .position(|k| k == v.code())
                                    .map(|k| k as u8)
                            })
                            .collect(),
                    );
                }
                "date" | "period-start" | "start-date" => tests.push((
                    Test {
                        ranges: date_ranges(c, param)?,
                    },
                    |ix, i| ix.encounters.start[i] as f64,
                )),
                "period-end" | "end-date" => tests.push((
                    Test {
                        ranges: date_ranges(c, param)?,
                    },
                    |ix, i| ix.encounters.end[i] as f64,
                )),
                "length" => tests.push((
                    Test {
                        ranges: number_ranges(c, param)?,
                    },
                    |ix, i| (ix.encounters.end[i] - ix.encounters.start[i]) as f64 / 86_400.0,
                )),
                "start-age-visit" => tests.push((
                    Test {
                        ranges: number_ranges(c, param)?,
                    },
                    |ix, i| {
                        let patient = ix.encounters.patient[i] as usize;
                        let birth = ix.patients.birth[patient];
                        DateTime::from_timestamp(ix.encounters.start[i], 0)
                            .map_or(-1.0, |t| (t.date_naive() - birth).num_days() as f64)
                    },
                )),
                "_filter" => filters.push(date_filter(c, param, |n| {
                    ENCOUNTER_FILTER_PARAMS.contains(&n)
                })?),
                _ => return Err(unsupported(c, param, "encounters")),
            }
        }
        let mut rows = Vec::new();
        for i in 1..e.patient.len() {
            let patient = e.patient[i];
            if patient == 0 || !self.population.contains(patient) {
                continue;
            }
            if let Some(cl) = &classes
                && !cl.contains(&e.class[i])
            {
                continue;
            }
            if !tests.iter().all(|(t, f)| t.holds(f(self.index, i))) {
                continue;
            }
            let time_of = |name: &str| match name {
                "period-end" | "end-date" | "encounter.period-end" => Some(e.end[i]),
                _ => Some(e.start[i]),
            };
            if !filters.iter().all(|f| filter_holds(f, time_of)) {
                continue;
            }
            rows.push(Row {
                patient,
                encounter: Some(i as u64),
                episode: Some(u64::from(e.episode[i])),
                at: Some(e.start[i]),
                encounter_start: Some(e.start[i]),
                birth_date: p.birth.get(patient as usize).copied(),
                resource_key: None,
            });
        }
        Ok(Fetched::Rows(rows))
    }

    fn facts(
        &self,
        c: &Criterion,
        resource: FactResource,
        params: &[SearchParam],
        needs: Needs,
    ) -> Result<Fetched, QueryError> {
        let empty = Facts::default();
        let facts = self.index.facts.get(&resource).unwrap_or(&empty);
        let mut codes: Option<Vec<&str>> = None;
        let mut at_tests = Vec::new();
        let mut value_tests = Vec::new();
        let mut filters = Vec::new();
        for param in params {
            if is_active_filter(c, param)? {
                continue;
            }
            if is_code_param(param) {
                // Sorted and distinct: a code selected twice (a category and one of its
                // subdivisions) must not count its rows twice.
                let mut selected: Vec<&str> = param
                    .values
                    .iter()
                    .flat_map(|v| self.codes.codes(resource, v.code()))
                    .collect();
                selected.sort_unstable();
                selected.dedup();
                codes = Some(selected);
                continue;
            }
            if param.modifier.is_some() {
                return Err(unsupported(c, param, resource.fhir_type()));
            }
            match param.name.as_str() {
                name if FACT_DATE_PARAMS.contains(&name) => at_tests.push(Test {
                    ranges: date_ranges(c, param)?,
                }),
                "value-quantity" if resource == FactResource::Observation => {
                    value_tests.push(Test {
                        ranges: number_ranges(c, param)?,
                    })
                }
                "_filter" => filters.push(date_filter(c, param, fact_filter_param)?),
                _ => return Err(unsupported(c, param, resource.fhir_type())),
            }
        }
        let only_codes = at_tests.is_empty() && value_tests.is_empty() && filters.is_empty();
        if !needs.rows && only_codes {
            let mut set = PatientSet::new();
            match &codes {
                Some(codes) => {
                    for code in codes {
                        if let Some(b) = facts.code_patients.get(*code) {
                            set |= b;
                        }
                    }
                }
                None => {
                    for b in facts.code_patients.values() {
                        set |= b;
                    }
                }
            }
            set &= self.population;
            return Ok(Fetched::Patients(set));
        }
        let ranges: Vec<std::ops::Range<usize>> = match &codes {
            Some(codes) => codes
                .iter()
                .filter_map(|code| facts.codes.get(*code).cloned())
                .collect(),
            None => std::iter::once(0..facts.len()).collect(),
        };
        let e = &self.index.encounters;
        let mut rows = Vec::new();
        let mut set = PatientSet::new();
        for range in ranges {
            for i in range {
                let patient = facts.patient[i];
                if !self.population.contains(patient)
                    || !at_tests.iter().all(|t| t.holds(facts.at[i] as f64))
                    || !value_tests
                        .iter()
                        .all(|t| !facts.value[i].is_nan() && t.holds(f64::from(facts.value[i])))
                {
                    continue;
                }
                if !filters.is_empty() {
                    let enc = facts.encounter[i] as usize;
                    let time_of = |name: &str| match name {
                        "encounter.period-start" => e.start.get(enc).copied(),
                        "encounter.period-end" => e.end.get(enc).copied(),
                        _ => Some(facts.at[i]),
                    };
                    if !filters.iter().all(|f| filter_holds(f, time_of)) {
                        continue;
                    }
                }
                if !needs.rows {
                    set.insert(patient);
                    continue;
                }
                let enc = facts.encounter[i] as usize;
                rows.push(Row {
                    patient,
                    encounter: Some(enc as u64),
                    episode: e.episode.get(enc).map(|x| u64::from(*x)),
                    at: Some(facts.at[i]),
                    encounter_start: e.start.get(enc).copied(),
                    birth_date: self.index.patients.birth.get(patient as usize).copied(),
                    resource_key: None,
                });
            }
        }
        if needs.rows {
            Ok(Fetched::Rows(rows))
        } else {
            Ok(Fetched::Patients(set))
        }
    }
}
