//! Who asks, when, and as part of what: the metadata every command carries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// The context of one command: acting user, time, tracing ids.
///
/// Written as the event metadata (`user`, `impersonator`, `correlation_id`, `causation_id`), so
/// that an auditor can answer "who did this, on whose behalf, because of what".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// The user the command acts as.
    pub user: String,
    /// The real user when an administrator impersonates `user`.
    pub impersonator: Option<String>,
    /// Shared by everything one client action caused (the HTTP request id, by default).
    pub correlation_id: String,
    /// What directly caused this command (the HTTP request id, or the event that triggered it).
    pub causation_id: String,
    /// Business time of the command.
    pub at: DateTime<Utc>,
}

impl CommandContext {
    /// The event metadata for this context.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("user".to_string(), self.user.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
            ("causation_id".to_string(), self.causation_id.clone()),
        ]);
        if let Some(imp) = &self.impersonator {
            m.insert("impersonator".to_string(), imp.clone());
        }
        m
    }

    /// The same context for a command caused by another one (a cascade).
    pub fn caused_by(&self, causation_id: String) -> Self {
        Self {
            causation_id,
            ..self.clone()
        }
    }
}
