//! The parsed cohort query: groups, criteria and temporal constraints, read tolerantly from the
//! stored `serialized_query` (unknown keys are ignored, as upstream's parser does; v1.x documents
//! and the back-end's rewritten form, with integer ids and `"all"`, are both accepted).

use serde_json::Value;

use super::QueryError;

/// A whole query: the source population and the tree of criteria.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortQuery {
    /// `sourcePopulation.caresiteCohortList`, as strings (perimeter cohort ids or cohort group ids).
    pub source_population: Vec<String>,
    /// Top-level `resourceType` (non-Patient cohorts); `None` means Patient.
    pub resource_type: Option<String>,
    /// The root; `None` (or an empty group) means "the whole source population".
    pub root: Option<Node>,
}

impl CohortQuery {
    /// Every criterion of the tree, depth first.
    pub fn criteria(&self) -> Vec<&Criterion> {
        fn walk<'a>(node: &'a Node, out: &mut Vec<&'a Criterion>) {
            match node {
                Node::Criterion(c) => out.push(c),
                Node::Group(g) => g.children.iter().for_each(|n| walk(n, out)),
            }
        }
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            walk(root, &mut out);
        }
        out
    }
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Group(Group),
    Criterion(Criterion),
}

impl Node {
    pub fn id(&self) -> i64 {
        match self {
            Node::Group(g) => g.id,
            Node::Criterion(c) => c.id,
        }
    }

    pub fn inclusive(&self) -> bool {
        match self {
            Node::Group(g) => g.inclusive,
            Node::Criterion(c) => c.inclusive,
        }
    }
}

/// `andGroup`, `orGroup` or `nAmongM`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupKind {
    And,
    Or,
    NAmongM { n: u64, operator: Comparator },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: i64,
    pub kind: GroupKind,
    pub inclusive: bool,
    pub children: Vec<Node>,
    pub temporal_constraints: Vec<TemporalConstraint>,
}

/// A `basicResource` (or `IPPList`) criterion.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    pub id: i64,
    pub inclusive: bool,
    /// As written (`Condition`, `IPPList`, or upstream's Solr names such as `conditionAphp`).
    pub resource_type: String,
    pub filter_fhir: String,
    pub occurrence: Occurrence,
    pub patient_age: Option<PatientAge>,
    pub unique_fields: Vec<UniqueField>,
}

/// A resource type as written, without case or upstream's Solr suffix: `conditionAphp` and
/// `Condition` are both `condition`.
pub fn base_resource_type(resource_type: &str) -> String {
    let lower = resource_type.to_ascii_lowercase();
    match lower.strip_suffix("aphp") {
        Some(base) => base.to_string(),
        None => lower,
    }
}

/// `<`, `<=`, `=`, `>=`, `>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Comparator {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "<" => Self::Lt,
            "<=" | "≤" => Self::Le,
            "=" | "==" => Self::Eq,
            ">=" | "≥" => Self::Ge,
            ">" => Self::Gt,
            _ => return None,
        })
    }

    pub fn holds(self, value: u64, n: u64) -> bool {
        match self {
            Self::Lt => value < n,
            Self::Le => value <= n,
            Self::Eq => value == n,
            Self::Ge => value >= n,
            Self::Gt => value > n,
        }
    }
}

/// How many times a criterion must occur per patient (or per patient and encounter, or day).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occurrence {
    pub n: u64,
    pub operator: Comparator,
    pub same_encounter: bool,
    pub same_day: bool,
}

impl Occurrence {
    /// `>= 1` without grouping: every patient with a row passes, so nothing needs counting.
    pub fn is_trivial(&self) -> bool {
        !self.same_encounter
            && !self.same_day
            && matches!(
                (self.operator, self.n),
                (Comparator::Ge, 1) | (Comparator::Ge, 0) | (Comparator::Gt, 0)
            )
    }
}

impl Default for Occurrence {
    fn default() -> Self {
        Self {
            n: 1,
            operator: Comparator::Ge,
            same_encounter: false,
            same_day: false,
        }
    }
}

/// An age as `years-months-days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age {
    pub years: u32,
    pub months: u32,
    pub days: u32,
}

/// Which date of a row the age is computed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeDate {
    /// The resource's own date (onset, effective, start…).
    Event,
    EncounterStart,
}

/// The patient's age at the event must lie between `min` and `max` (both inclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct PatientAge {
    pub min: Option<Age>,
    pub max: Option<Age>,
    pub date_preference: Vec<AgeDate>,
}

