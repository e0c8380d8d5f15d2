//! What `/health/ready` and `/admin/pipeline/` read: the dependencies' state and where the log
//! consumers stand. Implemented by the runtime (`infra::runtime::probes`).

use async_trait::async_trait;
use serde::Serialize;

/// One dependency's state in `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// Whether the instance cannot serve at all while this check fails (Postgres): the answer
    /// is then 503 `unavailable`; a failed non-critical check only makes it `degraded`.
    #[serde(skip)]
    pub critical: bool,
}

/// Readiness probes of the dependencies.
#[async_trait]
pub trait Readiness: Send + Sync {
    async fn checks(&self) -> Vec<Check>;
}

/// Where the log consumers stand.
#[async_trait]
pub trait PipelineAdmin: Send + Sync {
    /// Each projector's, reactor's and the relay's checkpoint, backlog, lag and last error.
    async fn status(&self) -> Result<serde_json::Value, String>;
}
