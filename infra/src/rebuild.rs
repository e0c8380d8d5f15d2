//! Rebuilding a projection: the whole log folded into a fresh copy of its schema, which is then
//! swapped in.
//!
//! The live projector keeps running meanwhile. One statement streams the log (gap-safely, as the
//! projectors read it) from the moment the rebuild starts, while the copy's schema is created;
//! it is handed on in batches, each folded in a transaction of its own that writes no checkpoint
//! (a failed rebuild leaves a copy that the next one drops). A projection whose aggregate types fall in groups that
//! write disjoint tables ([`Projection::rebuild_groups`]) has each group folded on its own
//! connection, side by side. Then the secondary indexes are built once over the folded rows, the
//! copy's checkpoint is set where the reading stopped, and under the live checkpoint's lock the
//! copy catches up with what was committed since and the schemas are renamed in one transaction:
//! readers see either the old tables or the new ones, never a mix.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::TryStreamExt;

use projections::Cursor;
use sqlx::{Connection, Executor, FromRow, PgConnection, PgPool, Row};
use tokio::sync::mpsc;

use crate::checkpoint_tx::{fold_settings, lock_sql, quote_ident, save_sql};
use crate::log::{CommittedEvent, committed_after_sql, read_committed_after};
use crate::projector::{Projection, ProjectionError};

/// Events handed on per batch to the folds: the first batch is small, so that folding starts
/// early, and each next one twice as large, up to the last.
const BATCHES: (usize, usize) = (500, 5_000);

/// Batches a group's channel holds: the log is read on while the copy's schema is being made
/// (each fold waits for it), so that the folds then find their next batches ready.
const HANDED_AHEAD: usize = 4;

/// Rows decoded by one task.
const DECODED_TOGETHER: usize = 250;

/// Tasks decoding at once.
const DECODING: usize = 4;

/// Events folded per transaction under the swap's lock.
const CATCH_UP_BATCH: i64 = 5_000;

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events read from the log (of every aggregate type, read by the projection or not).
    pub events: usize,
    pub checkpoint: Cursor,
    /// Creating the empty copy of the schema (the log is read meanwhile).
    pub copy: Duration,
    /// Folding the log into it and building its secondary indexes, while the live projector runs.
    pub fold: Duration,
    /// Of which the longest a group's fold waited for the log's next batch to be read and
    /// decoded.
    pub fold_read_wait: Duration,
    /// Catching up under the live checkpoint's lock and swapping the schemas.
    pub swap: Duration,
}

/// Rebuilds `projection` from the start of the log into a fresh copy of its schema, then swaps
/// the copy in (see the module's documentation).
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
) -> Result<RebuildReport, ProjectionError> {
    // One rebuild of a projection at a time (a second would drop the first's copy mid-fold): a
    // session lock, on a connection taken out of the pool, so that it is closed (and the lock
    // released) should this future be dropped midway.
    let live = projection.name();
    let mut lock = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(live))
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        return Err(ProjectionError::RebuildRunning(live));
    }
    let rebuilt = rebuild_locked(pool, projection).await;
    // Released now rather than once the server notices the closed connection: the next rebuild
    // may follow at once.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key(live))
        .execute(&mut lock)
        .await;
    lock.close().await.ok();
    let rebuilt = rebuilt?;
    unlocked?;
    Ok(rebuilt)
}

