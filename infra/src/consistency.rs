//! Read-your-writes: a command answers once the projectors have applied its events.
//!
//! The wait costs no query: the command wakes the projectors that read its aggregates (they
//! read the event table at once instead of waiting for the relay and NATS), then waits until
//! each has recorded the command's last event in its [`AppliedLog`]. Only if a projector has
//! not within [`CURSOR_FALLBACK`] (it skipped the event because another instance had already
//! applied it, or the log was busy) does the wait look the event's cursor up and follow the
//! projector's progress instead.

use std::time::Duration;

use async_trait::async_trait;
use commands::Committed;
use commands::ports::Consistency;
use projections::Cursor;
use sqlx::PgPool;

use crate::log::cursor_of;
use crate::projector::ProjectorHandle;

/// How long to wait on the applied log before looking the event's cursor up.
const CURSOR_FALLBACK: Duration = Duration::from_millis(250);

/// How soon a waiting command wakes a projector again after one of its reads that began after
/// the commit ended without the command's event, then doubling up to [`REWAKE_MAX`]: the event
/// is held back behind an older transaction still running (another command, a request log
/// flush, a checkpoint), which usually ends within a millisecond but sends no signal of its own.
const REWAKE: Duration = Duration::from_millis(1);
const REWAKE_MAX: Duration = Duration::from_millis(16);

/// How long a wake may go unanswered (no read of the log ends) before the command wakes the
/// projector again: a read that failed, or a projector busy elsewhere.
const UNANSWERED: Duration = Duration::from_millis(16);

/// Waits on the progress of this process's projectors, for at most `timeout`: only those whose
/// tables the committed aggregates affect.
pub struct ProjectorConsistency {
    pool: PgPool,
    projectors: Vec<ProjectorHandle>,
    timeout: Duration,
}

impl ProjectorConsistency {
    pub fn new(pool: PgPool, projectors: Vec<ProjectorHandle>, timeout: Duration) -> Self {
        Self {
            pool,
            projectors,
            timeout,
        }
    }

    /// Waits until `projector` has applied event `sequence` of the aggregate, or `deadline`.
    /// `begun` is how many reads of the log the projector had begun when it was woken.
    async fn wait_one(
        &self,
        projector: &ProjectorHandle,
        committed: &Committed,
        sequence: i64,
        mut begun: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let (kind, id) = (committed.aggregate_type, committed.aggregate_id.as_str());
        let mut changed = projector.applied.subscribe();
        let mut ended = projector.reads.subscribe();
        let fallback_at = tokio::time::Instant::now() + CURSOR_FALLBACK;
        let mut rewake = REWAKE;
        // Set once a read that began after the wake ended without the event.
        let mut held_back_until = None;
        let mut unanswered_at = tokio::time::Instant::now() + UNANSWERED;
        loop {
            if projector.applied.has(kind, id, sequence) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            if now >= fallback_at {
                return self
                    .follow_progress(projector, committed, sequence, deadline)
                    .await;
            }
            if held_back_until.is_none() && *ended.borrow_and_update() > begun {
                held_back_until = Some(now + rewake);
            }
            let wake_at = held_back_until.unwrap_or(unanswered_at);
            tokio::select! {
                _ = changed.changed() => {}
                _ = ended.changed() => {}
                () = tokio::time::sleep_until(wake_at.min(deadline).min(fallback_at)) => {
                    if tokio::time::Instant::now() >= wake_at {
                        if held_back_until.take().is_some() {
                            rewake = (rewake * 2).min(REWAKE_MAX);
                        }
                        begun = projector.reads.begun();
                        projector.wake.notify_one();
                        unanswered_at = tokio::time::Instant::now() + UNANSWERED;
                    }
                }
            }
        }
    }

    /// The slow path: the event's cursor, then the projector's progress past it.
    async fn follow_progress(
        &self,
        projector: &ProjectorHandle,
        committed: &Committed,
        sequence: i64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let target = match cursor_of(
            &self.pool,
            committed.aggregate_type,
            &committed.aggregate_id,
            sequence,
        )
        .await
        {
            Ok(Some(cursor)) => cursor,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "read-your-writes: the write's position is unknown");
                return false;
            }
        };
        let mut progress = projector.progress.clone();
        let reached =
            tokio::time::timeout_at(deadline, progress.wait_for(|c: &Cursor| *c >= target));
        matches!(reached.await, Ok(Ok(_)))
    }
}

