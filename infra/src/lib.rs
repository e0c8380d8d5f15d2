//! Adapters of the Cohort360 back-end to the outside world.
//!
//! * [`db`]: the Postgres pool, database creation and the embedded migrations;
//! * [`stores`]: the cqrs-es event stores (postgres-es) behind the command bus;
//! * [`log`]: gap-safe reads of the committed event log;
//! * [`nats`]: the JetStream stream, subjects and the published envelope;
//! * [`relay`]: publishes committed events to JetStream, exactly in log order;
//! * [`projector`]: the runtime that folds events into read models, checkpointed and rebuildable;
//! * [`workspace`]: the workspace projection (SQL fold) and its readers;
//! * [`identity`]: users, roles, perimeters, accesses and maintenance: fold, readers, passwords;
//! * [`consistency`]: read-your-writes for the command side;
//! * [`runtime`]: the composition root: settings, one builder per context, the relay, projectors,
//!   reactors and schedulers running, the websocket fan-out.
//!
//! May depend on: `domain`, `commands`, `projections`, and the I/O crates.

pub mod aggregate_cache;
pub mod applied;
pub mod audit;
pub mod batch_append;
mod checkpoint_tx;
pub mod clinical;
pub mod cohorts;
pub mod consistency;
pub mod content;
pub mod db;
pub mod event_repository;
pub mod exports;
pub mod follow;
pub mod health;
pub mod held_connection;
pub mod idempotency;
pub mod identity;
pub mod identity_providers;
pub mod live_feed;
pub mod log;
pub mod mail;
pub mod nats;
pub mod pipeline_signals;
pub mod projector;
pub mod reactor;
pub mod rebuild;
pub mod relay;
pub mod request_logs;
pub mod runtime;
mod sql;
pub mod stores;
pub mod terminology;
pub mod tls;
pub mod trace;
pub mod workspace;
