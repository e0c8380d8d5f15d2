//! The in-memory index of the clinical store: columns per resource, facts sorted by (code,
//! patient, time) so that a code is one contiguous range, and a patient bitmap per code and per
//! perimeter. Loaded whole from Postgres (COPY, text format) for one data version; the executor
//! reloads it when the store's data version changes.

use std::collections::HashMap;
use std::ops::Range;

use chrono::NaiveDate;
use futures::StreamExt;
use roaring::RoaringBitmap;
use sqlx::PgPool;

use super::catalog::FactResource;

/// Patients by id (index 0 unused).
#[derive(Default)]
pub struct Patients {
    pub female: Vec<bool>,
    pub birth: Vec<NaiveDate>,
    pub death: Vec<Option<NaiveDate>>,
    pub perimeter: Vec<i64>,
    /// Rank of the family name in the database's collation (1 = first): `_sort=family` on the
    /// index.
    pub family_rank: Vec<u32>,
    pub by_ipp: HashMap<String, u32>,
    pub all: RoaringBitmap,
}

/// Encounters by id (index 0 unused).
#[derive(Default)]
pub struct Encounters {
    pub patient: Vec<u32>,
    pub class: Vec<u8>,
    pub start: Vec<i64>,
    pub end: Vec<i64>,
    pub episode: Vec<u32>,
    pub classes: Vec<String>,
}

/// One fact resource, sorted by (code, patient, time).
#[derive(Default)]
pub struct Facts {
    pub patient: Vec<u32>,
    pub encounter: Vec<u32>,
    pub at: Vec<i64>,
    pub value: Vec<f32>,
    /// Code → its rows.
    pub codes: HashMap<String, Range<usize>>,
    /// Code → its patients.
    pub code_patients: HashMap<String, RoaringBitmap>,
}

impl Facts {
    pub fn len(&self) -> usize {
        self.patient.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patient.is_empty()
    }
}

pub struct ClinicalIndex {
    pub data_version: i64,
    pub reference_date: NaiveDate,
    pub patients: Patients,
    pub encounters: Encounters,
    pub facts: HashMap<FactResource, Facts>,
    /// Perimeter id → the patients attached to it (not to its descendants).
    pub perimeter_patients: HashMap<i64, RoaringBitmap>,
}

impl ClinicalIndex {
    /// An index of no data (no load yet).
    pub fn empty() -> Self {
        Self {
            data_version: 0,
            reference_date: super::generate::reference_date(),
            patients: Patients::default(),
            encounters: Encounters::default(),
            facts: HashMap::new(),
            perimeter_patients: HashMap::new(),
        }
    }

    /// Approximate heap size, for the benchmark and `/metrics`.
    pub fn memory_bytes(&self) -> u64 {
        let p = &self.patients;
        let mut total = (p.female.len()
            + p.birth.len() * 4
            + p.death.len() * 8
            + p.perimeter.len() * 8
            + p.family_rank.len() * 4) as u64
            + p.by_ipp.len() as u64 * 48
            + p.all.serialized_size() as u64;
        let e = &self.encounters;
        total += (e.patient.len() * 4
            + e.class.len()
            + e.start.len() * 8
            + e.end.len() * 8
            + e.episode.len() * 4) as u64;
        for f in self.facts.values() {
            total += (f.len() * (4 + 4 + 8 + 4)) as u64;
            total += f.codes.len() as u64 * 64;
            total += f
                .code_patients
                .values()
                .map(|b| b.serialized_size() as u64)
                .sum::<u64>();
        }
        total += self
            .perimeter_patients
            .values()
            .map(|b| b.serialized_size() as u64)
            .sum::<u64>();
        total
    }

    pub fn fact_count(&self) -> u64 {
        self.facts.values().map(|f| f.len() as u64).sum()
    }
}

/// The store's current data version and reference date, if anything was loaded.
pub async fn current_version(pool: &PgPool) -> Result<Option<(i64, NaiveDate)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, reference_date FROM clinical.data_versions ORDER BY version DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

const MAX_FIELDS: usize = 12;

/// Streams a `COPY … TO STDOUT` (text format) line by line, as its fields.
async fn copy_lines(
    pool: &PgPool,
    statement: &str,
    mut line: impl FnMut(&[&str]),
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    crate::db::without_statement_timeout(&mut tx).await?;
    let mut stream = tx.copy_out_raw(statement).await?;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk?);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
            let text = std::str::from_utf8(&pending[start..start + pos]).unwrap_or_default();
            let mut fields = [""; MAX_FIELDS];
            let mut n = 0;
            for (slot, value) in fields.iter_mut().zip(text.split('\t')) {
                *slot = value;
                n += 1;
            }
            line(&fields[..n]);
            start += pos + 1;
        }
        pending.drain(..start);
    }
    Ok(())
}

