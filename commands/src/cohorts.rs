//! The cohorts service: counts (dated measures), cohorts and samples, the executor callbacks,
//! and what the reactors do with the executor (submit, cancel, reconcile) and the websockets.
//!
//! HTTP handlers call the request/update/settle methods; the reactors call the `submit_*`,
//! `kill_if_cancelled`, `reconcile` and `notify_*` methods once per event (at least once: every
//! one of them is idempotent, and a submission is claimed by an event before the executor is
//! called, so an event handled twice never submits twice).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::cohort::{
    Cohort, CohortChanges, CohortCommand, CohortError, CohortRequest, CohortState,
};
use domain::count::{Count, CountCommand, CountError, CountMode, CountRequest, CountState};
use domain::fhir_filter::FhirFilterError;
use domain::job::{JobError, JobReport, JobStatus};
use domain::request::{Request, RequestError, RequestState};
use domain::small_cells::SmallCells;
use domain::validation::InvalidField;
use serde_json::{Value, json};
use thiserror::Error;
use uuid::Uuid;

use crate::bus::{Committed, Execute};
use crate::context::CommandContext;
use crate::error::{CommandError, Technical};
use crate::ports::{
    CancelOutcome, CohortDirectory, Consistency, ExecutorError, ExecutorMode, JobSubmission,
    Notifier, PatientReadRights, PortError, QueryExecutor, StaleJob, WorkspaceDirectory,
};
use crate::workspace::Written;

/// Why a cohorts operation failed.
#[derive(Debug, Error)]
pub enum CohortsError {
    #[error(transparent)]
    Count(CountError),
    #[error(transparent)]
    Cohort(CohortError),
    #[error(transparent)]
    Request(RequestError),
    #[error(transparent)]
    FhirFilter(FhirFilterError),
    #[error(transparent)]
    Study(domain::feasibility::StudyError),
    #[error(transparent)]
    Schedule(domain::refresh::ScheduleError),
    #[error("you already have a filter with this name on this resource")]
    FilterNameTaken,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Conflict, unavailability, bug.
    #[error(transparent)]
    Technical(#[from] Technical),
}

impl From<CommandError<CountError>> for CohortsError {
    fn from(e: CommandError<CountError>) -> Self {
        crate::error::from_command(e, CohortsError::Count)
    }
}

impl From<CommandError<CohortError>> for CohortsError {
    fn from(e: CommandError<CohortError>) -> Self {
        crate::error::from_command(e, CohortsError::Cohort)
    }
}

impl From<CommandError<RequestError>> for CohortsError {
    fn from(e: CommandError<RequestError>) -> Self {
        crate::error::from_command(e, CohortsError::Request)
    }
}

impl From<CommandError<FhirFilterError>> for CohortsError {
    fn from(e: CommandError<FhirFilterError>) -> Self {
        crate::error::from_command(e, CohortsError::FhirFilter)
    }
}

impl From<PortError> for CohortsError {
    fn from(e: PortError) -> Self {
        Technical::from(e).into()
    }
}

/// The command buses of counts and cohorts.
pub struct CohortBuses {
    pub counts: Arc<dyn Execute<Count>>,
    pub cohorts: Arc<dyn Execute<Cohort>>,
    pub requests: Arc<dyn Execute<Request>>,
}

/// Tuning of the cohorts service.
#[derive(Debug, Clone)]
pub struct CohortSettings {
    /// `COHORT_SIZE_LIMIT`: cohorts this large are `long_pending` (Solr ETL) and not exportable.
    pub size_limit: i64,
}

/// A cohort saved from a count.
#[derive(Debug, Clone)]
pub struct NewCohort {
    pub name: String,
    pub description: Option<String>,
    pub snapshot: Option<Uuid>,
    pub request: Option<Uuid>,
    pub dated_measure: Uuid,
    pub global_estimate: bool,
}

/// A sample of one of the caller's cohorts.
#[derive(Debug, Clone)]
pub struct NewSample {
    pub name: String,
    pub description: Option<String>,
    pub parent_cohort: Uuid,
    pub sampling_ratio: f64,
}

/// What a callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Applied, or recognised as a duplicate or late report.
    Accepted,
    /// The status was not one; the job was marked failed.
    InvalidStatus,
}

/// The cohorts application service.
pub struct Cohorts {
    buses: CohortBuses,
    workspace: Arc<dyn WorkspaceDirectory>,
    directory: Arc<dyn CohortDirectory>,
    executor: Arc<dyn QueryExecutor>,
    consistency: Arc<dyn Consistency>,
    settings: CohortSettings,
    /// Small-cell protection of the websocket messages, and who is exempt from it.
    small_cells: Option<(SmallCells, Arc<dyn PatientReadRights>)>,
}

