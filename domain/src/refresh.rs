//! The RefreshSchedule aggregate: a periodic re-count of a snapshot. Each run appends a new
//! count (upstream reused one count for ever); runs are claimed per due time, so two instances
//! of the scheduler never run the same slot twice.

use chrono::{DateTime, Duration, NaiveTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;

/// How often a schedule runs (upstream's strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Daily,
    EveryOtherDay,
    Weekly,
}

impl Frequency {
    /// Parses the wire string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Self::Daily),
            "every_other_day" => Some(Self::EveryOtherDay),
            "weekly" => Some(Self::Weekly),
            _ => None,
        }
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::EveryOtherDay => "every_other_day",
            Self::Weekly => "weekly",
        }
    }

    fn days(self) -> i64 {
        match self {
            Self::Daily => 1,
            Self::EveryOtherDay => 2,
            Self::Weekly => 7,
        }
    }
}

/// When a schedule runs: at `time` (UTC) every `frequency`, counting days from `anchor`'s date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cadence {
    pub time: NaiveTime,
    pub frequency: Frequency,
    pub anchor: DateTime<Utc>,
}

impl Cadence {
    /// The first run: `time` on the anchor's day, or the next day if that moment is past.
    pub fn first(&self) -> DateTime<Utc> {
        let same_day = self.anchor.date_naive().and_time(self.time).and_utc();
        if same_day >= self.anchor {
            same_day
        } else {
            same_day + Duration::days(1)
        }
    }

    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        let first = self.first();
        let step = Duration::days(self.frequency.days());
        if first > after {
            return first;
        }
        let periods = (after - first).num_seconds() / step.num_seconds() + 1;
        first + step * periods as i32
    }

    /// The latest run at or before `now`, if one is due.
    pub fn last_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.first();
        if first > now {
            return None;
        }
        let step = Duration::days(self.frequency.days());
        let periods = (now - first).num_seconds() / step.num_seconds();
        Some(first + step * periods as i32)
    }
}

/// What may be asked of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleCommand {
    Create {
        schedule_id: Uuid,
        owner: String,
        request_id: Uuid,
        snapshot_id: Uuid,
        time: NaiveTime,
        frequency: Frequency,
        notify_owner: bool,
        at: DateTime<Utc>,
    },
    Update {
        by: String,
        time: Option<NaiveTime>,
        frequency: Option<Frequency>,
        notify_owner: Option<bool>,
        at: DateTime<Utc>,
    },
    Delete {
        by: String,
        at: DateTime<Utc>,
    },
    /// Records the run of slot `due` (its count is `count_id`); refused if that slot or a later
    /// one already ran.
    RecordRun {
        due: DateTime<Utc>,
        count_id: Uuid,
        at: DateTime<Utc>,
    },
}

/// What happened to a schedule. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleEvent {
    RefreshScheduleCreated {
        schedule_id: Uuid,
        owner: String,
        request_id: Uuid,
        snapshot_id: Uuid,
        time: NaiveTime,
        frequency: Frequency,
        notify_owner: bool,
        at: DateTime<Utc>,
    },
    /// The new settings (all of them).
    RefreshScheduleChanged {
        time: NaiveTime,
        frequency: Frequency,
        notify_owner: bool,
        at: DateTime<Utc>,
    },
    RefreshScheduleDeleted {
        at: DateTime<Utc>,
    },
    RefreshScheduleRan {
        due: DateTime<Utc>,
        count_id: Uuid,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ScheduleEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RefreshScheduleCreated { .. } => "RefreshScheduleCreated",
            Self::RefreshScheduleChanged { .. } => "RefreshScheduleChanged",
            Self::RefreshScheduleDeleted { .. } => "RefreshScheduleDeleted",
            Self::RefreshScheduleRan { .. } => "RefreshScheduleRan",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a schedule command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("a schedule with this id already exists")]
    AlreadyExists,
    /// Missing, deleted, or someone else's.
    #[error("refresh schedule not found")]
    NotFound,
    #[error("this run already happened")]
    AlreadyRan,
}

/// Current state of a schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshSchedule {
    pub state: Option<ScheduleState>,
}

/// The fields of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub owner: String,
    pub request_id: Uuid,
    pub snapshot_id: Uuid,
    pub cadence: Cadence,
    pub notify_owner: bool,
    pub last_due: Option<DateTime<Utc>>,
    pub deleted: bool,
}

