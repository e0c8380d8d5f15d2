//! The HTTP face of the Cohort360 back-end (axum): routes, extractors, the error mapping and the
//! OpenAPI document.
//!
//! Handlers depend on `commands` (writes and the authorization rules), `projections` (reads)
//! and `domain`. The services they call are built and run by `infra::runtime`; only [`startup`]
//! (and the binary) know `infra`. HTTP status codes are decided in [`error`] only.

pub mod asyncapi;
pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod input_guard;
pub mod maintenance_gate;
pub mod observability;
pub mod openapi;
pub mod pagination;
pub mod request_log;
pub mod routes;
pub mod small_cells;
pub mod startup;
pub mod state;
pub mod tokens;
pub mod ws;
