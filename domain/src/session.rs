//! The Session aggregate: one login's family of rotating refresh tokens.
//!
//! A refresh token names its session and its generation. Refreshing presents the current
//! generation and moves to the next; presenting an older one means the token was stolen or
//! replayed, so the whole family is revoked (reuse detection). Logout revokes the family.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;

/// What may be asked of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// Opens the session at generation 0.
    Open {
        username: String,
        method: String,
        at: DateTime<Utc>,
    },
    /// Trades the refresh token of `generation` for the next one.
    Rotate { generation: u32, at: DateTime<Utc> },
    /// Ends the session (logout).
    Revoke { at: DateTime<Utc> },
}

/// What happened to a session. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    SessionOpened {
        username: String,
        method: String,
        at: DateTime<Utc>,
    },
    SessionRefreshed {
        generation: u32,
        at: DateTime<Utc>,
    },
    SessionLoggedOut {
        at: DateTime<Utc>,
    },
    /// An already-rotated refresh token was presented: the family is revoked.
    SessionReuseDetected {
        generation: u32,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SessionOpened { .. } => "SessionOpened",
            Self::SessionRefreshed { .. } => "SessionRefreshed",
            Self::SessionLoggedOut { .. } => "SessionLoggedOut",
            Self::SessionReuseDetected { .. } => "SessionReuseDetected",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why a session command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("a session with this id already exists")]
    AlreadyExists,
    #[error("unknown session")]
    NotFound,
    #[error("this session has ended")]
    Revoked,
}

/// The state of an open or ended session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub username: String,
    pub method: String,
    pub generation: u32,
    pub revoked: bool,
}

/// A session, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub state: Option<SessionState>,
}

impl Session {
    /// Decides a command.
    pub fn decide(&self, command: SessionCommand) -> Result<Vec<SessionEvent>, SessionError> {
        match command {
            SessionCommand::Open {
                username,
                method,
                at,
            } => {
                if self.state.is_some() {
                    return Err(SessionError::AlreadyExists);
                }
                Ok(vec![SessionEvent::SessionOpened {
                    username,
                    method,
                    at,
                }])
            }
            SessionCommand::Rotate { generation, at } => {
                let s = self.state.as_ref().ok_or(SessionError::NotFound)?;
                if s.revoked {
                    return Err(SessionError::Revoked);
                }
                if generation == s.generation {
                    Ok(vec![SessionEvent::SessionRefreshed {
                        generation: s.generation + 1,
                        at,
                    }])
                } else {
                    Ok(vec![SessionEvent::SessionReuseDetected { generation, at }])
                }
            }
            SessionCommand::Revoke { at } => {
                let s = self.state.as_ref().ok_or(SessionError::NotFound)?;
                if s.revoked {
                    return Ok(Vec::new());
                }
                Ok(vec![SessionEvent::SessionLoggedOut { at }])
            }
        }
    }
}

impl Aggregate for Session {
    const TYPE: &'static str = "Session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
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
            SessionEvent::SessionOpened {
                username, method, ..
            } => {
                self.state = Some(SessionState {
                    username,
                    method,
                    generation: 0,
                    revoked: false,
                });
            }
            SessionEvent::SessionRefreshed { generation, .. } => {
                if let Some(s) = &mut self.state {
                    s.generation = generation;
                }
            }
            SessionEvent::SessionLoggedOut { .. } | SessionEvent::SessionReuseDetected { .. } => {
                if let Some(s) = &mut self.state {
                    s.revoked = true;
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

    fn run(s: &mut Session, c: SessionCommand) -> Result<Vec<SessionEvent>, SessionError> {
        let events = s.decide(c)?;
        for e in events.clone() {
            s.apply(e);
        }
        Ok(events)
    }

    #[test]
    fn rotation_moves_forward_and_a_replayed_token_revokes_the_family() {
        let mut s = Session::default();
        run(
            &mut s,
            SessionCommand::Open {
                username: "u".into(),
                method: "JWT".into(),
                at: at(),
            },
        )
        .unwrap();
        let rotate = |g| SessionCommand::Rotate {
            generation: g,
            at: at(),
        };
        run(&mut s, rotate(0)).unwrap();
        assert_eq!(
            s.state.as_ref().map(|s| (s.generation, s.revoked)),
            Some((1, false))
        );
        let e = run(&mut s, rotate(0)).unwrap();
        assert!(matches!(e[0], SessionEvent::SessionReuseDetected { .. }));
        assert!(s.state.as_ref().unwrap().revoked);
        // Even the current token is dead now.
        assert_eq!(run(&mut s, rotate(1)), Err(SessionError::Revoked));
    }

    #[test]
    fn logout_revokes_once_and_unknown_sessions_are_refused() {
        let mut s = Session::default();
        assert_eq!(
            run(&mut s, SessionCommand::Revoke { at: at() }),
            Err(SessionError::NotFound)
        );
        run(
            &mut s,
            SessionCommand::Open {
                username: "u".into(),
                method: "JWT".into(),
                at: at(),
            },
        )
        .unwrap();
        assert_eq!(
            run(&mut s, SessionCommand::Revoke { at: at() })
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            run(&mut s, SessionCommand::Revoke { at: at() }).unwrap(),
            vec![]
        );
        assert_eq!(
            run(
                &mut s,
                SessionCommand::Rotate {
                    generation: 0,
                    at: at()
                }
            ),
            Err(SessionError::Revoked)
        );
    }
}
