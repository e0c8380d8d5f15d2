//! Refresh schedules: periodic re-counts of a snapshot, one new count per run.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveTime, Utc};
use domain::count::{Count, CountCommand, CountError, CountMode, CountRequest};
use domain::refresh::{Frequency, RefreshSchedule, ScheduleCommand, ScheduleError};
use domain::request::Request;
use domain::validation::InvalidField;
use uuid::Uuid;

use crate::bus::Execute;
use crate::cohorts::CohortsError;
use crate::context::CommandContext;
use crate::error::CommandError;
use crate::ports::{Consistency, PortError, WorkspaceDirectory};
use crate::workspace::Written;

/// Namespace of the ids of scheduled counts (one per schedule and run).
const RUN_NAMESPACE: Uuid = Uuid::from_u128(0x9a41_0d3c_6b7e_4f12_8c55_e2d9_7a10_0003);

/// The read-model lookups of schedules.
#[async_trait]
pub trait ScheduleDirectory: Send + Sync {
    /// The live schedule of `snapshot`, if any (one per snapshot).
    async fn schedule_of_snapshot(&self, snapshot: Uuid) -> Result<Option<Uuid>, PortError>;
    /// The live schedules whose next run is at or before `now`.
    async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Uuid>, PortError>;
}

impl From<CommandError<ScheduleError>> for CohortsError {
    fn from(e: CommandError<ScheduleError>) -> Self {
        crate::error::from_command(e, CohortsError::Schedule)
    }
}

/// What the schedules service needs.
pub struct SchedulePorts {
    pub schedules: Arc<dyn Execute<RefreshSchedule>>,
    pub counts: Arc<dyn Execute<Count>>,
    pub requests: Arc<dyn Execute<Request>>,
    pub workspace: Arc<dyn WorkspaceDirectory>,
    pub directory: Arc<dyn ScheduleDirectory>,
    pub consistency: Arc<dyn Consistency>,
}

/// Changes to a schedule; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct ScheduleChanges {
    pub time: Option<NaiveTime>,
    pub frequency: Option<Frequency>,
    pub notify_owner: Option<bool>,
}

/// The refresh-schedules service.
pub struct Schedules {
    ports: SchedulePorts,
}

impl Schedules {
    pub fn new(ports: SchedulePorts) -> Self {
        Self { ports }
    }

    async fn written<T>(
        &self,
        value: T,
        committed: &[crate::bus::Committed],
    ) -> Result<Written<T>, CohortsError> {
        let caught_up = self.ports.consistency.wait_for(committed).await;
        Ok(Written { value, caught_up })
    }

    /// Schedules one of the caller's snapshots (one schedule per snapshot).
    pub async fn create(
        &self,
        ctx: &CommandContext,
        snapshot: Uuid,
        time: NaiveTime,
        frequency: Frequency,
        notify_owner: bool,
    ) -> Result<Written<Uuid>, CohortsError> {
        let request_id = crate::cohorts::own_request_of_snapshot(
            self.ports.workspace.as_ref(),
            self.ports.requests.as_ref(),
            &ctx.user,
            snapshot,
            None,
        )
        .await?
        .id;
        if self
            .ports
            .directory
            .schedule_of_snapshot(snapshot)
            .await?
            .is_some()
        {
            return Err(InvalidField {
                field: "request_snapshot",
                reason: "this snapshot already has a refresh schedule".into(),
            }
            .into());
        }
        let id = Uuid::new_v4();
        let command = ScheduleCommand::Create {
            schedule_id: id,
            owner: ctx.user.clone(),
            request_id,
            snapshot_id: snapshot,
            time,
            frequency,
            notify_owner,
            at: ctx.at,
        };
        let c = self
            .ports
            .schedules
            .execute_new(&id.to_string(), command, ctx)
            .await?;
        self.written(id, &[c]).await
    }

