//! Which live connections are idle, from the TCP info the socket table reports: a connection is
//! idle for a duration when no payload went either way for that long and nothing waits in its
//! queues — unread, unacknowledged or unsent. Only a drain that releases on idleness asks.
use std::time::{Duration, Instant};

use super::socket_table::TableSocket;

/// How many of the connections still active a report names.
const ACTIVE_SHOWN: usize = 10;

/// The live connections measured against one idle duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idleness {
    pub idle_for: Duration,
    /// Connections idle for `idle_for` or longer.
    pub idle: usize,
    /// A few of the connections that are not, least idle first.
    pub active: Vec<TableSocket>,
    /// All of those.
    pub active_count: usize,
    /// When the first of the active ones could count as idle, if nothing happens on it before:
    /// a connection falling silent announces nothing, so the caller looks again then.
    pub next_check: Option<Instant>,
}

impl Idleness {
    pub(super) fn new(idle_for: Duration) -> Self {
        Self {
            idle_for,
            idle: 0,
            active: Vec::new(),
            active_count: 0,
            next_check: None,
        }
    }

    /// Counts one live connection in, as seen at `now`.
    pub(super) fn add(&mut self, socket: TableSocket, now: Instant) {
        let quiet_for = match socket.idle {
            Some(idle) if !socket.queued => idle,
            // Data in a queue, or no TCP info: not idle, and no telling when it will be; at the
            // earliest once a whole idle duration has passed.
            _ => Duration::ZERO,
        };
        if quiet_for >= self.idle_for {
            self.idle += 1;
            return;
        }
        let idle_at = now + (self.idle_for - quiet_for);
        self.next_check = Some(self.next_check.map_or(idle_at, |at| at.min(idle_at)));
        self.active_count += 1;
        self.active.push(socket);
        self.active.sort_by_key(|s| s.idle);
        self.active.truncate(ACTIVE_SHOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(idle_ms: u64, queued: bool) -> TableSocket {
        TableSocket {
            local_port: 8000,
            uid: 0,
            peer: "127.0.0.1:40000".parse().unwrap(),
            idle: Some(Duration::from_millis(idle_ms)),
            queued,
        }
    }

    #[test]
    fn quiet_empty_connections_are_idle_and_the_next_check_is_the_first_to_fall_quiet() {
        let now = Instant::now();
        let mut idleness = Idleness::new(Duration::from_secs(3));
        idleness.add(socket(3_500, false), now);
        idleness.add(socket(2_000, false), now);
        idleness.add(socket(20, false), now);
        assert_eq!(idleness.idle, 1);
        assert_eq!(idleness.active_count, 2);
        assert_eq!(idleness.active[0].idle, Some(Duration::from_millis(20)));
        assert_eq!(idleness.next_check, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn queued_data_keeps_a_quiet_connection_active() {
        let now = Instant::now();
        let mut idleness = Idleness::new(Duration::from_secs(3));
        idleness.add(socket(60_000, true), now);
        assert_eq!(idleness.idle, 0);
        assert_eq!(idleness.next_check, Some(now + Duration::from_secs(3)));
    }
}
