//! The command bus: load an aggregate, let it decide, append its events, retry on conflict.
//!
//! We drive cqrs-es's [`EventStore`] directly instead of `CqrsFramework::execute` because the
//! caller needs what was committed (aggregate id and last sequence) to wait for the read models,
//! and because read models are fed by the relay and projectors, not by inline `Query` dispatch.
//!
//! A commit whose answer is lost (the connection drops after Postgres committed, before it
//! said so) is ambiguous. Every commit carries a fresh `command_id` in its events' metadata;
//! after such a failure the bus reads the aggregate back and, if the events are there, answers
//! the commit as done, so that a stored write is never reported as failed.

use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};

use crate::context::CommandContext;
use crate::error::CommandError;

/// What a successful command appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// `Aggregate::TYPE` of the aggregate.
    pub aggregate_type: &'static str,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Sequence number of the last event appended, or `None` if the command changed nothing.
    pub last_sequence: Option<usize>,
}

/// Runs commands against one aggregate type. Object-safe so that services can hold
/// `Arc<dyn Execute<A>>` whatever the store behind it.
#[async_trait]
pub trait Execute<A: Aggregate>: Send + Sync {
    /// Decides and appends `command` on aggregate `id`.
    async fn execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>>;

    /// [`Self::execute`] for a command creating aggregate `id` under an id just drawn at random:
    /// the store is not asked for an aggregate that cannot exist yet. The append's optimistic
    /// lock still refuses an id that is taken after all, and the command is then decided on the
    /// stored state like any other.
    async fn execute_new(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A::Command: Send + 'async_trait,
    {
        self.execute(id, command, ctx).await
    }

    /// The current state of aggregate `id` (the default state if it has no event).
    async fn load(&self, id: &str) -> Result<A, CommandError<A::Error>>;

    /// Decides and appends many commands, each on its own aggregate (bulk operations). A store
    /// that can appends them all in one transaction; this default runs them one by one. Either
    /// way the first rejection is returned as the error.
    async fn execute_batch(
        &self,
        commands: Vec<(String, A::Command)>,
        ctx: &CommandContext,
    ) -> Result<Vec<Committed>, CommandError<A::Error>>
    where
        A::Command: Send + 'async_trait,
    {
        let mut committed = Vec::with_capacity(commands.len());
        for (id, command) in commands {
            committed.push(self.execute(&id, command, ctx).await?);
        }
        Ok(committed)
    }
}

/// An event store that can hand out the context of an aggregate with no event yet without
/// reading anything ([`Execute::execute_new`]); `None`: it cannot, the aggregate is loaded.
pub trait FreshContext<A: Aggregate>: EventStore<A> {
    fn fresh_context(&self, id: &str) -> Option<Self::AC>;

    /// The context of `id` as this store last knew it, read from nowhere, if it holds one. It
    /// may be behind the log (another instance wrote since): a decision taken on it that appends
    /// events is checked by the append's optimistic lock (it conflicts, and the bus loads), and
    /// whatever else it gives (a refusal, nothing to append) the bus decides again on a loaded
    /// context. `None` (the default): the bus loads.
    fn held_context(&self, _id: &str) -> Option<Self::AC> {
        None
    }
}

impl<R, A> FreshContext<A> for cqrs_es::persist::PersistedEventStore<R, A>
where
    R: cqrs_es::persist::PersistedEventRepository,
    A: Aggregate + Send + Sync,
{
    fn fresh_context(&self, id: &str) -> Option<Self::AC> {
        // What `load_aggregate` answers for an aggregate without snapshot or event.
        Some(cqrs_es::persist::EventStoreAggregateContext {
            aggregate_id: id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        })
    }
}

impl<A: Aggregate> FreshContext<A> for cqrs_es::mem_store::MemStore<A> {
    fn fresh_context(&self, id: &str) -> Option<Self::AC> {
        Some(cqrs_es::mem_store::MemStoreAggregateContext {
            aggregate_id: id.to_string(),
            aggregate: A::default(),
            current_sequence: 0,
        })
    }
}

/// [`Execute`] over any cqrs-es event store, with a bounded optimistic-concurrency retry.
pub struct CommandBus<ES> {
    store: ES,
    max_attempts: usize,
}

impl<ES> CommandBus<ES> {
    /// A bus that tries a conflicting command at most `max_attempts` times (at least once).
    pub fn new(store: ES, max_attempts: usize) -> Self {
        Self {
            store,
            max_attempts: max_attempts.max(1),
        }
    }
}

/// Read-backs of an ambiguous commit, and the pause before each: about 7.5 s in all, enough for
/// a crashed Postgres to recover and answer, so that a commit that was stored is answered as such
/// rather than as unavailable.
const COMMIT_CHECKS: [std::time::Duration; 5] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(1000),
    std::time::Duration::from_millis(2000),
    std::time::Duration::from_millis(4000),
];

