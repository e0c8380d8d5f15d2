//! Editorial content of the front-end: web contents (banners and the "news" shown on the home
//! page, `/webcontent/contents/`) and release notes (`/release-notes/`). Two aggregates keyed by
//! integer ids, written by full administrators (checked by the application layer).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;
use crate::validation::{InvalidField, required_text};

/// Upstream's content types and their labels.
pub const CONTENT_TYPES: [(&str, &str); 4] = [
    ("BANNER_WARNING", "Bannière d'avertissement"),
    ("BANNER_INFO", "Bannière d'information"),
    ("BANNER_ERROR", "Bannière d'erreur"),
    ("RELEASE_NOTE", "Note de version"),
];

/// Metadata names a content may carry.
pub const METADATA_NAMES: [&str; 3] = ["order", "style", "tags"];

/// The editable fields of a web content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentFields {
    pub title: String,
    /// Markdown.
    pub content: String,
    /// The front-end page it belongs to.
    pub page: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
}

/// Why a content command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentError {
    #[error("this content already exists")]
    AlreadyExists,
    #[error("content not found")]
    NotFound,
    #[error("release note not found")]
    NoteNotFound,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

impl ContentFields {
    /// Upstream's limits: title ≤ 200, page ≤ 100, a known type, known metadata names with
    /// values ≤ 255.
    pub fn validate(&self) -> Result<(), InvalidField> {
        required_text("title", &self.title, 200)?;
        required_text("page", &self.page, 100)?;
        crate::validation::bounded_text(
            "content",
            &self.content,
            crate::validation::limits::CONTENT_MAX_BYTES,
        )?;
        if !CONTENT_TYPES.iter().any(|(t, _)| *t == self.content_type) {
            return Err(InvalidField {
                field: "content_type",
                reason: format!(
                    "unknown content type '{}' (expected one of {})",
                    self.content_type,
                    CONTENT_TYPES.map(|(t, _)| t).join(", ")
                ),
            });
        }
        for (name, value) in &self.metadata {
            if !METADATA_NAMES.contains(&name.as_str()) {
                return Err(InvalidField {
                    field: "metadata",
                    reason: format!(
                        "unknown metadata '{name}' (expected {})",
                        METADATA_NAMES.join(", ")
                    ),
                });
            }
            if value.chars().count() > 255 {
                return Err(InvalidField {
                    field: "metadata",
                    reason: format!("metadata '{name}' is longer than 255 characters"),
                });
            }
        }
        Ok(())
    }
}

/// What may be asked of a web content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebContentCommand {
    Create {
        content_id: i64,
        fields: ContentFields,
        at: DateTime<Utc>,
    },
    /// `fields` is the full merged set.
    Update {
        fields: ContentFields,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

/// What happened to a web content. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebContentEvent {
    WebContentCreated {
        content_id: i64,
        fields: ContentFields,
        at: DateTime<Utc>,
    },
    WebContentChanged {
        fields: ContentFields,
        at: DateTime<Utc>,
    },
    WebContentDeleted {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for WebContentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::WebContentCreated { .. } => "WebContentCreated",
            Self::WebContentChanged { .. } => "WebContentChanged",
            Self::WebContentDeleted { .. } => "WebContentDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// A web content, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebContent {
    pub fields: Option<ContentFields>,
    pub deleted: bool,
}

impl WebContent {
    fn live(&self) -> Result<&ContentFields, ContentError> {
        self.fields
            .as_ref()
            .filter(|_| !self.deleted)
            .ok_or(ContentError::NotFound)
    }

    /// Decides a command.
    pub fn decide(&self, command: WebContentCommand) -> Result<Vec<WebContentEvent>, ContentError> {
        match command {
            WebContentCommand::Create {
                content_id,
                fields,
                at,
            } => {
                if self.fields.is_some() {
                    return Err(ContentError::AlreadyExists);
                }
                fields.validate()?;
                Ok(vec![WebContentEvent::WebContentCreated {
                    content_id,
                    fields,
                    at,
                }])
            }
            WebContentCommand::Update { fields, at } => {
                let current = self.live()?;
                fields.validate()?;
                if *current == fields {
                    return Ok(Vec::new());
                }
                Ok(vec![WebContentEvent::WebContentChanged { fields, at }])
            }
            WebContentCommand::Delete { at } => {
                self.live()?;
                Ok(vec![WebContentEvent::WebContentDeleted { at }])
            }
        }
    }
}

impl Aggregate for WebContent {
    const TYPE: &'static str = "WebContent";
    type Command = WebContentCommand;
    type Event = WebContentEvent;
    type Error = ContentError;
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
            WebContentEvent::WebContentCreated { fields, .. }
            | WebContentEvent::WebContentChanged { fields, .. } => self.fields = Some(fields),
            WebContentEvent::WebContentDeleted { .. } => self.deleted = true,
        }
    }
}

/// What may be asked of a release note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseNoteCommand {
    Create {
        note_id: i64,
        title: String,
        message: Vec<String>,
        author: Option<String>,
        at: DateTime<Utc>,
    },
    /// The full new title and message.
    Update {
        title: String,
        message: Vec<String>,
        at: DateTime<Utc>,
    },
}

