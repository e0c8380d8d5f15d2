//! Folds folder and request events into the `workspace` schema.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::folder::{Folder, FolderEvent};
use domain::request::{Request, RequestEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::CommittedEvent;
use crate::projector::{Projection, ProjectionError, aggregate_uuid, decode};

/// The workspace projection (folders, requests, snapshots, snapshot patches).
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkspaceProjection;

#[async_trait]
impl Projection for WorkspaceProjection {
    fn name(&self) -> &'static str {
        projections::workspace::PROJECTION
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        aggregate_type == Folder::TYPE || aggregate_type == Request::TYPE
    }

    /// Folder events write `folders` only; request events `requests`, `query_snapshots` and
    /// `query_snapshot_patches`, and read nothing else (a request names its folder, which the
    /// reads join).
    fn rebuild_groups(&self) -> &'static [&'static [&'static str]] {
        const GROUPS: &[&[&str]] = &[&[Folder::TYPE], &[Request::TYPE]];
        GROUPS
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &CommittedEvent,
    ) -> Result<(), ProjectionError> {
        match event.aggregate_type.as_str() {
            Folder::TYPE => apply_folder(conn, aggregate_uuid(event)?, decode(event)?).await,
            Request::TYPE => apply_request(conn, aggregate_uuid(event)?, decode(event)?).await,
            _ => Ok(()),
        }
    }

    /// Runs of creations (folders, requests, snapshots: what a log is mostly made of) go in one
    /// multi-row statement each; everything else one by one, in log order.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&CommittedEvent],
    ) -> Result<(), ProjectionError> {
        let mut rest = events;
        while let Some(first) = rest.first() {
            let kind = Creation::of(first);
            let run = match kind {
                Some(kind) => rest
                    .iter()
                    .take_while(|e| Creation::of(e) == Some(kind))
                    .count(),
                None => 1,
            };
            let (now, later) = rest.split_at(run);
            match kind {
                Some(kind) if run > 1 => kind.insert(conn, now).await?,
                _ => self.apply(conn, now[0]).await?,
            }
            rest = later;
        }
        Ok(())
    }
}

/// The creation events a run of which folds in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creation {
    Folder,
    Request,
    Snapshot,
}

impl Creation {
    fn of(event: &CommittedEvent) -> Option<Self> {
        match (event.aggregate_type.as_str(), event.event_type.as_str()) {
            (Folder::TYPE, "FolderCreated") => Some(Self::Folder),
            (Request::TYPE, "RequestCreated") => Some(Self::Request),
            (Request::TYPE, "QuerySnapshotSaved") => Some(Self::Snapshot),
            _ => None,
        }
    }

    /// Inserts the rows of `events` (all of this kind) as their one-by-one fold would: a row
    /// whose key is taken is skipped (`ON CONFLICT DO NOTHING`).
    ///
    /// That clause makes each row a speculative insertion, about 40 % dearer than a plain one,
    /// for duplicates the log cannot hold (each creation is its aggregate's first event, and the
    /// checkpoint keeps every event from being folded twice). So a long run (a rebuild's, an
    /// import's) is first inserted without it, under a savepoint; should a key be taken after
    /// all, that attempt is rolled back and the run inserted with it.
    async fn insert(
        self,
        conn: &mut PgConnection,
        events: &[&CommittedEvent],
    ) -> Result<(), ProjectionError> {
        if events.len() < PLAIN_INSERT_ROWS {
            return self.insert_rows(conn, events, SKIP_TAKEN_KEYS).await;
        }
        sqlx::query("SAVEPOINT plain_run")
            .execute(&mut *conn)
            .await?;
        match self.insert_rows(conn, events, "").await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT plain_run")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            Err(ProjectionError::Db(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                sqlx::query("ROLLBACK TO SAVEPOINT plain_run")
                    .execute(&mut *conn)
                    .await?;
                self.insert_rows(conn, events, SKIP_TAKEN_KEYS).await
            }
            Err(e) => Err(e),
        }
    }

    /// The insert itself, `on_conflict` ending the statement that inserts the rows.
    async fn insert_rows(
        self,
        conn: &mut PgConnection,
        events: &[&CommittedEvent],
        on_conflict: &str,
    ) -> Result<(), ProjectionError> {
        match self {
            Self::Folder => insert_folders(conn, events, on_conflict).await,
            Self::Request => insert_requests(conn, events, on_conflict).await,
            Self::Snapshot => insert_snapshots(conn, events, on_conflict).await,
        }
    }
}

/// Runs of at least this many creations are first inserted without [`SKIP_TAKEN_KEYS`].
const PLAIN_INSERT_ROWS: usize = 256;

/// How a set-based creation skips a row whose key is taken.
const SKIP_TAKEN_KEYS: &str = "ON CONFLICT (uuid) DO NOTHING";

