//! The User aggregate: identity fields, credentials and profiles of one person.
//!
//! The aggregate id is the username. The password is never seen here: the application layer
//! hashes it and hands over the hash (argon2id PHC string, or upstream's legacy unsalted SHA-256
//! hex for imported users). Published envelopes redact `password_hash` (see `infra::nats`).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;
use crate::validation::{InvalidField, email, person_names, username};

/// Source of a profile created with a user through the API.
pub const MANUAL_SOURCE: &str = "Manual";

/// What may be asked of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Creates the user and their Manual profile.
    Create {
        username: String,
        firstname: String,
        lastname: String,
        email: Option<String>,
        password_hash: Option<String>,
        profile_id: i64,
        at: DateTime<Utc>,
    },
    /// Changes the given identity fields.
    Update {
        firstname: Option<String>,
        lastname: Option<String>,
        email: Option<String>,
        at: DateTime<Utc>,
    },
    /// Replaces the stored password hash (password change, or re-hash of a legacy hash).
    SetPasswordHash { hash: String, at: DateTime<Utc> },
}

/// What happened to a user. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserEvent {
    UserCreated {
        username: String,
        firstname: String,
        lastname: String,
        email: Option<String>,
        at: DateTime<Utc>,
    },
    UserProfileAdded {
        profile_id: i64,
        source: String,
        at: DateTime<Utc>,
    },
    UserDetailsChanged {
        firstname: String,
        lastname: String,
        email: Option<String>,
        at: DateTime<Utc>,
    },
    /// A secret: redacted from published envelopes.
    UserPasswordHashSet {
        password_hash: String,
        at: DateTime<Utc>,
    },
    /// A login, as recorded until logins moved off the User aggregate (concurrent logins of one
    /// user raced on it): no longer emitted, still read from older logs. A login is now a
    /// `SessionOpened` of a fresh Session, which never conflicts.
    UserLoggedIn { method: String, at: DateTime<Utc> },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserCreated { .. } => "UserCreated",
            Self::UserProfileAdded { .. } => "UserProfileAdded",
            Self::UserDetailsChanged { .. } => "UserDetailsChanged",
            Self::UserPasswordHashSet { .. } => "UserPasswordHashSet",
            Self::UserLoggedIn { .. } => "UserLoggedIn",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a user command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UserError {
    #[error("a user with this username already exists")]
    AlreadyExists,
    #[error("user not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] InvalidField),
}

/// A profile of the user (one per source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: i64,
    pub source: String,
    pub is_active: bool,
}

/// The state of a created user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub profiles: Vec<Profile>,
    pub last_login: Option<DateTime<Utc>>,
}

/// A user, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub state: Option<UserState>,
}

impl User {
    fn existing(&self) -> Result<&UserState, UserError> {
        self.state.as_ref().ok_or(UserError::NotFound)
    }

