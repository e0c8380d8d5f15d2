//! The cqrs-es event stores behind the command bus.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate_cache::CachedStore;
use crate::event_repository::EventRepository;
use commands::{CommandBus, Execute};
use cqrs_es::persist::{EventUpcaster, PersistedEventStore, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use domain::access::Access;
use domain::cohort::Cohort;
use domain::count::Count;
use domain::feasibility::FeasibilityStudy;
use domain::fhir_filter::FhirFilter;
use domain::folder::Folder;
use domain::mail::MailDelivery;
use domain::maintenance::MaintenancePhase;
use domain::perimeter::Perimeter;
use domain::refresh::RefreshSchedule;
use domain::request::Request;
use domain::role::Role;
use domain::session::Session;
use domain::user::User;
use sqlx::PgPool;

/// Take an aggregate snapshot every this many events, so loading a long-lived request (hundreds
/// of versions) reads one snapshot row and at most this many events.
///
/// A request's snapshot holds every one of its versions, so each one written costs in proportion
/// to the request's size (490 KiB of JSON at 1 000 versions, about 4 ms for Postgres): taken
/// every 20 events, the snapshots of such a request wrote 25 times the bytes of its events, and
/// every 20th command paid for one. Every 100 events, 5 times; loading it then reads up to 99
/// small events beside the snapshot (a few hundred bytes of query each, some 50 KiB against the
/// snapshot's 490), and requests in use are held in memory ([`crate::aggregate_cache`]) rather
/// than loaded.
pub const SNAPSHOT_EVERY: usize = 100;

/// Attempts of a command that keeps meeting concurrent writers before it answers "conflict".
pub const COMMAND_ATTEMPTS: usize = 5;

/// postgres-es reports a pool timeout, a closed pool or a database shutting down as an
/// "unexpected" error; this store reclassifies those ([`crate::sql::is_unavailable`]) as
/// connection errors, so clients get a 503 to retry, not a 500 (and the command bus checks
/// whether a commit that failed so was stored after all).
pub struct ClassifiedStore<ES>(ES);

fn is_unavailability(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .is_some_and(crate::sql::is_unavailable)
}

fn classify<E: std::error::Error>(err: AggregateError<E>) -> AggregateError<E> {
    let no_connection = |e: &(dyn std::error::Error + Send + Sync + 'static)| {
        matches!(
            e.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        )
    };
    match err {
        // No connection could be had: nothing was sent, so nothing can have been stored.
        AggregateError::UnexpectedError(e) if no_connection(e.as_ref()) => {
            AggregateError::DatabaseConnectionError(Box::new(commands::bus::NothingStored(
                e.to_string(),
            )))
        }
        AggregateError::UnexpectedError(e) if is_unavailability(e.as_ref()) => {
            AggregateError::DatabaseConnectionError(e)
        }
        other => other,
    }
}

impl<A: Aggregate, ES: EventStore<A>> EventStore<A> for ClassifiedStore<ES>
where
    ES::AC: Send,
{
    type AC = ES::AC;

    async fn load_events(
        &self,
        id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.0.load_events(id).await.map_err(classify)
    }

    async fn load_aggregate(&self, id: &str) -> Result<Self::AC, AggregateError<A::Error>> {
        self.0.load_aggregate(id).await.map_err(classify)
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: Self::AC,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.0
            .commit(events, context, metadata)
            .await
            .map_err(classify)
    }
}

impl<A: Aggregate, ES: commands::bus::FreshContext<A>> commands::bus::FreshContext<A>
    for ClassifiedStore<ES>
where
    ES::AC: Send,
{
    fn fresh_context(&self, id: &str) -> Option<Self::AC> {
        self.0.fresh_context(id)
    }

    fn held_context(&self, id: &str) -> Option<Self::AC> {
        self.0.held_context(id)
    }
}

/// Brings stored events to the version this build writes, for the aggregates
/// ([`domain::upcast`]). An event that cannot be upcast is left as stored: decoding it then fails
/// with a clear error instead of being guessed.
struct DomainUpcaster;

impl EventUpcaster for DomainUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_version != domain::upcast::current_version(event_type)
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        match domain::upcast::upcast(
            &event.event_type,
            &event.event_version,
            event.payload.clone(),
        ) {
            Ok(payload) => {
                event.payload = payload;
                event.event_version = domain::upcast::current_version(&event.event_type).into();
            }
            Err(e) => {
                tracing::error!(error = %e, aggregate_id = %event.aggregate_id, "stored event cannot be upcast")
            }
        }
        event
    }
}

fn bus<A>(pool: &PgPool) -> CommandBus<ClassifiedStore<PersistedEventStore<EventRepository, A>>>
where
    A: Aggregate,
{
    let repo = EventRepository::new(pool.clone());
    CommandBus::new(
        ClassifiedStore(
            PersistedEventStore::new_snapshot_store(repo, SNAPSHOT_EVERY)
                .with_upcasters(vec![Box::new(DomainUpcaster)]),
        ),
        COMMAND_ATTEMPTS,
    )
}

/// Requests held in memory per bus ([`CachedStore`]): a request's state holds every version's
/// query, so this bounds the memory to a few hundred such states.
const HELD_REQUESTS: usize = 256;

/// [`bus`], with the aggregates it last used held in memory ([`CachedStore`]).
fn cached_bus<A>(pool: &PgPool, capacity: usize) -> CommandBus<ClassifiedStore<CachedStore<A>>>
where
    A: Aggregate + Clone,
{
    let repo = EventRepository::new(pool.clone());
    CommandBus::new(
        ClassifiedStore(CachedStore::new(
            PersistedEventStore::new_snapshot_store(repo, SNAPSHOT_EVERY)
                .with_upcasters(vec![Box::new(DomainUpcaster)]),
            pool.clone(),
            SNAPSHOT_EVERY,
            capacity,
        )),
        COMMAND_ATTEMPTS,
    )
}