/// Metadata key of the id each commit attempt carries.
pub const COMMAND_ID: &str = "command_id";

/// The error a store gives (inside `AggregateError::DatabaseConnectionError`) when the database
/// could not be used at all, so that nothing can have been stored (no connection could be had):
/// the bus then answers at once, without reading the aggregate back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NothingStored(pub String);

fn from_aggregate_error<E: std::error::Error>(err: AggregateError<E>) -> CommandError<E> {
    match err {
        AggregateError::UserError(e) => CommandError::Rejected(e),
        AggregateError::AggregateConflict => CommandError::Conflict,
        AggregateError::DatabaseConnectionError(e) => CommandError::Unavailable(e.to_string()),
        AggregateError::DeserializationError(e) => {
            CommandError::Internal(format!("stored data does not deserialize: {e}"))
        }
        AggregateError::UnexpectedError(e) => CommandError::Internal(e.to_string()),
    }
}

#[async_trait]
impl<A, ES> Execute<A> for CommandBus<ES>
where
    // Every aggregate of this service decides purely, so it takes no services.
    A: Aggregate<Services = ()> + 'static,
    A::Command: Clone + Send + Sync,
    ES: FreshContext<A> + 'static,
    ES::AC: Send,
{
    async fn execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>> {
        counted::<A>(self.try_execute(id, command, ctx, false).await)
    }

    async fn execute_new(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>> {
        counted::<A>(self.try_execute(id, command, ctx, true).await)
    }

    async fn load(&self, id: &str) -> Result<A, CommandError<A::Error>> {
        let mut context = self
            .store
            .load_aggregate(id)
            .await
            .map_err(from_aggregate_error)?;
        // The context owns the aggregate; take it out, leaving a default in its place.
        Ok(std::mem::take(context.aggregate()))
    }
}

/// Counts a command's outcome.
fn counted<A: Aggregate>(
    result: Result<Committed, CommandError<A::Error>>,
) -> Result<Committed, CommandError<A::Error>> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(CommandError::Conflict) => "conflict",
        Err(CommandError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    };
    metrics::counter!("cohort360_commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
        .increment(1);
    result
}

impl<ES> CommandBus<ES> {
    /// After a commit failed for want of the database: the sequence of the last event that
    /// commit `command_id` stored, if it did store them (read back a few times while the
    /// database comes back). `None` when they are not there, or cannot be read.
    async fn stored_commit<A>(&self, id: &str, command_id: &str) -> Option<usize>
    where
        A: Aggregate<Services = ()> + 'static,
        ES: EventStore<A> + 'static,
    {
        for pause in COMMIT_CHECKS {
            tokio::time::sleep(pause).await;
            match self.store.load_events(id).await {
                Ok(events) => {
                    return events
                        .iter()
                        .filter(|e| {
                            e.metadata.get(COMMAND_ID).map(String::as_str) == Some(command_id)
                        })
                        .map(|e| e.sequence)
                        .max();
                }
                Err(_) => continue,
            }
        }
        None
    }

    /// Load (unless `fresh`, or held by the store, the first time), decide, commit; retried on
    /// optimistic-lock conflicts, loading. A decision on a held context that appends nothing
    /// (refused, or a no-op) is taken again on a loaded one, without counting as an attempt: the
    /// held state may be behind, and only an append would have shown it.
    async fn try_execute<A>(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
        fresh: bool,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        ES: FreshContext<A> + 'static,
        ES::AC: Send,
    {
        let mut attempt = 0;
        let mut first = true;
        loop {
            attempt += 1;
            let unread = match (first, fresh) {
                (true, true) => self.store.fresh_context(id).map(|c| (c, false)),
                (true, false) => self.store.held_context(id).map(|c| (c, true)),
                (false, _) => None,
            };
            first = false;
            let (mut context, held) = match unread {
                Some(unread) => unread,
                None => (
                    self.store
                        .load_aggregate(id)
                        .await
                        .map_err(from_aggregate_error)?,
                    false,
                ),
            };
            let sink = EventSink::<A>::default();
            let decided = context
                .aggregate()
                .handle(command.clone(), &(), &sink)
                .await;
            match decided {
                Err(_) if held => {
                    attempt -= 1;
                    continue;
                }
                refused => refused.map_err(CommandError::Rejected)?,
            }
            let events = sink.collect().await;
            if held && events.is_empty() {
                attempt -= 1;
                continue;
            }
            if events.is_empty() {
                return Ok(Committed {
                    aggregate_type: A::TYPE,
                    aggregate_id: id.to_string(),
                    last_sequence: None,
                });
            }
            let command_id = uuid::Uuid::new_v4().to_string();
            let mut metadata = ctx.metadata();
            metadata.insert(COMMAND_ID.to_string(), command_id.clone());
            let lost_answer = match self.store.commit(events, context, metadata).await {
                Ok(envelopes) => {
                    return Ok(Committed {
                        aggregate_type: A::TYPE,
                        aggregate_id: id.to_string(),
                        last_sequence: envelopes.last().map(|e| e.sequence),
                    });
                }
                Err(AggregateError::DatabaseConnectionError(e)) => {
                    if e.downcast_ref::<NothingStored>().is_some() {
                        return Err(CommandError::Unavailable(e.to_string()));
                    }
                    e.to_string()
                }
                Err(AggregateError::AggregateConflict) if attempt < self.max_attempts => {
                    metrics::counter!("cohort360_command_conflicts_total", "aggregate" => A::TYPE)
                        .increment(1);
                    tracing::debug!(
                        aggregate.id = id,
                        attempt,
                        "optimistic lock conflict, retrying"
                    );
                    continue;
                }
                Err(e) => return Err(from_aggregate_error(e)),
            };
            return match self.stored_commit::<A>(id, &command_id).await {
                Some(last_sequence) => {
                    tracing::warn!(
                        aggregate.id = id,
                        "the commit's answer was lost, but its events are stored"
                    );
                    Ok(Committed {
                        aggregate_type: A::TYPE,
                        aggregate_id: id.to_string(),
                        last_sequence: Some(last_sequence),
                    })
                }
                None => Err(CommandError::Unavailable(lost_answer)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{TimeZone, Utc};
    use cqrs_es::mem_store::MemStore;
    use cqrs_es::{EventEnvelope, EventStore};
    use domain::folder::{Folder, FolderCommand};
    use uuid::Uuid;

    use super::*;

    /// An in-memory store whose first `conflicts` commits lose the optimistic-lock race.
    struct Conflicting {
        inner: MemStore<Folder>,
        conflicts: AtomicUsize,
        commits_tried: AtomicUsize,
        loads: AtomicUsize,
        /// After the conflicts: commits answer a connection error, having stored (`Some(true)`)
        /// or not (`Some(false)`) the events.
        connection_lost: Option<bool>,
        /// What [`FreshContext::held_context`] answers: a state and its sequence.
        held: std::sync::Mutex<Option<(Folder, usize)>>,
    }

    impl EventStore<Folder> for Conflicting {
        type AC = <MemStore<Folder> as EventStore<Folder>>::AC;

        async fn load_events(
            &self,
            id: &str,
        ) -> Result<Vec<EventEnvelope<Folder>>, AggregateError<domain::folder::FolderError>>
        {
            self.inner.load_events(id).await
        }

        async fn load_aggregate(
            &self,
            id: &str,
        ) -> Result<Self::AC, AggregateError<domain::folder::FolderError>> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.inner.load_aggregate(id).await
        }

        async fn commit(
            &self,
            events: Vec<domain::folder::FolderEvent>,
            context: Self::AC,
            metadata: HashMap<String, String>,
        ) -> Result<Vec<EventEnvelope<Folder>>, AggregateError<domain::folder::FolderError>>
        {
            self.commits_tried.fetch_add(1, Ordering::SeqCst);
            let lost = self
                .conflicts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lost {
                return Err(AggregateError::AggregateConflict);
            }
            let gone = || AggregateError::DatabaseConnectionError("connection reset".into());
            match self.connection_lost {
                None => self.inner.commit(events, context, metadata).await,
                Some(true) => {
                    self.inner.commit(events, context, metadata).await?;
                    Err(gone())
                }
                Some(false) => Err(gone()),
            }
        }
    }

    impl FreshContext<Folder> for Conflicting {
        fn fresh_context(&self, id: &str) -> Option<Self::AC> {
            self.inner.fresh_context(id)
        }

        fn held_context(&self, id: &str) -> Option<Self::AC> {
            let (aggregate, current_sequence) = self.held.lock().unwrap().clone()?;
            Some(cqrs_es::mem_store::MemStoreAggregateContext {
                aggregate_id: id.to_string(),
                aggregate,
                current_sequence,
            })
        }
    }

    fn store(conflicts: usize) -> Conflicting {
        Conflicting {
            inner: MemStore::default(),
            conflicts: AtomicUsize::new(conflicts),
            commits_tried: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            connection_lost: None,
            held: std::sync::Mutex::new(None),
        }
    }

    #[tokio::test]
    async fn a_creation_under_a_fresh_id_loads_nothing_and_a_taken_id_is_decided_on_its_state() {
        let bus = CommandBus::new(store(0), 5);
        let committed = bus.execute_new("f", create(), &ctx()).await.unwrap();
        assert_eq!(committed.last_sequence, Some(1));
        assert_eq!(bus.store.loads.load(Ordering::SeqCst), 0);
        // The id turns out to be taken: the append loses, the command is decided again on the
        // stored folder, which refuses a second creation.
        bus.store.conflicts.store(1, Ordering::SeqCst);
        let err = bus.execute_new("f", create(), &ctx()).await.unwrap_err();
        assert!(
            matches!(
                err,
                CommandError::Rejected(domain::folder::FolderError::AlreadyExists)
            ),
            "{err:?}"
        );
        assert_eq!(bus.store.loads.load(Ordering::SeqCst), 1);
        assert_eq!(bus.store.inner.load_events("f").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stored_commit_whose_answer_was_lost_is_a_success_and_an_unstored_one_is_not() {
        let stored = CommandBus::new(
            Conflicting {
                connection_lost: Some(true),
                ..store(0)
            },
            5,
        );
        let committed = stored.execute("f", create(), &ctx()).await.unwrap();
        assert_eq!(committed.last_sequence, Some(1));
        let events = stored.store.inner.load_events("f").await.unwrap();
        assert_eq!(events.len(), 1, "stored once, not retried");
        assert!(events[0].metadata.contains_key(COMMAND_ID));

        let lost = CommandBus::new(
            Conflicting {
                connection_lost: Some(false),
                ..store(0)
            },
            5,
        );
        let err = lost.execute("f", create(), &ctx()).await.unwrap_err();
        assert!(matches!(err, CommandError::Unavailable(_)), "{err:?}");
        assert!(lost.store.inner.load_events("f").await.unwrap().is_empty());
    }

    fn ctx() -> CommandContext {
        CommandContext {
            user: "alice".into(),
            impersonator: Some("admin".into()),
            correlation_id: "c".into(),
            causation_id: "c".into(),
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    fn create() -> FolderCommand {
        FolderCommand::Create {
            folder_id: Uuid::nil(),
            owner: "alice".into(),
            name: "F".into(),
            description: None,
            at: ctx().at,
        }
    }

    #[tokio::test]
    async fn a_conflict_is_retried_by_reloading_the_aggregate() {
        let bus = CommandBus::new(store(2), 5);
        let committed = bus.execute("f", create(), &ctx()).await.unwrap();
        assert_eq!(committed.last_sequence, Some(1));
        assert_eq!(bus.store.commits_tried.load(Ordering::SeqCst), 3);
        let events = bus.store.inner.load_events("f").await.unwrap();
        assert_eq!(
            events[0].metadata.get("impersonator").map(String::as_str),
            Some("admin")
        );
    }

    #[tokio::test]
    async fn conflicts_beyond_the_bound_answer_conflict() {
        let bus = CommandBus::new(store(usize::MAX), 5);
        let err = bus.execute("f", create(), &ctx()).await.unwrap_err();
        assert!(matches!(err, CommandError::Conflict));
        assert_eq!(bus.store.commits_tried.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_refused_command_commits_nothing_and_a_no_op_appends_nothing() {
        let bus = CommandBus::new(store(0), 5);
        bus.execute("f", create(), &ctx()).await.unwrap();
        let again = bus.execute("f", create(), &ctx()).await.unwrap_err();
        assert!(matches!(
            again,
            CommandError::Rejected(domain::folder::FolderError::AlreadyExists)
        ));
        let same_name = FolderCommand::Update {
            by: "alice".into(),
            name: Some("F".into()),
            description: None,
            at: ctx().at,
        };
        let noop = bus.execute("f", same_name, &ctx()).await.unwrap();
        assert_eq!(noop.last_sequence, None);
        assert_eq!(bus.store.commits_tried.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_held_state_appends_without_a_load_and_what_it_refuses_or_leaves_unchanged_is_decided_again_loaded()
     {
        let rename = |name: &str| FolderCommand::Update {
            by: "alice".into(),
            name: Some(name.into()),
            description: None,
            at: ctx().at,
        };
        let bus = CommandBus::new(store(0), 5);
        bus.execute_new("f", create(), &ctx()).await.unwrap();
        let created = bus.load("f").await.unwrap();
        *bus.store.held.lock().unwrap() = Some((created.clone(), 1));
        let loads = || bus.store.loads.load(Ordering::SeqCst);
        let loaded = loads();
        // Held and current: decided and appended without reading anything.
        let renamed = bus.execute("f", rename("G"), &ctx()).await.unwrap();
        assert_eq!(renamed.last_sequence, Some(2));
        assert_eq!(loads(), loaded);
        // Held as created, before that rename: nothing to do for "F" there; loaded, it renames.
        let back = bus.execute("f", rename("F"), &ctx()).await.unwrap();
        assert_eq!(back.last_sequence, Some(3));
        assert_eq!(loads(), loaded + 1);
        // Held from before the folder existed: refused there, done on the stored state.
        *bus.store.held.lock().unwrap() = Some((Folder::default(), 0));
        let again = bus.execute("f", rename("H"), &ctx()).await.unwrap();
        assert_eq!(again.last_sequence, Some(4));
        // Refused on the stored state too: the refusal is the answer.
        let foreign = FolderCommand::Update {
            by: "bob".into(),
            name: Some("B".into()),
            description: None,
            at: ctx().at,
        };
        let refused = bus.execute("f", foreign, &ctx()).await.unwrap_err();
        assert!(matches!(
            refused,
            CommandError::Rejected(domain::folder::FolderError::NotFound)
        ));
        // Each command appended once; the re-decisions took no attempt.
        assert_eq!(bus.store.commits_tried.load(Ordering::SeqCst), 4);
    }
}