fn seconds(text: &str) -> i64 {
    // "2024-01-02 03:04:05+00"
    chrono::NaiveDateTime::parse_from_str(text.get(..19).unwrap_or(text), "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc().timestamp())
        .unwrap_or(0)
}

fn date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Loads the whole store (the current data version).
pub async fn load(pool: &PgPool) -> Result<ClinicalIndex, sqlx::Error> {
    let Some((data_version, reference_date)) = current_version(pool).await? else {
        return Ok(ClinicalIndex::empty());
    };
    let mut index = ClinicalIndex::empty();
    index.data_version = data_version;
    index.reference_date = reference_date;

    let p = &mut index.patients;
    let perimeter_patients = &mut index.perimeter_patients;
    copy_lines(
        pool,
        "COPY (SELECT id, ipp, gender, birth_date, death_date, perimeter_id,
                      dense_rank() OVER (ORDER BY family_name) FROM clinical.patients ORDER BY id) TO STDOUT",
        |f| {
            let (Some(id), Some(birth), Some(perimeter)) = (
                f.first().and_then(|v| v.parse::<u32>().ok()),
                f.get(3).and_then(|v| date(v)),
                f.get(5).and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return;
            };
            let i = id as usize;
            if p.birth.len() <= i {
                let n = i + 1;
                p.female.resize(n, false);
                p.birth.resize(n, NaiveDate::MIN);
                p.death.resize(n, None);
                p.perimeter.resize(n, 0);
                p.family_rank.resize(n, u32::MAX);
            }
            p.female[i] = f.get(2) == Some(&"f");
            p.birth[i] = birth;
            p.death[i] = f.get(4).and_then(|v| date(v));
            p.perimeter[i] = perimeter;
            p.family_rank[i] = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
            p.by_ipp.insert(f.get(1).unwrap_or(&"").to_string(), id);
            p.all.insert(id);
            perimeter_patients.entry(perimeter).or_default().insert(id);
        },
    )
    .await?;

    let e = &mut index.encounters;
    copy_lines(
        pool,
        "COPY (SELECT id, patient_id, class, start_at, end_at, episode_id FROM clinical.encounters) TO STDOUT",
        |f| {
            let (Some(id), Some(patient)) = (
                f.first().and_then(|v| v.parse::<u32>().ok()),
                f.get(1).and_then(|v| v.parse::<u32>().ok()),
            ) else {
                return;
            };
            let i = id as usize;
            if e.patient.len() <= i {
                let n = (i + 1).max(e.patient.len() * 2);
                e.patient.resize(n, 0);
                e.class.resize(n, 0);
                e.start.resize(n, 0);
                e.end.resize(n, 0);
                e.episode.resize(n, 0);
            }
            let class = f.get(2).copied().unwrap_or_default();
            let class_id = match e.classes.iter().position(|c| c == class) {
                Some(k) => k,
                None => {
                    e.classes.push(class.to_string());
                    e.classes.len() - 1
                }
            };
            e.patient[i] = patient;
            e.class[i] = class_id as u8;
            e.start[i] = f.get(3).map_or(0, |v| seconds(v));
            e.end[i] = f.get(4).map_or(0, |v| seconds(v));
            e.episode[i] = f.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
        },
    )
    .await?;

    // Facts: read unordered (a server-side sort of every fact would cost more), sorted here.
    struct Raw {
        code: u32,
        patient: u32,
        encounter: u32,
        at: i64,
        value: f32,
    }
    let mut raw: HashMap<FactResource, Vec<Raw>> = HashMap::new();
    let mut code_ids: HashMap<String, u32> = HashMap::new();
    let mut code_names: Vec<String> = Vec::new();
    copy_lines(
        pool,
        "COPY (SELECT resource, patient_id, encounter_id, code, at, value FROM clinical.facts) TO STDOUT",
        |f| {
            let Some(resource) = f
                .first()
                .and_then(|v| v.chars().next())
                .and_then(FactResource::from_code)
            else {
                return;
            };
            let code = f.get(3).copied().unwrap_or_default();
            let code = match code_ids.get(code) {
                Some(c) => *c,
                None => {
                    code_names.push(code.to_string());
                    let c = (code_names.len() - 1) as u32;
                    code_ids.insert(code.to_string(), c);
                    c
                }
            };
            raw.entry(resource).or_default().push(Raw {
                code,
                patient: f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
                encounter: f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0),
                at: f.get(4).map_or(0, |v| seconds(v)),
                value: f
                    .get(5)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f32::NAN),
            });
        },
    )
    .await?;
    for (resource, mut rows) in raw {
        rows.sort_unstable_by_key(|r| (r.code, r.patient, r.at));
        let mut facts = Facts {
            patient: Vec::with_capacity(rows.len()),
            encounter: Vec::with_capacity(rows.len()),
            at: Vec::with_capacity(rows.len()),
            value: Vec::with_capacity(rows.len()),
            ..Facts::default()
        };
        let mut start = 0;
        for (i, r) in rows.iter().enumerate() {
            facts.patient.push(r.patient);
            facts.encounter.push(r.encounter);
            facts.at.push(r.at);
            facts.value.push(r.value);
            let last = i + 1 == rows.len() || rows[i + 1].code != r.code;
            if last {
                let name = code_names[r.code as usize].clone();
                let bitmap = RoaringBitmap::from_sorted_iter(dedup(&facts.patient[start..=i]))
                    .unwrap_or_default();
                facts.code_patients.insert(name.clone(), bitmap);
                facts.codes.insert(name, start..i + 1);
                start = i + 1;
            }
        }
        index.facts.insert(resource, facts);
    }
    Ok(index)
}

/// The distinct values of a sorted slice.
fn dedup(sorted: &[u32]) -> impl Iterator<Item = u32> + '_ {
    sorted
        .iter()
        .enumerate()
        .filter(|(i, v)| *i == 0 || sorted[i - 1] != **v)
        .map(|(_, v)| *v)
}
