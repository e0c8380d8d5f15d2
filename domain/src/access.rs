//! The Access aggregate: one grant of a role on a perimeter to a profile, for a period.
//!
//! Who may grant or change an access is decided by the application layer with
//! [`crate::authz::Authority`] before the command reaches the aggregate; the aggregate holds the
//! date rules. `at` is "now" for every rule.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::EVENT_VERSION_1;

/// How far in the past a new date may lie (clock skew between client and server).
pub const PAST_TOLERANCE_SECONDS: i64 = 10;

/// What may be asked of an access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessCommand {
    Grant {
        access_id: i64,
        profile_id: i64,
        username: String,
        role_id: i64,
        perimeter_id: i64,
        source: String,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        default_validity_days: i64,
        at: DateTime<Utc>,
    },
    ChangeDates {
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// Ends the access now.
    Close { at: DateTime<Utc> },
    /// Withdraws an access that has not started yet.
    Delete { at: DateTime<Utc> },
    /// Ends the access because its perimeter left the tree (no date rule applies).
    CloseForRemovedPerimeter { at: DateTime<Utc> },
    /// Claims the expiry alert sent `days_before` the end, on `alert_date` (once only).
    RecordExpiryAlert {
        alert_date: NaiveDate,
        days_before: i64,
        at: DateTime<Utc>,
    },
}

