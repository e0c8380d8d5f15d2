//! Idempotency keys in `ops.idempotency_keys` ([`projections::idempotency`]).

use std::time::Duration;

use async_trait::async_trait;
use projections::ReadError;
use projections::idempotency::{Claim, IdempotencyKeys, StoredAnswer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sql::read_error;

/// A claimed key whose request has not answered after this long is presumed dead (requests
/// time out after 30 s; a commit sent just before can still land in the next few seconds): a
/// repeat then looks for what it wrote.
const ABANDONED_AFTER_SECONDS: f64 = 35.0;

/// The Postgres store of idempotency keys.
#[derive(Debug, Clone)]
pub struct PgIdempotencyKeys {
    pool: PgPool,
}

impl PgIdempotencyKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Tries to claim a new key; `None` if the key exists.
    async fn insert(
        &self,
        username: &str,
        key: &str,
        fingerprint: &[u8],
    ) -> Result<Option<Uuid>, ReadError> {
        let request_id = Uuid::new_v4();
        sqlx::query_scalar(
            "INSERT INTO ops.idempotency_keys
                    (username, key, fingerprint, request_id, log_position, claimed_at)
             VALUES ($1, $2, $3, $4, (SELECT COALESCE(max(position), 0) FROM events), now())
             ON CONFLICT (username, key) DO NOTHING
             RETURNING request_id",
        )
        .bind(username)
        .bind(key)
        .bind(fingerprint)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)
    }

    /// The first event a request wrote, if any: `(aggregate_type, aggregate_id)`.
    async fn first_write(
        &self,
        request_id: Uuid,
        after_position: i64,
    ) -> Result<Option<(String, String)>, ReadError> {
        sqlx::query_as(
            "SELECT aggregate_type, aggregate_id FROM events
              WHERE position > $1 AND metadata->>'causation_id' = $2
              ORDER BY position LIMIT 1",
        )
        .bind(after_position)
        .bind(request_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)
    }

    /// Claims an abandoned key again, for a new request; `None` if someone else did first.
    async fn reclaim(
        &self,
        username: &str,
        key: &str,
        abandoned: Uuid,
    ) -> Result<Option<Uuid>, ReadError> {
        sqlx::query_scalar(
            "UPDATE ops.idempotency_keys
                SET request_id = $4, claimed_at = now(),
                    log_position = (SELECT COALESCE(max(position), 0) FROM events)
              WHERE username = $1 AND key = $2 AND request_id = $3 AND status IS NULL
             RETURNING request_id",
        )
        .bind(username)
        .bind(key)
        .bind(abandoned)
        .bind(Uuid::new_v4())
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)
    }
}

/// A stored key, as `claim` reads it.
#[derive(sqlx::FromRow)]
struct Row {
    fingerprint: Vec<u8>,
    request_id: Uuid,
    log_position: i64,
    status: Option<i16>,
    content_type: Option<String>,
    consistency: Option<String>,
    body: Option<Vec<u8>>,
    age_seconds: f64,
}

#[async_trait]
impl IdempotencyKeys for PgIdempotencyKeys {
    async fn claim(
        &self,
        username: &str,
        key: &str,
        fingerprint: &[u8],
    ) -> Result<Claim, ReadError> {
        // Twice at most: the row may be purged between the insert and the read.
        for _ in 0..2 {
            if let Some(request_id) = self.insert(username, key, fingerprint).await? {
                return Ok(Claim::Run { request_id });
            }
            let row: Option<Row> = sqlx::query_as(
                "SELECT fingerprint, request_id, log_position, status, content_type, consistency,
                        body, EXTRACT(EPOCH FROM now() - claimed_at)::float8 AS age_seconds
                   FROM ops.idempotency_keys WHERE username = $1 AND key = $2",
            )
            .bind(username)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
            let Some(row) = row else { continue };
            if row.fingerprint != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let Some(status) = row.status {
                return Ok(Claim::Answered(StoredAnswer {
                    status: u16::try_from(status).unwrap_or(500),
                    content_type: row.content_type,
                    consistency: row.consistency,
                    body: row.body.unwrap_or_default(),
                }));
            }
            if row.age_seconds < ABANDONED_AFTER_SECONDS {
                return Ok(Claim::InProgress);
            }
            if let Some((aggregate_type, aggregate_id)) =
                self.first_write(row.request_id, row.log_position).await?
            {
                return Ok(Claim::Interrupted {
                    request_id: row.request_id,
                    aggregate_type,
                    aggregate_id,
                });
            }
            return Ok(match self.reclaim(username, key, row.request_id).await? {
                Some(request_id) => Claim::Run { request_id },
                None => Claim::InProgress,
            });
        }
        Ok(Claim::InProgress)
    }

    async fn complete(
        &self,
        username: &str,
        key: &str,
        request_id: Uuid,
        answer: &StoredAnswer,
    ) -> Result<(), ReadError> {
        sqlx::query(
            "UPDATE ops.idempotency_keys
                SET status = $4, content_type = $5, consistency = $6, body = $7,
                    completed_at = now()
              WHERE username = $1 AND key = $2 AND request_id = $3",
        )
        .bind(username)
        .bind(key)
        .bind(request_id)
        .bind(i16::try_from(answer.status).unwrap_or(500))
        .bind(&answer.content_type)
        .bind(&answer.consistency)
        .bind(&answer.body)
        .execute(&self.pool)
        .await
        .map_err(read_error)?;
        Ok(())
    }

    async fn release(&self, username: &str, key: &str, request_id: Uuid) -> Result<(), ReadError> {
        sqlx::query(
            "DELETE FROM ops.idempotency_keys
              WHERE username = $1 AND key = $2 AND request_id = $3 AND status IS NULL",
        )
        .bind(username)
        .bind(key)
        .bind(request_id)
        .execute(&self.pool)
        .await
        .map_err(read_error)?;
        Ok(())
    }
}

/// Deletes keys older than `retention`, every hour, until `shutdown`.
pub async fn run_purger(pool: PgPool, retention: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = sqlx::query(
            "DELETE FROM ops.idempotency_keys WHERE claimed_at < now() - make_interval(secs => $1)",
        )
        .bind(retention.as_secs_f64())
        .execute(&pool)
        .await
        {
            tracing::warn!(error = %e, "expired idempotency keys not deleted");
        }
        if crate::follow::sleep_or_stop(&shutdown, Duration::from_secs(3600)).await {
            return;
        }
    }
}
