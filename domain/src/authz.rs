//! What a caller may do, evaluated from their valid accesses.
//!
//! Each valid access of the caller becomes a [`Grant`]: the rights of its role on a perimeter,
//! together with that perimeter's ancestors. Filtering accesses by validity (dates, active
//! profile) is the caller's job; everything here is a pure function of the grants and of the
//! perimeters handed in.
//!
//! Two deliberate differences from upstream, both about callers with nothing to manage:
//! * [`Authority::can_manage`]: a caller with no applicable managing grant manages nothing, not
//!   even a role without any right (upstream lets anyone manage such a role);
//! * [`Authority::manageable`]: a caller without any grant manages no perimeter (upstream returns
//!   every root, because "all of no accesses carry only global rights" is vacuously true).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rights::{GrantorLevel, Rights};

/// One valid access of the caller: a role's rights on a perimeter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub perimeter_id: i64,
    /// Ancestors of that perimeter, root first (excluding itself).
    pub perimeter_ancestors: Vec<i64>,
    pub rights: Rights,
}

impl Grant {
    /// The perimeter of the grant.
    pub fn perimeter(&self) -> PerimeterRef<'_> {
        PerimeterRef {
            id: self.perimeter_id,
            ancestors: &self.perimeter_ancestors,
        }
    }
}

/// A perimeter seen by the evaluation: its id and its ancestors (root first, excluding itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerimeterRef<'a> {
    pub id: i64,
    pub ancestors: &'a [i64],
}

impl PerimeterRef<'_> {
    /// Whether `perimeter_id` is this perimeter or one of its ancestors, i.e. whether a right
    /// inherited from `perimeter_id` reaches this perimeter.
    pub fn is_at_or_under(&self, perimeter_id: i64) -> bool {
        self.id == perimeter_id || self.ancestors.contains(&perimeter_id)
    }
}

/// The perimeters on which a caller may manage accesses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manageable {
    /// Every root of the tree.
    Roots,
    /// These perimeters, plus the direct children of `children_of` (both sorted, no duplicate).
    Perimeters {
        tops: Vec<i64>,
        children_of: Vec<i64>,
    },
}

/// The patient-data rights a caller holds on one perimeter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRights {
    pub perimeter_id: i64,
    pub right_read_patient_nominative: bool,
    pub right_read_patient_pseudonymized: bool,
    pub right_search_patients_by_ipp: bool,
    pub right_search_opposed_patients: bool,
    pub right_export_csv_xlsx_nominative: bool,
    pub right_export_jupyter_nominative: bool,
    pub right_export_jupyter_pseudonymized: bool,
}

impl DataRights {
    /// Whether patient data of the perimeter may be read at all (nominative or pseudonymized).
    pub fn reads(&self) -> bool {
        self.right_read_patient_nominative || self.right_read_patient_pseudonymized
    }
}

/// How several target perimeters combine in a read check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Every target must be readable; nominative only if every target is.
    Min,
    /// One readable target suffices; nominative if any target is.
    Max,
}

/// A read mode other than `min` or `max`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown read mode {0:?}: expected \"min\" or \"max\"")]
pub struct UnknownReadMode(pub String);

impl FromStr for ReadMode {
    type Err = UnknownReadMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "min" => Ok(ReadMode::Min),
            "max" => Ok(ReadMode::Max),
            other => Err(UnknownReadMode(other.to_string())),
        }
    }
}

/// What a caller may read of the patient data of a set of perimeters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPermission {
    pub allow_read_patient_data_nomi: bool,
    pub allow_lookup_opposed_patients: bool,
    pub allow_read_patient_without_perimeter_limit: bool,
    pub allow_read_practitioner: bool,
}

/// The caller's valid grants, and every decision derived from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authority {
    grants: Vec<Grant>,
}

/// Full admin, user management or datalab management: rights that do not depend on a perimeter.
fn has_global_management_right(rights: &Rights) -> bool {
    rights.right_full_admin || rights.right_manage_users || rights.right_manage_datalabs
}

/// Either same-level managing right.
fn manages_same_level(rights: &Rights) -> bool {
    rights.right_manage_data_accesses_same_level || rights.right_manage_admin_accesses_same_level
}

