//! Bulk commands: many commands, each on its own aggregate, decided by the aggregates and
//! appended in one transaction, so that a bulk operation (a perimeter tree import) costs one
//! read and one multi-row INSERT per batch instead of a load and a commit per aggregate.
//!
//! Every event still comes from the aggregate's own `handle` on its current state (folded from
//! the stored events, upcast as the command bus does), with the command bus's metadata. The
//! optimistic lock is the events table's primary key: if any aggregate of the batch was written
//! meanwhile, the whole transaction fails on it and the batch runs again command by command
//! through the ordinary bus, which retries conflicts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use commands::bus::COMMAND_ID;
use commands::{CommandContext, CommandError, Committed, Execute};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use sqlx::PgPool;

/// A command bus whose batches are appended in one transaction.
pub struct BatchingBus<A: Aggregate> {
    single: Arc<dyn Execute<A>>,
    pool: PgPool,
}

impl<A: Aggregate> BatchingBus<A> {
    /// `single` runs the commands one at a time (and the batches that meet a conflict).
    pub fn new(single: Arc<dyn Execute<A>>, pool: PgPool) -> Self {
        Self { single, pool }
    }
}

/// Why a batch could not be appended as one.
enum BatchFailure<E: std::error::Error> {
    /// An aggregate was written meanwhile: run the commands one by one.
    Conflict,
    Failed(CommandError<E>),
}

impl<E: std::error::Error> From<sqlx::Error> for BatchFailure<E> {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => Self::Conflict,
            _ if crate::sql::is_unavailable(&e) => {
                Self::Failed(CommandError::Unavailable(e.to_string()))
            }
            _ => Self::Failed(CommandError::Internal(e.to_string())),
        }
    }
}

/// One stored event of an aggregate of the batch.
#[derive(sqlx::FromRow)]
struct StoredEvent {
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: serde_json::Value,
}

/// The rows of one multi-row INSERT, column by column.
#[derive(Default)]
struct NewRows {
    ids: Vec<String>,
    sequences: Vec<i64>,
    types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<String>,
    metadata: Vec<String>,
}

impl<A> BatchingBus<A>
where
    A: Aggregate<Services = ()> + 'static,
    A::Command: Clone + Send + Sync,
{
    /// The current state and last sequence of each aggregate in `ids`.
    async fn states(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, (A, i64)>, BatchFailure<A::Error>> {
        let stored: Vec<StoredEvent> = sqlx::query_as(
            "SELECT aggregate_id, sequence, event_type, event_version, payload FROM events
              WHERE aggregate_type = $1 AND aggregate_id = ANY($2)
              ORDER BY aggregate_id, sequence",
        )
        .bind(A::TYPE)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut states: HashMap<String, (A, i64)> = HashMap::new();
        for event in stored {
            let payload =
                domain::upcast::upcast(&event.event_type, &event.event_version, event.payload)
                    .map_err(|e| BatchFailure::Failed(CommandError::Internal(e.to_string())))?;
            let decoded: A::Event = serde_json::from_value(payload).map_err(|e| {
                BatchFailure::Failed(CommandError::Internal(format!(
                    "stored data does not deserialize: {e}"
                )))
            })?;
            let (state, last) = states.entry(event.aggregate_id).or_default();
            state.apply(decoded);
            *last = event.sequence;
        }
        Ok(states)
    }

    async fn try_batch(
        &self,
        commands: &[(String, A::Command)],
        ctx: &CommandContext,
    ) -> Result<Vec<Committed>, BatchFailure<A::Error>> {
        let ids: Vec<String> = commands.iter().map(|(id, _)| id.clone()).collect();
        let mut states = self.states(&ids).await?;
        let command_id = uuid::Uuid::new_v4().to_string();
        let mut metadata = ctx.metadata();
        metadata.insert(COMMAND_ID.to_string(), command_id);
        let metadata = serde_json::to_string(&metadata)
            .map_err(|e| BatchFailure::Failed(CommandError::Internal(e.to_string())))?;
        let mut rows = NewRows::default();
        let mut committed = Vec::with_capacity(commands.len());
        for (id, command) in commands {
            let (mut state, last) = states.remove(id).unwrap_or_default();
            let sink = EventSink::<A>::default();
            state
                .handle(command.clone(), &(), &sink)
                .await
                .map_err(|e| BatchFailure::Failed(CommandError::Rejected(e)))?;
            let mut sequence = last;
            for event in sink.collect().await {
                sequence += 1;
                let payload = serde_json::to_string(&event)
                    .map_err(|e| BatchFailure::Failed(CommandError::Internal(e.to_string())))?;
                rows.ids.push(id.clone());
                rows.sequences.push(sequence);
                rows.types.push(event.event_type());
                rows.versions.push(event.event_version());
                rows.payloads.push(payload);
                rows.metadata.push(metadata.clone());
            }
            committed.push(Committed {
                aggregate_type: A::TYPE,
                aggregate_id: id.clone(),
                last_sequence: (sequence > last).then(|| usize::try_from(sequence).unwrap_or(0)),
            });
        }
        if !rows.ids.is_empty() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 SELECT $1, id, seq, kind, version, payload::json, metadata::json
                   FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                               $7::text[]) AS t(id, seq, kind, version, payload, metadata)",
            )
            .bind(A::TYPE)
            .bind(&rows.ids)
            .bind(&rows.sequences)
            .bind(&rows.types)
            .bind(&rows.versions)
            .bind(&rows.payloads)
            .bind(&rows.metadata)
            .execute(&self.pool)
            .await?;
        }
        Ok(committed)
    }
}

#[async_trait]
impl<A> Execute<A> for BatchingBus<A>
where
    A: Aggregate<Services = ()> + 'static,
    A::Command: Clone + Send + Sync,
{
    async fn execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.single.execute(id, command, ctx).await
    }

    async fn load(&self, id: &str) -> Result<A, CommandError<A::Error>> {
        self.single.load(id).await
    }

    async fn execute_batch(
        &self,
        commands: Vec<(String, A::Command)>,
        ctx: &CommandContext,
    ) -> Result<Vec<Committed>, CommandError<A::Error>>
    where
        A::Command: Send + 'async_trait,
    {
        let distinct: HashSet<&str> = commands.iter().map(|(id, _)| id.as_str()).collect();
        if distinct.len() == commands.len() {
            match self.try_batch(&commands, ctx).await {
                Ok(committed) => return Ok(committed),
                Err(BatchFailure::Failed(e)) => return Err(e),
                Err(BatchFailure::Conflict) => {
                    tracing::debug!(
                        aggregate = A::TYPE,
                        "a batch met a concurrent write; appending it command by command"
                    );
                }
            }
        }
        self.single.execute_batch(commands, ctx).await
    }
}
