//! Combines per-criterion rows into the query's patients.
//!
//! Semantics (upstream's engine, checked against its test corpus):
//! - a criterion keeps its rows whose patient age at the event is in `patientAge`, then the
//!   patients whose count of distinct resources satisfies each `uniqueFields` entry, then those
//!   with a group (the patient, or the patient and encounter / day) satisfying `occurrence`;
//! - `andGroup` intersects its inclusive children, `orGroup` unites them, `nAmongM` keeps the
//!   patients found in a number of its inclusive children satisfying `n`; an exclusion child is
//!   subtracted from an AND or nAmongM group, and in an OR group stands for "every patient of the
//!   source population but those";
//! - a group with no inclusive child starts from the whole source population; empty groups are
//!   ignored; an exclusive root is the source population minus the root;
//! - temporal constraints filter the patients of the AND group they bind (see [`super::temporal`]).
//!
//! The data source restricts rows to the source population; the population given here is what an
//! exclusion is complemented against.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{Datelike, Months, NaiveDate};
pub use roaring::RoaringBitmap as PatientSet;

use super::QueryError;
use super::model::{
    AgeDate, CohortQuery, ConstraintKind, Criterion, Group, GroupKind, Node, PatientAge,
};
use super::temporal::{self, Binding};

/// One row a data source returns for a criterion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Row {
    pub patient: u32,
    pub encounter: Option<u64>,
    pub episode: Option<u64>,
    /// The resource's own date, in seconds since the Unix epoch (UTC).
    pub at: Option<i64>,
    /// Its encounter's start, in seconds since the Unix epoch (UTC).
    pub encounter_start: Option<i64>,
    pub birth_date: Option<NaiveDate>,
    /// Rows sharing a key are one resource (the series of one imaging study); `None`: each row is
    /// its own resource.
    pub resource_key: Option<u64>,
}

impl Row {
    /// The row's time for ordering and days: its own date, else its encounter's start.
    pub fn time(&self) -> Option<i64> {
        self.at.or(self.encounter_start)
    }
}

/// What the evaluator needs of a criterion's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Rows are needed (occurrences, ages, unique fields or temporal constraints); otherwise the
    /// set of patients is enough.
    pub rows: bool,
}

/// A criterion's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    Patients(PatientSet),
    Rows(Vec<Row>),
}

/// Where criteria's rows come from.
pub trait CriterionSource {
    /// The rows (or, when `needs.rows` is false, possibly only the patients) matching the
    /// criterion's resource type and filter, within the source population. When `within` is
    /// given, only those patients matter: the source may leave the others out (a speed-up).
    fn fetch(
        &self,
        criterion: &Criterion,
        needs: Needs,
        within: Option<&PatientSet>,
    ) -> Result<Fetched, QueryError>;

    /// Whether this source's rows of `resource_type` carry what a temporal constraint of `kind`
    /// compares; a criterion whose rows do not is left out of the constraint. Upstream's resource
    /// configuration unless the source knows better.
    fn carries(&self, resource_type: &str, kind: ConstraintKind) -> bool {
        temporal::upstream_carries(resource_type, kind)
    }
}

/// The patients of a query, with every node's stage (stage details).
///
/// A node's *stage* is, as upstream reports it (`QueryBuilderGroup.updateContext`), the patients
/// matching that node alone (before its parent applies it) or, for an excluded node, the source
/// population minus those.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    pub patients: PatientSet,
    /// Node `_id` → the size of its stage.
    pub stage_counts: BTreeMap<i64, u64>,
    /// Node `_id` → the patients of its stage who are also in the final result: the numerator of
    /// upstream's per-stage ratio (`CountQuery.computeRatio`).
    pub stage_in_result: BTreeMap<i64, u64>,
}

