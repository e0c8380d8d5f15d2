//! The lifecycle every executor job shares (counts, cohort creations, feasibility studies):
//! upstream's `JobStatus` strings, what the QueryExecutor reports, and the transition rules.
//!
//! A job is requested, then *claimed* for submission exactly once (the claim is an event, so two
//! reactors racing on the same request cannot both submit it), then started with the executor's
//! job id, then settled by a report (the executor's callback, the Solr ETL's callback, or a
//! reconciliation that asked the executor). Reports that change nothing (a duplicate callback, a
//! late one after a cancel) are recognised here and produce no event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::validation::limits::MESSAGE_MAX_BYTES;

/// Upstream's job statuses, with their exact wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    New,
    Denied,
    Validated,
    Pending,
    LongPending,
    Started,
    Failed,
    Cancelled,
    Finished,
    Cleaned,
    Unknown,
}

impl JobStatus {
    /// Every status, in upstream's order.
    pub const ALL: [JobStatus; 11] = [
        Self::New,
        Self::Denied,
        Self::Validated,
        Self::Pending,
        Self::LongPending,
        Self::Started,
        Self::Failed,
        Self::Cancelled,
        Self::Finished,
        Self::Cleaned,
        Self::Unknown,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Denied => "denied",
            Self::Validated => "validated",
            Self::Pending => "pending",
            Self::LongPending => "long_pending",
            Self::Started => "started",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Finished => "finished",
            Self::Cleaned => "cleaned",
            Self::Unknown => "unknown",
        }
    }

    /// Parses a wire string (`finished`, `long_pending`, …).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Upstream's end states: nothing changes a job in one of them, except the Solr ETL's
    /// completion of a `long_pending` cohort (which is not an end state).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Cancelled | Self::Finished | Self::Unknown
        )
    }

    /// Whether a job in this status may still be running at the executor.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Pending | Self::Started)
    }
}

/// A status as the QueryExecutor (or the ETL) reports it, mapped to ours: `RUNNING` → started,
/// `FINISHED` → finished, `ERROR` → failed, `KILLED` → cancelled, `LONG_PENDING` → long_pending,
/// plus `PENDING`/`STARTED`/`UNKNOWN` and our own lower-case strings. `None`: not a status.
pub fn executor_status(s: &str) -> Option<JobStatus> {
    match s.trim().to_ascii_uppercase().as_str() {
        "RUNNING" | "STARTED" => Some(JobStatus::Started),
        "FINISHED" => Some(JobStatus::Finished),
        "ERROR" | "FAILED" => Some(JobStatus::Failed),
        "KILLED" | "CANCELLED" => Some(JobStatus::Cancelled),
        "LONG_PENDING" => Some(JobStatus::LongPending),
        "PENDING" => Some(JobStatus::Pending),
        "UNKNOWN" => Some(JobStatus::Unknown),
        _ => None,
    }
}

/// What the executor says about a job: its callback body, or its answer to `GET /jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobReport {
    /// The status string as received.
    pub status: String,
    pub count: Option<i64>,
    pub minimum: Option<i64>,
    pub maximum: Option<i64>,
    /// Detail counts (stage details, per-perimeter counts): a string map upstream.
    pub extra: BTreeMap<String, Value>,
    pub group_id: Option<String>,
    pub message: Option<String>,
}

impl JobReport {
    /// The mapped status, or `None` when the string is not a status.
    pub fn mapped_status(&self) -> Option<JobStatus> {
        executor_status(&self.status)
    }

    /// The failure message (cut to [`MESSAGE_MAX_BYTES`]: it is the executor's text, kept in
    /// an event), or a default naming the status.
    pub fn failure_message(&self) -> String {
        let message = self
            .message
            .clone()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| format!("the executor reported {}", self.status));
        crate::validation::truncated(message, MESSAGE_MAX_BYTES)
    }
}

/// Why a job transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JobError {
    #[error("the job was already submitted")]
    AlreadySubmitted,
    #[error("the job is {0} and cannot be submitted")]
    NotSubmittable(&'static str),
    #[error("the job was never submitted")]
    NotSubmitted,
}

/// The job fields of an aggregate's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub status: JobStatus,
    pub submitted: bool,
    pub job_id: Option<String>,
    pub fail_msg: Option<String>,
}

impl Default for Job {
    fn default() -> Self {
        Self {
            status: JobStatus::New,
            submitted: false,
            job_id: None,
            fail_msg: None,
        }
    }
}

/// What a report does to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Nothing: a duplicate, a late report after an end state, or "still running".
    Unchanged,
    Finished,
    /// Handed over to the Solr ETL (cohorts only).
    LongPending,
    Failed(String),
    Cancelled(String),
    /// Not a status: the job is marked failed and the caller answers 400.
    Invalid(String),
}

impl Settlement {
    /// Whether the report was refused as invalid.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

impl Job {
    /// Checks that the job may be claimed for submission now.
    pub fn claim(&self) -> Result<(), JobError> {
        if self.submitted {
            return Err(JobError::AlreadySubmitted);
        }
        if self.status.is_final() {
            return Err(JobError::NotSubmittable(self.status.as_str()));
        }
        Ok(())
    }

    /// Whether the executor's job id is news. It is recorded even when the job already ended
    /// (a fast executor's callback can overtake the answer to the submission), so that the
    /// lineage names the job; the caller kills it at the executor if the job was cancelled.
    pub fn record_job(&self, job_id: &str) -> Result<bool, JobError> {
        if !self.submitted {
            return Err(JobError::NotSubmitted);
        }
        Ok(self.job_id.as_deref() != Some(job_id))
    }

