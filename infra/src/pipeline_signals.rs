//! What the log consumers report as they go (their last error, their lag), kept apart from the
//! health reading (the `health` module) so that the consumers do not depend on the code that
//! judges them.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The last error a consumer met, in this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub message: String,
    pub at: DateTime<Utc>,
}

fn last_errors() -> &'static Mutex<BTreeMap<String, LastError>> {
    static ERRORS: OnceLock<Mutex<BTreeMap<String, LastError>>> = OnceLock::new();
    ERRORS.get_or_init(Default::default)
}

/// Records an error of consumer `name` (kept until the next one) and counts it.
pub fn record_error(name: &str, message: &str) {
    metrics::counter!("cohort360_consumer_errors_total", "consumer" => name.to_string())
        .increment(1);
    if let Ok(mut errors) = last_errors().lock() {
        errors.insert(
            name.to_string(),
            LastError {
                message: message.to_string(),
                at: Utc::now(),
            },
        );
    }
}

/// The last error of consumer `name` in this process, if any.
pub fn last_error(name: &str) -> Option<LastError> {
    last_errors().lock().ok()?.get(name).cloned()
}

/// Records, for each event just handled, the time since it was recorded (commit → handled).
pub fn observe_lag<'a>(
    metric: &'static str,
    label: &'static str,
    name: &str,
    events: impl IntoIterator<Item = &'a crate::log::CommittedEvent>,
) {
    let now = Utc::now();
    for event in events {
        let lag = (now - event.recorded_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        metrics::histogram!(metric, label => name.to_string()).record(lag.max(0.0));
    }
}
