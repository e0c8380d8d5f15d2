//! Pipeline health for operators: where each projector, reactor and the relay stand in the log,
//! how far behind they are, and the last error each consumer met in this process.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use projections::Cursor;
use serde::Serialize;
use sqlx::PgPool;

use crate::pipeline_signals::{LastError, last_error};

/// Where one log consumer stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerStatus {
    /// `projection`, `reactor` or `relay`.
    pub kind: &'static str,
    pub name: String,
    pub checkpoint: String,
    /// Committed events after the checkpoint.
    pub behind: i64,
    /// Age of the oldest event not handled yet (0 when caught up).
    pub lag_seconds: f64,
    pub last_error: Option<LastError>,
}

async fn status(
    pool: &PgPool,
    kind: &'static str,
    name: &str,
    cursor: Cursor,
    error_key: &str,
) -> sqlx::Result<ConsumerStatus> {
    let (behind, lag_seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*),
                COALESCE(EXTRACT(EPOCH FROM now() - min(recorded_at)), 0)::float8
           FROM events WHERE (txid, position) > (($1::bigint)::text::xid8, $2)",
    )
    .bind(cursor.txid)
    .bind(cursor.position)
    .fetch_one(pool)
    .await?;
    Ok(ConsumerStatus {
        kind,
        name: name.to_string(),
        checkpoint: cursor.to_string(),
        behind,
        lag_seconds,
        last_error: last_error(error_key),
    })
}

/// The status of the given projections, of every reactor and of the JetStream relay.
pub async fn pipeline_status(
    pool: &PgPool,
    projections: &[&str],
) -> sqlx::Result<Vec<ConsumerStatus>> {
    let mut out = Vec::new();
    for name in projections {
        let cursor = crate::projector::checkpoint(pool, name).await?;
        out.push(status(pool, "projection", name, cursor, name).await?);
    }
    for (name, cursor) in crate::reactor::checkpoints(pool).await? {
        out.push(status(pool, "reactor", &name, cursor, &name).await?);
    }
    let relay = crate::relay::checkpoint(pool, "jetstream").await?;
    out.push(status(pool, "relay", "jetstream", relay, "relay").await?);
    Ok(out)
}

/// How a consumer fares, as judged by [`PipelineMonitor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// Nothing waits for longer than the threshold.
    Healthy,
    /// Events wait beyond the threshold, but the checkpoint moves (catching up).
    Lagging,
    /// Events wait beyond the threshold and the checkpoint has not moved since the last reading.
    Stalled,
}

/// One consumer in a pipeline reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerHealth {
    #[serde(flatten)]
    pub status: ConsumerStatus,
    pub progress: Progress,
}

/// The last reading of the pipeline: every projector, reactor and the relay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineReading {
    pub read_at: DateTime<Utc>,
    pub consumers: Vec<ConsumerHealth>,
}

impl PipelineReading {
    /// The consumers that are not healthy.
    pub fn unhealthy(&self) -> impl Iterator<Item = &ConsumerHealth> {
        self.consumers
            .iter()
            .filter(|c| c.progress != Progress::Healthy)
    }

    /// One line per unhealthy consumer: what waits, for how long, and its last error.
    pub fn causes(&self) -> Vec<String> {
        self.unhealthy().map(ConsumerHealth::cause).collect()
    }
}

impl ConsumerHealth {
    /// `<kind> <name>`, e.g. `relay jetstream`.
    pub fn label(&self) -> String {
        format!("{} {}", self.status.kind, self.status.name)
    }

    /// Why it is unhealthy: what waits, for how long, and its last error.
    pub fn cause(&self) -> String {
        let s = &self.status;
        let verdict = match self.progress {
            Progress::Stalled => "has not advanced",
            _ => "is behind",
        };
        let mut line = format!(
            "{} {verdict}: {} events waiting, the oldest for {:.0} s",
            self.label(),
            s.behind,
            s.lag_seconds
        );
        if let Some(e) = &s.last_error {
            line.push_str(&format!(
                "; last error at {}: {}",
                e.at.to_rfc3339(),
                e.message
            ));
        }
        line
    }
}

/// Judges one consumer from its status now and its checkpoint at the previous reading.
pub fn judge(status: &ConsumerStatus, before: Option<&str>, threshold_seconds: f64) -> Progress {
    if status.behind == 0 || status.lag_seconds <= threshold_seconds {
        return Progress::Healthy;
    }
    if before == Some(status.checkpoint.as_str()) {
        Progress::Stalled
    } else {
        Progress::Lagging
    }
}

/// Reads the pipeline every `interval`, keeps the last reading for `/health/ready`, and exports
/// it as gauges: `cohort360_pipeline_behind_events`, `cohort360_pipeline_lag_seconds` and
/// `cohort360_pipeline_stalled` (1 when stalled), labelled `kind` and `consumer`.
#[derive(Clone)]
pub struct PipelineMonitor {
    last: std::sync::Arc<std::sync::RwLock<Option<PipelineReading>>>,
    threshold: std::time::Duration,
}