/// [`rebuild`], its lock held.
async fn rebuild_locked(
    pool: &PgPool,
    projection: &dyn Projection,
) -> Result<RebuildReport, ProjectionError> {
    let live = projection.name();
    let copy = format!("{live}_rebuild");
    let started = Instant::now();

    let groups = projection.rebuild_groups();
    let (batches, ready): (Vec<_>, Vec<_>) = (0..groups.len().max(1))
        .map(|_| mpsc::channel::<Vec<CommittedEvent>>(HANDED_AHEAD))
        .unzip();
    let reader = tokio::spawn(read_log(pool.clone(), groups, batches));
    let deferred = match copy_schema(pool, live, &copy).await {
        Ok(deferred) => deferred,
        Err(e) => {
            reader.abort();
            return Err(e);
        }
    };
    let copy_took = started.elapsed();

    let folded = futures::future::try_join_all(
        ready
            .into_iter()
            .map(|batches| fold_group(pool, projection, &copy, batches)),
    )
    .await;
    // A fold that failed stops the reader (its batches go nowhere): its error is the one to
    // report; otherwise the reader's own.
    let read = match reader.await {
        Ok(read) => read,
        // Never aborted past this point: it panicked.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let folded = folded?;
    let read = read?;
    if let Some(ungrouped) = read.ungrouped.iter().find(|t| projection.reads(t)) {
        return Err(ProjectionError::Ungrouped {
            projection: live,
            aggregate_type: ungrouped.clone(),
        });
    }
    let applied: i64 = folded.iter().map(|f| f.applied).sum();
    let read_wait = folded.iter().map(|f| f.read_wait).max().unwrap_or_default();
    pool.execute(sqlx::raw_sql(&save_sql(&copy, read.reached, applied)))
        .await?;
    // The secondary indexes, built once over the folded rows rather than row by row, side by
    // side (on a small log each build is mostly its own flush to disk).
    futures::future::try_join_all(
        deferred
            .iter()
            .map(|index| sqlx::query(index).execute(pool)),
    )
    .await?;
    let fold_took = started.elapsed() - copy_took;

    let (checkpoint, caught_up) = catch_up_and_swap(pool, projection, &copy).await?;
    Ok(RebuildReport {
        events: read.events + caught_up,
        checkpoint,
        copy: copy_took,
        fold: fold_took,
        fold_read_wait: read_wait,
        swap: started.elapsed() - copy_took - fold_took,
    })
}

/// The session advisory lock a rebuild of `projection` holds while it runs.
pub fn lock_key(projection: &str) -> i64 {
    // A stable 64-bit FNV-1a of a name of its own (advisory locks share one key space).
    format!("cohort360 rebuild {projection}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        }) as i64
}

/// What makes the copy of a live schema (`$1`) named `$2`, read from the live one's catalog, by
/// step: 0 its tables (columns, defaults, checks; made `EXCLUDING INDEXES`), 1 the index-backed
/// constraints (primary keys, unique, exclusion), 2 the other unique indexes (the fold's lookups
/// and conflicts need both), 3 the secondary indexes, built after the fold. Constraints and
/// indexes keep the live names (`LIKE … INCLUDING INDEXES` would name them afresh, and a later
/// migration naming one would not find it).
const COPY_PLAN: &str = "
    SELECT 0 AS step,
           format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING ALL EXCLUDING INDEXES)',
                  $2::text, c.relname, $1::text, c.relname) AS statement
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
    UNION ALL
    SELECT 1, format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s',
                     $2::text, c.relname, k.conname, pg_get_constraintdef(k.oid))
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND k.contype IN ('p', 'u', 'x')
    UNION ALL
    SELECT CASE WHEN i.indisunique THEN 2 ELSE 3 END,
           replace(pg_get_indexdef(i.indexrelid),
                   ' ON ' || quote_ident($1) || '.', ' ON ' || quote_ident($2) || '.')
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1
       AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
     ORDER BY 1, 2";

/// Creates the empty copy of the live schema (dropping a leftover one), its checkpoint at the
/// start of the log, and returns the secondary indexes to build after the fold. One query reads
/// what to create ([`COPY_PLAN`]); everything is then sent as one simple query, which Postgres
/// runs as one transaction: one flush, and one round trip instead of one per statement.
async fn copy_schema(
    pool: &PgPool,
    live: &str,
    copy: &str,
) -> Result<Vec<String>, ProjectionError> {
    let q_copy = quote_ident(copy);
    let plan: Vec<(i32, String)> = sqlx::query_as(COPY_PLAN)
        .bind(live)
        .bind(copy)
        .fetch_all(pool)
        .await?;
    let mut ddl = format!("DROP SCHEMA IF EXISTS {q_copy} CASCADE; CREATE SCHEMA {q_copy};\n");
    let mut deferred = Vec::new();
    let mut tables_made = false;
    for (step, statement) in plan {
        if step > 0 && !tables_made {
            ddl.push_str(&format!(
                "INSERT INTO {q_copy}.checkpoint DEFAULT VALUES;\n"
            ));
            tables_made = true;
        }
        if step == 3 {
            deferred.push(statement);
        } else {
            ddl.push_str(&statement);
            ddl.push_str(";\n");
        }
    }
    if !tables_made {
        ddl.push_str(&format!(
            "INSERT INTO {q_copy}.checkpoint DEFAULT VALUES;\n"
        ));
    }
    pool.execute(sqlx::raw_sql(&ddl)).await?;
    Ok(deferred)
}

