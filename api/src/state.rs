//! What every handler can reach.

use std::sync::Arc;

use async_trait::async_trait;
use commands::workspace::Workspace;
use projections::workspace::WorkspaceReader;
use serde::Serialize;

use crate::auth::JwtKeys;

/// One dependency's state in `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Readiness probes of the dependencies (implemented by the startup code).
#[async_trait]
pub trait Readiness: Send + Sync {
    async fn checks(&self) -> Vec<Check>;
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub workspace: Arc<Workspace>,
    pub reader: Arc<dyn WorkspaceReader>,
    pub jwt: Arc<JwtKeys>,
    pub readiness: Arc<dyn Readiness>,
}