    /// Decides a command.
    pub fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match command {
            UserCommand::Create {
                username: name,
                firstname,
                lastname,
                email: mail,
                password_hash,
                profile_id,
                at,
            } => {
                if self.state.is_some() {
                    return Err(UserError::AlreadyExists);
                }
                username("username", &name)?;
                person_names(&firstname, &lastname)?;
                if let Some(mail) = &mail {
                    email("email", mail)?;
                }
                let mut events = vec![
                    UserEvent::UserCreated {
                        username: name,
                        firstname,
                        lastname,
                        email: mail,
                        at,
                    },
                    UserEvent::UserProfileAdded {
                        profile_id,
                        source: MANUAL_SOURCE.to_string(),
                        at,
                    },
                ];
                if let Some(password_hash) = password_hash {
                    events.push(UserEvent::UserPasswordHashSet { password_hash, at });
                }
                Ok(events)
            }
            UserCommand::Update {
                firstname,
                lastname,
                email: mail,
                at,
            } => {
                let current = self.existing()?;
                let firstname = firstname.unwrap_or_else(|| current.firstname.clone());
                let lastname = lastname.unwrap_or_else(|| current.lastname.clone());
                let mail = mail.or_else(|| current.email.clone());
                person_names(&firstname, &lastname)?;
                if let Some(mail) = &mail {
                    email("email", mail)?;
                }
                if firstname == current.firstname
                    && lastname == current.lastname
                    && mail == current.email
                {
                    return Ok(Vec::new());
                }
                Ok(vec![UserEvent::UserDetailsChanged {
                    firstname,
                    lastname,
                    email: mail,
                    at,
                }])
            }
            UserCommand::SetPasswordHash { hash, at } => {
                self.existing()?;
                Ok(vec![UserEvent::UserPasswordHashSet {
                    password_hash: hash,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
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
            UserEvent::UserCreated {
                username,
                firstname,
                lastname,
                email,
                ..
            } => {
                self.state = Some(UserState {
                    username,
                    firstname,
                    lastname,
                    email,
                    password_hash: None,
                    profiles: Vec::new(),
                    last_login: None,
                });
            }
            UserEvent::UserProfileAdded {
                profile_id, source, ..
            } => {
                if let Some(s) = &mut self.state {
                    s.profiles.push(Profile {
                        id: profile_id,
                        source,
                        is_active: true,
                    });
                }
            }
            UserEvent::UserDetailsChanged {
                firstname,
                lastname,
                email,
                ..
            } => {
                if let Some(s) = &mut self.state {
                    s.firstname = firstname;
                    s.lastname = lastname;
                    s.email = email;
                }
            }
            UserEvent::UserPasswordHashSet { password_hash, .. } => {
                if let Some(s) = &mut self.state {
                    s.password_hash = Some(password_hash);
                }
            }
            UserEvent::UserLoggedIn { at, .. } => {
                if let Some(s) = &mut self.state {
                    s.last_login = Some(at);
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

    fn create(name: &str, first: &str, mail: Option<&str>) -> UserCommand {
        UserCommand::Create {
            username: name.into(),
            firstname: first.into(),
            lastname: "Dupont".into(),
            email: mail.map(Into::into),
            password_hash: Some("$argon2id$x".into()),
            profile_id: 7,
            at: at(),
        }
    }

    fn replay(events: Vec<UserEvent>) -> User {
        let mut u = User::default();
        for e in events {
            u.apply(e);
        }
        u
    }

    #[test]
    fn creation_validates_and_adds_a_manual_profile_and_the_hash() {
        let events = User::default()
            .decide(create("jdupont", "Jean", Some("jean@aphp.fr")))
            .unwrap();
        let u = replay(events);
        let s = u.state.as_ref().unwrap();
        assert_eq!(s.profiles[0].source, MANUAL_SOURCE);
        assert_eq!(s.password_hash.as_deref(), Some("$argon2id$x"));
        assert_eq!(
            u.decide(create("jdupont", "Jean", None)),
            Err(UserError::AlreadyExists)
        );
        for bad in [
            create("jean dupont", "Jean", None),
            create("jdupont", "J3an", None),
            create("jdupont", "Jean", Some("not-an-email")),
        ] {
            assert!(matches!(
                User::default().decide(bad),
                Err(UserError::Invalid(_))
            ));
        }
    }

    #[test]
    fn updates_merge_with_stored_values_and_no_change_emits_nothing() {
        let u = replay(
            User::default()
                .decide(create("jdupont", "Jean", None))
                .unwrap(),
        );
        let update = |first: Option<&str>| UserCommand::Update {
            firstname: first.map(Into::into),
            lastname: None,
            email: None,
            at: at(),
        };
        assert_eq!(u.decide(update(Some("Jean"))).unwrap(), Vec::new());
        let events = u.decide(update(Some("Léa"))).unwrap();
        assert!(matches!(
            &events[0],
            UserEvent::UserDetailsChanged { firstname, lastname, .. }
                if firstname == "Léa" && lastname == "Dupont"
        ));
        assert_eq!(
            User::default().decide(update(None)),
            Err(UserError::NotFound)
        );
    }
}
