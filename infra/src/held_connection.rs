//! A connection a long-running loop (a projector, the relay) keeps to itself.
//!
//! sqlx pings every connection given back to its pool (one round trip, which cannot be turned
//! off), and handing one out takes the pool's queue. A loop that runs a transaction after every
//! command paid both each time, and the ping's wake-ups compete with the command for the cores.
//! Such a loop takes one connection out of the pool, detached, and gives it back here after each
//! statement or transaction that ended cleanly.
//!
//! As the pool does ([`crate::db::CHECK_IF_IDLE_FOR`]), a connection idle for a while is checked
//! before use, and replaced if the server closed it. One dropped while in use (an error, a
//! cancelled future, a transaction left open) is closed, never kept: Postgres rolls back what it
//! had begun, and the next use opens another.

use std::sync::Mutex;
use std::time::Instant;

use sqlx::{Connection, PgConnection, PgPool};

use crate::db::CHECK_IF_IDLE_FOR;

/// A connection kept for one loop, opened from `pool` on first use.
pub struct HeldConnection {
    pool: PgPool,
    /// The idle connection and when it was given back; `None` while in use or not yet opened.
    idle: Mutex<Option<(PgConnection, Instant)>>,
}

impl HeldConnection {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            idle: Mutex::new(None),
        }
    }

    /// Takes the connection for a statement or a transaction: the kept one (checked first if it
    /// sat idle long enough for the server to have closed it), else a new one from the pool.
    pub async fn take(&self) -> sqlx::Result<PgConnection> {
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
        // One the server closed while it sat idle fails the check and is dropped.
        if let Some((mut conn, since)) = kept
            && (since.elapsed() < CHECK_IF_IDLE_FOR || conn.ping().await.is_ok())
        {
            return Ok(conn);
        }
        Ok(self.pool.acquire().await?.detach())
    }

    /// Gives back a connection whose statement or transaction ended cleanly (none is open).
    pub fn give_back(&self, conn: PgConnection) {
        *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some((conn, Instant::now()));
    }
}
