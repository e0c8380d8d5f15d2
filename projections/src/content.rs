//! Read models of web contents and release notes, as upstream serves them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Page, ReadError, SortKey, Window};

/// A web content as `/webcontent/contents/` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct WebContentView {
    pub id: i64,
    pub title: String,
    pub content: String,
    pub page: String,
    pub content_type: String,
    pub content_type_display: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub modified_at: DateTime<Utc>,
}

/// A release note as `/release-notes/` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReleaseNoteView {
    pub id: i64,
    pub title: String,
    pub message: Vec<String>,
    pub author: Option<String>,
    pub insert_datetime: DateTime<Utc>,
    pub update_datetime: DateTime<Utc>,
    pub delete_datetime: Option<DateTime<Utc>>,
}

/// Filters of `/webcontent/contents/`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContentFilter {
    pub content_types: Vec<String>,
    pub pages: Vec<String>,
    /// Case-insensitive "contains" over title and content.
    pub search: Option<String>,
    pub ordering: Vec<SortKey>,
}

/// Orderings `/webcontent/contents/` accepts.
pub const CONTENT_ORDERINGS: &[(&str, &str)] = &[
    ("created_at", "created_at"),
    ("modified_at", "modified_at"),
    ("title", "title"),
];

/// Reads contents and notes.
#[async_trait]
pub trait ContentReader: Send + Sync {
    async fn contents(
        &self,
        filter: &ContentFilter,
        window: Window,
    ) -> Result<Page<WebContentView>, ReadError>;
    async fn content(&self, id: i64) -> Result<Option<WebContentView>, ReadError>;
    /// Newest first; `search` over title and message.
    async fn release_notes(
        &self,
        search: Option<&str>,
        window: Window,
    ) -> Result<Page<ReleaseNoteView>, ReadError>;
    async fn release_note(&self, id: i64) -> Result<Option<ReleaseNoteView>, ReadError>;
}
