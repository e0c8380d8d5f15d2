//! The 17 rights a role carries (upstream's 16 and our `right_read_audit`), their consistency rules, who may grant a role, and the rights
//! catalogue served by `/accesses/rights/`.
//!
//! Field names are upstream's column names: they are the wire format of roles.

use serde::{Deserialize, Serialize};

/// The rights of a role (all `false` by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Rights {
    pub right_full_admin: bool,
    pub right_manage_users: bool,
    pub right_manage_data_accesses_same_level: bool,
    pub right_manage_data_accesses_inferior_levels: bool,
    pub right_manage_admin_accesses_same_level: bool,
    pub right_manage_admin_accesses_inferior_levels: bool,
    pub right_read_patient_nominative: bool,
    pub right_read_patient_pseudonymized: bool,
    pub right_search_patients_by_ipp: bool,
    pub right_search_patients_unlimited: bool,
    pub right_search_opposed_patients: bool,
    pub right_export_jupyter_nominative: bool,
    pub right_export_jupyter_pseudonymized: bool,
    pub right_export_csv_xlsx_nominative: bool,
    pub right_manage_datalabs: bool,
    pub right_read_datalabs: bool,
    /// Extension (not upstream): reads the audit API (`/audit/…`) on the whole log.
    pub right_read_audit: bool,
}

/// One right of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RightInfo {
    /// Stable id in `/accesses/rights/{id}/` (1-based position in [`CATALOGUE`]).
    pub id: u32,
    pub name: &'static str,
    pub label: &'static str,
    pub category: &'static str,
    pub is_global: bool,
    pub depends_on: Option<&'static str>,
    /// Lets its holder manage accesses on the perimeter of the access.
    pub allow_edit_accesses_on_same_level: bool,
    /// Lets its holder manage accesses on the sub-perimeters of the access.
    pub allow_edit_accesses_on_inf_levels: bool,
    /// Inherited by the sub-perimeters of the access.
    pub impact_inferior_levels: bool,
}

const fn right(
    id: u32,
    name: &'static str,
    label: &'static str,
    category: &'static str,
    is_global: bool,
    flags: (bool, bool, bool),
) -> RightInfo {
    RightInfo {
        id,
        name,
        label,
        category,
        is_global,
        depends_on: None,
        allow_edit_accesses_on_same_level: flags.0,
        allow_edit_accesses_on_inf_levels: flags.1,
        impact_inferior_levels: flags.2,
    }
}

const NONE: (bool, bool, bool) = (false, false, false);

/// The rights catalogue, in display order, grouped by category.
pub const CATALOGUE: [RightInfo; 17] = [
    right(
        1,
        "right_full_admin",
        "Super user",
        "Administration",
        true,
        NONE,
    ),
    right(
        2,
        "right_manage_users",
        "Gérer la liste des utilisateurs/profils",
        "Utilisateurs",
        true,
        NONE,
    ),
    right(
        3,
        "right_manage_data_accesses_same_level",
        "Gérer les accès aux données patients sur le périmètre exclusivement",
        "Gestion des accès aux données",
        false,
        (true, false, false),
    ),
    right(
        4,
        "right_manage_data_accesses_inferior_levels",
        "Gérer les accès aux données patients sur les sous-périmètres exclusivement",
        "Gestion des accès aux données",
        false,
        (false, true, true),
    ),
    right(
        5,
        "right_manage_admin_accesses_same_level",
        "Gérer les accès administrateurs sur le périmètre exclusivement",
        "Gestion des accès administrateurs",
        false,
        (true, false, false),
    ),
    right(
        6,
        "right_manage_admin_accesses_inferior_levels",
        "Gérer les accès administrateurs sur les sous-périmètres exclusivement",
        "Gestion des accès administrateurs",
        false,
        (false, true, true),
    ),
    right(
        7,
        "right_read_patient_nominative",
        "Lire les données patients sous forme nominative",
        "Lecture des données patients",
        false,
        (false, false, true),
    ),
    right(
        8,
        "right_read_patient_pseudonymized",
        "Lire les données patients sous forme pseudonymisée",
        "Lecture des données patients",
        false,
        (false, false, true),
    ),
    right(
        9,
        "right_search_patients_by_ipp",
        "Rechercher des patients par IPP",
        "Recherche de patients",
        true,
        NONE,
    ),
    right(
        10,
        "right_search_patients_unlimited",
        "Rechercher des patients sans limite de périmètre",
        "Recherche de patients",
        true,
        NONE,
    ),
    right(
        11,
        "right_search_opposed_patients",
        "Rechercher les patients opposés à l'utilisation de leurs données pour la recherche",
        "Recherche de patients",
        true,
        NONE,
    ),
    right(
        12,
        "right_export_jupyter_nominative",
        "Exporter des cohortes nominatives vers Jupyter",
        "Exports Jupyter",
        true,
        NONE,
    ),
    right(
        13,
        "right_export_jupyter_pseudonymized",
        "Exporter des cohortes pseudonymisées vers Jupyter",
        "Exports Jupyter",
        true,
        NONE,
    ),
    right(
        14,
        "right_export_csv_xlsx_nominative",
        "Exporter des cohortes nominatives en CSV/Excel",
        "Exports CSV/Excel",
        true,
        NONE,
    ),
    right(
        15,
        "right_manage_datalabs",
        "Gérer les datalabs",
        "Datalabs",
        true,
        NONE,
    ),
    RightInfo {
        depends_on: Some("right_manage_datalabs"),
        ..right(
            16,
            "right_read_datalabs",
            "Consulter la liste des datalabs",
            "Datalabs",
            true,
            NONE,
        )
    },
    right(
        17,
        "right_read_audit",
        "Consulter le journal d'audit (historique, états passés, accès)",
        "Audit",
        true,
        NONE,
    ),
];

