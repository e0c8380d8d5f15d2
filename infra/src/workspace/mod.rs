//! The `workspace` read model: its fold ([`projection`]) and its queries ([`reader`]).

pub mod projection;
pub mod reader;

pub use projection::WorkspaceProjection;
pub use reader::PgWorkspace;