const STAGE_DETAILS: [&str; 2] = ["all", "ratio"];

impl Cohorts {
    pub fn new(
        buses: CohortBuses,
        workspace: Arc<dyn WorkspaceDirectory>,
        directory: Arc<dyn CohortDirectory>,
        executor: Arc<dyn QueryExecutor>,
        consistency: Arc<dyn Consistency>,
        settings: CohortSettings,
    ) -> Self {
        Self {
            buses,
            workspace,
            directory,
            executor,
            consistency,
            settings,
            small_cells: None,
        }
    }

    /// Protects small counts in the websocket messages of owners who do not read the query's
    /// perimeters nominatively.
    pub fn with_small_cells(
        mut self,
        cells: SmallCells,
        rights: Arc<dyn PatientReadRights>,
    ) -> Self {
        self.small_cells = cells.is_on().then_some((cells, rights));
        self
    }

    /// Masks the small counts of `message` unless `owner` reads the query's perimeters
    /// nominatively.
    async fn protect(
        &self,
        owner: &str,
        query: &str,
        message: &mut Value,
    ) -> Result<(), CohortsError> {
        if let Some((cells, rights)) = &self.small_cells
            && cells.has_small(message)
        {
            let perimeters = domain::query::perimeters_ids(query).unwrap_or_default();
            if !rights.reads_nominatively(owner, &perimeters).await? {
                cells.mask(message);
            }
        }
        Ok(())
    }

    async fn settle<T>(
        &self,
        value: T,
        committed: &[Committed],
    ) -> Result<Written<T>, CohortsError> {
        let caught_up = self.consistency.wait_for(committed).await;
        Ok(Written { value, caught_up })
    }

    async fn own_request_of_snapshot(
        &self,
        ctx: &CommandContext,
        snapshot: Uuid,
        request: Option<Uuid>,
    ) -> Result<RequestState, CohortsError> {
        own_request_of_snapshot(
            self.workspace.as_ref(),
            self.buses.requests.as_ref(),
            &ctx.user,
            snapshot,
            request,
        )
        .await
    }

    /// Counts the patients of one of the caller's snapshots.
    pub async fn request_count(
        &self,
        ctx: &CommandContext,
        snapshot: Uuid,
        request: Option<Uuid>,
        stage_details: Option<String>,
    ) -> Result<Written<Uuid>, CohortsError> {
        if let Some(d) = &stage_details
            && !STAGE_DETAILS.contains(&d.as_str())
        {
            return Err(InvalidField {
                field: "stageDetails",
                reason: "must be null, \"all\" or \"ratio\"".into(),
            }
            .into());
        }
        let owned = self.own_request_of_snapshot(ctx, snapshot, request).await?;
        let s = &owned.snapshots[&snapshot];
        let count_id = Uuid::new_v4();
        let command = CountCommand::Request {
            count: CountRequest {
                count_id,
                owner: ctx.user.clone(),
                request_id: owned.id,
                snapshot_id: snapshot,
                snapshot_version: s.version,
                serialized_query: s.serialized_query.clone(),
                mode: CountMode::Snapshot,
                stage_details,
                refresh_schedule: None,
            },
            at: ctx.at,
        };
        let c = self
            .buses
            .counts
            .execute_new(&count_id.to_string(), command, ctx)
            .await?;
        self.settle(count_id, &[c]).await
    }

    async fn own_count(&self, ctx: &CommandContext, id: Uuid) -> Result<CountState, CohortsError> {
        let count = self.buses.counts.load(&id.to_string()).await?;
        count
            .state
            .filter(|s| s.owner == ctx.user)
            .ok_or(CohortsError::Count(CountError::NotFound))
    }

    async fn own_cohort(
        &self,
        ctx: &CommandContext,
        id: Uuid,
    ) -> Result<CohortState, CohortsError> {
        let cohort = self.buses.cohorts.load(&id.to_string()).await?;
        cohort
            .owned_by(&ctx.user)
            .cloned()
            .ok_or(CohortsError::Cohort(CohortError::NotFound))
    }

