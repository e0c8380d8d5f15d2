//! The workspace service: folders, requests and query snapshots.
//!
//! Each method checks what spans several aggregates (the folder a request goes into is the
//! caller's, the request a snapshot is routed to, the cascade of a folder deletion), then runs
//! the aggregate commands and waits for the read models.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use domain::folder::{Folder, FolderCommand, FolderError};
use domain::request::{Request, RequestCommand, RequestError};
use domain::validation::{InvalidField, username};
use thiserror::Error;
use uuid::Uuid;

use crate::bus::{Committed, Execute};
use crate::context::CommandContext;
use crate::error::{CommandError, Technical};
use crate::ports::{Consistency, PortError, WorkspaceDirectory};

/// Namespace of the deterministic ids of users' shared-inbox folders.
const SHARED_INBOX_NAMESPACE: Uuid = Uuid::from_u128(0x6c7c_4a0e_43a5_4b7e_9d5e_1c36_0f0b_0001);

/// Why a workspace operation failed.
#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Folder(FolderError),
    #[error(transparent)]
    Request(RequestError),
    /// Input that no aggregate owns (routing fields, recipient lists, …).
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Conflict, unavailability, bug.
    #[error(transparent)]
    Technical(#[from] Technical),
}

impl From<CommandError<FolderError>> for WorkspaceError {
    fn from(e: CommandError<FolderError>) -> Self {
        crate::error::from_command(e, WorkspaceError::Folder)
    }
}

impl From<CommandError<RequestError>> for WorkspaceError {
    fn from(e: CommandError<RequestError>) -> Self {
        crate::error::from_command(e, WorkspaceError::Request)
    }
}

impl From<PortError> for WorkspaceError {
    fn from(e: PortError) -> Self {
        Technical::from(e).into()
    }
}

/// The result of a write: its value, and whether the read models had caught up when it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    pub value: T,
    /// `false` when the read-your-writes wait timed out.
    pub caught_up: bool,
}

/// A new request.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub name: String,
    pub description: Option<String>,
    pub favorite: bool,
    pub parent_folder: Uuid,
}

/// Changes to a request; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct RequestChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub favorite: Option<bool>,
    pub parent_folder: Option<Uuid>,
}

/// A new query snapshot: against `request` (first version) or derived from `previous_snapshot`.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub request: Option<Uuid>,
    pub previous_snapshot: Option<Uuid>,
    pub serialized_query: String,
    pub name: Option<String>,
}

/// The workspace application service.
pub struct Workspace {
    folders: Arc<dyn Execute<Folder>>,
    requests: Arc<dyn Execute<Request>>,
    directory: Arc<dyn WorkspaceDirectory>,
    consistency: Arc<dyn Consistency>,
    snapshot_requests: SnapshotRequests,
}

/// Snapshots remembered per generation; two generations are kept.
const SNAPSHOT_GENERATION: usize = 10_000;

/// The request of each snapshot this process saved or looked up lately. A snapshot never moves
/// to another request, so this cannot go stale; it spares the query that finds the request of
/// the previous version each time a user saves a new one (`previous_snapshot`), as the
/// front-end does at every save.
#[derive(Default)]
struct SnapshotRequests {
    generations: Mutex<[HashMap<Uuid, Uuid>; 2]>,
}

impl SnapshotRequests {
    fn get(&self, snapshot: Uuid) -> Option<Uuid> {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.iter().find_map(|g| g.get(&snapshot).copied())
    }

    fn remember(&self, snapshot: Uuid, request: Uuid) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if generations[0].len() >= SNAPSHOT_GENERATION {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(snapshot, request);
    }
}

impl Workspace {
    pub fn new(
        folders: Arc<dyn Execute<Folder>>,
        requests: Arc<dyn Execute<Request>>,
        directory: Arc<dyn WorkspaceDirectory>,
        consistency: Arc<dyn Consistency>,
    ) -> Self {
        Self {
            folders,
            requests,
            directory,
            consistency,
            snapshot_requests: SnapshotRequests::default(),
        }
    }

    async fn settle<T>(
        &self,
        value: T,
        committed: &[Committed],
    ) -> Result<Written<T>, WorkspaceError> {
        let caught_up = self.consistency.wait_for(committed).await;
        Ok(Written { value, caught_up })
    }

