//! The JetStream streams the service publishes to: created at start, or in the background
//! once NATS comes when it is away.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::nats::NatsSettings;

/// How long the start waits for NATS before going on without it.
const NATS_START_PATIENCE: Duration = Duration::from_secs(2);

/// Makes sure the events and public streams exist. When NATS answers at start, a failure is
/// fatal (JetStream disabled, a stream of another shape): the operator must fix it. When NATS
/// is away, the service starts degraded and a background task creates the streams once it
/// comes (the relay also recreates its stream before retrying a failed publish).
pub async fn start_streams(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    nats: &NatsSettings,
    public_root: &str,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connected = || {
        matches!(
            client.connection_state(),
            async_nats::connection::State::Connected
        )
    };
    let deadline = tokio::time::Instant::now() + NATS_START_PATIENCE;
    while !connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if connected() {
        ensure_streams(js, nats, public_root).await?;
        return Ok(());
    }
    tracing::warn!(
        url = %nats.url,
        "NATS does not answer: starting degraded (writes are stored and projected from \
         Postgres; events are published once NATS is back)"
    );
    let (js, nats, public_root, shutdown) = (
        js.clone(),
        nats.clone(),
        public_root.to_string(),
        shutdown.clone(),
    );
    tasks.spawn(async move {
        loop {
            match ensure_streams(&js, &nats, &public_root).await {
                Ok(()) => {
                    tracing::info!("NATS streams ready");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "NATS streams not ready yet"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
    Ok(())
}

/// The events stream and the public events stream.
async fn ensure_streams(
    js: &async_nats::jetstream::Context,
    nats: &NatsSettings,
    public_root: &str,
) -> anyhow::Result<()> {
    crate::nats::ensure_stream(js, nats).await?;
    crate::cohorts::reactions::ensure_public_stream(js, &nats.stream, public_root)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the public events stream: {e}"))
}
