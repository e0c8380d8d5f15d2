//! End-to-end tests against the real Postgres and NATS (see `tests/src/lib.rs` for isolation).

mod alerts;
mod asyncapi;
mod audit;
mod auth;
mod bad_input;
mod clinical;
mod cohorts;
mod content;
mod export_api;
mod exports;
mod faults;
mod hardening;
mod maintenance;
mod oidc;
mod openapi;
mod operations;
mod operator;
mod outage;
mod pipeline;
mod rights;
mod schemathesis;
mod secrets;
mod tls;
mod tree;
mod versioning;
mod workspace;
