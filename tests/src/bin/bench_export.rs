//! `cargo run --release -p tests --bin bench-export`: the built-in exporter on generated data.
//!
//! Generates `BENCH_PATIENTS` patients (default 100 000) into a fresh database, makes one cohort
//! list holding all of them, then runs the built-in exporter on it: nominative CSV, the same in
//! XLSX, CSV with a filter on the conditions, and pseudonymized CSV with shifted dates. Each run
//! must write exactly the rows plain SQL counts, or the benchmark fails. Prints a Markdown
//! report: throughput, archive and uncompressed sizes, and the process memory around each run.
//! Archives go under `BENCH_EXPORT_DIR` (default: the system's temporary directory) and are
//! deleted once measured, unless `BENCH_EXPORT_KEEP` is set (to inspect them).

// The service binary's allocator, so that the figures are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use commands::ports::{ExportJob, ExportJobTable, Exporter};
use domain::export::ExportFormat;
use domain::job::JobStatus;
use infra::exports::builtin::BuiltinExporter;
use serde_json::Value;
use sqlx::PgPool;
use tests::{TestApp, settings, unique_id};
use uuid::Uuid;

/// How long one export may take before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
const MIB: f64 = 1_048_576.0;

fn patients() -> u64 {
    std::env::var("BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Where the archives are written (a disk, not a RAM-backed directory, for honest figures).
fn export_root(id: &str) -> PathBuf {
    std::env::var_os("BENCH_EXPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("cohort360-bench-export-{id}"))
}

/// Resident memory now and its peak since the last reset, from /proc (Linux).
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
}

fn memory() -> Memory {
    let kib = |status: &str, key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Memory {
        rss: kib(&status, "VmRSS:"),
        hwm: kib(&status, "VmHWM:"),
    }
}

/// Resets the peak (VmHWM) to the current RSS, so that each run's peak is its own; `false` when
/// the kernel does not allow it (the peak is then the process's since its start).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A cohort list of every generated patient; returns its group id.
async fn all_patients_cohort(pool: &PgPool, data_version: i64) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let group: i64 = sqlx::query_scalar("SELECT nextval('clinical.group_ids')")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO clinical.cohort_lists (group_id, target, data_version, size)
         SELECT $1, $2, $3, count(*) FROM clinical.patients",
    )
    .bind(group)
    .bind(Uuid::new_v4())
    .bind(data_version)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO clinical.cohort_members (group_id, patient_id)
         SELECT $1, id FROM clinical.patients",
    )
    .bind(group)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(group.to_string())
}

fn table(name: &str, group: &str, filter: Option<(&str, &str)>) -> ExportJobTable {
    ExportJobTable {
        name: name.into(),
        columns: None,
        cohort_group_id: Some(group.into()),
        filter: filter.map(|(r, f)| (r.to_string(), f.to_string())),
        respect_table_relationships: true,
        pivot_merge: false,
        pivot_merge_columns: vec![],
        pivot_merge_ids: vec![],
    }
}

struct Case {
    name: &'static str,
    format: ExportFormat,
    nominative: bool,
    shift_dates: bool,
    tables: Vec<ExportJobTable>,
    /// What plain SQL counts for the same tables.
    expected_rows: u64,
}

/// The four runs, each with the rows SQL expects.
async fn cases(pool: &PgPool, group: &str) -> anyhow::Result<Vec<Case>> {
    let count = |sql: &'static str| async move {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        anyhow::Ok(n as u64)
    };
    let persons = count("SELECT count(*) FROM clinical.patients").await?;
    let visits = count("SELECT count(*) FROM clinical.encounters").await?;
    let conditions = count("SELECT count(*) FROM clinical.facts WHERE resource = 'C'").await?;
    let e11 =
        count("SELECT count(*) FROM clinical.facts WHERE resource = 'C' AND code = 'E11'").await?;
    let measurements = count("SELECT count(*) FROM clinical.facts WHERE resource = 'O'").await?;
    let four = |filter: Option<(&str, &str)>| {
        vec![
            table("person", group, None),
            table("visit_occurrence", group, None),
            table("condition_occurrence", group, filter),
            table("measurement", group, None),
        ]
    };
    let all = persons + visits + conditions + measurements;
    Ok(vec![
        Case {
            name: "(a) CSV, nominative",
            format: ExportFormat::Csv,
            nominative: true,
            shift_dates: false,
            tables: four(None),
            expected_rows: all,
        },
        Case {
            name: "(b) XLSX, nominative",
            format: ExportFormat::Xlsx,
            nominative: true,
            shift_dates: false,
            tables: four(None),
            expected_rows: all,
        },
        Case {
            name: "(c) CSV, conditions filtered `code=E11`",
            format: ExportFormat::Csv,
            nominative: true,
            shift_dates: false,
            tables: four(Some(("Condition", "code=E11"))),
            expected_rows: persons + visits + e11 + measurements,
        },
        Case {
            name: "(d) CSV, pseudonymized, shifted dates",
            format: ExportFormat::Csv,
            nominative: false,
            shift_dates: true,
            tables: four(None),
            expected_rows: all,
        },
    ])
}

