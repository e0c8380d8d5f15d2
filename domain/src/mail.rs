//! The MailDelivery aggregate: one e-mail the service decided to send, claimed before it is sent
//! so that a reaction run twice never sends it twice, and recorded as sent or failed for the
//! audit trail. Its id is derived from what caused it, its kind and its recipient.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;

/// What may be asked of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailCommand {
    /// Claims the delivery; refused if it was claimed before.
    Claim {
        to: String,
        kind: String,
        subject: String,
        /// The event (message id) that caused it.
        cause: String,
        at: DateTime<Utc>,
    },
    RecordSent {
        at: DateTime<Utc>,
    },
    RecordFailed {
        reason: String,
        at: DateTime<Utc>,
    },
}

/// What happened to a delivery. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailEvent {
    MailClaimed {
        to: String,
        kind: String,
        subject: String,
        cause: String,
        at: DateTime<Utc>,
    },
    MailSent {
        at: DateTime<Utc>,
    },
    MailFailed {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MailEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MailClaimed { .. } => "MailClaimed",
            Self::MailSent { .. } => "MailSent",
            Self::MailFailed { .. } => "MailFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a delivery command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MailError {
    #[error("this e-mail was already claimed")]
    AlreadyClaimed,
    #[error("this e-mail was never claimed")]
    NotClaimed,
}

/// State of a delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailDelivery {
    pub claimed: bool,
    pub sent: bool,
}

impl MailDelivery {
    /// Decides a command.
    pub fn decide(&self, command: MailCommand) -> Result<Vec<MailEvent>, MailError> {
        match command {
            MailCommand::Claim {
                to,
                kind,
                subject,
                cause,
                at,
            } => {
                if self.claimed {
                    return Err(MailError::AlreadyClaimed);
                }
                Ok(vec![MailEvent::MailClaimed {
                    to,
                    kind,
                    subject,
                    cause,
                    at,
                }])
            }
            MailCommand::RecordSent { at } if self.claimed => Ok(vec![MailEvent::MailSent { at }]),
            MailCommand::RecordFailed { reason, at } if self.claimed => {
                Ok(vec![MailEvent::MailFailed { reason, at }])
            }
            _ => Err(MailError::NotClaimed),
        }
    }
}

impl Aggregate for MailDelivery {
    const TYPE: &'static str = "MailDelivery";
    type Command = MailCommand;
    type Event = MailEvent;
    type Error = MailError;
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
            MailEvent::MailClaimed { .. } => self.claimed = true,
            MailEvent::MailSent { .. } => self.sent = true,
            MailEvent::MailFailed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_claimed_once() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let claim = MailCommand::Claim {
            to: "a@example.org".into(),
            kind: "large_cohort_ready".into(),
            subject: "s".into(),
            cause: "Cohort:1:5".into(),
            at,
        };
        let mut d = MailDelivery::default();
        assert_eq!(
            d.decide(MailCommand::RecordSent { at }),
            Err(MailError::NotClaimed)
        );
        for e in d.decide(claim.clone()).unwrap() {
            d.apply(e);
        }
        assert_eq!(d.decide(claim), Err(MailError::AlreadyClaimed));
        assert_eq!(d.decide(MailCommand::RecordSent { at }).unwrap().len(), 1);
    }
}
