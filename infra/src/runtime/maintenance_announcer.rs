//! Broadcasts "maintenance started" and "maintenance ended" to every socket when the current
//! phase changes. Each instance announces to the sockets of every instance: a client may see
//! the same transition once per instance.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use commands::ports::Notifier;
use projections::identity::{IdentityReader, MaintenanceView};
use tokio_util::sync::CancellationToken;

/// How often the announcer looks for phases starting or ending.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

pub async fn announce_transitions(
    identity: Arc<dyn IdentityReader>,
    notifier: Arc<dyn Notifier>,
    shutdown: CancellationToken,
) {
    let mut current: Option<MaintenanceView> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
        }
        let active = match identity.next_maintenance(Utc::now()).await {
            Ok(next) => next.filter(|m| m.active),
            Err(e) => {
                tracing::debug!(error = %e, "maintenance announcer: read failed");
                continue;
            }
        };
        let changed = active.as_ref().map(|m| m.id) != current.as_ref().map(|m| m.id);
        if !changed {
            continue;
        }
        match (&current, &active) {
            (_, Some(started)) => notifier.announce_maintenance(&started.notice()).await,
            (Some(ended), None) => {
                notifier
                    .announce_maintenance(
                        &MaintenanceView {
                            active: false,
                            ..ended.clone()
                        }
                        .notice(),
                    )
                    .await
            }
            (None, None) => {}
        }
        current = active;
    }
}
