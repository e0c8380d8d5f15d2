//! `cohort360 generate`: deterministic synthetic clinical data, streamed into the clinical store.
//!
//! The same `--patients` and `--seed` over the same perimeter leaves give the same rows: each
//! patient's data comes from its own ChaCha8 stream (seed, patient id), so nothing depends on
//! batch sizes or timing. Loading replaces the previous data in one transaction (readers see the
//! old data or the new, never a mix) and bumps the data version.
//!
//! Known sub-populations, exact by construction (tests and users can count on them):
//! - patients whose id is a multiple of 10 have type 2 diabetes (ICD-10 `E11`), 1 to 3 times, in
//!   different encounters; nobody else has `E11`;
//! - patients whose id is a multiple of 20 have an HbA1c (LOINC `4548-4`) above 8 %; every other
//!   HbA1c is below 8 %.
//!
//! Other diagnoses are ICD-10 categories; one category in two is subdivided, and its facts then
//! carry a subdivision (`K350`…`K359`) as PMSI coding does: a criterion on the category counts
//! them through the terminology's hierarchy.

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::PgPool;

use super::catalog::{self, FactResource};

/// The date the data is "as of": ages and recency are relative to it, never to the clock.
pub const REFERENCE_DATE: (i32, u32, u32) = (2025, 12, 31);

pub fn reference_date() -> NaiveDate {
    let (y, m, d) = REFERENCE_DATE;
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
}

/// What a load wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub data_version: i64,
    pub patients: u64,
    pub encounters: u64,
    pub facts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "there is no perimeter to place patients in: import perimeters first (`cohort360 import-perimeters` or `cohort360 seed-demo`)"
    )]
    NoPerimeter,
    #[error("--patients must be between 1 and {max}")]
    TooMany { max: u64 },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

const FAMILY_NAMES: &[&str] = &[
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau",
    "Laurent", "Simon", "Michel", "Lefebvre", "Leroy", "Roux", "David", "Bertrand", "Morel",
    "Fournier", "Girard",
];
const GIVEN_F: &[&str] = &[
    "Marie", "Camille", "Léa", "Manon", "Chloé", "Emma", "Inès", "Sarah", "Julie", "Louise",
];
const GIVEN_M: &[&str] = &[
    "Lucas", "Hugo", "Louis", "Nathan", "Gabriel", "Jules", "Arthur", "Adam", "Paul", "Jean",
];

/// Rows are sent to Postgres in chunks of about this many bytes.
const CHUNK: usize = 4 << 20;

/// A COPY text-format stream being filled.
struct CopyBuffer {
    buf: String,
}

impl CopyBuffer {
    fn new() -> Self {
        Self {
            buf: String::with_capacity(CHUNK + 4096),
        }
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// Skewed towards the start of the list: a few frequent codes and a long tail.
fn skewed<'a, T>(rng: &mut ChaCha8Rng, list: &'a [T]) -> &'a T {
    let u: f64 = rng.random();
    &list[((u * u) * list.len() as f64) as usize % list.len()]
}

