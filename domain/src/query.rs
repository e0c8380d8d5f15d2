//! The stored cohort query (`serialized_query`): what the domain needs to know of it.
//!
//! The query is kept verbatim as the text the front-end sent (it carries its own format version);
//! the domain only checks that it is a JSON object whose `sourcePopulation.caresiteCohortList` is a
//! list of numeric perimeter cohort ids, which become the snapshot's `perimeters_ids`.

use serde_json::Value;
use thiserror::Error;

use crate::validation::limits::QUERY_MAX_BYTES;

/// Why a `serialized_query` was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    /// The text is not a JSON object.
    #[error("serialized_query is not a JSON object: {0}")]
    NotJson(String),
    /// `sourcePopulation.caresiteCohortList` is missing or not a list.
    #[error("serialized_query must contain sourcePopulation.caresiteCohortList as a list")]
    MissingSourcePopulation,
    /// An entry of the list is not a numeric id.
    #[error("sourcePopulation.caresiteCohortList must hold numeric ids, found {0}")]
    NonNumericPerimeter(String),
    /// The text is larger than [`QUERY_MAX_BYTES`].
    #[error("serialized_query has {0} bytes; at most {QUERY_MAX_BYTES} are accepted")]
    TooLarge(usize),
}

/// Extracts the perimeter cohort ids from a serialized query, validating its shape.
pub fn perimeters_ids(serialized_query: &str) -> Result<Vec<String>, QueryError> {
    if serialized_query.len() > QUERY_MAX_BYTES {
        return Err(QueryError::TooLarge(serialized_query.len()));
    }
    let doc: Value =
        serde_json::from_str(serialized_query).map_err(|e| QueryError::NotJson(e.to_string()))?;
    if !doc.is_object() {
        return Err(QueryError::NotJson("the document is not an object".into()));
    }
    let list = doc
        .get("sourcePopulation")
        .and_then(|p| p.get("caresiteCohortList"))
        .and_then(Value::as_array)
        .ok_or(QueryError::MissingSourcePopulation)?;
    list.iter()
        .map(|item| match item {
            Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
                Ok(s.clone())
            }
            Value::Number(n) if n.is_u64() => Ok(n.to_string()),
            other => Err(QueryError::NonNumericPerimeter(other.to_string())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_numeric_perimeter_ids() {
        let q = r#"{"version":"v1.6.1","sourcePopulation":{"caresiteCohortList":["12","34",56]}}"#;
        assert_eq!(perimeters_ids(q).unwrap(), vec!["12", "34", "56"]);
    }

    #[test]
    fn refuses_queries_without_a_source_population() {
        assert_eq!(
            perimeters_ids(r#"{"request":{}}"#),
            Err(QueryError::MissingSourcePopulation)
        );
        assert!(matches!(
            perimeters_ids("not json"),
            Err(QueryError::NotJson(_))
        ));
        assert!(matches!(perimeters_ids("[]"), Err(QueryError::NotJson(_))));
    }

    #[test]
    fn refuses_queries_over_the_size_cap() {
        let padding = "x".repeat(QUERY_MAX_BYTES);
        let q = format!(r#"{{"pad":"{padding}","sourcePopulation":{{"caresiteCohortList":[]}}}}"#);
        assert!(matches!(perimeters_ids(&q), Err(QueryError::TooLarge(_))));
    }

    #[test]
    fn refuses_non_numeric_perimeter_ids() {
        let q = r#"{"sourcePopulation":{"caresiteCohortList":["12","abc"]}}"#;
        assert!(matches!(
            perimeters_ids(q),
            Err(QueryError::NonNumericPerimeter(_))
        ));
    }
}