/// Who may grant a role, from the least to the most demanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantorLevel {
    /// The role has no right at all: anyone who may manage accesses may grant it.
    Anyone,
    /// Needs a data-access manager (or an admin-access manager, or a full admin).
    DataManager,
    /// Needs an admin-access manager (or a full admin).
    AdminManager,
    /// Needs a full admin.
    FullAdmin,
}

/// Why a set of rights is not a consistent role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InconsistentRights {
    #[error("a full-admin role must have every right")]
    FullAdminNeedsEveryRight,
    #[error("pseudonymized-only reading cannot be combined with a nominative export right")]
    PseudonymizedReaderWithNominativeExport,
    #[error("searching patients by IPP requires nominative reading")]
    IppSearchNeedsNominativeReading,
    #[error("an access-management right requires the right to manage users")]
    AccessManagementNeedsUserManagement,
}

impl Rights {
    /// Every right granted.
    pub const ALL: Rights = Rights {
        right_full_admin: true,
        right_manage_users: true,
        right_manage_data_accesses_same_level: true,
        right_manage_data_accesses_inferior_levels: true,
        right_manage_admin_accesses_same_level: true,
        right_manage_admin_accesses_inferior_levels: true,
        right_read_patient_nominative: true,
        right_read_patient_pseudonymized: true,
        right_search_patients_by_ipp: true,
        right_search_patients_unlimited: true,
        right_search_opposed_patients: true,
        right_export_jupyter_nominative: true,
        right_export_jupyter_pseudonymized: true,
        right_export_csv_xlsx_nominative: true,
        right_manage_datalabs: true,
        right_read_datalabs: true,
        right_read_audit: true,
    };

