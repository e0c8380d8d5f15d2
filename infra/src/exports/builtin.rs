//! The built-in exporter: writes an export's tables from the clinical store into one zip archive,
//! `{root}/{target_location}/{target_name}.zip`, for deployments without the upstream Export API.
//!
//! * **Tables.** Six OMOP-like tables, named as the Cohort360 front-end names them, each read
//!   from one resource of the clinical store (see [`builtin_tables`]). A table's rows are those
//!   of the patients of its cohort (`cohort_group_id`, a list of `clinical.cohort_members`),
//!   further restricted by its saved filter (`filterFhir`, translated by the same SQL as the FHIR
//!   API), ordered by id.
//! * **Formats.** CSV: one `{table}.csv` per table (header row, UTF-8, comma separated). XLSX:
//!   one `{table}.xlsx` workbook per table (bold header row; a table longer than a worksheet
//!   continues on further worksheets). Hive: there is no Hive metastore here, so a Hive export
//!   writes the same zip of CSV files at its target path (and `hand_over` has nothing to do).
//!   Dates are written `YYYY-MM-DD`, instants RFC 3339 in UTC (`…Z`), NULL as an empty field.
//!   `group_tables`, `pivot_merge` and `respect_table_relationships` are not implemented: every
//!   table is written on its own.
//! * **Pseudonymization** (`nominative == false`): the identifying columns (IPP, names) are not
//!   written at all, even when asked for; every patient id is replaced by a pseudonym stable
//!   within the export and different between exports ([`pseudonym`]); birth dates keep only their
//!   year and month; with `shift_dates`, every date of a patient moves by the same number of days
//!   in −30..=+30 ([`date_shift_days`]).
//! * **Memory.** Rows are streamed from Postgres in batches over a bounded channel to a blocking
//!   writer thread, and from there straight into the archive (XLSX worksheets in constant-memory
//!   mode, whose rows go to temporary files next to the archive): the process never holds a
//!   table, whatever the cohort's size.
//! * **Atomicity.** The archive is written under a temporary name next to its target and renamed
//!   once complete: a failed export never leaves a partial archive under the final name.
//! * **Tasks** are kept in memory, like the embedded executor's jobs: after a restart `status`
//!   does not know them (`Ok(None)`).
//!
//! The owner's rights were checked upstream (the export's validation): the rows are read with a
//! scope of every perimeter.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeDelta, Timelike, Utc};
use commands::ports::{ExportJob, ExportJobTable, Exporter, ExporterError};
use domain::cohort_query::fhir_search::{SearchParam, parse_search};
use domain::export::{ExportFormat, ExportReport, ExportStat, StatKind};
use domain::job::JobStatus;
use futures::StreamExt;
use projections::clinical::{FhirType, ReadScope};
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use tokio::sync::mpsc;
use uuid::Uuid;
use zip::ZipWriter;
use zip::write::SimpleFileOptions;

use super::local_storage::relative_path;
use crate::clinical::fhir::{ResolvedCodes, from_scope, push_filters};
use crate::terminology::store::PgTerminology;

/// Rows per message from the SQL stream to the writer: amortizes the channel, small enough to
/// keep memory flat.
const BATCH_ROWS: usize = 1024;
/// Batches in flight between the SQL stream and the writer: the bound on buffered rows.
const CHANNEL_BATCHES: usize = 4;
/// Rows of an Excel worksheet, header included.
const XLSX_MAX_ROWS: u32 = 1_048_576;
/// Longest worksheet name Excel accepts.
const XLSX_MAX_SHEET_NAME: usize = 31;
/// Integers above this are not exact as Excel numbers (f64): they are written as text.
const XLSX_MAX_EXACT_INT: u64 = 1 << 53;
/// Search parameters that shape a FHIR answer without filtering it: ignored in a table's filter.
const RESULT_PARAMS: [&str; 7] = [
    "_count",
    "_offset",
    "_summary",
    "_sort",
    "_elements",
    "_total",
    "_format",
];
/// What the writer answers when the rows stopped coming before the end.
const INTERRUPTED: &str = "the export was interrupted before all its rows were read";

// ---------------------------------------------------------------------------------------------
// The catalog of tables
// ---------------------------------------------------------------------------------------------

/// How a column's values are read and written, and what pseudonymization does to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// An integer (ids, care sites).
    Integer,
    /// The patient's id: a pseudonym in pseudonymized exports.
    PersonId,
    /// A decimal number.
    Decimal,
    Text,
    Boolean,
    /// A date, shifted in pseudonymized exports with shifted dates.
    Date,
    /// An instant, shifted like dates.
    DateTime,
    /// The birth date: year and month only in pseudonymized exports.
    BirthDate,
    /// Text that identifies the patient (IPP, names): never in pseudonymized exports.
    Identifying,
}

/// One column of a built-in table.
#[derive(Debug)]
pub struct ColumnSpec {
    pub name: &'static str,
    pub kind: ColumnKind,
    /// The SQL expression over the patient (`c`) and the resource's row (`x`).
    sql: &'static str,
}

/// One table the built-in exporter produces.
#[derive(Debug)]
pub struct TableSpec {
    /// The table's name, as the front-end names it.
    pub name: &'static str,
    /// The clinical resource its rows are.
    pub resource: FhirType,
    /// Every column, in the order of a table exported whole.
    pub columns: &'static [ColumnSpec],
}

impl TableSpec {
    /// The FHIR type name of the table's rows (what a table filter's resource must be).
    pub fn fhir_type(&self) -> &'static str {
        self.resource.name()
    }

    /// The column names, in order.
    pub fn column_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|c| c.name)
    }

    fn column(&self, name: &str) -> Option<&'static ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The expression rows are ordered by (the resource's own id).
    fn order_by(&self) -> &'static str {
        if self.resource == FhirType::Patient {
            "c.id"
        } else {
            "x.id"
        }
    }
}

/// Builds a column in a `const` table.
const fn col(name: &'static str, kind: ColumnKind, sql: &'static str) -> ColumnSpec {
    ColumnSpec { name, kind, sql }
}

use ColumnKind as K;

const PERSON: &[ColumnSpec] = &[
    col("person_id", K::PersonId, "c.id::bigint"),
    col("ipp", K::Identifying, "c.ipp"),
    col("gender", K::Text, "c.gender"),
    col("birth_date", K::BirthDate, "c.birth_date"),
    col("death_date", K::Date, "c.death_date"),
    col("deceased", K::Boolean, "c.deceased"),
    col("family_name", K::Identifying, "c.family_name"),
    col("given_name", K::Identifying, "c.given_name"),
    col("care_site_id", K::Integer, "c.perimeter_id"),
];

const VISIT_OCCURRENCE: &[ColumnSpec] = &[
    col("visit_occurrence_id", K::Integer, "x.id::bigint"),
    col("person_id", K::PersonId, "x.patient_id::bigint"),
    col("visit_class", K::Text, "x.class"),
    col("visit_start_datetime", K::DateTime, "x.start_at"),
    col("visit_end_datetime", K::DateTime, "x.end_at"),
    col("visit_episode_id", K::Integer, "x.episode_id::bigint"),
    col("care_site_id", K::Integer, "x.perimeter_id"),
];

