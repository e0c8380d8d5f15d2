//! Web contents and release notes: written by full administrators only (checked here, with
//! `Permission::ManageContent`), ids drawn from database sequences like upstream's integer ids.

use std::sync::Arc;

use async_trait::async_trait;
use domain::content::{
    ContentError, ContentFields, ReleaseNote, ReleaseNoteCommand, WebContent, WebContentCommand,
};

use crate::authz::{AccessControl, AuthzError, Permission, Principal};
use crate::bus::Execute;
use crate::context::CommandContext;
use crate::error::{CommandError, Technical};
use crate::ports::{Consistency, PortError};
use crate::workspace::Written;

/// Draws the integer ids of new contents and notes.
#[async_trait]
pub trait ContentIds: Send + Sync {
    async fn next_content_id(&self) -> Result<i64, PortError>;
    async fn next_release_note_id(&self) -> Result<i64, PortError>;
}

/// Why a content command failed.
#[derive(Debug, thiserror::Error)]
pub enum ContentFailure {
    #[error(transparent)]
    Rejected(#[from] ContentError),
    /// The caller may not write contents (or their rights cannot be read now).
    #[error(transparent)]
    Authz(#[from] AuthzError),
    /// Conflict, unavailability, bug.
    #[error(transparent)]
    Technical(#[from] Technical),
}

impl From<CommandError<ContentError>> for ContentFailure {
    fn from(e: CommandError<ContentError>) -> Self {
        crate::error::from_command(e, Self::Rejected)
    }
}

impl From<PortError> for ContentFailure {
    fn from(e: PortError) -> Self {
        Technical::from(e).into()
    }
}

/// A change to a web content; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct ContentPatch {
    pub title: Option<String>,
    pub content: Option<String>,
    pub page: Option<String>,
    pub content_type: Option<String>,
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// The content service.
pub struct Contents {
    contents: Arc<dyn Execute<WebContent>>,
    notes: Arc<dyn Execute<ReleaseNote>>,
    ids: Arc<dyn ContentIds>,
    consistency: Arc<dyn Consistency>,
    access: AccessControl,
}

impl Contents {
    pub fn new(
        contents: Arc<dyn Execute<WebContent>>,
        notes: Arc<dyn Execute<ReleaseNote>>,
        ids: Arc<dyn ContentIds>,
        consistency: Arc<dyn Consistency>,
        access: AccessControl,
    ) -> Self {
        Self {
            access,
            contents,
            notes,
            ids,
            consistency,
        }
    }

    pub async fn create_content(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        fields: ContentFields,
    ) -> Result<Written<i64>, ContentFailure> {
        self.access.require(by, Permission::ManageContent).await?;
        // Validate before drawing an id, so that refusals do not burn ids.
        fields.validate().map_err(ContentError::from)?;
        let id = self.ids.next_content_id().await?;
        let command = WebContentCommand::Create {
            content_id: id,
            fields,
            at: ctx.at,
        };
        let c = self.contents.execute(&id.to_string(), command, ctx).await?;
        let caught_up = self.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: id,
            caught_up,
        })
    }

    pub async fn update_content(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        id: i64,
        patch: ContentPatch,
    ) -> Result<Written<()>, ContentFailure> {
        self.access.require(by, Permission::ManageContent).await?;
        let current = self.contents.load(&id.to_string()).await?;
        let Some(stored) = current.fields.filter(|_| !current.deleted) else {
            return Err(ContentError::NotFound.into());
        };
        let fields = ContentFields {
            title: patch.title.unwrap_or(stored.title),
            content: patch.content.unwrap_or(stored.content),
            page: patch.page.unwrap_or(stored.page),
            content_type: patch.content_type.unwrap_or(stored.content_type),
            metadata: patch.metadata.unwrap_or(stored.metadata),
        };
        let command = WebContentCommand::Update { fields, at: ctx.at };
        let c = self.contents.execute(&id.to_string(), command, ctx).await?;
        let caught_up = self.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: (),
            caught_up,
        })
    }

    pub async fn delete_content(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        id: i64,
    ) -> Result<(), ContentFailure> {
        self.access.require(by, Permission::ManageContent).await?;
        let c = self
            .contents
            .execute(
                &id.to_string(),
                WebContentCommand::Delete { at: ctx.at },
                ctx,
            )
            .await?;
        self.consistency.wait_for(&[c]).await;
        Ok(())
    }

    pub async fn create_release_note(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        title: String,
        message: Vec<String>,
    ) -> Result<Written<i64>, ContentFailure> {
        self.access.require(by, Permission::ManageContent).await?;
        let probe = ReleaseNote::default();
        // Validate before drawing an id (the probe has no state: only the rules run).
        probe.decide(ReleaseNoteCommand::Create {
            note_id: 0,
            title: title.clone(),
            message: message.clone(),
            author: None,
            at: ctx.at,
        })?;
        let id = self.ids.next_release_note_id().await?;
        let command = ReleaseNoteCommand::Create {
            note_id: id,
            title,
            message,
            author: Some(ctx.user.clone()),
            at: ctx.at,
        };
        let c = self.notes.execute(&id.to_string(), command, ctx).await?;
        let caught_up = self.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: id,
            caught_up,
        })
    }

    pub async fn update_release_note(
        &self,
        ctx: &CommandContext,
        by: &Principal,
        id: i64,
        title: Option<String>,
        message: Option<Vec<String>>,
    ) -> Result<Written<()>, ContentFailure> {
        self.access.require(by, Permission::ManageContent).await?;
        let current = self.notes.load(&id.to_string()).await?;
        let Some((stored_title, stored_message)) = current.note else {
            return Err(ContentError::NoteNotFound.into());
        };
        let command = ReleaseNoteCommand::Update {
            title: title.unwrap_or(stored_title),
            message: message.unwrap_or(stored_message),
            at: ctx.at,
        };
        let c = self.notes.execute(&id.to_string(), command, ctx).await?;
        let caught_up = self.consistency.wait_for(&[c]).await;
        Ok(Written {
            value: (),
            caught_up,
        })
    }
}
