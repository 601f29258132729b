//! The live count, in one place: while serving, the socket table, read when asked; while draining,
//! the programs' per-CPU counters, summed in the order that keeps a zero a real zero, as long as
//! they can be trusted (no connection unrecorded, no state change missed), and the socket table
//! again once the tracepoint has missed a change.
use std::{
    cell::Cell,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{programs::Programs, socket_table::SocketTable};

/// How often the socket table is re-read while draining, once it has replaced the counters.
const TABLE_RECHECK: Duration = Duration::from_millis(500);

/// The connection count the drain decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub live: i64,
    /// False when a connection could not be recorded (the map was full): `live` is then
    /// unknown, too high or too low, and a zero proves nothing.
    pub exact: bool,
}

/// A port's counters summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortCount {
    pub port: u16,
    /// Established server-side connections that have not reached TCP_CLOSE.
    pub live: i64,
    /// Server-side connections established since the drain started, or found by its sweep; 0
    /// while serving.
    pub opened: u64,
    pub refused: u64,
    pub untracked: u64,
    /// A restart's replaced generation's connections on this port, not in `live`; 0 otherwise.
    pub replaced_live: i64,
}

/// Every guarded port's counters, read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    /// In the order the ports were given.
    pub ports: Vec<PortCount>,
    /// TCP state changes the kernel did not pass to the tracepoint program because that program
    /// was already running on the same CPU (a state change in softirq nested in one in process
    /// context). Any of them may have been an open or a close.
    pub missed_state_changes: u64,
    /// Outbound connections from a guarded port the kernel side had no room to record, whose
    /// close the counters will take for a server connection's.
    pub outbound_unrecorded: u64,
    /// The live counts were taken from the socket table ([`Counts::recount`]).
    pub from_socket_table: bool,
}

impl Counts {
    /// The sum over ports. Inexact once any connection went unrecorded, or while the counts
    /// still come from counters that can no longer be trusted.
    pub fn total(&self) -> Count {
        Count {
            live: self.ports.iter().map(|c| c.live).sum(),
            exact: self.untracked() == 0 && (self.counters_trusted() || self.from_socket_table),
        }
    }

    /// The count of a restart's replaced generation: `live` counts the serving one's alone. The
    /// socket table cannot tell the generations apart: when it counts, this is unknown.
    pub fn replaced(&self) -> Count {
        Count {
            live: self.ports.iter().map(|c| c.replaced_live).sum(),
            exact: self.untracked() == 0 && self.counters_trusted() && !self.from_socket_table,
        }
    }

    /// No state change went unseen, and no outbound connection unrecorded: the counters hold.
    pub fn counters_trusted(&self) -> bool {
        self.missed_state_changes == 0 && self.outbound_unrecorded == 0
    }

    /// Replaces each port's live count by the number of live sockets the socket table lists on
    /// it, one [`Counts::recount_socket`] per socket after this. The table shows connections
    /// made *from* a guarded port by the listener's owner too, so it may count high, never low.
    pub fn recount_start(&mut self) {
        for port in &mut self.ports {
            port.live = 0;
        }
        self.from_socket_table = true;
    }

    /// One live socket the socket table lists on `local_port`.
    pub fn recount_socket(&mut self, local_port: u16) {
        if let Some(port) = self.ports.iter_mut().find(|p| p.port == local_port) {
            port.live += 1;
        }
    }

    pub fn opened(&self) -> u64 {
        self.ports.iter().map(|c| c.opened).sum()
    }

    pub fn untracked(&self) -> u64 {
        self.ports.iter().map(|c| c.untracked).sum()
    }

    pub fn refused(&self) -> u64 {
        self.ports.iter().map(|c| c.refused).sum()
    }
}

/// Reads the count: from the counters while they can be trusted, from the socket table after.
pub(super) struct Counter {
    table: SocketTable,
    /// When the socket table last gave the count, once it has replaced the counters.
    table_read_at: Cell<Option<Instant>>,
}

impl Counter {
    pub(super) fn new(table: SocketTable) -> Self {
        Self {
            table,
            table_read_at: Cell::new(None),
        }
    }

    /// A new drain: its counters start afresh.
    pub(super) fn restart(&self) {
        self.table_read_at.set(None);
    }