impl Evaluation {
    /// Node `_id` → the share of the final result its stage holds (empty when nothing was
    /// selected: no ratio of an empty result).
    pub fn stage_ratios(&self) -> BTreeMap<i64, f64> {
        let total = self.patients.len();
        if total == 0 {
            return BTreeMap::new();
        }
        self.stage_in_result
            .iter()
            .map(|(id, n)| (*id, *n as f64 / total as f64))
            .collect()
    }
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvalOptions {
    /// Count every node on its own (stage details). Otherwise the criteria of an AND group that
    /// need rows are only fetched for the patients its other children leave, which is much
    /// faster, and `stage_counts` stays empty.
    pub stage_counts: bool,
}

/// Evaluates a parsed query against a source; `population` is the source population's patients.
pub fn evaluate(
    query: &CohortQuery,
    population: &PatientSet,
    source: &dyn CriterionSource,
) -> Result<Evaluation, QueryError> {
    evaluate_with(
        query,
        population,
        source,
        EvalOptions { stage_counts: true },
    )
}

/// [`evaluate`] with options.
pub fn evaluate_with(
    query: &CohortQuery,
    population: &PatientSet,
    source: &dyn CriterionSource,
    options: EvalOptions,
) -> Result<Evaluation, QueryError> {
    let Some(root) = query.root.as_ref().filter(|r| !is_empty(r)) else {
        return Ok(Evaluation {
            patients: population.clone(),
            ..Evaluation::default()
        });
    };
    let plan = temporal::bind(root, &|t, k| source.carries(t, k))?;
    let mut run = Run {
        population,
        source,
        rows_needed: plan.rows_needed,
        group_kinds: plan.group_kinds,
        bindings: plan.bindings,
        rows: HashMap::new(),
        stages: BTreeMap::new(),
        options,
    };
    let result = run.node(root, None)?;
    let patients = if root.inclusive() {
        result
    } else {
        population - &result
    };
    let stage_counts = run.stages.iter().map(|(id, s)| (*id, s.len())).collect();
    let stage_in_result = run
        .stages
        .iter()
        .map(|(id, s)| (*id, s.intersection_len(&patients)))
        .collect();
    Ok(Evaluation {
        patients,
        stage_counts,
        stage_in_result,
    })
}

/// A group with no criterion anywhere below it.
fn is_empty(node: &Node) -> bool {
    match node {
        Node::Criterion(_) => false,
        Node::Group(g) => g.children.iter().all(is_empty),
    }
}

struct Run<'a> {
    population: &'a PatientSet,
    source: &'a dyn CriterionSource,
    bindings: HashMap<i64, Vec<Binding>>,
    /// Nodes whose rows temporal constraints read (see [`temporal::Plan`]).
    rows_needed: HashSet<i64>,
    /// Participating groups → the kind of constraint they take part in.
    group_kinds: HashMap<i64, ConstraintKind>,
    /// Their rows (a criterion's after its own filters, a group's of its inclusive children for
    /// its patients), sorted by patient.
    rows: HashMap<i64, Vec<Row>>,
    /// Node `_id` → its stage (see [`Evaluation`]), when counting stages.
    stages: BTreeMap<i64, PatientSet>,
    options: EvalOptions,
}

