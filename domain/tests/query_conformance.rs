//! Upstream QueryExecutor conformance: every case of `../shared/conformance/query-executor/` (or
//! `$COHORT360_CONFORMANCE_DIR`) — every folder holding a `request.json`, at any depth (upstream
//! keeps some under `edgeCases/<name>/`) — must give upstream's expected patients, and its
//! `stageCounts.csv` stage counts when it has one. Skipped, saying so, when
//! the corpus is absent: the project's own tests do not depend on it.
//!
//! How the corpus maps onto our evaluator: `resource_<id>.csv` holds the rows of criterion `<id>`.
//! Upstream's parser also adds criteria of its own, numbered after the query's: first a copy of
//! every excluded criterion of an OR group (in document order), then the "all patients" criteria
//! that complements are taken against. Their files are read in that order: the copies stand for
//! the excluded criteria, the union of the others is the source population.

#![expect(
    clippy::print_stderr,
    reason = "the test says when it skips and how many cases ran"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate};
use domain::cohort_query::model::{GroupKind, Node};
use domain::cohort_query::{
    Criterion, CriterionSource, EvalOptions, Fetched, Needs, PatientSet, QueryError, Row, evaluate,
    evaluate_with, parse,
};

fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("COHORT360_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/query-executor")
        });
    dir.is_dir().then_some(dir)
}

/// One CSV as (header, rows of fields).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn read_table(path: &Path) -> Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let header = lines
        .next()
        .map(|h| h.split(';').map(str::to_string).collect())
        .unwrap_or_default();
    let rows = lines
        .map(|l| l.split(';').map(str::to_string).collect())
        .collect();
    Table { header, rows }
}

impl Table {
    fn column(&self, names: &[&str]) -> Option<usize> {
        names
            .iter()
            .find_map(|n| self.header.iter().position(|h| h == n))
    }
}

fn seconds(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad date {text}: {e}"))
        .timestamp()
}