const CONDITION_OCCURRENCE: &[ColumnSpec] = &[
    col("condition_occurrence_id", K::Integer, "x.id"),
    col("person_id", K::PersonId, "x.patient_id::bigint"),
    col("visit_occurrence_id", K::Integer, "x.encounter_id::bigint"),
    col("condition_source_value", K::Text, "x.code"),
    col("condition_start_datetime", K::DateTime, "x.at"),
];

const MEASUREMENT: &[ColumnSpec] = &[
    col("measurement_id", K::Integer, "x.id"),
    col("person_id", K::PersonId, "x.patient_id::bigint"),
    col("visit_occurrence_id", K::Integer, "x.encounter_id::bigint"),
    col("measurement_source_value", K::Text, "x.code"),
    col("measurement_datetime", K::DateTime, "x.at"),
    col("value_as_number", K::Decimal, "x.value"),
    col("unit_source_value", K::Text, "x.unit"),
];

const DRUG_EXPOSURE_PRESCRIPTION: &[ColumnSpec] = &[
    col("drug_exposure_id", K::Integer, "x.id"),
    col("person_id", K::PersonId, "x.patient_id::bigint"),
    col("visit_occurrence_id", K::Integer, "x.encounter_id::bigint"),
    col("drug_source_value", K::Text, "x.code"),
    col("drug_exposure_start_datetime", K::DateTime, "x.at"),
];

const PROCEDURE_OCCURRENCE: &[ColumnSpec] = &[
    col("procedure_occurrence_id", K::Integer, "x.id"),
    col("person_id", K::PersonId, "x.patient_id::bigint"),
    col("visit_occurrence_id", K::Integer, "x.encounter_id::bigint"),
    col("procedure_source_value", K::Text, "x.code"),
    col("procedure_datetime", K::DateTime, "x.at"),
];

static TABLES: [TableSpec; 6] = [
    TableSpec {
        name: "person",
        resource: FhirType::Patient,
        columns: PERSON,
    },
    TableSpec {
        name: "visit_occurrence",
        resource: FhirType::Encounter,
        columns: VISIT_OCCURRENCE,
    },
    TableSpec {
        name: "condition_occurrence",
        resource: FhirType::Condition,
        columns: CONDITION_OCCURRENCE,
    },
    TableSpec {
        name: "measurement",
        resource: FhirType::Observation,
        columns: MEASUREMENT,
    },
    TableSpec {
        name: "drug_exposure_prescription",
        resource: FhirType::MedicationRequest,
        columns: DRUG_EXPOSURE_PRESCRIPTION,
    },
    TableSpec {
        name: "procedure_occurrence",
        resource: FhirType::Procedure,
        columns: PROCEDURE_OCCURRENCE,
    },
];

/// The tables the built-in exporter produces (documentation and tests list them from here).
pub fn builtin_tables() -> &'static [TableSpec] {
    &TABLES
}

/// The built-in table named `name`.
pub fn builtin_table(name: &str) -> Option<&'static TableSpec> {
    TABLES.iter().find(|t| t.name == name)
}

// ---------------------------------------------------------------------------------------------
// Checks and the plan of a job
// ---------------------------------------------------------------------------------------------

/// A table filter's search parameters, without those that only shape an answer.
fn filter_params(filter_fhir: &str) -> Vec<SearchParam> {
    parse_search(filter_fhir)
        .into_iter()
        .filter(|p| !RESULT_PARAMS.contains(&p.name.as_str()))
        .collect()
}

/// Checks a filter by translating it to SQL without running it: what the translation refuses
/// would fail the export later.
fn dry_run_filter(t: FhirType, params: &[SearchParam]) -> Result<(), String> {
    let scope = ReadScope::default();
    let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new("");
    push_filters(&mut q, t, params, &scope, &ResolvedCodes::default()).map_err(|e| e.to_string())
}

/// The table a job table names, or why the built-in exporter cannot produce it.
fn table_spec(name: &str) -> Result<&'static TableSpec, String> {
    builtin_table(name).ok_or_else(|| {
        let known: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        format!(
            "the built-in exporter has no table `{name}` (known tables: {})",
            known.join(", ")
        )
    })
}

/// The columns to write, in the order asked (all of them, in the catalog's order, when none
/// are named); a column named twice is written once.
fn resolve_columns(
    spec: &'static TableSpec,
    asked: Option<&[String]>,
) -> Result<Vec<&'static ColumnSpec>, String> {
    let Some(names) = asked else {
        return Ok(spec.columns.iter().collect());
    };
    if names.is_empty() {
        return Err(format!("table {}: no column is asked for", spec.name));
    }
    let mut columns: Vec<&'static ColumnSpec> = Vec::with_capacity(names.len());
    for name in names {
        let column = spec.column(name).ok_or_else(|| {
            format!(
                "table {}: unknown column `{name}` (known columns: {})",
                spec.name,
                spec.column_names().collect::<Vec<_>>().join(", ")
            )
        })?;
        if !columns.iter().any(|c| c.name == column.name) {
            columns.push(column);
        }
    }
    Ok(columns)
}

/// The filter's parameters, checked against the table: the filter must be on the table's
/// resource, and its SQL translation must accept it.
fn resolve_filter(
    spec: &'static TableSpec,
    filter: Option<&(String, String)>,
) -> Result<Vec<SearchParam>, String> {
    let Some((resource, text)) = filter else {
        return Ok(Vec::new());
    };
    if FhirType::parse(resource) != Some(spec.resource) {
        return Err(format!(
            "table {} holds {} resources: its filter cannot be on `{resource}`",
            spec.name,
            spec.fhir_type()
        ));
    }
    let params = filter_params(text);
    dry_run_filter(spec.resource, &params)
        .map_err(|e| format!("table {}: its filter cannot be applied: {e}", spec.name))?;
    Ok(params)
}

/// What the built-in exporter can produce, checked without the database: the tables, their
/// columns and filters. Any format is accepted (see the module documentation for Hive).
pub fn check_builtin_tables(tables: &[ExportJobTable]) -> Result<(), String> {
    if tables.is_empty() {
        return Err("the export names no table".into());
    }
    for t in tables {
        let spec = table_spec(&t.name)?;
        resolve_columns(spec, t.columns.as_deref())?;
        resolve_filter(spec, t.filter.as_ref())?;
    }
    Ok(())
}

/// What the archive's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Csv,
    Xlsx,
}

impl FileKind {
    /// Hive exports get CSV files: the built-in exporter has no metastore.
    fn of(format: ExportFormat) -> Self {
        match format {
            ExportFormat::Xlsx => Self::Xlsx,
            ExportFormat::Csv | ExportFormat::Hive => Self::Csv,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Xlsx => "xlsx",
        }
    }
}

/// Whether and how patient data is protected in the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privacy {
    Nominative,
    Pseudonymized { export: Uuid, shift_dates: bool },
}

/// One table of a planned export.
#[derive(Debug)]
struct TablePlan {
    spec: &'static TableSpec,
    /// The entry's name without extension, also its stats' prefix: the table's name, then
    /// `{name}_2`, `{name}_3`… when a job names a table again.
    stem: String,
    columns: Vec<&'static ColumnSpec>,
    params: Vec<SearchParam>,
    group_id: i64,
}

/// Everything a submitted job needs, checked.
#[derive(Debug)]
struct ExportPlan {
    export: Uuid,
    format: ExportFormat,
    kind: FileKind,
    privacy: Privacy,
    /// The archive, relative to the exporter's root.
    target: PathBuf,
    tables: Vec<TablePlan>,
}

