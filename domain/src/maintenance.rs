//! The MaintenancePhase aggregate: a scheduled window during which the service is read-only
//! (`partial`) or closed (`full`).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;
use crate::validation::{InvalidField, required_text};

/// The two kinds of maintenance (upstream's exact strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceKind {
    /// Reads still work; writes are refused.
    Partial,
    /// Everything but authentication, maintenance and health endpoints is refused.
    Full,
}

/// The fields of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceFields {
    pub subject: String,
    pub message: Option<String>,
    #[serde(rename = "type")]
    pub kind: MaintenanceKind,
    pub start_datetime: DateTime<Utc>,
    pub end_datetime: DateTime<Utc>,
}

/// A change to some fields; `None` keeps the stored value.
/// A maintenance phase as the websocket announces it (the hub gives it its wire shape).
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceNotice {
    pub id: i64,
    pub subject: String,
    pub message: Option<String>,
    /// `partial` or `full`.
    pub kind: String,
    pub maintenance_start: DateTime<Utc>,
    pub maintenance_end: DateTime<Utc>,
    pub active: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenancePatch {
    pub subject: Option<String>,
    pub message: Option<Option<String>>,
    pub kind: Option<MaintenanceKind>,
    pub start_datetime: Option<DateTime<Utc>>,
    pub end_datetime: Option<DateTime<Utc>>,
}

/// What may be asked of a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaintenanceCommand {
    Schedule {
        id: i64,
        fields: MaintenanceFields,
        at: DateTime<Utc>,
    },
    Change {
        patch: MaintenancePatch,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

/// What happened to a phase. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaintenanceEvent {
    MaintenanceScheduled {
        id: i64,
        fields: MaintenanceFields,
        at: DateTime<Utc>,
    },
    MaintenanceChanged {
        fields: MaintenanceFields,
        at: DateTime<Utc>,
    },
    MaintenanceDeleted {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MaintenanceEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MaintenanceScheduled { .. } => "MaintenanceScheduled",
            Self::MaintenanceChanged { .. } => "MaintenanceChanged",
            Self::MaintenanceDeleted { .. } => "MaintenanceDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a maintenance command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaintenanceError {
    #[error("a maintenance phase with this id already exists")]
    AlreadyExists,
    #[error("maintenance phase not found")]
    NotFound,
    #[error("end_datetime must not be before start_datetime")]
    EndBeforeStart,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// The state of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceState {
    pub id: i64,
    pub fields: MaintenanceFields,
    pub deleted: bool,
}

/// A maintenance phase, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenancePhase {
    pub state: Option<MaintenanceState>,
}

fn validate(fields: &MaintenanceFields) -> Result<(), MaintenanceError> {
    required_text("subject", &fields.subject, 255)?;
    crate::validation::bounded_optional_text(
        "message",
        fields.message.as_deref(),
        crate::validation::limits::MESSAGE_MAX_BYTES,
    )?;
    if fields.end_datetime < fields.start_datetime {
        return Err(MaintenanceError::EndBeforeStart);
    }
    Ok(())
}

impl MaintenancePhase {
    /// Decides a command.
    pub fn decide(
        &self,
        command: MaintenanceCommand,
    ) -> Result<Vec<MaintenanceEvent>, MaintenanceError> {
        match command {
            MaintenanceCommand::Schedule { id, fields, at } => {
                if self.state.is_some() {
                    return Err(MaintenanceError::AlreadyExists);
                }
                validate(&fields)?;
                Ok(vec![MaintenanceEvent::MaintenanceScheduled {
                    id,
                    fields,
                    at,
                }])
            }
            MaintenanceCommand::Change { patch, at } => {
                let s = self.live()?;
                let current = &s.fields;
                let fields = MaintenanceFields {
                    subject: patch.subject.unwrap_or_else(|| current.subject.clone()),
                    message: patch.message.unwrap_or_else(|| current.message.clone()),
                    kind: patch.kind.unwrap_or(current.kind),
                    start_datetime: patch.start_datetime.unwrap_or(current.start_datetime),
                    end_datetime: patch.end_datetime.unwrap_or(current.end_datetime),
                };
                validate(&fields)?;
                if fields == *current {
                    return Ok(Vec::new());
                }
                Ok(vec![MaintenanceEvent::MaintenanceChanged { fields, at }])
            }
            MaintenanceCommand::Delete { at } => {
                self.live()?;
                Ok(vec![MaintenanceEvent::MaintenanceDeleted { at }])
            }
        }
    }

    fn live(&self) -> Result<&MaintenanceState, MaintenanceError> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted)
            .ok_or(MaintenanceError::NotFound)
    }
}

impl Aggregate for MaintenancePhase {
    const TYPE: &'static str = "MaintenancePhase";
    type Command = MaintenanceCommand;
    type Event = MaintenanceEvent;
    type Error = MaintenanceError;
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
            MaintenanceEvent::MaintenanceScheduled { id, fields, .. } => {
                self.state = Some(MaintenanceState {
                    id,
                    fields,
                    deleted: false,
                });
            }
            MaintenanceEvent::MaintenanceChanged { fields, .. } => {
                if let Some(s) = &mut self.state {
                    s.fields = fields;
                }
            }
            MaintenanceEvent::MaintenanceDeleted { .. } => {
                if let Some(s) = &mut self.state {
                    s.deleted = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn a_patch_is_checked_against_the_stored_dates() {
        let mut m = MaintenancePhase::default();
        let fields = MaintenanceFields {
            subject: "Mise à jour".into(),
            message: None,
            kind: MaintenanceKind::Partial,
            start_datetime: at(),
            end_datetime: at() + Duration::hours(2),
        };
        for e in m
            .decide(MaintenanceCommand::Schedule {
                id: 1,
                fields,
                at: at(),
            })
            .unwrap()
        {
            m.apply(e);
        }
        let patch = |end| MaintenanceCommand::Change {
            patch: MaintenancePatch {
                end_datetime: Some(end),
                ..MaintenancePatch::default()
            },
            at: at(),
        };
        assert_eq!(
            m.decide(patch(at() - Duration::hours(1))),
            Err(MaintenanceError::EndBeforeStart)
        );
        assert_eq!(m.decide(patch(at() + Duration::hours(3))).unwrap().len(), 1);
        assert_eq!(m.decide(patch(at() + Duration::hours(2))).unwrap().len(), 0);
    }
}
