//! `cargo run --release -p tests --bin bench-engine`: the embedded query engine on generated data.
//!
//! Generates `BENCH_PATIENTS` patients (default 1 000 000, about 45 facts each) into a fresh
//! database, loads the index, then times count queries through the engine and the same questions
//! as plain SQL on the same Postgres, in the same run. Prints a Markdown report; both sides must
//! give the same count or the run fails.

// The service binary's allocator, so that the figures are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use infra::clinical::EmbeddedExecutor;
use serde_json::{Value, json};
use sqlx::PgPool;
use tests::{TestApp, settings, unique_id};

fn patients() -> u64 {
    std::env::var("BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn criterion(id: i64, resource: &str, filter: &str) -> Value {
    json!({"_type": "basicResource", "_id": id, "isInclusive": true, "resourceType": resource,
           "filterFhir": filter, "occurrence": {"n": 1, "operator": ">="}})
}

fn and(criteria: Vec<Value>) -> Value {
    json!({"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": criteria, "temporalConstraints": []})
}

fn query(root: Value) -> String {
    json!({"version": "v1.6.1", "_type": "request",
           "sourcePopulation": {"caresiteCohortList": ["9999"]}, "request": root})
    .to_string()
}

struct Case {
    name: &'static str,
    query: String,
    sql: &'static str,
}

fn cases() -> Vec<Case> {
    let mut excluded = criterion(3, "Patient", "gender=m");
    excluded["isInclusive"] = json!(false);
    let three = and(vec![
        criterion(1, "Condition", "code=E11"),
        json!({"_type": "orGroup", "_id": -1, "isInclusive": true, "temporalConstraints": [], "criteria": [
            criterion(2, "Observation", "code=2345-7&value-quantity=ge200"),
            criterion(4, "MedicationRequest", "code=A10BA02"),
        ]}),
        excluded,
    ]);
    let mut thrice = criterion(1, "Observation", "code=718-7");
    thrice["occurrence"] = json!({"n": 3, "operator": ">="});
    let mut ordered = and(vec![
        criterion(1, "Condition", "code=E11"),
        criterion(2, "Observation", "code=2345-7"),
    ]);
    ordered["temporalConstraints"] = json!([{"idList": [1, 2], "constraintType": "directChronologicalOrdering",
        "timeRelationMinDuration": {"days": 1}, "timeRelationMaxDuration": {"days": 400}}]);
    vec![
        Case {
            name: "no criteria (the whole population)",
            query: query(and(vec![])),
            sql: "SELECT id FROM clinical.patients",
        },
        Case {
            name: "one code (ICD-10 E11)",
            query: query(and(vec![criterion(1, "Condition", "code=E11")])),
            sql: "SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'C' AND code = 'E11'",
        },
        Case {
            name: "three criteria: AND, OR with a value, exclusion",
            query: query(three),
            sql: "(SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'C' AND code = 'E11')
                  INTERSECT (SELECT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '2345-7' AND value >= 200
                             UNION SELECT patient_id FROM clinical.facts WHERE resource = 'M' AND code = 'A10BA02')
                  EXCEPT SELECT id FROM clinical.patients WHERE gender = 'm'",
        },
        Case {
            name: "hierarchy: an ICD-10 chapter (E00-E90, every category and subdivision under it)",
            query: query(and(vec![criterion(1, "Condition", "code=E00-E90")])),
            // One index range: every code from E00 to E90 and E90's subdivisions.
            sql: "SELECT DISTINCT patient_id FROM clinical.facts WHERE resource = 'C'
                  AND code >= 'E00' AND code < 'E91'",
        },
        Case {
            name: "occurrence count (>= 3 haemoglobins)",
            query: query(and(vec![thrice])),
            sql: "SELECT patient_id FROM clinical.facts WHERE resource = 'O' AND code = '718-7'
                  GROUP BY patient_id HAVING count(*) >= 3",
        },
        Case {
            name: "temporal: E11 then glucose 1 to 400 days later",
            query: query(ordered),
            sql: "SELECT DISTINCT a.patient_id FROM clinical.facts a JOIN clinical.facts b
                    ON b.patient_id = a.patient_id AND b.resource = 'O' AND b.code = '2345-7'
                   AND b.at - a.at BETWEEN interval '1 day' AND interval '400 days'
                  WHERE a.resource = 'C' AND a.code = 'E11'",
        },
    ]
}

/// `$expand` with a text filter on a 20 000-code system, and the patient list's faceted page
/// (`_sort=family`, `pivot-facet=age-month_gender,deceased_gender`) over every patient.
async fn terminology_and_fhir(
    pool: &PgPool,
    exec: std::sync::Arc<EmbeddedExecutor>,
) -> anyhow::Result<String> {
    use infra::terminology::{CodeSystemData, Concept, Terminologies, store};
    use projections::clinical::{
        ClinicalReader, Facet, FhirSearch, FhirSort, FhirType, ReadScope, SortField,
    };
    use projections::terminology::{ExpandRequest, TerminologyReader};

    const URL: &str = "https://bench.example/twenty-thousand";
    let words = [
        "cardio", "pneumo", "neuro", "gastro", "nephro", "dermato", "hemato", "onco",
    ];
    let mut concepts = Vec::new();
    for g in 0..200 {
        concepts.push(Concept {
            code: format!("G{g:03}"),
            display: format!("Groupe {g} {}", words[g % words.len()]),
            parent: None,
        });
        for c in 0..99 {
            concepts.push(Concept {
                code: format!("G{g:03}.{c:02}"),
                display: format!(
                    "Concept {c} du groupe {g}, {} {}",
                    words[(g + c) % words.len()],
                    c * 7
                ),
                parent: Some(format!("G{g:03}")),
            });
        }
    }
    let n = concepts.len();
    let started = Instant::now();
    store::apply(
        pool,
        &Terminologies {
            code_systems: vec![CodeSystemData {
                url: URL.into(),
                name: "Bench".into(),
                title: "Bench".into(),
                version: None,
                concepts,
            }],
            value_sets: Vec::new(),
        },
        store::Origin::Import,
    )
    .await?;
    let import_s = started.elapsed().as_secs_f64();
    let terminology = infra::terminology::store::PgTerminology::new(pool.clone());
    let mut out = format!(
        "\n## Terminology and FHIR pages\n\nImport of a {n}-code system: {import_s:.2} s.\n\n| operation | answer | p50 ms | p99 ms |\n|---|---|---|---|\n"
    );
    for (name, filter, parent) in [
        (
            "`$expand` filter `cardio 42` (count 100)",
            Some("cardio 42"),
            None,
        ),
        (
            "`$expand` filter `groupe` (count 100)",
            Some("groupe"),
            None,
        ),
        ("`$expand` children of one group", None, Some("G042")),
    ] {
        let request = ExpandRequest {
            url: URL.into(),
            filter: filter.map(str::to_string),
            parent: parent.map(str::to_string),
            count: 100,
            ..ExpandRequest::default()
        };
        let (h, total) = sample(50, Duration::from_secs(10), || async {
            let e = terminology
                .expand(&request)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no expansion"))?;
            Ok(e.total as u64)
        })
        .await?;
        out.push_str(&format!(
            "| {name} | {total} concepts | {:.2} | {:.2} |\n",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99))
        ));
    }
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM identity.perimeters")
        .fetch_all(pool)
        .await?;
    let scope = ReadScope {
        readable: all.clone(),
        nominative: all,
    };
    let search = FhirSearch {
        resource: FhirType::Patient,
        params: domain::cohort_query::fhir_search::parse_search("active=true"),
        count: 20,
        offset: 0,
        sort: vec![FhirSort {
            field: SortField::Family,
            descending: false,
        }],
        facets: vec![
            Facet::Pivot("age-month".into(), "gender".into()),
            Facet::Pivot("deceased".into(), "gender".into()),
        ],
    };
    for (how, clinical) in [
        (
            "in-memory index",
            infra::clinical::fhir::PgClinical::new(pool.clone()).with_index(Some(exec.clone())),
        ),
        (
            "SQL only",
            infra::clinical::fhir::PgClinical::new(pool.clone()),
        ),
    ] {
        let (h, total) = sample(20, Duration::from_secs(30), || async {
            let page = clinical
                .search(&search, &scope)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(page.total as u64)
        })
        .await?;
        out.push_str(&format!(
            "| Patient page, {how}: 20 by family name, `pivot-facet=age-month_gender,deceased_gender` (target p50 < 200 ms) | {total} patients | {:.1} | {:.1} |\n",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99))
        ));
    }
    Ok(out)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Resident memory of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn sql_count(pool: &PgPool, sql: &str) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({sql}) q"))
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// Runs `f` until `runs` samples or `budget` elapsed (at least 3 samples).
async fn sample<F, Fut>(
    runs: usize,
    budget: Duration,
    mut f: F,
) -> anyhow::Result<(Histogram<u64>, u64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut hist = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut count = 0;
    for i in 0..runs {
        let t = Instant::now();
        count = f().await?;
        hist.record(t.elapsed().as_micros() as u64)?;
        if i >= 2 && started.elapsed() > budget {
            break;
        }
    }
    Ok((hist, count))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = patients();
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.cohorts.query_executor_url = String::new();
    // The SQL baselines scan tens of millions of facts: no statement timeout here.
    s.database_statement_timeout_ms = 0;
    let app = TestApp::spawn_with(s, id).await;
    tests::identity::seed(&app).await;
    let pool = app.pool.clone();
    let mut report = format!(
        "# Embedded engine benchmark\n\nOne run of `cargo run --release -p tests --bin bench-engine` with {n} patients, on this machine's Postgres, in one fresh database.\n\n"
    );

    let started = Instant::now();
    let g = infra::clinical::generate::generate(&pool, n, 42).await?;
    let generate_s = started.elapsed().as_secs_f64();
    report.push_str(&format!(
        "## Generation and load\n\n| step | figure |\n|---|---|\n| generate + COPY + indexes | {} patients, {} encounters, {} facts in {generate_s:.1} s ({:.0} facts/s) |\n",
        g.patients,
        g.encounters,
        g.facts,
        g.facts as f64 / generate_s
    ));
    let rss_before = rss_bytes().unwrap_or(0);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let exec = EmbeddedExecutor::new(pool.clone(), tx);
    let started = Instant::now();
    let index = exec.index().await?;
    let load_s = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes().unwrap_or(0);
    report.push_str(&format!(
        "| index load (COPY out, sort, bitmaps) | {load_s:.1} s |\n| index size (computed) | {:.0} MiB |\n| process RSS growth at load | {:.0} MiB |\n\n",
        index.memory_bytes() as f64 / 1048576.0,
        rss_after.saturating_sub(rss_before) as f64 / 1048576.0
    ));
    drop(index);

    report.push_str("## Count latency: engine vs plain SQL on the same Postgres\n\n| query | count | engine p50 ms | engine p99 ms | SQL p50 ms | SQL p99 ms | SQL p50 / engine p50 |\n|---|---|---|---|---|---|---|\n");
    for case in cases() {
        let (engine, engine_count) = sample(50, Duration::from_secs(20), || async {
            let (e, _) = exec
                .evaluate(&case.query)
                .await
                .map_err(anyhow::Error::msg)?;
            Ok(e.patients.len())
        })
        .await?;
        let (sql, sql_n) =
            sample(10, Duration::from_secs(30), || sql_count(&pool, case.sql)).await?;
        anyhow::ensure!(
            engine_count == sql_n,
            "{}: the engine counted {engine_count}, SQL {sql_n}",
            case.name
        );
        let e50 = ms(engine.value_at_quantile(0.5));
        let s50 = ms(sql.value_at_quantile(0.5));
        report.push_str(&format!(
            "| {} | {engine_count} | {e50:.2} | {:.2} | {s50:.1} | {:.1} | {:.0} |\n",
            case.name,
            ms(engine.value_at_quantile(0.99)),
            ms(sql.value_at_quantile(0.99)),
            s50 / e50.max(0.001)
        ));
    }
    report.push_str(&terminology_and_fhir(&pool, std::sync::Arc::new(exec)).await?);
    #[expect(clippy::print_stdout, reason = "the report is the output")]
    {
        println!("{report}");
    }
    app.stop().await;
    Ok(())
}
