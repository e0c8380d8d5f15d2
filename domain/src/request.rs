//! The Request aggregate: a user's request and its chain of query snapshots (versions).
//!
//! Versioning rules (upstream §2.4): the first snapshot is created against the request; every
//! later one names a `previous_snapshot` of the same request (branches are allowed); `version` is
//! a linear counter per request (number of existing snapshots + 1). Changing a snapshot's query
//! keeps the previous text as a numbered patch.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::EVENT_VERSION_1;
use crate::query::{QueryError, perimeters_ids};
use crate::validation::limits::DESCRIPTION_MAX_BYTES;
use crate::validation::{InvalidField, bounded_optional_text, required_text};

/// Longest request name accepted (upstream column size).
pub const REQUEST_NAME_MAX: usize = 255;
/// Longest snapshot name accepted.
pub const SNAPSHOT_NAME_MAX: usize = 255;

/// What a caller may ask of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCommand {
    /// Creates the request inside `parent_folder` (whose ownership the application checked).
    Create {
        request_id: Uuid,
        owner: String,
        name: String,
        description: Option<String>,
        favorite: bool,
        parent_folder: Uuid,
        shared_by: Option<String>,
        at: DateTime<Utc>,
    },
    /// Changes the given fields; `None` leaves a field as it is.
    Update {
        by: String,
        name: Option<String>,
        description: Option<String>,
        favorite: Option<bool>,
        parent_folder: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// Soft-deletes the request and its snapshots.
    Delete {
        by: String,
        by_cascade: bool,
        at: DateTime<Utc>,
    },
    /// Saves a new query snapshot (a new version).
    SaveSnapshot {
        by: String,
        snapshot_id: Uuid,
        previous_snapshot: Option<Uuid>,
        serialized_query: String,
        name: Option<String>,
        shared_by: Option<String>,
        at: DateTime<Utc>,
    },
    /// Renames a snapshot and/or replaces its query (the old text is kept as a patch).
    UpdateSnapshot {
        by: String,
        snapshot_id: Uuid,
        name: Option<String>,
        serialized_query: Option<String>,
        at: DateTime<Utc>,
    },
    /// Records that a snapshot was copied into other users' requests.
    RecordShare {
        by: String,
        snapshot_id: Uuid,
        recipients: Vec<String>,
        shared_requests: Vec<Uuid>,
        notify_by_email: bool,
        at: DateTime<Utc>,
    },
}

/// What happened to a request. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestEvent {
    RequestCreated {
        request_id: Uuid,
        owner: String,
        name: String,
        description: Option<String>,
        favorite: bool,
        parent_folder: Uuid,
        shared_by: Option<String>,
        at: DateTime<Utc>,
    },
    RequestRenamed {
        name: String,
        at: DateTime<Utc>,
    },
    RequestDescriptionChanged {
        description: Option<String>,
        at: DateTime<Utc>,
    },
    RequestFavoriteChanged {
        favorite: bool,
        at: DateTime<Utc>,
    },
    RequestMoved {
        parent_folder: Uuid,
        at: DateTime<Utc>,
    },
    RequestDeleted {
        by_cascade: bool,
        at: DateTime<Utc>,
    },
    QuerySnapshotSaved {
        snapshot_id: Uuid,
        version: u32,
        previous_snapshot: Option<Uuid>,
        serialized_query: String,
        perimeters_ids: Vec<String>,
        name: Option<String>,
        shared_by: Option<String>,
        at: DateTime<Utc>,
    },
    QuerySnapshotRenamed {
        snapshot_id: Uuid,
        name: Option<String>,
        at: DateTime<Utc>,
    },
    /// The snapshot's query was replaced; `previous_query` is the text it had before, kept as
    /// patch number `patch_version` (1, 2, … per snapshot).
    QuerySnapshotPatched {
        snapshot_id: Uuid,
        patch_version: u32,
        previous_query: String,
        serialized_query: String,
        perimeters_ids: Vec<String>,
        at: DateTime<Utc>,
    },
    RequestShared {
        snapshot_id: Uuid,
        recipients: Vec<String>,
        shared_requests: Vec<Uuid>,
        at: DateTime<Utc>,
        /// Whether the recipients are told by e-mail. Added within version 1: absent in older
        /// events, where it reads as `false` (nothing was sent then).
        #[serde(default)]
        notify_by_email: bool,
    },
}

