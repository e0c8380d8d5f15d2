//! SQL helpers shared by the read-model readers and folds.

use projections::{ReadError, SortKey, Window};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder};

pub(crate) fn read_error(e: sqlx::Error) -> ReadError {
    match &e {
        // 2201B invalid_regular_expression: the user's `search=` pattern.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("2201B") => {
            ReadError::InvalidSearch(db.message().to_string())
        }
        e if is_unavailable(e) => ReadError::Unavailable(e.to_string()),
        _ => ReadError::Internal(e.to_string()),
    }
}

/// Whether an error means the database cannot be used right now (retry shortly: a 503), as
/// opposed to a bug: no connection (pool timeout, closed pool, I/O, TLS), or Postgres saying so
/// itself — SQLSTATE classes 08 (connection exception), 53 (insufficient resources: too many
/// connections, disk full) and 57 (operator intervention: shutdown, crash recovery, a
/// cancelled or timed-out statement).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57")),
        _ => false,
    }
}

/// A reader's `select` (`SELECT … FROM <table> <alias> …`) made to find its row by primary key
/// before anything else, split around the key's placeholder: the statement is
/// `head`, the key, then `rest` (to which the caller adds its other conditions).
///
/// Why: a point lookup says `uuid = $1 AND owner = $2 AND deleted_at IS NULL`, and the owner's
/// index is partial on `deleted_at IS NULL`. On a table without statistics (a fresh database, a
/// read model just rebuilt, until autovacuum's first ANALYZE) Postgres costs that index and the
/// primary key alike and takes the index, reading every row of the owner to return one: 0.5 ms
/// at 1 700 folders of one user, growing with them. A materialized CTE on the key leaves it no
/// choice.
pub(crate) fn by_primary_key(select: &str, table: &str, alias: &str) -> KeyFirst {
    let from = format!("FROM {table} {alias}");
    // Without it the key would select nothing, and the lookup would return any row of the
    // owner: a programming error, which the readers' tests reach.
    assert!(
        select.contains(&from),
        "`{from}` is not in the reader's select"
    );
    let rest = select.replacen(&from, &format!("FROM by_key {alias}"), 1);
    KeyFirst {
        head: format!("WITH by_key AS MATERIALIZED (SELECT * FROM {table} WHERE uuid = "),
        rest: format!(") {rest}"),
    }
}

/// See [`by_primary_key`].
pub(crate) struct KeyFirst {
    pub head: String,
    pub rest: String,
}

impl KeyFirst {
    /// The statement with the key as `$1`.
    pub fn with_first_bind(&self) -> String {
        format!("{}$1{}", self.head, self.rest)
    }

    /// A builder holding the statement up to its conditions, the key bound first.
    pub fn builder<'a>(&self, key: uuid::Uuid) -> QueryBuilder<'a, Postgres> {
        let mut qb = QueryBuilder::new(&self.head);
        qb.push_bind(key).push(&self.rest);
        qb
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

/// One page of a list: the total (`count_sql` and the filter), then the rows (`select`, the same
/// filter, the ordering and the window). `push_where` appends the filter to either query.
pub(crate) async fn fetch_page<'a, Row>(
    pool: &PgPool,
    count_sql: &str,
    select: &str,
    push_where: impl Fn(&mut QueryBuilder<'a, Postgres>),
    order: (&[SortKey], &str, &str),
    window: Window,
) -> Result<(i64, Vec<Row>), ReadError>
where
    Row: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    let mut qb = QueryBuilder::new(count_sql);
    push_where(&mut qb);
    let count: i64 = qb
        .build_query_scalar()
        .fetch_one(pool)
        .await
        .map_err(read_error)?;
    let mut qb = QueryBuilder::new(select);
    push_where(&mut qb);
    let (ordering, default, tie_break) = order;
    push_order_by(&mut qb, ordering, default, tie_break);
    push_window(&mut qb, window);
    let rows: Vec<Row> = qb
        .build_query_as()
        .fetch_all(pool)
        .await
        .map_err(read_error)?;
    Ok((count, rows))
}

/// The text form of a Postgres `text[]` holding `items` (`{"a","b\"c"}`), which `::text[]`
/// reads back exactly: every element quoted, `"` and `\` escaped. A set-based fold sends one per
/// row in a `text[]` column, since an array of arrays does not survive `UNNEST`; reading it costs
/// Postgres less than unpacking JSON in a subquery per row.
pub(crate) fn text_array_literal(items: &[String]) -> String {
    let mut literal = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    literal.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

#[cfg(test)]
mod tests {
    use super::text_array_literal;

    #[test]
    fn a_text_array_literal_quotes_every_element_and_escapes_quotes_and_backslashes() {
        let items = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(text_array_literal(&[]), "{}");
        assert_eq!(text_array_literal(&items(&["1", "22"])), r#"{"1","22"}"#);
        // NULL, an empty string, separators and braces are plain text once quoted.
        assert_eq!(
            text_array_literal(&items(&["NULL", "", "a,b", "{c}", " d "])),
            r#"{"NULL","","a,b","{c}"," d "}"#
        );
        assert_eq!(
            text_array_literal(&items(&[r#"e"f"#, r"g\h"])),
            r#"{"e\"f","g\\h"}"#
        );
    }
}
