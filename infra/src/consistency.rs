//! Read-your-writes: a command answers once the projectors have applied its events.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commands::Committed;
use commands::ports::Consistency;
use projections::Cursor;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::log::cursor_of;
use crate::projector::Projection;

/// Waits on the progress of this process's projectors, for at most `timeout`: only those whose
/// tables the committed aggregates affect.
pub struct ProjectorConsistency {
    pool: PgPool,
    projectors: Vec<(Arc<dyn Projection>, watch::Receiver<Cursor>)>,
    timeout: Duration,
}

impl ProjectorConsistency {
    pub fn new(
        pool: PgPool,
        projectors: Vec<(Arc<dyn Projection>, watch::Receiver<Cursor>)>,
        timeout: Duration,
    ) -> Self {
        Self {
            pool,
            projectors,
            timeout,
        }
    }
}

#[async_trait]
impl Consistency for ProjectorConsistency {
    async fn wait_for(&self, committed: &[Committed]) -> bool {
        let mut target: Option<Cursor> = None;
        for c in committed {
            let Some(sequence) = c.last_sequence else {
                continue;
            };
            let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
            match cursor_of(&self.pool, c.aggregate_type, &c.aggregate_id, sequence).await {
                Ok(cursor) => target = target.max(cursor),
                Err(e) => {
                    tracing::warn!(error = %e, "read-your-writes: the write's position is unknown");
                    return false;
                }
            }
        }
        let Some(target) = target else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let affected = self.projectors.iter().filter(|(projection, _)| {
            committed
                .iter()
                .any(|c| c.last_sequence.is_some() && projection.reads(c.aggregate_type))
        });
        for (_, progress) in affected {
            let mut progress = progress.clone();
            let reached =
                tokio::time::timeout_at(deadline, progress.wait_for(|c| *c >= target)).await;
            match reached {
                Ok(Ok(_)) => {}
                // Timed out, or the projector stopped: the write stands, the read model lags.
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(target = %target, "read models did not catch up in time");
                    return false;
                }
            }
        }
        true
    }
}