impl DomainEvent for RequestEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RequestCreated { .. } => "RequestCreated",
            Self::RequestRenamed { .. } => "RequestRenamed",
            Self::RequestDescriptionChanged { .. } => "RequestDescriptionChanged",
            Self::RequestFavoriteChanged { .. } => "RequestFavoriteChanged",
            Self::RequestMoved { .. } => "RequestMoved",
            Self::RequestDeleted { .. } => "RequestDeleted",
            Self::QuerySnapshotSaved { .. } => "QuerySnapshotSaved",
            Self::QuerySnapshotRenamed { .. } => "QuerySnapshotRenamed",
            Self::QuerySnapshotPatched { .. } => "QuerySnapshotPatched",
            Self::RequestShared { .. } => "RequestShared",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a request command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("a request with this id already exists")]
    AlreadyExists,
    /// Missing, deleted, or someone else's (indistinguishable on purpose).
    #[error("request not found")]
    NotFound,
    #[error("query snapshot not found")]
    SnapshotNotFound,
    #[error("a query snapshot with this id already exists")]
    SnapshotAlreadyExists,
    #[error("this request already has snapshots: give previous_snapshot to derive a new version")]
    PreviousSnapshotRequired,
    #[error("invalid serialized_query: {0}")]
    InvalidQuery(#[from] QueryError),
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("recipients: at least one recipient is required")]
    NoRecipients,
}

/// Current state of a request, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub state: Option<RequestState>,
}

/// The fields of a created request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestState {
    pub id: Uuid,
    pub owner: String,
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub parent_folder: Uuid,
    pub shared_by: Option<String>,
    pub deleted: bool,
    /// Shared between copies of the state and copied only when one of them changes it: a
    /// command on a request with hundreds of versions (each holding its query) starts from a
    /// copy of the state held in memory, and its events are then applied to the held one
    /// alone. Serialized as the map itself.
    pub snapshots: Arc<BTreeMap<Uuid, SnapshotState>>,
}

/// One version of the request's query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub version: u32,
    pub previous_snapshot: Option<Uuid>,
    pub serialized_query: String,
    pub name: Option<String>,
    pub patches: u32,
}

fn optional_text(
    field: &'static str,
    value: Option<&String>,
    max: usize,
) -> Result<(), InvalidField> {
    match value {
        Some(v) if v.chars().count() > max => Err(InvalidField {
            field,
            reason: format!("ensure this field has no more than {max} characters"),
        }),
        _ => Ok(()),
    }
}

