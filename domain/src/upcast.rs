//! Schema evolution: stored events of an older version are rewritten, when read, into the shape
//! of the version this build writes. The log itself is never rewritten.
//!
//! Every reader of stored events goes through [`upcast`]: the aggregates (through the event
//! store's upcaster), the projectors and the audit API. The procedure for a new version is in
//! the README ("Schema evolution").
//!
//! Changes so far:
//! * `RoleCreated` and `RoleChanged` v1 → v2. Version 1 stored the rights as an object of 16
//!   booleans, so every right added to the catalogue changed the event's shape; version 2
//!   stores the list of granted right names. A version-1 full-admin role grants every right of
//!   today's catalogue (a full admin has every right by definition, including
//!   `right_read_audit`, which version 1 did not know).

use serde_json::{Map, Value};

use crate::rights::Rights;
use crate::{EVENT_VERSION_1, EVENT_VERSION_2};

/// Why a stored event cannot be brought to the current version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error("{event_type} version {version} is unknown to this build")]
    UnknownVersion { event_type: String, version: String },
    #[error("{event_type} version {version} has an unexpected shape: {reason}")]
    Malformed {
        event_type: String,
        version: String,
        reason: String,
    },
}

/// The version this build writes for `event_type`.
pub fn current_version(event_type: &str) -> &'static str {
    match event_type {
        "RoleCreated" | "RoleChanged" => EVENT_VERSION_2,
        _ => EVENT_VERSION_1,
    }
}

/// Brings a stored payload (`{"<EventType>": {…}}`) of `version` to [`current_version`].
pub fn upcast(event_type: &str, version: &str, payload: Value) -> Result<Value, UpcastError> {
    let current = current_version(event_type);
    if version == current {
        return Ok(payload);
    }
    match (event_type, version) {
        ("RoleCreated" | "RoleChanged", EVENT_VERSION_1) => {
            role_rights_v1_to_v2(event_type, payload)
        }
        _ => Err(UpcastError::UnknownVersion {
            event_type: event_type.to_string(),
            version: version.to_string(),
        }),
    }
}

/// `rights: {"right_x": bool, …}` → `rights: ["right_x", …]`.
fn role_rights_v1_to_v2(event_type: &str, mut payload: Value) -> Result<Value, UpcastError> {
    let malformed = |reason: String| UpcastError::Malformed {
        event_type: event_type.to_string(),
        version: EVENT_VERSION_1.to_string(),
        reason,
    };
    let body = payload
        .get_mut(event_type)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| malformed(format!("no `{event_type}` object")))?;
    let flags: Map<String, Value> = match body.remove("rights") {
        Some(Value::Object(flags)) => flags,
        _ => return Err(malformed("`rights` is not an object".into())),
    };
    let mut rights = Rights::default();
    for (name, value) in &flags {
        let on = value
            .as_bool()
            .ok_or_else(|| malformed(format!("`{name}` is not a boolean")))?;
        if !rights.set(name, on) {
            return Err(malformed(format!("unknown right `{name}`")));
        }
    }
    if rights.right_full_admin {
        rights = Rights::ALL;
    }
    let names: Vec<Value> = rights
        .granted()
        .into_iter()
        .map(|name| Value::String(name.to_string()))
        .collect();
    body.insert("rights".into(), Value::Array(names));
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::role::RoleEvent;

    fn v1_created(rights: Value) -> Value {
        json!({"RoleCreated": {
            "role_id": 7, "name": "Lecteur", "rights": rights, "at": "2025-03-01T10:00:00Z"
        }})
    }

    #[test]
    fn a_v1_role_decodes_with_the_same_rights_after_upcasting() {
        let stored = v1_created(json!({
            "right_full_admin": false,
            "right_read_patient_nominative": true,
            "right_search_patients_by_ipp": true,
            "right_manage_users": false
        }));
        let v2 = upcast("RoleCreated", "1", stored).unwrap();
        assert_eq!(
            v2["RoleCreated"]["rights"],
            json!([
                "right_read_patient_nominative",
                "right_search_patients_by_ipp"
            ])
        );
        let event: RoleEvent = serde_json::from_value(v2).unwrap();
        let RoleEvent::RoleCreated { rights, .. } = event else {
            panic!("wrong variant: {event:?}");
        };
        assert!(rights.right_read_patient_nominative && rights.right_search_patients_by_ipp);
        assert!(!rights.right_manage_users && !rights.right_read_audit);
    }

    #[test]
    fn a_v1_full_admin_role_gets_every_right_of_today_including_audit() {
        let mut flags = Map::new();
        for (name, _) in Rights::default().entries() {
            if name != "right_read_audit" {
                flags.insert(name.into(), Value::Bool(true));
            }
        }
        let v2 = upcast("RoleCreated", "1", v1_created(Value::Object(flags))).unwrap();
        let event: RoleEvent = serde_json::from_value(v2).unwrap();
        let RoleEvent::RoleCreated { rights, .. } = event else {
            panic!("wrong variant: {event:?}");
        };
        assert_eq!(rights, Rights::ALL);
        assert_eq!(rights.check_consistency(), Ok(()));
    }

    #[test]
    fn role_changed_is_upcast_too_and_current_versions_pass_through() {
        let stored = json!({"RoleChanged": {
            "name": "X", "rights": {"right_read_datalabs": true}, "at": "2025-03-01T10:00:00Z"
        }});
        let v2 = upcast("RoleChanged", "1", stored).unwrap();
        assert_eq!(v2["RoleChanged"]["rights"], json!(["right_read_datalabs"]));
        assert_eq!(upcast("RoleChanged", "2", v2.clone()), Ok(v2));
        let deleted = json!({"RoleDeleted": {"at": "2025-03-01T10:00:00Z"}});
        assert_eq!(upcast("RoleDeleted", "1", deleted.clone()), Ok(deleted));
    }

    #[test]
    fn unknown_versions_and_shapes_are_errors_not_guesses() {
        assert!(matches!(
            upcast("RoleCreated", "3", json!({})),
            Err(UpcastError::UnknownVersion { .. })
        ));
        assert!(matches!(
            upcast("FolderCreated", "2", json!({})),
            Err(UpcastError::UnknownVersion { .. })
        ));
        assert!(matches!(
            upcast("RoleCreated", "1", v1_created(json!({"right_fly": true}))),
            Err(UpcastError::Malformed { .. })
        ));
        assert!(matches!(
            upcast("RoleCreated", "1", v1_created(json!(["right_full_admin"]))),
            Err(UpcastError::Malformed { .. })
        ));
    }

    #[test]
    fn v2_role_events_serialize_rights_as_names() {
        let event = RoleEvent::RoleChanged {
            name: "R".into(),
            rights: Rights {
                right_read_audit: true,
                ..Rights::default()
            },
            at: "2025-03-01T10:00:00Z".parse().unwrap(),
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["RoleChanged"]["rights"], json!(["right_read_audit"]));
        assert_eq!(
            cqrs_es::DomainEvent::event_version(&event),
            current_version("RoleChanged")
        );
    }
}
