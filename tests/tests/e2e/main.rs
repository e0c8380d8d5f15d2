//! End-to-end tests against the real Postgres and NATS (see `tests/src/lib.rs` for isolation).

mod bad_input;
mod outage;
mod pipeline;
mod versioning;
mod workspace;
