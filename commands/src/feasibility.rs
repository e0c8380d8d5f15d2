//! Feasibility studies: a per-perimeter count of a snapshot over the whole institution,
//! delivered as a report of bucketed counts (exact per-perimeter counts are never stored).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use domain::feasibility::{
    FeasibilityStudy, ReportPerimeter, StudyCommand, StudyError, StudyRequest, StudyState,
    report_tree,
};
use domain::job::{JobError, JobReport};
use domain::request::Request;
use domain::validation::InvalidField;
use uuid::Uuid;

use crate::bus::Execute;
use crate::cohorts::{CohortsError, Settled, with_source_population};
use crate::context::CommandContext;
use crate::error::CommandError;
use crate::ports::{
    CohortDirectory, Consistency, ExecutorMode, JobSubmission, PortError, QueryExecutor,
    WorkspaceDirectory,
};
use crate::workspace::Written;

/// The perimeter tree as reports need it.
#[async_trait]
pub trait ReportPerimeters: Send + Sync {
    async fn report_perimeters(&self) -> Result<Vec<ReportPerimeter>, PortError>;
}

impl From<CommandError<StudyError>> for CohortsError {
    fn from(e: CommandError<StudyError>) -> Self {
        crate::error::from_command(e, CohortsError::Study)
    }
}

/// What the feasibility service needs.
pub struct FeasibilityPorts {
    pub studies: Arc<dyn Execute<FeasibilityStudy>>,
    pub requests: Arc<dyn Execute<Request>>,
    pub workspace: Arc<dyn WorkspaceDirectory>,
    pub directory: Arc<dyn CohortDirectory>,
    pub perimeters: Arc<dyn ReportPerimeters>,
    pub executor: Arc<dyn QueryExecutor>,
    pub consistency: Arc<dyn Consistency>,
}

/// The feasibility-study service.
pub struct Feasibility {
    ports: FeasibilityPorts,
    /// `REPORTING_PERIMETER_TYPES`: the perimeter types a report goes down through (all if empty).
    reporting_types: Vec<String>,
}

/// Where the executor calls back for a study.
pub fn callback_path(study: Uuid) -> String {
    format!("/cohort/feasibility-studies/{study}/")
}

impl Feasibility {
    pub fn new(ports: FeasibilityPorts, reporting_types: Vec<String>) -> Self {
        Self {
            ports,
            reporting_types,
        }
    }

    /// Asks for a study of one of the caller's snapshots.
    pub async fn request(
        &self,
        ctx: &CommandContext,
        snapshot: Uuid,
    ) -> Result<Written<Uuid>, CohortsError> {
        let owned = crate::cohorts::own_request_of_snapshot(
            self.ports.workspace.as_ref(),
            self.ports.requests.as_ref(),
            &ctx.user,
            snapshot,
            None,
        )
        .await?;
        let s = &owned.snapshots[&snapshot];
        let root = self
            .ports
            .directory
            .root_perimeter_cohort_id()
            .await?
            .ok_or(InvalidField {
                field: "request_query_snapshot",
                reason: "no root perimeter with a cohort id is known".into(),
            })?;
        let id = Uuid::new_v4();
        let command = StudyCommand::Request {
            study: StudyRequest {
                study_id: id,
                owner: ctx.user.clone(),
                request_id: owned.id,
                request_name: owned.name.clone(),
                snapshot_id: snapshot,
                snapshot_version: s.version,
                serialized_query: with_source_population(&s.serialized_query, &root),
            },
            at: ctx.at,
        };
        let c = self
            .ports
            .studies
            .execute_new(&id.to_string(), command, ctx)
            .await?;
        let caught_up = self.ports.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: id,
            caught_up,
        })
    }

    /// Reactor: submits the study's `count_with_details` job, unless already claimed.
    pub async fn submit(&self, ctx: &CommandContext, id: Uuid) -> Result<(), CohortsError> {
        let key = id.to_string();
        let claim = StudyCommand::ClaimSubmission { at: ctx.at };
        match self.ports.studies.execute(&key, claim, ctx).await {
            Ok(_) => {}
            Err(CommandError::Rejected(StudyError::Job(
                JobError::AlreadySubmitted | JobError::NotSubmittable(_),
            ))) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let Some(study) = self.ports.studies.load(&key).await?.state else {
            return Ok(());
        };
        let submission = JobSubmission {
            mode: ExecutorMode::CountWithDetails,
            query: study.serialized_query.clone(),
            owner: study.owner.clone(),
            target: id,
            callback_path: Some(callback_path(id)),
            sampling: None,
            details: None,
        };
        let command =
            match crate::cohorts::accepted_job(self.ports.executor.submit(submission).await) {
                Ok(job_id) => StudyCommand::RecordJob { job_id, at: ctx.at },
                Err(message) => StudyCommand::FailSubmission {
                    message,
                    at: ctx.at,
                },
            };
        self.ports.studies.execute(&key, command, ctx).await?;
        Ok(())
    }

    /// Applies the executor's callback: the report is built from its per-perimeter counts.
    pub async fn settle(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        report: JobReport,
    ) -> Result<Written<Settled>, CohortsError> {
        let settled = crate::cohorts::settled(&report);
        let counts: BTreeMap<String, i64> = report
            .extra
            .iter()
            .filter_map(|(k, v)| {
                let n = match v {
                    serde_json::Value::Number(n) => n.as_i64(),
                    serde_json::Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                n.map(|n| (k.clone(), n))
            })
            .collect();
        let tree = if counts.is_empty() {
            Vec::new()
        } else {
            let perimeters = self.ports.perimeters.report_perimeters().await?;
            report_tree(&perimeters, &counts, &self.reporting_types)
        };
        let command = StudyCommand::Settle {
            report,
            tree,
            at: ctx.at,
        };
        let c = self
            .ports
            .studies
            .execute(&id.to_string(), command, ctx)
            .await?;
        let caught_up = self.ports.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: settled,
            caught_up,
        })
    }

    /// Asks the executor about the studies without news since `before` (as
    /// [`crate::cohorts::Cohorts::reconcile`] does for counts and cohorts). Returns how many
    /// changed.
    pub async fn reconcile(
        &self,
        ctx: &CommandContext,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, CohortsError> {
        let mut changed = 0;
        for id in self.ports.directory.stale_studies(before).await? {
            let Some(study) = self.study(None, id).await? else {
                continue;
            };
            let Some(report) = crate::cohorts::executor_report(
                self.ports.executor.as_ref(),
                &format!("study {id}"),
                study.job.job_id.as_deref(),
                study.job.submitted,
            )
            .await
            else {
                continue;
            };
            let before = study.job.status;
            self.settle(ctx, id, report).await?;
            if self
                .study(None, id)
                .await?
                .is_some_and(|s| s.job.status != before)
            {
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// A study as its owner (or, with `None`, anyone) may see it.
    pub async fn study(
        &self,
        owner: Option<&str>,
        id: Uuid,
    ) -> Result<Option<StudyState>, CohortsError> {
        let study = self.ports.studies.load(&id.to_string()).await?;
        Ok(study.state.filter(|s| owner.is_none_or(|o| o == s.owner)))
    }
}