fn to_rows(table: &Table) -> Vec<Row> {
    let patient = table
        .column(&["_subject", "patient", "id"])
        .expect("a patient column");
    let visit = table.column(&["_visit", "encounter"]);
    let event = table.column(&[
        "onsetDateTime",
        "effectiveDateTime",
        "performedDateTime",
        "authoredOn",
        "date",
    ]);
    let encounter_start = table.column(&["encounter_start_date", "_ref.encounter.period.start"]);
    let birth = table.column(&["patient_birthdate"]);
    let key = table.column(&["studyId"]);
    let episode = table.column(&["episodeOfCare", "_ref.episodeOfCare"]);
    let field = |row: &Vec<String>, i: Option<usize>| {
        i.and_then(|i| row.get(i))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    table
        .rows
        .iter()
        .map(|r| Row {
            patient: field(r, Some(patient)).unwrap().parse().unwrap(),
            encounter: field(r, visit).map(|v| v.parse().unwrap()),
            episode: field(r, episode).map(|v| v.parse().unwrap()),
            at: field(r, event).map(|v| seconds(&v)),
            encounter_start: field(r, encounter_start).map(|v| seconds(&v)),
            birth_date: field(r, birth).map(|v| {
                DateTime::parse_from_rfc3339(&v)
                    .map(|d| d.date_naive())
                    .unwrap_or_else(|_| NaiveDate::parse_from_str(&v, "%Y-%m-%d").unwrap())
            }),
            resource_key: field(r, key).map(|v| v.parse().unwrap()),
        })
        .collect()
}

/// Rows per criterion id, as the corpus gives them.
struct CorpusSource {
    rows: BTreeMap<i64, Vec<Row>>,
}

impl CriterionSource for CorpusSource {
    fn fetch(
        &self,
        c: &Criterion,
        _needs: Needs,
        _within: Option<&PatientSet>,
    ) -> Result<Fetched, QueryError> {
        Ok(Fetched::Rows(
            self.rows.get(&c.id).cloned().unwrap_or_default(),
        ))
    }
}

fn criterion_ids(node: &Node, out: &mut BTreeSet<i64>) {
    match node {
        Node::Criterion(c) => {
            out.insert(c.id);
        }
        Node::Group(g) => g.children.iter().for_each(|c| criterion_ids(c, out)),
    }
}

/// Excluded criteria directly under OR groups, in document order.
fn or_exclusions(node: &Node, out: &mut Vec<i64>) {
    if let Node::Group(g) = node {
        for child in &g.children {
            if let (GroupKind::Or, Node::Criterion(c)) = (g.kind, child)
                && !c.inclusive
            {
                out.push(c.id);
            }
            or_exclusions(child, out);
        }
    }
}

type Organizations = BTreeMap<u32, BTreeSet<u32>>;

/// The two readings of a stage upstream reports, for the stages a `stageCounts.csv` names.
#[derive(Debug)]
struct ComputedStages {
    /// With `details: all`: the stage's own size (an excluded node: the population minus it).
    counts: BTreeMap<i64, u64>,
    /// With `details: ratio`: the stage's patients who are also in the final result.
    in_result: BTreeMap<i64, u64>,
}

struct Outcome {
    name: String,
    expected: BTreeSet<u32>,
    got: BTreeSet<u32>,
    /// (expected, computed) organizations per patient, when the case has them.
    organizations: Option<(Organizations, Organizations)>,
    /// Expected per-stage counts, when the case has `stageCounts.csv`, and the computed ones.
    stages: Option<(BTreeMap<i64, u64>, ComputedStages)>,
}

fn run_case(corpus: &Path, dir: &Path) -> Outcome {
    let name = dir
        .strip_prefix(corpus)
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(dir.join("request.json")).unwrap();
    let query = parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let root = query.root.as_ref().expect("a request");
    let mut ids = BTreeSet::new();
    criterion_ids(root, &mut ids);
    let mut copies = Vec::new();
    or_exclusions(root, &mut copies);

    let mut tables: BTreeMap<i64, Table> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(id) = file
            .strip_prefix("resource_")
            .and_then(|f| f.strip_suffix(".csv"))
        {
            tables.insert(id.parse().unwrap(), read_table(&path));
        }
    }
    let mut rows: BTreeMap<i64, Vec<Row>> = tables
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(id, t)| (*id, to_rows(t)))
        .collect();
    let mut added = tables.keys().filter(|id| !ids.contains(id)).copied();
    for excluded in copies {
        if let Some(copy) = added.next() {
            rows.insert(excluded, to_rows(&tables[&copy]));
        }
    }
    let population: PatientSet = added
        .flat_map(|id| to_rows(&tables[&id]))
        .map(|r| r.patient)
        .collect();

    let source = CorpusSource { rows };
    let evaluation =
        evaluate(&query, &population, &source).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got: BTreeSet<u32> = evaluation.patients.iter().collect();
    // The restricted (fast) evaluation must select the same patients.
    let fast = evaluate_with(&query, &population, &source, EvalOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        fast.patients, evaluation.patients,
        "{name}: the fast path differs"
    );

    let expected_table = read_table(&dir.join("expected.csv"));
    let subject = expected_table.column(&["subject_id"]).unwrap();
    let expected = expected_table
        .rows
        .iter()
        .map(|r| r[subject].trim().parse().unwrap())
        .collect();
    // Per-organization details: the organizations of the selected patients' rows.
    let organizations = expected_table.column(&["organization_ids"]).map(|col| {
        let want = expected_table
            .rows
            .iter()
            .map(|r| {
                (
                    r[subject].trim().parse().unwrap(),
                    r[col]
                        .split(',')
                        .map(|o| o.trim().parse().unwrap())
                        .collect(),
                )
            })
            .collect();
        let mut have: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for table in tables.values() {
            let (Some(org), Some(patient)) = (
                table.column(&["_list.organization"]),
                table.column(&["_subject", "patient", "id"]),
            ) else {
                continue;
            };
            for r in &table.rows {
                let p: u32 = r[patient].trim().parse().unwrap();
                if got.contains(&p) {
                    have.entry(p)
                        .or_default()
                        .extend(r[org].split(',').map(|o| o.trim().parse::<u32>().unwrap()));
                }
            }
        }
        (want, have)
    });
    // `stageCounts.csv`: per stage, what upstream's test counted in the details mode it ran the
    // case with (its test picks the mode per case): the stage's size, or its patients also in
    // the final result (the numerator of the per-stage ratio).
    let stage_file = dir.join("stageCounts.csv");
    let stages = stage_file.is_file().then(|| {
        let table = read_table(&stage_file);
        let (stage, count) = (
            table.column(&["stage"]).expect("a stage column"),
            table.column(&["count"]).expect("a count column"),
        );
        let want: BTreeMap<i64, u64> = table
            .rows
            .iter()
            .map(|r| {
                (
                    r[stage].trim().parse().unwrap(),
                    r[count].trim().parse().unwrap(),
                )
            })
            .collect();
        let named = |all: &BTreeMap<i64, u64>| {
            want.keys()
                .filter_map(|id| all.get(id).map(|n| (*id, *n)))
                .collect()
        };
        let have = ComputedStages {
            counts: named(&evaluation.stage_counts),
            in_result: named(&evaluation.stage_in_result),
        };
        (want, have)
    });
    Outcome {
        name,
        expected,
        got,
        organizations,
        stages,
    }
}