/// "n distinct resources" (upstream's `uniqueFields`, which in its engine counts distinct rows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniqueField {
    pub n: u64,
    pub operator: Comparator,
}

/// Which criteria a temporal constraint binds.
#[derive(Debug, Clone, PartialEq)]
pub enum IdList {
    /// The direct inclusive children of the group and of every AND group below it.
    All,
    Ids(Vec<i64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    SameEncounter,
    DifferentEncounter,
    DirectChronologicalOrdering,
    SameEpisodeOfCare,
    DifferentEpisodeOfCare,
}

/// A duration as the client writes it; months are 30 days and years 365 days, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delay {
    pub years: i64,
    pub months: i64,
    pub days: i64,
    pub hours: i64,
    pub minutes: i64,
}

impl Delay {
    pub fn seconds(&self) -> i64 {
        ((self.years * 365 + self.months * 30 + self.days) * 24 + self.hours) * 3600
            + self.minutes * 60
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TemporalConstraint {
    pub ids: IdList,
    pub kind: ConstraintKind,
    pub min_delay: Option<Delay>,
    pub max_delay: Option<Delay>,
}

/// Parses a stored query. Errors name the node that could not be read.
pub fn parse(text: &str) -> Result<CohortQuery, QueryError> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| QueryError::query(format!("the query is not JSON: {e}")))?;
    let Some(obj) = doc.as_object() else {
        return Err(QueryError::query("the query is not a JSON object"));
    };
    let source_population = obj
        .get("sourcePopulation")
        .and_then(|p| p.get("caresiteCohortList"))
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(id_text).collect())
        .unwrap_or_default();
    let resource_type = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && *t != "Patient")
        .map(str::to_string);
    let root = match obj.get("request") {
        None | Some(Value::Null) => None,
        Some(node) => Some(parse_node(node)?),
    };
    Ok(CohortQuery {
        source_population,
        resource_type,
        root,
    })
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn node_id(v: &Value) -> Option<i64> {
    match v.get("_id")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    match v.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => default,
    }
}

fn count_of(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_node(v: &Value) -> Result<Node, QueryError> {
    let id = node_id(v);
    let kind = v.get("_type").and_then(Value::as_str).unwrap_or_default();
    let at = |message: String| QueryError::Criterion {
        id: id.unwrap_or_default(),
        message,
    };
    let id = id.ok_or_else(|| QueryError::query(format!("a `{kind}` node has no numeric _id")))?;
    let inclusive = flag(v, "isInclusive", true);
    match kind {
        "andGroup" | "orGroup" | "nAmongM" => {
            let kind = match kind {
                "andGroup" => GroupKind::And,
                "orGroup" => GroupKind::Or,
                _ => {
                    let options = v.get("nAmongMOptions").unwrap_or(&Value::Null);
                    let n = count_of(options, "n")
                        .ok_or_else(|| at("nAmongMOptions.n is missing".into()))?;
                    let op = options
                        .get("operator")
                        .and_then(Value::as_str)
                        .unwrap_or(">=");
                    let operator = Comparator::parse(op)
                        .ok_or_else(|| at(format!("unknown nAmongM operator `{op}`")))?;
                    GroupKind::NAmongM { n, operator }
                }
            };
            let children = v
                .get("criteria")
                .and_then(Value::as_array)
                .map(|c| c.iter().map(parse_node).collect::<Result<Vec<_>, _>>())
                .transpose()?
                .unwrap_or_default();
            let temporal_constraints = v
                .get("temporalConstraints")
                .and_then(Value::as_array)
                .map(|c| {
                    c.iter()
                        .map(|t| parse_constraint(t).map_err(at))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default();
            Ok(Node::Group(Group {
                id,
                kind,
                inclusive,
                children,
                temporal_constraints,
            }))
        }
        "basicResource" => {
            let resource_type = v
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if resource_type.is_empty() {
                return Err(at("the criterion has no resourceType".into()));
            }
            let occurrence = match v.get("occurrence") {
                Some(o @ Value::Object(_)) => {
                    let op = o.get("operator").and_then(Value::as_str).unwrap_or(">=");
                    Occurrence {
                        n: count_of(o, "n").unwrap_or(1),
                        operator: Comparator::parse(op)
                            .ok_or_else(|| at(format!("unknown occurrence operator `{op}`")))?,
                        same_encounter: flag(o, "sameEncounter", false),
                        same_day: flag(o, "sameDay", false),
                    }
                }
                _ => Occurrence::default(),
            };
            let patient_age = v
                .get("patientAge")
                .filter(|a| a.is_object())
                .map(|a| parse_patient_age(a).map_err(at))
                .transpose()?;
            let unique_fields = v
                .get("uniqueFields")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .map(|u| {
                            let op = u.get("operator").and_then(Value::as_str).unwrap_or(">=");
                            Ok(UniqueField {
                                n: count_of(u, "n")
                                    .ok_or_else(|| at("uniqueFields.n is missing".into()))?,
                                operator: Comparator::parse(op).ok_or_else(|| {
                                    at(format!("unknown uniqueFields operator `{op}`"))
                                })?,
                            })
                        })
                        .collect::<Result<Vec<_>, QueryError>>()
                })
                .transpose()?
                .unwrap_or_default();
            Ok(Node::Criterion(Criterion {
                id,
                inclusive,
                resource_type,
                filter_fhir: v
                    .get("filterFhir")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                occurrence,
                patient_age,
                unique_fields,
            }))
        }
        other => Err(at(format!("unknown node type `{other}`"))),
    }
}

fn parse_age(s: &str) -> Result<Age, String> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    let number = |i: usize| -> Result<u32, String> {
        parts
            .get(i)
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map_or(Ok(0), |p| {
                p.parse()
                    .map_err(|_| format!("`{s}` is not an age in the form Y-M-D"))
            })
    };
    if parts.len() > 3 {
        return Err(format!("`{s}` is not an age in the form Y-M-D"));
    }
    Ok(Age {
        years: number(0)?,
        months: number(1)?,
        days: number(2)?,
    })
}

