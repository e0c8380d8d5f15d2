//! The `identity` read model: users, profiles, roles, perimeters, accesses and maintenance
//! phases, and the caller's authority computed from them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::authz::Authority;
use domain::rights::Rights;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Page, ReadError, SortKey, Window};

/// Name of the projection (and of its schema).
pub const PROJECTION: &str = "identity";

pub const USER_ORDERING: &[(&str, &str)] = &[
    ("firstname", "firstname"),
    ("lastname", "lastname"),
    ("username", "username"),
    ("email", "email"),
    ("created_by", "created_by"),
    ("updated_by", "updated_by"),
];
pub const ROLE_ORDERING: &[(&str, &str)] = &[("name", "name"), ("id", "id")];
pub const PERIMETER_ORDERING: &[(&str, &str)] = &[
    ("care_site_name", "name"),
    ("care_site_type_source_value", "type_source_value"),
    ("care_site_source_value", "source_value"),
    ("name", "name"),
    ("id", "id"),
];
pub const ACCESS_ORDERING: &[(&str, &str)] = &[
    ("start_datetime", "a.start_datetime"),
    ("end_datetime", "a.end_datetime"),
    ("created_by", "a.created_by"),
    ("updated_by", "a.updated_by"),
    ("role_name", "r.name"),
    ("perimeter_name", "p.name"),
    (
        "is_valid",
        "(a.start_datetime <= now() AND a.end_datetime >= now())",
    ),
];
pub const MAINTENANCE_ORDERING: &[(&str, &str)] = &[
    ("start_datetime", "start_datetime"),
    ("end_datetime", "end_datetime"),
    ("subject", "subject"),
    ("id", "id"),
];

/// A user (`/users/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub email: Option<String>,
    pub display_name: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub last_login: Option<DateTime<Utc>>,
}

/// Upstream's display name: "Firstname Lastname (username)".
pub fn display_name(firstname: &str, lastname: &str, username: &str) -> String {
    format!("{firstname} {lastname} ({username})")
}

/// `/users/` filters.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub username: Option<String>,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub email: Option<String>,
    pub manual_only: bool,
    pub with_access: bool,
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// A profile (`/accesses/profiles/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ProfileView {
    pub id: i64,
    pub source: String,
    pub is_active: bool,
    pub user_id: String,
    pub provider_id: String,
    pub provider_name: String,
    pub firstname: String,
    pub lastname: String,
    pub email: Option<String>,
}

/// A role (`/accesses/roles/`): its rights are flattened into the object.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RoleView {
    pub id: i64,
    pub name: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub rights: Rights,
    pub help_text: Vec<String>,
}

/// `/accesses/roles/` filters: `name` contains, and any right's value.
#[derive(Debug, Clone, Default)]
pub struct RoleFilter {
    pub name: Option<String>,
    pub rights: Vec<(&'static str, bool)>,
    pub ordering: Vec<SortKey>,
}

/// A perimeter row with its derived fields.
#[derive(Debug, Clone, PartialEq)]
pub struct PerimeterRow {
    pub id: i64,
    pub local_id: String,
    pub name: String,
    pub short_name: String,
    pub source_value: String,
    pub type_source_value: String,
    pub parent_id: Option<i64>,
    pub level: i32,
    /// Root first.
    pub ancestors: Vec<i64>,
    /// Direct children.
    pub children: Vec<i64>,
    pub full_path: String,
    pub cohort_id: Option<String>,
    pub cohort_size: Option<String>,
}

fn join_ids(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

impl PerimeterRow {
    /// The full representation (`/accesses/perimeters/`), legacy `care_site_*` aliases included.
    pub fn full(&self) -> Value {
        json!({
            "id": self.id,
            "local_id": self.local_id,
            "name": self.name,
            "short_name": self.short_name,
            "source_value": self.source_value,
            "type_source_value": self.type_source_value,
            "type": self.type_source_value,
            "parent_id": self.parent_id,
            "level": self.level,
            "above_levels_ids": join_ids(&self.ancestors),
            "inferior_levels_ids": join_ids(&self.children),
            "full_path": self.full_path,
            "cohort_id": self.cohort_id,
            "cohort_size": self.cohort_size,
            "names": {"name": self.name, "short": self.short_name, "source_value": self.source_value},
            "care_site_id": self.id,
            "care_site_name": self.name,
            "care_site_short_name": self.short_name,
            "care_site_type_source_value": self.type_source_value,
            "care_site_source_value": self.source_value,
        })
    }

    /// The lite representation (manageable perimeters, patient-data rights).
    pub fn lite(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "source_value": self.source_value,
            "parent_id": self.parent_id,
            "type": self.type_source_value,
            "above_levels_ids": join_ids(&self.ancestors),
            "inferior_levels_ids": join_ids(&self.children),
            "cohort_id": self.cohort_id,
            "cohort_size": self.cohort_size,
            "full_path": self.full_path,
        })
    }
}