/// The archive's entry stems, in order: a table named again gets a numbered stem, so that the
/// zip never holds two entries of one name.
fn stems<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    names
        .map(|name| {
            let n = seen.entry(name).or_insert(0);
            *n += 1;
            if *n == 1 {
                name.to_string()
            } else {
                format!("{name}_{n}")
            }
        })
        .collect()
}

impl ExportPlan {
    /// Checks a job and plans it; `Err` is why the exporter refuses it.
    fn new(job: &ExportJob) -> Result<Self, String> {
        check_builtin_tables(&job.tables)?;
        let target = relative_path(&format!("{}.zip", job.target_full_path()))
            .map_err(|e| format!("invalid export target: {e}"))?;
        let privacy = if job.nominative {
            Privacy::Nominative
        } else {
            Privacy::Pseudonymized {
                export: job.export,
                shift_dates: job.shift_dates,
            }
        };
        let stems = stems(job.tables.iter().map(|t| t.name.as_str()));
        let tables = job
            .tables
            .iter()
            .zip(stems)
            .map(|(t, stem)| plan_table(t, stem, privacy))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            export: job.export,
            format: job.format,
            kind: FileKind::of(job.format),
            privacy,
            target,
            tables,
        })
    }
}

/// One table's plan: its cohort is required, identifying columns go in pseudonymized exports.
fn plan_table(t: &ExportJobTable, stem: String, privacy: Privacy) -> Result<TablePlan, String> {
    let spec = table_spec(&t.name)?;
    let mut columns = resolve_columns(spec, t.columns.as_deref())?;
    if privacy != Privacy::Nominative {
        columns.retain(|c| c.kind != ColumnKind::Identifying);
        if columns.is_empty() {
            return Err(format!(
                "table {}: no column is left once the identifying ones are removed (pseudonymized export)",
                t.name
            ));
        }
    }
    let params = resolve_filter(spec, t.filter.as_ref())?;
    let group = t
        .cohort_group_id
        .as_deref()
        .ok_or_else(|| format!("table {}: the built-in exporter needs a cohort", t.name))?;
    let group_id = group
        .parse()
        .map_err(|_| format!("table {}: `{group}` is not a cohort's group id", t.name))?;
    Ok(TablePlan {
        spec,
        stem,
        columns,
        params,
        group_id,
    })
}

// ---------------------------------------------------------------------------------------------
// Pseudonymization
// ---------------------------------------------------------------------------------------------

/// SHA-256 of the export's id and the patient's id (big-endian): the one secret-free source of
/// a patient's pseudonym and date shift, stable within an export, unrelated between exports.
fn patient_digest(export: Uuid, patient_id: i64) -> [u8; 32] {
    Sha256::new()
        .chain_update(export.as_bytes())
        .chain_update(patient_id.to_be_bytes())
        .finalize()
        .into()
}

/// A patient's pseudonym in an export: the first 16 hex characters of
/// SHA-256(export id bytes ‖ patient id as 8 big-endian bytes).
pub fn pseudonym(export: Uuid, patient_id: i64) -> String {
    hex16(&patient_digest(export, patient_id))
}

/// The number of days, in −30..=+30, all dates of a patient move by in an export with shifted
/// dates (from bytes 8..16 of the same digest as the pseudonym).
pub fn date_shift_days(export: Uuid, patient_id: i64) -> i64 {
    shift_of(&patient_digest(export, patient_id))
}

/// Lowercase hex of the digest's first 8 bytes.
fn hex16(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(16);
    for b in &digest[..8] {
        let _infallible = write!(s, "{b:02x}");
    }
    s
}

fn shift_of(digest: &[u8; 32]) -> i64 {
    let bytes: [u8; 8] = digest[8..16].try_into().unwrap_or([0; 8]);
    (u64::from_be_bytes(bytes) % 61) as i64 - 30
}

/// How one patient's values are protected in a pseudonymized export.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PatientKey {
    patient_id: i64,
    pseudonym: String,
    /// The days to shift dates by, when dates are shifted.
    shift_days: Option<i64>,
}

impl Privacy {
    /// The protection of a patient's values; `None` in nominative exports.
    fn key(&self, patient_id: i64) -> Option<PatientKey> {
        match *self {
            Self::Nominative => None,
            Self::Pseudonymized {
                export,
                shift_dates,
            } => {
                let digest = patient_digest(export, patient_id);
                Some(PatientKey {
                    patient_id,
                    pseudonym: hex16(&digest),
                    shift_days: shift_dates.then(|| shift_of(&digest)),
                })
            }
        }
    }

