//! The Cohort aggregate: a materialised cohort (upstream's `CohortResult`), from the save
//! request to the executor's group id, including samples of another cohort.
//!
//! A cohort whose expected size reaches the size limit is `long_pending` from its submission: the
//! executor hands it to the Solr ETL, whose callback finishes it.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::job::{Job, JobError, JobReport, JobStatus, Settlement};
use crate::validation::limits::DESCRIPTION_MAX_BYTES;
use crate::validation::{InvalidField, bounded_optional_text, required_text};

/// Longest cohort name accepted.
pub const COHORT_NAME_MAX: usize = 255;

/// A new cohort.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortRequest {
    pub cohort_id: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub request_id: Uuid,
    pub snapshot_id: Uuid,
    pub snapshot_version: u32,
    /// The query as it will be sent (for a sample, a Patient query on the parent's group).
    pub serialized_query: String,
    /// The finished count the cohort is saved from (none for samples).
    pub dated_measure: Option<Uuid>,
    /// The global-estimate count requested with it, if any.
    pub global_measure: Option<Uuid>,
    pub parent_cohort: Option<Uuid>,
    pub sampling_ratio: Option<f64>,
    /// The size announced by the count (or parent size × ratio), which decides `long_pending`.
    pub expected_size: Option<i64>,
    /// An export's subset of another cohort (hidden from the owner's lists).
    pub is_subset: bool,
}

/// Changes to a cohort's description fields; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CohortChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub favorite: Option<bool>,
}

/// What may be asked of a cohort.
#[derive(Debug, Clone, PartialEq)]
pub enum CohortCommand {
    Request {
        cohort: CohortRequest,
        at: DateTime<Utc>,
    },
    /// Claims the submission; a cohort expected to hold `size_limit` patients or more is
    /// `long_pending` from now on.
    ClaimSubmission {
        size_limit: i64,
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
    /// Applies a report from the executor, or from the Solr ETL (`via_etl`).
    Settle {
        report: JobReport,
        via_etl: bool,
        at: DateTime<Utc>,
    },
    Update {
        by: String,
        changes: CohortChanges,
        at: DateTime<Utc>,
    },
    Delete {
        by: String,
        at: DateTime<Utc>,
    },
}

/// What happened to a cohort. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CohortEvent {
    CohortRequested {
        cohort_id: Uuid,
        owner: String,
        name: String,
        description: Option<String>,
        request_id: Uuid,
        snapshot_id: Uuid,
        snapshot_version: u32,
        serialized_query: String,
        dated_measure: Option<Uuid>,
        global_measure: Option<Uuid>,
        parent_cohort: Option<Uuid>,
        sampling_ratio: Option<f64>,
        expected_size: Option<i64>,
        is_subset: bool,
        at: DateTime<Utc>,
    },
    /// Claimed for submission: `pending`, or `long_pending` for a large cohort.
    CohortSubmitted {
        long_pending: bool,
        at: DateTime<Utc>,
    },
    CohortStarted {
        job_id: String,
        at: DateTime<Utc>,
    },
    /// The executor stored the cohort and handed it to the Solr ETL.
    CohortLongPending {
        group_id: Option<String>,
        size: Option<i64>,
        at: DateTime<Utc>,
    },
    CohortCreated {
        group_id: Option<String>,
        size: Option<i64>,
        via_etl: bool,
        at: DateTime<Utc>,
    },
    CohortFailed {
        message: String,
        at: DateTime<Utc>,
    },
    CohortCancelled {
        message: String,
        at: DateTime<Utc>,
    },
    CohortRenamed {
        name: String,
        at: DateTime<Utc>,
    },
    CohortDescriptionChanged {
        description: Option<String>,
        at: DateTime<Utc>,
    },
    CohortFavoriteChanged {
        favorite: bool,
        at: DateTime<Utc>,
    },
    CohortDeleted {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CohortEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CohortRequested { .. } => "CohortRequested",
            Self::CohortSubmitted { .. } => "CohortSubmitted",
            Self::CohortStarted { .. } => "CohortStarted",
            Self::CohortLongPending { .. } => "CohortLongPending",
            Self::CohortCreated { .. } => "CohortCreated",
            Self::CohortFailed { .. } => "CohortFailed",
            Self::CohortCancelled { .. } => "CohortCancelled",
            Self::CohortRenamed { .. } => "CohortRenamed",
            Self::CohortDescriptionChanged { .. } => "CohortDescriptionChanged",
            Self::CohortFavoriteChanged { .. } => "CohortFavoriteChanged",
            Self::CohortDeleted { .. } => "CohortDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a cohort command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CohortError {
    #[error("a cohort with this id already exists")]
    AlreadyExists,
    /// Missing, deleted, or someone else's.
    #[error("cohort not found")]
    NotFound,
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// Current state of a cohort.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub state: Option<CohortState>,
}

/// The fields of a requested cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortState {
    pub id: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub request_id: Uuid,
    pub snapshot_id: Uuid,
    pub snapshot_version: u32,
    pub serialized_query: String,
    pub dated_measure: Option<Uuid>,
    pub global_measure: Option<Uuid>,
    pub parent_cohort: Option<Uuid>,
    pub sampling_ratio: Option<f64>,
    pub expected_size: Option<i64>,
    pub is_subset: bool,
    pub requested_at: DateTime<Utc>,
    pub job: Job,
    pub group_id: Option<String>,
    pub size: Option<i64>,
    pub deleted: bool,
}