fn parse_patient_age(v: &Value) -> Result<PatientAge, String> {
    let age = |key: &str| -> Result<Option<Age>, String> {
        match v.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => parse_age(s).map(Some),
            _ => Ok(None),
        }
    };
    let mut date_preference = Vec::new();
    if let Some(list) = v.get("datePreference").and_then(Value::as_array) {
        for p in list.iter().filter_map(Value::as_str) {
            date_preference.push(match p {
                "encounter_start_date" | "encounter_end_date" => AgeDate::EncounterStart,
                "event_date" | "system_date" => AgeDate::Event,
                other => return Err(format!("unknown patientAge date preference `{other}`")),
            });
        }
    }
    if date_preference.is_empty() {
        date_preference = vec![AgeDate::Event, AgeDate::EncounterStart];
    }
    Ok(PatientAge {
        min: age("minAge")?,
        max: age("maxAge")?,
        date_preference,
    })
}

fn parse_delay(v: Option<&Value>) -> Option<Delay> {
    let v = v.filter(|d| d.is_object())?;
    let part = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    Some(Delay {
        years: part("years"),
        months: part("months"),
        days: part("days"),
        hours: part("hours"),
        minutes: part("minutes"),
    })
}

fn parse_constraint(v: &Value) -> Result<TemporalConstraint, String> {
    let ids = match v.get("idList") {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("all") => IdList::All,
        Some(Value::Array(items)) => {
            if items
                .iter()
                .any(|i| i.as_str().is_some_and(|s| s.eq_ignore_ascii_case("all")))
            {
                IdList::All
            } else {
                IdList::Ids(
                    items
                        .iter()
                        .map(|i| match i {
                            Value::Number(n) => n.as_i64(),
                            Value::String(s) => s.trim().parse().ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or("a temporal constraint's idList holds a non-numeric id")?,
                )
            }
        }
        _ => return Err("a temporal constraint has no idList".into()),
    };
    let kind = match v.get("constraintType").and_then(Value::as_str) {
        Some("sameEncounter") => ConstraintKind::SameEncounter,
        Some("differentEncounter") => ConstraintKind::DifferentEncounter,
        Some("directChronologicalOrdering") => ConstraintKind::DirectChronologicalOrdering,
        Some("sameEpisodeOfCare") => ConstraintKind::SameEpisodeOfCare,
        Some("differentEpisodeOfCare") => ConstraintKind::DifferentEpisodeOfCare,
        Some(other) => return Err(format!("unknown temporal constraint type `{other}`")),
        None => return Err("a temporal constraint has no constraintType".into()),
    };
    Ok(TemporalConstraint {
        ids,
        kind,
        min_delay: parse_delay(v.get("timeRelationMinDuration")),
        max_delay: parse_delay(v.get("timeRelationMaxDuration")),
    })
}