impl Run<'_> {
    /// A node's patients; with `within`, only those among `within` are guaranteed.
    fn node(&mut self, node: &Node, within: Option<&PatientSet>) -> Result<PatientSet, QueryError> {
        let set = match node {
            Node::Criterion(c) => self.criterion(c, within)?,
            Node::Group(g) => {
                let set = self.group(g, within)?;
                if self.rows_needed.contains(&g.id) {
                    self.keep_group_rows(g, &set);
                }
                set
            }
        };
        if self.options.stage_counts {
            let stage = if node.inclusive() {
                set.clone()
            } else {
                self.population - &set
            };
            self.stages.insert(node.id(), stage);
        }
        Ok(set)
    }

    /// A participating group's rows (see [`temporal::group_rows`]).
    fn keep_group_rows(&mut self, g: &Group, set: &PatientSet) {
        let kind = self.group_kinds.get(&g.id).copied();
        let source = self.source;
        let carries = |t: &str, k: ConstraintKind| source.carries(t, k);
        let children: Vec<(&[Row], bool)> = g
            .children
            .iter()
            .filter(|c| c.inclusive())
            .filter_map(|c| {
                let rows = self.rows.get(&c.id())?;
                let carrying = kind.is_some_and(|k| temporal::node_carries(c, k, &carries));
                Some((rows.as_slice(), carrying))
            })
            .collect();
        let rows = temporal::group_rows(g, kind, &children, set);
        self.rows.insert(g.id, rows);
    }

    fn needs_rows(&self, c: &Criterion) -> bool {
        self.rows_needed.contains(&c.id)
            || !c.occurrence.is_trivial()
            || c.patient_age.is_some()
            || !c.unique_fields.is_empty()
    }

    /// The population, or its part among `within`.
    fn universe(&self, within: Option<&PatientSet>) -> PatientSet {
        match within {
            Some(w) => self.population & w,
            None => self.population.clone(),
        }
    }

    /// An AND group's inclusive and exclusive children, restricted as they go: criteria that
    /// need rows come last and are fetched only for the patients still in play.
    fn and_children(
        &mut self,
        g: &Group,
        within: Option<&PatientSet>,
    ) -> Result<PatientSet, QueryError> {
        let children: Vec<&Node> = g.children.iter().filter(|c| !is_empty(c)).collect();
        let heavy = |n: &Node| matches!(n, Node::Criterion(c) if self.needs_rows(c));
        let (last, first): (Vec<&Node>, Vec<&Node>) = children
            .iter()
            .filter(|c| c.inclusive())
            .partition(|c| heavy(c));
        let mut acc: Option<PatientSet> = None;
        for child in first.into_iter().chain(last) {
            let set = self.node(child, acc.as_ref().or(within))?;
            acc = Some(match acc {
                Some(a) => a & set,
                None => set,
            });
        }
        let mut set = acc.unwrap_or_else(|| self.universe(within));
        for child in children.iter().filter(|c| !c.inclusive()) {
            let excluded = self.node(child, Some(&set))?;
            set -= excluded;
        }
        Ok(set)
    }

    /// A group's patients; with `within` (never when counting stages), only those among
    /// `within` are guaranteed.
    fn group(&mut self, g: &Group, within: Option<&PatientSet>) -> Result<PatientSet, QueryError> {
        if g.kind == GroupKind::And && !self.options.stage_counts {
            let mut set = self.and_children(g, within)?;
            if let Some(bindings) = self.bindings.get(&g.id) {
                for binding in bindings {
                    set = temporal::apply(binding, &set, &self.rows)?;
                }
            }
            return Ok(set);
        }
        let mut inclusive = Vec::new();
        let mut exclusive = Vec::new();
        let universe = self.universe(within);
        for child in g.children.iter().filter(|c| !is_empty(c)) {
            let set = self.node(child, within)?;
            if child.inclusive() {
                inclusive.push(set);
            } else {
                exclusive.push(set);
            }
        }
        let mut set = match g.kind {
            GroupKind::And => {
                let mut it = inclusive.into_iter();
                let mut acc = it.next().unwrap_or_else(|| universe.clone());
                for s in it {
                    acc &= s;
                }
                acc
            }
            GroupKind::Or => {
                let mut acc = PatientSet::new();
                for s in inclusive {
                    acc |= s;
                }
                for s in &exclusive {
                    acc |= &universe - s;
                }
                return Ok(acc);
            }
            GroupKind::NAmongM { n, operator } => {
                if inclusive.is_empty() {
                    universe
                } else {
                    let mut matched: BTreeMap<u32, u64> = BTreeMap::new();
                    for s in &inclusive {
                        for p in s {
                            *matched.entry(p).or_default() += 1;
                        }
                    }
                    matched
                        .into_iter()
                        .filter(|(_, k)| operator.holds(*k, n))
                        .map(|(p, _)| p)
                        .collect()
                }
            }
        };
        for s in &exclusive {
            set -= s;
        }
        if let Some(bindings) = self.bindings.get(&g.id) {
            for binding in bindings {
                set = temporal::apply(binding, &set, &self.rows)?;
            }
        }
        Ok(set)
    }

    fn criterion(
        &mut self,
        c: &Criterion,
        within: Option<&PatientSet>,
    ) -> Result<PatientSet, QueryError> {
        let keep_rows = self.rows_needed.contains(&c.id);
        let needs = Needs {
            rows: self.needs_rows(c),
        };
        let mut rows = match self.source.fetch(c, needs, within)? {
            Fetched::Patients(set) if !needs.rows => return Ok(set),
            Fetched::Patients(_) => {
                return Err(QueryError::criterion(
                    c.id,
                    "the data source gave patients where rows were needed",
                ));
            }
            Fetched::Rows(rows) => rows,
        };
        if let Some(age) = &c.patient_age {
            rows.retain(|r| age_matches(age, r));
        }
        rows.sort_by_key(|r| r.patient);
        let mut kept = PatientSet::new();
        for chunk in rows.chunk_by(|a, b| a.patient == b.patient) {
            let resources = distinct_resources(chunk);
            let unique_ok = c
                .unique_fields
                .iter()
                .all(|u| u.operator.holds(resources, u.n));
            if unique_ok && occurrence_holds(c, chunk) {
                kept.insert(chunk[0].patient);
            }
        }
        if keep_rows {
            rows.retain(|r| kept.contains(r.patient));
            self.rows.insert(c.id, rows);
        }
        Ok(kept)
    }
}