/// What happened to an access. Persisted contract, version [`EVENT_VERSION_1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessEvent {
    AccessGranted {
        access_id: i64,
        profile_id: i64,
        username: String,
        role_id: i64,
        perimeter_id: i64,
        source: String,
        start_datetime: DateTime<Utc>,
        end_datetime: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    AccessDatesChanged {
        start_datetime: DateTime<Utc>,
        end_datetime: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    AccessClosed {
        /// `manual` (a manager closed it) or `perimeter_removed`.
        reason: String,
        at: DateTime<Utc>,
    },
    AccessRevokedBeforeStart {
        at: DateTime<Utc>,
    },
    /// The holder is being warned that the access ends in `days_before` days.
    AccessExpiryAlertRecorded {
        alert_date: NaiveDate,
        days_before: i64,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AccessEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AccessGranted { .. } => "AccessGranted",
            Self::AccessDatesChanged { .. } => "AccessDatesChanged",
            Self::AccessClosed { .. } => "AccessClosed",
            Self::AccessRevokedBeforeStart { .. } => "AccessRevokedBeforeStart",
            Self::AccessExpiryAlertRecorded { .. } => "AccessExpiryAlertRecorded",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

/// Why an access command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccessError {
    #[error("an access with this id already exists")]
    AlreadyExists,
    #[error("access not found")]
    NotFound,
    #[error("{field} cannot be in the past")]
    DateInPast { field: &'static str },
    #[error("end_datetime must not be before start_datetime")]
    EndBeforeStart,
    #[error("{field} is already in the past and cannot be changed")]
    PastDateFrozen { field: &'static str },
    #[error("give start_datetime and/or end_datetime")]
    NothingToChange,
    #[error("the access has already ended")]
    AlreadyEnded,
    #[error("the access has not started yet; delete it instead")]
    NotStarted,
    #[error("the access has already started; close it instead")]
    AlreadyStarted,
    #[error("this expiry alert was already sent")]
    AlreadyAlerted,
}

/// The state of a granted access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessState {
    pub id: i64,
    pub profile_id: i64,
    pub username: String,
    pub role_id: i64,
    pub perimeter_id: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub deleted: bool,
    /// Expiry alerts already claimed: `(alert date, days before the end)`.
    #[serde(default)]
    pub alerts: Vec<(NaiveDate, i64)>,
}

/// An access, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub state: Option<AccessState>,
}

fn not_in_past(
    field: &'static str,
    value: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), AccessError> {
    if value < now - Duration::seconds(PAST_TOLERANCE_SECONDS) {
        Err(AccessError::DateInPast { field })
    } else {
        Ok(())
    }
}

impl Access {
    fn live(&self) -> Result<&AccessState, AccessError> {
        self.state
            .as_ref()
            .filter(|s| !s.deleted)
            .ok_or(AccessError::NotFound)
    }

    /// Decides a command.
    pub fn decide(&self, command: AccessCommand) -> Result<Vec<AccessEvent>, AccessError> {
        match command {
            AccessCommand::Grant {
                access_id,
                profile_id,
                username,
                role_id,
                perimeter_id,
                source,
                start,
                end,
                default_validity_days,
                at,
            } => {
                if self.state.is_some() {
                    return Err(AccessError::AlreadyExists);
                }
                let start = start.unwrap_or(at);
                let end = end.unwrap_or(start + Duration::days(default_validity_days));
                not_in_past("start_datetime", start, at)?;
                not_in_past("end_datetime", end, at)?;
                if end < start {
                    return Err(AccessError::EndBeforeStart);
                }
                Ok(vec![AccessEvent::AccessGranted {
                    access_id,
                    profile_id,
                    username,
                    role_id,
                    perimeter_id,
                    source,
                    start_datetime: start,
                    end_datetime: end,
                    at,
                }])
            }
            AccessCommand::ChangeDates { start, end, at } => {
                let s = self.live()?;
                if start.is_none() && end.is_none() {
                    return Err(AccessError::NothingToChange);
                }
                if let Some(new_start) = start {
                    if s.start < at && new_start != s.start {
                        return Err(AccessError::PastDateFrozen {
                            field: "start_datetime",
                        });
                    }
                    not_in_past("start_datetime", new_start, at)?;
                }
                if let Some(new_end) = end {
                    if s.end < at && new_end != s.end {
                        return Err(AccessError::PastDateFrozen {
                            field: "end_datetime",
                        });
                    }
                    not_in_past("end_datetime", new_end, at)?;
                }
                let start_datetime = start.unwrap_or(s.start);
                let end_datetime = end.unwrap_or(s.end);
                if end_datetime < start_datetime {
                    return Err(AccessError::EndBeforeStart);
                }
                if start_datetime == s.start && end_datetime == s.end {
                    return Ok(Vec::new());
                }
                Ok(vec![AccessEvent::AccessDatesChanged {
                    start_datetime,
                    end_datetime,
                    at,
                }])
            }
            AccessCommand::Close { at } => {
                let s = self.live()?;
                if s.end <= at {
                    return Err(AccessError::AlreadyEnded);
                }
                if s.start > at {
                    return Err(AccessError::NotStarted);
                }
                Ok(vec![AccessEvent::AccessClosed {
                    reason: "manual".into(),
                    at,
                }])
            }
            AccessCommand::Delete { at } => {
                let s = self.live()?;
                if s.start <= at {
                    return Err(AccessError::AlreadyStarted);
                }
                Ok(vec![AccessEvent::AccessRevokedBeforeStart { at }])
            }
            AccessCommand::RecordExpiryAlert {
                alert_date,
                days_before,
                at,
            } => {
                let s = self.live()?;
                if s.alerts.contains(&(alert_date, days_before)) {
                    return Err(AccessError::AlreadyAlerted);
                }
                Ok(vec![AccessEvent::AccessExpiryAlertRecorded {
                    alert_date,
                    days_before,
                    at,
                }])
            }
            AccessCommand::CloseForRemovedPerimeter { at } => {
                let s = self.live()?;
                if s.end <= at {
                    return Ok(Vec::new());
                }
                if s.start > at {
                    return Ok(vec![AccessEvent::AccessRevokedBeforeStart { at }]);
                }
                Ok(vec![AccessEvent::AccessClosed {
                    reason: "perimeter_removed".into(),
                    at,
                }])
            }
        }
    }
}

impl Aggregate for Access {
    const TYPE: &'static str = "Access";
    type Command = AccessCommand;
    type Event = AccessEvent;
    type Error = AccessError;
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
            AccessEvent::AccessGranted {
                access_id,
                profile_id,
                username,
                role_id,
                perimeter_id,
                start_datetime,
                end_datetime,
                ..
            } => {
                self.state = Some(AccessState {
                    id: access_id,
                    profile_id,
                    username,
                    role_id,
                    perimeter_id,
                    start: start_datetime,
                    end: end_datetime,
                    deleted: false,
                    alerts: Vec::new(),
                });
            }
            AccessEvent::AccessDatesChanged {
                start_datetime,
                end_datetime,
                ..
            } => {
                if let Some(s) = &mut self.state {
                    s.start = start_datetime;
                    s.end = end_datetime;
                }
            }
            AccessEvent::AccessClosed { at, .. } => {
                if let Some(s) = &mut self.state {
                    s.end = at;
                }
            }
            AccessEvent::AccessRevokedBeforeStart { .. } => {
                if let Some(s) = &mut self.state {
                    s.deleted = true;
                }
            }
            AccessEvent::AccessExpiryAlertRecorded {
                alert_date,
                days_before,
                ..
            } => {
                if let Some(s) = &mut self.state {
                    s.alerts.push((alert_date, days_before));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
    }

    fn days(n: i64) -> DateTime<Utc> {
        now() + Duration::days(n)
    }

    fn grant(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> AccessCommand {
        AccessCommand::Grant {
            access_id: 1,
            profile_id: 2,
            username: "u".into(),
            role_id: 3,
            perimeter_id: 4,
            source: "Manual".into(),
            start,
            end,
            default_validity_days: 365,
            at: now(),
        }
    }

    fn granted(start: DateTime<Utc>, end: DateTime<Utc>) -> Access {
        // Granted in the past: replay the event directly.
        let mut a = Access::default();
        a.apply(AccessEvent::AccessGranted {
            access_id: 1,
            profile_id: 2,
            username: "u".into(),
            role_id: 3,
            perimeter_id: 4,
            source: "Manual".into(),
            start_datetime: start,
            end_datetime: end,
            at: start,
        });
        a
    }

    #[test]
    fn grant_date_rules() {
        struct Case {
            name: &'static str,
            start: Option<DateTime<Utc>>,
            end: Option<DateTime<Utc>>,
            expect: Result<(DateTime<Utc>, DateTime<Utc>), AccessError>,
        }
        let cases = [
            Case {
                name: "defaults: now to now + 365 days",
                start: None,
                end: None,
                expect: Ok((now(), days(365))),
            },
            Case {
                name: "end defaults from the given start",
                start: Some(days(10)),
                end: None,
                expect: Ok((days(10), days(375))),
            },
            Case {
                name: "5 s in the past is tolerated",
                start: Some(now() - Duration::seconds(5)),
                end: Some(days(1)),
                expect: Ok((now() - Duration::seconds(5), days(1))),
            },
            Case {
                name: "start 1 minute in the past",
                start: Some(now() - Duration::minutes(1)),
                end: Some(days(1)),
                expect: Err(AccessError::DateInPast {
                    field: "start_datetime",
                }),
            },
            Case {
                name: "end before start",
                start: Some(days(5)),
                end: Some(days(4)),
                expect: Err(AccessError::EndBeforeStart),
            },
        ];
        for case in cases {
            let got = Access::default()
                .decide(grant(case.start, case.end))
                .map(|events| match &events[0] {
                    AccessEvent::AccessGranted {
                        start_datetime,
                        end_datetime,
                        ..
                    } => (*start_datetime, *end_datetime),
                    other => panic!("unexpected {other:?}"),
                });
            assert_eq!(got, case.expect, "{}", case.name);
        }
    }

    #[test]
    fn an_expiry_alert_is_claimed_once() {
        let mut a = granted(days(-10), days(30));
        let claim = || AccessCommand::RecordExpiryAlert {
            alert_date: now().date_naive(),
            days_before: 30,
            at: now(),
        };
        for e in a.decide(claim()).unwrap() {
            a.apply(e);
        }
        assert_eq!(a.decide(claim()), Err(AccessError::AlreadyAlerted));
    }

    #[test]
    fn date_change_close_and_delete_rules() {
        let started = granted(days(-10), days(10));
        let future = granted(days(5), days(10));
        let ended = granted(days(-10), days(-1));
        let change = |start, end| AccessCommand::ChangeDates {
            start,
            end,
            at: now(),
        };
        let cases: Vec<(&str, &Access, AccessCommand, Result<usize, AccessError>)> = vec![
            (
                "empty change",
                &started,
                change(None, None),
                Err(AccessError::NothingToChange),
            ),
            (
                "started access: start frozen",
                &started,
                change(Some(days(1)), None),
                Err(AccessError::PastDateFrozen {
                    field: "start_datetime",
                }),
            ),
            (
                "started access: end extended",
                &started,
                change(None, Some(days(20))),
                Ok(1),
            ),
            (
                "new end in the past",
                &started,
                change(None, Some(days(-2))),
                Err(AccessError::DateInPast {
                    field: "end_datetime",
                }),
            ),
            (
                "future access: end before stored start",
                &future,
                change(None, Some(days(4))),
                Err(AccessError::EndBeforeStart),
            ),
            (
                "future access: both moved",
                &future,
                change(Some(days(6)), Some(days(7))),
                Ok(1),
            ),
            (
                "ended access: end frozen",
                &ended,
                change(None, Some(days(3))),
                Err(AccessError::PastDateFrozen {
                    field: "end_datetime",
                }),
            ),
            (
                "close a started access",
                &started,
                AccessCommand::Close { at: now() },
                Ok(1),
            ),
            (
                "close an ended access",
                &ended,
                AccessCommand::Close { at: now() },
                Err(AccessError::AlreadyEnded),
            ),
            (
                "close a future access",
                &future,
                AccessCommand::Close { at: now() },
                Err(AccessError::NotStarted),
            ),
            (
                "delete a future access",
                &future,
                AccessCommand::Delete { at: now() },
                Ok(1),
            ),
            (
                "delete a started access",
                &started,
                AccessCommand::Delete { at: now() },
                Err(AccessError::AlreadyStarted),
            ),
            (
                "first expiry alert of the day",
                &started,
                AccessCommand::RecordExpiryAlert {
                    alert_date: now().date_naive(),
                    days_before: 30,
                    at: now(),
                },
                Ok(1),
            ),
            (
                "perimeter removal on an ended access changes nothing",
                &ended,
                AccessCommand::CloseForRemovedPerimeter { at: now() },
                Ok(0),
            ),
        ];
        for (name, access, command, expect) in cases {
            assert_eq!(
                access.decide(command).map(|e| e.len()),
                expect,
                "case: {name}"
            );
        }
    }
}
