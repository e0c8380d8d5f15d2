//! Datalabs and their infrastructure providers (upstream's `Datalab` and
//! `InfrastructureProvider`): where Hive exports land. A datalab's name is also the Unix/HDFS
//! account that receives the Hive databases, hence no spaces.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::validation::{InvalidField, required_text};

/// Longest datalab or provider name.
pub const NAME_MAX: usize = 255;

/// Checks a datalab name: required, no whitespace.
pub fn datalab_name(name: &str) -> Result<(), InvalidField> {
    required_text("name", name, NAME_MAX)?;
    if name.chars().any(char::is_whitespace) {
        return Err(InvalidField {
            field: "name",
            reason: "a datalab name cannot contain spaces (it is also an account name)".into(),
        });
    }
    // It names a Unix account and a directory: no path separators nor leading dot.
    let account = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !account || name.starts_with('.') {
        return Err(InvalidField {
            field: "name",
            reason: "a datalab name is an account name: ASCII letters, digits, `_`, `-` and `.`, not starting with `.`".into(),
        });
    }
    Ok(())
}

/// Why a datalab or provider command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DatalabError {
    #[error("it already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// What may be asked of an infrastructure provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderCommand {
    Create {
        id: Uuid,
        name: String,
        at: DateTime<Utc>,
    },
    Rename {
        name: String,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

/// What happened to a provider. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderEvent {
    InfrastructureProviderCreated {
        id: Uuid,
        name: String,
        at: DateTime<Utc>,
    },
    InfrastructureProviderRenamed {
        name: String,
        at: DateTime<Utc>,
    },
    InfrastructureProviderDeleted {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ProviderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::InfrastructureProviderCreated { .. } => "InfrastructureProviderCreated",
            Self::InfrastructureProviderRenamed { .. } => "InfrastructureProviderRenamed",
            Self::InfrastructureProviderDeleted { .. } => "InfrastructureProviderDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// An infrastructure provider (where datalabs run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfrastructureProvider {
    pub id: Option<Uuid>,
    pub name: String,
    pub deleted: bool,
}

impl InfrastructureProvider {
    pub fn exists(&self) -> bool {
        self.id.is_some() && !self.deleted
    }

    pub fn decide(&self, command: ProviderCommand) -> Result<Vec<ProviderEvent>, DatalabError> {
        match command {
            ProviderCommand::Create { id, name, at } => {
                if self.id.is_some() {
                    return Err(DatalabError::AlreadyExists);
                }
                required_text("name", &name, NAME_MAX)?;
                Ok(vec![ProviderEvent::InfrastructureProviderCreated {
                    id,
                    name: name.trim().to_string(),
                    at,
                }])
            }
            ProviderCommand::Rename { name, at } => {
                if !self.exists() {
                    return Err(DatalabError::NotFound);
                }
                required_text("name", &name, NAME_MAX)?;
                let name = name.trim().to_string();
                if name == self.name {
                    return Ok(vec![]);
                }
                Ok(vec![ProviderEvent::InfrastructureProviderRenamed {
                    name,
                    at,
                }])
            }
            ProviderCommand::Delete { at } => {
                if !self.exists() {
                    return Err(DatalabError::NotFound);
                }
                Ok(vec![ProviderEvent::InfrastructureProviderDeleted { at }])
            }
        }
    }
}

impl Aggregate for InfrastructureProvider {
    const TYPE: &'static str = "InfrastructureProvider";
    type Command = ProviderCommand;
    type Event = ProviderEvent;
    type Error = DatalabError;
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
            ProviderEvent::InfrastructureProviderCreated { id, name, .. } => {
                self.id = Some(id);
                self.name = name;
            }
            ProviderEvent::InfrastructureProviderRenamed { name, .. } => self.name = name,
            ProviderEvent::InfrastructureProviderDeleted { .. } => self.deleted = true,
        }
    }
}

/// What may be asked of a datalab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatalabCommand {
    Create {
        id: Uuid,
        name: String,
        provider: Uuid,
        at: DateTime<Utc>,
    },
    Change {
        name: Option<String>,
        provider: Option<Uuid>,
        at: DateTime<Utc>,
    },
}

/// What happened to a datalab. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatalabEvent {
    DatalabCreated {
        id: Uuid,
        name: String,
        provider: Uuid,
        at: DateTime<Utc>,
    },
    DatalabChanged {
        name: String,
        provider: Uuid,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for DatalabEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DatalabCreated { .. } => "DatalabCreated",
            Self::DatalabChanged { .. } => "DatalabChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// A datalab.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datalab {
    pub id: Option<Uuid>,
    pub name: String,
    pub provider: Option<Uuid>,
}

impl Datalab {
    pub fn decide(&self, command: DatalabCommand) -> Result<Vec<DatalabEvent>, DatalabError> {
        match command {
            DatalabCommand::Create {
                id,
                name,
                provider,
                at,
            } => {
                if self.id.is_some() {
                    return Err(DatalabError::AlreadyExists);
                }
                datalab_name(&name)?;
                Ok(vec![DatalabEvent::DatalabCreated {
                    id,
                    name,
                    provider,
                    at,
                }])
            }
            DatalabCommand::Change { name, provider, at } => {
                let (Some(_), Some(current)) = (self.id, self.provider) else {
                    return Err(DatalabError::NotFound);
                };
                if let Some(n) = &name {
                    datalab_name(n)?;
                }
                let name = name.unwrap_or_else(|| self.name.clone());
                let provider = provider.unwrap_or(current);
                if name == self.name && provider == current {
                    return Ok(vec![]);
                }
                Ok(vec![DatalabEvent::DatalabChanged { name, provider, at }])
            }
        }
    }
}

impl Aggregate for Datalab {
    const TYPE: &'static str = "Datalab";
    type Command = DatalabCommand;
    type Event = DatalabEvent;
    type Error = DatalabError;
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
            DatalabEvent::DatalabCreated {
                id, name, provider, ..
            } => {
                self.id = Some(id);
                self.name = name;
                self.provider = Some(provider);
            }
            DatalabEvent::DatalabChanged { name, provider, .. } => {
                self.name = name;
                self.provider = Some(provider);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datalab_names_are_account_names() {
        assert!(datalab_name("lab_1-x.y").is_ok());
        for bad in ["my lab", "../etc", "a/b", ".hidden", "", "é"] {
            assert!(datalab_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_changes() {
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let d = Datalab::default();
        assert!(
            d.decide(DatalabCommand::Create {
                id: Uuid::nil(),
                name: "my lab".into(),
                provider: Uuid::nil(),
                at
            })
            .is_err()
        );
        let mut d = Datalab::default();
        for e in d
            .decide(DatalabCommand::Create {
                id: Uuid::nil(),
                name: "lab1".into(),
                provider: Uuid::nil(),
                at,
            })
            .unwrap()
        {
            d.apply(e);
        }
        let same = d
            .decide(DatalabCommand::Change {
                name: Some("lab1".into()),
                provider: None,
                at,
            })
            .unwrap();
        assert!(same.is_empty());
        assert!(
            Datalab::default()
                .decide(DatalabCommand::Change {
                    name: None,
                    provider: None,
                    at
                })
                .is_err()
        );
    }
}