/// Resources among a patient's rows: distinct keys, keyless rows counting one each.
fn distinct_resources(rows: &[Row]) -> u64 {
    let keyless = rows.iter().filter(|r| r.resource_key.is_none()).count() as u64;
    let keys: HashSet<u64> = rows.iter().filter_map(|r| r.resource_key).collect();
    keyless + keys.len() as u64
}

/// Whether one of the patient's groups (all rows, or per encounter, or per day) has a number of
/// resources satisfying the criterion's occurrence.
fn occurrence_holds(c: &Criterion, rows: &[Row]) -> bool {
    let o = c.occurrence;
    if o.is_trivial() {
        return true;
    }
    if !o.same_encounter && !o.same_day {
        return o.operator.holds(distinct_resources(rows), o.n);
    }
    let mut groups: BTreeMap<(Option<u64>, Option<i64>), Vec<Row>> = BTreeMap::new();
    for r in rows {
        let encounter = if o.same_encounter {
            match r.encounter {
                Some(e) => Some(e),
                None => continue,
            }
        } else {
            None
        };
        let day = if o.same_day {
            match r.time() {
                Some(t) => Some(t.div_euclid(86_400)),
                None => continue,
            }
        } else {
            None
        };
        groups.entry((encounter, day)).or_default().push(*r);
    }
    groups
        .values()
        .any(|g| o.operator.holds(distinct_resources(g), o.n))
}

fn add_age(birth: NaiveDate, years: u32, months: u32, days: u32) -> Option<NaiveDate> {
    birth
        .checked_add_months(Months::new(years * 12 + months))?
        .checked_add_days(chrono::Days::new(u64::from(days)))
}