/// `/accesses/perimeters/` filters (comma lists are already split).
#[derive(Debug, Clone, Default)]
pub struct PerimeterFilter {
    pub name: Option<String>,
    pub source_value: Option<String>,
    pub type_source_value: Vec<String>,
    pub cohort_id: Vec<String>,
    pub parent_id: Vec<i64>,
    pub local_id: Vec<String>,
    pub ids: Option<Vec<i64>>,
    pub search: Option<String>,
    /// Only these perimeters and their descendants.
    pub within: Option<Vec<i64>>,
    pub ordering: Vec<SortKey>,
}

impl PerimeterFilter {
    /// Whether any user-facing filter is set (some endpoints change behaviour with filters).
    pub fn is_filtered(&self) -> bool {
        self.name.is_some()
            || self.source_value.is_some()
            || !self.type_source_value.is_empty()
            || !self.cohort_id.is_empty()
            || !self.parent_id.is_empty()
            || !self.local_id.is_empty()
            || self.search.is_some()
    }
}

/// An access with what it embeds.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRow {
    pub id: i64,
    pub profile_id: i64,
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub email: Option<String>,
    pub source: String,
    pub start_datetime: DateTime<Utc>,
    pub end_datetime: DateTime<Utc>,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub role: RoleView,
    pub perimeter: PerimeterRow,
    pub deleted: bool,
}

impl AccessRow {
    /// Valid at `now`: started, not ended, not deleted.
    pub fn is_valid(&self, now: DateTime<Utc>) -> bool {
        !self.deleted && self.start_datetime <= now && now <= self.end_datetime
    }

    /// The wire representation; `editable` only when the caller asked for it.
    pub fn to_json(&self, now: DateTime<Utc>, editable: Option<bool>) -> Value {
        let p = &self.perimeter;
        let mut v = json!({
            "id": self.id,
            "is_valid": self.is_valid(now),
            "profile": {
                "id": self.profile_id,
                "provider_id": self.username,
                "username": self.username,
                "email": self.email,
                "firstname": self.firstname,
                "lastname": self.lastname,
                "source": self.source,
            },
            "care_site": {
                "care_site_id": p.id,
                "care_site_name": p.name,
                "care_site_short_name": p.short_name,
                "care_site_type_source_value": p.type_source_value,
                "care_site_source_value": p.source_value,
            },
            "role": self.role,
            "role_id": self.role.id,
            "actual_start_datetime": self.start_datetime,
            "actual_end_datetime": self.end_datetime,
            "start_datetime": self.start_datetime,
            "end_datetime": self.end_datetime,
            "perimeter": p.full(),
            "perimeter_id": p.id,
            "profile_id": self.profile_id,
            "source": self.source,
            "created_by": self.created_by,
            "updated_by": self.updated_by,
        });
        if let (Some(editable), Some(obj)) = (editable, v.as_object_mut()) {
            obj.insert("editable".into(), Value::Bool(editable));
        }
        v
    }
}

/// `/accesses/accesses/` filters.
#[derive(Debug, Clone, Default)]
pub struct AccessFilter {
    pub source: Option<String>,
    pub role_id: Option<i64>,
    pub profile_id: Option<i64>,
    pub username: Option<String>,
    /// Only accesses on these perimeters…
    pub perimeter_ids: Option<Vec<i64>>,
    /// …or on these (ancestors), when their role has a right inherited by sub-perimeters.
    pub inherited_from: Vec<i64>,
    /// Only accesses on these perimeters or under them.
    pub within: Option<Vec<i64>>,
    /// Only accesses valid now.
    pub valid_only: bool,
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// A maintenance phase (`/maintenances/`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MaintenanceView {
    pub id: i64,
    pub subject: String,
    pub message: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub start_datetime: DateTime<Utc>,
    pub end_datetime: DateTime<Utc>,
    pub maintenance_start: DateTime<Utc>,
    pub maintenance_end: DateTime<Utc>,
    pub active: bool,
    pub insert_datetime: DateTime<Utc>,
    pub update_datetime: DateTime<Utc>,
}

