//! Who could read what, on a past date: the answer to an auditor's "who could read perimeter P
//! on date D, and through which grant", computed from the states of accesses, roles and
//! perimeters as the event log knew them at D (the caller folds the events up to D).
//!
//! An access is in force at D when it was not withdrawn before its start and
//! `start <= D < end` (closing an access moves its end). Reading rights reach the perimeter of
//! the grant and every perimeter under it, as they do today ([`crate::authz`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::AccessState;
use crate::rights::Rights;

/// An access as known at D, with who granted it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub access: AccessState,
    pub granted_by: Option<String>,
    pub granted_at: DateTime<Utc>,
}

/// A role as known at D.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAt {
    pub name: String,
    pub rights: Rights,
}

/// A perimeter as known at D.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerimeterAt {
    pub name: String,
    pub parent_id: Option<i64>,
    pub removed: bool,
}

/// One grant in force at D, with what it allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantInForce {
    pub username: String,
    pub access_id: i64,
    pub role_id: i64,
    pub role_name: Option<String>,
    /// The perimeter the access was granted on.
    pub perimeter_id: i64,
    pub perimeter_name: Option<String>,
    pub start_datetime: DateTime<Utc>,
    pub end_datetime: DateTime<Utc>,
    pub granted_by: Option<String>,
    pub granted_at: DateTime<Utc>,
    /// The role's granted rights at D.
    pub rights: Vec<&'static str>,
}

/// Someone who could read a perimeter's patients at D, and the grant that allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reader {
    /// `nominative` or `pseudonymized`.
    pub reading: &'static str,
    /// Whether the grant is on an ancestor of the perimeter (inherited) or on it.
    pub inherited: bool,
    #[serde(flatten)]
    pub grant: GrantInForce,
}

/// The world as the log knew it at D.
#[derive(Debug, Clone, Default)]
pub struct KnownAt {
    pub accesses: Vec<GrantRecord>,
    pub roles: BTreeMap<i64, RoleAt>,
    pub perimeters: BTreeMap<i64, PerimeterAt>,
}

impl KnownAt {
    fn in_force(&self, at: DateTime<Utc>) -> impl Iterator<Item = (&GrantRecord, Rights)> {
        self.accesses
            .iter()
            .filter(move |g| !g.access.deleted && g.access.start <= at && at < g.access.end)
            .map(|g| {
                let rights = self
                    .roles
                    .get(&g.access.role_id)
                    .map(|r| r.rights)
                    .unwrap_or_default();
                (g, rights)
            })
    }

    fn describe(&self, g: &GrantRecord, rights: Rights) -> GrantInForce {
        GrantInForce {
            username: g.access.username.clone(),
            access_id: g.access.id,
            role_id: g.access.role_id,
            role_name: self.roles.get(&g.access.role_id).map(|r| r.name.clone()),
            perimeter_id: g.access.perimeter_id,
            perimeter_name: self
                .perimeters
                .get(&g.access.perimeter_id)
                .map(|p| p.name.clone()),
            start_datetime: g.access.start,
            end_datetime: g.access.end,
            granted_by: g.granted_by.clone(),
            granted_at: g.granted_at,
            rights: rights.granted(),
        }
    }

    /// `perimeter` and its ancestors at D, nearest first (stops on a cycle or a missing parent).
    fn lineage(&self, perimeter: i64) -> Vec<i64> {
        let mut chain = vec![perimeter];
        let mut current = perimeter;
        while let Some(parent) = self.perimeters.get(&current).and_then(|p| p.parent_id) {
            if chain.contains(&parent) {
                break;
            }
            chain.push(parent);
            current = parent;
        }
        chain
    }

    /// Whether the perimeter existed (and was still in the tree) at D.
    pub fn perimeter_exists(&self, perimeter: i64) -> bool {
        self.perimeters.get(&perimeter).is_some_and(|p| !p.removed)
    }

    /// Every grant in force at D, for one user or for everyone, sorted by access id.
    pub fn grants_in_force(&self, at: DateTime<Utc>, username: Option<&str>) -> Vec<GrantInForce> {
        let mut grants: Vec<GrantInForce> = self
            .in_force(at)
            .filter(|(g, _)| username.is_none_or(|u| g.access.username == u))
            .map(|(g, rights)| self.describe(g, rights))
            .collect();
        grants.sort_by_key(|g| g.access_id);
        grants
    }