    /// Saves a cohort from one of the caller's counts, with an optional global estimate.
    pub async fn create_cohort(
        &self,
        ctx: &CommandContext,
        new: NewCohort,
    ) -> Result<Written<Uuid>, CohortsError> {
        let count = self.own_count(ctx, new.dated_measure).await?;
        if new.snapshot.is_some_and(|s| s != count.snapshot_id) {
            return Err(InvalidField {
                field: "request_query_snapshot",
                reason: "the dated measure was not computed on this snapshot".into(),
            }
            .into());
        }
        let owned = self
            .own_request_of_snapshot(ctx, count.snapshot_id, new.request)
            .await?;
        let snapshot = &owned.snapshots[&count.snapshot_id];
        let mut committed = Vec::new();
        let global_measure = if new.global_estimate {
            let root = self
                .directory
                .root_perimeter_cohort_id()
                .await?
                .ok_or(InvalidField {
                    field: "global_estimate",
                    reason: "no root perimeter with a cohort id is known".into(),
                })?;
            let global_id = Uuid::new_v4();
            let command = CountCommand::Request {
                count: CountRequest {
                    count_id: global_id,
                    owner: ctx.user.clone(),
                    request_id: owned.id,
                    snapshot_id: count.snapshot_id,
                    snapshot_version: snapshot.version,
                    serialized_query: with_source_population(&snapshot.serialized_query, &root),
                    mode: CountMode::Global,
                    stage_details: None,
                    refresh_schedule: None,
                },
                at: ctx.at,
            };
            committed.push(
                self.buses
                    .counts
                    .execute_new(&global_id.to_string(), command, ctx)
                    .await?,
            );
            Some(global_id)
        } else {
            None
        };
        self.request_cohort(
            ctx,
            CohortRequest {
                cohort_id: Uuid::new_v4(),
                owner: ctx.user.clone(),
                name: new.name,
                description: new.description,
                request_id: owned.id,
                snapshot_id: count.snapshot_id,
                snapshot_version: snapshot.version,
                serialized_query: snapshot.serialized_query.clone(),
                dated_measure: Some(count.id),
                global_measure,
                parent_cohort: None,
                sampling_ratio: None,
                expected_size: count.measure,
                is_subset: false,
            },
            committed,
        )
        .await
    }

    /// Creates a random sample of one of the caller's finished cohorts.
    pub async fn create_sample(
        &self,
        ctx: &CommandContext,
        new: NewSample,
    ) -> Result<Written<Uuid>, CohortsError> {
        let parent = self.own_cohort(ctx, new.parent_cohort).await?;
        if parent.parent_cohort.is_some() {
            return Err(InvalidField {
                field: "parent_cohort",
                reason: "a sample cannot be sampled again".into(),
            }
            .into());
        }
        let Some(group_id) = parent.group_id.clone().filter(|_| {
            matches!(
                parent.job.status,
                JobStatus::Finished | JobStatus::LongPending
            )
        }) else {
            return Err(InvalidField {
                field: "parent_cohort",
                reason: "the parent cohort is not created yet".into(),
            }
            .into());
        };
        let expected_size = parent
            .size
            .map(|n| (n as f64 * new.sampling_ratio).round() as i64);
        self.request_cohort(
            ctx,
            CohortRequest {
                cohort_id: Uuid::new_v4(),
                owner: ctx.user.clone(),
                name: new.name,
                description: new.description,
                request_id: parent.request_id,
                snapshot_id: parent.snapshot_id,
                snapshot_version: parent.snapshot_version,
                serialized_query: sample_query(&parent.serialized_query, &group_id),
                dated_measure: None,
                global_measure: None,
                parent_cohort: Some(parent.id),
                sampling_ratio: Some(new.sampling_ratio),
                expected_size,
                is_subset: false,
            },
            Vec::new(),
        )
        .await
    }

    /// Creates an export's subset of one of the caller's created cohorts: the patients of its
    /// group matching a saved filter (`(resource, filterFhir)`; all of them without one). Named
    /// `{table}_{group_id}` and hidden from the owner's lists, it runs the normal creation
    /// pipeline (no global estimate).
    pub async fn create_subset(
        &self,
        ctx: &CommandContext,
        source: Uuid,
        table: &str,
        filter: Option<(String, String)>,
    ) -> Result<Written<Uuid>, CohortsError> {
        self.create_subset_with_id(ctx, Uuid::new_v4(), source, table, filter)
            .await
    }

