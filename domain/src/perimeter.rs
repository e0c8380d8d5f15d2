//! The Perimeter aggregate: one unit of the hospital tree (hospital group, hospital, pole, unit).
//!
//! Perimeters are never edited through the API: an import (`cohort360 import-perimeters`) sends
//! each row as a [`PerimeterCommand::Import`], which records what changed, and removes the
//! perimeters missing from the file. Derived fields (level, ancestors, full path) are computed
//! by the read model from the parent chain.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;
use crate::validation::{InvalidField, required_text};

/// The imported fields of a perimeter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerimeterFields {
    pub id: i64,
    pub local_id: String,
    pub name: String,
    pub short_name: String,
    pub source_value: String,
    pub type_source_value: String,
    pub parent_id: Option<i64>,
    pub cohort_id: Option<String>,
    pub cohort_size: Option<String>,
}

/// What may be asked of a perimeter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerimeterCommand {
    /// Creates the perimeter, changes it, brings it back, or does nothing if it is identical.
    Import {
        fields: PerimeterFields,
        at: DateTime<Utc>,
    },
    /// The perimeter is gone from the source.
    Remove { at: DateTime<Utc> },
}

/// What happened to a perimeter. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PerimeterEvent {
    PerimeterCreated {
        fields: PerimeterFields,
        at: DateTime<Utc>,
    },
    /// The full new field set (a re-import that differs, or a removed perimeter coming back).
    PerimeterChanged {
        fields: PerimeterFields,
        at: DateTime<Utc>,
    },
    PerimeterRemoved {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for PerimeterEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PerimeterCreated { .. } => "PerimeterCreated",
            Self::PerimeterChanged { .. } => "PerimeterChanged",
            Self::PerimeterRemoved { .. } => "PerimeterRemoved",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a perimeter command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PerimeterError {
    #[error("perimeter not found")]
    NotFound,
    #[error("a perimeter cannot be its own parent")]
    OwnParent,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// The state of a perimeter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerimeterState {
    pub fields: PerimeterFields,
    pub removed: bool,
}

/// A perimeter, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perimeter {
    pub state: Option<PerimeterState>,
}

impl Perimeter {
    /// Decides a command.
    pub fn decide(&self, command: PerimeterCommand) -> Result<Vec<PerimeterEvent>, PerimeterError> {
        match command {
            PerimeterCommand::Import { fields, at } => {
                required_text("name", &fields.name, 255)?;
                required_text("local_id", &fields.local_id, 63)?;
                if fields.parent_id == Some(fields.id) {
                    return Err(PerimeterError::OwnParent);
                }
                match &self.state {
                    None => Ok(vec![PerimeterEvent::PerimeterCreated { fields, at }]),
                    Some(s) if s.removed || s.fields != fields => {
                        Ok(vec![PerimeterEvent::PerimeterChanged { fields, at }])
                    }
                    Some(_) => Ok(Vec::new()),
                }
            }
            PerimeterCommand::Remove { at } => match &self.state {
                Some(s) if !s.removed => Ok(vec![PerimeterEvent::PerimeterRemoved { at }]),
                _ => Err(PerimeterError::NotFound),
            },
        }
    }
}

impl Aggregate for Perimeter {
    const TYPE: &'static str = "Perimeter";
    type Command = PerimeterCommand;
    type Event = PerimeterEvent;
    type Error = PerimeterError;
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
            PerimeterEvent::PerimeterCreated { fields, .. }
            | PerimeterEvent::PerimeterChanged { fields, .. } => {
                self.state = Some(PerimeterState {
                    fields,
                    removed: false,
                });
            }
            PerimeterEvent::PerimeterRemoved { .. } => {
                if let Some(s) = &mut self.state {
                    s.removed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn fields(name: &str) -> PerimeterFields {
        PerimeterFields {
            id: 1,
            local_id: "L1".into(),
            name: name.into(),
            short_name: name.into(),
            source_value: "S1".into(),
            type_source_value: "Hôpital".into(),
            parent_id: Some(9999),
            cohort_id: Some("c1".into()),
            cohort_size: None,
        }
    }

    #[test]
    fn reimport_records_only_differences_and_brings_removed_perimeters_back() {
        let mut p = Perimeter::default();
        let import = |name: &str| PerimeterCommand::Import {
            fields: fields(name),
            at: at(),
        };
        let run = |p: &mut Perimeter, c| {
            let events = p.decide(c).unwrap();
            for e in events.clone() {
                p.apply(e);
            }
            events.len()
        };
        assert_eq!(run(&mut p, import("A")), 1);
        assert_eq!(run(&mut p, import("A")), 0);
        assert_eq!(run(&mut p, import("B")), 1);
        assert_eq!(run(&mut p, PerimeterCommand::Remove { at: at() }), 1);
        assert_eq!(
            p.decide(PerimeterCommand::Remove { at: at() }),
            Err(PerimeterError::NotFound)
        );
        assert_eq!(run(&mut p, import("B")), 1);
    }

    #[test]
    fn a_perimeter_cannot_be_its_own_parent() {
        let mut f = fields("A");
        f.parent_id = Some(1);
        assert_eq!(
            Perimeter::default().decide(PerimeterCommand::Import {
                fields: f,
                at: at()
            }),
            Err(PerimeterError::OwnParent)
        );
    }
}