/// The command bus of folders.
pub fn folders(pool: &PgPool) -> Arc<dyn Execute<Folder>> {
    Arc::new(bus::<Folder>(pool))
}

/// The command bus of requests.
pub fn requests(pool: &PgPool) -> Arc<dyn Execute<Request>> {
    Arc::new(cached_bus::<Request>(pool, HELD_REQUESTS))
}

/// The command buses of counts and cohorts, with `requests`' (which they read).
pub fn cohorts(
    pool: &PgPool,
    requests: Arc<dyn Execute<Request>>,
) -> commands::cohorts::CohortBuses {
    commands::cohorts::CohortBuses {
        counts: Arc::new(bus::<Count>(pool)),
        cohorts: Arc::new(bus::<Cohort>(pool)),
        requests,
    }
}

/// The command bus of saved FHIR filters.
pub fn fhir_filters(pool: &PgPool) -> Arc<dyn Execute<FhirFilter>> {
    Arc::new(bus::<FhirFilter>(pool))
}

/// The command bus of feasibility studies.
pub fn feasibility_studies(pool: &PgPool) -> Arc<dyn Execute<FeasibilityStudy>> {
    Arc::new(bus::<FeasibilityStudy>(pool))
}

/// The command bus of exports.
pub fn exports(pool: &PgPool) -> Arc<dyn Execute<domain::export::Export>> {
    Arc::new(bus::<domain::export::Export>(pool))
}

/// The command bus of datalabs.
pub fn datalabs(pool: &PgPool) -> Arc<dyn Execute<domain::datalab::Datalab>> {
    Arc::new(bus::<domain::datalab::Datalab>(pool))
}

/// The command bus of infrastructure providers.
pub fn infrastructure_providers(
    pool: &PgPool,
) -> Arc<dyn Execute<domain::datalab::InfrastructureProvider>> {
    Arc::new(bus::<domain::datalab::InfrastructureProvider>(pool))
}

/// The command bus of refresh schedules.
pub fn refresh_schedules(pool: &PgPool) -> Arc<dyn Execute<RefreshSchedule>> {
    Arc::new(bus::<RefreshSchedule>(pool))
}

/// The command bus of counts.
pub fn counts(pool: &PgPool) -> Arc<dyn Execute<Count>> {
    Arc::new(bus::<Count>(pool))
}

/// The command bus of e-mail deliveries.
pub fn mail_deliveries(pool: &PgPool) -> Arc<dyn Execute<MailDelivery>> {
    Arc::new(bus::<MailDelivery>(pool))
}

/// The command buses of web contents and release notes.
pub fn web_contents(pool: &PgPool) -> Arc<dyn Execute<domain::content::WebContent>> {
    Arc::new(bus::<domain::content::WebContent>(pool))
}

pub fn release_notes(pool: &PgPool) -> Arc<dyn Execute<domain::content::ReleaseNote>> {
    Arc::new(bus::<domain::content::ReleaseNote>(pool))
}

/// The command bus of audit reads.
pub fn audit_reads(pool: &PgPool) -> Arc<dyn Execute<domain::audit_read::AuditRead>> {
    Arc::new(bus::<domain::audit_read::AuditRead>(pool))
}

/// The command bus of users.
pub fn users(pool: &PgPool) -> Arc<dyn Execute<User>> {
    Arc::new(bus::<User>(pool))
}

/// The command buses of the identity aggregates.
pub fn identity(pool: &PgPool) -> commands::identity::IdentityBuses {
    commands::identity::IdentityBuses {
        users: Arc::new(bus::<User>(pool)),
        sessions: Arc::new(bus::<Session>(pool)),
        roles: Arc::new(bus::<Role>(pool)),
        accesses: Arc::new(bus::<Access>(pool)),
        // Tree imports append thousands of perimeters: in batches.
        perimeters: Arc::new(crate::batch_append::BatchingBus::new(
            Arc::new(bus::<Perimeter>(pool)),
            pool.clone(),
        )),
        maintenances: Arc::new(bus::<MaintenancePhase>(pool)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_classified_store_hands_the_bus_what_the_cache_holds() {
        use commands::bus::FreshContext;
        // Nothing here reads the database.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let store = ClassifiedStore(CachedStore::<Request>::new(
            PersistedEventStore::new_snapshot_store(
                EventRepository::new(pool.clone()),
                SNAPSHOT_EVERY,
            ),
            pool,
            SNAPSHOT_EVERY,
            4,
        ));
        assert!(store.held_context("r").is_none());
        store.fresh_context("r").expect("a fresh context");
        assert!(
            store.held_context("r").is_some(),
            "the bus decides on the held request without a query"
        );
    }

    #[test]
    fn pool_exhaustion_becomes_a_connection_error_and_bugs_stay_unexpected() {
        let timed_out: AggregateError<std::fmt::Error> =
            AggregateError::UnexpectedError(Box::new(sqlx::Error::PoolTimedOut));
        assert!(matches!(
            classify(timed_out),
            AggregateError::DatabaseConnectionError(_)
        ));
        let bug: AggregateError<std::fmt::Error> =
            AggregateError::UnexpectedError(Box::new(sqlx::Error::RowNotFound));
        assert!(matches!(classify(bug), AggregateError::UnexpectedError(_)));
        assert!(matches!(
            classify::<std::fmt::Error>(AggregateError::AggregateConflict),
            AggregateError::AggregateConflict
        ));
    }
}
