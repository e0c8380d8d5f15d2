//! A projection's transaction under its checkpoint lock, in as few round trips as the protocol
//! allows.
//!
//! A fold is `BEGIN`, the checkpoint's lock (with the transaction's settings), the read of the
//! log after it, the projection's statements, the checkpoint's update and `COMMIT`. Sent one by
//! one, that is six round trips before a command's read-your-writes wait ends, each costing more
//! than the statement itself. Here the first three travel as one simple query, and so do the
//! last two: the projection's own statements (with their parameters) are the only others.
//!
//! Those two simple queries carry no parameters: what they embed is a schema name (quoted) and
//! integers, formatted here. The transaction is not sqlx's, so the connection is guarded: dropped
//! before its `COMMIT` or `ROLLBACK` went through (an error, a cancelled future), it is closed
//! rather than kept, and Postgres rolls the transaction back.
//!
//! It runs on the projector's own connection ([`HeldConnection`]), given back when it ends.

use projections::Cursor;
use sqlx::{Executor, FromRow, PgConnection, Row};

use crate::held_connection::HeldConnection;
use crate::log::{CommittedEvent, committed_after_sql};

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a quoted SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The settings of a transaction folding into `schema`, as a select list: `search_path` to the
/// schema first (its tables, unqualified), then `public` (the events); asynchronous commit (see
/// [`crate::projector`]).
pub(crate) fn fold_settings(schema: &str) -> String {
    format!(
        "set_config('search_path', {}, true), set_config('synchronous_commit', 'off', true)",
        quote_literal(&format!("{}, public", quote_ident(schema))),
    )
}

/// The statement that locks the checkpoint row of `schema` (returning its cursor) and sets the
/// transaction up for folding ([`fold_settings`]).
pub(crate) fn lock_sql(schema: &str) -> String {
    format!(
        "SELECT (txid::text)::bigint, position, {}
           FROM {}.checkpoint FOR UPDATE",
        fold_settings(schema),
        quote_ident(schema),
    )
}

/// The statement that moves the checkpoint of `schema` to `to`, `applied` more events folded.
pub(crate) fn save_sql(schema: &str, to: Cursor, applied: i64) -> String {
    format!(
        "UPDATE {}.checkpoint SET txid = '{}'::xid8, position = {},
                events_applied = events_applied + {applied}, updated_at = now()",
        quote_ident(schema),
        to.txid,
        to.position,
    )
}

/// An open transaction holding the lock of a projection schema's checkpoint, with
/// `search_path` set to the schema then `public`, and asynchronous commit (see
/// [`crate::projector`]).
pub(crate) struct CheckpointTx<'a> {
    /// `None` once the transaction ended.
    conn: Option<PgConnection>,
    /// Where the connection goes back when the transaction ends.
    home: &'a HeldConnection,
    schema: String,
}

/// What [`CheckpointTx::begin`] found.
pub(crate) struct Locked<'a> {
    pub tx: CheckpointTx<'a>,
    /// The stored checkpoint.
    pub stored: Cursor,
    /// The committed events read after the cursor asked for, in log order.
    pub events: Vec<CommittedEvent>,
}

impl<'a> CheckpointTx<'a> {
    /// Begins the transaction on `conn`'s connection and locks the checkpoint of `schema`; with
    /// `read`, also reads up to that many committed events after that cursor (gap-safely, as
    /// [`crate::log::read_committed_after`]). One round trip.
    pub async fn begin(
        conn: &'a HeldConnection,
        schema: &str,
        read: Option<(Cursor, i64)>,
    ) -> sqlx::Result<Locked<'a>> {
        let mut sql = format!("BEGIN; {};", lock_sql(schema));
        if let Some((after, limit)) = read {
            sql.push_str(&committed_after_sql(
                &format!("'{}'::xid8", after.txid),
                &after.position.to_string(),
                &limit.to_string(),
            ));
        }
        let mut tx = Self {
            conn: Some(conn.take().await?),
            home: conn,
            schema: schema.to_string(),
        };
        // The first row is the checkpoint's; the others, the events'.
        let rows = tx.conn().fetch_all(sqlx::raw_sql(&sql)).await?;
        let mut rows = rows.into_iter();
        let checkpoint = rows.next().ok_or(sqlx::Error::RowNotFound)?;
        let stored = Cursor {
            txid: checkpoint.try_get(0)?,
            position: checkpoint.try_get(1)?,
        };
        let events = rows
            .map(|row| CommittedEvent::from_row(&row))
            .collect::<sqlx::Result<_>>()?;
        Ok(Locked { tx, stored, events })
    }

    /// The transaction's connection, for the projection's statements.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("the connection is held until the transaction ends")
    }

    /// Moves the checkpoint to `to` (`applied` more events folded) and commits. One round trip.
    pub async fn commit_at(self, to: Cursor, applied: i64) -> sqlx::Result<()> {
        let sql = format!("{}; COMMIT", save_sql(&self.schema, to, applied));
        self.end(&sql).await
    }

    /// Ends the transaction without changing anything.
    pub async fn rollback(self) -> sqlx::Result<()> {
        self.end("ROLLBACK").await
    }

    /// Runs `sql`, which ends the transaction, and gives the connection back.
    async fn end(mut self, sql: &str) -> sqlx::Result<()> {
        self.conn().execute(sqlx::raw_sql(sql)).await?;
        if let Some(conn) = self.conn.take() {
            self.home.give_back(conn);
        }
        Ok(())
    }
}

impl Drop for CheckpointTx<'_> {
    fn drop(&mut self) {
        // Still open: the connection closes (Postgres rolls back) rather than being kept mid-way.
        drop(self.conn.take());
    }
}