    /// A patient id as written: the pseudonym of the row's patient, or of another patient.
    fn person(&self, id: i64, key: Option<&PatientKey>) -> Cell {
        match (self, key) {
            (_, Some(k)) if k.patient_id == id => Cell::Text(k.pseudonym.clone()),
            (Self::Pseudonymized { export, .. }, _) => Cell::Text(pseudonym(*export, id)),
            (Self::Nominative, _) => Cell::Int(id),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// One value of a row, as written.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    Date(NaiveDate),
    /// A date of which only the year and month are written (`YYYY-MM`).
    YearMonth(NaiveDate),
    DateTime(DateTime<Utc>),
}

impl Cell {
    /// The value's text (nothing for NULL): what a CSV field holds, and what an XLSX cell holds
    /// for dates.
    fn render(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _infallible = match self {
            Self::Null => Ok(()),
            Self::Int(n) => write!(out, "{n}"),
            Self::Float(f) => write!(out, "{f}"),
            Self::Bool(b) => write!(out, "{b}"),
            Self::Text(s) => {
                out.push_str(s);
                Ok(())
            }
            Self::Date(d) => write!(out, "{}", d.format("%Y-%m-%d")),
            Self::YearMonth(d) => write!(out, "{:04}-{:02}", d.year(), d.month()),
            Self::DateTime(t) => {
                out.push_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
                Ok(())
            }
        };
    }
}

/// A date moved by the patient's shift; `None` if it would leave chrono's range (then the date
/// is not written at all rather than written unshifted).
fn shift_date(d: NaiveDate, key: Option<&PatientKey>) -> Option<NaiveDate> {
    match key.and_then(|k| k.shift_days) {
        None => Some(d),
        Some(days) => d.checked_add_signed(TimeDelta::try_days(days)?),
    }
}

/// An instant moved like [`shift_date`].
fn shift_instant(t: DateTime<Utc>, key: Option<&PatientKey>) -> Option<DateTime<Utc>> {
    match key.and_then(|k| k.shift_days) {
        None => Some(t),
        Some(days) => t.checked_add_signed(TimeDelta::try_days(days)?),
    }
}

/// A value as it is read from the store, before protection.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Date(Option<NaiveDate>),
    DateTime(Option<DateTime<Utc>>),
}

/// Column `at` of a row, read as its kind says.
fn read_raw(row: &PgRow, at: usize, kind: ColumnKind) -> Result<Raw, sqlx::Error> {
    Ok(match kind {
        K::Integer | K::PersonId => Raw::Int(row.try_get(at)?),
        K::Decimal => Raw::Float(row.try_get(at)?),
        K::Boolean => Raw::Bool(row.try_get(at)?),
        K::Text | K::Identifying => Raw::Text(row.try_get(at)?),
        K::Date | K::BirthDate => Raw::Date(row.try_get(at)?),
        K::DateTime => Raw::DateTime(row.try_get(at)?),
    })
}

/// The value written for a raw value of a column of `kind`: unchanged in nominative exports
/// (`key` is `None`), protected in pseudonymized ones.
fn protect(kind: ColumnKind, raw: Raw, privacy: &Privacy, key: Option<&PatientKey>) -> Cell {
    let pseudonymized = key.is_some();
    match raw {
        Raw::Int(None)
        | Raw::Float(None)
        | Raw::Bool(None)
        | Raw::Text(None)
        | Raw::Date(None)
        | Raw::DateTime(None) => Cell::Null,
        Raw::Int(Some(id)) if kind == K::PersonId => privacy.person(id, key),
        Raw::Int(Some(n)) => Cell::Int(n),
        Raw::Float(Some(f)) => Cell::Float(f),
        Raw::Bool(Some(b)) => Cell::Bool(b),
        // Defence in depth: the plan already removed these columns.
        Raw::Text(Some(_)) if pseudonymized && kind == K::Identifying => Cell::Null,
        Raw::Text(Some(s)) => Cell::Text(s),
        Raw::Date(Some(d)) => match (shift_date(d, key), pseudonymized && kind == K::BirthDate) {
            (None, _) => Cell::Null,
            (Some(d), true) => Cell::YearMonth(d),
            (Some(d), false) => Cell::Date(d),
        },
        Raw::DateTime(Some(t)) => shift_instant(t, key).map_or(Cell::Null, Cell::DateTime),
    }
}

/// A row's cells, in the plan's column order (the row's column 0 is its patient's id).
fn decode_row(
    row: &PgRow,
    table: &TablePlan,
    privacy: &Privacy,
    out: &mut Vec<Cell>,
) -> Result<(), sqlx::Error> {
    out.clear();
    let patient_id: i64 = row.try_get(0)?;
    let key = privacy.key(patient_id);
    for (i, c) in table.columns.iter().enumerate() {
        let raw = read_raw(row, i + 1, c.kind)?;
        out.push(protect(c.kind, raw, privacy, key.as_ref()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading the rows
// ---------------------------------------------------------------------------------------------

/// A scope that restricts nothing: every perimeter, removed ones included (the owner's rights
/// were checked when the export was validated).
async fn unrestricted_scope(pool: &PgPool) -> Result<ReadScope, String> {
    let all: Vec<i64> = sqlx::query_scalar("SELECT id FROM identity.perimeters")
        .fetch_all(pool)
        .await
        .map_err(|e| format!("cannot read the perimeters: {e}"))?;
    Ok(ReadScope {
        readable: all.clone(),
        nominative: all,
    })
}

/// The query of a table's rows: its patient's id, then its columns, for the cohort's patients,
/// filtered, ordered by id.
fn table_query<'a>(
    t: &'a TablePlan,
    scope: &'a ReadScope,
    codes: &ResolvedCodes,
) -> Result<QueryBuilder<'a, Postgres>, String> {
    let mut q = QueryBuilder::new("SELECT c.id::bigint");
    for c in &t.columns {
        q.push(", ").push(c.sql);
    }
    from_scope(&mut q, t.spec.resource, scope);
    q.push(" AND c.id IN (SELECT patient_id FROM clinical.cohort_members WHERE group_id = ")
        .push_bind(t.group_id)
        .push(")");
    push_filters(&mut q, t.spec.resource, &t.params, scope, codes)
        .map_err(|e| format!("table {}: its filter cannot be applied: {e}", t.stem))?;
    q.push(" ORDER BY ").push(t.spec.order_by());
    Ok(q)
}

/// What travels from the SQL stream to the writer.
enum Batch {
    Rows(Vec<PgRow>),
    /// The current table's rows are all sent.
    End,
}

/// Why the reading side stopped.
enum ReadFailure {
    /// The database failed: the export's message.
    Sql(String),
    /// The writer stopped first (its own error says why).
    WriterGone,
}

/// Streams every table's rows, in the plan's order, to the writer; each table ends with
/// [`Batch::End`]. Never holds more than one batch.
async fn read_tables(
    pool: &PgPool,
    plan: &ExportPlan,
    scope: &ReadScope,
    tx: mpsc::Sender<Batch>,
) -> Result<(), ReadFailure> {
    let sql = |e: sqlx::Error| ReadFailure::Sql(format!("cannot read the export's tables: {e}"));
    // One transaction: the tables are read from the same snapshot, and may take long.
    let mut conn = pool.begin().await.map_err(sql)?;
    crate::db::without_statement_timeout(&mut conn)
        .await
        .map_err(sql)?;
    let terminology = PgTerminology::new(pool.clone());
    for t in &plan.tables {
        // Codes select their descendants, as in counts and FHIR searches.
        let codes = ResolvedCodes::of(&terminology, t.spec.resource, &t.params)
            .await
            .map_err(|e| ReadFailure::Sql(format!("cannot read the terminologies: {e}")))?;
        let mut q = table_query(t, scope, &codes).map_err(ReadFailure::Sql)?;
        let mut rows = q.build().fetch(&mut *conn);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.next().await {
            let row =
                row.map_err(|e| ReadFailure::Sql(format!("cannot read table {}: {e}", t.stem)))?;
            batch.push(row);
            if batch.len() == BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                tx.send(Batch::Rows(full))
                    .await
                    .map_err(|_| ReadFailure::WriterGone)?;
            }
        }
        if !batch.is_empty() {
            tx.send(Batch::Rows(batch))
                .await
                .map_err(|_| ReadFailure::WriterGone)?;
        }
        tx.send(Batch::End)
            .await
            .map_err(|_| ReadFailure::WriterGone)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing the archive (blocking)
// ---------------------------------------------------------------------------------------------

/// A writer that counts the bytes written through it (the uncompressed size of an entry).
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Rows written per table while the export runs (read by `logs`).
#[derive(Debug)]
struct Progress {
    rows: Vec<AtomicU64>,
}

impl Progress {
    fn new(tables: usize) -> Self {
        Self {
            rows: (0..tables).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, table: usize, rows: u64) {
        if let Some(r) = self.rows.get(table) {
            r.fetch_add(rows, Ordering::Relaxed);
        }
    }

    fn rows(&self, table: usize) -> u64 {
        self.rows
            .get(table)
            .map_or(0, |r| r.load(Ordering::Relaxed))
    }
}

/// What writing an archive produced.
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    rows: u64,
    /// Bytes of the entries before compression.
    uncompressed_bytes: u64,
    /// Bytes of the archive (set once it is renamed into place).
    archive_bytes: u64,
}

/// The next batch of the current table; `None` at its end.
fn next_batch(rx: &mut mpsc::Receiver<Batch>) -> Result<Option<Vec<PgRow>>, String> {
    match rx.blocking_recv() {
        Some(Batch::Rows(rows)) => Ok(Some(rows)),
        Some(Batch::End) => Ok(None),
        None => Err(INTERRUPTED.into()),
    }
}

/// Entries with ZIP64 sizes (a table may exceed 4 GiB), dated now, compressed with `method`:
/// CSV files are deflated; XLSX workbooks are zip archives already, stored as they are.
fn entry_options(method: zip::CompressionMethod) -> SimpleFileOptions {
    let now = Utc::now();
    let modified = zip::DateTime::from_date_and_time(
        u16::try_from(now.year()).unwrap_or(1980),
        now.month() as u8,
        now.day() as u8,
        now.hour() as u8,
        now.minute() as u8,
        now.second() as u8,
    )
    .unwrap_or_default();
    SimpleFileOptions::default()
        .compression_method(method)
        .large_file(true)
        .last_modified_time(modified)
}

/// Everything the blocking writer needs.
struct ArchiveWriter<'a> {
    plan: &'a ExportPlan,
    progress: &'a Progress,
    /// Where XLSX worksheets keep their rows until the workbook is saved (next to the archive,
    /// so that big exports do not fill the system's temporary directory).
    tempdir: &'a Path,
}

impl ArchiveWriter<'_> {
    /// Writes the archive at `path` from the batches, table after table; the archive is only
    /// finished once every table has ended.
    fn write(&self, path: &Path, mut rx: mpsc::Receiver<Batch>) -> Result<Written, String> {
        let file = File::create(path).map_err(|e| format!("cannot create the archive: {e}"))?;
        let mut zip = ZipWriter::new(file);
        let mut written = Written::default();
        for (i, t) in self.plan.tables.iter().enumerate() {
            let (rows, bytes) = match self.plan.kind {
                FileKind::Csv => self.write_csv(&mut zip, i, t, &mut rx),
                FileKind::Xlsx => self.write_xlsx(&mut zip, i, t, &mut rx),
            }?;
            written.rows += rows;
            written.uncompressed_bytes += bytes;
        }
        let file = zip
            .finish()
            .map_err(|e| format!("cannot finish the archive: {e}"))?;
        file.sync_all()
            .map_err(|e| format!("cannot write the archive: {e}"))?;
        Ok(written)
    }

    /// One CSV entry, rows streamed into it; returns its rows and uncompressed bytes.
    fn write_csv(
        &self,
        zip: &mut ZipWriter<File>,
        index: usize,
        t: &TablePlan,
        rx: &mut mpsc::Receiver<Batch>,
    ) -> Result<(u64, u64), String> {
        let entry = format!("{}.{}", t.stem, FileKind::Csv.extension());
        let fail = |e: &dyn std::fmt::Display| format!("cannot write {entry}: {e}");
        zip.start_file(
            entry.as_str(),
            entry_options(zip::CompressionMethod::Deflated),
        )
        .map_err(|e| fail(&e))?;
        let mut out = csv::Writer::from_writer(Counting {
            inner: &mut *zip,
            bytes: 0,
        });
        out.write_record(t.columns.iter().map(|c| c.name))
            .map_err(|e| fail(&e))?;
        let mut cells = Vec::with_capacity(t.columns.len());
        let mut field = String::new();
        let mut rows = 0;
        while let Some(batch) = next_batch(rx)? {
            for row in &batch {
                decode_row(row, t, &self.plan.privacy, &mut cells)
                    .map_err(|e| format!("cannot read a row of {}: {e}", t.stem))?;
                for c in &cells {
                    field.clear();
                    c.render(&mut field);
                    out.write_field(field.as_bytes()).map_err(|e| fail(&e))?;
                }
                out.write_record(None::<&[u8]>).map_err(|e| fail(&e))?;
            }
            rows += batch.len() as u64;
            self.progress.add(index, batch.len() as u64);
        }
        let counted = out.into_inner().map_err(|e| fail(e.error()))?;
        Ok((rows, counted.bytes))
    }

    /// One XLSX entry: the rows go to constant-memory worksheets, then the workbook is saved
    /// straight into the archive's entry; returns its rows and uncompressed bytes.
    fn write_xlsx(
        &self,
        zip: &mut ZipWriter<File>,
        index: usize,
        t: &TablePlan,
        rx: &mut mpsc::Receiver<Batch>,
    ) -> Result<(u64, u64), String> {
        let entry = format!("{}.{}", t.stem, FileKind::Xlsx.extension());
        let fail = |e: &dyn std::fmt::Display| format!("cannot write {entry}: {e}");
        let mut book = XlsxTable::new(t, self.tempdir).map_err(|e| fail(&e))?;
        let mut cells = Vec::with_capacity(t.columns.len());
        let mut rows = 0;
        while let Some(batch) = next_batch(rx)? {
            for row in &batch {
                decode_row(row, t, &self.plan.privacy, &mut cells)
                    .map_err(|e| format!("cannot read a row of {}: {e}", t.stem))?;
                book.push(t, &mut cells).map_err(|e| fail(&e))?;
            }
            rows += batch.len() as u64;
            self.progress.add(index, batch.len() as u64);
        }
        zip.start_file(
            entry.as_str(),
            entry_options(zip::CompressionMethod::Stored),
        )
        .map_err(|e| fail(&e))?;
        let mut counted = Counting {
            inner: &mut *zip,
            bytes: 0,
        };
        book.workbook
            .save_to_writer(&mut counted)
            .map_err(|e| fail(&e))?;
        Ok((rows, counted.bytes))
    }
}

/// A table's workbook being filled, worksheet after worksheet.
struct XlsxTable {
    workbook: Workbook,
    bold: Format,
    /// The worksheet being filled, and its next row.
    sheet: usize,
    row: u32,
    /// Text of the current date value (reused).
    text: String,
}

impl XlsxTable {
    /// A workbook with its first worksheet and header row.
    fn new(t: &TablePlan, tempdir: &Path) -> Result<Self, XlsxError> {
        let mut workbook = Workbook::new();
        workbook.set_tempdir(tempdir)?;
        let mut book = Self {
            workbook,
            bold: Format::new().set_bold(),
            sheet: 0,
            row: 1,
            text: String::new(),
        };
        book.add_sheet(t)?;
        Ok(book)
    }

    /// The `n`-th worksheet's name (from 0): the table's name, then `name (2)`… within Excel's
    /// 31 characters.
    fn sheet_name(table: &str, n: usize) -> String {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!(" ({})", n + 1)
        };
        let room = XLSX_MAX_SHEET_NAME.saturating_sub(suffix.chars().count());
        let mut name: String = table.chars().take(room).collect();
        name.push_str(&suffix);
        name
    }

    /// A new constant-memory worksheet with the header row; the following rows go there.
    fn add_sheet(&mut self, t: &TablePlan) -> Result<(), XlsxError> {
        let n = self.workbook.worksheets().len();
        let sheet = self.workbook.add_worksheet_with_constant_memory()?;
        sheet.set_name(Self::sheet_name(t.spec.name, n))?;
        for (i, c) in t.columns.iter().enumerate() {
            sheet.write_string_with_format(0, column_number(i)?, c.name, &self.bold)?;
        }
        self.sheet = n;
        self.row = 1;
        Ok(())
    }

    /// Appends a row (its cells are moved out), on a new worksheet when the current one is full.
    fn push(&mut self, t: &TablePlan, cells: &mut Vec<Cell>) -> Result<(), XlsxError> {
        if self.row >= XLSX_MAX_ROWS {
            self.add_sheet(t)?;
        }
        let row = self.row;
        let sheet = self.workbook.worksheet_from_index(self.sheet)?;
        for (i, cell) in cells.drain(..).enumerate() {
            write_xlsx_cell(sheet, row, column_number(i)?, cell, &mut self.text)?;
        }
        self.row += 1;
        Ok(())
    }
}

/// A column index as Excel's column number.
fn column_number(i: usize) -> Result<u16, XlsxError> {
    u16::try_from(i).map_err(|_| XlsxError::ParameterError(format!("column {i} is too far")))
}

/// One cell: numbers as numbers (when exact), booleans as booleans, text as text, dates as text
/// in the CSV's formats; nothing for NULL.
fn write_xlsx_cell(
    sheet: &mut Worksheet,
    row: u32,
    col: u16,
    cell: Cell,
    text: &mut String,
) -> Result<(), XlsxError> {
    match cell {
        Cell::Null => {}
        Cell::Int(n) if n.unsigned_abs() <= XLSX_MAX_EXACT_INT => {
            sheet.write_number(row, col, n as f64)?;
        }
        Cell::Float(f) if f.is_finite() => {
            sheet.write_number(row, col, f)?;
        }
        Cell::Bool(b) => {
            sheet.write_boolean(row, col, b)?;
        }
        Cell::Text(s) => {
            sheet.write_string(row, col, s)?;
        }
        other => {
            text.clear();
            other.render(text);
            sheet.write_string(row, col, text.as_str())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The exporter
// ---------------------------------------------------------------------------------------------

/// What a task is, for its logs.
#[derive(Debug)]
struct TaskInfo {
    export: Uuid,
    format: ExportFormat,
    nominative: bool,
    shift_dates: bool,
    target: String,
    stems: Vec<String>,
    started_at: DateTime<Utc>,
    progress: Arc<Progress>,
}

/// How a task ended.
#[derive(Debug)]
struct TaskEnd {
    report: ExportReport,
    finished_at: DateTime<Utc>,
    written: Option<Written>,
}

/// What the exporter knows of a task (since this process started).
#[derive(Debug)]
struct Task {
    info: TaskInfo,
    end: Option<TaskEnd>,
}

struct Inner {
    pool: PgPool,
    root: PathBuf,
    tasks: Mutex<HashMap<String, Task>>,
}

/// Writes exports as zip archives of CSV or XLSX files under a local directory.
pub struct BuiltinExporter {
    inner: Arc<Inner>,
}

impl BuiltinExporter {
    /// An exporter reading the clinical store of `pool`, writing archives under `root`.
    pub fn new(pool: PgPool, root: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                root,
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The directory archives are written under.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

/// A poisoned lock still holds a usable table (a task's entry is replaced whole).
fn lock(tasks: &Mutex<HashMap<String, Task>>) -> MutexGuard<'_, HashMap<String, Task>> {
    tasks.lock().unwrap_or_else(|p| p.into_inner())
}

fn stat(name: impl Into<String>, kind: StatKind, value: u64) -> ExportStat {
    ExportStat {
        name: name.into(),
        kind,
        value: value.to_string(),
    }
}

/// The stats of a finished export: rows per table, archive size, total rows, table count.
fn finished_stats(plan: &ExportPlan, progress: &Progress, written: &Written) -> Vec<ExportStat> {
    let mut stats: Vec<ExportStat> = plan
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            stat(
                format!("{}.rows", t.stem),
                StatKind::Integer,
                progress.rows(i),
            )
        })
        .collect();
    stats.push(stat(
        "archive.bytes",
        StatKind::SizeBytes,
        written.archive_bytes,
    ));
    stats.push(stat("rows", StatKind::Integer, written.rows));
    stats.push(stat("tables", StatKind::Integer, plan.tables.len() as u64));
    stats
}

impl Inner {
    /// Runs an export to its end: the archive in place, or an error message (and no archive).
    async fn run(&self, plan: Arc<ExportPlan>, progress: Arc<Progress>) -> Result<Written, String> {
        let target = self.root.join(&plan.target);
        let dir = target
            .parent()
            .map_or_else(|| self.root.clone(), Path::to_path_buf);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot create the export directory: {e}"))?;
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{file_name}.{}.tmp", Uuid::new_v4()));
        let result = match self.write(plan, progress, &temp, &dir).await {
            Ok(written) => tokio::fs::rename(&temp, &target)
                .await
                .map(|()| written)
                .map_err(|e| format!("cannot move the archive into place: {e}")),
            Err(message) => Err(message),
        };
        let mut written = match result {
            Ok(w) => w,
            Err(message) => {
                remove_temp(&temp).await;
                return Err(message);
            }
        };
        written.archive_bytes = tokio::fs::metadata(&target)
            .await
            .map_err(|e| format!("cannot read the archive's size: {e}"))?
            .len();
        Ok(written)
    }

    /// Reads the rows (async) and writes the archive at `temp` (blocking thread) together.
    async fn write(
        &self,
        plan: Arc<ExportPlan>,
        progress: Arc<Progress>,
        temp: &Path,
        dir: &Path,
    ) -> Result<Written, String> {
        let scope = unrestricted_scope(&self.pool).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let writer = {
            let plan = plan.clone();
            let temp = temp.to_path_buf();
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || {
                ArchiveWriter {
                    plan: &plan,
                    progress: &progress,
                    tempdir: &dir,
                }
                .write(&temp, rx)
            })
        };
        let read = read_tables(&self.pool, &plan, &scope, tx).await;
        let written = writer
            .await
            .map_err(|e| format!("the archive writer stopped: {e}"))?;
        match (read, written) {
            (Err(ReadFailure::Sql(message)), _) => Err(message),
            (_, Err(message)) => Err(message),
            (Ok(()), Ok(w)) => Ok(w),
            (Err(ReadFailure::WriterGone), Ok(_)) => Err(INTERRUPTED.into()),
        }
    }
}

/// Removes a failed export's temporary archive, if it was created.
async fn remove_temp(temp: &Path) {
    if let Err(e) = tokio::fs::remove_file(temp).await
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %temp.display(), error = %e, "cannot remove a failed export's temporary archive");
    }
}

