//! The AuditRead aggregate: one read of the audit API, recorded before the answer is sent, so
//! that auditors are audited too. Its id is a fresh uuid per read (no contention between reads).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;

/// What may be asked of an audit read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditReadCommand {
    Record {
        reader: String,
        /// The route template (e.g. `/audit/{aggregate_type}/{id}/state/`).
        route: String,
        /// The path and query string as asked.
        target: String,
        at: DateTime<Utc>,
    },
}

/// What happened. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditReadEvent {
    AuditReadRecorded {
        reader: String,
        route: String,
        target: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AuditReadEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AuditReadRecorded { .. } => "AuditReadRecorded",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuditReadError {
    #[error("this audit read was already recorded")]
    AlreadyRecorded,
}

/// State of a read: recorded or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRead {
    pub recorded: bool,
}

impl AuditRead {
    /// Decides a command.
    pub fn decide(&self, command: AuditReadCommand) -> Result<Vec<AuditReadEvent>, AuditReadError> {
        match command {
            AuditReadCommand::Record { .. } if self.recorded => {
                Err(AuditReadError::AlreadyRecorded)
            }
            AuditReadCommand::Record {
                reader,
                route,
                target,
                at,
            } => Ok(vec![AuditReadEvent::AuditReadRecorded {
                reader,
                route,
                target,
                at,
            }]),
        }
    }
}

impl Aggregate for AuditRead {
    const TYPE: &'static str = "AuditRead";
    type Command = AuditReadCommand;
    type Event = AuditReadEvent;
    type Error = AuditReadError;
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
            AuditReadEvent::AuditReadRecorded { .. } => self.recorded = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_recorded_once() {
        let record = AuditReadCommand::Record {
            reader: "auditor".into(),
            route: "/audit/events/".into(),
            target: "/audit/events/?limit=5".into(),
            at: "2026-03-01T10:00:00Z".parse().unwrap(),
        };
        let mut read = AuditRead::default();
        let events = read.decide(record.clone()).unwrap();
        assert_eq!(events.len(), 1);
        for e in events {
            read.apply(e);
        }
        assert_eq!(read.decide(record), Err(AuditReadError::AlreadyRecorded));
    }
}