impl Cohort {
    fn require(&self) -> Result<&CohortState, CohortError> {
        self.state.as_ref().ok_or(CohortError::NotFound)
    }

    /// The live cohort if it exists, is not deleted and belongs to `user`.
    pub fn owned_by(&self, user: &str) -> Option<&CohortState> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted && s.owner == user)
    }

    /// Decides a command: the events it produces, or why it is refused.
    pub fn decide(&self, command: CohortCommand) -> Result<Vec<CohortEvent>, CohortError> {
        match command {
            CohortCommand::Request { cohort, at } => {
                if self.state.is_some() {
                    return Err(CohortError::AlreadyExists);
                }
                required_text("name", &cohort.name, COHORT_NAME_MAX)?;
                bounded_optional_text(
                    "description",
                    cohort.description.as_deref(),
                    DESCRIPTION_MAX_BYTES,
                )?;
                if let Some(r) = cohort.sampling_ratio
                    && !(r > 0.0 && r < 1.0)
                {
                    return Err(InvalidField {
                        field: "sampling_ratio",
                        reason: "must be strictly between 0 and 1".into(),
                    }
                    .into());
                }
                Ok(vec![CohortEvent::CohortRequested {
                    cohort_id: cohort.cohort_id,
                    owner: cohort.owner,
                    name: cohort.name,
                    description: cohort.description,
                    request_id: cohort.request_id,
                    snapshot_id: cohort.snapshot_id,
                    snapshot_version: cohort.snapshot_version,
                    serialized_query: cohort.serialized_query,
                    dated_measure: cohort.dated_measure,
                    global_measure: cohort.global_measure,
                    parent_cohort: cohort.parent_cohort,
                    sampling_ratio: cohort.sampling_ratio,
                    expected_size: cohort.expected_size,
                    is_subset: cohort.is_subset,
                    at,
                }])
            }
            CohortCommand::ClaimSubmission { size_limit, at } => {
                let state = self.require()?;
                state.job.claim()?;
                let long_pending = state.expected_size.is_some_and(|n| n >= size_limit);
                Ok(vec![CohortEvent::CohortSubmitted { long_pending, at }])
            }
            CohortCommand::RecordJob { job_id, at } => {
                if self.require()?.job.record_job(&job_id)? {
                    Ok(vec![CohortEvent::CohortStarted { job_id, at }])
                } else {
                    Ok(vec![])
                }
            }
            CohortCommand::FailSubmission { message, at } => {
                if self.require()?.job.status.is_final() {
                    return Ok(vec![]);
                }
                Ok(vec![CohortEvent::CohortFailed { message, at }])
            }
            CohortCommand::Settle {
                report,
                via_etl,
                at,
            } => {
                let state = self.require()?;
                Ok(match state.job.settle(&report, true) {
                    Settlement::Unchanged => vec![],
                    Settlement::Finished => vec![CohortEvent::CohortCreated {
                        group_id: report.group_id.or_else(|| state.group_id.clone()),
                        size: report.count.or(state.size),
                        via_etl,
                        at,
                    }],
                    Settlement::LongPending => {
                        let news = state.job.status != JobStatus::LongPending
                            || (report.group_id.is_some() && report.group_id != state.group_id)
                            || (report.count.is_some() && report.count != state.size);
                        if news {
                            vec![CohortEvent::CohortLongPending {
                                group_id: report.group_id,
                                size: report.count,
                                at,
                            }]
                        } else {
                            vec![]
                        }
                    }
                    Settlement::Failed(message) | Settlement::Invalid(message) => {
                        vec![CohortEvent::CohortFailed { message, at }]
                    }
                    Settlement::Cancelled(message) => {
                        vec![CohortEvent::CohortCancelled { message, at }]
                    }
                })
            }
            CohortCommand::Update { by, changes, at } => {
                let current = self.owned_by(&by).ok_or(CohortError::NotFound)?;
                let mut events = Vec::new();
                if let Some(name) = changes.name.filter(|n| *n != current.name) {
                    required_text("name", &name, COHORT_NAME_MAX)?;
                    events.push(CohortEvent::CohortRenamed { name, at });
                }
                if let Some(d) = changes
                    .description
                    .filter(|d| Some(d) != current.description.as_ref())
                {
                    bounded_optional_text("description", Some(&d), DESCRIPTION_MAX_BYTES)?;
                    events.push(CohortEvent::CohortDescriptionChanged {
                        description: Some(d),
                        at,
                    });
                }
                if let Some(favorite) = changes.favorite.filter(|f| *f != current.favorite) {
                    events.push(CohortEvent::CohortFavoriteChanged { favorite, at });
                }
                Ok(events)
            }
            CohortCommand::Delete { by, at } => {
                self.owned_by(&by).ok_or(CohortError::NotFound)?;
                Ok(vec![CohortEvent::CohortDeleted { at }])
            }
        }
    }
}