    async fn require_own_folder(
        &self,
        ctx: &CommandContext,
        folder: Uuid,
    ) -> Result<(), WorkspaceError> {
        let state = self.folders.load(&folder.to_string()).await?;
        state
            .owned_by(&ctx.user)
            .map(|_| ())
            .ok_or(WorkspaceError::Folder(FolderError::NotFound))
    }

    /// Creates a folder owned by the caller.
    pub async fn create_folder(
        &self,
        ctx: &CommandContext,
        name: String,
        description: Option<String>,
    ) -> Result<Written<Uuid>, WorkspaceError> {
        let folder_id = Uuid::new_v4();
        let command = FolderCommand::Create {
            folder_id,
            owner: ctx.user.clone(),
            name,
            description,
            at: ctx.at,
        };
        let c = self
            .folders
            .execute_new(&folder_id.to_string(), command, ctx)
            .await?;
        self.settle(folder_id, &[c]).await
    }

    /// Renames or re-describes one of the caller's folders.
    pub async fn update_folder(
        &self,
        ctx: &CommandContext,
        folder: Uuid,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<Written<()>, WorkspaceError> {
        let command = FolderCommand::Update {
            by: ctx.user.clone(),
            name,
            description,
            at: ctx.at,
        };
        let c = self
            .folders
            .execute(&folder.to_string(), command, ctx)
            .await?;
        self.settle((), &[c]).await
    }

    /// Deletes the caller's folders and, by cascade, their requests. Every folder is checked
    /// before anything is deleted: one foreign or unknown id and nothing changes.
    pub async fn delete_folders(
        &self,
        ctx: &CommandContext,
        folders: &[Uuid],
    ) -> Result<Written<()>, WorkspaceError> {
        for folder in folders {
            self.require_own_folder(ctx, *folder).await?;
        }
        let mut committed = Vec::new();
        for folder in folders {
            // Requests first: if we stop half-way, the folder is still there and a retry finishes.
            let cascade_ctx = ctx.caused_by(format!("Folder:{folder}:delete"));
            for request in self.directory.requests_in_folder(*folder).await? {
                let command = RequestCommand::Delete {
                    by: ctx.user.clone(),
                    by_cascade: true,
                    at: ctx.at,
                };
                match self
                    .requests
                    .execute(&request.to_string(), command, &cascade_ctx)
                    .await
                {
                    Ok(c) => committed.push(c),
                    // Deleted meanwhile, or moved to another user's folder: nothing to cascade.
                    Err(CommandError::Rejected(RequestError::NotFound)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let command = FolderCommand::Delete {
                by: ctx.user.clone(),
                at: ctx.at,
            };
            committed.push(
                self.folders
                    .execute(&folder.to_string(), command, ctx)
                    .await?,
            );
        }
        self.settle((), &committed).await
    }

    /// Creates a request in one of the caller's folders.
    pub async fn create_request(
        &self,
        ctx: &CommandContext,
        new: NewRequest,
    ) -> Result<Written<Uuid>, WorkspaceError> {
        self.require_own_folder(ctx, new.parent_folder).await?;
        let request_id = Uuid::new_v4();
        let command = RequestCommand::Create {
            request_id,
            owner: ctx.user.clone(),
            name: new.name,
            description: new.description,
            favorite: new.favorite,
            parent_folder: new.parent_folder,
            shared_by: None,
            at: ctx.at,
        };
        let c = self
            .requests
            .execute_new(&request_id.to_string(), command, ctx)
            .await?;
        self.settle(request_id, &[c]).await
    }

    /// Changes one of the caller's requests; a new folder must be the caller's too.
    pub async fn update_request(
        &self,
        ctx: &CommandContext,
        request: Uuid,
        changes: RequestChanges,
    ) -> Result<Written<()>, WorkspaceError> {
        if let Some(folder) = changes.parent_folder {
            self.require_own_folder(ctx, folder).await?;
        }
        let command = RequestCommand::Update {
            by: ctx.user.clone(),
            name: changes.name,
            description: changes.description,
            favorite: changes.favorite,
            parent_folder: changes.parent_folder,
            at: ctx.at,
        };
        let c = self
            .requests
            .execute(&request.to_string(), command, ctx)
            .await?;
        self.settle((), &[c]).await
    }

    /// Deletes the caller's requests (and their snapshots). All-or-nothing on ownership.
    pub async fn delete_requests(
        &self,
        ctx: &CommandContext,
        requests: &[Uuid],
    ) -> Result<Written<()>, WorkspaceError> {
        for request in requests {
            let state = self.requests.load(&request.to_string()).await?;
            if state.owned_by(&ctx.user).is_none() {
                return Err(WorkspaceError::Request(RequestError::NotFound));
            }
        }
        let mut committed = Vec::new();
        for request in requests {
            let command = RequestCommand::Delete {
                by: ctx.user.clone(),
                by_cascade: false,
                at: ctx.at,
            };
            committed.push(
                self.requests
                    .execute(&request.to_string(), command, ctx)
                    .await?,
            );
        }
        self.settle((), &committed).await
    }

    /// For commands addressed to a snapshot, a hidden request means a hidden snapshot.
    fn as_snapshot_error(e: WorkspaceError) -> WorkspaceError {
        match e {
            WorkspaceError::Request(RequestError::NotFound) => {
                WorkspaceError::Request(RequestError::SnapshotNotFound)
            }
            other => other,
        }
    }

    async fn request_of_snapshot(&self, snapshot: Uuid) -> Result<Uuid, WorkspaceError> {
        if let Some(request) = self.snapshot_requests.get(snapshot) {
            return Ok(request);
        }
        let request = self
            .directory
            .request_of_snapshot(snapshot)
            .await?
            .ok_or(WorkspaceError::Request(RequestError::SnapshotNotFound))?;
        self.snapshot_requests.remember(snapshot, request);
        Ok(request)
    }

    /// Saves a new version of a request's query. Returns the new snapshot's id.
    pub async fn save_snapshot(
        &self,
        ctx: &CommandContext,
        new: NewSnapshot,
    ) -> Result<Written<Uuid>, WorkspaceError> {
        let request = match (new.request, new.previous_snapshot) {
            (None, None) => {
                return Err(InvalidField {
                    field: "request",
                    reason: "either request or previous_snapshot is required".into(),
                }
                .into());
            }
            (Some(request), None) => request,
            (given, Some(previous)) => {
                let owner_request = self.request_of_snapshot(previous).await?;
                if given.is_some_and(|g| g != owner_request) {
                    return Err(InvalidField {
                        field: "previous_snapshot",
                        reason: "the previous snapshot belongs to another request".into(),
                    }
                    .into());
                }
                owner_request
            }
        };
        let snapshot_id = Uuid::new_v4();
        let previous_snapshot = new.previous_snapshot;
        let command = RequestCommand::SaveSnapshot {
            by: ctx.user.clone(),
            snapshot_id,
            previous_snapshot,
            serialized_query: new.serialized_query,
            name: new.name,
            shared_by: None,
            at: ctx.at,
        };
        let c = self
            .requests
            .execute(&request.to_string(), command, ctx)
            .await
            .map_err(|e| match previous_snapshot {
                Some(_) => Self::as_snapshot_error(e.into()),
                None => e.into(),
            })?;
        self.snapshot_requests.remember(snapshot_id, request);
        self.settle(snapshot_id, &[c]).await
    }

    /// Renames a snapshot and/or replaces its query (the previous text is kept as a patch).
    pub async fn update_snapshot(
        &self,
        ctx: &CommandContext,
        snapshot: Uuid,
        name: Option<String>,
        serialized_query: Option<String>,
    ) -> Result<Written<()>, WorkspaceError> {
        let request = self.request_of_snapshot(snapshot).await?;
        let command = RequestCommand::UpdateSnapshot {
            by: ctx.user.clone(),
            snapshot_id: snapshot,
            name,
            serialized_query,
            at: ctx.at,
        };
        let c = self
            .requests
            .execute(&request.to_string(), command, ctx)
            .await
            .map_err(|e| Self::as_snapshot_error(e.into()))?;
        self.settle((), &[c]).await
    }

    /// Copies a snapshot into a new request of each recipient, filed in their "Mes requêtes
    /// reçues" folder. Returns the new requests' ids, in the order of the recipients.
    pub async fn share_snapshot(
        &self,
        ctx: &CommandContext,
        snapshot: Uuid,
        recipients: &str,
        name: Option<String>,
        notify_by_email: bool,
    ) -> Result<Written<Vec<Uuid>>, WorkspaceError> {
        let recipients = parse_recipients(recipients)?;
        let request_id = self.request_of_snapshot(snapshot).await?;
        let source = self.requests.load(&request_id.to_string()).await?;
        let source_snapshot = source
            .check_can_share(&ctx.user, &snapshot)
            .map_err(|e| Self::as_snapshot_error(WorkspaceError::Request(e)))?
            .clone();
        // Only once the caller is known to own the snapshot: who exists is not for everyone.
        let unknown = self.directory.unknown_users(&recipients).await?;
        if !unknown.is_empty() {
            return Err(WorkspaceError::Invalid(InvalidField {
                field: "recipients",
                reason: format!("unknown users: {}", unknown.join(", ")),
            }));
        }
        let source_name = source
            .state
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let name = name.filter(|n| !n.trim().is_empty()).unwrap_or(source_name);

        let share_ctx = ctx.caused_by(format!("QuerySnapshot:{snapshot}:share"));
        let mut committed = Vec::new();
        let mut shared_requests = Vec::new();
        for recipient in &recipients {
            // The recipient's context: their objects are created on their behalf by the sharer.
            let inbox = shared_inbox_id(recipient);
            let ensure = FolderCommand::EnsureSharedInbox {
                folder_id: inbox,
                owner: recipient.clone(),
                at: ctx.at,
            };
            committed.push(
                self.folders
                    .execute(&inbox.to_string(), ensure, &share_ctx)
                    .await?,
            );
            let new_request = Uuid::new_v4();
            let create = RequestCommand::Create {
                request_id: new_request,
                owner: recipient.clone(),
                name: name.clone(),
                description: None,
                favorite: false,
                parent_folder: inbox,
                shared_by: Some(ctx.user.clone()),
                at: ctx.at,
            };
            self.requests
                .execute_new(&new_request.to_string(), create, &share_ctx)
                .await?;
            let copy = RequestCommand::SaveSnapshot {
                by: recipient.clone(),
                snapshot_id: Uuid::new_v4(),
                previous_snapshot: None,
                serialized_query: source_snapshot.serialized_query.clone(),
                name: source_snapshot.name.clone(),
                shared_by: Some(ctx.user.clone()),
                at: ctx.at,
            };
            committed.push(
                self.requests
                    .execute(&new_request.to_string(), copy, &share_ctx)
                    .await?,
            );
            shared_requests.push(new_request);
        }
        let record = RequestCommand::RecordShare {
            notify_by_email,
            by: ctx.user.clone(),
            snapshot_id: snapshot,
            recipients,
            shared_requests: shared_requests.clone(),
            at: ctx.at,
        };
        committed.push(
            self.requests
                .execute(&request_id.to_string(), record, ctx)
                .await?,
        );
        self.settle(shared_requests, &committed).await
    }
}

/// The deterministic id of `user`'s shared-inbox folder, so that concurrent shares to the same
/// user meet on one aggregate instead of creating two folders.
pub fn shared_inbox_id(user: &str) -> Uuid {
    Uuid::new_v5(
        &SHARED_INBOX_NAMESPACE,
        format!("shared-inbox:{user}").as_bytes(),
    )
}

/// Parses upstream's comma-joined recipient list: trimmed, de-duplicated, in order.
fn parse_recipients(raw: &str) -> Result<Vec<String>, InvalidField> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in raw.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        username("recipients", r)?;
        if seen.insert(r.to_string()) {
            out.push(r.to_string());
        }
    }
    if out.is_empty() {
        return Err(InvalidField {
            field: "recipients",
            reason: "at least one recipient is required".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_trimmed_deduplicated_and_validated() {
        assert_eq!(
            parse_recipients(" bob, carol ,bob,").unwrap(),
            vec!["bob", "carol"]
        );
        assert!(parse_recipients(" , ").is_err());
        assert!(parse_recipients("bob,not valid").is_err());
    }

    #[test]
    fn snapshot_requests_keep_at_least_one_generation() {
        let known = SnapshotRequests::default();
        let (first, request) = (Uuid::new_v4(), Uuid::new_v4());
        known.remember(first, request);
        assert_eq!(known.get(first), Some(request));
        assert_eq!(known.get(Uuid::new_v4()), None);
        // A full generation later it is still known; two later, forgotten.
        for _ in 0..SNAPSHOT_GENERATION {
            known.remember(Uuid::new_v4(), request);
        }
        assert_eq!(known.get(first), Some(request));
        for _ in 0..SNAPSHOT_GENERATION {
            known.remember(Uuid::new_v4(), request);
        }
        assert_eq!(known.get(first), None);
    }

    #[test]
    fn shared_inbox_ids_are_stable_per_user() {
        assert_eq!(shared_inbox_id("bob"), shared_inbox_id("bob"));
        assert_ne!(shared_inbox_id("bob"), shared_inbox_id("carol"));
    }
}
