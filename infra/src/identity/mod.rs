//! The identity side: the `identity` read model (fold and queries) and the id sequences of integer-numbered aggregates.

pub mod projection;
pub mod read_rights;
pub mod reader;

pub use projection::IdentityProjection;
pub use read_rights::{IdentityAuthorities, IdentityReadRights};
pub use reader::PgIdentity;

use commands::identity::IdKind;
use sqlx::PgPool;

/// Draws the next id of an integer-numbered aggregate from its sequence (kept outside the
/// projection schema: a rebuild never resets it).
pub async fn next_id(pool: &PgPool, kind: IdKind) -> sqlx::Result<i64> {
    let sequence = match kind {
        IdKind::Role => "role_ids",
        IdKind::Access => "access_ids",
        IdKind::Profile => "profile_ids",
        IdKind::Maintenance => "maintenance_ids",
    };
    sqlx::query_scalar("SELECT nextval($1::regclass)")
        .bind(sequence)
        .fetch_one(pool)
        .await
}