/// Generates `patients` patients with `seed` and replaces the store's data with them.
pub async fn generate(pool: &PgPool, patients: u64, seed: u64) -> Result<Generated, GenerateError> {
    let max = u64::from(u32::MAX / 64);
    if patients == 0 || patients > max {
        return Err(GenerateError::TooMany { max });
    }
    let leaves: Vec<i64> = sqlx::query_scalar(
        "SELECT p.id FROM identity.perimeters p
         WHERE p.removed_at IS NULL AND NOT EXISTS (
             SELECT 1 FROM identity.perimeters c WHERE c.parent_id = p.id AND c.removed_at IS NULL)
         ORDER BY p.id",
    )
    .fetch_all(pool)
    .await?;
    if leaves.is_empty() {
        return Err(GenerateError::NoPerimeter);
    }
    let mut tx = pool.begin().await?;
    crate::db::without_statement_timeout(&mut tx).await?;
    sqlx::raw_sql(
        "TRUNCATE clinical.patients, clinical.encounters, clinical.facts, clinical.documents;
         DROP INDEX IF EXISTS clinical.documents_patient;
         DROP INDEX IF EXISTS clinical.documents_text;
         DROP INDEX IF EXISTS clinical.facts_code;
         DROP INDEX IF EXISTS clinical.facts_patient;
         DROP INDEX IF EXISTS clinical.encounters_patient",
    )
    .execute(&mut *tx)
    .await?;

    let icd10 = catalog::icd10_codes();
    let ccam = catalog::ccam_codes();
    let reference = reference_date();
    let reference_at = Utc.from_utc_datetime(&reference.and_hms_opt(23, 59, 0).unwrap_or_default());
    let mut counts = Generated {
        data_version: 0,
        patients: 0,
        encounters: 0,
        facts: 0,
    };
    let mut p_buf = CopyBuffer::new();
    let mut e_buf = CopyBuffer::new();
    let mut f_buf = CopyBuffer::new();
    let mut next_encounter: u64 = 1;
    let mut next_fact: u64 = 1;
    let mut d_buf = CopyBuffer::new();
    let mut next_document: u64 = 1;

    // Patients, encounters and facts stream through three COPYs in turn, chunk by chunk: one
    // connection cannot hold two COPYs open, so each chunk is flushed in its own COPY statement.
    for id in 1..=patients {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let female = rng.random_bool(0.52);
        let age_years: u64 = match rng.random_range(0..100) {
            0..20 => rng.random_range(0..18),
            20..70 => rng.random_range(18..65),
            _ => rng.random_range(65..101),
        };
        let birth = reference
            .checked_sub_days(Days::new(age_years * 365 + rng.random_range(0..365)))
            .unwrap_or(reference);
        let deceased = rng.random_bool(if age_years >= 65 { 0.12 } else { 0.02 });
        let span_start = birth.max(
            reference
                .checked_sub_days(Days::new(3650))
                .unwrap_or(reference),
        );
        let span_days = (reference - span_start).num_days().max(1) as u64;
        let death = deceased.then(|| {
            span_start
                .checked_add_days(Days::new(rng.random_range(span_days / 2..=span_days)))
                .unwrap_or(reference)
        });
        let last_day = death.unwrap_or(reference);
        let perimeter = leaves[rng.random_range(0..leaves.len())];
        let family = FAMILY_NAMES[rng.random_range(0..FAMILY_NAMES.len())];
        let given = if female {
            GIVEN_F[rng.random_range(0..GIVEN_F.len())]
        } else {
            GIVEN_M[rng.random_range(0..GIVEN_M.len())]
        };
        use std::fmt::Write;
        let _ = writeln!(
            p_buf.buf,
            "{id}\t8{id:09}\t{}\t{birth}\t{deceased}\t{}\t{family}\t{given}\t{perimeter}",
            if female { "f" } else { "m" },
            death.map_or("\\N".to_string(), |d| d.to_string()),
        );
        counts.patients += 1;

        let encounters = rng.random_range(1..=9u64);
        let mut episode = 0u64;
        let mut diabetes_left = if id % 10 == 0 {
            rng.random_range(1..=3u64).min(encounters)
        } else {
            0
        };
        let mut high_hba1c_left = u64::from(id % 20 == 0);
        for k in 0..encounters {
            let eid = next_encounter;
            next_encounter += 1;
            if k == 0 || rng.random_bool(0.6) {
                episode = eid;
            }
            let span = (last_day - span_start).num_days().max(0) as u64;
            let day = span_start
                .checked_add_days(Days::new(rng.random_range(0..=span)))
                .unwrap_or(span_start);
            let start = Utc.from_utc_datetime(
                &day.and_hms_opt(rng.random_range(0..24), rng.random_range(0..60), 0)
                    .unwrap_or_default(),
            );
            let (class, minutes) = match rng.random_range(0..10) {
                0..3 => ("hospit", rng.random_range(1440..21_600i64)),
                3..5 => ("urg", rng.random_range(60..720i64)),
                _ => ("consult", rng.random_range(15..90i64)),
            };
            let end = (start + chrono::Duration::minutes(minutes)).min(reference_at.max(start));
            let _ = writeln!(
                e_buf.buf,
                "{eid}\t{id}\t{class}\t{}\t{}\t{episode}\t{perimeter}",
                ts(start),
                ts(end)
            );
            counts.encounters += 1;
            let duration = (end - start).num_minutes().max(1);
            let mut fact = |buf: &mut CopyBuffer,
                            rng: &mut ChaCha8Rng,
                            resource: FactResource,
                            code: &str,
                            value: Option<(f64, &str)>| {
                let at = start + chrono::Duration::minutes(rng.random_range(0..duration));
                let (value, unit) = match value {
                    Some((v, u)) => (format!("{v:.1}"), u.to_string()),
                    None => ("\\N".to_string(), "\\N".to_string()),
                };
                let _ = writeln!(
                    buf.buf,
                    "{next_fact}\t{}\t{id}\t{eid}\t{code}\t{}\t{value}\t{unit}",
                    resource.code(),
                    ts(at)
                );
                next_fact += 1;
                counts.facts += 1;
            };
            // What this stay's note tells (no draw of its own: notes change no other row).
            let mut told = Note::default();
            if diabetes_left > 0 {
                told.diagnoses.push(catalog::DIABETES.to_string());
                diabetes_left -= 1;
                fact(
                    &mut f_buf,
                    &mut rng,
                    FactResource::Condition,
                    catalog::DIABETES,
                    None,
                );
            }
            if high_hba1c_left > 0 {
                high_hba1c_left -= 1;
                let v = rng.random_range(8.5..11.0);
                told.hba1c = Some(v);
                fact(
                    &mut f_buf,
                    &mut rng,
                    FactResource::Observation,
                    catalog::HBA1C,
                    Some((v, "%")),
                );
            }
            for _ in 0..rng.random_range(1..=3) {
                let category = skewed(&mut rng, &icd10);
                let code = if catalog::icd10_subdivided(category) {
                    format!("{category}{}", rng.random_range(0..10))
                } else {
                    category.clone()
                };
                fact(&mut f_buf, &mut rng, FactResource::Condition, &code, None);
                told.diagnoses.push(code);
            }
            for _ in 0..rng.random_range(0..=12) {
                let test = skewed(&mut rng, catalog::LAB_TESTS);
                let v = rng.random_range(test.low..test.high);
                fact(
                    &mut f_buf,
                    &mut rng,
                    FactResource::Observation,
                    test.code,
                    Some((v, test.unit)),
                );
            }
            for _ in 0..rng.random_range(0..=2) {
                let (code, substance) = *skewed(&mut rng, catalog::ATC_CODES);
                told.treatments.push(substance);
                fact(
                    &mut f_buf,
                    &mut rng,
                    FactResource::MedicationRequest,
                    code,
                    None,
                );
            }
            for _ in 0..rng.random_range(0..=1) {
                let code = skewed(&mut rng, &ccam).clone();
                fact(&mut f_buf, &mut rng, FactResource::Procedure, &code, None);
            }
            if class != "consult" {
                let age = start.date_naive().years_since(birth).unwrap_or(0);
                let (kind, title, text) = told.write(class, female, age, start.date_naive());
                let _ = writeln!(
                    d_buf.buf,
                    "{next_document}\t{id}\t{eid}\t{}\t{kind}\t{title}\t{text}",
                    ts(end)
                );
                next_document += 1;
            }
        }
        if f_buf.buf.len() >= CHUNK || id == patients {
            flush(&mut tx, &mut p_buf, PATIENTS_COPY).await?;
            flush(&mut tx, &mut e_buf, ENCOUNTERS_COPY).await?;
            flush(&mut tx, &mut f_buf, FACTS_COPY).await?;
            flush(&mut tx, &mut d_buf, DOCUMENTS_COPY).await?;
        }
    }
    sqlx::raw_sql(
        "CREATE INDEX facts_code ON clinical.facts (resource, code, patient_id);
         CREATE INDEX facts_patient ON clinical.facts (patient_id);
         CREATE INDEX encounters_patient ON clinical.encounters (patient_id);
         CREATE INDEX documents_patient ON clinical.documents (patient_id);
         CREATE INDEX documents_text ON clinical.documents USING gin (to_tsvector('french', text))",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(PERIMETER_SIZES).execute(&mut *tx).await?;
    counts.data_version = sqlx::query_scalar(
        "INSERT INTO clinical.data_versions (reference_date, seed, patients, facts)
         VALUES ($1, $2, $3, $4) RETURNING version",
    )
    .bind(reference)
    .bind(seed as i64)
    .bind(counts.patients as i64)
    .bind(counts.facts as i64)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::raw_sql("ANALYZE clinical.patients; ANALYZE clinical.encounters; ANALYZE clinical.facts")
        .execute(pool)
        .await?;
    Ok(counts)
}

/// Recounts the patients under each perimeter, its subtree included (`clinical.perimeter_sizes`,
/// the perimeters' `cohort_size`): one grouped pass, read back by primary key. A site's own loader
/// runs the same statements in its load transaction.
pub const PERIMETER_SIZES: &str = "DELETE FROM clinical.perimeter_sizes;
     INSERT INTO clinical.perimeter_sizes (perimeter_id, patients)
     SELECT a.id, sum(c.n)::bigint
       FROM (SELECT perimeter_id, count(*) AS n FROM clinical.patients GROUP BY perimeter_id) c
       JOIN identity.perimeters pp ON pp.id = c.perimeter_id
       CROSS JOIN LATERAL unnest(pp.ancestors || pp.id) AS a(id)
      GROUP BY a.id";

const DOCUMENTS_COPY: &str =
    "COPY clinical.documents (id, patient_id, encounter_id, at, type, title, text) FROM STDIN";

/// What a stay's clinical note says: its diagnoses, an HbA1c, the treatments started.
#[derive(Default)]
struct Note {
    diagnoses: Vec<String>,
    hba1c: Option<f64>,
    treatments: Vec<&'static str>,
}

impl Note {
    /// The note's LOINC type, title and text (French, one line). Type 2 diabetes is named
    /// ("diabète de type 2") exactly in the notes of stays where it is coded.
    fn write(
        &self,
        class: &str,
        female: bool,
        age: u32,
        day: NaiveDate,
    ) -> (&'static str, &'static str, String) {
        let (kind, title) = match class {
            "urg" => ("34111-5", "Compte rendu de passage aux urgences"),
            _ => ("18842-5", "Compte rendu d'hospitalisation"),
        };
        let e = if female { "e" } else { "" };
        let named: Vec<String> = self
            .diagnoses
            .iter()
            .map(|code| {
                let category = code.get(..3).unwrap_or(code);
                let title = catalog::ICD10_TITLES
                    .iter()
                    .find(|(c, _)| *c == category)
                    .map_or_else(|| "affection".to_string(), |(_, t)| t.to_lowercase());
                format!("{title} ({code})")
            })
            .collect();
        let mut text = format!(
            "Patient{e} de {age} ans, admis{e} le {}. Diagnostics retenus : {}.",
            day.format("%d/%m/%Y"),
            named.join(", ")
        );
        if let Some(v) = self.hba1c {
            text.push_str(&format!(" HbA1c à {v:.1} %, déséquilibre glycémique."));
        }
        if self.treatments.is_empty() {
            text.push_str(" Pas de nouveau traitement.");
        } else {
            text.push_str(&format!(" Traitement : {}.", self.treatments.join(", ")));
        }
        text.push_str(" Retour à domicile.");
        (kind, title, text)
    }
}

const PATIENTS_COPY: &str = "COPY clinical.patients (id, ipp, gender, birth_date, deceased, death_date, family_name, given_name, perimeter_id) FROM STDIN";
const ENCOUNTERS_COPY: &str = "COPY clinical.encounters (id, patient_id, class, start_at, end_at, episode_id, perimeter_id) FROM STDIN";
const FACTS_COPY: &str = "COPY clinical.facts (id, resource, patient_id, encounter_id, code, at, value, unit) FROM STDIN";

async fn flush(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    buffer: &mut CopyBuffer,
    statement: &str,
) -> Result<(), sqlx::Error> {
    if buffer.buf.is_empty() {
        return Ok(());
    }
    let mut copy = tx.copy_in_raw(statement).await?;
    copy.send(buffer.buf.as_bytes()).await?;
    copy.finish().await?;
    buffer.buf.clear();
    Ok(())
}