impl Aggregate for Cohort {
    const TYPE: &'static str = "Cohort";
    type Command = CohortCommand;
    type Event = CohortEvent;
    type Error = CohortError;
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
        if let CohortEvent::CohortRequested {
            cohort_id,
            owner,
            name,
            description,
            request_id,
            snapshot_id,
            snapshot_version,
            serialized_query,
            dated_measure,
            global_measure,
            parent_cohort,
            sampling_ratio,
            expected_size,
            is_subset,
            at,
        } = event
        {
            self.state = Some(CohortState {
                id: cohort_id,
                owner,
                name,
                description,
                favorite: false,
                request_id,
                snapshot_id,
                snapshot_version,
                serialized_query,
                dated_measure,
                global_measure,
                parent_cohort,
                sampling_ratio,
                expected_size,
                is_subset,
                requested_at: at,
                job: Job::default(),
                group_id: None,
                size: None,
                deleted: false,
            });
            return;
        }
        let Some(s) = &mut self.state else { return };
        match event {
            CohortEvent::CohortRequested { .. } => {}
            CohortEvent::CohortSubmitted { long_pending, .. } => {
                s.job.submitted = true;
                s.job.status = if long_pending {
                    JobStatus::LongPending
                } else {
                    JobStatus::Pending
                };
            }
            CohortEvent::CohortStarted { job_id, .. } => s.job.started(job_id),
            CohortEvent::CohortLongPending { group_id, size, .. } => {
                s.job.status = JobStatus::LongPending;
                s.group_id = group_id.or(s.group_id.take());
                s.size = size.or(s.size);
            }
            CohortEvent::CohortCreated { group_id, size, .. } => {
                s.job.status = JobStatus::Finished;
                s.group_id = group_id;
                s.size = size;
            }
            CohortEvent::CohortFailed { message, .. } => {
                s.job.status = JobStatus::Failed;
                s.job.fail_msg = Some(message);
            }
            CohortEvent::CohortCancelled { message, .. } => {
                s.job.status = JobStatus::Cancelled;
                s.job.fail_msg = Some(message);
            }
            CohortEvent::CohortRenamed { name, .. } => s.name = name,
            CohortEvent::CohortDescriptionChanged { description, .. } => {
                s.description = description
            }
            CohortEvent::CohortFavoriteChanged { favorite, .. } => s.favorite = favorite,
            CohortEvent::CohortDeleted { .. } => s.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .into()
    }

