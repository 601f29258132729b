//! The records drainer's kernel-side programs and its userspace share through BPF maps.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree on the layout.
#![no_std]

/// How many distinct ports one drainer instance can guard.
pub const MAX_PORTS: u32 = 64;

/// Default capacity of the live-connection map.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1 << 20;

/// Index of the drain switch in the `SWITCHES` array: 0 serving, 1 draining.
pub const SWITCH_DRAINING: u32 = 0;
pub const SWITCH_COUNT: u32 = 1;

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

/// Per-port counters, written only by the kernel side (atomic adds), read by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Established server-side connections on this port that have not reached TCP_CLOSE.
    pub live: i64,
    /// Connection attempts answered with a reset because the port is draining.
    pub refused: u64,
    /// Connections that could not be recorded because the connection map was full. Any non-zero
    /// value means `live` is a lower bound, not the truth.
    pub untracked: u64,
}

/// One tracked connection, keyed by its socket cookie in the `LIVE_CONNECTIONS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// CLOCK_BOOTTIME nanoseconds at which the connection became established, or 0 when it was
    /// already established before tracking started (its true age is unknown).
    pub established_ns: u64,
    /// Slot of the local port in `PORT_COUNTERS`.
    pub port_slot: u32,
    pub _pad: u32,
}

/// Why an event was emitted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Opened = 1,
    Closed = 2,
}

/// Sent through the `EVENTS` ring buffer while draining, one per change of a port's live count.
/// The count itself is read from `PORT_COUNTERS`, which is always exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub cookie: u64,
    pub port_slot: u32,
    /// An [`EventKind`] discriminant.
    pub kind: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), no padding holes left implicit.
    unsafe impl aya::Pod for super::PortCounters {}
    unsafe impl aya::Pod for super::Connection {}
    unsafe impl aya::Pod for super::Event {}
}
