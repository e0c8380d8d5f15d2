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