    /// [`Self::create_subset`] with the subset's id chosen by the caller (exports derive it
    /// from the export and the table, so that a repeated request creates nothing twice).
    pub async fn create_subset_with_id(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        source: Uuid,
        table: &str,
        filter: Option<(String, String)>,
    ) -> Result<Written<Uuid>, CohortsError> {
        let parent = self.own_cohort(ctx, source).await?;
        let Some(group_id) = parent
            .group_id
            .clone()
            .filter(|_| parent.job.status == JobStatus::Finished)
        else {
            return Err(InvalidField {
                field: "cohort",
                reason: "the source cohort is not created yet".into(),
            }
            .into());
        };
        self.request_cohort(
            ctx,
            CohortRequest {
                cohort_id: id,
                owner: ctx.user.clone(),
                name: format!("{table}_{group_id}"),
                description: None,
                request_id: parent.request_id,
                snapshot_id: parent.snapshot_id,
                snapshot_version: parent.snapshot_version,
                serialized_query: subset_query(&parent.serialized_query, &group_id, filter),
                dated_measure: None,
                global_measure: None,
                parent_cohort: None,
                sampling_ratio: None,
                expected_size: parent.size,
                is_subset: true,
            },
            Vec::new(),
        )
        .await
    }

    /// Appends `CohortRequested` and waits for the read models (and for `committed`, what the
    /// caller wrote before it).
    async fn request_cohort(
        &self,
        ctx: &CommandContext,
        cohort: CohortRequest,
        mut committed: Vec<Committed>,
    ) -> Result<Written<Uuid>, CohortsError> {
        let cohort_id = cohort.cohort_id;
        let command = CohortCommand::Request { cohort, at: ctx.at };
        committed.push(
            self.buses
                .cohorts
                .execute_new(&cohort_id.to_string(), command, ctx)
                .await?,
        );
        self.settle(cohort_id, &committed).await
    }

    /// Renames, re-describes or (un)favourites one of the caller's cohorts.
    pub async fn update_cohort(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        changes: CohortChanges,
    ) -> Result<Written<()>, CohortsError> {
        let command = CohortCommand::Update {
            by: ctx.user.clone(),
            changes,
            at: ctx.at,
        };
        let c = self
            .buses
            .cohorts
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.settle((), &[c]).await
    }

    /// Deletes the caller's cohorts: all are checked first, one foreign id and nothing changes.
    pub async fn delete_cohorts(
        &self,
        ctx: &CommandContext,
        ids: &[Uuid],
    ) -> Result<Written<()>, CohortsError> {
        for id in ids {
            self.own_cohort(ctx, *id).await?;
        }
        let mut committed = Vec::new();
        for id in ids {
            let command = CohortCommand::Delete {
                by: ctx.user.clone(),
                at: ctx.at,
            };
            committed.push(
                self.buses
                    .cohorts
                    .execute(&id.to_string(), command, ctx)
                    .await?,
            );
        }
        self.settle((), &committed).await
    }

    /// Applies the executor's callback on a count.
    pub async fn settle_count(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        report: JobReport,
    ) -> Result<Written<Settled>, CohortsError> {
        let settled = settled(&report);
        let command = CountCommand::Settle { report, at: ctx.at };
        let c = self
            .buses
            .counts
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.settle(settled, &[c]).await
    }

    /// Applies the executor's (or the Solr ETL's) callback on a cohort.
    pub async fn settle_cohort(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        report: JobReport,
        via_etl: bool,
    ) -> Result<Written<Settled>, CohortsError> {
        let settled = settled(&report);
        let command = CohortCommand::Settle {
            report,
            via_etl,
            at: ctx.at,
        };
        let c = self
            .buses
            .cohorts
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.settle(settled, &[c]).await
    }

