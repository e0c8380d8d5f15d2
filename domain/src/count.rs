//! The Count aggregate: one patient count of a query snapshot (upstream's "dated measure"),
//! from request to result.
//!
//! The events hold the whole lineage: the snapshot and its version, the exact query text sent
//! (a snapshot's query can be patched later), the executor's job id and the result.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::job::{Job, JobError, JobReport, JobStatus, Settlement};

/// What is counted: the snapshot's own source population, or the whole institution (a global
/// estimate, answered with fuzzed `minimum`/`maximum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CountMode {
    Snapshot,
    Global,
}

impl CountMode {
    /// Upstream's wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "Snapshot",
            Self::Global => "Global",
        }
    }
}

/// A new count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRequest {
    pub count_id: Uuid,
    pub owner: String,
    pub request_id: Uuid,
    pub snapshot_id: Uuid,
    pub snapshot_version: u32,
    /// The query as it will be sent (for a global estimate, with the root's source population).
    pub serialized_query: String,
    pub mode: CountMode,
    /// `all` or `ratio`: per-criterion stage counts.
    pub stage_details: Option<String>,
    /// The refresh schedule that asked for this count, if any.
    pub refresh_schedule: Option<Uuid>,
}

/// What may be asked of a count.
#[derive(Debug, Clone, PartialEq)]
pub enum CountCommand {
    Request {
        count: CountRequest,
        at: DateTime<Utc>,
    },
    /// Claims the submission to the executor (at most once per count).
    ClaimSubmission { at: DateTime<Utc> },
    /// Records the executor's job id.
    RecordJob { job_id: String, at: DateTime<Utc> },
    /// The executor could not take the job.
    FailSubmission { message: String, at: DateTime<Utc> },
    /// Applies the executor's report (callback or reconciliation).
    Settle {
        report: JobReport,
        at: DateTime<Utc>,
    },
    /// Cancels a count that has no running executor job (a running one is killed at the
    /// executor first and settled by the `KILLED` report).
    Cancel { reason: String, at: DateTime<Utc> },
}