#[async_trait]
impl Consistency for ProjectorConsistency {
    async fn wait_for(&self, committed: &[Committed]) -> bool {
        let written: Vec<(&Committed, i64)> = committed
            .iter()
            .filter_map(|c| {
                c.last_sequence
                    .map(|s| (c, i64::try_from(s).unwrap_or(i64::MAX)))
            })
            .collect();
        let affected: Vec<&ProjectorHandle> = self
            .projectors
            .iter()
            .filter(|p| {
                written
                    .iter()
                    .any(|(c, _)| p.projection.reads(c.aggregate_type))
            })
            .collect();
        // Reads numbered after these begin after the commit.
        let begun: Vec<u64> = affected.iter().map(|p| p.reads.begun()).collect();
        for projector in &affected {
            projector.wake.notify_one();
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        for (projector, begun) in affected.into_iter().zip(begun) {
            for (c, sequence) in &written {
                if !projector.projection.reads(c.aggregate_type) {
                    continue;
                }
                if !self
                    .wait_one(projector, c, *sequence, begun, deadline)
                    .await
                {
                    tracing::warn!(
                        projection = projector.projection.name(),
                        aggregate = c.aggregate_type,
                        "read models did not catch up in time"
                    );
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use tokio::sync::{Notify, watch};

    use super::*;
    use crate::applied::{AppliedLog, LogReads};
    use crate::log::CommittedEvent;
    use crate::log::test_event as event;
    use crate::projector::{Projection, ProjectionError};

    struct Folders;

    #[async_trait]
    impl Projection for Folders {
        fn name(&self) -> &'static str {
            "folders"
        }
        fn reads(&self, aggregate_type: &str) -> bool {
            aggregate_type == "Folder"
        }
        async fn apply(
            &self,
            _: &mut sqlx::PgConnection,
            _: &CommittedEvent,
        ) -> Result<(), ProjectionError> {
            Ok(())
        }
    }

    /// A pool on which every query fails: a wait that answers `true` made none.
    fn unusable_pool() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool")
    }

    fn handle(applied: Arc<AppliedLog>, wake: Arc<Notify>) -> ProjectorHandle {
        ProjectorHandle {
            projection: Arc::new(Folders),
            progress: watch::channel(projections::Cursor::START).1,
            applied,
            wake,
            reads: Arc::new(LogReads::default()),
        }
    }

    fn committed(aggregate_type: &'static str, id: &str, sequence: usize) -> Committed {
        Committed {
            aggregate_type,
            aggregate_id: id.into(),
            last_sequence: Some(sequence),
        }
    }

    #[tokio::test]
    async fn a_write_the_projector_records_is_waited_for_without_a_query() {
        let applied = Arc::new(AppliedLog::default());
        let wake = Arc::new(Notify::new());
        let consistency = ProjectorConsistency::new(
            unusable_pool(),
            vec![handle(applied.clone(), wake.clone())],
            Duration::from_secs(30),
        );
        // The projector, woken by the command, applies the event a little later.
        let projector = tokio::spawn({
            let (applied, wake) = (applied.clone(), wake.clone());
            async move {
                wake.notified().await;
                applied.record([&event("f1", 1), &event("f1", 2)]);
            }
        });
        assert!(consistency.wait_for(&[committed("Folder", "f1", 2)]).await);
        projector.await.unwrap();
        // Already applied: at once. Not read by any projection: nothing to wait for.
        assert!(consistency.wait_for(&[committed("Folder", "f1", 1)]).await);
        assert!(consistency.wait_for(&[committed("Request", "r1", 7)]).await);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_read_begun_after_the_commit_that_misses_the_event_wakes_the_projector_again() {
        let applied = Arc::new(AppliedLog::default());
        let wake = Arc::new(Notify::new());
        let projector = handle(applied.clone(), wake.clone());
        let reads = projector.reads.clone();
        let consistency = Arc::new(ProjectorConsistency::new(
            unusable_pool(),
            vec![projector],
            Duration::from_secs(30),
        ));
        let under_way = reads.begin();
        let waiting = tokio::spawn({
            let consistency = consistency.clone();
            async move { consistency.wait_for(&[committed("Folder", "f3", 1)]).await }
        });
        wake.notified().await;
        // A read that began before the commit ends without the event: the wake is still pending
        // with the projector, so it is not repeated.
        drop(under_way);
        let again = tokio::time::timeout(Duration::from_millis(10), wake.notified()).await;
        assert!(
            again.is_err(),
            "woken again for a read that began before the commit"
        );
        // One that began after it and misses the event: held back, woken again shortly.
        drop(reads.begin());
        tokio::time::timeout(REWAKE * 2, wake.notified())
            .await
            .expect("woken again");
        applied.record([&event("f3", 1)]);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_write_never_recorded_falls_back_to_its_cursor_and_reports_a_failed_lookup() {
        let consistency = ProjectorConsistency::new(
            unusable_pool(),
            vec![handle(
                Arc::new(AppliedLog::default()),
                Arc::new(Notify::new()),
            )],
            Duration::from_secs(30),
        );
        // The fallback looks the cursor up: the database is unusable, so the answer is pending.
        assert!(!consistency.wait_for(&[committed("Folder", "f2", 1)]).await);
    }
}
