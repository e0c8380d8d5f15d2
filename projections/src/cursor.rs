//! The order in which events are published and projected.

use serde::{Deserialize, Serialize};

/// A place in the event log: the committing transaction id, then the position drawn at insert.
///
/// Positions are drawn at INSERT time, so transactions may commit out of position order. Reading
/// in `(txid, position)` order, and only events whose transaction id is below the oldest still
/// running transaction, means that nothing can later appear *before* a cursor already passed:
/// this is what makes the relay and the projectors gap-safe.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// The committing transaction id (`xid8`, epoch included).
    pub txid: i64,
    /// The event's global position.
    pub position: i64,
}

impl Cursor {
    /// The cursor before any event.
    pub const START: Cursor = Cursor {
        txid: 0,
        position: 0,
    };
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txid, self.position)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, p) = s
            .split_once(':')
            .ok_or_else(|| format!("bad cursor '{s}'"))?;
        Ok(Cursor {
            txid: t.parse().map_err(|_| format!("bad cursor txid '{t}'"))?,
            position: p
                .parse()
                .map_err(|_| format!("bad cursor position '{p}'"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_order_by_transaction_first_then_position() {
        let late_position_early_tx = Cursor {
            txid: 10,
            position: 99,
        };
        let early_position_late_tx = Cursor {
            txid: 11,
            position: 1,
        };
        assert!(late_position_early_tx < early_position_late_tx);
        assert_eq!("11:1".parse::<Cursor>().unwrap(), early_position_late_tx);
        assert_eq!(early_position_late_tx.to_string(), "11:1");
        assert!("11".parse::<Cursor>().is_err());
    }
}
