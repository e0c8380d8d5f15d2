//! The embedded QueryExecutor: the same port as the HTTP adapter, answered in-process from the
//! clinical store. A submitted job runs on a blocking thread; its result comes back as a
//! [`JobCompletion`] on a channel, which the service turns into the same command the executor's
//! callback would (see `api::startup`).
//!
//! Every count is stamped with the data version it was computed on (`extra.data_version`), and the
//! same query on the same data version always gives the same count: ages and dates are taken at
//! the data's reference date, sampling is a hash of the cohort and the patient, never a draw.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use commands::ports::{
    CancelOutcome, ExecutorError, ExecutorMode, JobAccepted, JobCompletion, JobSubmission,
    QueryExecutor,
};
use domain::cohort_query::{self, EvalOptions, Evaluation, PatientSet};
use domain::job::JobReport;
use rand::Rng;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{RwLock, mpsc};
use uuid::Uuid;

use super::index::{self, ClinicalIndex};
use super::source::{ClinicalSource, CodeExpansions, DocumentRows, code_values, document_criteria};
use crate::terminology::store::PgTerminology;
use projections::terminology::TerminologyReader;

/// What the executor knows of a job (since this process started).
enum JobEntry {
    Running(tokio::task::AbortHandle),
    Done(JobReport),
}

pub struct EmbeddedExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    index: RwLock<Arc<ClinicalIndex>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    jobs: Mutex<HashMap<String, JobEntry>>,
    completions: mpsc::UnboundedSender<JobCompletion>,
}

/// Why a job failed: the message the count or cohort records.
type JobFailure = String;

impl EmbeddedExecutor {
    /// An executor over the store; completions are sent on `completions`.
    pub fn new(pool: PgPool, completions: mpsc::UnboundedSender<JobCompletion>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                index: RwLock::new(Arc::new(ClinicalIndex::empty())),
                reloading: tokio::sync::Mutex::new(()),
                jobs: Mutex::new(HashMap::new()),
                completions,
            }),
        }
    }

    /// The index, reloaded first if the store's data version changed.
    pub async fn index(&self) -> Result<Arc<ClinicalIndex>, sqlx::Error> {
        self.inner.current_index().await
    }

    /// The index when it is loaded and current, without waiting for a (re)load: what the FHIR
    /// API reads when it can, falling back to SQL otherwise.
    pub async fn ready_index(&self) -> Option<Arc<ClinicalIndex>> {
        let loaded = self.inner.index.read().await.clone();
        let current = index::current_version(&self.inner.pool)
            .await
            .ok()?
            .map_or(0, |v| v.0);
        (loaded.data_version == current && current > 0).then_some(loaded)
    }

    /// Evaluates a query now (the benchmark and the tests use this directly), without stage
    /// counts.
    pub async fn evaluate(&self, query: &str) -> Result<(Evaluation, i64), JobFailure> {
        self.inner.evaluate(query, EvalOptions::default()).await
    }

    /// [`Self::evaluate`] with every node counted on its own.
    pub async fn evaluate_with_stages(&self, query: &str) -> Result<(Evaluation, i64), JobFailure> {
        self.inner
            .evaluate(query, EvalOptions { stage_counts: true })
            .await
    }
}

impl Inner {
    async fn current_index(&self) -> Result<Arc<ClinicalIndex>, sqlx::Error> {
        let loaded = self.index.read().await.data_version;
        let current = index::current_version(&self.pool).await?.map_or(0, |v| v.0);
        if current == loaded {
            return Ok(self.index.read().await.clone());
        }
        let _one = self.reloading.lock().await;
        if self.index.read().await.data_version == current {
            return Ok(self.index.read().await.clone());
        }
        let started = std::time::Instant::now();
        let fresh = Arc::new(index::load(&self.pool).await?);
        tracing::info!(
            data_version = fresh.data_version,
            patients = fresh.patients.all.len(),
            facts = fresh.fact_count(),
            memory_bytes = fresh.memory_bytes(),
            seconds = started.elapsed().as_secs_f64(),
            "clinical index loaded"
        );
        metrics::gauge!("cohort360_clinical_index_bytes").set(fresh.memory_bytes() as f64);
        *self.index.write().await = fresh.clone();
        Ok(fresh)
    }

