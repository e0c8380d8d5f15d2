//! Which events this process's projectors have applied, by aggregate and sequence: what
//! read-your-writes waits on, so a command learns its projection is current without a query.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::log::CommittedEvent;

/// Aggregates remembered per generation; two generations are kept, so the log holds the last
/// `GENERATION`–`2 × GENERATION` aggregates a projector touched (a waiting command's aggregate
/// is among the last few).
const GENERATION: usize = 20_000;

/// The highest sequence applied per aggregate, for recently touched aggregates.
pub struct AppliedLog {
    maps: Mutex<Generations>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<(String, String), i64>,
    previous: HashMap<(String, String), i64>,
}

impl Default for AppliedLog {
    fn default() -> Self {
        Self {
            maps: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl AppliedLog {
    /// Remembers `events` as applied (or already in the read model), and wakes the waiters.
    pub fn record<'a>(&self, events: impl IntoIterator<Item = &'a CommittedEvent>) {
        let mut any = false;
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
                let known = maps.current.get(&key).or(maps.previous.get(&key)).copied();
                if known.is_none_or(|s| s < event.sequence) {
                    if maps.current.len() >= GENERATION {
                        maps.previous = std::mem::take(&mut maps.current);
                    }
                    maps.current.insert(key, event.sequence);
                }
                any = true;
            }
        }
        if any {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Whether event `sequence` of the aggregate is known applied.
    pub fn has(&self, aggregate_type: &str, aggregate_id: &str, sequence: i64) -> bool {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let key = (aggregate_type.to_string(), aggregate_id.to_string());
        maps.current
            .get(&key)
            .or(maps.previous.get(&key))
            .is_some_and(|s| *s >= sequence)
    }

    /// Changes whenever something is recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::test_event as event;

    #[test]
    fn keeps_the_highest_sequence_and_at_least_one_generation_of_aggregates() {
        let log = AppliedLog::default();
        let mut changes = log.subscribe();
        log.record([&event("a", 3), &event("a", 2)]);
        assert!(log.has("Folder", "a", 3));
        assert!(log.has("Folder", "a", 1));
        assert!(!log.has("Folder", "a", 4));
        assert!(!log.has("Request", "a", 1));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        // A full generation later, `a` is still known; two later, it is forgotten.
        for i in 0..GENERATION {
            log.record([&event(&format!("x{i}"), 1)]);
        }
        assert!(log.has("Folder", "a", 3));
        for i in 0..GENERATION {
            log.record([&event(&format!("y{i}"), 1)]);
        }
        assert!(!log.has("Folder", "a", 3));
        assert!(log.has("Folder", &format!("y{}", GENERATION - 1), 1));
        assert!(changes.has_changed().unwrap());
    }
}