    /// Who could read `perimeter`'s patients at D, and through which grant; empty if the
    /// perimeter was not in the tree at D.
    pub fn readers_of(&self, perimeter: i64, at: DateTime<Utc>) -> Vec<Reader> {
        if !self.perimeter_exists(perimeter) {
            return Vec::new();
        }
        let lineage = self.lineage(perimeter);
        let mut readers: Vec<Reader> = self
            .in_force(at)
            .filter(|(g, rights)| {
                rights.reads_patient_data() && lineage.contains(&g.access.perimeter_id)
            })
            .map(|(g, rights)| Reader {
                reading: if rights.right_read_patient_nominative {
                    "nominative"
                } else {
                    "pseudonymized"
                },
                inherited: g.access.perimeter_id != perimeter,
                grant: self.describe(g, rights),
            })
            .collect();
        readers.sort_by(|a, b| {
            (&a.grant.username, a.grant.access_id).cmp(&(&b.grant.username, b.grant.access_id))
        });
        readers
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, d, 12, 0, 0).unwrap()
    }

    fn access(id: i64, user: &str, role: i64, perimeter: i64, from: u32, to: u32) -> GrantRecord {
        GrantRecord {
            access: AccessState {
                id,
                profile_id: 1,
                username: user.into(),
                role_id: role,
                perimeter_id: perimeter,
                start: day(from),
                end: day(to),
                deleted: false,
                alerts: Vec::new(),
            },
            granted_by: Some("admin".into()),
            granted_at: day(1),
        }
    }

    fn world() -> KnownAt {
        let perimeter = |name: &str, parent| PerimeterAt {
            name: name.into(),
            parent_id: parent,
            removed: false,
        };
        let nominative = Rights {
            right_read_patient_nominative: true,
            ..Rights::default()
        };
        let pseudo = Rights {
            right_read_patient_pseudonymized: true,
            ..Rights::default()
        };
        let users = Rights {
            right_manage_users: true,
            ..Rights::default()
        };
        KnownAt {
            accesses: vec![
                access(1, "alice", 10, 1, 2, 20),
                access(2, "bob", 11, 2, 5, 10),
                access(3, "carol", 12, 2, 2, 20),
                access(4, "dave", 10, 3, 2, 20),
            ],
            roles: BTreeMap::from([
                (
                    10,
                    RoleAt {
                        name: "Nominatif".into(),
                        rights: nominative,
                    },
                ),
                (
                    11,
                    RoleAt {
                        name: "Pseudo".into(),
                        rights: pseudo,
                    },
                ),
                (
                    12,
                    RoleAt {
                        name: "Gestion".into(),
                        rights: users,
                    },
                ),
            ]),
            perimeters: BTreeMap::from([
                (1, perimeter("APHP", None)),
                (2, perimeter("P0", Some(1))),
                (3, perimeter("P1", Some(1))),
            ]),
        }
    }

    #[test]
    fn readers_come_from_the_perimeter_and_its_ancestors_with_reading_rights_in_force() {
        let w = world();
        let readers = w.readers_of(2, day(6));
        let who: Vec<(&str, &str, bool)> = readers
            .iter()
            .map(|r| (r.grant.username.as_str(), r.reading, r.inherited))
            .collect();
        // carol manages users only; dave reads a sibling perimeter.
        assert_eq!(
            who,
            vec![
                ("alice", "nominative", true),
                ("bob", "pseudonymized", false)
            ]
        );
        assert_eq!(readers[0].grant.role_name.as_deref(), Some("Nominatif"));
        assert_eq!(readers[1].grant.perimeter_name.as_deref(), Some("P0"));
    }

    #[test]
    fn validity_dates_removed_perimeters_and_withdrawn_accesses_count() {
        let mut w = world();
        // bob's access ended on the 10th.
        assert_eq!(w.readers_of(2, day(10)).len(), 1);
        w.accesses[0].access.deleted = true;
        assert!(
            w.readers_of(2, day(6))
                .iter()
                .all(|r| r.grant.username != "alice")
        );
        w.perimeters.get_mut(&2).unwrap().removed = true;
        assert!(w.readers_of(2, day(6)).is_empty());
        assert!(!w.perimeter_exists(99));
    }

    #[test]
    fn a_users_grants_in_force_list_their_rights() {
        let w = world();
        let grants = w.grants_in_force(day(6), Some("carol"));
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].rights, vec!["right_manage_users"]);
        assert_eq!(w.grants_in_force(day(3), None).len(), 3);
    }
}
