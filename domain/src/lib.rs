//! The pure domain of the Cohort360 back-end.
//!
//! Aggregates decide (`handle`) and assign (`apply`); nothing here performs I/O, reads a clock or
//! draws a random id: time, ids and the acting user arrive inside the commands. Events are a
//! persisted contract (see `README.md`, "Event contract"): variants and fields are never renamed or
//! repurposed; a change adds a new version.
//!
//! May depend on: cqrs-es traits, serde, chrono and uuid types, thiserror, and roaring (the
//! query engine's patient sets: a pure data structure). Nothing else.

pub mod access;
pub mod access_history;
pub mod audit_read;
pub mod authz;
pub mod cohort;
pub mod cohort_query;
pub mod content;
pub mod count;
pub mod datalab;
pub mod export;
pub mod feasibility;
pub mod fhir_filter;
pub mod folder;
pub mod job;
pub mod mail;
pub mod maintenance;
pub mod perimeter;
pub mod query;
pub mod query_diff;
pub mod refresh;
pub mod request;
pub mod rights;
pub mod role;
pub mod session;
pub mod small_cells;
pub mod terminology;
pub mod upcast;
pub mod user;
pub mod validation;

/// The version written in `event_version` for every event of this crate's first contract.
pub const EVENT_VERSION_1: &str = "1";

/// The version of events whose shape changed once (see [`upcast`]).
pub const EVENT_VERSION_2: &str = "2";

/// Name of the folder that receives the requests other users share with someone (upstream
/// constant, shown as-is by the front-end).
pub const SHARED_INBOX_FOLDER_NAME: &str = "Mes requêtes reçues";
