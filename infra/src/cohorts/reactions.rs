//! What the reactors do with count and cohort events: talk to the QueryExecutor, push
//! `job_status` websocket messages, publish the public events.

use std::sync::Arc;

use async_nats::jetstream;
use async_trait::async_trait;
use chrono::Utc;
use commands::CommandContext;
use commands::cohorts::Cohorts;
use commands::ports::{Notifier, StaleJob};
use cqrs_es::Aggregate;
use domain::cohort::{Cohort, CohortEvent};
use domain::count::{Count, CountEvent};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::log::CommittedEvent;
use crate::projector::decode;
use crate::reactor::Reaction;

/// The acting "user" of reactor commands, in event metadata.
pub const REACTOR_USER: &str = "system";

/// The context of a command caused by `event`: same correlation, caused by the event.
pub fn caused_by(event: &CommittedEvent) -> CommandContext {
    let correlation = event
        .metadata
        .get("correlation_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| event.message_id());
    CommandContext {
        user: REACTOR_USER.into(),
        impersonator: None,
        correlation_id: correlation,
        causation_id: event.message_id(),
        at: Utc::now(),
    }
}

fn target(event: &CommittedEvent) -> Result<Uuid, String> {
    event
        .aggregate_id
        .parse()
        .map_err(|e| format!("aggregate id is not a uuid: {e}"))
}

const STUDY: &str = "FeasibilityStudy";

fn is(event: &CommittedEvent, aggregate: &str, types: &[&str]) -> bool {
    event.aggregate_type == aggregate && types.contains(&event.event_type.as_str())
}

/// Submits counts, cohort creations and feasibility studies to the executor (and cancels
/// older counts).
pub struct ExecutorReaction {
    pub cohorts: Arc<Cohorts>,
    pub feasibility: Arc<commands::feasibility::Feasibility>,
}

#[async_trait]
impl Reaction for ExecutorReaction {
    fn name(&self) -> &'static str {
        "executor"
    }

    fn handles(&self, event: &CommittedEvent) -> bool {
        is(event, Count::TYPE, &["CountRequested", "CountStarted"])
            || is(
                event,
                Cohort::TYPE,
                &["CohortRequested", "CohortStarted", "CohortDeleted"],
            )
            || is(event, STUDY, &["FeasibilityStudyRequested"])
    }

    async fn react(&self, event: &CommittedEvent) -> Result<(), String> {
        let id = target(event)?;
        let ctx = caused_by(event);
        let done = match event.event_type.as_str() {
            "CountRequested" => self.cohorts.submit_count(&ctx, id).await,
            // A job id that came back after a cancel: kill that job.
            "CountStarted" => self.cohorts.kill_if_cancelled(StaleJob::Count(id)).await,
            "CohortStarted" => self.cohorts.kill_if_cancelled(StaleJob::Cohort(id)).await,
            "CohortRequested" => self.cohorts.submit_cohort(&ctx, id).await,
            "CohortDeleted" => self.cohorts.cancel_deleted_cohort(&ctx, id).await,
            "FeasibilityStudyRequested" => self.feasibility.submit(&ctx, id).await,
            _ => Ok(()),
        };
        done.map_err(|e| e.to_string())
    }
}

/// Pushes `job_status` messages to the owners' websockets.
pub struct JobNotifications {
    pub cohorts: Arc<Cohorts>,
    pub notifier: Arc<dyn Notifier>,
}

const COUNT_SETTLED: &[&str] = &["CountFinished", "CountFailed", "CountCancelled"];
const COHORT_SETTLED: &[&str] = &[
    "CohortCreated",
    "CohortLongPending",
    "CohortFailed",
    "CohortCancelled",
];

#[async_trait]
impl Reaction for JobNotifications {
    fn name(&self) -> &'static str {
        "job_notifications"
    }

    fn handles(&self, event: &CommittedEvent) -> bool {
        is(event, Count::TYPE, COUNT_SETTLED) || is(event, Cohort::TYPE, COHORT_SETTLED)
    }

    async fn react(&self, event: &CommittedEvent) -> Result<(), String> {
        let id = target(event)?;
        let done = if event.aggregate_type == Count::TYPE {
            self.cohorts.notify_count(self.notifier.as_ref(), id).await
        } else {
            self.cohorts.notify_cohort(self.notifier.as_ref(), id).await
        };
        done.map_err(|e| e.to_string())
    }
}

/// Public event contract: subjects and schema names (see `docs/events.md`).
pub mod public {
    /// `<prefix>.public.cohort.created.v1`
    pub const COHORT_CREATED: &str = "cohort.created.v1";
    /// `<prefix>.public.cohort.failed.v1`
    pub const COHORT_FAILED: &str = "cohort.failed.v1";
    /// `<prefix>.public.count.finished.v1`
    pub const COUNT_FINISHED: &str = "count.finished.v1";
}