impl MaintenanceView {
    /// The phase as the websocket hub announces it.
    pub fn notice(&self) -> domain::maintenance::MaintenanceNotice {
        domain::maintenance::MaintenanceNotice {
            id: self.id,
            subject: self.subject.clone(),
            message: self.message.clone(),
            kind: self.kind.clone(),
            maintenance_start: self.maintenance_start,
            maintenance_end: self.maintenance_end,
            active: self.active,
        }
    }
}

/// `/maintenances/` filters.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceFilter {
    pub subject: Option<String>,
    pub min_start_datetime: Option<DateTime<Utc>>,
    pub max_end_datetime: Option<DateTime<Utc>>,
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Queries of the identity read model.
#[async_trait]
pub trait IdentityReader: Send + Sync {
    /// What `username` may do at `now`: their valid accesses and the rights of their roles.
    async fn authority(&self, username: &str, now: DateTime<Utc>) -> Result<Authority, ReadError>;

    async fn user(&self, username: &str) -> Result<Option<UserView>, ReadError>;
    async fn list_users(
        &self,
        filter: &UserFilter,
        now: DateTime<Utc>,
        window: Window,
    ) -> Result<Page<UserView>, ReadError>;
    async fn list_profiles(
        &self,
        username: Option<&str>,
        search: Option<&str>,
        window: Window,
    ) -> Result<Page<ProfileView>, ReadError>;
    async fn profile(&self, id: i64) -> Result<Option<ProfileView>, ReadError>;
    /// The active Manual profile of a user (what accesses are granted to).
    async fn manual_profile(&self, username: &str) -> Result<Option<i64>, ReadError>;

    async fn role(&self, id: i64) -> Result<Option<RoleView>, ReadError>;
    async fn list_roles(
        &self,
        filter: &RoleFilter,
        window: Window,
    ) -> Result<Page<RoleView>, ReadError>;
    /// A live role other than `except` already called `name` (case-insensitive).
    async fn role_name_taken(&self, name: &str, except: Option<i64>) -> Result<bool, ReadError>;
    /// Whether any access (even ended or deleted) uses the role.
    async fn role_in_use(&self, id: i64) -> Result<bool, ReadError>;
    /// Users holding a valid access with the role: `(username, firstname, lastname, email,
    /// perimeter name, start, end)`.
    async fn role_holders(
        &self,
        id: i64,
        now: DateTime<Utc>,
        name: Option<&str>,
        descending: bool,
    ) -> Result<Vec<Value>, ReadError>;

    async fn perimeter(&self, id: i64) -> Result<Option<PerimeterRow>, ReadError>;
    async fn perimeters_by_ids(&self, ids: &[i64]) -> Result<Vec<PerimeterRow>, ReadError>;
    /// Perimeters whose `cohort_id` is one of `cohort_ids`.
    async fn perimeters_by_cohort_ids(
        &self,
        cohort_ids: &[String],
    ) -> Result<Vec<PerimeterRow>, ReadError>;
    async fn roots(&self) -> Result<Vec<PerimeterRow>, ReadError>;
    async fn list_perimeters(
        &self,
        filter: &PerimeterFilter,
        window: Window,
    ) -> Result<Page<PerimeterRow>, ReadError>;

    async fn access(&self, id: i64) -> Result<Option<AccessRow>, ReadError>;
    async fn list_accesses(
        &self,
        filter: &AccessFilter,
        now: DateTime<Utc>,
        window: Window,
    ) -> Result<Page<AccessRow>, ReadError>;

    async fn maintenance(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<MaintenanceView>, ReadError>;
    async fn list_maintenances(
        &self,
        filter: &MaintenanceFilter,
        now: DateTime<Utc>,
        window: Window,
    ) -> Result<Page<MaintenanceView>, ReadError>;
    /// The current phase (the one ending last if several), else the next one to start.
    async fn next_maintenance(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<MaintenanceView>, ReadError>;
}
