//! The `cohorts` read model ([`projection`], [`reader`]), the QueryExecutor adapter
//! ([`executor`]) and the reactions to count and cohort events ([`reactions`]).

pub mod executor;
pub mod projection;
pub mod reactions;
pub mod reader;

pub use projection::CohortsProjection;
pub use reader::PgCohorts;
