//! Folds user, login session, role, perimeter, access and maintenance events into the
//! `identity` schema.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::access::{Access, AccessEvent};
use domain::maintenance::{MaintenanceEvent, MaintenanceFields, MaintenancePhase};
use domain::perimeter::{Perimeter, PerimeterEvent, PerimeterFields};
use domain::role::{Role, RoleEvent};
use domain::session::{Session, SessionEvent};
use domain::user::{User, UserEvent};
use sqlx::PgConnection;

use crate::log::CommittedEvent;
use crate::projector::{Projection, ProjectionError, actor, aggregate_int, aggregate_uuid, decode};

/// Name of the identity projection (and of its schema).
pub const PROJECTION: &str = "identity";

/// The identity projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityProjection;

#[async_trait]
impl Projection for IdentityProjection {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        [
            User::TYPE,
            Session::TYPE,
            Role::TYPE,
            Perimeter::TYPE,
            Access::TYPE,
            MaintenancePhase::TYPE,
        ]
        .contains(&aggregate_type)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &CommittedEvent,
    ) -> Result<(), ProjectionError> {
        let by = actor(event);
        match event.aggregate_type.as_str() {
            User::TYPE => apply_user(conn, &event.aggregate_id, by, decode(event)?).await,
            Session::TYPE => apply_session(conn, aggregate_uuid(event)?, decode(event)?).await,
            Role::TYPE => apply_role(conn, aggregate_int(event)?, decode(event)?).await,
            Perimeter::TYPE => apply_perimeter(conn, aggregate_int(event)?, decode(event)?).await,
            Access::TYPE => apply_access(conn, aggregate_int(event)?, by, decode(event)?).await,
            MaintenancePhase::TYPE => {
                apply_maintenance(conn, aggregate_int(event)?, decode(event)?).await
            }
            _ => Ok(()),
        }
    }

    /// Runs of perimeter creations (a tree import) go in one statement per tree level: a run
    /// is cut before a perimeter whose parent it created, so every parent row exists before the
    /// statement that derives its children's paths. Everything else one by one.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&CommittedEvent],
    ) -> Result<(), ProjectionError> {
        let mut run: Vec<(PerimeterFields, DateTime<Utc>)> = Vec::new();
        let mut in_run = std::collections::HashSet::new();
        for event in events {
            let created = if event.aggregate_type == Perimeter::TYPE
                && event.event_type == "PerimeterCreated"
            {
                match decode(event)? {
                    PerimeterEvent::PerimeterCreated { fields, at } => Some((fields, at)),
                    _ => None,
                }
            } else {
                None
            };
            match created {
                Some((fields, at)) => {
                    if fields.parent_id.is_some_and(|p| in_run.contains(&p)) {
                        insert_perimeters(conn, std::mem::take(&mut run)).await?;
                        in_run.clear();
                    }
                    in_run.insert(fields.id);
                    run.push((fields, at));
                }
                None => {
                    insert_perimeters(conn, std::mem::take(&mut run)).await?;
                    in_run.clear();
                    self.apply(conn, event).await?;
                }
            }
        }
        insert_perimeters(conn, run).await
    }
}

/// A perimeter row written again: every field from the new row, and back from removal.
macro_rules! perimeter_refresh {
    () => {
        " ON CONFLICT (id) DO UPDATE SET
             local_id = EXCLUDED.local_id, name = EXCLUDED.name,
             short_name = EXCLUDED.short_name, source_value = EXCLUDED.source_value,
             type_source_value = EXCLUDED.type_source_value, parent_id = EXCLUDED.parent_id,
             level = EXCLUDED.level, ancestors = EXCLUDED.ancestors,
             full_path = EXCLUDED.full_path, id_path = EXCLUDED.id_path,
             cohort_id = EXCLUDED.cohort_id, cohort_size = EXCLUDED.cohort_size,
             updated_at = EXCLUDED.updated_at, removed_at = NULL "
    };
}

