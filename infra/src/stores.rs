//! The cqrs-es event stores behind the command bus.

use std::sync::Arc;

use commands::{CommandBus, Execute};
use cqrs_es::persist::PersistedEventStore;
use domain::folder::Folder;
use domain::request::Request;
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;

/// Take an aggregate snapshot every this many events, so loading a long-lived request (hundreds
/// of versions) reads one snapshot row and a handful of events.
pub const SNAPSHOT_EVERY: usize = 20;

/// Attempts of a command that keeps meeting concurrent writers before it answers "conflict".
pub const COMMAND_ATTEMPTS: usize = 5;

fn bus<A>(pool: &PgPool) -> CommandBus<PersistedEventStore<PostgresEventRepository, A>>
where
    A: cqrs_es::Aggregate,
{
    let repo = PostgresEventRepository::new(pool.clone());
    CommandBus::new(
        PersistedEventStore::new_snapshot_store(repo, SNAPSHOT_EVERY),
        COMMAND_ATTEMPTS,
    )
}

/// The command bus of folders.
pub fn folders(pool: &PgPool) -> Arc<dyn Execute<Folder>> {
    Arc::new(bus::<Folder>(pool))
}

/// The command bus of requests.
pub fn requests(pool: &PgPool) -> Arc<dyn Execute<Request>> {
    Arc::new(bus::<Request>(pool))
}
