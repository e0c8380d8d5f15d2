//! Application services of the Cohort360 back-end.
//!
//! The HTTP layer (and, later, NATS reactors) call these services; they build domain commands,
//! run them through the [`bus::CommandBus`] (load, decide, append, retry on conflict) and wait for
//! the read models to catch up ([`ports::Consistency`]) so that a client's next read sees its write.
//! Every authorization rule is here too ([`authz`]): the edge hands over the caller as a
//! principal and decides no permission.
//!
//! May depend on: `domain`, cqrs-es traits. What it needs from outside (read-model lookups, the
//! projection progress) is declared here as traits in [`ports`] and implemented by `infra`.

pub mod alerts;
pub mod authz;
pub mod bus;
pub mod cohorts;
pub mod content;
pub mod context;
pub mod error;
pub mod exports;
pub mod feasibility;
pub mod fhir_filters;
pub mod identity;
pub mod mails;
pub mod passwords;
pub mod ports;
pub mod refresh;
pub mod token_check;
pub mod trace;
pub mod workspace;

pub use bus::{CommandBus, Committed, Execute};
pub use context::CommandContext;
pub use error::CommandError;
