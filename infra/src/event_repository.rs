//! The event repository behind the command buses: postgres-es's, except that a commit without a
//! snapshot (19 commits in 20) is one `INSERT` in autocommit rather than `BEGIN`, one `INSERT`
//! per event and `COMMIT`: two round trips fewer on every command. The rows are the ones
//! postgres-es writes (payload and metadata normalised through `jsonb`, as its bound values
//! are), and a duplicate `(aggregate, sequence)` is the same optimistic-lock conflict.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

/// postgres-es's repository with one-statement commits.
pub struct EventRepository {
    pool: PgPool,
    inner: PostgresEventRepository,
}

impl EventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            pool,
        }
    }

    async fn insert_events<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        let mut ids = Vec::with_capacity(events.len());
        let mut sequences = Vec::with_capacity(events.len());
        let (mut types, mut versions) = (Vec::new(), Vec::new());
        let (mut payloads, mut metadata) = (Vec::new(), Vec::new());
        for event in events {
            ids.push(event.aggregate_id.as_str());
            sequences.push(i64::try_from(event.sequence).unwrap_or(i64::MAX));
            types.push(event.event_type.as_str());
            versions.push(event.event_version.as_str());
            payloads.push(event.payload.to_string());
            metadata.push(event.metadata.to_string());
        }
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata)
             SELECT $1, id, seq, kind, version, payload::jsonb::json, metadata::jsonb::json
               FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                           $7::text[]) AS t(id, seq, kind, version, payload, metadata)",
        )
        .bind(A::TYPE)
        .bind(&ids)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .execute(&self.pool)
        .await
        .map_err(persistence_error)?;
        Ok(())
    }
}

/// As postgres-es classifies its errors.
fn persistence_error(e: sqlx::Error) -> PersistenceError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => PersistenceError::ConnectionError(Box::new(e)),
        _ => PersistenceError::UnknownError(Box::new(e)),
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.inner.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.inner
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.inner.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match snapshot_update {
            None if events.is_empty() => Ok(()),
            None => self.insert_events::<A>(events).await,
            // The snapshot's own optimistic check needs the transaction postgres-es opens.
            Some(update) => self.inner.persist::<A>(events, Some(update)).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.inner.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.inner.stream_all_events::<A>().await
    }
}
