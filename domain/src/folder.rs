//! The Folder aggregate: a user's project, which holds requests.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::validation::limits::DESCRIPTION_MAX_BYTES;
use crate::validation::{InvalidField, bounded_optional_text, required_text};
use crate::{EVENT_VERSION_1, SHARED_INBOX_FOLDER_NAME};

/// Longest folder name accepted (upstream column size).
pub const FOLDER_NAME_MAX: usize = 50;

/// What a caller may ask of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderCommand {
    /// Creates the folder, owned by `owner`.
    Create {
        folder_id: Uuid,
        owner: String,
        name: String,
        description: Option<String>,
        at: DateTime<Utc>,
    },
    /// Changes the given fields; `None` leaves a field as it is.
    Update {
        by: String,
        name: Option<String>,
        description: Option<String>,
        at: DateTime<Utc>,
    },
    /// Soft-deletes the folder (its requests are deleted by cascade by the application layer).
    Delete { by: String, at: DateTime<Utc> },
    /// Makes sure `owner`'s "Mes requêtes reçues" folder exists and is not deleted.
    EnsureSharedInbox {
        folder_id: Uuid,
        owner: String,
        at: DateTime<Utc>,
    },
}

/// What happened to a folder. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FolderEvent {
    FolderCreated {
        folder_id: Uuid,
        owner: String,
        name: String,
        description: Option<String>,
        at: DateTime<Utc>,
    },
    FolderRenamed {
        name: String,
        at: DateTime<Utc>,
    },
    FolderDescriptionChanged {
        description: Option<String>,
        at: DateTime<Utc>,
    },
    FolderDeleted {
        at: DateTime<Utc>,
    },
    /// A deleted shared-inbox folder came back because someone shared a request again.
    FolderRestored {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for FolderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FolderCreated { .. } => "FolderCreated",
            Self::FolderRenamed { .. } => "FolderRenamed",
            Self::FolderDescriptionChanged { .. } => "FolderDescriptionChanged",
            Self::FolderDeleted { .. } => "FolderDeleted",
            Self::FolderRestored { .. } => "FolderRestored",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a folder command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FolderError {
    #[error("a folder with this id already exists")]
    AlreadyExists,
    /// The folder does not exist, is deleted, or is not the caller's (indistinguishable on
    /// purpose: other users' objects are invisible).
    #[error("folder not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// Current state of a folder, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folder {
    pub state: Option<FolderState>,
}

/// The fields of a created folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderState {
    pub id: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub deleted: bool,
}

impl Folder {
    /// The live folder if it exists, is not deleted and belongs to `user`.
    pub fn owned_by(&self, user: &str) -> Option<&FolderState> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted && s.owner == user)
    }

    fn require_owned(&self, user: &str) -> Result<&FolderState, FolderError> {
        self.owned_by(user).ok_or(FolderError::NotFound)
    }

    /// Decides a command: the events it produces, or why it is refused.
    pub fn decide(&self, command: FolderCommand) -> Result<Vec<FolderEvent>, FolderError> {
        match command {
            FolderCommand::Create {
                folder_id,
                owner,
                name,
                description,
                at,
            } => {
                if self.state.is_some() {
                    return Err(FolderError::AlreadyExists);
                }
                required_text("name", &name, FOLDER_NAME_MAX)?;
                bounded_optional_text(
                    "description",
                    description.as_deref(),
                    DESCRIPTION_MAX_BYTES,
                )?;
                Ok(vec![FolderEvent::FolderCreated {
                    folder_id,
                    owner,
                    name,
                    description,
                    at,
                }])
            }
            FolderCommand::Update {
                by,
                name,
                description,
                at,
            } => {
                let current = self.require_owned(&by)?;
                let mut events = Vec::new();
                if let Some(name) = name.filter(|n| *n != current.name) {
                    required_text("name", &name, FOLDER_NAME_MAX)?;
                    events.push(FolderEvent::FolderRenamed { name, at });
                }
                if let Some(description) =
                    description.filter(|d| Some(d) != current.description.as_ref())
                {
                    bounded_optional_text(
                        "description",
                        Some(&description),
                        DESCRIPTION_MAX_BYTES,
                    )?;
                    events.push(FolderEvent::FolderDescriptionChanged {
                        description: Some(description),
                        at,
                    });
                }
                Ok(events)
            }
            FolderCommand::Delete { by, at } => {
                self.require_owned(&by)?;
                Ok(vec![FolderEvent::FolderDeleted { at }])
            }
            FolderCommand::EnsureSharedInbox {
                folder_id,
                owner,
                at,
            } => match &self.state {
                None => Ok(vec![FolderEvent::FolderCreated {
                    folder_id,
                    owner,
                    name: SHARED_INBOX_FOLDER_NAME.to_string(),
                    description: None,
                    at,
                }]),
                Some(s) if s.owner != owner => Err(FolderError::NotFound),
                Some(s) if s.deleted => Ok(vec![FolderEvent::FolderRestored { at }]),
                Some(_) => Ok(Vec::new()),
            },
        }
    }
}