async fn insert_folders(
    conn: &mut PgConnection,
    events: &[&CommittedEvent],
    on_conflict: &str,
) -> Result<(), ProjectionError> {
    let (mut ids, mut owners, mut names, mut descriptions, mut ats) =
        (vec![], vec![], vec![], vec![], vec![]);
    for event in events {
        if let FolderEvent::FolderCreated {
            owner,
            name,
            description,
            at,
            ..
        } = decode(event)?
        {
            ids.push(aggregate_uuid(event)?);
            owners.push(owner);
            names.push(name);
            descriptions.push(description);
            ats.push(at);
        }
    }
    sqlx::query(&format!(
        "INSERT INTO folders (uuid, owner, name, description, created_at, modified_at)
         SELECT id, owner, name, description, at, at
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                AS t(id, owner, name, description, at)
         {on_conflict}"
    ))
    .bind(ids)
    .bind(owners)
    .bind(names)
    .bind(descriptions)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_requests(
    conn: &mut PgConnection,
    events: &[&CommittedEvent],
    on_conflict: &str,
) -> Result<(), ProjectionError> {
    let (mut ids, mut owners, mut names, mut descriptions) = (vec![], vec![], vec![], vec![]);
    let (mut favorites, mut folders, mut shared, mut ats) = (vec![], vec![], vec![], vec![]);
    for event in events {
        if let RequestEvent::RequestCreated {
            owner,
            name,
            description,
            favorite,
            parent_folder,
            shared_by,
            at,
            ..
        } = decode(event)?
        {
            ids.push(aggregate_uuid(event)?);
            owners.push(owner);
            names.push(name);
            descriptions.push(description);
            favorites.push(favorite);
            folders.push(parent_folder);
            shared.push(shared_by);
            ats.push(at);
        }
    }
    sqlx::query(&format!(
        "INSERT INTO requests (uuid, owner, name, description, favorite, parent_folder, shared_by,
                               created_at, modified_at, updated_at)
         SELECT id, owner, name, description, favorite, folder, shared_by, at, at, at
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::uuid[],
                       $7::text[], $8::timestamptz[])
                AS t(id, owner, name, description, favorite, folder, shared_by, at)
         {on_conflict}"
    ))
    .bind(ids)
    .bind(owners)
    .bind(names)
    .bind(descriptions)
    .bind(favorites)
    .bind(folders)
    .bind(shared)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