impl Request {
    /// The live request if it exists, is not deleted and belongs to `user`.
    pub fn owned_by(&self, user: &str) -> Option<&RequestState> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted && s.owner == user)
    }

    fn require_owned(&self, user: &str) -> Result<&RequestState, RequestError> {
        self.owned_by(user).ok_or(RequestError::NotFound)
    }

    fn require_snapshot<'a>(
        state: &'a RequestState,
        snapshot_id: &Uuid,
    ) -> Result<&'a SnapshotState, RequestError> {
        state
            .snapshots
            .get(snapshot_id)
            .ok_or(RequestError::SnapshotNotFound)
    }

    /// Decides a command: the events it produces, or why it is refused.
    pub fn decide(&self, command: RequestCommand) -> Result<Vec<RequestEvent>, RequestError> {
        match command {
            RequestCommand::Create {
                request_id,
                owner,
                name,
                description,
                favorite,
                parent_folder,
                shared_by,
                at,
            } => {
                if self.state.is_some() {
                    return Err(RequestError::AlreadyExists);
                }
                required_text("name", &name, REQUEST_NAME_MAX)?;
                bounded_optional_text(
                    "description",
                    description.as_deref(),
                    DESCRIPTION_MAX_BYTES,
                )?;
                Ok(vec![RequestEvent::RequestCreated {
                    request_id,
                    owner,
                    name,
                    description,
                    favorite,
                    parent_folder,
                    shared_by,
                    at,
                }])
            }
            RequestCommand::Update {
                by,
                name,
                description,
                favorite,
                parent_folder,
                at,
            } => {
                let current = self.require_owned(&by)?;
                let mut events = Vec::new();
                if let Some(name) = name.filter(|n| *n != current.name) {
                    required_text("name", &name, REQUEST_NAME_MAX)?;
                    events.push(RequestEvent::RequestRenamed { name, at });
                }
                if let Some(d) = description.filter(|d| Some(d) != current.description.as_ref()) {
                    bounded_optional_text("description", Some(&d), DESCRIPTION_MAX_BYTES)?;
                    events.push(RequestEvent::RequestDescriptionChanged {
                        description: Some(d),
                        at,
                    });
                }
                if let Some(favorite) = favorite.filter(|f| *f != current.favorite) {
                    events.push(RequestEvent::RequestFavoriteChanged { favorite, at });
                }
                if let Some(parent_folder) = parent_folder.filter(|p| *p != current.parent_folder) {
                    events.push(RequestEvent::RequestMoved { parent_folder, at });
                }
                Ok(events)
            }
            RequestCommand::Delete { by, by_cascade, at } => {
                self.require_owned(&by)?;
                Ok(vec![RequestEvent::RequestDeleted { by_cascade, at }])
            }
            RequestCommand::SaveSnapshot {
                by,
                snapshot_id,
                previous_snapshot,
                serialized_query,
                name,
                shared_by,
                at,
            } => {
                let current = self.require_owned(&by)?;
                if current.snapshots.contains_key(&snapshot_id) {
                    return Err(RequestError::SnapshotAlreadyExists);
                }
                match &previous_snapshot {
                    Some(previous) => {
                        Self::require_snapshot(current, previous)?;
                    }
                    None if !current.snapshots.is_empty() => {
                        return Err(RequestError::PreviousSnapshotRequired);
                    }
                    None => {}
                }
                optional_text("name", name.as_ref(), SNAPSHOT_NAME_MAX)?;
                let perimeters_ids = perimeters_ids(&serialized_query)?;
                let version = u32::try_from(current.snapshots.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                Ok(vec![RequestEvent::QuerySnapshotSaved {
                    snapshot_id,
                    version,
                    previous_snapshot,
                    serialized_query,
                    perimeters_ids,
                    name,
                    shared_by,
                    at,
                }])
            }
            RequestCommand::UpdateSnapshot {
                by,
                snapshot_id,
                name,
                serialized_query,
                at,
            } => {
                let current = self.require_owned(&by)?;
                let snapshot = Self::require_snapshot(current, &snapshot_id)?;
                let mut events = Vec::new();
                if let Some(name) = name.filter(|n| Some(n) != snapshot.name.as_ref()) {
                    optional_text("name", Some(&name), SNAPSHOT_NAME_MAX)?;
                    events.push(RequestEvent::QuerySnapshotRenamed {
                        snapshot_id,
                        name: Some(name),
                        at,
                    });
                }
                if let Some(query) = serialized_query.filter(|q| *q != snapshot.serialized_query) {
                    let perimeters_ids = perimeters_ids(&query)?;
                    events.push(RequestEvent::QuerySnapshotPatched {
                        snapshot_id,
                        patch_version: snapshot.patches.saturating_add(1),
                        previous_query: snapshot.serialized_query.clone(),
                        serialized_query: query,
                        perimeters_ids,
                        at,
                    });
                }
                Ok(events)
            }
            RequestCommand::RecordShare {
                by,
                snapshot_id,
                recipients,
                shared_requests,
                notify_by_email,
                at,
            } => {
                let current = self.require_owned(&by)?;
                Self::require_snapshot(current, &snapshot_id)?;
                if recipients.is_empty() {
                    return Err(RequestError::NoRecipients);
                }
                Ok(vec![RequestEvent::RequestShared {
                    snapshot_id,
                    recipients,
                    shared_requests,
                    at,
                    notify_by_email,
                }])
            }
        }
    }

    /// Checks a share before the application creates anything for the recipients.
    pub fn check_can_share(
        &self,
        by: &str,
        snapshot_id: &Uuid,
    ) -> Result<&SnapshotState, RequestError> {
        let current = self.require_owned(by)?;
        Self::require_snapshot(current, snapshot_id)
    }
}

