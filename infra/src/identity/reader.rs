//! Queries of the `identity` read model.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::authz::{Authority, Grant};
use domain::rights::{CATALOGUE, Rights};
use projections::identity::{
    AccessFilter, AccessRow, IdentityReader, MaintenanceFilter, MaintenanceView, PerimeterFilter,
    PerimeterRow, ProfileView, RoleFilter, RoleView, UserFilter, UserView, display_name,
};
use projections::{Page, ReadError, Window};
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use crate::sql::{contains_pattern, push_contains_any, push_order_by, push_window, read_error};

/// Reads the identity schema.
#[derive(Debug, Clone)]
pub struct PgIdentity {
    pool: PgPool,
}

impl PgIdentity {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// A `SELECT` whose rows are counted, then paged.
async fn paged<T, F>(
    pool: &PgPool,
    select: &str,
    build_where: F,
    order: (&[projections::SortKey], &str, &str),
    window: Window,
    decode: impl Fn(&sqlx::postgres::PgRow) -> Result<T, sqlx::Error>,
) -> Result<Page<T>, ReadError>
where
    F: Fn(&mut QueryBuilder<'_, Postgres>),
{
    let mut count = QueryBuilder::new("SELECT count(*) FROM (");
    count.push(select);
    build_where(&mut count);
    count.push(") AS matching");
    let total: i64 = count
        .build_query_scalar()
        .fetch_one(pool)
        .await
        .map_err(read_error)?;
    if window.limit == 0 || total == 0 {
        return Ok(Page {
            count: total,
            results: Vec::new(),
        });
    }
    let mut qb = QueryBuilder::new(select);
    build_where(&mut qb);
    push_order_by(&mut qb, order.0, order.1, order.2);
    push_window(&mut qb, window);
    let results = all(pool, qb, decode).await?;
    Ok(Page {
        count: total,
        results,
    })
}

/// Runs a built query and decodes its only row, if any.
async fn optional<T>(
    pool: &PgPool,
    mut qb: QueryBuilder<'_, Postgres>,
    decode: impl Fn(&sqlx::postgres::PgRow) -> Result<T, sqlx::Error>,
) -> Result<Option<T>, ReadError> {
    let row = qb.build().fetch_optional(pool).await.map_err(read_error)?;
    row.as_ref().map(decode).transpose().map_err(read_error)
}

/// Runs a built query and decodes every row.
async fn all<T>(
    pool: &PgPool,
    mut qb: QueryBuilder<'_, Postgres>,
    decode: impl Fn(&sqlx::postgres::PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, ReadError> {
    let rows = qb.build().fetch_all(pool).await.map_err(read_error)?;
    rows.iter()
        .map(decode)
        .collect::<Result<_, _>>()
        .map_err(read_error)
}

const USER_SELECT: &str = "SELECT u.username, u.firstname, u.lastname, u.email, u.created_by,
        u.updated_by, u.last_login
   FROM identity.users u WHERE true";

fn user_row(r: &sqlx::postgres::PgRow) -> Result<UserView, sqlx::Error> {
    let username: String = r.try_get("username")?;
    let firstname: String = r.try_get("firstname")?;
    let lastname: String = r.try_get("lastname")?;
    Ok(UserView {
        display_name: display_name(&firstname, &lastname, &username),
        username,
        firstname,
        lastname,
        email: r.try_get("email")?,
        created_by: r.try_get("created_by")?,
        updated_by: r.try_get("updated_by")?,
        last_login: r.try_get("last_login")?,
    })
}

fn role_view(id: i64, name: String, rights: Rights) -> RoleView {
    RoleView {
        id,
        name,
        help_text: rights.help_text(),
        rights,
    }
}

const ROLE_SELECT: &str = "SELECT id, name, rights FROM identity.roles WHERE deleted_at IS NULL";

fn role_row(r: &sqlx::postgres::PgRow) -> Result<RoleView, sqlx::Error> {
    let rights: Json<Rights> = r.try_get("rights")?;
    Ok(role_view(r.try_get("id")?, r.try_get("name")?, rights.0))
}

/// The direct children of perimeter `p`, as an array (an expression of the selects below).
macro_rules! children_of_p {
    () => {
        "COALESCE((SELECT array_agg(c.id ORDER BY c.id) FROM identity.perimeters c
                   WHERE c.parent_id = p.id AND c.removed_at IS NULL), '{}') AS children"
    };
}

/// Perimeter `p`'s `cohort_size`: the clinical store's patients under it (its subtree included,
/// counted at each data load into `clinical.perimeter_sizes`), else the size its import file
/// gave. (The one read of the clinical schema here: the perimeter picker shows it.)
macro_rules! cohort_size_of_p {
    () => {
        "COALESCE((SELECT s.patients::text FROM clinical.perimeter_sizes s WHERE s.perimeter_id = p.id),
                  p.cohort_size) AS cohort_size"
    };
}

const PERIMETER_SELECT: &str = concat!(
    "SELECT p.id, p.local_id, p.name, p.short_name, p.source_value,
        p.type_source_value, p.parent_id, p.level, p.ancestors, p.full_path, p.cohort_id, ",
    cohort_size_of_p!(),
    ", ",
    children_of_p!(),
    " FROM identity.perimeters p WHERE p.removed_at IS NULL"
);

fn perimeter_row(r: &sqlx::postgres::PgRow) -> Result<PerimeterRow, sqlx::Error> {
    perimeter_columns(r, "id")
}

/// A perimeter from its columns; `id_column` names its id (other tables may own `id`).
fn perimeter_columns(
    r: &sqlx::postgres::PgRow,
    id_column: &str,
) -> Result<PerimeterRow, sqlx::Error> {
    Ok(PerimeterRow {
        id: r.try_get(id_column)?,
        local_id: r.try_get("local_id")?,
        name: r.try_get("name")?,
        short_name: r.try_get("short_name")?,
        source_value: r.try_get("source_value")?,
        type_source_value: r.try_get("type_source_value")?,
        parent_id: r.try_get("parent_id")?,
        level: r.try_get("level")?,
        ancestors: r.try_get("ancestors")?,
        children: r.try_get("children")?,
        full_path: r.try_get("full_path")?,
        cohort_id: r.try_get("cohort_id")?,
        cohort_size: r.try_get("cohort_size")?,
    })
}

/// Filters of a perimeter list; `subtrees` are the `id_path`s of [`PerimeterFilter::within`].
fn push_perimeter_where(
    qb: &mut QueryBuilder<'_, Postgres>,
    f: &PerimeterFilter,
    subtrees: Option<&[String]>,
) {
    if let Some(name) = &f.name {
        qb.push(" AND p.name ILIKE ")
            .push_bind(contains_pattern(name));
    }
    if let Some(sv) = &f.source_value {
        qb.push(" AND p.source_value ILIKE ")
            .push_bind(contains_pattern(sv));
    }
    if !f.type_source_value.is_empty() {
        qb.push(" AND p.type_source_value = ANY(")
            .push_bind(f.type_source_value.clone())
            .push(")");
    }
    if !f.cohort_id.is_empty() {
        qb.push(" AND p.cohort_id = ANY(")
            .push_bind(f.cohort_id.clone())
            .push(")");
    }
    if !f.parent_id.is_empty() {
        qb.push(" AND p.parent_id = ANY(")
            .push_bind(f.parent_id.clone())
            .push(")");
    }
    if !f.local_id.is_empty() {
        qb.push(" AND p.local_id = ANY(")
            .push_bind(f.local_id.clone())
            .push(")");
    }
    if let Some(ids) = &f.ids {
        qb.push(" AND p.id = ANY(").push_bind(ids.clone()).push(")");
    }
    if let Some(prefixes) = subtrees {
        // One index range per subtree (see the `id_path` migration).
        qb.push(" AND (false");
        for prefix in prefixes {
            qb.push(" OR p.id_path LIKE ")
                .push_bind(format!("{prefix}%"));
        }
        qb.push(")");
    }
    if let Some(search) = &f.search {
        push_contains_any(qb, search, &["p.name", "p.source_value", "p.short_name"]);
    }
}

const ACCESS_SELECT: &str = concat!(
    "SELECT a.id AS access_id, a.profile_id, a.username, a.source, a.start_datetime,
        a.end_datetime, a.created_by, a.updated_by, a.deleted_at IS NOT NULL AS deleted,
        COALESCE(u.firstname, '') AS firstname, COALESCE(u.lastname, '') AS lastname, u.email,
        r.id AS role_id, COALESCE(r.name, '') AS role_name,
        COALESCE(r.rights, '{}'::jsonb) AS role_rights,
        p.id AS perimeter_id, p.local_id, p.name, p.short_name, p.source_value, p.type_source_value,
        p.parent_id, p.level, p.ancestors, p.full_path, p.cohort_id, ",
    cohort_size_of_p!(),
    ", ",
    children_of_p!(),
    " FROM identity.accesses a
   JOIN identity.perimeters p ON p.id = a.perimeter_id
   LEFT JOIN identity.users u ON u.username = a.username
   LEFT JOIN identity.roles r ON r.id = a.role_id
  WHERE true"
);

fn access_row(r: &sqlx::postgres::PgRow) -> Result<AccessRow, sqlx::Error> {
    let rights: Json<Rights> = r.try_get("role_rights")?;
    Ok(AccessRow {
        id: r.try_get("access_id")?,
        profile_id: r.try_get("profile_id")?,
        username: r.try_get("username")?,
        firstname: r.try_get("firstname")?,
        lastname: r.try_get("lastname")?,
        email: r.try_get("email")?,
        source: r.try_get("source")?,
        start_datetime: r.try_get("start_datetime")?,
        end_datetime: r.try_get("end_datetime")?,
        created_by: r.try_get("created_by")?,
        updated_by: r.try_get("updated_by")?,
        deleted: r.try_get("deleted")?,
        role: role_view(r.try_get("role_id")?, r.try_get("role_name")?, rights.0),
        perimeter: perimeter_columns(r, "perimeter_id")?,
    })
}

const MAINTENANCE_SELECT: &str = "SELECT id, subject, message, type, start_datetime,
        end_datetime, created_at, updated_at FROM identity.maintenances WHERE deleted_at IS NULL";

fn maintenance_row(
    r: &sqlx::postgres::PgRow,
    now: DateTime<Utc>,
) -> Result<MaintenanceView, sqlx::Error> {
    let start: DateTime<Utc> = r.try_get("start_datetime")?;
    let end: DateTime<Utc> = r.try_get("end_datetime")?;
    Ok(MaintenanceView {
        id: r.try_get("id")?,
        subject: r.try_get("subject")?,
        message: r.try_get("message")?,
        kind: r.try_get("type")?,
        start_datetime: start,
        end_datetime: end,
        maintenance_start: start,
        maintenance_end: end,
        active: start < now && now < end,
        insert_datetime: r.try_get("created_at")?,
        update_datetime: r.try_get("updated_at")?,
    })
}

const PROFILE_SELECT: &str = "SELECT pr.id, pr.source, pr.is_active, pr.username,
        u.firstname, u.lastname, u.email
   FROM identity.profiles pr JOIN identity.users u ON u.username = pr.username WHERE true";

fn profile_row(r: &sqlx::postgres::PgRow) -> Result<ProfileView, sqlx::Error> {
    let username: String = r.try_get("username")?;
    let firstname: String = r.try_get("firstname")?;
    let lastname: String = r.try_get("lastname")?;
    Ok(ProfileView {
        id: r.try_get("id")?,
        source: r.try_get("source")?,
        is_active: r.try_get("is_active")?,
        provider_name: display_name(&firstname, &lastname, &username),
        user_id: username.clone(),
        provider_id: username,
        firstname,
        lastname,
        email: r.try_get("email")?,
    })
}

#[async_trait]
impl IdentityReader for PgIdentity {
    async fn authority(&self, username: &str, now: DateTime<Utc>) -> Result<Authority, ReadError> {
        let rows = sqlx::query(
            "SELECT a.perimeter_id, p.ancestors, r.rights
               FROM identity.accesses a
               JOIN identity.roles r ON r.id = a.role_id AND r.deleted_at IS NULL
               JOIN identity.perimeters p ON p.id = a.perimeter_id AND p.removed_at IS NULL
               JOIN identity.profiles pr ON pr.id = a.profile_id AND pr.is_active
              WHERE a.username = $1 AND a.deleted_at IS NULL
                AND a.start_datetime <= $2 AND a.end_datetime >= $2",
        )
        .bind(username)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        let grants = rows
            .iter()
            .map(|r| {
                let rights: Json<Rights> = r.try_get("rights")?;
                Ok(Grant {
                    perimeter_id: r.try_get("perimeter_id")?,
                    perimeter_ancestors: r.try_get("ancestors")?,
                    rights: rights.0,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(read_error)?;
        Ok(Authority::new(grants))
    }

    async fn user(&self, username: &str) -> Result<Option<UserView>, ReadError> {
        let mut qb = QueryBuilder::new(USER_SELECT);
        qb.push(" AND u.username = ").push_bind(username);
        optional(&self.pool, qb, user_row).await
    }

    async fn list_users(
        &self,
        f: &UserFilter,
        now: DateTime<Utc>,
        window: Window,
    ) -> Result<Page<UserView>, ReadError> {
        let build = |qb: &mut QueryBuilder<'_, Postgres>| {
            for (column, value) in [
                ("u.username", &f.username),
                ("u.firstname", &f.firstname),
                ("u.lastname", &f.lastname),
                ("u.email", &f.email),
            ] {
                if let Some(v) = value {
                    qb.push(format!(" AND {column} ILIKE "))
                        .push_bind(contains_pattern(v));
                }
            }
            if f.manual_only {
                qb.push(
                    " AND EXISTS (SELECT 1 FROM identity.profiles pr
                                   WHERE pr.username = u.username AND pr.source = 'Manual')",
                );
            }
            if f.with_access {
                qb.push(
                    " AND EXISTS (SELECT 1 FROM identity.accesses a
                        JOIN identity.profiles pr ON pr.id = a.profile_id AND pr.is_active
                       WHERE a.username = u.username AND a.deleted_at IS NULL
                         AND a.start_datetime <= ",
                )
                .push_bind(now)
                .push(" AND a.end_datetime >= ")
                .push_bind(now)
                .push(")");
            }
            if let Some(search) = &f.search {
                push_contains_any(
                    qb,
                    search,
                    &["u.username", "u.firstname", "u.lastname", "u.email"],
                );
            }
        };
        paged(
            &self.pool,
            USER_SELECT,
            build,
            (&f.ordering, "u.lastname, u.firstname", "u.username"),
            window,
            user_row,
        )
        .await
    }

    async fn list_profiles(
        &self,
        username: Option<&str>,
        search: Option<&str>,
        window: Window,
    ) -> Result<Page<ProfileView>, ReadError> {
        let build = |qb: &mut QueryBuilder<'_, Postgres>| {
            if let Some(u) = username {
                qb.push(" AND pr.username = ").push_bind(u.to_string());
            }
            if let Some(s) = search {
                push_contains_any(qb, s, &["pr.username", "u.firstname", "u.lastname"]);
            }
        };
        paged(
            &self.pool,
            PROFILE_SELECT,
            build,
            (&[], "pr.id", "pr.id"),
            window,
            profile_row,
        )
        .await
    }

    async fn profile(&self, id: i64) -> Result<Option<ProfileView>, ReadError> {
        let mut qb = QueryBuilder::new(PROFILE_SELECT);
        qb.push(" AND pr.id = ").push_bind(id);
        optional(&self.pool, qb, profile_row).await
    }

    async fn manual_profile(&self, username: &str) -> Result<Option<i64>, ReadError> {
        sqlx::query_scalar(
            "SELECT id FROM identity.profiles
              WHERE username = $1 AND source = 'Manual' AND is_active ORDER BY id LIMIT 1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)
    }

    async fn role(&self, id: i64) -> Result<Option<RoleView>, ReadError> {
        let mut qb = QueryBuilder::new(ROLE_SELECT);
        qb.push(" AND id = ").push_bind(id);
        optional(&self.pool, qb, role_row).await
    }

    async fn list_roles(
        &self,
        f: &RoleFilter,
        window: Window,
    ) -> Result<Page<RoleView>, ReadError> {
        let build = |qb: &mut QueryBuilder<'_, Postgres>| {
            if let Some(name) = &f.name {
                qb.push(" AND name ILIKE ")
                    .push_bind(contains_pattern(name));
            }
            for (right, value) in &f.rights {
                // `right` comes from the catalogue, never from the client.
                qb.push(format!(
                    " AND COALESCE((rights->>'{right}')::boolean, false) = "
                ))
                .push_bind(*value);
            }
        };
        paged(
            &self.pool,
            ROLE_SELECT,
            build,
            (&f.ordering, "name", "id"),
            window,
            role_row,
        )
        .await
    }

