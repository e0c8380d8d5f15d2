//! Idempotency keys: a client that sends `Idempotency-Key` with a POST gets, for every repeat of
//! that request (same key, same user, same body), the answer of the first one, and the write is
//! stored once. See the README, "Idempotency keys".
//!
//! Not domain facts: operational records with a retention period, like the request logs. The
//! events a keyed request wrote carry the key's request id as their `causation_id`, which is how
//! the outcome of a request interrupted between its commit and its answer is found again.

use async_trait::async_trait;
use uuid::Uuid;

use crate::ReadError;

/// A stored answer, replayed to every repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    /// `X-Cohort360-Consistency` of the first answer, if any.
    pub consistency: Option<String>,
    pub body: Vec<u8>,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its earlier request was abandoned before writing anything): run the
    /// request, as `request_id`.
    Run { request_id: Uuid },
    /// The first request with this key was answered: replay its answer.
    Answered(StoredAnswer),
    /// The key was used for another request (another path or body).
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
    /// The first request stopped (the process died) after it stored its write, before its
    /// answer was kept: the aggregate its first event belongs to.
    Interrupted {
        request_id: Uuid,
        aggregate_type: String,
        aggregate_id: String,
    },
}

/// The store of idempotency keys.
#[async_trait]
pub trait IdempotencyKeys: Send + Sync {
    /// Claims `key` of `username` for a request whose fingerprint is `fingerprint`.
    async fn claim(
        &self,
        username: &str,
        key: &str,
        fingerprint: &[u8],
    ) -> Result<Claim, ReadError>;
    /// Keeps the answer of the request that claimed the key as `request_id`.
    async fn complete(
        &self,
        username: &str,
        key: &str,
        request_id: Uuid,
        answer: &StoredAnswer,
    ) -> Result<(), ReadError>;
    /// Gives the key up (the request failed without writing): a repeat runs again.
    async fn release(&self, username: &str, key: &str, request_id: Uuid) -> Result<(), ReadError>;
}