    /// The patients of the source population: perimeters (with their subtrees) by cohort id, and
    /// created cohorts by group id.
    async fn population(
        &self,
        index: &ClinicalIndex,
        ids: &[String],
    ) -> Result<PatientSet, JobFailure> {
        if ids.is_empty() {
            return Err("the query has no source population".into());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.cohort_id, p.id FROM identity.perimeters t
             JOIN identity.perimeters p ON p.id_path LIKE t.id_path || '%' AND p.removed_at IS NULL
             WHERE t.cohort_id = ANY($1) AND t.removed_at IS NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("cannot read the perimeters: {e}"))?;
        let mut set = PatientSet::new();
        for (_, perimeter) in &rows {
            if let Some(b) = index.perimeter_patients.get(perimeter) {
                set |= b;
            }
        }
        let found: Vec<&String> = rows.iter().map(|(c, _)| c).collect();
        let rest: Vec<i64> = ids
            .iter()
            .filter(|id| !found.contains(id))
            .map(|id| {
                id.parse::<i64>().map_err(|_| {
                    format!("the source population `{id}` is neither a perimeter nor a cohort")
                })
            })
            .collect::<Result<_, _>>()?;
        if rest.is_empty() {
            return Ok(set);
        }
        let known: Vec<i64> = sqlx::query_scalar(
            "SELECT group_id FROM clinical.cohort_lists WHERE group_id = ANY($1)",
        )
        .bind(&rest)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("cannot read the cohort lists: {e}"))?;
        if let Some(missing) = rest.iter().find(|id| !known.contains(id)) {
            return Err(format!(
                "the source population `{missing}` is neither a perimeter nor a cohort"
            ));
        }
        let members: Vec<i32> = sqlx::query_scalar(
            "SELECT patient_id FROM clinical.cohort_members WHERE group_id = ANY($1)",
        )
        .bind(&rest)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("cannot read the cohort lists: {e}"))?;
        set.extend(members.into_iter().filter_map(|p| u32::try_from(p).ok()));
        Ok(set)
    }

    async fn evaluate(
        &self,
        query: &str,
        options: EvalOptions,
    ) -> Result<(Evaluation, i64), JobFailure> {
        // A cohort of other resources (top-level `resourceType`, e.g. an export's subset of
        // Conditions) is kept as the patients holding matching resources: the lists hold
        // patients only, and the built-in exporter applies the table's filter to the rows again.
        let parsed = cohort_query::parse(query).map_err(|e| e.to_string())?;
        let index = self
            .current_index()
            .await
            .map_err(|e| format!("cannot load the clinical store: {e}"))?;
        let population = self.population(&index, &parsed.source_population).await?;
        let codes = self.code_expansions(&index, &parsed).await?;
        let documents = self.document_rows(&index, &parsed).await?;
        let version = index.data_version;
        let started = std::time::Instant::now();
        let evaluated = tokio::task::spawn_blocking(move || {
            let source = ClinicalSource {
                index: &index,
                population: &population,
                codes: &codes,
                documents: &documents,
            };
            cohort_query::evaluate_with(&parsed, &population, &source, options)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the evaluation stopped: {e}"))?;
        metrics::histogram!("cohort360_engine_evaluation_seconds")
            .record(started.elapsed().as_secs_f64());
        evaluated.map(|e| (e, version))
    }

    /// The index's codes each criterion code selects (itself, its descendants in the
    /// terminology, the codes of a range): one terminology read per code system.
    async fn code_expansions(
        &self,
        index: &ClinicalIndex,
        query: &cohort_query::CohortQuery,
    ) -> Result<CodeExpansions, JobFailure> {
        let terminology = PgTerminology::new(self.pool.clone());
        let mut out = CodeExpansions::default();
        for (resource, mut values) in code_values(query) {
            let Some(facts) = index.facts.get(&resource) else {
                continue;
            };
            values.sort();
            values.dedup();
            let selections = terminology
                .resolve_codes(resource.code_system(), &values)
                .await
                .map_err(|e| format!("cannot read the terminologies: {e}"))?;
            for (value, selection) in values.into_iter().zip(selections) {
                let mut codes: Vec<String> = facts
                    .codes
                    .keys()
                    .filter(|c| selection.matches(c))
                    .cloned()
                    .collect();
                codes.sort_unstable();
                out.by_value.insert((resource, value), codes);
            }
        }
        Ok(out)
    }

    /// The rows of the query's document criteria, read with the FHIR search's filters (the same
    /// `_text` answers in counts and in `/fhir/DocumentReference`).
    async fn document_rows(
        &self,
        index: &ClinicalIndex,
        query: &cohort_query::CohortQuery,
    ) -> Result<DocumentRows, JobFailure> {
        let mut out = DocumentRows::default();
        for c in document_criteria(query) {
            let params = domain::cohort_query::fhir_search::parse_search(&c.filter_fhir);
            let mut q = sqlx::QueryBuilder::new(
                "SELECT x.patient_id, x.encounter_id, extract(epoch FROM x.at)::bigint
                   FROM clinical.documents x JOIN clinical.patients c ON c.id = x.patient_id WHERE true",
            );
            let scope = projections::clinical::ReadScope::default();
            crate::clinical::fhir::push_filters(
                &mut q,
                projections::clinical::FhirType::DocumentReference,
                &params,
                &scope,
                &crate::clinical::fhir::ResolvedCodes::default(),
            )
            .map_err(|e| format!("criterion {}: {e}", c.id))?;
            let rows: Vec<(i32, i32, i64)> = q
                .build_query_as()
                .fetch_all(&self.pool)
                .await
                .map_err(|e| format!("cannot read the clinical notes: {e}"))?;
            let e = &index.encounters;
            let p = &index.patients;
            out.by_criterion.insert(
                c.id,
                rows.into_iter()
                    .filter_map(|(patient, encounter, at)| {
                        let patient = u32::try_from(patient).ok()?;
                        let enc = usize::try_from(encounter).ok()?;
                        Some(domain::cohort_query::Row {
                            patient,
                            encounter: Some(enc as u64),
                            episode: e.episode.get(enc).map(|x| u64::from(*x)),
                            at: Some(at),
                            encounter_start: e.start.get(enc).copied(),
                            birth_date: p.birth.get(patient as usize).copied(),
                            resource_key: None,
                        })
                    })
                    .collect(),
            );
        }
        Ok(out)
    }

    /// Counts per perimeter (by cohort id), each perimeter counting its whole subtree.
    async fn per_perimeter(
        &self,
        index: &ClinicalIndex,
        patients: &PatientSet,
    ) -> Result<BTreeMap<String, Value>, JobFailure> {
        let perimeters: Vec<(i64, Option<String>, Vec<i64>)> = sqlx::query_as(
            "SELECT id, cohort_id, ancestors FROM identity.perimeters WHERE removed_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| format!("cannot read the perimeters: {e}"))?;
        let mut totals: HashMap<i64, u64> = HashMap::new();
        for (id, _, ancestors) in &perimeters {
            let Some(own) = index.perimeter_patients.get(id) else {
                continue;
            };
            let n = own.intersection_len(patients);
            if n == 0 {
                continue;
            }
            for p in ancestors.iter().chain(std::iter::once(id)) {
                *totals.entry(*p).or_default() += n;
            }
        }
        Ok(perimeters
            .into_iter()
            .filter_map(|(id, cohort_id, _)| {
                let n = totals.get(&id)?;
                Some((cohort_id?, Value::String(n.to_string())))
            })
            .collect())
    }

    /// Stores a cohort's patient list (once per target: a resubmission finds the first list).
    async fn store_list(
        &self,
        target: Uuid,
        version: i64,
        patients: &PatientSet,
    ) -> Result<(i64, u64), JobFailure> {
        let fail = |e: sqlx::Error| format!("cannot store the cohort's patients: {e}");
        let mut tx = self.pool.begin().await.map_err(fail)?;
        crate::db::without_statement_timeout(&mut tx)
            .await
            .map_err(fail)?;
        let existing: Option<(i64, i64)> =
            sqlx::query_as("SELECT group_id, size FROM clinical.cohort_lists WHERE target = $1")
                .bind(target)
                .fetch_optional(&mut *tx)
                .await
                .map_err(fail)?;
        if let Some((group, size)) = existing {
            return Ok((group, size as u64));
        }
        let group: i64 = sqlx::query_scalar("SELECT nextval('clinical.group_ids')")
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
        sqlx::query(
            "INSERT INTO clinical.cohort_lists (group_id, target, data_version, size) VALUES ($1, $2, $3, $4)",
        )
        .bind(group)
        .bind(target)
        .bind(version)
        .bind(patients.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        let mut body = String::with_capacity(patients.len() as usize * 12);
        for p in patients {
            use std::fmt::Write;
            let _ = writeln!(body, "{group}\t{p}");
        }
        let mut copy = tx
            .copy_in_raw("COPY clinical.cohort_members (group_id, patient_id) FROM STDIN")
            .await
            .map_err(fail)?;
        copy.send(body.as_bytes()).await.map_err(fail)?;
        copy.finish().await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok((group, patients.len()))
    }

    async fn run(&self, job: &JobSubmission) -> Result<JobReport, JobFailure> {
        let options = EvalOptions {
            stage_counts: job.details.is_some(),
        };
        let (evaluation, version) = self.evaluate(&job.query, options).await?;
        let mut extra: BTreeMap<String, Value> = BTreeMap::new();
        extra.insert("data_version".into(), Value::String(version.to_string()));
        let mut report = JobReport {
            status: "FINISHED".into(),
            ..JobReport::default()
        };
        let count = evaluation.patients.len();
        match job.mode {
            ExecutorMode::Count | ExecutorMode::CountAll => {
                report.count = Some(count as i64);
                match job.details.as_deref() {
                    Some("all") => {
                        for (id, n) in &evaluation.stage_counts {
                            extra.insert(
                                format!("criteria_count_{id}"),
                                Value::String(n.to_string()),
                            );
                        }
                    }
                    Some("ratio") => {
                        for (id, ratio) in evaluation.stage_ratios() {
                            extra.insert(
                                format!("criteria_ratio_{id}"),
                                Value::String(format!("{ratio:.4}")),
                            );
                        }
                    }
                    _ => {}
                }
                if job.mode == ExecutorMode::CountAll {
                    // Upstream's privacy fuzz of institution-wide estimates.
                    let mut rng = rand::rng();
                    let below: u64 = rng.random_range(25..=50);
                    let above: u64 = rng.random_range(25..=50);
                    report.minimum = Some(count.saturating_sub(below) as i64);
                    report.maximum = Some((count + above) as i64);
                }
            }
            ExecutorMode::CountWithDetails => {
                report.count = Some(count as i64);
                let index = self
                    .current_index()
                    .await
                    .map_err(|e| format!("cannot load the clinical store: {e}"))?;
                extra.extend(self.per_perimeter(&index, &evaluation.patients).await?);
            }
            ExecutorMode::Create => {
                let patients = match job.sampling {
                    Some(ratio) if ratio > 0.0 && ratio < 1.0 => {
                        sample(&evaluation.patients, job.target, ratio)
                    }
                    _ => evaluation.patients,
                };
                let (group, size) = self.store_list(job.target, version, &patients).await?;
                report.group_id = Some(group.to_string());
                report.count = Some(size as i64);
            }
        }
        report.extra = extra;
        Ok(report)
    }
}

/// A deterministic sample: a patient is kept when the hash of (cohort, patient) falls under the
/// ratio, so the same cohort always keeps the same patients.
fn sample(patients: &PatientSet, target: Uuid, ratio: f64) -> PatientSet {
    let key = target.as_u128();
    let salt = (key as u64) ^ ((key >> 64) as u64);
    patients
        .iter()
        .filter(|p| {
            // splitmix64
            let mut z = salt ^ u64::from(*p).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z as f64 / u64::MAX as f64) < ratio
        })
        .collect()
}

#[async_trait]
impl QueryExecutor for EmbeddedExecutor {
    async fn submit(&self, job: JobSubmission) -> Result<JobAccepted, ExecutorError> {
        let job_id = Uuid::new_v4().to_string();
        let trace_id = commands::trace::current();
        let inner = self.inner.clone();
        let id = job_id.clone();
        // Hold the table while spawning, so a fast job cannot record its end before it is known.
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let handle = tokio::spawn(async move {
            let report = inner.run(&job).await.unwrap_or_else(|message| JobReport {
                status: "ERROR".into(),
                message: Some(message),
                ..JobReport::default()
            });
            if report.status == "ERROR" {
                tracing::warn!(job = %id, target = %job.target, message = ?report.message, "embedded job failed");
            }
            inner
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, JobEntry::Done(report.clone()));
            if inner
                .completions
                .send(JobCompletion {
                    job,
                    report,
                    trace_id,
                })
                .is_err()
            {
                tracing::warn!("no one receives the embedded executor's results");
            }
        });
        jobs.insert(job_id.clone(), JobEntry::Running(handle.abort_handle()));
        Ok(JobAccepted {
            job_id,
            status: "RUNNING".into(),
            message: None,
        })
    }

    async fn cancel(&self, job_id: &str) -> Result<CancelOutcome, ExecutorError> {
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.get(job_id) {
            Some(JobEntry::Running(handle)) => {
                handle.abort();
                jobs.insert(
                    job_id.to_string(),
                    JobEntry::Done(JobReport {
                        status: "KILLED".into(),
                        ..JobReport::default()
                    }),
                );
                Ok(CancelOutcome::Killed)
            }
            Some(JobEntry::Done(_)) => Ok(CancelOutcome::AlreadyFinished),
            None => Err(ExecutorError::Refused(format!("unknown job {job_id}"))),
        }
    }

    async fn status(&self, job_id: &str) -> Result<Option<JobReport>, ExecutorError> {
        let jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match jobs.get(job_id) {
            Some(JobEntry::Running(_)) => Some(JobReport {
                status: "RUNNING".into(),
                ..JobReport::default()
            }),
            Some(JobEntry::Done(report)) => Some(report.clone()),
            None => None,
        })
    }
}
