//! Read models of the Cohort360 back-end: what the API serves, how it may be filtered and
//! ordered, and the cursor that orders the event log for projectors.
//!
//! The SQL that folds events into these rows and reads them back lives in `infra`; this crate is
//! the contract between it and the API; the rows derive `utoipa::ToSchema`, from which the
//! OpenAPI document describes the answers. May depend on: `domain`, serde, chrono, uuid, utoipa.

pub mod audit;
pub mod clinical;
pub mod cohorts;
pub mod content;
pub mod cursor;
pub mod exports;
pub mod health;
pub mod idempotency;
pub mod identity;
pub mod request_logs;
pub mod terminology;
pub mod workspace;

pub use cursor::Cursor;

use thiserror::Error;

/// Why a read failed. "Not found" is not an error: readers return `None`.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The search pattern is not a valid regular expression.
    #[error("invalid search pattern: {0}")]
    InvalidSearch(String),
    /// The database cannot be reached.
    #[error("read model unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a bug); the message is for logs.
    #[error("internal read error: {0}")]
    Internal(String),
}

/// A resolved limit/offset window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: i64,
    pub offset: i64,
}

/// One page of results and the total count of matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub count: i64,
    pub results: Vec<T>,
}

/// One `ordering=` key resolved to a column the reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub column: &'static str,
    pub descending: bool,
}

/// Resolves a DRF-style `ordering` value (`-updated_at,name`) against the public names a list
/// allows (`(public name, column)`). Unknown names are ignored, as DRF does.
pub fn parse_ordering(raw: Option<&str>, allowed: &[(&str, &'static str)]) -> Vec<SortKey> {
    raw.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter_map(|key| {
            let (descending, name) = match key.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, key),
            };
            allowed
                .iter()
                .find(|(public, _)| *public == name)
                .map(|(_, column)| SortKey { column, descending })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_keeps_known_keys_in_order_with_their_direction() {
        let allowed = [("name", "name"), ("updated_at", "updated_at")];
        assert_eq!(
            parse_ordering(Some("-updated_at, bogus,name"), &allowed),
            vec![
                SortKey {
                    column: "updated_at",
                    descending: true
                },
                SortKey {
                    column: "name",
                    descending: false
                }
            ]
        );
        assert!(parse_ordering(None, &allowed).is_empty());
    }
}
