//! The auditor's view of the event store: history, states as of a version or an instant, and
//! who held which access at a past date, from the events alone.

pub mod fold;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::access::Access;
use domain::access_history::{GrantRecord, KnownAt, PerimeterAt, RoleAt};
use domain::perimeter::Perimeter;
use domain::role::Role;
use projections::audit::{AggregateState, AsOf, AuditEvent, AuditReader, EventFilter};
use projections::{Cursor, ReadError};
use sqlx::{PgPool, QueryBuilder, Row};

use self::fold::{StoredEvent, fold_by_type};

use crate::nats::redact;
use crate::sql::read_error;

/// Reads history from the events table.
#[derive(Debug, Clone)]
pub struct PgAudit {
    pool: PgPool,
}

impl PgAudit {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

const SELECT: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type,
        event_version, recorded_at, payload, metadata FROM events";

fn event(r: &sqlx::postgres::PgRow) -> Result<AuditEvent, sqlx::Error> {
    Ok(AuditEvent {
        position: r.try_get("position")?,
        aggregate_type: r.try_get("aggregate_type")?,
        aggregate_id: r.try_get("aggregate_id")?,
        sequence: r.try_get("sequence")?,
        event_type: r.try_get("event_type")?,
        event_version: r.try_get("event_version")?,
        recorded_at: r.try_get("recorded_at")?,
        payload: redact(r.try_get("payload")?),
        metadata: r.try_get("metadata")?,
    })
}

fn fold_error(what: &str, id: &str, e: String) -> ReadError {
    ReadError::Internal(format!("{what} {id} does not fold: {e}"))
}

/// The events of one aggregate with `after < sequence <= until`.
async fn stored_events(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    after: i64,
    until: i64,
) -> Result<Vec<StoredEvent>, ReadError> {
    sqlx::query_as(
        "SELECT event_type, event_version, payload FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 AND sequence <= $4
          ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after)
    .bind(until)
    .fetch_all(pool)
    .await
    .map_err(read_error)
}

/// Every aggregate of a type, folded from its events recorded at or before `at`.
async fn fold_all_at<A: cqrs_es::Aggregate>(
    pool: &PgPool,
    aggregate_type: &str,
    at: DateTime<Utc>,
) -> Result<Vec<(String, A, Option<String>, DateTime<Utc>)>, ReadError> {
    let rows = sqlx::query(
        "SELECT aggregate_id, event_type, event_version, payload,
                metadata ->> 'user' AS actor, recorded_at
           FROM events WHERE aggregate_type = $1 AND recorded_at <= $2
          ORDER BY aggregate_id, sequence",
    )
    .bind(aggregate_type)
    .bind(at)
    .fetch_all(pool)
    .await
    .map_err(read_error)?;
    let mut folded: Vec<(String, A, Option<String>, DateTime<Utc>)> = Vec::new();
    for row in rows {
        let id: String = row.try_get("aggregate_id").map_err(read_error)?;
        let event = StoredEvent {
            event_type: row.try_get("event_type").map_err(read_error)?,
            event_version: row.try_get("event_version").map_err(read_error)?,
            payload: row.try_get("payload").map_err(read_error)?,
        };
        let decoded = fold::decode::<A>(&event).map_err(|e| fold_error(aggregate_type, &id, e))?;
        if folded.last().is_none_or(|(last, ..)| *last != id) {
            // The first event: who created it, and when.
            let actor: Option<String> = row.try_get("actor").map_err(read_error)?;
            let recorded_at: DateTime<Utc> = row.try_get("recorded_at").map_err(read_error)?;
            folded.push((id, A::default(), actor, recorded_at));
        }
        if let Some((_, aggregate, ..)) = folded.last_mut() {
            aggregate.apply(decoded);
        }
    }
    Ok(folded)
}

#[async_trait]
impl AuditReader for PgAudit {
    async fn events(
        &self,
        filter: &EventFilter,
        after: Cursor,
        limit: i64,
    ) -> Result<Vec<(Cursor, AuditEvent)>, ReadError> {
        let mut qb = QueryBuilder::new(
            "SELECT (txid::text)::bigint AS txid, position, aggregate_type, aggregate_id,
                    sequence, event_type, event_version, recorded_at, payload, metadata
               FROM events
              WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
                AND (txid, position) > ((",
        );
        qb.push_bind(after.txid)
            .push(")::text::xid8, ")
            .push_bind(after.position)
            .push(")");
        let text_filters = [
            ("aggregate_type", &filter.aggregate_type),
            ("aggregate_id", &filter.aggregate_id),
            ("event_type", &filter.event_type),
            ("metadata ->> 'user'", &filter.actor),
            ("metadata ->> 'impersonator'", &filter.impersonator),
        ];
        for (column, value) in text_filters {
            if let Some(value) = value {
                qb.push(format!(" AND {column} = "))
                    .push_bind(value.clone());
            }
        }
        if let Some(from) = filter.recorded_from {
            qb.push(" AND recorded_at >= ").push_bind(from);
        }
        if let Some(before) = filter.recorded_before {
            qb.push(" AND recorded_at < ").push_bind(before);
        }
        // The table's columns, not the output's `bigint` txid: the index's order, no sort.
        qb.push(" ORDER BY events.txid, events.position LIMIT ")
            .push_bind(limit);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(read_error)?;
        rows.iter()
            .map(|r| {
                let cursor = Cursor {
                    txid: r.try_get("txid")?,
                    position: r.try_get("position")?,
                };
                Ok((cursor, event(r)?))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(read_error)
    }

    async fn state_as_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        as_of: AsOf,
    ) -> Result<Option<AggregateState>, ReadError> {
        let (version_filter, time_filter) = match as_of {
            AsOf::Version(v) => (Some(v), None),
            AsOf::Time(t) => (None, Some(t)),
        };
        let target: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT sequence, recorded_at FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2
                AND ($3::bigint IS NULL OR sequence = $3)
                AND ($4::timestamptz IS NULL OR recorded_at <= $4)
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(version_filter)
        .bind(time_filter)
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)?;
        let Some((version, recorded_at)) = target else {
            return Ok(None);
        };
        // The stored snapshot helps when it does not go past the asked version.
        let snapshot: Option<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT last_sequence, payload FROM snapshots
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND last_sequence <= $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(read_error)?;
        let (from, start) = match snapshot {
            Some((last, payload)) => (last, Some(payload)),
            None => (0, None),
        };
        let events = stored_events(&self.pool, aggregate_type, aggregate_id, from, version).await?;
        let Some(state) = fold_by_type(aggregate_type, start.clone(), &events) else {
            return Ok(None);
        };
        let state = state.map_err(|e| fold_error(aggregate_type, aggregate_id, e))?;
        Ok(Some(AggregateState {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            version,
            recorded_at,
            from_snapshot: start.is_some(),
            events_folded: events.len(),
            state: redact(state),
        }))
    }

    async fn known_at(&self, at: DateTime<Utc>) -> Result<KnownAt, ReadError> {
        let mut known = KnownAt::default();
        for (_, access, granted_by, granted_at) in
            fold_all_at::<Access>(&self.pool, "Access", at).await?
        {
            if let Some(access) = access.state {
                known.accesses.push(GrantRecord {
                    access,
                    granted_by,
                    granted_at,
                });
            }
        }
        for (id, role, ..) in fold_all_at::<Role>(&self.pool, "Role", at).await? {
            if let (Ok(id), Some(state)) = (id.parse::<i64>(), role.state) {
                known.roles.insert(
                    id,
                    RoleAt {
                        name: state.name,
                        rights: state.rights,
                    },
                );
            }
        }
        let mut perimeters = BTreeMap::new();
        for (id, perimeter, ..) in fold_all_at::<Perimeter>(&self.pool, "Perimeter", at).await? {
            if let (Ok(id), Some(state)) = (id.parse::<i64>(), perimeter.state) {
                perimeters.insert(
                    id,
                    PerimeterAt {
                        name: state.fields.name,
                        parent_id: state.fields.parent_id,
                        removed: state.removed,
                    },
                );
            }
        }
        known.perimeters = perimeters;
        Ok(known)
    }

    async fn aggregate_history(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<AuditEvent>, ReadError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        rows.iter()
            .map(event)
            .collect::<Result<_, _>>()
            .map_err(read_error)
    }

    async fn user_access_history(&self, username: &str) -> Result<Vec<AuditEvent>, ReadError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE aggregate_type = 'Access' AND aggregate_id IN (
                 SELECT aggregate_id FROM events
                  WHERE aggregate_type = 'Access' AND event_type = 'AccessGranted'
                    AND payload -> 'AccessGranted' ->> 'username' = $1)
              ORDER BY position"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(read_error)?;
        rows.iter()
            .map(event)
            .collect::<Result<_, _>>()
            .map_err(read_error)
    }
}