/// A task's logs: what it exports, how far it got, how it ended.
fn task_log(task_id: &str, task: &Task) -> Value {
    let info = &task.info;
    let tables: Vec<Value> = info
        .stems
        .iter()
        .enumerate()
        .map(|(i, stem)| json!({"name": stem, "rows": info.progress.rows(i)}))
        .collect();
    let mut log = json!({
        "task_id": task_id,
        "exporter": "builtin",
        "export": info.export,
        "format": info.format.as_str(),
        "nominative": info.nominative,
        "shift_dates": info.shift_dates,
        "target": info.target,
        "tables": tables,
        "started_at": info.started_at,
        "status": JobStatus::Started.as_str(),
    });
    if let Some(end) = &task.end {
        let seconds = (end.finished_at - info.started_at).num_milliseconds() as f64 / 1000.0;
        log["status"] = json!(end.report.status.unwrap_or(JobStatus::Unknown).as_str());
        log["message"] = json!(end.report.message);
        log["finished_at"] = json!(end.finished_at);
        log["seconds"] = json!(seconds);
        if let Some(w) = &end.written {
            log["rows"] = json!(w.rows);
            log["uncompressed_bytes"] = json!(w.uncompressed_bytes);
            log["archive_bytes"] = json!(w.archive_bytes);
        }
    }
    log
}

