//! The HTTP face of the Cohort360 back-end (axum), and its startup wiring.
//!
//! Handlers depend on `commands` (writes), `projections` (reads) and `domain`; only
//! [`startup`] (and the binary) know `infra`. HTTP status codes are decided in [`error`] only.

pub mod auth;
pub mod config;
pub mod embedded;
pub mod error;
pub mod export_rights;
pub mod extract;
pub mod idempotency;
pub mod input_guard;
pub mod observability;
pub mod openapi;
pub mod operations;
pub mod pagination;
pub mod request_log;
pub mod routes;
pub mod scheduler;
pub mod small_cells;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod ws;
