//! What drainer's parts share: the records its kernel-side programs and its userspace exchange
//! through BPF maps (here, `no_std`), and, with the `protocol` feature, the daemon's request
//! parsers: the control socket's protocol ([`protocol`]), which the daemon, its clients, the fuzz
//! targets and xtask all use, and the HTTP listener's request heads ([`http`]).
//!
//! Every map record is `#[repr(C)]` with explicit padding so both sides agree on the layout.
#![cfg_attr(not(feature = "protocol"), no_std)]

#[cfg(feature = "protocol")]
pub mod http;
#[cfg(feature = "protocol")]
pub mod protocol;

/// How many distinct ports one drainer instance can guard.
pub const MAX_PORTS: u32 = 64;

/// Indices in the `SWITCHES` array, each 0 or 1, written by userspace.
/// Seeded: the drain-start sweep of existing connections has finished.
pub const SWITCH_SEEDED: u32 = 0;
/// Restart: the drain follows one generation of the server, the one a restart replaces: the
/// connections the sweep found, and those its listeners hand over afterwards (marked by
/// `LISTENER_TAGS`), not the next generation's, which share the port.
pub const SWITCH_RESTART: u32 = 1;
pub const SWITCH_COUNT: u32 = 2;

/// Entries of the `STEER_TO` socket map: for each port slot, the listener IPv4 connections are
/// handed to, then the one IPv6 connections are.
pub const STEER_ENTRIES: u32 = 2 * MAX_PORTS;

/// The `STEER_TO` entry of a port slot's connections of one address family.
pub const fn steer_entry(slot: u32, ipv6: bool) -> u32 {
    2 * slot + ipv6 as u32
}

/// Slots of the `SEEDED` table that hold no cookie: never used, and emptied by a close. Every
/// other value is the cookie of a connection the table holds.
pub const SEEDED_EMPTY: u64 = 0;
pub const SEEDED_REMOVED: u64 = u64::MAX;

/// The `TCP_LISTEN` state: a listener's `listen()` has completed.
pub const TCP_LISTEN: u8 = 10;

/// `TCP_*` states from include/net/tcp_states.h that the programs tell apart.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_CLOSE: u8 = 7;

/// The TCP states (`TCP_*` in include/net/tcp_states.h) a full socket passes through between
/// ESTABLISHED and CLOSE: a server-side connection in any of them is live — counted by the
/// programs, and looked up by userspace for peers.
pub const LIVE_TCP_STATES: [u8; 6] = [
    1,  // ESTABLISHED
    4,  // FIN_WAIT1
    5,  // FIN_WAIT2
    8,  // CLOSE_WAIT
    9,  // LAST_ACK
    11, // CLOSING
];

/// One CPU's counters for one port, written only by the kernel side (atomic adds), read by
/// userspace. Each counter only grows while the programs are attached; before each drain's sweep,
/// with nothing attached, userspace zeroes every field but `refused`.
///
/// The live count is the sum over CPUs of `opened` minus that of `closed`. Userspace reads every
/// CPU's `closed` first and every CPU's `opened` after: a connection's close happens after its
/// open, so each close read has its open read too, and a difference of zero means that, at the
/// moment between the two reads, no connection was live. Read the other way round, a connection
/// opening on one CPU and closing on another between the reads could hide a live one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Server-side connections on this port that completed their handshake (or were found
    /// established by the drain-start sweep).
    pub opened: u64,
    /// Of those, the ones that reached TCP_CLOSE.
    pub closed: u64,
    /// Connection attempts answered with a reset because the port is draining.
    pub refused: u64,
    /// Connections whose bookkeeping failed (a full map). Any non-zero value means the live count can no
    /// longer be trusted in either direction, and the count is reported as unknown.
    pub untracked: u64,
    /// Outbound connections from this port that the `OUTBOUND` table had no room for. Their close
    /// will look like a server connection's, so the counters can no longer be trusted; the socket
    /// table, which tells them apart by owner, counts instead.
    pub outbound_unrecorded: u64,
    /// Of `opened`, the connections of a restarted server's replaced generation (found by the
    /// sweep, or handed over by its listeners since); 0 outside restarts.
    pub replaced_opened: u64,
    /// Of those, the ones that reached TCP_CLOSE.
    pub replaced_closed: u64,
}

/// Why an event was emitted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Opened = 1,
    Closed = 2,
    /// A connection could not be recorded: the count has just become unknown.
    Untracked = 3,
    /// An outbound connection could not be recorded: the socket table counts from now on.
    OutboundUnrecorded = 4,
    /// A socket of the guarded namespace began listening on the port `LISTEN_WATCH` names: the
    /// next generation of a restarted server may be ready.
    Listening = 5,
}

/// Sent through the `EVENTS` ring buffer while draining, one per change of a port's live count,
/// and at any time when a connection could not be recorded. The count itself is read from
/// `PORT_COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub port_slot: u32,
    /// An [`EventKind`] discriminant.
    pub kind: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding holes left implicit.
    unsafe impl aya::Pod for super::PortCounters {}
    unsafe impl aya::Pod for super::Event {}
}