#[async_trait]
impl Exporter for BuiltinExporter {
    fn check_tables(&self, _format: ExportFormat, tables: &[ExportJobTable]) -> Result<(), String> {
        check_builtin_tables(tables)
    }

    async fn submit(&self, job: ExportJob) -> Result<String, ExporterError> {
        let plan = Arc::new(ExportPlan::new(&job).map_err(ExporterError::Refused)?);
        let task_id = Uuid::new_v4().to_string();
        let progress = Arc::new(Progress::new(plan.tables.len()));
        let info = TaskInfo {
            export: plan.export,
            format: plan.format,
            nominative: job.nominative,
            shift_dates: job.shift_dates,
            target: plan.target.display().to_string(),
            stems: plan.tables.iter().map(|t| t.stem.clone()).collect(),
            started_at: Utc::now(),
            progress: progress.clone(),
        };
        tracing::info!(task = %task_id, export = %plan.export, format = plan.format.as_str(), tables = plan.tables.len(), "built-in export started");
        let inner = self.inner.clone();
        let id = task_id.clone();
        // Hold the table while spawning, so that a fast task cannot record its end before its
        // start is known.
        let mut tasks = lock(&self.inner.tasks);
        tokio::spawn(async move {
            // Run in a task of its own, so that even a panic ends as a failed export.
            let run = {
                let inner = inner.clone();
                let plan = plan.clone();
                let progress = progress.clone();
                tokio::spawn(async move { inner.run(plan, progress).await })
            };
            let outcome = run
                .await
                .unwrap_or_else(|e| Err(format!("the export task stopped: {e}")));
            let (report, written) = match outcome {
                Ok(w) => {
                    tracing::info!(task = %id, rows = w.rows, archive_bytes = w.archive_bytes, "built-in export finished");
                    let report = ExportReport {
                        status: Some(JobStatus::Finished),
                        message: None,
                        stats: finished_stats(&plan, &progress, &w),
                    };
                    (report, Some(w))
                }
                Err(message) => {
                    tracing::warn!(task = %id, message = %message, "built-in export failed");
                    let report = ExportReport {
                        status: Some(JobStatus::Failed),
                        message: Some(message),
                        stats: Vec::new(),
                    };
                    (report, None)
                }
            };
            if let Some(task) = lock(&inner.tasks).get_mut(&id) {
                task.end = Some(TaskEnd {
                    report,
                    finished_at: Utc::now(),
                    written,
                });
            }
        });
        tasks.insert(task_id.clone(), Task { info, end: None });
        Ok(task_id)
    }

