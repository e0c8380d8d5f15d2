//! The `content` read model (web contents, release notes), its reader and the id sequences.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::content::ContentIds;
use commands::ports::PortError;
use cqrs_es::Aggregate;
use domain::content::{CONTENT_TYPES, ReleaseNote, ReleaseNoteEvent, WebContent, WebContentEvent};
use projections::content::{ContentFilter, ContentReader, ReleaseNoteView, WebContentView};
use projections::{Page, ReadError, Window};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use crate::log::CommittedEvent;
use crate::projector::{Projection, ProjectionError, aggregate_int, decode};
use crate::sql::{fetch_page, push_contains_any, read_error};

/// Name of the projection (and of its schema).
pub const PROJECTION: &str = "content";

/// The content projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ContentProjection;

async fn apply_content(
    conn: &mut PgConnection,
    id: i64,
    event: WebContentEvent,
) -> Result<(), ProjectionError> {
    match event {
        WebContentEvent::WebContentCreated { fields, at, .. }
        | WebContentEvent::WebContentChanged { fields, at } => {
            let metadata = serde_json::to_value(&fields.metadata).unwrap_or_default();
            sqlx::query(
                "INSERT INTO web_contents (id, title, content, page, content_type, metadata,
                                           created_at, modified_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (id) DO UPDATE SET title = $2, content = $3, page = $4,
                     content_type = $5, metadata = $6, modified_at = $7",
            )
            .bind(id)
            .bind(&fields.title)
            .bind(&fields.content)
            .bind(&fields.page)
            .bind(&fields.content_type)
            .bind(metadata)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        WebContentEvent::WebContentDeleted { at } => {
            sqlx::query("UPDATE web_contents SET deleted_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_note(
    conn: &mut PgConnection,
    id: i64,
    event: ReleaseNoteEvent,
) -> Result<(), ProjectionError> {
    match event {
        ReleaseNoteEvent::ReleaseNoteCreated {
            title,
            message,
            author,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO release_notes (id, title, message, author, insert_datetime,
                                            update_datetime)
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(title)
            .bind(serde_json::to_value(message).unwrap_or_default())
            .bind(author)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        ReleaseNoteEvent::ReleaseNoteChanged { title, message, at } => {
            sqlx::query(
                "UPDATE release_notes SET title = $2, message = $3, update_datetime = $4
                  WHERE id = $1",
            )
            .bind(id)
            .bind(title)
            .bind(serde_json::to_value(message).unwrap_or_default())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Projection for ContentProjection {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn reads(&self, aggregate_type: &str) -> bool {
        [WebContent::TYPE, ReleaseNote::TYPE].contains(&aggregate_type)
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &CommittedEvent,
    ) -> Result<(), ProjectionError> {
        match event.aggregate_type.as_str() {
            WebContent::TYPE => apply_content(conn, aggregate_int(event)?, decode(event)?).await,
            ReleaseNote::TYPE => apply_note(conn, aggregate_int(event)?, decode(event)?).await,
            _ => Ok(()),
        }
    }
}

/// Reads the content schema and draws ids.
#[derive(Debug, Clone)]
pub struct PgContent {
    pool: PgPool,
}

impl PgContent {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct ContentRow {
    id: i64,
    title: String,
    content: String,
    page: String,
    content_type: String,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

impl From<ContentRow> for WebContentView {
    fn from(r: ContentRow) -> Self {
        let display = CONTENT_TYPES
            .iter()
            .find(|(t, _)| *t == r.content_type)
            .map_or_else(|| r.content_type.clone(), |(_, label)| (*label).to_string());
        WebContentView {
            id: r.id,
            title: r.title,
            content: r.content,
            page: r.page,
            content_type_display: display,
            content_type: r.content_type,
            metadata: serde_json::from_value(r.metadata).unwrap_or_default(),
            created_at: r.created_at,
            modified_at: r.modified_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct NoteRow {
    id: i64,
    title: String,
    message: serde_json::Value,
    author: Option<String>,
    insert_datetime: DateTime<Utc>,
    update_datetime: DateTime<Utc>,
    delete_datetime: Option<DateTime<Utc>>,
}

impl From<NoteRow> for ReleaseNoteView {
    fn from(r: NoteRow) -> Self {
        ReleaseNoteView {
            id: r.id,
            title: r.title,
            message: serde_json::from_value(r.message).unwrap_or_default(),
            author: r.author,
            insert_datetime: r.insert_datetime,
            update_datetime: r.update_datetime,
            delete_datetime: r.delete_datetime,
        }
    }
}

const CONTENT_SELECT: &str = "SELECT id, title, content, page, content_type, metadata,
        created_at, modified_at FROM content.web_contents WHERE deleted_at IS NULL";
const NOTE_SELECT: &str = "SELECT id, title, message, author, insert_datetime, update_datetime,
        delete_datetime FROM content.release_notes WHERE delete_datetime IS NULL";

fn push_content_where<'a>(qb: &mut QueryBuilder<'a, Postgres>, f: &'a ContentFilter) {
    if !f.content_types.is_empty() {
        qb.push(" AND content_type = ANY(")
            .push_bind(&f.content_types)
            .push(")");
    }
    if !f.pages.is_empty() {
        qb.push(" AND page = ANY(").push_bind(&f.pages).push(")");
    }
    if let Some(search) = &f.search {
        push_contains_any(qb, search, &["title", "content"]);
    }
}

#[async_trait]
impl ContentReader for PgContent {
    async fn contents(
        &self,
        filter: &ContentFilter,
        window: Window,
    ) -> Result<Page<WebContentView>, ReadError> {
        let (count, rows) = fetch_page::<ContentRow>(
            &self.pool,
            "SELECT count(*) FROM content.web_contents WHERE deleted_at IS NULL",
            CONTENT_SELECT,
            |qb| push_content_where(qb, filter),
            (&filter.ordering, "created_at DESC", "id DESC"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn content(&self, id: i64) -> Result<Option<WebContentView>, ReadError> {
        let row: Option<ContentRow> = sqlx::query_as(&format!("{CONTENT_SELECT} AND id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }

    async fn release_notes(
        &self,
        search: Option<&str>,
        window: Window,
    ) -> Result<Page<ReleaseNoteView>, ReadError> {
        let (count, rows) = fetch_page::<NoteRow>(
            &self.pool,
            "SELECT count(*) FROM content.release_notes WHERE delete_datetime IS NULL",
            NOTE_SELECT,
            |qb| {
                if let Some(search) = search {
                    push_contains_any(qb, search, &["title", "message::text"]);
                }
            },
            (&[], "insert_datetime DESC", "id DESC"),
            window,
        )
        .await?;
        Ok(Page {
            count,
            results: rows.into_iter().map(Into::into).collect(),
        })
    }

    async fn release_note(&self, id: i64) -> Result<Option<ReleaseNoteView>, ReadError> {
        let row: Option<NoteRow> = sqlx::query_as(&format!("{NOTE_SELECT} AND id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(row.map(Into::into))
    }
}

#[async_trait]
impl ContentIds for PgContent {
    async fn next_content_id(&self) -> Result<i64, PortError> {
        sqlx::query_scalar("SELECT nextval('content_ids')")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| PortError(e.to_string()))
    }

    async fn next_release_note_id(&self) -> Result<i64, PortError> {
        sqlx::query_scalar("SELECT nextval('release_note_ids')")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| PortError(e.to_string()))
    }
}