    /// Reactor: cancels the older running counts of the request, then submits the count to
    /// the executor, unless another reactor already claimed it.
    pub async fn submit_count(&self, ctx: &CommandContext, id: Uuid) -> Result<(), CohortsError> {
        let key = id.to_string();
        let Some(count) = self.buses.counts.load(&key).await?.state else {
            return Ok(());
        };
        if count.job.submitted || count.job.status.is_final() {
            return Ok(());
        }
        // Only counts requested before this one: a redelivered event must not cancel newer ones.
        // Scheduled counts neither cancel nor get cancelled (the owner did not ask for them).
        if count.mode == CountMode::Snapshot && count.refresh_schedule.is_none() {
            for older in self
                .directory
                .running_counts_of_request(count.request_id, count.requested_at)
                .await?
            {
                self.cancel_count(
                    ctx,
                    older,
                    "a newer count of the same request was requested",
                )
                .await?;
            }
        }
        let claim = CountCommand::ClaimSubmission { at: ctx.at };
        match self.buses.counts.execute(&key, claim, ctx).await {
            Ok(_) => {}
            Err(CommandError::Rejected(CountError::Job(
                JobError::AlreadySubmitted | JobError::NotSubmittable(_),
            ))) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let submission = JobSubmission {
            mode: match count.mode {
                CountMode::Snapshot => ExecutorMode::Count,
                CountMode::Global => ExecutorMode::CountAll,
            },
            query: count.serialized_query.clone(),
            owner: count.owner.clone(),
            target: id,
            callback_path: None,
            sampling: None,
            details: count.stage_details.clone(),
        };
        let outcome = self.executor.submit(submission).await;
        let command = match accepted_job(outcome) {
            Ok(job_id) => CountCommand::RecordJob { job_id, at: ctx.at },
            Err(message) => CountCommand::FailSubmission {
                message,
                at: ctx.at,
            },
        };
        self.buses.counts.execute(&key, command, ctx).await?;
        self.kill_if_cancelled(StaleJob::Count(id)).await
    }

    /// Cancels a count: kills its executor job if it runs, or marks it cancelled before it
    /// gets one (the job id, if it comes later, is then killed by [`Self::kill_if_cancelled`]).
    pub async fn cancel_count(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        reason: &str,
    ) -> Result<(), CohortsError> {
        let key = id.to_string();
        let Some(count) = self.buses.counts.load(&key).await?.state else {
            return Ok(());
        };
        let command = match (&count.job.job_id, count.job.status) {
            (_, s) if s.is_final() => return Ok(()),
            (Some(job_id), _) => match self.executor.cancel(job_id).await {
                Ok(CancelOutcome::Killed) => CountCommand::Settle {
                    report: JobReport {
                        status: "KILLED".into(),
                        message: Some(reason.to_string()),
                        ..Default::default()
                    },
                    at: ctx.at,
                },
                // Its callback brings the result.
                Ok(CancelOutcome::AlreadyFinished) => return Ok(()),
                Err(e) => CountCommand::FailSubmission {
                    message: format!("{reason}, and the executor could not cancel it: {e}"),
                    at: ctx.at,
                },
            },
            (None, _) => CountCommand::Cancel {
                reason: reason.to_string(),
                at: ctx.at,
            },
        };
        self.buses.counts.execute(&key, command, ctx).await?;
        Ok(())
    }

    /// Reactor: submits a cohort creation to the executor, unless already claimed.
    pub async fn submit_cohort(&self, ctx: &CommandContext, id: Uuid) -> Result<(), CohortsError> {
        let key = id.to_string();
        let claim = CohortCommand::ClaimSubmission {
            size_limit: self.settings.size_limit,
            at: ctx.at,
        };
        match self.buses.cohorts.execute(&key, claim, ctx).await {
            Ok(_) => {}
            Err(CommandError::Rejected(CohortError::Job(
                JobError::AlreadySubmitted | JobError::NotSubmittable(_),
            ))) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let Some(cohort) = self.buses.cohorts.load(&key).await?.state else {
            return Ok(());
        };
        let submission = JobSubmission {
            mode: ExecutorMode::Create,
            query: cohort.serialized_query.clone(),
            owner: cohort.owner.clone(),
            target: id,
            callback_path: None,
            sampling: cohort.sampling_ratio,
            details: None,
        };
        let outcome = self.executor.submit(submission).await;
        let command = match accepted_job(outcome) {
            Ok(job_id) => CohortCommand::RecordJob { job_id, at: ctx.at },
            Err(message) => CohortCommand::FailSubmission {
                message,
                at: ctx.at,
            },
        };
        self.buses.cohorts.execute(&key, command, ctx).await?;
        Ok(())
    }

    /// Kills the executor job of a count or cohort cancelled before its job id came back.
    pub async fn kill_if_cancelled(&self, job: StaleJob) -> Result<(), CohortsError> {
        let (id, state) = match job {
            StaleJob::Count(id) => (id, self.count(id).await?.map(|c| c.job)),
            StaleJob::Cohort(id) => (id, self.cohort(id).await?.map(|c| c.job)),
        };
        if let Some(job) = state
            && let (true, Some(job_id)) = (job.needs_kill(), &job.job_id)
            && let Err(e) = self.executor.cancel(job_id).await
        {
            tracing::warn!(target = %id, job = %job_id, error = %e, "cannot kill the job of a cancelled job");
        }
        Ok(())
    }

    /// Reactor: a deleted cohort's running job is killed at the executor and the cohort marked
    /// cancelled (a job id that comes back later is killed by [`Self::kill_if_cancelled`]).
    pub async fn cancel_deleted_cohort(
        &self,
        ctx: &CommandContext,
        id: Uuid,
    ) -> Result<(), CohortsError> {
        let Some(cohort) = self.cohort(id).await? else {
            return Ok(());
        };
        if !cohort.deleted || cohort.job.status.is_final() {
            return Ok(());
        }
        if let Some(job_id) = &cohort.job.job_id {
            match self.executor.cancel(job_id).await {
                // Its callback brings the result, which stays with the deleted cohort.
                Ok(CancelOutcome::AlreadyFinished) => return Ok(()),
                Ok(CancelOutcome::Killed) => {}
                Err(e) => {
                    tracing::warn!(cohort = %id, job = %job_id, error = %e, "cannot kill the job of a deleted cohort")
                }
            }
        }
        let command = CohortCommand::Settle {
            report: JobReport {
                status: "KILLED".into(),
                message: Some("the cohort was deleted".into()),
                ..Default::default()
            },
            via_etl: false,
            at: ctx.at,
        };
        self.buses
            .cohorts
            .execute(&id.to_string(), command, ctx)
            .await?;
        Ok(())
    }

    /// Asks the executor about every job without news since `before`: a lost callback is
    /// replaced by the executor's answer; a job the executor forgot, or a submission that was
    /// interrupted, fails with a clear message. Returns how many jobs changed.
    pub async fn reconcile(
        &self,
        ctx: &CommandContext,
        before: DateTime<Utc>,
    ) -> Result<usize, CohortsError> {
        let mut changed = 0;
        for stale in self.directory.stale_jobs(before).await? {
            let job = format!("{stale:?}");
            let (job_id, submitted) = match stale {
                StaleJob::Count(id) => {
                    let Some(s) = self.buses.counts.load(&id.to_string()).await?.state else {
                        continue;
                    };
                    (s.job.job_id, s.job.submitted)
                }
                StaleJob::Cohort(id) => {
                    let Some(s) = self.buses.cohorts.load(&id.to_string()).await?.state else {
                        continue;
                    };
                    (s.job.job_id, s.job.submitted)
                }
            };
            let Some(report) =
                executor_report(self.executor.as_ref(), &job, job_id.as_deref(), submitted).await
            else {
                continue;
            };
            let c = match stale {
                StaleJob::Count(id) => {
                    let command = CountCommand::Settle { report, at: ctx.at };
                    self.buses
                        .counts
                        .execute(&id.to_string(), command, ctx)
                        .await?
                }
                StaleJob::Cohort(id) => {
                    let command = CohortCommand::Settle {
                        report,
                        via_etl: false,
                        at: ctx.at,
                    };
                    self.buses
                        .cohorts
                        .execute(&id.to_string(), command, ctx)
                        .await?
                }
            };
            if c.last_sequence.is_some() {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Reactor: pushes a count's `job_status` message to its owner (not for global estimates,
    /// as upstream).
    pub async fn notify_count(
        &self,
        notifier: &dyn Notifier,
        id: Uuid,
    ) -> Result<(), CohortsError> {
        let Some(count) = self.buses.counts.load(&id.to_string()).await?.state else {
            return Ok(());
        };
        if count.mode == CountMode::Global {
            // Not pushed as a count (as upstream), but its bounds complete its cohort's message.
            // Only once the cohort has had its own message (else that message carries them).
            let Some(cohort) = self.directory.cohort_of_global_count(id).await? else {
                return Ok(());
            };
            let told = self
                .cohort(cohort)
                .await?
                .is_some_and(|c| c.job.status.is_final() || c.job.status == JobStatus::LongPending);
            return if told {
                self.notify_cohort(notifier, cohort).await
            } else {
                Ok(())
            };
        }
        let mut message = count_job_status(&count);
        self.protect(&count.owner, &count.serialized_query, &mut message)
            .await?;
        notifier.push(&count.owner, message).await;
        Ok(())
    }

    /// Reactor: pushes a cohort's `job_status` message (job `create`) to its owner.
    pub async fn notify_cohort(
        &self,
        notifier: &dyn Notifier,
        id: Uuid,
    ) -> Result<(), CohortsError> {
        let Some(cohort) = self.buses.cohorts.load(&id.to_string()).await?.state else {
            return Ok(());
        };
        let global = match cohort.global_measure {
            Some(g) => self.buses.counts.load(&g.to_string()).await?.state,
            None => None,
        };
        let mut message = cohort_job_status(&cohort, global.as_ref());
        self.protect(&cohort.owner, &cohort.serialized_query, &mut message)
            .await?;
        notifier.push(&cohort.owner, message).await;
        Ok(())
    }

    /// The current state of a count (reactors and publishers read it).
    pub async fn count(&self, id: Uuid) -> Result<Option<CountState>, CohortsError> {
        Ok(self.buses.counts.load(&id.to_string()).await?.state)
    }

    /// The current state of a cohort.
    pub async fn cohort(&self, id: Uuid) -> Result<Option<CohortState>, CohortsError> {
        Ok(self.buses.cohorts.load(&id.to_string()).await?.state)
    }
}

/// `user`'s request holding `snapshot` (checked against an optional `request` given too); other
/// users' snapshots do not exist for them.
pub(crate) async fn own_request_of_snapshot(
    workspace: &dyn WorkspaceDirectory,
    requests: &dyn Execute<Request>,
    user: &str,
    snapshot: Uuid,
    request: Option<Uuid>,
) -> Result<RequestState, CohortsError> {
    let not_found = || CohortsError::Request(RequestError::SnapshotNotFound);
    let request_id = workspace
        .request_of_snapshot(snapshot)
        .await?
        .ok_or_else(not_found)?;
    if request.is_some_and(|r| r != request_id) {
        return Err(InvalidField {
            field: "request",
            reason: "the snapshot does not belong to this request".into(),
        }
        .into());
    }
    let state = requests.load(&request_id.to_string()).await?;
    state
        .owned_by(user)
        .filter(|r| r.snapshots.contains_key(&snapshot))
        .cloned()
        .ok_or_else(not_found)
}

/// What reconciliation applies to a job without news: the executor's answer about its job, a
/// failure if the executor forgot it or if the submission never got a job id; `None` to leave
/// it for the next round (the executor is unreachable, or the job was never submitted).
pub(crate) async fn executor_report(
    executor: &dyn QueryExecutor,
    job: &str,
    job_id: Option<&str>,
    submitted: bool,
) -> Option<JobReport> {
    let failure = |message: String| JobReport {
        status: "ERROR".into(),
        message: Some(message),
        ..Default::default()
    };
    match (job_id, submitted) {
        (None, true) => Some(failure(
            "the submission to the query executor was interrupted; run it again".into(),
        )),
        (None, false) => None,
        (Some(job_id), _) => match executor.status(job_id).await {
            Ok(Some(report)) => Some(report),
            Ok(None) => Some(failure(format!(
                "the query executor no longer knows job {job_id} and its result was never received"
            ))),
            Err(e) => {
                tracing::warn!(job, error = %e, "reconciliation postponed");
                None
            }
        },
    }
}

/// Whether a report's status is one.
pub(crate) fn settled(report: &JobReport) -> Settled {
    if report.mapped_status().is_some() {
        Settled::Accepted
    } else {
        Settled::InvalidStatus
    }
}

/// The job id of an accepted submission, or the message of a refused one.
pub(crate) fn accepted_job(
    outcome: Result<crate::ports::JobAccepted, ExecutorError>,
) -> Result<String, String> {
    match outcome {
        Ok(accepted) => match domain::job::executor_status(&accepted.status) {
            Some(JobStatus::Failed | JobStatus::Cancelled | JobStatus::Unknown) => Err(accepted
                .message
                .unwrap_or_else(|| format!("the query executor answered {}", accepted.status))),
            _ if accepted.job_id.is_empty() => {
                Err("the query executor answered without a job id".into())
            }
            _ => Ok(accepted.job_id),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// The query with its source population replaced by `cohort_id` (global estimates count on the
/// root perimeter). A query that is not an object is returned unchanged (it was validated when
/// the snapshot was saved).
pub fn with_source_population(query: &str, cohort_id: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(query) else {
        return query.to_string();
    };
    if let Some(obj) = doc.as_object_mut() {
        let population = obj.entry("sourcePopulation").or_insert_with(|| json!({}));
        if let Some(p) = population.as_object_mut() {
            p.insert("caresiteCohortList".into(), json!([cohort_id]));
        }
    }
    doc.to_string()
}

/// The minimal Patient query of a sample: every patient of the parent cohort's group.
pub fn sample_query(parent_query: &str, parent_group_id: &str) -> String {
    let version = serde_json::from_str::<Value>(parent_query)
        .ok()
        .and_then(|d| d.get("version").cloned())
        .unwrap_or_else(|| json!("v1.6.1"));
    json!({
        "version": version,
        "_type": "request",
        "resourceType": "Patient",
        "sourcePopulation": {"caresiteCohortList": [parent_group_id]},
        "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": [], "temporalConstraints": []}
    })
    .to_string()
}

/// The query of an export subset: the source group's patients, restricted to one saved filter.
pub fn subset_query(
    source_query: &str,
    source_group_id: &str,
    filter: Option<(String, String)>,
) -> String {
    let version = serde_json::from_str::<Value>(source_query)
        .ok()
        .and_then(|d| d.get("version").cloned())
        .unwrap_or_else(|| json!("v1.6.1"));
    let (resource, criteria) = match filter {
        Some((resource, filter_fhir)) => (
            resource.clone(),
            json!([{
                "_type": "basicResource", "_id": 1, "isInclusive": true,
                "resourceType": resource, "filterFhir": filter_fhir
            }]),
        ),
        None => ("Patient".to_string(), json!([])),
    };
    json!({
        "version": version,
        "_type": "request",
        "resourceType": resource,
        "sourcePopulation": {"caresiteCohortList": [source_group_id]},
        "request": {"_type": "andGroup", "_id": 0, "isInclusive": true, "criteria": criteria, "temporalConstraints": []}
    })
    .to_string()
}

/// The websocket message of a count, as the front-end reads it.
pub fn count_job_status(count: &CountState) -> Value {
    let status = count.job.status.as_str();
    json!({
        "type": "job_status",
        "job_name": "count",
        "uuid": count.id,
        "status": status,
        "extra_info": {
            "request_job_status": status,
            "request_job_fail_msg": count.job.fail_msg,
            "measure": count.measure,
            "snapshot_id": count.snapshot_id,
            "extra": count.extra,
        }
    })
}

/// The websocket message of a cohort creation, as the front-end reads it.
pub fn cohort_job_status(cohort: &CohortState, global: Option<&CountState>) -> Value {
    let status = cohort.job.status.as_str();
    let mut extra = json!({
        "request_job_status": status,
        "request_job_fail_msg": cohort.job.fail_msg,
        "group_id": cohort.group_id,
        "result_size": cohort.size,
    });
    if let Some(g) = global {
        extra["global"] = json!({"measure_min": g.measure_min, "measure_max": g.measure_max});
    }
    json!({
        "type": "job_status",
        "job_name": "create",
        "uuid": cohort.id,
        "status": status,
        "extra_info": extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_estimates_count_on_the_root_population() {
        let q = r#"{"version":"v1.6.1","sourcePopulation":{"caresiteCohortList":["12","34"]},"request":{"_type":"andGroup"}}"#;
        let global: Value = serde_json::from_str(&with_source_population(q, "9999")).unwrap();
        assert_eq!(
            global["sourcePopulation"]["caresiteCohortList"],
            json!(["9999"])
        );
        assert_eq!(global["request"]["_type"], "andGroup");
    }

    #[test]
    fn a_subset_filters_the_source_group() {
        let q: Value = serde_json::from_str(&subset_query(
            "{}",
            "42",
            Some(("Condition".into(), "code=E11".into())),
        ))
        .unwrap();
        assert_eq!(q["resourceType"], "Condition");
        assert_eq!(q["sourcePopulation"]["caresiteCohortList"], json!(["42"]));
        assert_eq!(q["request"]["criteria"][0]["filterFhir"], "code=E11");
    }

    #[test]
    fn a_sample_queries_the_parent_group() {
        let q: Value =
            serde_json::from_str(&sample_query(r#"{"version":"v1.5.0"}"#, "777")).unwrap();
        assert_eq!(q["sourcePopulation"]["caresiteCohortList"], json!(["777"]));
        assert_eq!(q["version"], "v1.5.0");
        assert_eq!(q["resourceType"], "Patient");
    }

    #[test]
    fn a_refused_or_failed_submission_gives_a_message() {
        let ok = crate::ports::JobAccepted {
            job_id: "j1".into(),
            status: "RUNNING".into(),
            message: None,
        };
        assert_eq!(accepted_job(Ok(ok.clone())), Ok("j1".into()));
        let err = crate::ports::JobAccepted {
            status: "ERROR".into(),
            message: Some("bad query".into()),
            ..ok
        };
        assert_eq!(accepted_job(Ok(err)), Err("bad query".into()));
        assert!(
            accepted_job(Err(ExecutorError::Unreachable("connection refused".into())))
                .unwrap_err()
                .contains("unreachable")
        );
    }
}