/// What the reading of the log found.
struct LogRead {
    /// Events read.
    events: usize,
    /// The last one's place.
    reached: Cursor,
    /// Aggregate types met that are in none of the projection's rebuild groups (their events are
    /// not folded: the projection must not read them).
    ungrouped: BTreeSet<String>,
}

/// Reads the log to its end and hands it on in batches to `groups`' folds (with no groups,
/// everything to the only one), each group receiving its events in log order.
///
/// One statement streams the whole log (gap-safely, as [`read_committed_after`]), in the order of
/// its index: Postgres would otherwise sort it all before sending the first row, and batch after
/// batch it would find each batch's start again. It takes no transaction id, so it holds back no
/// one's horizon. The rows are decoded by tasks of their own, [`DECODING`] chunks at once, and
/// handed on in log order.
async fn read_log(
    pool: PgPool,
    groups: &'static [&'static [&'static str]],
    folds: Vec<mpsc::Sender<Vec<CommittedEvent>>>,
) -> sqlx::Result<LogRead> {
    let group_of: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, types)| types.iter().map(move |t| (*t, i)))
        .collect();
    let mut read = LogRead {
        events: 0,
        reached: Cursor::START,
        ungrouped: BTreeSet::new(),
    };
    let mut parts = vec![Vec::new(); folds.len()];
    let (mut held, mut batch) = (0, BATCHES.0);
    let mut tx = pool.begin().await?;
    // The plan follows the index whatever the statistics say (a fresh log has none).
    tx.execute("SET LOCAL enable_sort = off").await?;
    {
        let sql = committed_after_sql("'0'::xid8", "0", "ALL");
        let rows = sqlx::query(&sql)
            .fetch(&mut *tx)
            .try_chunks(DECODED_TOGETHER)
            .map_err(|e| e.1)
            .map_ok(|rows| async move {
                let decoding = tokio::spawn(async move {
                    rows.iter()
                        .map(CommittedEvent::from_row)
                        .collect::<sqlx::Result<Vec<_>>>()
                });
                match decoding.await {
                    Ok(decoded) => decoded,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            })
            .try_buffered(DECODING);
        let mut rows = std::pin::pin!(rows);
        while let Some(decoded) = rows.try_next().await? {
            for event in decoded {
                read.events += 1;
                read.reached = event.cursor();
                let group = match group_of.get(event.aggregate_type.as_str()) {
                    _ if groups.is_empty() => 0,
                    Some(&group) => group,
                    None => {
                        read.ungrouped.insert(event.aggregate_type);
                        continue;
                    }
                };
                parts[group].push(event);
                held += 1;
            }
            if held >= batch {
                if !hand_on(&mut parts, &folds).await {
                    return Ok(read);
                }
                held = 0;
                batch = (batch * 2).min(BATCHES.1);
            }
        }
    }
    tx.commit().await?;
    hand_on(&mut parts, &folds).await;
    Ok(read)
}

/// Sends each group's events held in `parts` to its fold; `false` if a fold has stopped (it
/// failed: its error is the rebuild's).
async fn hand_on(
    parts: &mut [Vec<CommittedEvent>],
    folds: &[mpsc::Sender<Vec<CommittedEvent>>],
) -> bool {
    for (part, fold) in parts.iter_mut().zip(folds) {
        if !part.is_empty() && fold.send(std::mem::take(part)).await.is_err() {
            return false;
        }
    }
    true
}

/// What one group's fold did.
struct Folded {
    applied: i64,
    read_wait: Duration,
}

