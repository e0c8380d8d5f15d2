//! The current maintenance phase as the maintenance gate (`routes::maintenances::gate`) sees it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use projections::identity::{IdentityReader, MaintenanceView};
use tokio::sync::Mutex;

use crate::error::ApiError;

/// How long the gate trusts its copy of the current phase.
const GATE_TTL: Duration = Duration::from_secs(1);

/// The current maintenance phase, cached for `GATE_TTL` so that the gate costs no query on
/// most requests.
#[derive(Default)]
pub struct MaintenanceGate {
    cached: Mutex<Option<(Instant, Option<MaintenanceView>)>>,
}

impl MaintenanceGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub async fn current(
        &self,
        identity: &dyn IdentityReader,
    ) -> Result<Option<MaintenanceView>, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, value)) = cached.as_ref()
            && at.elapsed() < GATE_TTL
        {
            return Ok(value.clone().filter(|m| {
                let now = Utc::now();
                m.start_datetime < now && now < m.end_datetime
            }));
        }
        let value = identity.next_maintenance(Utc::now()).await?;
        *cached = Some((Instant::now(), value.clone()));
        Ok(value.filter(|m| m.active))
    }

    /// Forgets the cached phase (after a maintenance write on this instance).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