    /// `(name, value)` of every right, in catalogue order.
    pub fn entries(&self) -> [(&'static str, bool); 17] {
        [
            ("right_full_admin", self.right_full_admin),
            ("right_manage_users", self.right_manage_users),
            (
                "right_manage_data_accesses_same_level",
                self.right_manage_data_accesses_same_level,
            ),
            (
                "right_manage_data_accesses_inferior_levels",
                self.right_manage_data_accesses_inferior_levels,
            ),
            (
                "right_manage_admin_accesses_same_level",
                self.right_manage_admin_accesses_same_level,
            ),
            (
                "right_manage_admin_accesses_inferior_levels",
                self.right_manage_admin_accesses_inferior_levels,
            ),
            (
                "right_read_patient_nominative",
                self.right_read_patient_nominative,
            ),
            (
                "right_read_patient_pseudonymized",
                self.right_read_patient_pseudonymized,
            ),
            (
                "right_search_patients_by_ipp",
                self.right_search_patients_by_ipp,
            ),
            (
                "right_search_patients_unlimited",
                self.right_search_patients_unlimited,
            ),
            (
                "right_search_opposed_patients",
                self.right_search_opposed_patients,
            ),
            (
                "right_export_jupyter_nominative",
                self.right_export_jupyter_nominative,
            ),
            (
                "right_export_jupyter_pseudonymized",
                self.right_export_jupyter_pseudonymized,
            ),
            (
                "right_export_csv_xlsx_nominative",
                self.right_export_csv_xlsx_nominative,
            ),
            ("right_manage_datalabs", self.right_manage_datalabs),
            ("right_read_datalabs", self.right_read_datalabs),
            ("right_read_audit", self.right_read_audit),
        ]
    }

    /// Names of the granted rights, in catalogue order.
    pub fn granted(&self) -> Vec<&'static str> {
        self.entries()
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Sets the right called `name`; `false` if no right has that name.
    pub fn set(&mut self, name: &str, value: bool) -> bool {
        let slot = match name {
            "right_full_admin" => &mut self.right_full_admin,
            "right_manage_users" => &mut self.right_manage_users,
            "right_manage_data_accesses_same_level" => {
                &mut self.right_manage_data_accesses_same_level
            }
            "right_manage_data_accesses_inferior_levels" => {
                &mut self.right_manage_data_accesses_inferior_levels
            }
            "right_manage_admin_accesses_same_level" => {
                &mut self.right_manage_admin_accesses_same_level
            }
            "right_manage_admin_accesses_inferior_levels" => {
                &mut self.right_manage_admin_accesses_inferior_levels
            }
            "right_read_patient_nominative" => &mut self.right_read_patient_nominative,
            "right_read_patient_pseudonymized" => &mut self.right_read_patient_pseudonymized,
            "right_search_patients_by_ipp" => &mut self.right_search_patients_by_ipp,
            "right_search_patients_unlimited" => &mut self.right_search_patients_unlimited,
            "right_search_opposed_patients" => &mut self.right_search_opposed_patients,
            "right_export_jupyter_nominative" => &mut self.right_export_jupyter_nominative,
            "right_export_jupyter_pseudonymized" => &mut self.right_export_jupyter_pseudonymized,
            "right_export_csv_xlsx_nominative" => &mut self.right_export_csv_xlsx_nominative,
            "right_manage_datalabs" => &mut self.right_manage_datalabs,
            "right_read_datalabs" => &mut self.right_read_datalabs,
            "right_read_audit" => &mut self.right_read_audit,
            _ => return false,
        };
        *slot = value;
        true
    }

    /// OR of two sets of rights.
    pub fn union(self, other: Rights) -> Rights {
        let mut out = self;
        for (name, value) in other.entries() {
            if value {
                out.set(name, true);
            }
        }
        out
    }

    /// Whether any right is granted.
    pub fn any(&self) -> bool {
        self.entries().iter().any(|(_, v)| *v)
    }

    /// Upstream's four role consistency rules.
    pub fn check_consistency(&self) -> Result<(), InconsistentRights> {
        if self.right_full_admin && *self != Rights::ALL {
            return Err(InconsistentRights::FullAdminNeedsEveryRight);
        }
        let nominative_export =
            self.right_export_csv_xlsx_nominative || self.right_export_jupyter_nominative;
        if self.right_read_patient_pseudonymized
            && !self.right_read_patient_nominative
            && nominative_export
        {
            return Err(InconsistentRights::PseudonymizedReaderWithNominativeExport);
        }
        if self.right_search_patients_by_ipp && !self.right_read_patient_nominative {
            return Err(InconsistentRights::IppSearchNeedsNominativeReading);
        }
        if self.manages_accesses_at_some_level() && !self.right_manage_users {
            return Err(InconsistentRights::AccessManagementNeedsUserManagement);
        }
        Ok(())
    }

    /// Any of the four level-dependent access-management rights.
    pub fn manages_accesses_at_some_level(&self) -> bool {
        self.right_manage_data_accesses_same_level
            || self.right_manage_data_accesses_inferior_levels
            || self.right_manage_admin_accesses_same_level
            || self.right_manage_admin_accesses_inferior_levels
    }

    /// Reads patient data (nominative or pseudonymized).
    pub fn reads_patient_data(&self) -> bool {
        self.right_read_patient_nominative || self.right_read_patient_pseudonymized
    }

    /// Who may grant a role with these rights (upstream's `Role.requires_*`).
    pub fn grantor_level(&self) -> GrantorLevel {
        if self.right_full_admin
            || self.right_read_audit
            || self.right_search_patients_unlimited
            || self.right_manage_admin_accesses_same_level
            || self.right_manage_admin_accesses_inferior_levels
        {
            GrantorLevel::FullAdmin
        } else if self.right_manage_users
            || self.right_manage_data_accesses_same_level
            || self.right_manage_data_accesses_inferior_levels
            || self.right_manage_datalabs
            || self.right_read_datalabs
        {
            GrantorLevel::AdminManager
        } else if self.right_read_patient_nominative
            || self.right_read_patient_pseudonymized
            || self.right_search_patients_by_ipp
            || self.right_search_opposed_patients
            || self.right_export_jupyter_nominative
            || self.right_export_jupyter_pseudonymized
            || self.right_export_csv_xlsx_nominative
        {
            GrantorLevel::DataManager
        } else {
            GrantorLevel::Anyone
        }
    }

    /// French sentences describing the enabled rights (upstream's `help_text`).
    pub fn help_text(&self) -> Vec<String> {
        self.entries()
            .iter()
            .zip(CATALOGUE.iter())
            .filter(|((_, on), _)| *on)
            .map(|(_, info)| info.label.to_string())
            .collect()
    }
}

/// Serde form of [`Rights`] in version-2 role events: the names of the granted rights, in
/// catalogue order. A right added to the catalogue later never changes this shape; an unknown
/// name is refused (it would be a right this build cannot enforce).
pub mod granted_names {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Rights;

