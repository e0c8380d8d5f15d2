//! SQL helpers shared by the read-model readers.

use projections::{ReadError, SortKey, Window};
use sqlx::{Postgres, QueryBuilder};

pub(crate) fn read_error(e: sqlx::Error) -> ReadError {
    match &e {
        // 2201B invalid_regular_expression: the user's `search=` pattern.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("2201B") => {
            ReadError::InvalidSearch(db.message().to_string())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            ReadError::Unavailable(e.to_string())
        }
        _ => ReadError::Internal(e.to_string()),
    }
}

/// Escapes `%`, `_` and `\` for a LIKE pattern, and wraps it for "contains".
pub(crate) fn contains_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

pub(crate) fn push_window(qb: &mut QueryBuilder<'_, Postgres>, window: Window) {
    qb.push(" LIMIT ")
        .push_bind(window.limit)
        .push(" OFFSET ")
        .push_bind(window.offset);
}

/// Appends ` ORDER BY` from resolved sort keys (or `default`), then `tie_break` so that pages
/// are stable.
pub(crate) fn push_order_by(
    qb: &mut QueryBuilder<'_, Postgres>,
    ordering: &[SortKey],
    default: &str,
    tie_break: &str,
) {
    qb.push(" ORDER BY ");
    if ordering.is_empty() {
        qb.push(default);
    } else {
        let keys: Vec<String> = ordering
            .iter()
            // Column names come from the fixed allow-lists in `projections`, never from clients.
            .map(|k| format!("{} {}", k.column, if k.descending { "DESC" } else { "ASC" }))
            .collect();
        qb.push(keys.join(", "));
    }
    qb.push(", ").push(tie_break);
}

/// Appends ` AND (c1 ILIKE %search% OR c2 ILIKE …)` over the given columns (fixed by the caller,
/// never from clients).
pub(crate) fn push_contains_any(
    qb: &mut QueryBuilder<'_, Postgres>,
    search: &str,
    columns: &[&str],
) {
    let pattern = contains_pattern(search);
    qb.push(" AND (false");
    for column in columns {
        qb.push(format!(" OR {column} ILIKE "))
            .push_bind(pattern.clone());
    }
    qb.push(")");
}