impl Aggregate for Folder {
    const TYPE: &'static str = "Folder";
    type Command = FolderCommand;
    type Event = FolderEvent;
    type Error = FolderError;
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
            FolderEvent::FolderCreated {
                folder_id,
                owner,
                name,
                description,
                ..
            } => {
                self.state = Some(FolderState {
                    id: folder_id,
                    owner,
                    name,
                    description,
                    deleted: false,
                });
            }
            FolderEvent::FolderRenamed { name, .. } => {
                if let Some(s) = &mut self.state {
                    s.name = name;
                }
            }
            FolderEvent::FolderDescriptionChanged { description, .. } => {
                if let Some(s) = &mut self.state {
                    s.description = description;
                }
            }
            FolderEvent::FolderDeleted { .. } => {
                if let Some(s) = &mut self.state {
                    s.deleted = true;
                }
            }
            FolderEvent::FolderRestored { .. } => {
                if let Some(s) = &mut self.state {
                    s.deleted = false;
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

    fn created(owner: &str) -> Folder {
        let mut f = Folder::default();
        f.apply(FolderEvent::FolderCreated {
            folder_id: Uuid::nil(),
            owner: owner.into(),
            name: "Diabète".into(),
            description: None,
            at: at(),
        });
        f
    }

    #[test]
    fn a_folder_is_created_once_with_a_valid_name() {
        let cmd = |name: &str| FolderCommand::Create {
            folder_id: Uuid::nil(),
            owner: "alice".into(),
            name: name.into(),
            description: None,
            at: at(),
        };
        assert_eq!(Folder::default().decide(cmd("Projet")).unwrap().len(), 1);
        assert!(matches!(
            Folder::default().decide(cmd(&"x".repeat(51))),
            Err(FolderError::Invalid(_))
        ));
        assert_eq!(
            created("alice").decide(cmd("Projet")),
            Err(FolderError::AlreadyExists)
        );
    }

    #[test]
    fn only_the_owner_sees_changes_through_and_unchanged_fields_emit_nothing() {
        let f = created("alice");
        let update = |by: &str, name: &str| FolderCommand::Update {
            by: by.into(),
            name: Some(name.into()),
            description: None,
            at: at(),
        };
        assert_eq!(f.decide(update("bob", "x")), Err(FolderError::NotFound));
        assert!(f.decide(update("alice", "Diabète")).unwrap().is_empty());
        assert_eq!(
            f.decide(update("alice", "HbA1c")).unwrap(),
            vec![FolderEvent::FolderRenamed {
                name: "HbA1c".into(),
                at: at()
            }]
        );
    }

    #[test]
    fn a_deleted_folder_is_gone_but_a_shared_inbox_comes_back() {
        let mut f = created("alice");
        f.apply(FolderEvent::FolderDeleted { at: at() });
        let delete = FolderCommand::Delete {
            by: "alice".into(),
            at: at(),
        };
        assert_eq!(f.decide(delete), Err(FolderError::NotFound));
        let ensure = FolderCommand::EnsureSharedInbox {
            folder_id: Uuid::nil(),
            owner: "alice".into(),
            at: at(),
        };
        assert_eq!(
            f.decide(ensure.clone()).unwrap(),
            vec![FolderEvent::FolderRestored { at: at() }]
        );
        f.apply(FolderEvent::FolderRestored { at: at() });
        assert!(f.decide(ensure).unwrap().is_empty());
    }
}