    async fn role_name_taken(&self, name: &str, except: Option<i64>) -> Result<bool, ReadError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM identity.roles
                             WHERE deleted_at IS NULL AND lower(name) = lower($1)
                               AND id IS DISTINCT FROM $2)",
        )
        .bind(name)
        .bind(except)
        .fetch_one(&self.pool)
        .await
        .map_err(read_error)
    }

    async fn role_in_use(&self, id: i64) -> Result<bool, ReadError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM identity.accesses WHERE role_id = $1)")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(read_error)
    }

    async fn role_holders(
        &self,
        id: i64,
        now: DateTime<Utc>,
        name: Option<&str>,
        descending: bool,
    ) -> Result<Vec<Value>, ReadError> {
        let mut qb = QueryBuilder::new(
            "SELECT a.username, u.firstname, u.lastname, u.email, p.name AS perimeter,
                    a.start_datetime, a.end_datetime
               FROM identity.accesses a
               JOIN identity.users u ON u.username = a.username
               JOIN identity.perimeters p ON p.id = a.perimeter_id
              WHERE a.deleted_at IS NULL AND a.role_id = ",
        );
        qb.push_bind(id)
            .push(" AND a.start_datetime <= ")
            .push_bind(now)
            .push(" AND a.end_datetime >= ")
            .push_bind(now);
        if let Some(name) = name {
            push_contains_any(&mut qb, name, &["u.firstname", "u.lastname", "a.username"]);
        }
        qb.push(if descending {
            " ORDER BY u.lastname DESC, a.id"
        } else {
            " ORDER BY u.lastname ASC, a.id"
        });
        let rows = qb.build().fetch_all(&self.pool).await.map_err(read_error)?;
        rows.iter()
            .map(|r| {
                Ok(json!({
                    "provider_username": r.try_get::<String, _>("username")?,
                    "firstname": r.try_get::<String, _>("firstname")?,
                    "lastname": r.try_get::<String, _>("lastname")?,
                    "email": r.try_get::<Option<String>, _>("email")?,
                    "perimeter": r.try_get::<String, _>("perimeter")?,
                    "start_datetime": r.try_get::<DateTime<Utc>, _>("start_datetime")?,
                    "end_datetime": r.try_get::<DateTime<Utc>, _>("end_datetime")?,
                }))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(read_error)
    }

    async fn perimeter(&self, id: i64) -> Result<Option<PerimeterRow>, ReadError> {
        Ok(self.perimeters_by_ids(&[id]).await?.into_iter().next())
    }

    async fn perimeters_by_ids(&self, ids: &[i64]) -> Result<Vec<PerimeterRow>, ReadError> {
        let mut qb = QueryBuilder::new(PERIMETER_SELECT);
        qb.push(" AND p.id = ANY(")
            .push_bind(ids.to_vec())
            .push(") ORDER BY p.full_path, p.id");
        all(&self.pool, qb, perimeter_row).await
    }

    async fn perimeters_by_cohort_ids(
        &self,
        cohort_ids: &[String],
    ) -> Result<Vec<PerimeterRow>, ReadError> {
        let mut qb = QueryBuilder::new(PERIMETER_SELECT);
        qb.push(" AND p.cohort_id = ANY(")
            .push_bind(cohort_ids.to_vec())
            .push(") ORDER BY p.id");
        all(&self.pool, qb, perimeter_row).await
    }

    async fn roots(&self) -> Result<Vec<PerimeterRow>, ReadError> {
        let mut qb = QueryBuilder::new(PERIMETER_SELECT);
        qb.push(" AND p.parent_id IS NULL ORDER BY p.id");
        all(&self.pool, qb, perimeter_row).await
    }

    async fn list_perimeters(
        &self,
        f: &PerimeterFilter,
        window: Window,
    ) -> Result<Page<PerimeterRow>, ReadError> {
        let subtrees: Option<Vec<String>> = match &f.within {
            Some(ids) => Some(
                sqlx::query_scalar(
                    "SELECT id_path FROM identity.perimeters
                      WHERE id = ANY($1) AND removed_at IS NULL",
                )
                .bind(ids)
                .fetch_all(&self.pool)
                .await
                .map_err(read_error)?,
            ),
            None => None,
        };
        paged(
            &self.pool,
            PERIMETER_SELECT,
            |qb| push_perimeter_where(qb, f, subtrees.as_deref()),
            (&f.ordering, "p.full_path", "p.id"),
            window,
            perimeter_row,
        )
        .await
    }

    async fn access(&self, id: i64) -> Result<Option<AccessRow>, ReadError> {
        let mut qb = QueryBuilder::new(ACCESS_SELECT);
        qb.push(" AND a.deleted_at IS NULL AND a.id = ")
            .push_bind(id);
        optional(&self.pool, qb, access_row).await
    }

    async fn list_accesses(
        &self,
        f: &AccessFilter,
        now: DateTime<Utc>,
        window: Window,
    ) -> Result<Page<AccessRow>, ReadError> {
        let build = |qb: &mut QueryBuilder<'_, Postgres>| {
            qb.push(" AND a.deleted_at IS NULL");
            if let Some(source) = &f.source {
                qb.push(" AND a.source = ").push_bind(source.clone());
            }
            if let Some(role) = f.role_id {
                qb.push(" AND a.role_id = ").push_bind(role);
            }
            if let Some(profile) = f.profile_id {
                qb.push(" AND a.profile_id = ").push_bind(profile);
            }
            if let Some(username) = &f.username {
                qb.push(" AND a.username = ").push_bind(username.clone());
            }
            if let Some(ids) = &f.perimeter_ids {
                qb.push(" AND (a.perimeter_id = ANY(")
                    .push_bind(ids.clone())
                    .push(")");
                if !f.inherited_from.is_empty() {
                    // Right names come from the catalogue, never from the client.
                    let inherited: Vec<String> = CATALOGUE
                        .iter()
                        .filter(|r| r.impact_inferior_levels)
                        .map(|r| format!("COALESCE((r.rights->>'{}')::boolean, false)", r.name))
                        .collect();
                    qb.push(" OR (a.perimeter_id = ANY(")
                        .push_bind(f.inherited_from.clone())
                        .push(format!(") AND ({}))", inherited.join(" OR ")));
                }
                qb.push(")");
            }
            if let Some(within) = &f.within {
                qb.push(" AND (p.id = ANY(")
                    .push_bind(within.clone())
                    .push(") OR p.ancestors && ")
                    .push_bind(within.clone())
                    .push(")");
            }
            if f.valid_only {
                qb.push(" AND a.start_datetime <= ")
                    .push_bind(now)
                    .push(" AND a.end_datetime >= ")
                    .push_bind(now);
            }
            if let Some(search) = &f.search {
                push_contains_any(
                    qb,
                    search,
                    &[
                        "a.username",
                        "u.firstname",
                        "u.lastname",
                        "u.email",
                        "r.name",
                        "p.name",
                    ],
                );
            }
        };
        paged(
            &self.pool,
            ACCESS_SELECT,
            build,
            (&f.ordering, "a.start_datetime DESC", "a.id"),
            window,
            access_row,
        )
        .await
    }

    async fn maintenance(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<MaintenanceView>, ReadError> {
        let mut qb = QueryBuilder::new(MAINTENANCE_SELECT);
        qb.push(" AND id = ").push_bind(id);
        optional(&self.pool, qb, |r| maintenance_row(r, now)).await
    }

    async fn list_maintenances(
        &self,
        f: &MaintenanceFilter,
        now: DateTime<Utc>,
        window: Window,
    ) -> Result<Page<MaintenanceView>, ReadError> {
        let build = |qb: &mut QueryBuilder<'_, Postgres>| {
            if let Some(subject) = &f.subject {
                qb.push(" AND subject ILIKE ")
                    .push_bind(contains_pattern(subject));
            }
            if let Some(min) = f.min_start_datetime {
                qb.push(" AND start_datetime >= ").push_bind(min);
            }
            if let Some(max) = f.max_end_datetime {
                qb.push(" AND end_datetime <= ").push_bind(max);
            }
            if let Some(search) = &f.search {
                qb.push(" AND subject ~* ").push_bind(search.clone());
            }
        };
        paged(
            &self.pool,
            MAINTENANCE_SELECT,
            build,
            (&f.ordering, "start_datetime DESC", "id"),
            window,
            |r| maintenance_row(r, now),
        )
        .await
    }

    async fn next_maintenance(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<MaintenanceView>, ReadError> {
        // Active first (ending last), else the earliest upcoming.
        let mut qb = QueryBuilder::new(MAINTENANCE_SELECT);
        qb.push(" AND end_datetime > ")
            .push_bind(now)
            .push(" ORDER BY (start_datetime < ")
            .push_bind(now)
            .push(") DESC, CASE WHEN start_datetime < ")
            .push_bind(now)
            .push(" THEN end_datetime END DESC, start_datetime ASC, id LIMIT 1");
        optional(&self.pool, qb, |r| maintenance_row(r, now)).await
    }
}

fn port_error(e: sqlx::Error) -> commands::ports::PortError {
    commands::ports::PortError(e.to_string())
}

#[async_trait]
impl commands::identity::IdentityDirectory for PgIdentity {
    async fn next_id(
        &self,
        kind: commands::identity::IdKind,
    ) -> Result<i64, commands::ports::PortError> {
        super::next_id(&self.pool, kind).await.map_err(port_error)
    }

    async fn perimeter_ancestors(
        &self,
        id: i64,
    ) -> Result<Option<Vec<i64>>, commands::ports::PortError> {
        sqlx::query_scalar(
            "SELECT ancestors FROM identity.perimeters WHERE id = $1 AND removed_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn profile_owner(
        &self,
        profile_id: i64,
    ) -> Result<Option<String>, commands::ports::PortError> {
        sqlx::query_scalar("SELECT username FROM identity.profiles WHERE id = $1 AND is_active")
            .bind(profile_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(port_error)
    }

    async fn role_name_taken(
        &self,
        name: &str,
        except: Option<i64>,
    ) -> Result<bool, commands::ports::PortError> {
        IdentityReader::role_name_taken(self, name, except)
            .await
            .map_err(|e| commands::ports::PortError(e.to_string()))
    }

    async fn role_in_use(&self, id: i64) -> Result<bool, commands::ports::PortError> {
        IdentityReader::role_in_use(self, id)
            .await
            .map_err(|e| commands::ports::PortError(e.to_string()))
    }

    async fn live_perimeter_ids(&self) -> Result<Vec<i64>, commands::ports::PortError> {
        sqlx::query_scalar("SELECT id FROM identity.perimeters WHERE removed_at IS NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(port_error)
    }

    async fn accesses_ending_on(
        &self,
        day: chrono::NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Vec<commands::alerts::ExpiringAccess>, commands::ports::PortError> {
        let rows = sqlx::query(
            "SELECT a.id, a.username, a.end_datetime, p.name AS perimeter,
                    COALESCE(r.name, '') AS role, u.firstname, u.lastname, u.email
               FROM identity.accesses a
               JOIN identity.users u ON u.username = a.username
               JOIN identity.perimeters p ON p.id = a.perimeter_id
               JOIN identity.profiles pr ON pr.id = a.profile_id AND pr.is_active
               LEFT JOIN identity.roles r ON r.id = a.role_id
              WHERE a.deleted_at IS NULL AND a.start_datetime <= $2 AND a.end_datetime >= $2
                AND (a.end_datetime AT TIME ZONE 'UTC')::date = $1
              ORDER BY a.username, a.id",
        )
        .bind(day)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        rows.iter()
            .map(|r| {
                Ok(commands::alerts::ExpiringAccess {
                    access_id: r.try_get("id")?,
                    username: r.try_get("username")?,
                    firstname: r.try_get("firstname")?,
                    lastname: r.try_get("lastname")?,
                    email: r.try_get("email")?,
                    perimeter: r.try_get("perimeter")?,
                    role: r.try_get("role")?,
                    end: r.try_get("end_datetime")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(port_error)
    }

    async fn open_accesses_on(
        &self,
        perimeter_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, commands::ports::PortError> {
        sqlx::query_scalar(
            "SELECT id FROM identity.accesses
              WHERE perimeter_id = ANY($1) AND deleted_at IS NULL AND end_datetime > $2",
        )
        .bind(perimeter_ids)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)
    }

    async fn token_holder(
        &self,
        username: &str,
        session: Option<uuid::Uuid>,
    ) -> Result<commands::token_check::HolderRecord, commands::ports::PortError> {
        use commands::token_check::{HolderRecord, SessionRecord};
        // One round trip: the user's standing and the session's.
        let (user_active, holder, ended): (bool, Option<String>, Option<bool>) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM identity.profiles WHERE username = $1 AND is_active),
                    s.username, s.ended_at IS NOT NULL
               FROM (SELECT 1) one
               LEFT JOIN identity.sessions s ON s.id = $2",
        )
        .bind(username)
        .bind(session)
        .fetch_one(&self.pool)
        .await
        .map_err(port_error)?;
        let session = session.map(|_| match (holder, ended) {
            (Some(username), Some(false)) => SessionRecord::Open { username },
            (Some(_), _) => SessionRecord::Ended,
            (None, _) => SessionRecord::Unknown,
        });
        Ok(HolderRecord {
            user_active,
            session,
        })
    }
}
