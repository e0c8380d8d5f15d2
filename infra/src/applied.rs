//! Which events this process's projectors have applied, by aggregate and sequence: what
//! read-your-writes waits on, so a command learns its projection is current without a query.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Numbers a projector's reads of the log as they begin, and says which have ended (with what
/// they read recorded in its [`AppliedLog`]). A waiting command notes the number before waking
/// the projector: a read numbered after it began after the commit, so if it ends without the
/// command's event, that event is held back behind an older transaction still running, and only
/// then is it worth waking the projector again. A read already under way when the command
/// committed is no reason to: the wake is kept for when it ends.
pub struct LogReads {
    begun: AtomicU64,
    ended: watch::Sender<u64>,
}

impl Default for LogReads {
    fn default() -> Self {
        Self {
            begun: AtomicU64::new(0),
            ended: watch::channel(0).0,
        }
    }
}

impl LogReads {
    /// How many reads have begun.
    pub fn begun(&self) -> u64 {
        self.begun.load(Ordering::SeqCst)
    }

    /// Numbers a read about to begin; it counts as ended when the returned guard drops.
    pub fn begin(&self) -> ReadUnderWay<'_> {
        ReadUnderWay {
            reads: self,
            number: self.begun.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// The highest number of an ended read, changing as reads end.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }
}

/// A read of the log under way (see [`LogReads::begin`]).
pub struct ReadUnderWay<'a> {
    reads: &'a LogReads,
    number: u64,
}

impl Drop for ReadUnderWay<'_> {
    fn drop(&mut self) {
        let number = self.number;
        self.reads.ended.send_if_modified(|ended| {
            let later = number > *ended;
            if later {
                *ended = number;
            }
            later
        });
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

    #[test]
    fn a_read_ends_when_its_guard_drops_and_the_highest_ended_number_is_kept() {
        let reads = LogReads::default();
        let mut ended = reads.subscribe();
        let before = reads.begun();
        let first = reads.begin();
        let second = reads.begin();
        assert_eq!(reads.begun(), before + 2);
        drop(second);
        assert!(ended.has_changed().unwrap());
        assert_eq!(*ended.borrow_and_update(), before + 2);
        // The earlier read ending later changes nothing: a later one has ended.
        drop(first);
        assert!(!ended.has_changed().unwrap());
        assert_eq!(*ended.borrow(), before + 2);
    }
}