/// Folds the batches of one group into the copy, one transaction per batch.
async fn fold_group(
    pool: &PgPool,
    projection: &dyn Projection,
    copy: &str,
    mut batches: mpsc::Receiver<Vec<CommittedEvent>>,
) -> Result<Folded, ProjectionError> {
    let settings = format!("SELECT {}", fold_settings(copy));
    let mut folded = Folded {
        applied: 0,
        read_wait: Duration::ZERO,
    };
    loop {
        let waiting = Instant::now();
        let Some(batch) = batches.recv().await else {
            return Ok(folded);
        };
        folded.read_wait += waiting.elapsed();
        let mut tx = pool.begin().await?;
        tx.execute(sqlx::raw_sql(&settings)).await?;
        let (_, applied) = fold(&mut tx, projection, Cursor::START, &batch).await?;
        tx.commit().await?;
        folded.applied += applied;
    }
}

/// Under the live checkpoint's lock (which waits for the live projector's transaction and holds
/// back the next one), folds into the copy what was committed since its checkpoint and swaps
/// the schemas. Returns the copy's final checkpoint and how many events it folded.
async fn catch_up_and_swap(
    pool: &PgPool,
    projection: &dyn Projection,
    copy: &str,
) -> Result<(Cursor, usize), ProjectionError> {
    let live = projection.name();
    let old = format!("{live}_old");
    let (q_live, q_copy, q_old) = (quote_ident(live), quote_ident(copy), quote_ident(&old));
    let mut events = 0;
    let mut tx = pool.begin().await?;
    // The catch-up reads up to `CATCH_UP_BATCH` events at once: on a log without statistics yet,
    // Postgres would plan that many as a bitmap scan and a sort of the whole rest of the log
    // rather than follow its index (as `read_log`'s stream does).
    tx.execute(sqlx::raw_sql(&format!(
        "LOCK TABLE {q_live}.checkpoint IN ACCESS EXCLUSIVE MODE; SET LOCAL enable_sort = off"
    )))
    .await?;
    let checkpoint = loop {
        let from = lock_checkpoint(&mut tx, copy).await?;
        let batch = read_committed_after(&mut *tx, from, CATCH_UP_BATCH).await?;
        events += batch.len();
        let (reached, applied) = fold(&mut tx, projection, from, &batch).await?;
        if batch.is_empty() {
            break reached;
        }
        save_checkpoint(&mut tx, copy, reached, applied).await?;
    };
    tx.execute(sqlx::raw_sql(&format!(
        "ALTER SCHEMA {q_live} RENAME TO {q_old}; ALTER SCHEMA {q_copy} RENAME TO {q_live};
         DROP SCHEMA {q_old} CASCADE"
    )))
    .await?;
    tx.commit().await?;
    Ok((checkpoint, events))
}

/// Locks the checkpoint row of `schema` and sets the transaction up for folding
/// ([`crate::checkpoint_tx::lock_sql`]), inside the caller's transaction.
async fn lock_checkpoint(conn: &mut PgConnection, schema: &str) -> sqlx::Result<Cursor> {
    let row = conn.fetch_one(sqlx::raw_sql(&lock_sql(schema))).await?;
    Ok(Cursor {
        txid: row.try_get(0)?,
        position: row.try_get(1)?,
    })
}

/// Moves the checkpoint of `schema` ([`crate::checkpoint_tx::save_sql`]), inside the caller's
/// transaction.
async fn save_checkpoint(
    conn: &mut PgConnection,
    schema: &str,
    to: Cursor,
    applied: i64,
) -> sqlx::Result<()> {
    conn.execute(sqlx::raw_sql(&save_sql(schema, to, applied)))
        .await?;
    Ok(())
}

/// Folds `events` (in log order) into the schema whose checkpoint the caller locked at `start`,
/// inside the caller's transaction. Events at or before `start` are skipped. Returns the
/// checkpoint to store and how many events were applied (the caller stores it).
async fn fold(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    start: Cursor,
    events: &[CommittedEvent],
) -> Result<(Cursor, i64), ProjectionError> {
    let fresh: Vec<&CommittedEvent> = events.iter().filter(|e| e.cursor() > start).collect();
    let Some(checkpoint) = fresh.last().map(|e| e.cursor()) else {
        return Ok((start, 0));
    };
    let read: Vec<&CommittedEvent> = fresh
        .into_iter()
        .filter(|e| projection.reads(&e.aggregate_type))
        .collect();
    projection.apply_batch(conn, &read).await?;
    Ok((checkpoint, read.len() as i64))
}
