//! Recently used aggregates kept in memory in front of the event store.
//!
//! Loading an aggregate reads its latest snapshot and the events after it, then deserializes the
//! snapshot: for a request with hundreds of versions (each holding its query), that is most of
//! what saving one more version costs. This store keeps the state of the aggregates it loaded or
//! wrote, as of their last event, and answers a load with a copy once one query has shown that
//! no event was stored after it (by another instance, or a command that failed after its
//! append). Otherwise, and for aggregates it does not hold, it loads as usual.
//!
//! The command bus skips even that query ([`FreshContext::held_context`]): it decides on the
//! held state, lets the append's optimistic lock catch a state that was behind, and decides
//! again on a loaded state a command the held one refused or found nothing to do for.
//!
//! A successful commit moves the held state forward with the committed events (as the store
//! folds them) and counts the snapshot the commit wrote, if any, as the wrapped store does; a
//! failed commit drops it. The decision is still checked by the append's optimistic lock: a
//! state wrongly believed current can only make a command fail and retry, never write twice.

use std::collections::HashMap;
use std::sync::Mutex;

use commands::bus::FreshContext;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use sqlx::PgPool;

use crate::event_repository::EventRepository;

/// One held aggregate: its state as of `sequence`, the snapshot count the store knows.
struct Held<A> {
    aggregate: A,
    sequence: usize,
    snapshot: Option<usize>,
    /// When it was last used, for eviction.
    used: u64,
}

/// A snapshotting event store with the aggregates it last used held in memory.
pub struct CachedStore<A: Aggregate> {
    inner: PersistedEventStore<EventRepository, A>,
    pool: PgPool,
    snapshot_every: usize,
    capacity: usize,
    held: Mutex<(HashMap<String, Held<A>>, u64)>,
}

impl<A: Aggregate + Clone> CachedStore<A> {
    /// Wraps `inner`, which snapshots every `snapshot_every` events, holding at most `capacity`
    /// aggregates (the least recently used one makes room).
    pub fn new(
        inner: PersistedEventStore<EventRepository, A>,
        pool: PgPool,
        snapshot_every: usize,
        capacity: usize,
    ) -> Self {
        Self {
            inner,
            pool,
            snapshot_every,
            capacity,
            held: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Held<A>>, u64)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the held context of `id`, if any.
    fn copy(&self, id: &str) -> Option<EventStoreAggregateContext<A>> {
        let mut held = self.held();
        let (entries, clock) = &mut *held;
        *clock += 1;
        let entry = entries.get_mut(id)?;
        entry.used = *clock;
        Some(EventStoreAggregateContext {
            aggregate_id: id.to_string(),
            aggregate: entry.aggregate.clone(),
            current_sequence: entry.sequence,
            current_snapshot: entry.snapshot,
        })
    }

    /// Holds a copy of `context`, making room if needed.
    fn hold(&self, context: &EventStoreAggregateContext<A>) {
        let mut held = self.held();
        let (entries, clock) = &mut *held;
        *clock += 1;
        if entries.len() >= self.capacity && !entries.contains_key(&context.aggregate_id) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, h)| h.used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            context.aggregate_id.clone(),
            Held {
                aggregate: context.aggregate.clone(),
                sequence: context.current_sequence,
                snapshot: context.current_snapshot,
                used: *clock,
            },
        );
    }

    fn forget(&self, id: &str) {
        self.held().0.remove(id);
    }

    /// Whether events of `id` were stored after `sequence`.
    async fn stored_after(&self, id: &str, sequence: usize) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT (SELECT 1 FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
                      ORDER BY sequence LIMIT 1) IS NOT NULL",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
    }

    /// Moves the held state of `id` from `sequence` forward by `events`, if it is held there.
    fn advance(&self, id: &str, sequence: usize, events: Vec<A::Event>) {
        let mut held = self.held();
        let Some(entry) = held.0.get_mut(id).filter(|h| h.sequence == sequence) else {
            held.0.remove(id);
            return;
        };
        if writes_snapshot(self.snapshot_every, sequence, events.len()) {
            entry.snapshot = Some(entry.snapshot.map_or(1, |s| s + 1));
        }
        entry.sequence += events.len();
        for event in events {
            entry.aggregate.apply(event);
        }
    }
}

/// Whether committing `events` events after `sequence` writes a snapshot, for a store that
/// snapshots every `every` events: when the commit reaches the next multiple of `every`
/// (cqrs-es's `SourceOfTruth::Snapshot`).
fn writes_snapshot(every: usize, sequence: usize, events: usize) -> bool {
    every > 0 && events >= every - sequence % every
}

impl<A: Aggregate + Clone> EventStore<A> for CachedStore<A> {
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.inner.load_events(id).await
    }

    async fn load_aggregate(&self, id: &str) -> Result<Self::AC, AggregateError<A::Error>> {
        if let Some(context) = self.copy(id) {
            let newer = self
                .stored_after(id, context.current_sequence)
                .await
                .map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?;
            if !newer {
                return Ok(context);
            }
        }
        let context = self.inner.load_aggregate(id).await?;
        self.hold(&context);
        Ok(context)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let id = context.aggregate_id.clone();
        let sequence = context.current_sequence;
        let applied = events.clone();
        match self.inner.commit(events, context, metadata).await {
            Ok(committed) => {
                self.advance(&id, sequence, applied);
                Ok(committed)
            }
            Err(e) => {
                self.forget(&id);
                Err(e)
            }
        }
    }
}

impl<A: Aggregate + Clone> FreshContext<A> for CachedStore<A> {
    fn fresh_context(&self, id: &str) -> Option<Self::AC> {
        let context = self.inner.fresh_context(id)?;
        // Held from its first event on, so that the next command finds it.
        self.hold(&context);
        Some(context)
    }

    /// The held state, without asking whether events were stored after it: a command's
    /// decision to append is checked by the append's optimistic lock, and the bus decides again
    /// on a loaded state whatever a held one refuses or leaves unchanged.
    fn held_context(&self, id: &str) -> Option<Self::AC> {
        self.copy(id)
    }
}

#[cfg(test)]
mod tests {
    use super::writes_snapshot;

    #[test]
    fn a_commit_writes_a_snapshot_when_it_reaches_the_next_multiple() {
        assert!(!writes_snapshot(20, 0, 1));
        assert!(!writes_snapshot(20, 18, 1));
        assert!(writes_snapshot(20, 19, 1));
        assert!(writes_snapshot(20, 18, 2));
        assert!(writes_snapshot(20, 18, 30));
        assert!(!writes_snapshot(20, 20, 19));
        assert!(writes_snapshot(20, 20, 20));
        assert!(!writes_snapshot(0, 5, 100));
    }
}