/// What one run measured.
struct Measured {
    rows: u64,
    seconds: f64,
    archive_bytes: u64,
    uncompressed_bytes: u64,
    before: Memory,
    after: Memory,
    peak_reset: bool,
}

/// Submits a job and waits for its end; the figures come from the exporter's logs.
async fn run(exporter: &BuiltinExporter, case: &Case, n: usize) -> anyhow::Result<Measured> {
    let job = ExportJob {
        export: Uuid::new_v4(),
        owner: "bench".into(),
        format: case.format,
        nominative: case.nominative,
        shift_dates: case.shift_dates,
        group_tables: false,
        target_name: format!("run{n}"),
        target_location: "bench".into(),
        datalab: None,
        tables: case.tables.clone(),
    };
    let peak_reset = reset_peak();
    let before = memory();
    let started = Instant::now();
    let task = exporter.submit(job).await?;
    let report = loop {
        let report = exporter
            .status(&task)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the exporter forgot task {task}"))?;
        match report.status {
            Some(JobStatus::Finished | JobStatus::Failed) => break report,
            _ if started.elapsed() > RUN_TIMEOUT => anyhow::bail!("{}: timed out", case.name),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let after = memory();
    anyhow::ensure!(
        report.status == Some(JobStatus::Finished),
        "{} failed: {:?}",
        case.name,
        report.message
    );
    let logs = exporter.logs(&task).await?;
    let figure = |key: &str| logs.get(key).and_then(Value::as_u64).unwrap_or(0);
    Ok(Measured {
        rows: figure("rows"),
        seconds,
        archive_bytes: figure("archive_bytes"),
        uncompressed_bytes: figure("uncompressed_bytes"),
        before,
        after,
        peak_reset,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// One line of the report's table.
fn report_line(case: &Case, m: &Measured) -> String {
    let peak = if m.peak_reset {
        format!("{:.1}", mib(m.after.hwm.saturating_sub(m.before.rss)))
    } else {
        "n/a".into()
    };
    format!(
        "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:+.1} | {peak} |\n",
        case.name,
        m.rows,
        m.seconds,
        m.rows as f64 / m.seconds,
        mib(m.archive_bytes),
        mib(m.archive_bytes) / m.seconds,
        mib(m.uncompressed_bytes),
        mib(m.uncompressed_bytes) / m.seconds,
        mib(m.before.rss),
        (m.after.rss as f64 - m.before.rss as f64) / MIB,
    )
}

/// Removes the runs' archives (best effort: they are only figures), unless asked to keep them.
fn clean(root: &Path) {
    if std::env::var_os("BENCH_EXPORT_KEEP").is_some() {
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "cannot remove the benchmark's archives");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = patients();
    let id = unique_id();
    let mut s = settings(&id, &tests::nats_url());
    s.cohorts.query_executor_url = String::new();
    let app = TestApp::spawn_with(s, id.clone()).await;
    tests::identity::seed(&app).await;
    let pool = app.pool.clone();
    let mut report = format!(
        "# Built-in exporter benchmark\n\nOne run of `cargo run --release -p tests --bin bench-export` with {n} patients, on this machine's Postgres, in one fresh database.\n\n"
    );

    let started = Instant::now();
    let g = infra::clinical::generate::generate(&pool, n, 42).await?;
    let group = all_patients_cohort(&pool, g.data_version).await?;
    report.push_str(&format!(
        "Data: {} patients, {} encounters, {} facts, generated in {:.1} s; one cohort list of every patient.\n\n",
        g.patients,
        g.encounters,
        g.facts,
        started.elapsed().as_secs_f64()
    ));

    let root = export_root(&id);
    let exporter = BuiltinExporter::new(pool.clone(), root.clone());
    report.push_str(
        "| run | rows | s | rows/s | archive MiB | archive MiB/s | uncompressed MiB | uncompressed MiB/s | RSS before MiB | RSS growth MiB | peak growth MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut outcome = Ok(());
    for (i, case) in cases(&pool, &group).await?.iter().enumerate() {
        match run(&exporter, case, i).await {
            Ok(m) if m.rows == case.expected_rows => report.push_str(&report_line(case, &m)),
            Ok(m) => {
                outcome = Err(anyhow::anyhow!(
                    "{}: the exporter wrote {} rows, SQL counts {}",
                    case.name,
                    m.rows,
                    case.expected_rows
                ));
                break;
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
        clean(&root);
    }
    clean(&root);
    if std::env::var_os("BENCH_EXPORT_KEEP").is_some() {
        report.push_str(&format!("\nArchives kept in {}.\n", root.display()));
    }
    report.push_str(
        "\nTables: person, visit_occurrence, condition_occurrence, measurement (all columns). Rows are streamed from Postgres in batches of 1 024 (at most 4 batches in flight) to a writer thread and straight into the zip entries (CSV deflated; XLSX worksheets in constant-memory mode, the workbooks stored), so the memory growth stays flat whatever the cohort's size: no table is ever held in memory. Peak growth is VmHWM after the run minus VmRSS before it (the peak is reset before each run).\n",
    );
    #[expect(clippy::print_stdout, reason = "the report is the output")]
    {
        println!("{report}");
    }
    app.stop().await;
    outcome
}
