//! Maps and bookkeeping shared by the programs that add and remove tracked connections.
//!
//! A connection is tracked from the moment its cookie is inserted into [`LIVE_CONNECTIONS`] until
//! the cookie is deleted again. Insert and delete are the only operations that touch a port's
//! `live` counter, and each is counted only when the map operation itself succeeded, so a
//! connection seen twice (by `sock_ops` and by the seeding iterator) or closing while it is being
//! seeded is counted exactly once.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use drainer_common::{
    Connection, DEFAULT_MAX_CONNECTIONS, Event, EventKind, MAX_PORTS, PortCounters, SWITCH_COUNT,
    SWITCH_DRAINING,
};

/// Cookie of the network namespace drainer guards; set by the loader.
#[unsafe(no_mangle)]
static TARGET_NETNS_COOKIE: Global<u64> = Global::new(0);

/// Guarded port (host byte order) → its slot in [`PORT_COUNTERS`]. Written once by userspace
/// before any program is attached.
#[map]
pub static PORT_SLOTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Per-port counters, indexed by slot; only this side writes them, with atomic adds.
#[map]
pub static PORT_COUNTERS: Array<PortCounters> = Array::with_max_entries(MAX_PORTS, 0);

/// Switches userspace flips; see `drainer_common::SWITCH_*`.
#[map]
pub static SWITCHES: Array<u32> = Array::with_max_entries(SWITCH_COUNT, 0);

/// Socket cookie → connection. Entries are allocated on insert (`BPF_F_NO_PREALLOC`), so memory
/// follows the live count rather than the capacity; userspace may resize it before load.
#[map]
pub static LIVE_CONNECTIONS: HashMap<u64, Connection> = HashMap::with_max_entries(
    DEFAULT_MAX_CONNECTIONS,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

/// Count changes while draining, so userspace wakes on the change rather than polling.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const EEXIST: i32 = 17;

pub fn target_netns_cookie() -> u64 {
    TARGET_NETNS_COOKIE.load()
}

pub fn port_slot(port: u16) -> Option<u32> {
    // SAFETY: the value is a plain u32 copied out before the map can change.
    unsafe { PORT_SLOTS.get(&port).copied() }
}

pub fn draining() -> bool {
    SWITCHES.get(SWITCH_DRAINING).is_some_and(|v| *v != 0)
}

pub fn counters(slot: u32) -> Option<*mut PortCounters> {
    PORT_COUNTERS.get_ptr_mut(slot)
}

// The old value is not used: a fetching add needs BPF CPU v3, and userspace reads the counter
// itself when an event wakes it.
fn add(counter: *mut i64, delta: i64) {
    // SAFETY: `counter` points into a map value, which stays valid for the program's run.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(counter, delta) };
}

fn bump(counter: *mut u64) {
    // SAFETY: as in `add`.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

pub fn count_refused(slot: u32) {
    if let Some(c) = counters(slot) {
        // SAFETY: `c` is a valid map value pointer.
        bump(unsafe { &raw mut (*c).refused });
    }
}

/// Starts tracking a connection unless it is tracked already.
pub fn track(cookie: u64, slot: u32, established_ns: u64) {
    let Some(c) = counters(slot) else { return };
    let connection = Connection {
        established_ns,
        port_slot: slot,
        _pad: 0,
    };
    match LIVE_CONNECTIONS.insert(&cookie, &connection, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            // SAFETY: `c` is a valid map value pointer.
            add(unsafe { &raw mut (*c).live }, 1);
            notify(cookie, slot, EventKind::Opened);
        }
        Err(err) if err == -EEXIST => {}
        // SAFETY: `c` is a valid map value pointer.
        Err(_) => bump(unsafe { &raw mut (*c).untracked }),
    }
}

/// Stops tracking a connection if it was tracked.
pub fn forget(cookie: u64) {
    // SAFETY: the value is copied out before the delete below.
    let Some(slot) = (unsafe { LIVE_CONNECTIONS.get(&cookie) }).map(|c| c.port_slot) else {
        return;
    };
    if LIVE_CONNECTIONS.remove(&cookie).is_err() {
        // Another CPU forgot it first and has counted it.
        return;
    }
    let Some(c) = counters(slot) else { return };
    // SAFETY: `c` is a valid map value pointer.
    add(unsafe { &raw mut (*c).live }, -1);
    notify(cookie, slot, EventKind::Closed);
}

fn notify(cookie: u64, slot: u32, kind: EventKind) {
    if !draining() {
        return;
    }
    // A full ring only delays userspace until its next read: the counters stay exact.
    let _ = EVENTS.output(
        &Event {
            cookie,
            port_slot: slot,
            kind: kind as u32,
        },
        0,
    );
}