fn sorted_unique(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Authority {
    pub fn new(grants: Vec<Grant>) -> Self {
        Authority { grants }
    }

    /// The grants the authority was built from.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Any grant's role has `right_full_admin`, whatever its perimeter.
    pub fn is_full_admin(&self) -> bool {
        self.grants.iter().any(|g| g.rights.right_full_admin)
    }

    /// Union of the rights of every grant, perimeters ignored (for checks of global rights).
    pub fn global(&self) -> Rights {
        self.grants
            .iter()
            .fold(Rights::default(), |all, g| all.union(g.rights))
    }

    /// Full admin, or holds any of the four level-dependent access-management rights.
    pub fn may_list_accesses(&self) -> bool {
        self.is_full_admin()
            || self
                .grants
                .iter()
                .any(|g| g.rights.manages_accesses_at_some_level())
    }

    /// Whether the caller may create, edit or close an access giving `role` on `target`.
    ///
    /// A full admin may manage any access; nobody else may manage a role that needs a full admin.
    /// Otherwise the applicable grants are those on `target` carrying a same-level managing right
    /// and those on an ancestor of `target` carrying an inferior-levels managing right. They give
    /// admin management (`right_manage_admin_accesses_*` of the matching level) and data
    /// management (`right_manage_data_accesses_*` of the matching level, or admin management).
    /// The role is manageable when the caller has each kind of management the role's
    /// [`Rights::grantor_level`] requires.
    ///
    /// Unlike upstream, a caller without any applicable grant manages nothing, not even a role
    /// without any right.
    pub fn can_manage(&self, target: PerimeterRef<'_>, role: &Rights) -> bool {
        if self.is_full_admin() {
            return true;
        }
        let level = role.grantor_level();
        if level == GrantorLevel::FullAdmin {
            return false;
        }
        let mut applicable = false;
        let mut admin = false;
        let mut data = false;
        for grant in &self.grants {
            let r = &grant.rights;
            let (grant_admin, grant_data) = if grant.perimeter_id == target.id {
                (
                    r.right_manage_admin_accesses_same_level,
                    r.right_manage_data_accesses_same_level,
                )
            } else if target.ancestors.contains(&grant.perimeter_id) {
                (
                    r.right_manage_admin_accesses_inferior_levels,
                    r.right_manage_data_accesses_inferior_levels,
                )
            } else {
                continue;
            };
            if grant_admin || grant_data {
                applicable = true;
                admin |= grant_admin;
                data |= grant_admin || grant_data;
            }
        }
        applicable
            && (admin || level < GrantorLevel::AdminManager)
            && (data || level < GrantorLevel::DataManager)
    }

    /// The highest perimeters on which the caller may manage accesses.
    ///
    /// A full admin, or a caller whose every grant carries a global management right (full admin,
    /// user or datalab management) and no level-dependent one, gets every root. Otherwise only
    /// grants with a level-dependent managing right count: the perimeter of such a grant is a top
    /// when none of its ancestors holds such a grant. A top with a same-level managing right is
    /// manageable itself (`tops`); a top with inferior-levels managing rights only gives its
    /// direct children (`children_of`).
    ///
    /// Unlike upstream, a caller without any grant gets no perimeter rather than every root.
    pub fn manageable(&self) -> Manageable {
        if self.grants.is_empty() {
            return Manageable::Perimeters {
                tops: Vec::new(),
                children_of: Vec::new(),
            };
        }
        let only_global = self.grants.iter().all(|g| {
            has_global_management_right(&g.rights) && !g.rights.manages_accesses_at_some_level()
        });
        if self.is_full_admin() || only_global {
            return Manageable::Roots;
        }
        let managing: Vec<&Grant> = self
            .grants
            .iter()
            .filter(|g| g.rights.manages_accesses_at_some_level())
            .collect();
        let mut tops = Vec::new();
        let mut children_of = Vec::new();
        for grant in &managing {
            let below_another = grant
                .perimeter_ancestors
                .iter()
                .any(|a| managing.iter().any(|m| m.perimeter_id == *a));
            if below_another {
                continue;
            }
            let same_level = managing
                .iter()
                .filter(|m| m.perimeter_id == grant.perimeter_id)
                .any(|m| manages_same_level(&m.rights));
            if same_level {
                tops.push(grant.perimeter_id);
            } else {
                children_of.push(grant.perimeter_id);
            }
        }
        Manageable::Perimeters {
            tops: sorted_unique(tops),
            children_of: sorted_unique(children_of),
        }
    }

    /// The caller's patient-data rights on `perimeter`.
    ///
    /// Reading rights of a grant reach its perimeter and every descendant, and are OR-merged.
    /// When the perimeter is readable, IPP search, opposed-patient search and the three export
    /// rights held by any grant (wherever it sits) are added; otherwise every flag is `false`.
    /// Nominative reading does not imply pseudonymized reading here.
    pub fn data_rights(&self, perimeter: PerimeterRef<'_>) -> DataRights {
        let mut nominative = false;
        let mut pseudonymized = false;
        for grant in &self.grants {
            if perimeter.is_at_or_under(grant.perimeter_id) {
                nominative |= grant.rights.right_read_patient_nominative;
                pseudonymized |= grant.rights.right_read_patient_pseudonymized;
            }
        }
        let readable = nominative || pseudonymized;
        let global = if readable {
            self.global()
        } else {
            Rights::default()
        };
        DataRights {
            perimeter_id: perimeter.id,
            right_read_patient_nominative: nominative,
            right_read_patient_pseudonymized: pseudonymized,
            right_search_patients_by_ipp: global.right_search_patients_by_ipp,
            right_search_opposed_patients: global.right_search_opposed_patients,
            right_export_csv_xlsx_nominative: global.right_export_csv_xlsx_nominative,
            right_export_jupyter_nominative: global.right_export_jupyter_nominative,
            right_export_jupyter_pseudonymized: global.right_export_jupyter_pseudonymized,
        }
    }

    /// Perimeters of the grants that read patient data (nominative or pseudonymized), sorted,
    /// without duplicates.
    pub fn reading_perimeters(&self) -> Vec<i64> {
        sorted_unique(
            self.grants
                .iter()
                .filter(|g| g.rights.reads_patient_data())
                .map(|g| g.perimeter_id)
                .collect(),
        )
    }

    /// What the caller may read of the patient data of `targets`; `None` refuses.
    ///
    /// Unlimited patient search allows everything but practitioners, whatever the targets.
    /// Otherwise, with [`ReadMode::Max`] one readable target suffices and nominative reading needs
    /// one nominative target; with [`ReadMode::Min`] every target must be readable and nominative
    /// reading needs every target nominative. No target at all is refused.
    pub fn read_check(
        &self,
        targets: &[PerimeterRef<'_>],
        mode: ReadMode,
    ) -> Option<ReadPermission> {
        let global = self.global();
        if global.right_search_patients_unlimited {
            return Some(ReadPermission {
                allow_read_patient_data_nomi: true,
                allow_lookup_opposed_patients: true,
                allow_read_patient_without_perimeter_limit: true,
                allow_read_practitioner: false,
            });
        }
        if targets.is_empty() {
            return None;
        }
        let rights: Vec<DataRights> = targets.iter().map(|t| self.data_rights(*t)).collect();
        let (readable, nominative) = match mode {
            ReadMode::Max => (
                rights.iter().any(DataRights::reads),
                rights.iter().any(|r| r.right_read_patient_nominative),
            ),
            ReadMode::Min => (
                rights.iter().all(DataRights::reads),
                rights.iter().all(|r| r.right_read_patient_nominative),
            ),
        };
        readable.then_some(ReadPermission {
            allow_read_patient_data_nomi: nominative,
            allow_lookup_opposed_patients: global.right_search_opposed_patients,
            allow_read_patient_without_perimeter_limit: false,
            allow_read_practitioner: global.right_manage_users,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The upstream fixture tree; Pn has id n.
    //
    //                               APHP (9999)
    //          ______________________|______________________
    //         |                      |                      |
    //         P0                     P1                     P2
    //   ______|______             ___|___           ________|________
    //  |      |      |           |       |         |        |        |
    //  P3     P4     P5          P6      P7        P8       P9       P10
    //       __|__                                                  __|__
    //      |     |                                                |     |
    //      P11   P12                                              P13   P14
    const APHP: i64 = 9999;

    /// `(perimeter, role)` of each grant of a test caller.
    type Grants = Vec<(i64, Rights)>;

    fn ancestors(id: i64) -> &'static [i64] {
        match id {
            APHP => &[],
            0..=2 => &[APHP],
            3..=5 => &[APHP, 0],
            6 | 7 => &[APHP, 1],
            8..=10 => &[APHP, 2],
            11 | 12 => &[APHP, 0, 4],
            13 | 14 => &[APHP, 2, 10],
            _ => panic!("perimeter {id} is not in the fixture tree"),
        }
    }

    fn children(id: i64) -> Vec<i64> {
        [APHP, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
            .into_iter()
            .filter(|c| ancestors(*c).last() == Some(&id))
            .collect()
    }

    fn at(id: i64) -> PerimeterRef<'static> {
        PerimeterRef {
            id,
            ancestors: ancestors(id),
        }
    }

    fn grant(perimeter_id: i64, rights: Rights) -> Grant {
        Grant {
            perimeter_id,
            perimeter_ancestors: ancestors(perimeter_id).to_vec(),
            rights,
        }
    }

    fn authority(grants: &[(i64, Rights)]) -> Authority {
        Authority::new(grants.iter().map(|(p, r)| grant(*p, *r)).collect())
    }

    // The role catalogue.

    fn full_admin() -> Rights {
        Rights::ALL
    }

    fn admin_manager() -> Rights {
        Rights {
            right_manage_users: true,
            right_manage_admin_accesses_same_level: true,
            right_manage_admin_accesses_inferior_levels: true,
            right_manage_data_accesses_same_level: true,
            right_manage_data_accesses_inferior_levels: true,
            ..Rights::default()
        }
    }

    fn admin_manager_same_level() -> Rights {
        Rights {
            right_manage_users: true,
            right_manage_admin_accesses_same_level: true,
            right_manage_data_accesses_same_level: true,
            ..Rights::default()
        }
    }

    fn data_manager() -> Rights {
        Rights {
            right_manage_users: true,
            right_manage_data_accesses_same_level: true,
            right_manage_data_accesses_inferior_levels: true,
            ..Rights::default()
        }
    }

    fn data_manager_same_level() -> Rights {
        Rights {
            right_manage_users: true,
            right_manage_data_accesses_same_level: true,
            ..Rights::default()
        }
    }

    fn data_manager_inferior() -> Rights {
        Rights {
            right_manage_users: true,
            right_manage_data_accesses_inferior_levels: true,
            ..Rights::default()
        }
    }

    fn nominative_reader() -> Rights {
        Rights {
            right_read_patient_nominative: true,
            ..Rights::default()
        }
    }

    fn pseudo_reader() -> Rights {
        Rights {
            right_read_patient_pseudonymized: true,
            ..Rights::default()
        }
    }

    fn csv_exporter() -> Rights {
        Rights {
            right_export_csv_xlsx_nominative: true,
            ..nominative_reader()
        }
    }

    fn jupyter_pseudo_exporter() -> Rights {
        Rights {
            right_export_jupyter_pseudonymized: true,
            ..pseudo_reader()
        }
    }

    fn datalab_support() -> Rights {
        Rights {
            right_manage_datalabs: true,
            right_read_datalabs: true,
            right_manage_users: true,
            ..Rights::default()
        }
    }

    fn no_right() -> Rights {
        Rights::default()
    }

    #[test]
    fn the_catalogue_roles_are_consistent() {
        for role in [
            full_admin(),
            admin_manager(),
            admin_manager_same_level(),
            data_manager(),
            data_manager_same_level(),
            data_manager_inferior(),
            nominative_reader(),
            pseudo_reader(),
            csv_exporter(),
            jupyter_pseudo_exporter(),
            datalab_support(),
        ] {
            assert_eq!(role.check_consistency(), Ok(()), "{role:?}");
        }
    }

    #[test]
    fn global_checks() {
        let nobody = authority(&[]);
        assert!(!nobody.is_full_admin());
        assert_eq!(nobody.global(), Rights::default());
        assert!(!nobody.may_list_accesses());

        let admin = authority(&[(5, full_admin())]);
        assert!(admin.is_full_admin());
        assert!(admin.may_list_accesses());

        let mixed = authority(&[(0, csv_exporter()), (6, jupyter_pseudo_exporter())]);
        assert!(!mixed.is_full_admin());
        assert!(!mixed.may_list_accesses());
        assert_eq!(
            mixed.global(),
            Rights {
                right_read_patient_nominative: true,
                right_read_patient_pseudonymized: true,
                right_export_csv_xlsx_nominative: true,
                right_export_jupyter_pseudonymized: true,
                ..Rights::default()
            }
        );

        assert!(authority(&[(11, data_manager_inferior())]).may_list_accesses());
        assert!(!authority(&[(APHP, datalab_support())]).may_list_accesses());
    }

    #[test]
    fn can_manage() {
        struct Case {
            label: &'static str,
            grants: Grants,
            target: i64,
            role: Rights,
            expected: bool,
        }
        let case = |label, grants: &[(i64, Rights)], target, role, expected| Case {
            label,
            grants: grants.to_vec(),
            target,
            role,
            expected,
        };
        let cases = [
            // Full admin.
            case(
                "full admin manages a full-admin role anywhere",
                &[(5, full_admin())],
                APHP,
                full_admin(),
                true,
            ),
            case(
                "full admin manages an admin manager on P4",
                &[(5, full_admin())],
                4,
                admin_manager(),
                true,
            ),
            // Spec: admin-access manager on the root.
            case(
                "admin mgr on root manages a data reader on P1",
                &[(APHP, admin_manager())],
                1,
                nominative_reader(),
                true,
            ),
            case(
                "admin mgr on root manages a data mgr on P10",
                &[(APHP, admin_manager())],
                10,
                data_manager(),
                true,
            ),
            case(
                "admin mgr on root does not manage an admin mgr on P4",
                &[(APHP, admin_manager())],
                4,
                admin_manager(),
                false,
            ),
            case(
                "admin mgr on root does not manage a full admin on P4",
                &[(APHP, admin_manager())],
                4,
                full_admin(),
                false,
            ),
            case(
                "admin mgr on root manages a reader on the root itself",
                &[(APHP, admin_manager())],
                APHP,
                nominative_reader(),
                true,
            ),
            // Spec: data-access manager on the root.
            case(
                "data mgr on root manages a data reader on P1",
                &[(APHP, data_manager())],
                1,
                nominative_reader(),
                true,
            ),
            case(
                "data mgr on root does not manage a data mgr on P10",
                &[(APHP, data_manager())],
                10,
                data_manager(),
                false,
            ),
            case(
                "data mgr on root does not manage an admin mgr on P4",
                &[(APHP, data_manager())],
                4,
                admin_manager(),
                false,
            ),
            case(
                "data mgr on root does not manage datalab support on P1",
                &[(APHP, data_manager())],
                1,
                datalab_support(),
                false,
            ),
            // Spec: a pure data reader.
            case(
                "nominative reader on root does not manage a reader on P1",
                &[(APHP, nominative_reader())],
                1,
                pseudo_reader(),
                false,
            ),
            case(
                "nominative reader on P1 does not manage a no-right role on P1 (differs from upstream)",
                &[(1, nominative_reader())],
                1,
                no_right(),
                false,
            ),
            case(
                "no grant manages no no-right role (differs from upstream)",
                &[],
                1,
                no_right(),
                false,
            ),
            // Same-level only.
            case(
                "admin mgr same-level only on root assigns nothing on P0",
                &[(APHP, admin_manager_same_level())],
                0,
                nominative_reader(),
                false,
            ),
            case(
                "admin mgr same-level only on root manages a data mgr on the root",
                &[(APHP, admin_manager_same_level())],
                APHP,
                data_manager(),
                true,
            ),
            case(
                "data mgr same-level only on P3 manages a reader on P3",
                &[(3, data_manager_same_level())],
                3,
                csv_exporter(),
                true,
            ),
            case(
                "data mgr same-level only on P3 does not manage a reader on P11",
                &[(3, data_manager_same_level())],
                11,
                nominative_reader(),
                false,
            ),
            case(
                "data mgr same-level only on P4 does not manage a reader on its child P11",
                &[(4, data_manager_same_level())],
                11,
                nominative_reader(),
                false,
            ),
            // Inferior levels only.
            case(
                "data mgr inferior only on P0 manages a reader on P11",
                &[(0, data_manager_inferior())],
                11,
                nominative_reader(),
                true,
            ),
            case(
                "data mgr inferior only on P0 does not manage a reader on P0",
                &[(0, data_manager_inferior())],
                0,
                nominative_reader(),
                false,
            ),
            case(
                "data mgr inferior only on P0 does not manage a reader on P1",
                &[(0, data_manager_inferior())],
                1,
                nominative_reader(),
                false,
            ),
            case(
                "data mgr inferior only on P0 manages a no-right role on P3",
                &[(0, data_manager_inferior())],
                3,
                no_right(),
                true,
            ),
            // Several grants combine.
            case(
                "data mgr on P0 plus admin mgr on P4: admin role on P11 allowed",
                &[(0, data_manager()), (4, admin_manager())],
                11,
                data_manager(),
                true,
            ),
            case(
                "data mgr on P0 plus admin mgr same-level on P4: data mgr role on P4 allowed",
                &[(0, data_manager()), (4, admin_manager_same_level())],
                4,
                data_manager(),
                true,
            ),
            case(
                "admin mgr same-level on P4 does not reach P11 even with a reader grant on P0",
                &[(0, nominative_reader()), (4, admin_manager_same_level())],
                11,
                nominative_reader(),
                false,
            ),
            case(
                "datalab support alone manages no reader",
                &[(APHP, datalab_support())],
                1,
                nominative_reader(),
                false,
            ),
        ];
        for c in &cases {
            let got = authority(&c.grants).can_manage(at(c.target), &c.role);
            assert_eq!(got, c.expected, "{}", c.label);
        }
    }

    #[test]
    fn manageable() {
        let perimeters = |tops: &[i64], children_of: &[i64]| Manageable::Perimeters {
            tops: tops.to_vec(),
            children_of: children_of.to_vec(),
        };
        let cases: Vec<(&str, Grants, Manageable)> = vec![
            (
                "spec example",
                vec![
                    (0, data_manager_inferior()),
                    (1, admin_manager()),
                    (8, admin_manager_same_level()),
                    (10, data_manager_inferior()),
                ],
                perimeters(&[1, 8], &[0, 10]),
            ),
            ("full admin", vec![(5, full_admin())], Manageable::Roots),
            (
                "full admin beside a data manager",
                vec![(0, data_manager()), (5, full_admin())],
                Manageable::Roots,
            ),
            (
                "datalab support",
                vec![(APHP, datalab_support())],
                Manageable::Roots,
            ),
            (
                "no grant (differs from upstream)",
                vec![],
                perimeters(&[], &[]),
            ),
            (
                "pure reader",
                vec![(0, nominative_reader())],
                perimeters(&[], &[]),
            ),
            (
                "datalab support beside a reader",
                vec![(APHP, datalab_support()), (0, nominative_reader())],
                perimeters(&[], &[]),
            ),
            (
                "datalab support beside an inferior-only data manager",
                vec![(APHP, datalab_support()), (0, data_manager_inferior())],
                perimeters(&[], &[0]),
            ),
            (
                "grants below another managing grant are not tops",
                vec![
                    (0, data_manager_inferior()),
                    (4, admin_manager()),
                    (11, data_manager_same_level()),
                    (2, data_manager_same_level()),
                    (13, admin_manager()),
                ],
                perimeters(&[2], &[0]),
            ),
            (
                "same-level and inferior-only grants on one perimeter make a top",
                vec![(0, data_manager_inferior()), (0, data_manager_same_level())],
                perimeters(&[0], &[]),
            ),
            (
                "duplicate grants give one top",
                vec![(3, data_manager()), (3, admin_manager())],
                perimeters(&[3], &[]),
            ),
        ];
        for (label, grants, expected) in &cases {
            assert_eq!(&authority(grants).manageable(), expected, "{label}");
        }
    }

    #[test]
    fn the_spec_example_expands_to_the_upstream_perimeters() {
        let caller = authority(&[
            (0, data_manager_inferior()),
            (1, admin_manager()),
            (8, admin_manager_same_level()),
            (10, data_manager_inferior()),
        ]);
        let Manageable::Perimeters { tops, children_of } = caller.manageable() else {
            panic!("expected perimeters");
        };
        let mut all: Vec<i64> = tops
            .into_iter()
            .chain(children_of.into_iter().flat_map(children))
            .collect();
        all.sort_unstable();
        assert_eq!(all, vec![1, 3, 4, 5, 8, 13, 14]);
    }

    #[test]
    fn data_rights() {
        let none = |perimeter_id| DataRights {
            perimeter_id,
            right_read_patient_nominative: false,
            right_read_patient_pseudonymized: false,
            right_search_patients_by_ipp: false,
            right_search_opposed_patients: false,
            right_export_csv_xlsx_nominative: false,
            right_export_jupyter_nominative: false,
            right_export_jupyter_pseudonymized: false,
        };
        let nominative = |perimeter_id| DataRights {
            right_read_patient_nominative: true,
            ..none(perimeter_id)
        };
        let pseudo = |perimeter_id| DataRights {
            right_read_patient_pseudonymized: true,
            ..none(perimeter_id)
        };
        let opposed_searcher = Rights {
            right_search_opposed_patients: true,
            ..Rights::default()
        };
        let ipp_searcher = Rights {
            right_search_patients_by_ipp: true,
            ..nominative_reader()
        };
        let cases: Vec<(&str, Grants, i64, DataRights)> = vec![
            (
                "nominative on P0 applies to P0",
                vec![(0, nominative_reader())],
                0,
                nominative(0),
            ),
            (
                "nominative on P0 is inherited by P11",
                vec![(0, nominative_reader())],
                11,
                nominative(11),
            ),
            (
                "nominative on P0 does not reach P1",
                vec![(0, nominative_reader())],
                1,
                none(1),
            ),
            (
                "nominative on P0 does not reach the root",
                vec![(0, nominative_reader())],
                APHP,
                none(APHP),
            ),
            (
                "nominative does not imply pseudonymized",
                vec![(APHP, nominative_reader())],
                7,
                nominative(7),
            ),
            (
                "pseudo on P4 and nominative on P0 merge on P11",
                vec![(4, pseudo_reader()), (0, nominative_reader())],
                11,
                DataRights {
                    right_read_patient_pseudonymized: true,
                    ..nominative(11)
                },
            ),
            (
                "pseudo on P4 and nominative on P0: P3 is only nominative",
                vec![(4, pseudo_reader()), (0, nominative_reader())],
                3,
                nominative(3),
            ),
            (
                "pseudo on P4 alone on P12",
                vec![(4, pseudo_reader())],
                12,
                pseudo(12),
            ),
            (
                "CSV export on P0 is OR-ed on readable P11",
                vec![(0, csv_exporter())],
                11,
                DataRights {
                    right_export_csv_xlsx_nominative: true,
                    ..nominative(11)
                },
            ),
            (
                "CSV export on P0 does not reach unreadable P2",
                vec![(0, csv_exporter())],
                2,
                none(2),
            ),
            (
                "CSV export held on P0 is OR-ed on P6 read through P1",
                vec![(0, csv_exporter()), (1, pseudo_reader())],
                6,
                DataRights {
                    right_export_csv_xlsx_nominative: true,
                    ..pseudo(6)
                },
            ),
            (
                "Jupyter pseudo export on P1 is OR-ed on P11 read through P0",
                vec![(1, jupyter_pseudo_exporter()), (0, nominative_reader())],
                11,
                DataRights {
                    right_export_jupyter_pseudonymized: true,
                    ..nominative(11)
                },
            ),
            (
                "IPP and opposed-patient search held anywhere are OR-ed",
                vec![
                    (9, opposed_searcher),
                    (13, ipp_searcher),
                    (0, pseudo_reader()),
                ],
                5,
                DataRights {
                    right_search_patients_by_ipp: true,
                    right_search_opposed_patients: true,
                    ..pseudo(5)
                },
            ),
            (
                "search rights alone give nothing",
                vec![(APHP, opposed_searcher)],
                5,
                none(5),
            ),
            (
                "full admin reads everything",
                vec![(6, full_admin())],
                6,
                DataRights {
                    perimeter_id: 6,
                    right_read_patient_nominative: true,
                    right_read_patient_pseudonymized: true,
                    right_search_patients_by_ipp: true,
                    right_search_opposed_patients: true,
                    right_export_csv_xlsx_nominative: true,
                    right_export_jupyter_nominative: true,
                    right_export_jupyter_pseudonymized: true,
                },
            ),
            ("no grant", vec![], 0, none(0)),
        ];
        for (label, grants, target, expected) in &cases {
            let got = authority(grants).data_rights(at(*target));
            assert_eq!(&got, expected, "{label}");
            assert_eq!(
                got.reads(),
                expected.right_read_patient_nominative || expected.right_read_patient_pseudonymized,
                "{label}"
            );
        }
    }

    #[test]
    fn reading_perimeters_are_sorted_and_deduplicated() {
        let caller = authority(&[
            (4, pseudo_reader()),
            (APHP, datalab_support()),
            (0, nominative_reader()),
            (4, csv_exporter()),
            (2, data_manager()),
        ]);
        assert_eq!(caller.reading_perimeters(), vec![0, 4]);
        assert!(authority(&[]).reading_perimeters().is_empty());
    }

    #[test]
    fn read_modes_parse() {
        assert_eq!("min".parse(), Ok(ReadMode::Min));
        assert_eq!("max".parse(), Ok(ReadMode::Max));
        assert_eq!(
            "MAX".parse::<ReadMode>(),
            Err(UnknownReadMode("MAX".to_string()))
        );
        assert!("".parse::<ReadMode>().is_err());
    }

    #[test]
    fn read_check() {
        let allow = |nomi, opposed, practitioner| {
            Some(ReadPermission {
                allow_read_patient_data_nomi: nomi,
                allow_lookup_opposed_patients: opposed,
                allow_read_patient_without_perimeter_limit: false,
                allow_read_practitioner: practitioner,
            })
        };
        let unlimited = Some(ReadPermission {
            allow_read_patient_data_nomi: true,
            allow_lookup_opposed_patients: true,
            allow_read_patient_without_perimeter_limit: true,
            allow_read_practitioner: false,
        });
        let unlimited_searcher = Rights {
            right_search_patients_unlimited: true,
            ..Rights::default()
        };
        let opposed_searcher = Rights {
            right_search_opposed_patients: true,
            ..Rights::default()
        };
        let reads_p0 = vec![(0, nominative_reader())];
        let nomi_p0_pseudo_p1 = vec![(0, nominative_reader()), (1, pseudo_reader())];
        let (max, min) = (ReadMode::Max, ReadMode::Min);
        let cases: [(&str, Grants, &[i64], ReadMode, _); 14] = [
            (
                "max: P11 readable under P0",
                reads_p0.clone(),
                &[11, 6],
                max,
                allow(true, false, false),
            ),
            (
                "min: P6 not readable",
                reads_p0.clone(),
                &[11, 6],
                min,
                None,
            ),
            (
                "min: P11 alone",
                reads_p0.clone(),
                &[11],
                min,
                allow(true, false, false),
            ),
            ("max: P6 alone", reads_p0.clone(), &[6], max, None),
            ("max: no target", reads_p0.clone(), &[], max, None),
            ("min: no target", reads_p0.clone(), &[], min, None),
            (
                "max: nominative if any target is",
                nomi_p0_pseudo_p1.clone(),
                &[11, 6],
                max,
                allow(true, false, false),
            ),
            (
                "min: pseudonymized if one target is",
                nomi_p0_pseudo_p1.clone(),
                &[11, 6],
                min,
                allow(false, false, false),
            ),
            (
                "max: pseudonymized target only",
                nomi_p0_pseudo_p1,
                &[7],
                max,
                allow(false, false, false),
            ),
            ("no grant", vec![], &[11], max, None),
            (
                "opposed lookup and practitioners come from global rights",
                vec![
                    (0, pseudo_reader()),
                    (9, opposed_searcher),
                    (2, data_manager()),
                ],
                &[3, 4],
                min,
                allow(false, true, true),
            ),
            (
                "unlimited search, unreadable targets",
                vec![(9, unlimited_searcher)],
                &[11, 6],
                min,
                unlimited,
            ),
            (
                "unlimited search, no target",
                vec![(9, unlimited_searcher)],
                &[],
                max,
                unlimited,
            ),
            (
                "full admin searches without limit",
                vec![(9, full_admin())],
                &[3],
                min,
                unlimited,
            ),
        ];
        for (label, grants, targets, mode, expected) in &cases {
            let targets: Vec<PerimeterRef<'static>> = targets.iter().map(|t| at(*t)).collect();
            let got = authority(grants).read_check(&targets, *mode);
            assert_eq!(&got, expected, "{label}");
        }
    }
}