/// Publishes the public events (cohort created, cohort failed, count finished) on JetStream.
pub struct PublicEvents {
    pub cohorts: Arc<Cohorts>,
    pub js: jetstream::Context,
    /// `<prefix>.public`
    pub subject_root: String,
}

impl PublicEvents {
    /// The public message of `event`, if it has one: `(subject suffix, body)`.
    async fn message(
        &self,
        event: &CommittedEvent,
    ) -> Result<Option<(&'static str, Value)>, String> {
        let id = target(event)?;
        let common = |schema: &str| {
            json!({
                "schema": format!("cohort360.{schema}"),
                "event_id": event.message_id(),
                "occurred_at": event.recorded_at,
            })
        };
        if event.aggregate_type == Count::TYPE {
            let CountEvent::CountFinished {
                measure,
                measure_min,
                measure_max,
                ..
            } = decode(event).map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            let Some(count) = self.cohorts.count(id).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let mut body = common(public::COUNT_FINISHED);
            body["count_id"] = json!(id);
            body["owner"] = json!(count.owner);
            body["request_id"] = json!(count.request_id);
            body["snapshot_id"] = json!(count.snapshot_id);
            body["snapshot_version"] = json!(count.snapshot_version);
            body["mode"] = json!(count.mode.as_str());
            body["measure"] = json!(measure);
            body["measure_min"] = json!(measure_min);
            body["measure_max"] = json!(measure_max);
            return Ok(Some((public::COUNT_FINISHED, body)));
        }
        let (suffix, mut body) = match decode(event).map_err(|e| e.to_string())? {
            CohortEvent::CohortCreated {
                group_id,
                size,
                via_etl,
                ..
            } => {
                let mut body = common(public::COHORT_CREATED);
                body["group_id"] = json!(group_id);
                body["size"] = json!(size);
                body["completed_by_etl"] = json!(via_etl);
                (public::COHORT_CREATED, body)
            }
            CohortEvent::CohortFailed { message, .. } => {
                let mut body = common(public::COHORT_FAILED);
                body["reason"] = json!(message);
                (public::COHORT_FAILED, body)
            }
            _ => return Ok(None),
        };
        let Some(cohort) = self.cohorts.cohort(id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        body["cohort_id"] = json!(id);
        body["owner"] = json!(cohort.owner);
        body["name"] = json!(cohort.name);
        body["request_id"] = json!(cohort.request_id);
        body["snapshot_id"] = json!(cohort.snapshot_id);
        body["snapshot_version"] = json!(cohort.snapshot_version);
        body["parent_cohort"] = json!(cohort.parent_cohort);
        body["sampling_ratio"] = json!(cohort.sampling_ratio);
        Ok(Some((suffix, body)))
    }
}

#[async_trait]
impl Reaction for PublicEvents {
    fn name(&self) -> &'static str {
        "public_events"
    }

    fn handles(&self, event: &CommittedEvent) -> bool {
        is(event, Count::TYPE, &["CountFinished"])
            || is(event, Cohort::TYPE, &["CohortCreated", "CohortFailed"])
    }

