//! The FhirFilter aggregate: a user's saved FHIR search filter (upstream's `FhirFilter`), with
//! the history of its filter text.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::validation::limits::FILTER_MAX_BYTES;
use crate::validation::{InvalidField, bounded_text, required_text};

/// Default format version of the query a filter belongs to (upstream's default).
pub const DEFAULT_QUERY_VERSION: &str = "v1.4.4";

/// The descriptive fields of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FhirFilterFields {
    pub fhir_resource: String,
    pub fhir_version: String,
    pub query_version: String,
    pub name: String,
    pub identifying: bool,
}

/// Changes to a filter; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FhirFilterChanges {
    pub fhir_resource: Option<String>,
    pub fhir_version: Option<String>,
    pub query_version: Option<String>,
    pub name: Option<String>,
    pub identifying: Option<bool>,
    pub filter: Option<String>,
}

/// What may be asked of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FhirFilterCommand {
    Create {
        filter_id: Uuid,
        owner: String,
        fields: FhirFilterFields,
        filter: String,
        auto_generated: bool,
        at: DateTime<Utc>,
    },
    Update {
        by: String,
        changes: FhirFilterChanges,
        at: DateTime<Utc>,
    },
    Delete {
        by: String,
        at: DateTime<Utc>,
    },
}

/// What happened to a filter. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FhirFilterEvent {
    FhirFilterCreated {
        filter_id: Uuid,
        owner: String,
        fields: FhirFilterFields,
        filter: String,
        auto_generated: bool,
        at: DateTime<Utc>,
    },
    /// New values of the descriptive fields (all of them, changed or not).
    FhirFilterDescribed {
        fields: FhirFilterFields,
        at: DateTime<Utc>,
    },
    /// The filter text changed; `previous_filter` is kept as patch `patch_version` (1, 2, …).
    FhirFilterTextChanged {
        patch_version: u32,
        previous_filter: String,
        filter: String,
        at: DateTime<Utc>,
    },
    FhirFilterDeleted {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for FhirFilterEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FhirFilterCreated { .. } => "FhirFilterCreated",
            Self::FhirFilterDescribed { .. } => "FhirFilterDescribed",
            Self::FhirFilterTextChanged { .. } => "FhirFilterTextChanged",
            Self::FhirFilterDeleted { .. } => "FhirFilterDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a filter command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FhirFilterError {
    #[error("a filter with this id already exists")]
    AlreadyExists,
    /// Missing, deleted, or someone else's.
    #[error("filter not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// Current state of a filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FhirFilter {
    pub state: Option<FhirFilterState>,
}

/// The fields of a created filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FhirFilterState {
    pub owner: String,
    pub fields: FhirFilterFields,
    pub filter: String,
    pub patches: u32,
    pub deleted: bool,
}

/// Upstream strips leading and trailing `&` and `=` from a saved filter.
pub fn normalize_filter(filter: &str) -> String {
    filter
        .trim()
        .trim_matches(|c| c == '&' || c == '=')
        .to_string()
}

fn validate(fields: &FhirFilterFields) -> Result<(), InvalidField> {
    required_text("fhir_resource", &fields.fhir_resource, 255)?;
    required_text("fhir_version", &fields.fhir_version, 50)?;
    required_text("query_version", &fields.query_version, 50)?;
    let n = fields.name.trim().chars().count();
    if !(2..=50).contains(&n) {
        return Err(InvalidField {
            field: "name",
            reason: "the name must have between 2 and 50 characters".into(),
        });
    }
    Ok(())
}