    fn request(expected_size: Option<i64>, sampling_ratio: Option<f64>) -> CohortRequest {
        CohortRequest {
            cohort_id: Uuid::from_u128(1),
            owner: "alice".into(),
            name: "Diabetics".into(),
            description: None,
            request_id: Uuid::from_u128(2),
            snapshot_id: Uuid::from_u128(3),
            snapshot_version: 2,
            serialized_query: "{}".into(),
            dated_measure: Some(Uuid::from_u128(4)),
            global_measure: None,
            parent_cohort: None,
            sampling_ratio,
            expected_size,
            is_subset: false,
        }
    }

    fn run(c: &mut Cohort, command: CohortCommand) -> Vec<CohortEvent> {
        let events = c.decide(command).unwrap();
        for e in events.clone() {
            c.apply(e);
        }
        events
    }

    fn report(status: &str, group: Option<&str>, count: Option<i64>) -> JobReport {
        JobReport {
            status: status.into(),
            group_id: group.map(str::to_string),
            count,
            ..Default::default()
        }
    }

    #[test]
    fn a_large_cohort_waits_for_the_etl_and_keeps_long_pending_when_started() {
        let mut c = Cohort::default();
        run(
            &mut c,
            CohortCommand::Request {
                cohort: request(Some(25_000), None),
                at: at(),
            },
        );
        run(
            &mut c,
            CohortCommand::ClaimSubmission {
                size_limit: 20_000,
                at: at(),
            },
        );
        run(
            &mut c,
            CohortCommand::RecordJob {
                job_id: "j".into(),
                at: at(),
            },
        );
        assert_eq!(c.state.as_ref().unwrap().job.status, JobStatus::LongPending);
        let long_pending = CohortCommand::Settle {
            report: report("LONG_PENDING", Some("g1"), Some(25_001)),
            via_etl: false,
            at: at(),
        };
        assert_eq!(run(&mut c, long_pending.clone()).len(), 1);
        assert!(
            run(&mut c, long_pending).is_empty(),
            "a repeat changes nothing"
        );
        let events = run(
            &mut c,
            CohortCommand::Settle {
                report: report("FINISHED", None, None),
                via_etl: true,
                at: at(),
            },
        );
        assert_eq!(
            events,
            vec![CohortEvent::CohortCreated {
                group_id: Some("g1".into()),
                size: Some(25_001),
                via_etl: true,
                at: at()
            }]
        );
    }

    #[test]
    fn sampling_ratios_are_strictly_between_zero_and_one() {
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(matches!(
                Cohort::default().decide(CohortCommand::Request {
                    cohort: request(None, Some(bad)),
                    at: at()
                }),
                Err(CohortError::Invalid(_))
            ));
        }
        assert!(
            Cohort::default()
                .decide(CohortCommand::Request {
                    cohort: request(None, Some(0.3)),
                    at: at()
                })
                .is_ok()
        );
    }

    #[test]
    fn only_the_owner_updates_or_deletes() {
        let mut c = Cohort::default();
        run(
            &mut c,
            CohortCommand::Request {
                cohort: request(Some(10), None),
                at: at(),
            },
        );
        assert_eq!(
            c.decide(CohortCommand::Delete {
                by: "mallory".into(),
                at: at()
            }),
            Err(CohortError::NotFound)
        );
        let events = run(
            &mut c,
            CohortCommand::Update {
                by: "alice".into(),
                changes: CohortChanges {
                    favorite: Some(true),
                    name: Some("Diabetics".into()),
                    ..Default::default()
                },
                at: at(),
            },
        );
        assert_eq!(
            events,
            vec![CohortEvent::CohortFavoriteChanged {
                favorite: true,
                at: at()
            }]
        );
    }
}