impl PipelineMonitor {
    /// A monitor that calls a consumer degraded once events wait longer than `threshold`.
    pub fn new(threshold: std::time::Duration) -> Self {
        Self {
            last: Default::default(),
            threshold,
        }
    }

    /// The last reading, if one was made.
    pub fn last(&self) -> Option<PipelineReading> {
        self.last.read().ok()?.clone()
    }

    /// The threshold beyond which waiting events make a consumer unhealthy.
    pub fn threshold(&self) -> std::time::Duration {
        self.threshold
    }

    /// Takes one reading now (and keeps it).
    pub async fn read(&self, pool: &PgPool, projections: &[&str]) -> sqlx::Result<PipelineReading> {
        let statuses = pipeline_status(pool, projections).await?;
        let before = self.last();
        let threshold = self.threshold.as_secs_f64();
        let consumers: Vec<ConsumerHealth> = statuses
            .into_iter()
            .map(|status| {
                let previous = before.as_ref().and_then(|r| {
                    r.consumers
                        .iter()
                        .find(|c| c.status.kind == status.kind && c.status.name == status.name)
                        .map(|c| c.status.checkpoint.as_str())
                });
                let progress = judge(&status, previous, threshold);
                ConsumerHealth { status, progress }
            })
            .collect();
        for c in &consumers {
            let labels = [
                ("kind", c.status.kind.to_string()),
                ("consumer", c.status.name.clone()),
            ];
            metrics::gauge!("cohort360_pipeline_behind_events", &labels)
                .set(c.status.behind as f64);
            metrics::gauge!("cohort360_pipeline_lag_seconds", &labels).set(c.status.lag_seconds);
            metrics::gauge!("cohort360_pipeline_stalled", &labels)
                .set(f64::from(u8::from(c.progress == Progress::Stalled)));
        }
        let reading = PipelineReading {
            read_at: Utc::now(),
            consumers,
        };
        if let Ok(mut last) = self.last.write() {
            *last = Some(reading.clone());
        }
        Ok(reading)
    }

    /// Reads every `interval` until `shutdown`; a failed reading is logged and retried. A
    /// consumer turning unhealthy is logged once (with the cause), and again when it recovers.
    pub async fn run(
        self,
        pool: PgPool,
        projections: Vec<&'static str>,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut unhealthy: BTreeMap<String, Progress> = BTreeMap::new();
        loop {
            match self.read(&pool, &projections).await {
                Ok(reading) => {
                    let mut now = BTreeMap::new();
                    for consumer in reading.unhealthy() {
                        let label = consumer.label();
                        if unhealthy.get(&label) != Some(&consumer.progress) {
                            tracing::warn!(cause = %consumer.cause(), "pipeline degraded");
                        }
                        now.insert(label, consumer.progress);
                    }
                    for name in unhealthy.keys().filter(|n| !now.contains_key(*n)) {
                        tracing::info!(consumer = %name, "pipeline consumer caught up");
                    }
                    unhealthy = now;
                }
                Err(e) => tracing::debug!(error = %e, "pipeline not read"),
            }
            if crate::follow::sleep_or_stop(&shutdown, interval).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(checkpoint: &str, behind: i64, lag_seconds: f64) -> ConsumerStatus {
        ConsumerStatus {
            kind: "relay",
            name: "jetstream".into(),
            checkpoint: checkpoint.into(),
            behind,
            lag_seconds,
            last_error: None,
        }
    }

    #[test]
    fn a_consumer_is_stalled_only_when_events_wait_too_long_and_it_did_not_move() {
        assert_eq!(
            judge(&status("1:5", 0, 0.0), Some("1:5"), 30.0),
            Progress::Healthy
        );
        assert_eq!(
            judge(&status("1:5", 3, 2.0), Some("1:5"), 30.0),
            Progress::Healthy
        );
        assert_eq!(
            judge(&status("1:5", 3, 31.0), Some("1:5"), 30.0),
            Progress::Stalled
        );
        assert_eq!(
            judge(&status("1:9", 3, 31.0), Some("1:5"), 30.0),
            Progress::Lagging
        );
        assert_eq!(
            judge(&status("1:9", 3, 31.0), None, 30.0),
            Progress::Lagging
        );
    }

    #[test]
    fn causes_name_the_consumer_the_backlog_and_the_last_error() {
        let mut stalled = status("1:5", 4, 45.0);
        stalled.last_error = Some(LastError {
            message: "publish: maximum payload exceeded".into(),
            at: Utc::now(),
        });
        let reading = PipelineReading {
            read_at: Utc::now(),
            consumers: vec![
                ConsumerHealth {
                    status: stalled,
                    progress: Progress::Stalled,
                },
                ConsumerHealth {
                    status: status("2:1", 0, 0.0),
                    progress: Progress::Healthy,
                },
            ],
        };
        let causes = reading.causes();
        assert_eq!(causes.len(), 1);
        assert!(causes[0].starts_with("relay jetstream has not advanced: 4 events waiting"));
        assert!(causes[0].contains("maximum payload exceeded"));
    }
}