    /// Changes one of the caller's schedules.
    pub async fn update(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        changes: ScheduleChanges,
    ) -> Result<Written<()>, CohortsError> {
        let command = ScheduleCommand::Update {
            by: ctx.user.clone(),
            time: changes.time,
            frequency: changes.frequency,
            notify_owner: changes.notify_owner,
            at: ctx.at,
        };
        let c = self
            .ports
            .schedules
            .execute(&id.to_string(), command, ctx)
            .await?;
        self.written((), &[c]).await
    }

    /// Deletes the caller's schedules: all are checked first.
    pub async fn delete(&self, ctx: &CommandContext, ids: &[Uuid]) -> Result<(), CohortsError> {
        for id in ids {
            let s = self.ports.schedules.load(&id.to_string()).await?;
            if s.owned_by(&ctx.user).is_none() {
                return Err(CohortsError::Schedule(ScheduleError::NotFound));
            }
        }
        let mut committed = Vec::new();
        for id in ids {
            let command = ScheduleCommand::Delete {
                by: ctx.user.clone(),
                at: ctx.at,
            };
            committed.push(
                self.ports
                    .schedules
                    .execute(&id.to_string(), command, ctx)
                    .await?,
            );
        }
        self.written((), &committed).await.map(|_| ())
    }

    /// Runs a schedule if a slot is due at `now`: a new count of the snapshot's current query,
    /// with an id derived from the schedule and the slot, so that a slot counts once whatever
    /// the number of scheduler instances or retries. Returns the count if one was requested.
    pub async fn run_due(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, CohortsError> {
        let key = id.to_string();
        let schedule = self.ports.schedules.load(&key).await?;
        let Some(s) = schedule.state.filter(|s| !s.deleted) else {
            return Ok(None);
        };
        let Some(due) = s.cadence.last_due(now) else {
            return Ok(None);
        };
        if s.last_due.is_some_and(|last| last >= due) {
            return Ok(None);
        }
        let request = self.ports.requests.load(&s.request_id.to_string()).await?;
        let Some(snapshot) = request
            .owned_by(&s.owner)
            .and_then(|r| r.snapshots.get(&s.snapshot_id))
        else {
            return Ok(None);
        };
        let count_id = Uuid::new_v5(&RUN_NAMESPACE, format!("{id}|{due}").as_bytes());
        let count = CountCommand::Request {
            count: CountRequest {
                count_id,
                owner: s.owner.clone(),
                request_id: s.request_id,
                snapshot_id: s.snapshot_id,
                snapshot_version: snapshot.version,
                serialized_query: snapshot.serialized_query.clone(),
                mode: CountMode::Snapshot,
                stage_details: None,
                refresh_schedule: Some(id),
            },
            at: ctx.at,
        };
        match self
            .ports
            .counts
            .execute(&count_id.to_string(), count, ctx)
            .await
        {
            Ok(_) | Err(CommandError::Rejected(CountError::AlreadyExists)) => {}
            Err(e) => return Err(e.into()),
        }
        let run = ScheduleCommand::RecordRun {
            due,
            count_id,
            at: ctx.at,
        };
        match self.ports.schedules.execute(&key, run, ctx).await {
            Ok(_) | Err(CommandError::Rejected(ScheduleError::AlreadyRan)) => Ok(Some(count_id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs every due schedule. Returns the counts requested.
    pub async fn run_all_due(
        &self,
        ctx: &CommandContext,
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, CohortsError> {
        let mut counts = Vec::new();
        for id in self.ports.directory.due_schedules(now).await? {
            if let Some(c) = self.run_due(ctx, id, now).await? {
                counts.push(c);
            }
        }
        Ok(counts)
    }

    /// A schedule's owner and whether they want e-mails (the mail reactor reads it).
    pub async fn notification_target(&self, id: Uuid) -> Result<Option<String>, CohortsError> {
        let s = self.ports.schedules.load(&id.to_string()).await?;
        Ok(s.state
            .filter(|s| !s.deleted && s.notify_owner)
            .map(|s| s.owner))
    }
}