/// Creates perimeters whose parents exist (or which have none), as [`upsert_perimeter`] would
/// one by one. A created perimeter has no row yet, hence no subtree to move.
async fn insert_perimeters(
    conn: &mut PgConnection,
    run: Vec<(PerimeterFields, DateTime<Utc>)>,
) -> Result<(), ProjectionError> {
    match run.len() {
        0 => return Ok(()),
        1 => {
            let (fields, at) = run.into_iter().next().expect("one perimeter");
            return upsert_perimeter(conn, fields, at).await;
        }
        _ => {}
    }
    let mut ids = Vec::with_capacity(run.len());
    let (mut local_ids, mut names, mut short_names) = (vec![], vec![], vec![]);
    let (mut sources, mut types, mut parents) = (vec![], vec![], vec![]);
    let (mut cohort_ids, mut cohort_sizes, mut ats) = (vec![], vec![], vec![]);
    for (f, at) in run {
        ids.push(f.id);
        local_ids.push(f.local_id);
        names.push(f.name);
        short_names.push(f.short_name);
        sources.push(f.source_value);
        types.push(f.type_source_value);
        parents.push(f.parent_id);
        cohort_ids.push(f.cohort_id);
        cohort_sizes.push(f.cohort_size);
        ats.push(at);
    }
    sqlx::query(concat!(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::bigint[], $8::text[], $9::text[],
                                  $10::timestamptz[])
                    AS t(id, local_id, name, short_name, source_value, type_source_value,
                         parent_id, cohort_id, cohort_size, at)),
         node AS (
             SELECT i.*,
                    COALESCE(p.ancestors || p.id, '{}'::bigint[]) AS ancestors,
                    COALESCE(p.full_path || '/', '') || i.source_value || '-' || i.name AS full_path,
                    COALESCE(p.id_path, '/') || i.id || '/' AS id_path
               FROM input i LEFT JOIN perimeters p ON p.id = i.parent_id)
         INSERT INTO perimeters (id, local_id, name, short_name, source_value, type_source_value,
                                 parent_id, level, ancestors, full_path, id_path, cohort_id,
                                 cohort_size, created_at, updated_at)
         SELECT id, local_id, name, short_name, source_value, type_source_value, parent_id,
                cardinality(ancestors) + 1, ancestors, full_path, id_path, cohort_id,
                cohort_size, at, at
           FROM node
         ",
        perimeter_refresh!()
    ))
    .bind(ids)
    .bind(local_ids)
    .bind(names)
    .bind(short_names)
    .bind(sources)
    .bind(types)
    .bind(parents)
    .bind(cohort_ids)
    .bind(cohort_sizes)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_user(
    conn: &mut PgConnection,
    username: &str,
    by: Option<String>,
    event: UserEvent,
) -> Result<(), ProjectionError> {
    match event {
        UserEvent::UserCreated {
            firstname,
            lastname,
            email,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO users (username, firstname, lastname, email, created_by, updated_by,
                                    created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $6) ON CONFLICT (username) DO NOTHING",
            )
            .bind(username)
            .bind(firstname)
            .bind(lastname)
            .bind(email)
            .bind(by)
            .bind(at)
            .execute(conn)
            .await?;
        }
        UserEvent::UserProfileAdded {
            profile_id,
            source,
            at,
        } => {
            sqlx::query(
                "INSERT INTO profiles (id, username, source, is_active, created_at)
                 VALUES ($1, $2, $3, true, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(profile_id)
            .bind(username)
            .bind(source)
            .bind(at)
            .execute(conn)
            .await?;
        }
        UserEvent::UserDetailsChanged {
            firstname,
            lastname,
            email,
            at,
        } => {
            sqlx::query(
                "UPDATE users SET firstname = $2, lastname = $3, email = $4, updated_by = $5,
                                  updated_at = $6
                  WHERE username = $1",
            )
            .bind(username)
            .bind(firstname)
            .bind(lastname)
            .bind(email)
            .bind(by)
            .bind(at)
            .execute(conn)
            .await?;
        }
        // The hash stays in the event store: no read model holds credentials.
        UserEvent::UserPasswordHashSet { .. } => {}
        UserEvent::UserLoggedIn { at, .. } => {
            sqlx::query("UPDATE users SET last_login = $2 WHERE username = $1")
                .bind(username)
                .bind(at)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// A session row per login; `last_login` of its user follows the sessions opened.
async fn apply_session(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    event: SessionEvent,
) -> Result<(), ProjectionError> {
    match event {
        SessionEvent::SessionOpened {
            username,
            method,
            at,
        } => {
            sqlx::query(
                "INSERT INTO sessions (id, username, method, opened_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(&username)
            .bind(method)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE users SET last_login = GREATEST(last_login, $2) WHERE username = $1",
            )
            .bind(username)
            .bind(at)
            .execute(conn)
            .await?;
        }
        SessionEvent::SessionRefreshed { .. } => {}
        SessionEvent::SessionLoggedOut { at } | SessionEvent::SessionReuseDetected { at, .. } => {
            sqlx::query("UPDATE sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL")
                .bind(id)
                .bind(at)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_role(
    conn: &mut PgConnection,
    id: i64,
    event: RoleEvent,
) -> Result<(), ProjectionError> {
    match event {
        RoleEvent::RoleCreated {
            name, rights, at, ..
        } => {
            sqlx::query(
                "INSERT INTO roles (id, name, rights, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(sqlx::types::Json(rights))
            .bind(at)
            .execute(conn)
            .await?;
        }
        RoleEvent::RoleChanged { name, rights, at } => {
            sqlx::query("UPDATE roles SET name = $2, rights = $3, updated_at = $4 WHERE id = $1")
                .bind(id)
                .bind(name)
                .bind(sqlx::types::Json(rights))
                .bind(at)
                .execute(conn)
                .await?;
        }
        RoleEvent::RoleDeleted { at } => {
            sqlx::query("UPDATE roles SET deleted_at = $2, updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// Writes a created or changed perimeter, deriving level, ancestors and path from its parent,
/// then re-derives those of its descendants (a move or a rename changes them).
async fn upsert_perimeter(
    conn: &mut PgConnection,
    f: PerimeterFields,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    // One statement: the parent's derived fields, the row, then its subtree.
    sqlx::query(concat!(
        "WITH parent AS (
             SELECT ancestors || id AS ancestors, full_path || '/' AS prefix, id_path
               FROM perimeters WHERE id = $7),
         node AS (
             SELECT COALESCE((SELECT ancestors FROM parent), '{}'::bigint[]) AS ancestors,
                    COALESCE((SELECT prefix FROM parent), '') || $5 || '-' || $3 AS full_path,
                    COALESCE((SELECT id_path FROM parent), '/') || $1::bigint || '/' AS id_path),
         old AS (SELECT full_path, ancestors, id_path FROM perimeters WHERE id = $1),
         written AS (
             INSERT INTO perimeters (id, local_id, name, short_name, source_value, type_source_value,
                                     parent_id, level, ancestors, full_path, id_path, cohort_id,
                                     cohort_size, created_at, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, cardinality(node.ancestors) + 1, node.ancestors,
                    node.full_path, node.id_path, $8, $9, $10, $10
               FROM node
             ",
        perimeter_refresh!(),
        "
             RETURNING ancestors, full_path, id_path)
         UPDATE perimeters d
            SET ancestors = w.ancestors || $1::bigint
                            || d.ancestors[array_position(d.ancestors, $1::bigint) + 1:],
                level = cardinality(w.ancestors) + 2
                        + cardinality(d.ancestors) - array_position(d.ancestors, $1::bigint),
                full_path = w.full_path || substr(d.full_path, length(o.full_path) + 1),
                id_path = w.id_path || substr(d.id_path, length(o.id_path) + 1)
           FROM written w, old o
          WHERE d.ancestors @> ARRAY[$1::bigint]
            AND (o.full_path <> w.full_path OR o.ancestors <> w.ancestors)"
    ))
    .bind(f.id)
    .bind(f.local_id)
    .bind(f.name)
    .bind(f.short_name)
    .bind(f.source_value)
    .bind(f.type_source_value)
    .bind(f.parent_id)
    .bind(f.cohort_id)
    .bind(f.cohort_size)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_perimeter(
    conn: &mut PgConnection,
    id: i64,
    event: PerimeterEvent,
) -> Result<(), ProjectionError> {
    match event {
        PerimeterEvent::PerimeterCreated { fields, at }
        | PerimeterEvent::PerimeterChanged { fields, at } => {
            upsert_perimeter(conn, fields, at).await?;
        }
        PerimeterEvent::PerimeterRemoved { at } => {
            sqlx::query("UPDATE perimeters SET removed_at = $2, updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_access(
    conn: &mut PgConnection,
    id: i64,
    by: Option<String>,
    event: AccessEvent,
) -> Result<(), ProjectionError> {
    match event {
        AccessEvent::AccessGranted {
            profile_id,
            username,
            role_id,
            perimeter_id,
            source,
            start_datetime,
            end_datetime,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO accesses (id, profile_id, username, role_id, perimeter_id, source,
                                       start_datetime, end_datetime, created_by, updated_by,
                                       created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $10)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(profile_id)
            .bind(username)
            .bind(role_id)
            .bind(perimeter_id)
            .bind(source)
            .bind(start_datetime)
            .bind(end_datetime)
            .bind(by)
            .bind(at)
            .execute(conn)
            .await?;
        }
        AccessEvent::AccessDatesChanged {
            start_datetime,
            end_datetime,
            at,
        } => {
            sqlx::query(
                "UPDATE accesses SET start_datetime = $2, end_datetime = $3, updated_by = $4,
                                     updated_at = $5
                  WHERE id = $1",
            )
            .bind(id)
            .bind(start_datetime)
            .bind(end_datetime)
            .bind(by)
            .bind(at)
            .execute(conn)
            .await?;
        }
        AccessEvent::AccessClosed { at, .. } => {
            sqlx::query(
                "UPDATE accesses SET end_datetime = $2, updated_by = $3, updated_at = $2
                  WHERE id = $1",
            )
            .bind(id)
            .bind(at)
            .bind(by)
            .execute(conn)
            .await?;
        }
        // Alerts are history only; no read model needs them.
        AccessEvent::AccessExpiryAlertRecorded { .. } => {}
        AccessEvent::AccessRevokedBeforeStart { at } => {
            sqlx::query(
                "UPDATE accesses SET deleted_at = $2, updated_by = $3, updated_at = $2
                  WHERE id = $1",
            )
            .bind(id)
            .bind(at)
            .bind(by)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

async fn write_maintenance(
    conn: &mut PgConnection,
    id: i64,
    f: MaintenanceFields,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let kind = serde_json::to_value(f.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO maintenances (id, subject, message, type, start_datetime, end_datetime,
                                   created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (id) DO UPDATE SET subject = EXCLUDED.subject, message = EXCLUDED.message,
             type = EXCLUDED.type, start_datetime = EXCLUDED.start_datetime,
             end_datetime = EXCLUDED.end_datetime, updated_at = EXCLUDED.updated_at",
    )
    .bind(id)
    .bind(f.subject)
    .bind(f.message)
    .bind(kind)
    .bind(f.start_datetime)
    .bind(f.end_datetime)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_maintenance(
    conn: &mut PgConnection,
    id: i64,
    event: MaintenanceEvent,
) -> Result<(), ProjectionError> {
    match event {
        MaintenanceEvent::MaintenanceScheduled { fields, at, .. }
        | MaintenanceEvent::MaintenanceChanged { fields, at } => {
            write_maintenance(conn, id, fields, at).await
        }
        MaintenanceEvent::MaintenanceDeleted { at } => {
            sqlx::query("UPDATE maintenances SET deleted_at = $2, updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at)
                .execute(conn)
                .await?;
            Ok(())
        }
    }
}
