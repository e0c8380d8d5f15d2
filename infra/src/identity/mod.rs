//! The identity side: the `identity` read model (fold and queries) and the id sequences of integer-numbered aggregates.

pub mod projection;
pub mod reader;

pub use projection::IdentityProjection;
pub use reader::PgIdentity;

use sqlx::PgPool;

/// The sequences that number roles, accesses, profiles and maintenance phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSequence {
    Role,
    Access,
    Profile,
    Maintenance,
}

/// Draws the next id of `sequence`.
pub async fn next_id(pool: &PgPool, sequence: IdSequence) -> sqlx::Result<i64> {
    let name = match sequence {
        IdSequence::Role => "role_ids",
        IdSequence::Access => "access_ids",
        IdSequence::Profile => "profile_ids",
        IdSequence::Maintenance => "maintenance_ids",
    };
    sqlx::query_scalar("SELECT nextval($1::regclass)")
        .bind(name)
        .fetch_one(pool)
        .await
}
