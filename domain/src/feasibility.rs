//! The FeasibilityStudy aggregate: an anonymised count of a snapshot broken down by perimeter,
//! delivered as a report; and the report itself (bucketed counts over the perimeter tree).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::job::{Job, JobError, JobReport, JobStatus, Settlement};

/// Buckets a count as upstream's report does: `0`, `< 10`, then tens (`20-30`).
pub fn bucket(count: i64) -> String {
    match count {
        n if n <= 0 => "0".into(),
        n if n < 10 => "< 10".into(),
        n => {
            let low = n / 10 * 10;
            format!("{low}-{}", low + 10)
        }
    }
}

/// One perimeter of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportNode {
    pub cohort_id: String,
    pub name: String,
    pub bucket: String,
    pub children: Vec<ReportNode>,
}

/// A perimeter as the report needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPerimeter {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub cohort_id: String,
    pub name: String,
    pub type_source_value: String,
}

/// The report tree: from the roots down, through perimeters whose type is in `types` (every
/// type when `types` is empty), each with its bucketed count (`counts`: cohort id → patients).
pub fn report_tree(
    perimeters: &[ReportPerimeter],
    counts: &BTreeMap<String, i64>,
    types: &[String],
) -> Vec<ReportNode> {
    let mut children: BTreeMap<Option<i64>, Vec<&ReportPerimeter>> = BTreeMap::new();
    for p in perimeters {
        children.entry(p.parent_id).or_default().push(p);
    }
    fn build(
        p: &ReportPerimeter,
        children: &BTreeMap<Option<i64>, Vec<&ReportPerimeter>>,
        counts: &BTreeMap<String, i64>,
        types: &[String],
    ) -> ReportNode {
        ReportNode {
            cohort_id: p.cohort_id.clone(),
            name: p.name.clone(),
            bucket: bucket(counts.get(&p.cohort_id).copied().unwrap_or(0)),
            children: children
                .get(&Some(p.id))
                .map(|kids| {
                    kids.iter()
                        .filter(|k| types.is_empty() || types.contains(&k.type_source_value))
                        .map(|k| build(k, children, counts, types))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
    children
        .get(&None)
        .map(|roots| {
            roots
                .iter()
                .map(|r| build(r, &children, counts, types))
                .collect()
        })
        .unwrap_or_default()
}

/// A new study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyRequest {
    pub study_id: Uuid,
    pub owner: String,
    pub request_id: Uuid,
    pub request_name: String,
    pub snapshot_id: Uuid,
    pub snapshot_version: u32,
    /// The query as sent: the snapshot's, counted over the root perimeter.
    pub serialized_query: String,
}

/// What may be asked of a study.
#[derive(Debug, Clone, PartialEq)]
pub enum StudyCommand {
    Request {
        study: StudyRequest,
        at: DateTime<Utc>,
    },
    ClaimSubmission {
        at: DateTime<Utc>,
    },
    RecordJob {
        job_id: String,
        at: DateTime<Utc>,
    },
    FailSubmission {
        message: String,
        at: DateTime<Utc>,
    },
    /// The executor's report, with the report tree the application built from its counts.
    Settle {
        report: JobReport,
        tree: Vec<ReportNode>,
        at: DateTime<Utc>,
    },
}

/// What happened to a study. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StudyEvent {
    FeasibilityStudyRequested {
        study_id: Uuid,
        owner: String,
        request_id: Uuid,
        request_name: String,
        snapshot_id: Uuid,
        snapshot_version: u32,
        serialized_query: String,
        at: DateTime<Utc>,
    },
    FeasibilityStudySubmitted {
        at: DateTime<Utc>,
    },
    FeasibilityStudyStarted {
        job_id: String,
        at: DateTime<Utc>,
    },
    /// The report: bucketed counts only (never the exact per-perimeter counts).
    FeasibilityStudyFinished {
        total_count: Option<i64>,
        tree: Vec<ReportNode>,
        at: DateTime<Utc>,
    },
    FeasibilityStudyFailed {
        message: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for StudyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FeasibilityStudyRequested { .. } => "FeasibilityStudyRequested",
            Self::FeasibilityStudySubmitted { .. } => "FeasibilityStudySubmitted",
            Self::FeasibilityStudyStarted { .. } => "FeasibilityStudyStarted",
            Self::FeasibilityStudyFinished { .. } => "FeasibilityStudyFinished",
            Self::FeasibilityStudyFailed { .. } => "FeasibilityStudyFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a study command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StudyError {
    #[error("a feasibility study with this id already exists")]
    AlreadyExists,
    #[error("feasibility study not found")]
    NotFound,
    #[error(transparent)]
    Job(#[from] JobError),
}

/// Current state of a study.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeasibilityStudy {
    pub state: Option<StudyState>,
}

/// The fields of a requested study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyState {
    pub id: Uuid,
    pub owner: String,
    pub request_id: Uuid,
    pub request_name: String,
    pub snapshot_id: Uuid,
    pub snapshot_version: u32,
    pub serialized_query: String,
    pub requested_at: DateTime<Utc>,
    pub job: Job,
    pub total_count: Option<i64>,
    pub tree: Vec<ReportNode>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl FeasibilityStudy {
    fn require(&self) -> Result<&StudyState, StudyError> {
        self.state.as_ref().ok_or(StudyError::NotFound)
    }

    /// Decides a command.
    pub fn decide(&self, command: StudyCommand) -> Result<Vec<StudyEvent>, StudyError> {
        match command {
            StudyCommand::Request { study, at } => {
                if self.state.is_some() {
                    return Err(StudyError::AlreadyExists);
                }
                Ok(vec![StudyEvent::FeasibilityStudyRequested {
                    study_id: study.study_id,
                    owner: study.owner,
                    request_id: study.request_id,
                    request_name: study.request_name,
                    snapshot_id: study.snapshot_id,
                    snapshot_version: study.snapshot_version,
                    serialized_query: study.serialized_query,
                    at,
                }])
            }
            StudyCommand::ClaimSubmission { at } => {
                self.require()?.job.claim()?;
                Ok(vec![StudyEvent::FeasibilityStudySubmitted { at }])
            }
            StudyCommand::RecordJob { job_id, at } => {
                if self.require()?.job.record_job(&job_id)? {
                    Ok(vec![StudyEvent::FeasibilityStudyStarted { job_id, at }])
                } else {
                    Ok(vec![])
                }
            }
            StudyCommand::FailSubmission { message, at } => {
                if self.require()?.job.status.is_final() {
                    return Ok(vec![]);
                }
                Ok(vec![StudyEvent::FeasibilityStudyFailed { message, at }])
            }
            StudyCommand::Settle { report, tree, at } => {
                let state = self.require()?;
                Ok(match state.job.settle(&report, false) {
                    Settlement::Unchanged | Settlement::LongPending => vec![],
                    // Upstream: a finished report without per-perimeter counts is a failure.
                    Settlement::Finished if report.extra.is_empty() => {
                        vec![StudyEvent::FeasibilityStudyFailed {
                            message: "the executor's result has no per-perimeter counts".into(),
                            at,
                        }]
                    }
                    Settlement::Finished => vec![StudyEvent::FeasibilityStudyFinished {
                        total_count: report.count,
                        tree,
                        at,
                    }],
                    Settlement::Failed(message)
                    | Settlement::Invalid(message)
                    | Settlement::Cancelled(message) => {
                        vec![StudyEvent::FeasibilityStudyFailed { message, at }]
                    }
                })
            }
        }
    }
}

impl Aggregate for FeasibilityStudy {
    const TYPE: &'static str = "FeasibilityStudy";
    type Command = StudyCommand;
    type Event = StudyEvent;
    type Error = StudyError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let StudyEvent::FeasibilityStudyRequested {
            study_id,
            owner,
            request_id,
            request_name,
            snapshot_id,
            snapshot_version,
            serialized_query,
            at,
        } = event
        {
            self.state = Some(StudyState {
                id: study_id,
                owner,
                request_id,
                request_name,
                snapshot_id,
                snapshot_version,
                serialized_query,
                requested_at: at,
                job: Job::default(),
                total_count: None,
                tree: Vec::new(),
                finished_at: None,
            });
            return;
        }
        let Some(s) = &mut self.state else { return };
        match event {
            StudyEvent::FeasibilityStudyRequested { .. } => {}
            StudyEvent::FeasibilityStudySubmitted { .. } => {
                s.job.submitted = true;
                s.job.status = JobStatus::Pending;
            }
            StudyEvent::FeasibilityStudyStarted { job_id, .. } => s.job.started(job_id),
            StudyEvent::FeasibilityStudyFinished {
                total_count,
                tree,
                at,
            } => {
                s.job.status = JobStatus::Finished;
                s.total_count = total_count;
                s.tree = tree;
                s.finished_at = Some(at);
            }
            StudyEvent::FeasibilityStudyFailed { message, .. } => {
                s.job.status = JobStatus::Failed;
                s.job.fail_msg = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bucketed_as_upstream() {
        assert_eq!(bucket(0), "0");
        assert_eq!(bucket(1), "< 10");
        assert_eq!(bucket(9), "< 10");
        assert_eq!(bucket(10), "10-20");
        assert_eq!(bucket(25), "20-30");
        assert_eq!(bucket(1234), "1230-1240");
    }

    #[test]
    fn the_tree_keeps_reporting_types_only() {
        let p = |id, parent, kind: &str| ReportPerimeter {
            id,
            parent_id: parent,
            cohort_id: id.to_string(),
            name: format!("P{id}"),
            type_source_value: kind.into(),
        };
        let perimeters = [
            p(1, None, "AP-HP"),
            p(2, Some(1), "Hôpital"),
            p(3, Some(2), "UF"),
            p(4, Some(1), "Hôpital"),
        ];
        let counts = BTreeMap::from([("1".to_string(), 42), ("2".to_string(), 5)]);
        let tree = report_tree(&perimeters, &counts, &["Hôpital".to_string()]);
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0].bucket, "40-50");
        let names: Vec<_> = tree[0].children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["P2", "P4"]);
        assert_eq!(tree[0].children[0].bucket, "< 10");
        assert!(
            tree[0].children[0].children.is_empty(),
            "UF is not reported"
        );
        assert_eq!(tree[0].children[1].bucket, "0");
    }
}