/// What happened to a count. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CountEvent {
    CountRequested {
        count_id: Uuid,
        owner: String,
        request_id: Uuid,
        snapshot_id: Uuid,
        snapshot_version: u32,
        serialized_query: String,
        mode: CountMode,
        stage_details: Option<String>,
        refresh_schedule: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// Claimed for submission: the count is `pending`.
    CountSubmitted {
        at: DateTime<Utc>,
    },
    CountStarted {
        job_id: String,
        at: DateTime<Utc>,
    },
    CountFinished {
        measure: Option<i64>,
        measure_min: Option<i64>,
        measure_max: Option<i64>,
        extra: BTreeMap<String, Value>,
        at: DateTime<Utc>,
    },
    CountFailed {
        message: String,
        at: DateTime<Utc>,
    },
    CountCancelled {
        message: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::CountRequested { .. } => "CountRequested",
            Self::CountSubmitted { .. } => "CountSubmitted",
            Self::CountStarted { .. } => "CountStarted",
            Self::CountFinished { .. } => "CountFinished",
            Self::CountFailed { .. } => "CountFailed",
            Self::CountCancelled { .. } => "CountCancelled",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a count command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CountError {
    #[error("a count with this id already exists")]
    AlreadyExists,
    #[error("dated measure not found")]
    NotFound,
    #[error(transparent)]
    Job(#[from] JobError),
}

/// Current state of a count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Count {
    pub state: Option<CountState>,
}

/// The fields of a requested count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountState {
    pub id: Uuid,
    pub owner: String,
    pub request_id: Uuid,
    pub snapshot_id: Uuid,
    pub snapshot_version: u32,
    pub serialized_query: String,
    pub mode: CountMode,
    pub stage_details: Option<String>,
    pub refresh_schedule: Option<Uuid>,
    pub requested_at: DateTime<Utc>,
    pub job: Job,
    pub measure: Option<i64>,
    pub measure_min: Option<i64>,
    pub measure_max: Option<i64>,
    pub extra: BTreeMap<String, Value>,
    pub settled_at: Option<DateTime<Utc>>,
}

impl Count {
    fn require(&self) -> Result<&CountState, CountError> {
        self.state.as_ref().ok_or(CountError::NotFound)
    }

    /// Decides a command: the events it produces, or why it is refused.
    pub fn decide(&self, command: CountCommand) -> Result<Vec<CountEvent>, CountError> {
        match command {
            CountCommand::Request { count, at } => {
                if self.state.is_some() {
                    return Err(CountError::AlreadyExists);
                }
                Ok(vec![CountEvent::CountRequested {
                    count_id: count.count_id,
                    owner: count.owner,
                    request_id: count.request_id,
                    snapshot_id: count.snapshot_id,
                    snapshot_version: count.snapshot_version,
                    serialized_query: count.serialized_query,
                    mode: count.mode,
                    stage_details: count.stage_details,
                    refresh_schedule: count.refresh_schedule,
                    at,
                }])
            }
            CountCommand::ClaimSubmission { at } => {
                self.require()?.job.claim()?;
                Ok(vec![CountEvent::CountSubmitted { at }])
            }
            CountCommand::RecordJob { job_id, at } => {
                if self.require()?.job.record_job(&job_id)? {
                    Ok(vec![CountEvent::CountStarted { job_id, at }])
                } else {
                    Ok(vec![])
                }
            }
            CountCommand::FailSubmission { message, at } => {
                let state = self.require()?;
                if state.job.status.is_final() {
                    return Ok(vec![]);
                }
                Ok(vec![CountEvent::CountFailed { message, at }])
            }
            CountCommand::Settle { report, at } => {
                let state = self.require()?;
                Ok(match state.job.settle(&report, false) {
                    Settlement::Unchanged | Settlement::LongPending => vec![],
                    Settlement::Finished => vec![CountEvent::CountFinished {
                        measure: report.count,
                        measure_min: report.minimum.filter(|_| state.mode == CountMode::Global),
                        measure_max: report.maximum.filter(|_| state.mode == CountMode::Global),
                        extra: report.extra,
                        at,
                    }],
                    Settlement::Failed(message) | Settlement::Invalid(message) => {
                        vec![CountEvent::CountFailed { message, at }]
                    }
                    Settlement::Cancelled(message) => {
                        vec![CountEvent::CountCancelled { message, at }]
                    }
                })
            }
            CountCommand::Cancel { reason, at } => {
                let state = self.require()?;
                if !state.job.cancellable() {
                    return Ok(vec![]);
                }
                Ok(vec![CountEvent::CountCancelled {
                    message: reason,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for Count {
    const TYPE: &'static str = "Count";
    type Command = CountCommand;
    type Event = CountEvent;
    type Error = CountError;
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
        if let CountEvent::CountRequested {
            count_id,
            owner,
            request_id,
            snapshot_id,
            snapshot_version,
            serialized_query,
            mode,
            stage_details,
            refresh_schedule,
            at,
        } = event
        {
            self.state = Some(CountState {
                id: count_id,
                owner,
                request_id,
                snapshot_id,
                snapshot_version,
                serialized_query,
                mode,
                stage_details,
                refresh_schedule,
                requested_at: at,
                job: Job::default(),
                measure: None,
                measure_min: None,
                measure_max: None,
                extra: BTreeMap::new(),
                settled_at: None,
            });
            return;
        }
        let Some(s) = &mut self.state else { return };
        match event {
            CountEvent::CountRequested { .. } => {}
            CountEvent::CountSubmitted { .. } => {
                s.job.submitted = true;
                s.job.status = JobStatus::Pending;
            }
            CountEvent::CountStarted { job_id, .. } => s.job.started(job_id),
            CountEvent::CountFinished {
                measure,
                measure_min,
                measure_max,
                extra,
                at,
            } => {
                s.job.status = JobStatus::Finished;
                s.measure = measure;
                s.measure_min = measure_min;
                s.measure_max = measure_max;
                s.extra = extra;
                s.settled_at = Some(at);
            }
            CountEvent::CountFailed { message, at } => {
                s.job.status = JobStatus::Failed;
                s.job.fail_msg = Some(message);
                s.settled_at = Some(at);
            }
            CountEvent::CountCancelled { message, at } => {
                s.job.status = JobStatus::Cancelled;
                s.job.fail_msg = Some(message);
                s.settled_at = Some(at);
            }
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

    fn requested(mode: CountMode) -> Count {
        let mut c = Count::default();
        for e in c
            .decide(CountCommand::Request {
                count: CountRequest {
                    count_id: Uuid::from_u128(1),
                    owner: "alice".into(),
                    request_id: Uuid::from_u128(2),
                    snapshot_id: Uuid::from_u128(3),
                    snapshot_version: 1,
                    serialized_query: "{}".into(),
                    mode,
                    stage_details: None,
                    refresh_schedule: None,
                },
                at: at(),
            })
            .unwrap()
        {
            c.apply(e);
        }
        c
    }

    fn run(c: &mut Count, command: CountCommand) -> Vec<CountEvent> {
        let events = c.decide(command).unwrap();
        for e in events.clone() {
            c.apply(e);
        }
        events
    }

    #[test]
    fn a_count_goes_from_request_to_result_and_ignores_a_duplicate_callback() {
        let mut c = requested(CountMode::Snapshot);
        run(&mut c, CountCommand::ClaimSubmission { at: at() });
        assert_eq!(
            c.decide(CountCommand::ClaimSubmission { at: at() }),
            Err(CountError::Job(JobError::AlreadySubmitted))
        );
        run(
            &mut c,
            CountCommand::RecordJob {
                job_id: "j1".into(),
                at: at(),
            },
        );
        let report = JobReport {
            status: "FINISHED".into(),
            count: Some(42),
            minimum: Some(1),
            ..Default::default()
        };
        let events = run(
            &mut c,
            CountCommand::Settle {
                report: report.clone(),
                at: at(),
            },
        );
        assert!(matches!(
            events.as_slice(),
            [CountEvent::CountFinished {
                measure: Some(42),
                measure_min: None,
                ..
            }]
        ));
        assert!(run(&mut c, CountCommand::Settle { report, at: at() }).is_empty());
        assert_eq!(c.state.unwrap().job.status, JobStatus::Finished);
    }

    #[test]
    fn global_counts_keep_their_bounds() {
        let mut c = requested(CountMode::Global);
        run(&mut c, CountCommand::ClaimSubmission { at: at() });
        let report = JobReport {
            status: "FINISHED".into(),
            count: Some(100),
            minimum: Some(70),
            maximum: Some(140),
            ..Default::default()
        };
        run(&mut c, CountCommand::Settle { report, at: at() });
        let s = c.state.unwrap();
        assert_eq!((s.measure_min, s.measure_max), (Some(70), Some(140)));
    }

    #[test]
    fn an_invalid_status_fails_the_count() {
        let mut c = requested(CountMode::Snapshot);
        let events = run(
            &mut c,
            CountCommand::Settle {
                report: JobReport {
                    status: "WHATEVER".into(),
                    ..Default::default()
                },
                at: at(),
            },
        );
        assert!(matches!(
            events.as_slice(),
            [CountEvent::CountFailed { .. }]
        ));
    }

    #[test]
    fn a_cancelled_count_records_its_late_job_id_for_killing() {
        let mut c = requested(CountMode::Snapshot);
        run(&mut c, CountCommand::ClaimSubmission { at: at() });
        run(
            &mut c,
            CountCommand::Cancel {
                reason: "newer count".into(),
                at: at(),
            },
        );
        run(
            &mut c,
            CountCommand::RecordJob {
                job_id: "j2".into(),
                at: at(),
            },
        );
        assert!(c.state.as_ref().unwrap().job.needs_kill());
        assert!(
            run(
                &mut c,
                CountCommand::Cancel {
                    reason: "again".into(),
                    at: at()
                }
            )
            .is_empty()
        );
    }
}