/// Every folder under `dir` (at any depth) holding a `request.json`: one case each.
fn case_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if dir.join("request.json").is_file() {
        out.push(dir.to_path_buf());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    for child in children {
        case_dirs(&child, out);
    }
}

/// Runs every case under `dir`: `(cases run, what differs)`.
fn run_corpus(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut cases = Vec::new();
    case_dirs(dir, &mut cases);
    let mut names = Vec::new();
    let mut failures = Vec::new();
    for case in &cases {
        let o = run_case(dir, case);
        if o.got != o.expected {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                o.name, o.expected, o.got
            ));
        }
        if let Some((want, have)) = o.organizations
            && want != have
        {
            failures.push(format!(
                "{}: organizations expected {want:?}, got {have:?}",
                o.name
            ));
        }
        if let Some((want, have)) = o.stages
            && want != have.counts
            && want != have.in_result
        {
            failures.push(format!(
                "{}: stage counts expected {want:?}, got {:?} (in the result: {:?})",
                o.name, have.counts, have.in_result
            ));
        }
        names.push(o.name);
    }
    (names, failures)
}

#[test]
fn every_upstream_case_gives_the_expected_patients() {
    let Some(dir) = corpus_dir() else {
        eprintln!(
            "SKIPPED: no conformance corpus (../shared/conformance/query-executor or $COHORT360_CONFORMANCE_DIR)"
        );
        return;
    };
    let (cases, failures) = run_corpus(&dir);
    assert!(!cases.is_empty(), "the corpus at {dir:?} has no case");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} upstream cases conform", cases.len());
}

/// A case of our own making, written into `dir`.
fn write_case(
    dir: &Path,
    request: &str,
    rows: &[(i64, &str)],
    expected: &str,
    stages: Option<&str>,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("request.json"), request).unwrap();
    for (id, csv) in rows {
        std::fs::write(dir.join(format!("resource_{id}.csv")), csv).unwrap();
    }
    std::fs::write(dir.join("expected.csv"), expected).unwrap();
    if let Some(stages) = stages {
        std::fs::write(dir.join("stageCounts.csv"), stages).unwrap();
    }
}

#[test]
fn nested_cases_are_run_and_their_stage_counts_checked() {
    let corpus = std::env::temp_dir().join(format!("conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&corpus);
    let request = r#"{"sourcePopulation": {"caresiteCohortList": [1]}, "request": {"_type": "andGroup",
        "_id": 0, "isInclusive": true, "criteria": [
        {"_type": "basicResource", "_id": 1, "isInclusive": true, "resourceType": "Condition"},
        {"_type": "basicResource", "_id": 2, "isInclusive": false, "resourceType": "Condition"}]}}"#;
    // Criterion 1: patients 1, 2, 3; excluded 2: patient 3; the population: 1 to 4.
    let rows = [
        (1, "patient\n1\n2\n3\n"),
        (2, "patient\n3\n"),
        (3, "patient\n1\n2\n3\n4\n"),
    ];
    write_case(
        &corpus.join("top"),
        request,
        &rows,
        "subject_id\n1\n2\n",
        None,
    );
    // Nested as upstream keeps its edge cases, with a wrong expectation and wrong stages.
    write_case(
        &corpus.join("edgeCases/deep"),
        request,
        &rows,
        "subject_id\n1\n",
        Some("stage;count\n0;2\n1;2\n2;1\n"),
    );
    let (cases, failures) = run_corpus(&corpus);
    assert_eq!(cases, ["edgeCases/deep", "top"]);
    // The excluded stage is the population minus criterion 2 (1, 2, 4): 2 of them are selected.
    assert_eq!(
        failures,
        [
            "edgeCases/deep: expected {1}, got {1, 2}",
            "edgeCases/deep: stage counts expected {0: 2, 1: 2, 2: 1}, got {0: 2, 1: 3, 2: 3} \
             (in the result: {0: 2, 1: 2, 2: 2})",
        ]
    );
    let _ = std::fs::remove_dir_all(&corpus);
}
