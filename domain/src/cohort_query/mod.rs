//! The cohort query engine's pure half: the stored query's model ([`model`]), the FHIR search
//! strings of its criteria ([`fhir_search`]), and the evaluator ([`eval`]) that combines the rows a
//! data source returns per criterion into the patients the query selects, with upstream's
//! semantics (QueryExecutor `QueryBuilderGroup`, `QueryBuilderBasicResource`,
//! `QueryBuilderTemporalConstraint`).
//!
//! Where the data comes from is a port ([`eval::CriterionSource`]): the embedded clinical store in
//! production, CSV fixtures in the conformance test. Anything the engine cannot evaluate is a
//! [`QueryError`] naming the criterion, never a silently wrong count.

pub mod eval;
pub mod fhir_filter;
pub mod fhir_search;
pub mod model;
mod temporal;

pub use eval::{
    CriterionSource, EvalOptions, Evaluation, Fetched, Needs, PatientSet, Row, evaluate,
    evaluate_with,
};
pub use model::{CohortQuery, ConstraintKind, Criterion, Node, parse};
pub use temporal::upstream_carries;

use thiserror::Error;

/// Why a query cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    /// The document as a whole.
    #[error("{0}")]
    Query(String),
    /// One node (criterion or group) of the tree, by its `_id`.
    #[error("criterion {id}: {message}")]
    Criterion { id: i64, message: String },
}

impl QueryError {
    pub fn query(message: impl Into<String>) -> Self {
        Self::Query(message.into())
    }

    pub fn criterion(id: i64, message: impl Into<String>) -> Self {
        Self::Criterion {
            id,
            message: message.into(),
        }
    }
}