    async fn react(&self, event: &CommittedEvent) -> Result<(), String> {
        let Some((suffix, body)) = self.message(event).await? else {
            return Ok(());
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.message_id().as_str());
        let subject = format!("{}.{suffix}", self.subject_root);
        let ack = self
            .js
            .publish_with_headers(subject, headers, body.to_string().into())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Creates the JetStream stream of the public events (`<stream>_PUBLIC` on `<prefix>.public.>`).
pub async fn ensure_public_stream(
    js: &jetstream::Context,
    stream: &str,
    subject_root: &str,
) -> Result<(), String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("{stream}_PUBLIC"),
        subjects: vec![format!("{subject_root}.>")],
        storage: jetstream::stream::StorageType::File,
        description: Some("Cohort360 public events (see docs/events.md)".into()),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Sends the e-mails of the cohort workflows: a large cohort finished by the ETL, a request
/// shared with `notify_by_email`.
pub struct MailReaction {
    pub mails: Arc<commands::mails::Mails>,
    pub cohorts: Arc<Cohorts>,
    pub feasibility: Arc<commands::feasibility::Feasibility>,
    pub schedules: Arc<commands::refresh::Schedules>,
    pub requests: Arc<dyn commands::Execute<domain::request::Request>>,
}

impl MailReaction {
    async fn large_cohort(
        &self,
        ctx: &CommandContext,
        event: &CommittedEvent,
    ) -> Result<(), String> {
        let CohortEvent::CohortCreated {
            via_etl: true,
            group_id,
            ..
        } = decode(event).map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(cohort) = self
            .cohorts
            .cohort(target(event)?)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(to) = self.mails.recipient(&cohort.owner).await.map_err(|e| e.0)? else {
            return Ok(());
        };
        let mail = commands::mails::large_cohort_ready(
            &to,
            &cohort.name,
            group_id.as_deref().unwrap_or_default(),
            &self.mails.frontend_url,
        );
        self.mails
            .deliver(ctx, &event.message_id(), "large_cohort_ready", mail)
            .await
            .map_err(|e| e.0)?;
        Ok(())
    }

    async fn count_refreshed(
        &self,
        ctx: &CommandContext,
        event: &CommittedEvent,
    ) -> Result<(), String> {
        let Some(count) = self
            .cohorts
            .count(target(event)?)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(schedule) = count.refresh_schedule else {
            return Ok(());
        };
        let Some(owner) = self
            .schedules
            .notification_target(schedule)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(to) = self.mails.recipient(&owner).await.map_err(|e| e.0)? else {
            return Ok(());
        };
        let request = self
            .requests
            .load(&count.request_id.to_string())
            .await
            .map_err(|e| e.to_string())?;
        let name = request.state.map(|r| r.name).unwrap_or_default();
        let outcome = match &count.job.fail_msg {
            Some(reason) if count.job.status != domain::job::JobStatus::Finished => {
                Err(reason.as_str())
            }
            _ => Ok(count.measure),
        };
        let mail = commands::mails::count_refreshed(
            &to,
            &name,
            count.snapshot_version,
            outcome,
            count.request_id,
            &self.mails.frontend_url,
        );
        self.mails
            .deliver(ctx, &event.message_id(), "count_request_refreshed", mail)
            .await
            .map_err(|e| e.0)?;
        Ok(())
    }

    async fn feasibility_report(
        &self,
        ctx: &CommandContext,
        event: &CommittedEvent,
    ) -> Result<(), String> {
        use commands::mails::ReportNews;
        let news = match event.event_type.as_str() {
            "FeasibilityStudySubmitted" => ReportNews::Requested,
            "FeasibilityStudyFinished" => ReportNews::Ready,
            _ => ReportNews::Failed,
        };
        let id = target(event)?;
        let Some(study) = self
            .feasibility
            .study(None, id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let Some(to) = self.mails.recipient(&study.owner).await.map_err(|e| e.0)? else {
            return Ok(());
        };
        let mail = commands::mails::feasibility_report(
            &to,
            news,
            &study.request_name,
            id,
            study.request_id,
            &self.mails.frontend_url,
        );
        self.mails
            .deliver(ctx, &event.message_id(), news.kind(), mail)
            .await
            .map_err(|e| e.0)?;
        Ok(())
    }

    async fn shared_request(
        &self,
        ctx: &CommandContext,
        event: &CommittedEvent,
    ) -> Result<(), String> {
        let domain::request::RequestEvent::RequestShared {
            recipients,
            shared_requests,
            notify_by_email: true,
            ..
        } = decode(event).map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let sharer = crate::projector::actor(event).unwrap_or_default();
        // The application creates one request per recipient, in the recipients' order.
        for (recipient, request_id) in recipients.iter().zip(shared_requests) {
            let Some(to) = self.mails.recipient(recipient).await.map_err(|e| e.0)? else {
                continue;
            };
            let request = self
                .requests
                .load(&request_id.to_string())
                .await
                .map_err(|e| e.to_string())?;
            let name = request.state.map(|r| r.name).unwrap_or_default();
            let mail = commands::mails::shared_request(
                &to,
                &sharer,
                &name,
                request_id,
                &self.mails.frontend_url,
            );
            self.mails
                .deliver(ctx, &event.message_id(), "shared_request", mail)
                .await
                .map_err(|e| e.0)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Reaction for MailReaction {
    fn name(&self) -> &'static str {
        "mail"
    }

    fn handles(&self, event: &CommittedEvent) -> bool {
        is(event, Cohort::TYPE, &["CohortCreated"])
            || is(event, Count::TYPE, &["CountFinished", "CountFailed"])
            || is(event, domain::request::Request::TYPE, &["RequestShared"])
            || is(
                event,
                STUDY,
                &[
                    "FeasibilityStudySubmitted",
                    "FeasibilityStudyFinished",
                    "FeasibilityStudyFailed",
                ],
            )
    }

    async fn react(&self, event: &CommittedEvent) -> Result<(), String> {
        let ctx = caused_by(event);
        match event.aggregate_type.as_str() {
            Cohort::TYPE => self.large_cohort(&ctx, event).await,
            Count::TYPE => self.count_refreshed(&ctx, event).await,
            STUDY => self.feasibility_report(&ctx, event).await,
            _ => self.shared_request(&ctx, event).await,
        }
    }
}