/// Snapshots of existing requests only (as one by one), and each request's `updated_at` moved
/// to the latest of its saves (the one-by-one `GREATEST`s, folded).
async fn insert_snapshots(
    conn: &mut PgConnection,
    events: &[&CommittedEvent],
    on_conflict: &str,
) -> Result<(), ProjectionError> {
    let (mut ids, mut requests, mut names, mut versions) = (vec![], vec![], vec![], vec![]);
    let (mut previous, mut queries, mut perimeters, mut shared, mut ats) =
        (vec![], vec![], vec![], vec![], vec![]);
    for event in events {
        if let RequestEvent::QuerySnapshotSaved {
            snapshot_id,
            version,
            previous_snapshot,
            serialized_query,
            perimeters_ids,
            name,
            shared_by,
            at,
        } = decode(event)?
        {
            ids.push(snapshot_id);
            requests.push(aggregate_uuid(event)?);
            names.push(name);
            versions.push(i32::try_from(version).unwrap_or(i32::MAX));
            previous.push(previous_snapshot);
            queries.push(serialized_query);
            perimeters.push(crate::sql::text_array_literal(&perimeters_ids));
            shared.push(shared_by);
            ats.push(at);
        }
    }
    sqlx::query(&format!(
        "WITH saves AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::uuid[],
                                  $6::text[], $7::text[], $8::text[], $9::timestamptz[])
                    AS t(id, request, name, version, previous, query, perimeters, shared_by, at)),
         saved AS (
             INSERT INTO query_snapshots (uuid, request, owner, name, version, previous_snapshot,
                                          serialized_query, perimeters_ids, shared_by, created_at,
                                          modified_at)
             SELECT s.id, r.uuid, r.owner, s.name, s.version, s.previous, s.query,
                    s.perimeters::text[], s.shared_by,
                    s.at, s.at
               FROM saves s JOIN requests r ON r.uuid = s.request
             {on_conflict})
         UPDATE requests r SET updated_at = GREATEST(r.updated_at, latest.at)
           FROM (SELECT request, max(at) AS at FROM saves GROUP BY request) AS latest
          WHERE r.uuid = latest.request"
    ))
    .bind(ids)
    .bind(requests)
    .bind(names)
    .bind(versions)
    .bind(previous)
    .bind(queries)
    .bind(perimeters)
    .bind(shared)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_folder(
    conn: &mut PgConnection,
    id: Uuid,
    event: FolderEvent,
) -> Result<(), ProjectionError> {
    match event {
        FolderEvent::FolderCreated {
            owner,
            name,
            description,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO folders (uuid, owner, name, description, created_at, modified_at)
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(name)
            .bind(description)
            .bind(at)
            .execute(conn)
            .await?;
        }
        FolderEvent::FolderRenamed { name, at } => {
            sqlx::query("UPDATE folders SET name = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(name)
                .bind(at)
                .execute(conn)
                .await?;
        }
        FolderEvent::FolderDescriptionChanged { description, at } => {
            sqlx::query("UPDATE folders SET description = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(description)
                .bind(at)
                .execute(conn)
                .await?;
        }
        FolderEvent::FolderDeleted { at } => {
            sqlx::query("UPDATE folders SET deleted_at = $2, modified_at = $2 WHERE uuid = $1")
                .bind(id)
                .bind(at)
                .execute(conn)
                .await?;
        }
        FolderEvent::FolderRestored { at } => {
            sqlx::query("UPDATE folders SET deleted_at = NULL, modified_at = $2 WHERE uuid = $1")
                .bind(id)
                .bind(at)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_request(
    conn: &mut PgConnection,
    id: Uuid,
    event: RequestEvent,
) -> Result<(), ProjectionError> {
    match event {
        RequestEvent::RequestCreated {
            owner,
            name,
            description,
            favorite,
            parent_folder,
            shared_by,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO requests (uuid, owner, name, description, favorite, parent_folder, shared_by,
                                       created_at, modified_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8) ON CONFLICT (uuid) DO NOTHING",
            )
            .bind(id)
            .bind(owner)
            .bind(name)
            .bind(description)
            .bind(favorite)
            .bind(parent_folder)
            .bind(shared_by)
            .bind(at)
            .execute(conn)
            .await?;
        }
        RequestEvent::RequestRenamed { name, at } => {
            sqlx::query("UPDATE requests SET name = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(name)
                .bind(at)
                .execute(conn)
                .await?;
        }
        RequestEvent::RequestDescriptionChanged { description, at } => {
            sqlx::query("UPDATE requests SET description = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(description)
                .bind(at)
                .execute(conn)
                .await?;
        }
        RequestEvent::RequestFavoriteChanged { favorite, at } => {
            sqlx::query("UPDATE requests SET favorite = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(favorite)
                .bind(at)
                .execute(conn)
                .await?;
        }
        RequestEvent::RequestMoved { parent_folder, at } => {
            sqlx::query("UPDATE requests SET parent_folder = $2, modified_at = $3 WHERE uuid = $1")
                .bind(id)
                .bind(parent_folder)
                .bind(at)
                .execute(conn)
                .await?;
        }
        RequestEvent::RequestDeleted { by_cascade, at } => {
            // One statement per event (data-modifying CTE): fewer round trips, faster rebuilds.
            sqlx::query(
                "WITH snapshots AS (
                     UPDATE query_snapshots SET deleted_at = $2, modified_at = $2
                      WHERE request = $1 AND deleted_at IS NULL)
                 UPDATE requests SET deleted_at = $2, modified_at = $2, deleted_by_cascade = $3 WHERE uuid = $1",
            )
            .bind(id)
            .bind(at)
            .bind(by_cascade)
            .execute(conn)
            .await?;
        }
        RequestEvent::QuerySnapshotSaved {
            snapshot_id,
            version,
            previous_snapshot,
            serialized_query,
            perimeters_ids,
            name,
            shared_by,
            at,
        } => {
            sqlx::query(
                "WITH saved AS (
                     INSERT INTO query_snapshots (uuid, request, owner, name, version, previous_snapshot,
                                                  serialized_query, perimeters_ids, shared_by, created_at, modified_at)
                     SELECT $1, r.uuid, r.owner, $3, $4, $5, $6, $7, $8, $9, $9 FROM requests r WHERE r.uuid = $2
                     ON CONFLICT (uuid) DO NOTHING)
                 UPDATE requests SET updated_at = GREATEST(updated_at, $9) WHERE uuid = $2",
            )
            .bind(snapshot_id)
            .bind(id)
            .bind(name)
            .bind(i32::try_from(version).unwrap_or(i32::MAX))
            .bind(previous_snapshot)
            .bind(serialized_query)
            .bind(perimeters_ids)
            .bind(shared_by)
            .bind(at)
            .execute(conn)
            .await?;
        }
        RequestEvent::QuerySnapshotRenamed {
            snapshot_id,
            name,
            at,
        } => {
            sqlx::query("UPDATE query_snapshots SET name = $2, modified_at = $3 WHERE uuid = $1")
                .bind(snapshot_id)
                .bind(name)
                .bind(at)
                .execute(conn)
                .await?;
        }
        RequestEvent::QuerySnapshotPatched {
            snapshot_id,
            patch_version,
            previous_query,
            serialized_query,
            perimeters_ids,
            at,
        } => {
            sqlx::query(
                "WITH patch AS (
                     INSERT INTO query_snapshot_patches (snapshot, patch_version, serialized_query, created_at)
                     VALUES ($1, $5, $6, $4) ON CONFLICT DO NOTHING)
                 UPDATE query_snapshots SET serialized_query = $2, perimeters_ids = $3, modified_at = $4 WHERE uuid = $1",
            )
            .bind(snapshot_id)
            .bind(serialized_query)
            .bind(perimeters_ids)
            .bind(at)
            .bind(i32::try_from(patch_version).unwrap_or(i32::MAX))
            .bind(previous_query)
            .execute(conn)
            .await?;
        }
        // Sharing creates the recipients' requests through their own events.
        RequestEvent::RequestShared { .. } => {}
    }
    Ok(())
}
