//! The readiness probes (`/health/ready`) and the pipeline's status (`/admin/pipeline/`).

use std::time::Duration;

use async_trait::async_trait;
use projections::health::{Check, PipelineAdmin, Readiness};
use sqlx::PgPool;

use crate::health::PipelineMonitor;

pub struct Probes {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub monitor: PipelineMonitor,
}

/// The pipeline's status from the checkpoints and this process's last errors.
pub struct Pipeline {
    pub pool: PgPool,
}

#[async_trait]
impl PipelineAdmin for Pipeline {
    async fn status(&self) -> Result<serde_json::Value, String> {
        let names: Vec<&str> = super::contexts::projections()
            .iter()
            .map(|p| p.name())
            .collect();
        let status = crate::health::pipeline_status(&self.pool, &names)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::to_value(status).map_err(|e| e.to_string())
    }
}

/// How long `/health/ready` waits for Postgres before calling it unreachable.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[async_trait]
impl Readiness for Probes {
    async fn checks(&self) -> Vec<Check> {
        let pg = tokio::time::timeout(
            READY_PROBE_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool),
        )
        .await;
        let postgres = match pg {
            Ok(Ok(_)) => Ok("reachable".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                READY_PROBE_TIMEOUT.as_millis()
            )),
        };
        let nats_state = self.nats.connection_state();
        let nats_ok = matches!(nats_state, async_nats::connection::State::Connected);
        let nats_detail = if nats_ok {
            "connected".to_string()
        } else {
            format!(
                "{nats_state:?}: reconnecting in the background; writes are stored and \
                 projected from Postgres meanwhile"
            )
        };
        let pipeline = pipeline_check(&self.monitor);
        vec![
            Check {
                name: "postgres",
                ok: postgres.is_ok(),
                detail: postgres.unwrap_or_else(|e| e),
                critical: true,
            },
            Check {
                name: "nats",
                ok: nats_ok,
                detail: nats_detail,
                critical: false,
            },
            pipeline,
        ]
    }
}

/// The relay, projectors and reactors as the monitor last read them: degraded when one of them
/// lets events wait beyond the threshold (stalled or far behind), with the causes.
fn pipeline_check(monitor: &PipelineMonitor) -> Check {
    let Some(reading) = monitor.last() else {
        return Check {
            name: "pipeline",
            ok: true,
            detail: "not read yet".into(),
            critical: false,
        };
    };
    let causes = reading.causes();
    let age = (chrono::Utc::now() - reading.read_at).num_seconds();
    let detail = if causes.is_empty() {
        format!(
            "relay, projectors and reactors keep up (read {age} s ago, threshold {} s)",
            monitor.threshold().as_secs()
        )
    } else {
        causes.join("; ")
    };
    Check {
        name: "pipeline",
        ok: causes.is_empty(),
        detail,
        critical: false,
    }
}