    pub(super) fn table(&self) -> &SocketTable {
        &self.table
    }

    /// While serving nothing follows connections, and the socket table is the count. Once the
    /// tracepoint has missed a state change the counters may be off by any amount, in either
    /// direction, for good; the socket table is then the count too — a dump per read.
    pub(super) fn read(&self, programs: &Programs) -> Result<Counts> {
        let mut counts = programs.counters()?;
        if !programs.tracking() {
            self.recount(&mut counts, programs.ports())?;
            return Ok(counts);
        }
        if !counts.counters_trusted() && counts.untracked() == 0 {
            self.recount(&mut counts, programs.ports())?;
            self.table_read_at.set(Some(Instant::now()));
        }
        Ok(counts)
    }

    /// Counts from the socket table, streamed: a million sockets cost one buffer, not a list. (A
    /// socket the dump meets twice, as the table changes between its parts, counts twice — high,
    /// and put right by the next read.)
    ///
    /// An accepted connection belongs to its listener's owner, so on a port with a listener a
    /// socket owned by anyone else is a connection made *from* the port — by another user, who
    /// must not be able to hold a drain with them. A port whose listeners have all closed keeps
    /// every socket: nothing then tells them apart, and high is safe.
    fn recount(&self, counts: &mut Counts, ports: &[u16]) -> Result<()> {
        let owners = self.table.listener_owners(ports)?;
        counts.recount_start();
        self.table.for_each(ports, |_, socket| {
            let port_owners = owners.iter().filter(|(port, _)| *port == socket.local_port);
            let mut port_owners = port_owners.map(|&(_, uid)| uid).peekable();
            if port_owners.peek().is_none() || port_owners.any(|uid| uid == socket.uid) {
                counts.recount_socket(socket.local_port);
            }
        })
    }

    /// When the count must be re-read although nothing announced a change: a close the
    /// tracepoint missed announces nothing, so the socket table is re-read every
    /// [`TABLE_RECHECK`] once it counts.
    pub(super) fn recheck_at(&self) -> Option<Instant> {
        self.table_read_at.get().map(|at| at + TABLE_RECHECK)
    }
}

/// The `recursion_misses` line of a BPF program's fdinfo.
pub(super) fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(missed_state_changes: u64, untracked: u64) -> Counts {
        Counts {
            ports: [8000, 8443]
                .map(|port| PortCount {
                    port,
                    live: 5,
                    opened: 5,
                    refused: 0,
                    untracked,
                    replaced_live: 2,
                })
                .to_vec(),
            missed_state_changes,
            outbound_unrecorded: 0,
            from_socket_table: false,
        }
    }

    #[test]
    fn a_missed_state_change_leaves_the_counters_untrusted_until_the_socket_table_recounts() {
        assert!(counts(0, 0).total().exact);
        let mut missed = counts(1, 0);
        assert!(!missed.total().exact);
        missed.recount_start();
        for port in [8443, 9000, 8443] {
            missed.recount_socket(port);
        }
        assert_eq!(missed.ports[0].live, 0);
        assert_eq!(missed.ports[1].live, 2);
        assert_eq!(missed.total().live, 2);
        assert!(missed.total().exact);
    }

    #[test]
    fn a_restarts_replaced_generation_has_its_own_count_which_the_socket_table_cannot_give() {
        let counts = counts(0, 0);
        assert_eq!(
            counts.total(),
            Count {
                live: 10,
                exact: true
            }
        );
        assert_eq!(
            counts.replaced(),
            Count {
                live: 4,
                exact: true
            }
        );
        let mut recounted = counts;
        recounted.recount_start();
        assert!(!recounted.replaced().exact);
    }

    #[test]
    fn an_unrecorded_connection_leaves_the_count_unknown_even_after_a_recount() {
        let mut full = counts(1, 1);
        full.recount_start();
        assert!(!full.total().exact);
    }

    #[test]
    fn recursion_misses_are_read_from_a_programs_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_cnt:\t0\n\
                      recursion_misses:\t3\nverified_insns:\t571\n";
        assert_eq!(recursion_misses(fdinfo), Some(3));
        assert_eq!(recursion_misses("prog_type:\t26\n"), None);
    }
}