/// The row's patient was between the minimum and maximum age (calendar arithmetic, both bounds
/// inclusive) on the first available date of the preference list.
fn age_matches(age: &PatientAge, row: &Row) -> bool {
    let Some(birth) = row.birth_date else {
        return false;
    };
    let Some(at) = age.date_preference.iter().find_map(|p| match p {
        AgeDate::Event => row.at,
        AgeDate::EncounterStart => row.encounter_start,
    }) else {
        return false;
    };
    let Some(day) = chrono::DateTime::from_timestamp(at, 0).map(|d| d.date_naive()) else {
        return false;
    };
    if let Some(min) = age.min
        && add_age(birth, min.years, min.months, min.days).is_none_or(|d| day < d)
    {
        return false;
    }
    if let Some(max) = age.max
        && add_age(birth, max.years, max.months, max.days).is_some_and(|d| day > d)
    {
        return false;
    }
    // A birth date after the event cannot give an age.
    day.num_days_from_ce() >= birth.num_days_from_ce()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort_query::parse;
    use std::collections::BTreeMap;

    /// Rows per criterion id.
    struct Fixture(BTreeMap<i64, Vec<Row>>);

    impl CriterionSource for Fixture {
        fn fetch(
            &self,
            c: &Criterion,
            _: Needs,
            _: Option<&PatientSet>,
        ) -> Result<Fetched, QueryError> {
            Ok(Fetched::Rows(
                self.0.get(&c.id).cloned().unwrap_or_default(),
            ))
        }
    }

    fn row(patient: u32, encounter: u64, at: i64) -> Row {
        Row {
            patient,
            encounter: Some(encounter),
            episode: Some(encounter / 10),
            at: Some(at),
            ..Row::default()
        }
    }

    fn run(query: serde_json::Value, rows: Vec<(i64, Vec<Row>)>) -> Vec<u32> {
        let q = parse(&query.to_string()).unwrap();
        let population: PatientSet = (1..=10).collect();
        let fixture = Fixture(rows.into_iter().collect());
        let exact = evaluate(&q, &population, &fixture).unwrap().patients;
        // The restricted evaluation selects the same patients.
        let fast = evaluate_with(&q, &population, &fixture, EvalOptions::default())
            .unwrap()
            .patients;
        assert_eq!(exact, fast);
        exact.iter().collect()
    }

    fn c(id: i64) -> serde_json::Value {
        serde_json::json!({"_type": "basicResource", "_id": id, "isInclusive": true, "resourceType": "Condition"})
    }

    fn root(kind: &str, inclusive: bool, criteria: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({"sourcePopulation": {"caresiteCohortList": ["1"]},
            "request": {"_type": kind, "_id": 0, "isInclusive": inclusive, "criteria": criteria}})
    }

    #[test]
    fn an_excluded_root_is_the_population_minus_the_root() {
        let rows = vec![(1, vec![row(2, 1, 0), row(3, 2, 0)])];
        assert_eq!(
            run(root("andGroup", false, vec![c(1)]), rows),
            [1, 4, 5, 6, 7, 8, 9, 10]
        );
    }

    #[test]
    fn unique_fields_count_distinct_resources_and_keys_merge_rows() {
        let mut q = root("andGroup", true, vec![c(1)]);
        q["request"]["criteria"][0]["uniqueFields"] =
            serde_json::json!([{"n": 2, "operator": ">="}]);
        let keyed = |p, k| Row {
            resource_key: Some(k),
            ..row(p, 1, 0)
        };
        // Patient 1: two rows of one resource; patient 2: two resources.
        let rows = vec![(1, vec![keyed(1, 7), keyed(1, 7), keyed(2, 8), keyed(2, 9)])];
        assert_eq!(run(q, rows), [2]);
    }

    #[test]
    fn different_encounters_need_a_pair_in_two_encounters() {
        let mut q = root("andGroup", true, vec![c(1), c(2)]);
        q["request"]["temporalConstraints"] =
            serde_json::json!([{"idList": [1, 2], "constraintType": "differentEncounter"}]);
        let rows = vec![
            (
                1,
                vec![row(1, 1, 0), row(2, 1, 0), row(3, 1, 0), row(3, 2, 0)],
            ),
            (2, vec![row(1, 1, 0), row(2, 2, 0), row(3, 1, 0)]),
        ];
        // 1: only encounter 1 on both sides; 2: 1 vs 2; 3: encounter 2 vs 1.
        assert_eq!(run(q, rows), [2, 3]);
    }

    #[test]
    fn chronological_order_is_strict_without_a_minimum_and_chains_three_criteria() {
        let mut q = root("andGroup", true, vec![c(1), c(2), c(3)]);
        q["request"]["temporalConstraints"] = serde_json::json!([{"idList": [1, 2, 3],
            "constraintType": "directChronologicalOrdering", "timeRelationMaxDuration": {"hours": 1}}]);
        let rows = vec![
            (1, vec![row(1, 1, 0), row(2, 1, 0), row(3, 1, 0)]),
            // 1: same instant (not after); 2: 30 min then 30 min; 3: the last step takes too long.
            (2, vec![row(1, 1, 0), row(2, 1, 1800), row(3, 1, 3600)]),
            (3, vec![row(1, 1, 60), row(2, 1, 3600), row(3, 1, 7300)]),
        ];
        assert_eq!(run(q, rows), [2]);
    }

    #[test]
    fn empty_groups_are_ignored_and_n_among_m_subtracts_exclusions() {
        let mut n_among_m = serde_json::json!({"_type": "nAmongM", "_id": -1, "isInclusive": true,
            "nAmongMOptions": {"n": 2, "operator": ">="}, "criteria": [c(1), c(2), c(3)]});
        let mut excluded = c(4);
        excluded["isInclusive"] = serde_json::json!(false);
        n_among_m["criteria"].as_array_mut().unwrap().push(excluded);
        let empty =
            serde_json::json!({"_type": "orGroup", "_id": -2, "isInclusive": true, "criteria": []});
        let q = root("orGroup", true, vec![n_among_m, empty]);
        let rows = vec![
            (1, vec![row(1, 1, 0), row(2, 1, 0), row(3, 1, 0)]),
            (2, vec![row(1, 1, 0), row(3, 1, 0)]),
            (3, vec![row(2, 1, 0), row(4, 1, 0)]),
            (4, vec![row(3, 1, 0)]),
        ];
        // 1 and 2 match two of three, 3 too but is excluded, 4 matches one.
        assert_eq!(run(q, rows), [1, 2]);
    }

    /// A criterion of another resource type.
    fn typed(id: i64, resource_type: &str) -> serde_json::Value {
        let mut criterion = c(id);
        criterion["resourceType"] = serde_json::json!(resource_type);
        criterion
    }

    fn group(kind: &str, id: i64, criteria: Vec<serde_json::Value>) -> serde_json::Value {
        serde_json::json!({"_type": kind, "_id": id, "isInclusive": true, "criteria": criteria})
    }

    fn with_constraint(
        mut q: serde_json::Value,
        ids: serde_json::Value,
        kind: &str,
    ) -> serde_json::Value {
        q["request"]["temporalConstraints"] =
            serde_json::json!([{"idList": ids, "constraintType": kind}]);
        q
    }

    fn episode(patient: u32, episode: u64) -> Row {
        Row {
            patient,
            episode: Some(episode),
            ..Row::default()
        }
    }

    /// A row with a patient and nothing else (a patient-level resource).
    fn patient(patient: u32) -> Row {
        Row {
            patient,
            ..Row::default()
        }
    }

    fn visit(patient: u32, encounter: u64) -> Row {
        Row {
            patient,
            encounter: Some(encounter),
            ..Row::default()
        }
    }

    #[test]
    fn an_or_group_is_one_participant_and_resources_without_episodes_are_left_out() {
        // Upstream's "same episode of care over all": an OR group, a questionnaire response and a
        // composition (which carries no episode: it is only intersected).
        let either = group(
            "orGroup",
            -1,
            vec![
                typed(3, "compositionAphp"),
                typed(4, "questionnaireResponseAphp"),
            ],
        );
        let q = with_constraint(
            root(
                "andGroup",
                true,
                vec![
                    either,
                    typed(1, "questionnaireResponseAphp"),
                    typed(2, "compositionAphp"),
                ],
            ),
            serde_json::json!("all"),
            "sameEpisodeOfCare",
        );
        let rows = vec![
            (
                1,
                vec![episode(1, 1), episode(2, 2), episode(3, 3), episode(4, 4)],
            ),
            // Episodes a composition does not carry: never compared.
            (2, vec![episode(1, 9), episode(2, 9), episode(3, 9)]),
            (3, vec![episode(1, 1), episode(3, 5)]),
            (4, vec![episode(2, 2), episode(4, 7)]),
        ];
        // 1 and 2 share an episode with the OR group's rows, 3 and 4 do not; 4 lacks criterion 2.
        assert_eq!(run(q, rows), [1, 2]);
    }

    #[test]
    fn an_all_constraint_applies_in_every_and_group_to_its_own_children() {
        // The AND group under the OR group applies the root's constraint to its own children.
        let both = group("andGroup", -2, vec![c(2), c(3)]);
        let q = with_constraint(
            root(
                "andGroup",
                true,
                vec![c(1), group("orGroup", -1, vec![both, c(4)])],
            ),
            serde_json::json!("all"),
            "sameEncounter",
        );
        let rows = vec![
            (1, vec![visit(1, 1), visit(2, 2), visit(3, 3)]),
            (2, vec![visit(1, 1), visit(2, 8), visit(3, 3)]),
            (3, vec![visit(1, 1), visit(2, 9), visit(3, 4)]),
            (4, vec![visit(3, 3)]),
        ];
        // 1: one encounter for all; 2: criteria 2 and 3 apart, so not in the OR group; 3: the
        // same, but criterion 4 shares criterion 1's encounter.
        assert_eq!(run(q, rows), [1, 3]);
    }

    #[test]
    fn an_and_group_s_encounters_come_from_its_children_that_have_one() {
        let q = with_constraint(
            root(
                "andGroup",
                true,
                vec![c(1), group("andGroup", -1, vec![typed(2, "Patient"), c(3)])],
            ),
            serde_json::json!("all"),
            "sameEncounter",
        );
        let rows = vec![
            (1, vec![visit(1, 1), visit(2, 2)]),
            (2, vec![patient(1), patient(2)]),
            (3, vec![visit(1, 1), visit(2, 9)]),
        ];
        // The patient criterion has no encounter: it narrows the group, not its encounters.
        assert_eq!(run(q, rows), [1]);
    }

    #[test]
    fn explicit_ids_may_name_a_group_and_patients_carry_no_date() {
        let q = with_constraint(
            root(
                "andGroup",
                true,
                vec![
                    typed(1, "Patient"),
                    c(2),
                    group("orGroup", -1, vec![c(3), c(4)]),
                ],
            ),
            serde_json::json!([1, 2, -1]),
            "directChronologicalOrdering",
        );
        let at = |patient, at| Row {
            patient,
            at: Some(at),
            ..Row::default()
        };
        let rows = vec![
            // A patient criterion has no date: it is intersected, not ordered.
            (1, vec![patient(1), patient(2)]),
            (2, vec![at(1, 100), at(2, 100), at(3, 100)]),
            (3, vec![at(1, 200)]),
            (4, vec![at(2, 50), at(3, 300)]),
        ];
        // 1: criterion 3 comes after; 2: criterion 4 comes before; 3: not a patient of 1.
        assert_eq!(run(q, rows), [1]);
    }

    #[test]
    fn stages_name_every_node_and_an_excluded_stage_is_the_population_minus_it() {
        let mut excluded = c(3);
        excluded["isInclusive"] = serde_json::json!(false);
        let either = serde_json::json!({"_type": "orGroup", "_id": -1, "isInclusive": true,
            "criteria": [c(1), c(2)]});
        let q = parse(&root("andGroup", true, vec![either, excluded]).to_string()).unwrap();
        let rows = vec![
            (1, vec![row(1, 1, 0), row(2, 1, 0)]),
            (2, vec![row(5, 1, 0), row(6, 1, 0)]),
            (3, vec![row(2, 1, 0)]),
        ];
        let e = evaluate(
            &q,
            &(1..=10).collect(),
            &Fixture(rows.into_iter().collect()),
        )
        .unwrap();
        assert_eq!(e.patients.iter().collect::<Vec<_>>(), [1, 5, 6]);
        // Criterion 3 is excluded: its stage is the 9 patients of the population without it.
        assert_eq!(
            e.stage_counts,
            BTreeMap::from([(-1, 4), (0, 3), (1, 2), (2, 2), (3, 9)])
        );
        // Ratios count the stage's patients that are in the final result.
        assert_eq!(
            e.stage_in_result,
            BTreeMap::from([(-1, 3), (0, 3), (1, 1), (2, 2), (3, 3)])
        );
        assert_eq!(e.stage_ratios()[&1], 1.0 / 3.0);
        assert_eq!(e.stage_ratios()[&3], 1.0);
    }

    #[test]
    fn unreadable_queries_name_the_node() {
        let bad_operator = serde_json::json!({"request": {"_type": "andGroup", "_id": 0, "criteria": [
            {"_type": "basicResource", "_id": 5, "resourceType": "Condition", "occurrence": {"n": 1, "operator": "≤x≥"}}]}});
        let err = parse(&bad_operator.to_string()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "criterion 5: unknown occurrence operator `≤x≥`"
        );
        let missing = serde_json::json!({"request": {"_type": "andGroup", "_id": 0, "temporalConstraints": [
            {"idList": [1, 9], "constraintType": "sameEncounter"}], "criteria": [
            {"_type": "basicResource", "_id": 1, "resourceType": "Condition"}]}});
        let q = parse(&missing.to_string()).unwrap();
        let err = evaluate(&q, &PatientSet::new(), &Fixture(BTreeMap::new())).unwrap_err();
        assert!(err.to_string().contains("criterion 9"), "{err}");
    }
}