impl RefreshSchedule {
    /// The live schedule if it exists, is not deleted and belongs to `user`.
    pub fn owned_by(&self, user: &str) -> Option<&ScheduleState> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted && s.owner == user)
    }

    /// Decides a command.
    pub fn decide(&self, command: ScheduleCommand) -> Result<Vec<ScheduleEvent>, ScheduleError> {
        match command {
            ScheduleCommand::Create {
                schedule_id,
                owner,
                request_id,
                snapshot_id,
                time,
                frequency,
                notify_owner,
                at,
            } => {
                if self.state.is_some() {
                    return Err(ScheduleError::AlreadyExists);
                }
                Ok(vec![ScheduleEvent::RefreshScheduleCreated {
                    schedule_id,
                    owner,
                    request_id,
                    snapshot_id,
                    time,
                    frequency,
                    notify_owner,
                    at,
                }])
            }
            ScheduleCommand::Update {
                by,
                time,
                frequency,
                notify_owner,
                at,
            } => {
                let s = self.owned_by(&by).ok_or(ScheduleError::NotFound)?;
                let time = time.unwrap_or(s.cadence.time);
                let frequency = frequency.unwrap_or(s.cadence.frequency);
                let notify_owner = notify_owner.unwrap_or(s.notify_owner);
                if (time, frequency, notify_owner)
                    == (s.cadence.time, s.cadence.frequency, s.notify_owner)
                {
                    return Ok(vec![]);
                }
                Ok(vec![ScheduleEvent::RefreshScheduleChanged {
                    time,
                    frequency,
                    notify_owner,
                    at,
                }])
            }
            ScheduleCommand::Delete { by, at } => {
                self.owned_by(&by).ok_or(ScheduleError::NotFound)?;
                Ok(vec![ScheduleEvent::RefreshScheduleDeleted { at }])
            }
            ScheduleCommand::RecordRun { due, count_id, at } => {
                let s = self
                    .state
                    .as_ref()
                    .filter(|s| !s.deleted)
                    .ok_or(ScheduleError::NotFound)?;
                if s.last_due.is_some_and(|last| last >= due) {
                    return Err(ScheduleError::AlreadyRan);
                }
                Ok(vec![ScheduleEvent::RefreshScheduleRan {
                    due,
                    count_id,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for RefreshSchedule {
    const TYPE: &'static str = "RefreshSchedule";
    type Command = ScheduleCommand;
    type Event = ScheduleEvent;
    type Error = ScheduleError;
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
        match event {
            ScheduleEvent::RefreshScheduleCreated {
                owner,
                request_id,
                snapshot_id,
                time,
                frequency,
                notify_owner,
                at,
                ..
            } => {
                self.state = Some(ScheduleState {
                    owner,
                    request_id,
                    snapshot_id,
                    cadence: Cadence {
                        time,
                        frequency,
                        anchor: at,
                    },
                    notify_owner,
                    last_due: None,
                    deleted: false,
                });
            }
            ScheduleEvent::RefreshScheduleChanged {
                time,
                frequency,
                notify_owner,
                ..
            } => {
                if let Some(s) = &mut self.state {
                    s.cadence.time = time;
                    s.cadence.frequency = frequency;
                    s.notify_owner = notify_owner;
                }
            }
            ScheduleEvent::RefreshScheduleDeleted { .. } => {
                if let Some(s) = &mut self.state {
                    s.deleted = true;
                }
            }
            ScheduleEvent::RefreshScheduleRan { due, .. } => {
                if let Some(s) = &mut self.state {
                    s.last_due = Some(due);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    #[test]
    fn runs_fall_on_the_cadence_from_the_creation_day() {
        let c = Cadence {
            time: NaiveTime::from_hms_opt(6, 30, 0).unwrap(),
            frequency: Frequency::EveryOtherDay,
            anchor: t("2026-03-01T10:00:00Z"),
        };
        // 06:30 had passed on the creation day: the first run is the next morning.
        assert_eq!(c.first(), t("2026-03-02T06:30:00Z"));
        assert_eq!(c.last_due(t("2026-03-01T10:00:00Z")), None);
        assert_eq!(
            c.next_after(t("2026-03-02T06:30:00Z")),
            t("2026-03-04T06:30:00Z")
        );
        assert_eq!(
            c.last_due(t("2026-03-05T00:00:00Z")),
            Some(t("2026-03-04T06:30:00Z"))
        );
        let weekly = Cadence {
            frequency: Frequency::Weekly,
            anchor: t("2026-03-01T05:00:00Z"),
            ..c
        };
        assert_eq!(
            weekly.next_after(t("2026-03-01T06:30:00Z")),
            t("2026-03-08T06:30:00Z")
        );
        assert_eq!(weekly.last_due(t("2026-03-01T06:00:00Z")), None);
    }

    #[test]
    fn a_slot_runs_once() {
        let mut s = RefreshSchedule::default();
        let at = t("2026-03-01T10:00:00Z");
        for e in s
            .decide(ScheduleCommand::Create {
                schedule_id: Uuid::nil(),
                owner: "alice".into(),
                request_id: Uuid::nil(),
                snapshot_id: Uuid::nil(),
                time: NaiveTime::from_hms_opt(6, 0, 0).unwrap(),
                frequency: Frequency::Daily,
                notify_owner: true,
                at,
            })
            .unwrap()
        {
            s.apply(e);
        }
        let run = ScheduleCommand::RecordRun {
            due: t("2026-03-01T06:00:00Z"),
            count_id: Uuid::from_u128(1),
            at,
        };
        for e in s.decide(run.clone()).unwrap() {
            s.apply(e);
        }
        assert_eq!(s.decide(run), Err(ScheduleError::AlreadyRan));
    }
}