    pub fn serialize<S: Serializer>(rights: &Rights, serializer: S) -> Result<S::Ok, S::Error> {
        rights.granted().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Rights, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        let mut rights = Rights::default();
        for name in &names {
            if !rights.set(name, true) {
                return Err(D::Error::custom(format!("unknown right '{name}'")));
            }
        }
        Ok(rights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_catalogue_list_the_same_rights_in_the_same_order() {
        for ((name, _), info) in Rights::default().entries().iter().zip(CATALOGUE.iter()) {
            assert_eq!(*name, info.name);
        }
        for (i, info) in CATALOGUE.iter().enumerate() {
            assert_eq!(info.id as usize, i + 1);
            let mut r = Rights::default();
            assert!(r.set(info.name, true));
            assert!(r.any());
        }
        assert!(!Rights::default().set("right_fly", true));
    }

    #[test]
    fn the_four_consistency_rules() {
        let ok = |r: Rights| r.check_consistency();
        assert_eq!(ok(Rights::ALL), Ok(()));
        assert_eq!(
            ok(Rights {
                right_full_admin: true,
                ..Rights::default()
            }),
            Err(InconsistentRights::FullAdminNeedsEveryRight)
        );
        assert_eq!(
            ok(Rights {
                right_read_patient_pseudonymized: true,
                right_export_csv_xlsx_nominative: true,
                ..Rights::default()
            }),
            Err(InconsistentRights::PseudonymizedReaderWithNominativeExport)
        );
        assert_eq!(
            ok(Rights {
                right_read_patient_pseudonymized: true,
                right_read_patient_nominative: true,
                right_export_csv_xlsx_nominative: true,
                ..Rights::default()
            }),
            Ok(())
        );
        assert_eq!(
            ok(Rights {
                right_search_patients_by_ipp: true,
                ..Rights::default()
            }),
            Err(InconsistentRights::IppSearchNeedsNominativeReading)
        );
        assert_eq!(
            ok(Rights {
                right_manage_data_accesses_inferior_levels: true,
                ..Rights::default()
            }),
            Err(InconsistentRights::AccessManagementNeedsUserManagement)
        );
        assert_eq!(
            ok(Rights {
                right_manage_data_accesses_inferior_levels: true,
                right_manage_users: true,
                ..Rights::default()
            }),
            Ok(())
        );
    }

    #[test]
    fn grantor_levels_follow_the_most_demanding_right() {
        let level = |name: &str| {
            let mut r = Rights::default();
            r.set(name, true);
            r.grantor_level()
        };
        assert_eq!(Rights::default().grantor_level(), GrantorLevel::Anyone);
        assert_eq!(level("right_full_admin"), GrantorLevel::FullAdmin);
        assert_eq!(level("right_read_audit"), GrantorLevel::FullAdmin);
        assert_eq!(
            level("right_search_patients_unlimited"),
            GrantorLevel::FullAdmin
        );
        assert_eq!(
            level("right_manage_admin_accesses_inferior_levels"),
            GrantorLevel::FullAdmin
        );
        assert_eq!(level("right_manage_users"), GrantorLevel::AdminManager);
        assert_eq!(
            level("right_manage_data_accesses_same_level"),
            GrantorLevel::AdminManager
        );
        assert_eq!(level("right_read_datalabs"), GrantorLevel::AdminManager);
        assert_eq!(
            level("right_read_patient_pseudonymized"),
            GrantorLevel::DataManager
        );
        assert_eq!(
            level("right_export_csv_xlsx_nominative"),
            GrantorLevel::DataManager
        );
    }

    #[test]
    fn help_text_names_each_enabled_right() {
        let r = Rights {
            right_read_patient_nominative: true,
            right_search_patients_by_ipp: true,
            ..Rights::default()
        };
        assert_eq!(r.help_text().len(), 2);
        assert_eq!(Rights::ALL.help_text().len(), 17);
    }
}