impl FhirFilter {
    /// The live filter if it exists, is not deleted and belongs to `user`.
    pub fn owned_by(&self, user: &str) -> Option<&FhirFilterState> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted && s.owner == user)
    }

    /// Decides a command: the events it produces, or why it is refused.
    pub fn decide(
        &self,
        command: FhirFilterCommand,
    ) -> Result<Vec<FhirFilterEvent>, FhirFilterError> {
        match command {
            FhirFilterCommand::Create {
                filter_id,
                owner,
                fields,
                filter,
                auto_generated,
                at,
            } => {
                if self.state.is_some() {
                    return Err(FhirFilterError::AlreadyExists);
                }
                validate(&fields)?;
                bounded_text("filter", &filter, FILTER_MAX_BYTES)?;
                Ok(vec![FhirFilterEvent::FhirFilterCreated {
                    filter_id,
                    owner,
                    fields,
                    filter: normalize_filter(&filter),
                    auto_generated,
                    at,
                }])
            }
            FhirFilterCommand::Update { by, changes, at } => {
                let current = self.owned_by(&by).ok_or(FhirFilterError::NotFound)?;
                let fields = FhirFilterFields {
                    fhir_resource: changes
                        .fhir_resource
                        .unwrap_or_else(|| current.fields.fhir_resource.clone()),
                    fhir_version: changes
                        .fhir_version
                        .unwrap_or_else(|| current.fields.fhir_version.clone()),
                    query_version: changes
                        .query_version
                        .unwrap_or_else(|| current.fields.query_version.clone()),
                    name: changes.name.unwrap_or_else(|| current.fields.name.clone()),
                    identifying: changes.identifying.unwrap_or(current.fields.identifying),
                };
                validate(&fields)?;
                let mut events = Vec::new();
                if fields != current.fields {
                    events.push(FhirFilterEvent::FhirFilterDescribed { fields, at });
                }
                if let Some(filter) = changes
                    .filter
                    .map(|f| normalize_filter(&f))
                    .filter(|f| *f != current.filter)
                {
                    bounded_text("filter", &filter, FILTER_MAX_BYTES)?;
                    events.push(FhirFilterEvent::FhirFilterTextChanged {
                        patch_version: current.patches + 1,
                        previous_filter: current.filter.clone(),
                        filter,
                        at,
                    });
                }
                Ok(events)
            }
            FhirFilterCommand::Delete { by, at } => {
                self.owned_by(&by).ok_or(FhirFilterError::NotFound)?;
                Ok(vec![FhirFilterEvent::FhirFilterDeleted { at }])
            }
        }
    }
}

impl Aggregate for FhirFilter {
    const TYPE: &'static str = "FhirFilter";
    type Command = FhirFilterCommand;
    type Event = FhirFilterEvent;
    type Error = FhirFilterError;
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
            FhirFilterEvent::FhirFilterCreated {
                owner,
                fields,
                filter,
                ..
            } => {
                self.state = Some(FhirFilterState {
                    owner,
                    fields,
                    filter,
                    patches: 0,
                    deleted: false,
                });
            }
            FhirFilterEvent::FhirFilterDescribed { fields, .. } => {
                if let Some(s) = &mut self.state {
                    s.fields = fields;
                }
            }
            FhirFilterEvent::FhirFilterTextChanged {
                patch_version,
                filter,
                ..
            } => {
                if let Some(s) = &mut self.state {
                    s.filter = filter;
                    s.patches = patch_version;
                }
            }
            FhirFilterEvent::FhirFilterDeleted { .. } => {
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

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .into()
    }

    fn fields(name: &str) -> FhirFilterFields {
        FhirFilterFields {
            fhir_resource: "Condition".into(),
            fhir_version: "4.0.1".into(),
            query_version: DEFAULT_QUERY_VERSION.into(),
            name: name.into(),
            identifying: false,
        }
    }

    fn created() -> FhirFilter {
        let mut f = FhirFilter::default();
        for e in f
            .decide(FhirFilterCommand::Create {
                filter_id: Uuid::nil(),
                owner: "alice".into(),
                fields: fields("Diabetes"),
                filter: "&code=E11&".into(),
                auto_generated: false,
                at: at(),
            })
            .unwrap()
        {
            f.apply(e);
        }
        f
    }

    #[test]
    fn the_filter_text_is_stripped_and_its_changes_numbered() {
        let mut f = created();
        assert_eq!(f.state.as_ref().unwrap().filter, "code=E11");
        let events = f
            .decide(FhirFilterCommand::Update {
                by: "alice".into(),
                changes: FhirFilterChanges {
                    filter: Some("code=E10=".into()),
                    name: Some("Diabetes".into()),
                    ..Default::default()
                },
                at: at(),
            })
            .unwrap();
        assert_eq!(
            events,
            vec![FhirFilterEvent::FhirFilterTextChanged {
                patch_version: 1,
                previous_filter: "code=E11".into(),
                filter: "code=E10".into(),
                at: at()
            }]
        );
        for e in events {
            f.apply(e);
        }
        assert_eq!(f.state.unwrap().patches, 1);
    }

    #[test]
    fn names_have_two_to_fifty_characters_and_only_the_owner_changes_it() {
        let bad = FhirFilter::default().decide(FhirFilterCommand::Create {
            filter_id: Uuid::nil(),
            owner: "alice".into(),
            fields: fields("x"),
            filter: String::new(),
            auto_generated: false,
            at: at(),
        });
        assert!(matches!(bad, Err(FhirFilterError::Invalid(_))));
        assert_eq!(
            created().decide(FhirFilterCommand::Delete {
                by: "mallory".into(),
                at: at()
            }),
            Err(FhirFilterError::NotFound)
        );
    }
}