impl Aggregate for Request {
    const TYPE: &'static str = "Request";
    type Command = RequestCommand;
    type Event = RequestEvent;
    type Error = RequestError;
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
        if let RequestEvent::RequestCreated {
            request_id,
            owner,
            name,
            description,
            favorite,
            parent_folder,
            shared_by,
            ..
        } = event
        {
            self.state = Some(RequestState {
                id: request_id,
                owner,
                name,
                description,
                favorite,
                parent_folder,
                shared_by,
                deleted: false,
                snapshots: Arc::default(),
            });
            return;
        }
        let Some(s) = &mut self.state else { return };
        match event {
            RequestEvent::RequestCreated { .. } | RequestEvent::RequestShared { .. } => {}
            RequestEvent::RequestRenamed { name, .. } => s.name = name,
            RequestEvent::RequestDescriptionChanged { description, .. } => {
                s.description = description
            }
            RequestEvent::RequestFavoriteChanged { favorite, .. } => s.favorite = favorite,
            RequestEvent::RequestMoved { parent_folder, .. } => s.parent_folder = parent_folder,
            RequestEvent::RequestDeleted { .. } => s.deleted = true,
            RequestEvent::QuerySnapshotSaved {
                snapshot_id,
                version,
                previous_snapshot,
                serialized_query,
                name,
                ..
            } => {
                Arc::make_mut(&mut s.snapshots).insert(
                    snapshot_id,
                    SnapshotState {
                        version,
                        previous_snapshot,
                        serialized_query,
                        name,
                        patches: 0,
                    },
                );
            }
            RequestEvent::QuerySnapshotRenamed {
                snapshot_id, name, ..
            } => {
                if let Some(snap) = Arc::make_mut(&mut s.snapshots).get_mut(&snapshot_id) {
                    snap.name = name;
                }
            }
            RequestEvent::QuerySnapshotPatched {
                snapshot_id,
                patch_version,
                serialized_query,
                ..
            } => {
                if let Some(snap) = Arc::make_mut(&mut s.snapshots).get_mut(&snapshot_id) {
                    snap.serialized_query = serialized_query;
                    snap.patches = patch_version;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const Q: &str = r#"{"sourcePopulation":{"caresiteCohortList":["1"]}}"#;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn run(r: &mut Request, cmd: RequestCommand) -> Result<Vec<RequestEvent>, RequestError> {
        let events = r.decide(cmd)?;
        for e in &events {
            r.apply(e.clone());
        }
        Ok(events)
    }

    fn new_request() -> Request {
        let mut r = Request::default();
        run(
            &mut r,
            RequestCommand::Create {
                request_id: id(1),
                owner: "alice".into(),
                name: "Diabète".into(),
                description: None,
                favorite: false,
                parent_folder: id(100),
                shared_by: None,
                at: at(),
            },
        )
        .unwrap();
        r
    }

    fn save(previous: Option<u128>, snapshot: u128) -> RequestCommand {
        RequestCommand::SaveSnapshot {
            by: "alice".into(),
            snapshot_id: id(snapshot),
            previous_snapshot: previous.map(id),
            serialized_query: Q.into(),
            name: None,
            shared_by: None,
            at: at(),
        }
    }

    #[test]
    fn versions_count_up_linearly_even_across_branches() {
        let mut r = new_request();
        let versions: Vec<u32> = [(None, 10), (Some(10), 11), (Some(11), 12), (Some(10), 13)]
            .into_iter()
            .map(
                |(prev, snap)| match run(&mut r, save(prev, snap)).unwrap().as_slice() {
                    [RequestEvent::QuerySnapshotSaved { version, .. }] => *version,
                    other => panic!("unexpected events {other:?}"),
                },
            )
            .collect();
        assert_eq!(versions, vec![1, 2, 3, 4]);
        let state = r.state.unwrap();
        assert_eq!(state.snapshots[&id(13)].previous_snapshot, Some(id(10)));
    }

    #[test]
    fn a_second_snapshot_needs_a_previous_one_of_the_same_request() {
        let mut r = new_request();
        run(&mut r, save(None, 10)).unwrap();
        assert_eq!(
            run(&mut r, save(None, 11)),
            Err(RequestError::PreviousSnapshotRequired)
        );
        assert_eq!(
            run(&mut r, save(Some(999), 11)),
            Err(RequestError::SnapshotNotFound)
        );
        assert_eq!(
            run(&mut r, save(Some(10), 10)),
            Err(RequestError::SnapshotAlreadyExists)
        );
    }

    #[test]
    fn only_the_owner_may_save_snapshots() {
        let r = new_request();
        let mut cmd = save(None, 10);
        if let RequestCommand::SaveSnapshot { by, .. } = &mut cmd {
            *by = "mallory".into();
        }
        assert_eq!(r.decide(cmd), Err(RequestError::NotFound));
    }

    #[test]
    fn patching_a_query_keeps_the_previous_text_as_a_numbered_patch() {
        let mut r = new_request();
        run(&mut r, save(None, 10)).unwrap();
        let patch = |q: &str| RequestCommand::UpdateSnapshot {
            by: "alice".into(),
            snapshot_id: id(10),
            name: None,
            serialized_query: Some(q.into()),
            at: at(),
        };
        let q2 = r#"{"sourcePopulation":{"caresiteCohortList":["2"]}}"#;
        let q3 = r#"{"sourcePopulation":{"caresiteCohortList":["3"]}}"#;
        let first = run(&mut r, patch(q2)).unwrap();
        let second = run(&mut r, patch(q3)).unwrap();
        assert!(
            matches!(&first[..], [RequestEvent::QuerySnapshotPatched { patch_version: 1, previous_query, .. }] if previous_query == Q)
        );
        assert!(
            matches!(&second[..], [RequestEvent::QuerySnapshotPatched { patch_version: 2, previous_query, perimeters_ids, .. }] if previous_query == q2 && perimeters_ids == &vec!["3".to_string()])
        );
        assert!(
            run(&mut r, patch(q3)).unwrap().is_empty(),
            "same query: no patch"
        );
        assert!(matches!(
            run(&mut r, patch("{}")),
            Err(RequestError::InvalidQuery(_))
        ));
    }

    #[test]
    fn a_deleted_request_refuses_everything() {
        let mut r = new_request();
        run(
            &mut r,
            RequestCommand::Delete {
                by: "alice".into(),
                by_cascade: false,
                at: at(),
            },
        )
        .unwrap();
        assert_eq!(run(&mut r, save(None, 10)), Err(RequestError::NotFound));
    }

    #[test]
    fn every_event_round_trips_through_its_persisted_json() {
        // Events are a persisted contract: this pins the external tag and field names.
        let e = RequestEvent::QuerySnapshotSaved {
            snapshot_id: id(10),
            version: 1,
            previous_snapshot: None,
            serialized_query: Q.into(),
            perimeters_ids: vec!["1".into()],
            name: None,
            shared_by: None,
            at: at(),
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["QuerySnapshotSaved"]["version"], 1);
        assert_eq!(json["QuerySnapshotSaved"]["at"], "2026-01-02T03:04:05Z");
        let back: RequestEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.event_type(), "QuerySnapshotSaved");
    }
}