    async fn status(&self, task_id: &str) -> Result<Option<ExportReport>, ExporterError> {
        let tasks = lock(&self.inner.tasks);
        Ok(tasks.get(task_id).map(|t| match &t.end {
            Some(end) => end.report.clone(),
            None => ExportReport {
                status: Some(JobStatus::Started),
                ..ExportReport::default()
            },
        }))
    }

    async fn logs(&self, task_id: &str) -> Result<Value, ExporterError> {
        let tasks = lock(&self.inner.tasks);
        Ok(match tasks.get(task_id) {
            Some(task) => task_log(task_id, task),
            None => json!({
                "task_id": task_id,
                "exporter": "builtin",
                "status": JobStatus::Unknown.as_str(),
                "message": "unknown task: the built-in exporter keeps its tasks in memory, they are lost on restart",
            }),
        })
    }

    async fn hand_over(&self, _job: &ExportJob) -> Result<(), ExporterError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, columns: Option<&[&str]>, filter: Option<(&str, &str)>) -> ExportJobTable {
        ExportJobTable {
            name: name.into(),
            columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            cohort_group_id: Some("1000001".into()),
            filter: filter.map(|(r, f)| (r.to_string(), f.to_string())),
            respect_table_relationships: true,
            pivot_merge: false,
            pivot_merge_columns: vec![],
            pivot_merge_ids: vec![],
        }
    }

    fn job(nominative: bool, tables: Vec<ExportJobTable>) -> ExportJob {
        ExportJob {
            export: Uuid::from_u128(42),
            owner: "u1".into(),
            format: ExportFormat::Csv,
            nominative,
            shift_dates: false,
            group_tables: false,
            target_name: "u1_20260101_000000000000".into(),
            target_location: "exports/csv".into(),
            datalab: None,
            tables,
        }
    }

    #[test]
    fn the_catalog_lists_six_tables_with_their_columns_in_order() {
        let names: Vec<&str> = builtin_tables().iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "person",
                "visit_occurrence",
                "condition_occurrence",
                "measurement",
                "drug_exposure_prescription",
                "procedure_occurrence"
            ]
        );
        let person = builtin_table("person").unwrap();
        assert_eq!(person.fhir_type(), "Patient");
        assert_eq!(
            person.column_names().collect::<Vec<_>>(),
            [
                "person_id",
                "ipp",
                "gender",
                "birth_date",
                "death_date",
                "deceased",
                "family_name",
                "given_name",
                "care_site_id"
            ]
        );
        assert_eq!(
            builtin_table("measurement").unwrap().fhir_type(),
            "Observation"
        );
        for t in builtin_tables() {
            assert!(
                t.columns.iter().filter(|c| c.kind == K::PersonId).count() == 1,
                "{} has one person_id",
                t.name
            );
            assert!(t.name.len() <= XLSX_MAX_SHEET_NAME);
        }
    }

    #[test]
    fn tables_columns_and_filters_are_checked() {
        assert!(check_builtin_tables(&[table("person", None, None)]).is_ok());
        assert!(check_builtin_tables(&[]).is_err());
        let err = check_builtin_tables(&[table("note", None, None)]).unwrap_err();
        assert!(
            err.contains("`note`") && err.contains("condition_occurrence"),
            "lists the known tables: {err}"
        );
        let err = check_builtin_tables(&[table("person", Some(&["person_id", "shoe_size"]), None)])
            .unwrap_err();
        assert!(err.contains("`shoe_size`"), "{err}");
        assert!(check_builtin_tables(&[table("person", Some(&[]), None)]).is_err());
        let ok = table(
            "condition_occurrence",
            None,
            Some(("Condition", "code=E11&_count=10")),
        );
        assert!(check_builtin_tables(&[ok]).is_ok());
        let wrong = table(
            "condition_occurrence",
            None,
            Some(("Observation", "code=E11")),
        );
        let err = check_builtin_tables(&[wrong]).unwrap_err();
        assert!(err.contains("Observation"), "{err}");
        let refused = table(
            "condition_occurrence",
            None,
            Some(("Condition", "code:text=diabetes")),
        );
        assert!(check_builtin_tables(&[refused]).is_err());
        let unknown_param = table("person", None, Some(("Patient", "shoe-size=42")));
        assert!(check_builtin_tables(&[unknown_param]).is_err());
        let bad_date = table(
            "visit_occurrence",
            None,
            Some(("Encounter", "date=ge2024-13-45")),
        );
        assert!(check_builtin_tables(&[bad_date]).is_err());
    }

    #[test]
    fn a_plan_drops_identifying_columns_of_pseudonymized_exports() {
        let asked = &["ipp", "person_id", "family_name", "birth_date", "person_id"][..];
        let nominative =
            ExportPlan::new(&job(true, vec![table("person", Some(asked), None)])).unwrap();
        let names: Vec<&str> = nominative.tables[0]
            .columns
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["ipp", "person_id", "family_name", "birth_date"]);
        assert_eq!(
            nominative.target,
            PathBuf::from("exports/csv/u1_20260101_000000000000.zip")
        );

        let pseudo =
            ExportPlan::new(&job(false, vec![table("person", Some(asked), None)])).unwrap();
        let names: Vec<&str> = pseudo.tables[0].columns.iter().map(|c| c.name).collect();
        assert_eq!(names, ["person_id", "birth_date"]);
        let all = ExportPlan::new(&job(false, vec![table("person", None, None)])).unwrap();
        assert!(
            all.tables[0]
                .columns
                .iter()
                .all(|c| c.kind != K::Identifying)
        );

        let only_names = job(
            false,
            vec![table("person", Some(&["ipp", "given_name"]), None)],
        );
        assert!(ExportPlan::new(&only_names).is_err());
    }

    #[test]
    fn a_plan_needs_cohorts_and_a_safe_target() {
        let mut no_cohort = table("person", None, None);
        no_cohort.cohort_group_id = None;
        assert!(ExportPlan::new(&job(true, vec![no_cohort])).is_err());
        let mut bad_group = table("person", None, None);
        bad_group.cohort_group_id = Some("abc".into());
        assert!(ExportPlan::new(&job(true, vec![bad_group])).is_err());

        let mut up = job(true, vec![table("person", None, None)]);
        up.target_location = "exports/../../etc".into();
        assert!(ExportPlan::new(&up).is_err());
        let mut absolute = job(true, vec![table("person", None, None)]);
        absolute.target_location = "/var/exports".into();
        assert!(ExportPlan::new(&absolute).is_err());
        let mut named_up = job(true, vec![table("person", None, None)]);
        named_up.target_name = "../../x".into();
        named_up.target_location = "exports".into();
        assert!(ExportPlan::new(&named_up).is_err());
    }

    #[test]
    fn a_table_named_twice_gets_a_numbered_entry() {
        assert_eq!(
            stems(["person", "measurement", "person", "person"].into_iter()),
            ["person", "measurement", "person_2", "person_3"]
        );
    }

    #[test]
    fn pseudonyms_are_stable_within_an_export_and_differ_between_exports() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let p = pseudonym(a, 7);
        assert_eq!(p.len(), 16);
        assert!(
            p.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(p, pseudonym(a, 7), "stable within an export");
        assert_ne!(p, pseudonym(b, 7), "different between exports");
        assert_ne!(p, pseudonym(a, 8), "different between patients");
        // The definition: SHA-256(export bytes ‖ patient id big-endian), first 8 bytes in hex.
        let digest = Sha256::new()
            .chain_update(a.as_bytes())
            .chain_update(7_i64.to_be_bytes())
            .finalize();
        let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p, expected);
    }

    #[test]
    fn date_shifts_are_stable_bounded_and_spread() {
        let e = Uuid::from_u128(3);
        let shifts: Vec<i64> = (0..2000).map(|p| date_shift_days(e, p)).collect();
        assert!(shifts.iter().all(|d| (-30..=30).contains(d)));
        assert!(shifts.contains(&-30) && shifts.contains(&30) && shifts.contains(&0));
        assert_eq!(date_shift_days(e, 5), date_shift_days(e, 5));
        let key = Privacy::Pseudonymized {
            export: e,
            shift_dates: true,
        }
        .key(5)
        .unwrap();
        assert_eq!(key.shift_days, Some(date_shift_days(e, 5)));
        assert_eq!(key.pseudonym, pseudonym(e, 5));
        let unshifted = Privacy::Pseudonymized {
            export: e,
            shift_dates: false,
        };
        assert_eq!(unshifted.key(5).unwrap().shift_days, None);
        assert_eq!(Privacy::Nominative.key(5), None);
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn protection_pseudonymizes_ids_truncates_birth_dates_and_shifts_every_date_alike() {
        let e = Uuid::from_u128(9);
        let patient = (0..).find(|p| date_shift_days(e, *p) != 0).unwrap();
        let days = date_shift_days(e, patient);
        let privacy = Privacy::Pseudonymized {
            export: e,
            shift_dates: true,
        };
        let key = privacy.key(patient);
        let k = key.as_ref();
        assert_eq!(
            protect(K::PersonId, Raw::Int(Some(patient)), &privacy, k),
            Cell::Text(pseudonym(e, patient))
        );
        assert_eq!(
            protect(K::Integer, Raw::Int(Some(patient)), &privacy, k),
            Cell::Int(patient),
            "other ids are kept"
        );
        let d = date(2020, 6, 15);
        let shifted = d + TimeDelta::days(days);
        assert_eq!(
            protect(K::Date, Raw::Date(Some(d)), &privacy, k),
            Cell::Date(shifted)
        );
        assert_eq!(
            protect(K::BirthDate, Raw::Date(Some(d)), &privacy, k),
            Cell::YearMonth(shifted)
        );
        let t = DateTime::parse_from_rfc3339("2021-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            protect(K::DateTime, Raw::DateTime(Some(t)), &privacy, k),
            Cell::DateTime(t + TimeDelta::days(days))
        );
        assert_eq!(
            protect(
                K::Identifying,
                Raw::Text(Some("Dupont".into())),
                &privacy,
                k
            ),
            Cell::Null
        );
        assert_eq!(protect(K::Date, Raw::Date(None), &privacy, k), Cell::Null);

        let nominative = Privacy::Nominative;
        assert_eq!(
            protect(K::PersonId, Raw::Int(Some(patient)), &nominative, None),
            Cell::Int(patient)
        );
        assert_eq!(
            protect(K::BirthDate, Raw::Date(Some(d)), &nominative, None),
            Cell::Date(d)
        );
        assert_eq!(
            protect(
                K::Identifying,
                Raw::Text(Some("Dupont".into())),
                &nominative,
                None
            ),
            Cell::Text("Dupont".into())
        );
    }

    #[test]
    fn cells_render_in_the_documented_formats() {
        let text = |c: Cell| {
            let mut s = String::new();
            c.render(&mut s);
            s
        };
        assert_eq!(text(Cell::Null), "");
        assert_eq!(text(Cell::Int(-12)), "-12");
        assert_eq!(text(Cell::Float(6.5)), "6.5");
        assert_eq!(text(Cell::Bool(true)), "true");
        assert_eq!(text(Cell::Date(date(2024, 2, 9))), "2024-02-09");
        assert_eq!(text(Cell::YearMonth(date(1961, 3, 31))), "1961-03");
        let t = DateTime::parse_from_rfc3339("2024-02-09T10:11:12+02:00")
            .unwrap()
            .to_utc();
        assert_eq!(text(Cell::DateTime(t)), "2024-02-09T08:11:12Z");
        let micros = DateTime::parse_from_rfc3339("2024-02-09T08:11:12.250Z")
            .unwrap()
            .to_utc();
        assert_eq!(text(Cell::DateTime(micros)), "2024-02-09T08:11:12.250Z");
    }

    #[test]
    fn worksheet_names_fit_excel() {
        assert_eq!(XlsxTable::sheet_name("measurement", 0), "measurement");
        assert_eq!(XlsxTable::sheet_name("measurement", 1), "measurement (2)");
        let long = XlsxTable::sheet_name("drug_exposure_prescription", 11);
        assert!(
            long.chars().count() <= XLSX_MAX_SHEET_NAME && long.ends_with(" (12)"),
            "{long}"
        );
    }
}
