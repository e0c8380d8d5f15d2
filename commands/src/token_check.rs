//! Whether the holder of an access token may still act: the token's user exists and is active,
//! and the session (the login the token came from) has not ended.
//!
//! Every authenticated request asks, so verdicts are cached for a short time. A session ended
//! by this process (logout, a replayed refresh token) is forgotten at once; one ended by another
//! instance is refused at the latest when the cached verdict expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// What the read model knows of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRecord {
    /// Open, held by this user.
    Open { username: String },
    /// Logged out, or revoked after a refresh-token replay.
    Ended,
    /// Not in the read model (yet).
    Unknown,
}

/// What the read model knows of a token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRecord {
    /// The user exists and has an active profile.
    pub user_active: bool,
    /// The token's session, when it names one.
    pub session: Option<SessionRecord>,
}

/// The verdict on a token's holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// No such user, or no active profile.
    UnknownUser,
    /// The session has ended, is unknown, or belongs to someone else.
    SessionEnded,
}

/// Entries kept at most; beyond, expired ones are dropped (and all of them if that is not
/// enough), so that a flood of forged sessions cannot grow the cache.
const MAX_ENTRIES: usize = 50_000;

type Key = (String, Option<Uuid>);

/// A short-lived cache of verdicts.
pub struct VerdictCache {
    ttl: Duration,
    entries: Mutex<HashMap<Key, (Instant, Verdict)>>,
}

impl VerdictCache {
    /// A cache keeping each verdict for `ttl` (zero: no caching).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached verdict on `(username, session)`, if still fresh.
    pub fn get(&self, username: &str, session: Option<Uuid>) -> Option<Verdict> {
        let entries = self.entries.lock().ok()?;
        let (at, verdict) = entries.get(&(username.to_string(), session))?;
        (at.elapsed() < self.ttl).then_some(*verdict)
    }

    /// Remembers a verdict.
    pub fn put(&self, username: &str, session: Option<Uuid>, verdict: Verdict) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert((username.to_string(), session), (Instant::now(), verdict));
    }

    /// Forgets every verdict on `session` (it just ended here).
    pub fn forget_session(&self, session: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|(_, s), _| *s != Some(session));
        }
    }
}

/// The verdict a holder record gives for a token of `username`.
pub fn judge(username: &str, record: &HolderRecord) -> Verdict {
    if !record.user_active {
        return Verdict::UnknownUser;
    }
    match &record.session {
        None => Verdict::Valid,
        Some(SessionRecord::Open { username: holder }) if holder == username => Verdict::Valid,
        Some(_) => Verdict::SessionEnded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user_active: bool, session: Option<SessionRecord>) -> HolderRecord {
        HolderRecord {
            user_active,
            session,
        }
    }

    #[test]
    fn a_token_is_valid_only_for_an_active_user_in_their_own_open_session() {
        let open = |u: &str| Some(SessionRecord::Open { username: u.into() });
        assert_eq!(judge("ann", &record(true, open("ann"))), Verdict::Valid);
        assert_eq!(judge("ann", &record(true, None)), Verdict::Valid);
        assert_eq!(
            judge("ann", &record(false, open("ann"))),
            Verdict::UnknownUser
        );
        assert_eq!(
            judge("ann", &record(true, open("bob"))),
            Verdict::SessionEnded
        );
        assert_eq!(
            judge("ann", &record(true, Some(SessionRecord::Ended))),
            Verdict::SessionEnded
        );
        assert_eq!(
            judge("ann", &record(true, Some(SessionRecord::Unknown))),
            Verdict::SessionEnded
        );
    }

    #[test]
    fn verdicts_expire_and_an_ended_session_is_forgotten_at_once() {
        let s = Uuid::from_u128(1);
        let cache = VerdictCache::new(Duration::from_secs(60));
        cache.put("ann", Some(s), Verdict::Valid);
        cache.put("ann", None, Verdict::Valid);
        assert_eq!(cache.get("ann", Some(s)), Some(Verdict::Valid));
        cache.forget_session(s);
        assert_eq!(cache.get("ann", Some(s)), None);
        assert_eq!(cache.get("ann", None), Some(Verdict::Valid));
        let none = VerdictCache::new(Duration::ZERO);
        none.put("ann", None, Verdict::Valid);
        assert_eq!(none.get("ann", None), None);
    }
}
