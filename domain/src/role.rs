//! The Role aggregate: a named set of rights that accesses grant on perimeters.
//!
//! The aggregate id is the role's integer id. Name uniqueness spans roles, so the application
//! layer checks it against the read model before creating or renaming.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::rights::{InconsistentRights, Rights};
use crate::validation::{InvalidField, required_text};
use crate::{EVENT_VERSION_1, EVENT_VERSION_2};

/// Longest role name accepted.
pub const ROLE_NAME_MAX: usize = 255;

/// What may be asked of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleCommand {
    Create {
        role_id: i64,
        name: String,
        rights: Rights,
        at: DateTime<Utc>,
    },
    /// `rights` is the full merged set (stored values patched with the payload).
    Update {
        name: Option<String>,
        rights: Rights,
        at: DateTime<Utc>,
    },
    /// `has_accesses`: whether any access (even expired) uses the role.
    Delete {
        has_accesses: bool,
        at: DateTime<Utc>,
    },
}

/// What happened to a role. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleEvent {
    /// Version 2: `rights` is the list of granted right names (see [`crate::upcast`]).
    RoleCreated {
        role_id: i64,
        name: String,
        #[serde(with = "crate::rights::granted_names")]
        rights: Rights,
        at: DateTime<Utc>,
    },
    /// Version 2, as `RoleCreated`.
    RoleChanged {
        name: String,
        #[serde(with = "crate::rights::granted_names")]
        rights: Rights,
        at: DateTime<Utc>,
    },
    RoleDeleted {
        at: DateTime<Utc>,
    },
}

impl DomainEvent for RoleEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RoleCreated { .. } => "RoleCreated",
            Self::RoleChanged { .. } => "RoleChanged",
            Self::RoleDeleted { .. } => "RoleDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            Self::RoleCreated { .. } | Self::RoleChanged { .. } => EVENT_VERSION_2,
            Self::RoleDeleted { .. } => EVENT_VERSION_1,
        }
        .to_string()
    }
}

/// Why a role command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoleError {
    #[error("a role with this id already exists")]
    AlreadyExists,
    #[error("role not found")]
    NotFound,
    #[error(transparent)]
    Inconsistent(#[from] InconsistentRights),
    #[error("the full-admin role cannot be deleted")]
    FullAdminRoleIsPermanent,
    #[error("this role is used by accesses and cannot be deleted")]
    InUse,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// The state of a live role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    pub id: i64,
    pub name: String,
    pub rights: Rights,
    pub deleted: bool,
}

/// A role, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub state: Option<RoleState>,
}

impl Role {
    fn live(&self) -> Result<&RoleState, RoleError> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted)
            .ok_or(RoleError::NotFound)
    }

    /// Decides a command.
    pub fn decide(&self, command: RoleCommand) -> Result<Vec<RoleEvent>, RoleError> {
        match command {
            RoleCommand::Create {
                role_id,
                name,
                rights,
                at,
            } => {
                if self.state.is_some() {
                    return Err(RoleError::AlreadyExists);
                }
                required_text("name", &name, ROLE_NAME_MAX)?;
                rights.check_consistency()?;
                Ok(vec![RoleEvent::RoleCreated {
                    role_id,
                    name,
                    rights,
                    at,
                }])
            }
            RoleCommand::Update { name, rights, at } => {
                let current = self.live()?;
                let name = name.unwrap_or_else(|| current.name.clone());
                required_text("name", &name, ROLE_NAME_MAX)?;
                rights.check_consistency()?;
                if name == current.name && rights == current.rights {
                    return Ok(Vec::new());
                }
                Ok(vec![RoleEvent::RoleChanged { name, rights, at }])
            }
            RoleCommand::Delete { has_accesses, at } => {
                let current = self.live()?;
                if current.rights.right_full_admin {
                    return Err(RoleError::FullAdminRoleIsPermanent);
                }
                if has_accesses {
                    return Err(RoleError::InUse);
                }
                Ok(vec![RoleEvent::RoleDeleted { at }])
            }
        }
    }
}

impl Aggregate for Role {
    const TYPE: &'static str = "Role";
    type Command = RoleCommand;
    type Event = RoleEvent;
    type Error = RoleError;
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
            RoleEvent::RoleCreated {
                role_id,
                name,
                rights,
                ..
            } => {
                self.state = Some(RoleState {
                    id: role_id,
                    name,
                    rights,
                    deleted: false,
                });
            }
            RoleEvent::RoleChanged { name, rights, .. } => {
                if let Some(s) = &mut self.state {
                    s.name = name;
                    s.rights = rights;
                }
            }
            RoleEvent::RoleDeleted { .. } => {
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
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn created(rights: Rights) -> Role {
        let mut r = Role::default();
        for e in r
            .decide(RoleCommand::Create {
                role_id: 1,
                name: "Lecteur".into(),
                rights,
                at: at(),
            })
            .unwrap()
        {
            r.apply(e);
        }
        r
    }

    #[test]
    fn creation_and_updates_enforce_consistency() {
        let reader = Rights {
            right_read_patient_nominative: true,
            ..Rights::default()
        };
        let r = created(reader);
        let ipp_only = Rights {
            right_search_patients_by_ipp: true,
            ..Rights::default()
        };
        assert_eq!(
            r.decide(RoleCommand::Update {
                name: None,
                rights: ipp_only,
                at: at()
            }),
            Err(RoleError::Inconsistent(
                InconsistentRights::IppSearchNeedsNominativeReading
            ))
        );
        assert_eq!(
            r.decide(RoleCommand::Update {
                name: None,
                rights: reader,
                at: at()
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn the_full_admin_role_and_roles_in_use_cannot_be_deleted() {
        let del = |has_accesses| RoleCommand::Delete {
            has_accesses,
            at: at(),
        };
        assert_eq!(
            created(Rights::ALL).decide(del(false)),
            Err(RoleError::FullAdminRoleIsPermanent)
        );
        let r = created(Rights::default());
        assert_eq!(r.decide(del(true)), Err(RoleError::InUse));
        let mut r = r;
        for e in r.decide(del(false)).unwrap() {
            r.apply(e);
        }
        assert_eq!(r.decide(del(false)), Err(RoleError::NotFound));
    }
}