    /// Applies a recorded job id: the job is `started` unless it ended or waits for the ETL.
    pub fn started(&mut self, job_id: String) {
        self.job_id = Some(job_id);
        if !self.status.is_final() && self.status != JobStatus::LongPending {
            self.status = JobStatus::Started;
        }
    }

    /// Whether the executor job should be killed: it was cancelled before its id came back.
    pub fn needs_kill(&self) -> bool {
        self.status == JobStatus::Cancelled && self.job_id.is_some()
    }

    /// What `report` does, given `long_pending_allowed` (cohorts only).
    pub fn settle(&self, report: &JobReport, long_pending_allowed: bool) -> Settlement {
        let Some(status) = report.mapped_status() else {
            if self.status.is_final() {
                return Settlement::Unchanged;
            }
            return Settlement::Invalid(format!(
                "invalid status from the executor: {:?}",
                report.status
            ));
        };
        if self.status.is_final() {
            return Settlement::Unchanged;
        }
        match status {
            JobStatus::Finished => Settlement::Finished,
            // The aggregate drops a repeated LONG_PENDING that brings nothing new.
            JobStatus::LongPending if long_pending_allowed => Settlement::LongPending,
            JobStatus::Failed | JobStatus::Unknown => Settlement::Failed(report.failure_message()),
            JobStatus::Cancelled => Settlement::Cancelled(report.failure_message()),
            JobStatus::LongPending => Settlement::Invalid(
                "invalid status from the executor: LONG_PENDING is only valid for cohorts".into(),
            ),
            _ => Settlement::Unchanged,
        }
    }

    /// Whether a cancel request changes this job (it must not have ended).
    pub fn cancellable(&self) -> bool {
        !self.status.is_final()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: &str) -> JobReport {
        JobReport {
            status: status.into(),
            ..Default::default()
        }
    }

    fn started() -> Job {
        Job {
            status: JobStatus::Started,
            submitted: true,
            job_id: Some("j1".into()),
            fail_msg: None,
        }
    }

    #[test]
    fn executor_statuses_map_to_ours() {
        assert_eq!(executor_status("RUNNING"), Some(JobStatus::Started));
        assert_eq!(executor_status("FINISHED"), Some(JobStatus::Finished));
        assert_eq!(executor_status("ERROR"), Some(JobStatus::Failed));
        assert_eq!(executor_status("KILLED"), Some(JobStatus::Cancelled));
        assert_eq!(
            executor_status("long_pending"),
            Some(JobStatus::LongPending)
        );
        assert_eq!(executor_status("DONE"), None);
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn a_job_is_claimed_once() {
        let job = Job::default();
        assert_eq!(job.claim(), Ok(()));
        let claimed = Job {
            submitted: true,
            status: JobStatus::Pending,
            ..Job::default()
        };
        assert_eq!(claimed.claim(), Err(JobError::AlreadySubmitted));
        let cancelled = Job {
            status: JobStatus::Cancelled,
            ..Job::default()
        };
        assert_eq!(
            cancelled.claim(),
            Err(JobError::NotSubmittable("cancelled"))
        );
    }

    #[test]
    fn a_job_id_arriving_after_a_cancel_is_recorded_and_marked_for_killing() {
        let mut job = Job {
            status: JobStatus::Cancelled,
            submitted: true,
            ..Job::default()
        };
        assert_eq!(job.record_job("j9"), Ok(true));
        job.started("j9".into());
        assert_eq!(job.status, JobStatus::Cancelled);
        assert!(job.needs_kill());
        assert_eq!(started().record_job("j1"), Ok(false));
        assert_eq!(Job::default().record_job("j1"), Err(JobError::NotSubmitted));
    }

    #[test]
    fn reports_settle_running_jobs_and_nothing_else() {
        assert_eq!(
            started().settle(&report("FINISHED"), false),
            Settlement::Finished
        );
        assert_eq!(
            started().settle(&report("ERROR"), false),
            Settlement::Failed("the executor reported ERROR".into())
        );
        assert!(matches!(
            started().settle(&report("KILLED"), false),
            Settlement::Cancelled(_)
        ));
        assert!(matches!(
            started().settle(&report("bogus"), false),
            Settlement::Invalid(_)
        ));
        assert!(matches!(
            started().settle(&report("LONG_PENDING"), false),
            Settlement::Invalid(_)
        ));
        assert_eq!(
            started().settle(&report("LONG_PENDING"), true),
            Settlement::LongPending
        );
        assert_eq!(
            started().settle(&report("RUNNING"), false),
            Settlement::Unchanged
        );
        let finished = Job {
            status: JobStatus::Finished,
            ..started()
        };
        assert_eq!(
            finished.settle(&report("FINISHED"), false),
            Settlement::Unchanged
        );
        assert_eq!(
            finished.settle(&report("ERROR"), false),
            Settlement::Unchanged
        );
        assert_eq!(
            finished.settle(&report("bogus"), false),
            Settlement::Unchanged
        );
    }

    #[test]
    fn a_long_pending_cohort_is_completed_by_the_etl() {
        let waiting = Job {
            status: JobStatus::LongPending,
            ..started()
        };
        assert_eq!(
            waiting.settle(&report("FINISHED"), true),
            Settlement::Finished
        );
    }
}
