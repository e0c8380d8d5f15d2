//! The embedded clinical data store and query engine: synthetic data ([`generate`]) in the
//! `clinical` schema, its in-memory index ([`index`]), the index as the evaluator's data source
//! ([`source`]) and the embedded QueryExecutor ([`executor`]).

pub mod catalog;
pub mod executor;
pub(crate) mod facets;
pub mod fhir;
pub mod generate;
pub mod index;
pub mod index_search;
pub mod source;

pub use executor::EmbeddedExecutor;