/// What happened to a release note. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseNoteEvent {
    ReleaseNoteCreated {
        note_id: i64,
        title: String,
        message: Vec<String>,
        author: Option<String>,
        at: DateTime<Utc>,
    },
    ReleaseNoteChanged {
        title: String,
        message: Vec<String>,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ReleaseNoteEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ReleaseNoteCreated { .. } => "ReleaseNoteCreated",
            Self::ReleaseNoteChanged { .. } => "ReleaseNoteChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// A release note, rebuilt from its events: `(title, message)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseNote {
    pub note: Option<(String, Vec<String>)>,
}

fn validate_note(title: &str, message: &[String]) -> Result<(), InvalidField> {
    required_text("title", title, 255)?;
    let size: usize = message.iter().map(String::len).sum();
    if size > crate::validation::limits::MESSAGE_MAX_BYTES {
        return Err(InvalidField {
            field: "message",
            reason: format!(
                "ensure the message has no more than {} bytes (it has {size})",
                crate::validation::limits::MESSAGE_MAX_BYTES
            ),
        });
    }
    if message.iter().all(|line| line.trim().is_empty()) {
        return Err(InvalidField {
            field: "message",
            reason: "message needs at least one non-blank line".into(),
        });
    }
    Ok(())
}

impl ReleaseNote {
    /// Decides a command.
    pub fn decide(
        &self,
        command: ReleaseNoteCommand,
    ) -> Result<Vec<ReleaseNoteEvent>, ContentError> {
        match command {
            ReleaseNoteCommand::Create {
                note_id,
                title,
                message,
                author,
                at,
            } => {
                if self.note.is_some() {
                    return Err(ContentError::AlreadyExists);
                }
                validate_note(&title, &message)?;
                Ok(vec![ReleaseNoteEvent::ReleaseNoteCreated {
                    note_id,
                    title,
                    message,
                    author,
                    at,
                }])
            }
            ReleaseNoteCommand::Update { title, message, at } => {
                let Some(current) = &self.note else {
                    return Err(ContentError::NoteNotFound);
                };
                validate_note(&title, &message)?;
                if current.0 == title && current.1 == message {
                    return Ok(Vec::new());
                }
                Ok(vec![ReleaseNoteEvent::ReleaseNoteChanged {
                    title,
                    message,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for ReleaseNote {
    const TYPE: &'static str = "ReleaseNote";
    type Command = ReleaseNoteCommand;
    type Event = ReleaseNoteEvent;
    type Error = ContentError;
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
            ReleaseNoteEvent::ReleaseNoteCreated { title, message, .. }
            | ReleaseNoteEvent::ReleaseNoteChanged { title, message, .. } => {
                self.note = Some((title, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-03-01T10:00:00Z".parse().unwrap()
    }

    fn banner() -> ContentFields {
        ContentFields {
            title: "Maintenance".into(),
            content: "Le service sera **indisponible**.".into(),
            page: "home".into(),
            content_type: "BANNER_WARNING".into(),
            metadata: BTreeMap::from([("order".into(), "1".into())]),
        }
    }

    #[test]
    fn contents_are_validated_created_changed_and_deleted_once() {
        let mut content = WebContent::default();
        let bad_type = ContentFields {
            content_type: "POPUP".into(),
            ..banner()
        };
        assert!(matches!(
            content.decide(WebContentCommand::Create {
                content_id: 1,
                fields: bad_type,
                at: at()
            }),
            Err(ContentError::Invalid(InvalidField {
                field: "content_type",
                ..
            }))
        ));
        let bad_meta = ContentFields {
            metadata: BTreeMap::from([("color".into(), "red".into())]),
            ..banner()
        };
        assert!(
            content
                .decide(WebContentCommand::Create {
                    content_id: 1,
                    fields: bad_meta,
                    at: at()
                })
                .is_err()
        );
        for e in content
            .decide(WebContentCommand::Create {
                content_id: 1,
                fields: banner(),
                at: at(),
            })
            .unwrap()
        {
            content.apply(e);
        }
        let same = content.decide(WebContentCommand::Update {
            fields: banner(),
            at: at(),
        });
        assert_eq!(same, Ok(Vec::new()));
        for e in content
            .decide(WebContentCommand::Delete { at: at() })
            .unwrap()
        {
            content.apply(e);
        }
        assert_eq!(
            content.decide(WebContentCommand::Delete { at: at() }),
            Err(ContentError::NotFound)
        );
    }

    #[test]
    fn release_notes_need_a_title_and_a_message() {
        let note = ReleaseNote::default();
        let empty = note.decide(ReleaseNoteCommand::Create {
            note_id: 1,
            title: "v2".into(),
            message: vec![" ".into()],
            author: None,
            at: at(),
        });
        assert!(matches!(empty, Err(ContentError::Invalid(_))));
        assert_eq!(
            note.decide(ReleaseNoteCommand::Update {
                title: "v2".into(),
                message: vec!["x".into()],
                at: at()
            }),
            Err(ContentError::NoteNotFound)
        );
    }
}
