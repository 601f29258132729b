//! The live count and the rules that keep it exact, shared by the programs that see connections
//! open and close.
//!
//! A connection established while drainer runs costs no memory: its passive handshake completing
//! adds one to its port's `live` counter and its reaching TCP_CLOSE subtracts one. Only two kinds
//! of socket need a record, because their close must not be counted like the others:
//!
//! - connections that already existed when drainer started, recorded by the start-up sweep in the
//!   [`seeded`](crate::seeded) table. Until the sweep has finished (`SWITCH_SEEDED`), a close that
//!   finds no record is one of those the sweep never reached, and is not counted; connections
//!   established meanwhile go into the table too, so the sweep cannot count them twice. A socket
//!   the sweep finds already handed over to TIME_WAIT is recorded as not counted, because its
//!   own close can still arrive after the sweep.
//! - outbound connections from a guarded port (a client bound to it, or a simultaneous open), held
//!   in [`OUTBOUND`] so that their close is not taken for a server connection's.
//!
//! Every counter change is an atomic add made by whichever program succeeded at the record
//! operation (insert or remove), so two programs seeing the same socket count it once.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use drainer_common::{
    Event, EventKind, MAX_PORTS, PortCounters, SWITCH_COUNT, SWITCH_DRAINING, SWITCH_SEEDED,
};

use crate::seeded::{self, Insert};

/// Guarded port (host byte order) → its slot in [`PORT_COUNTERS`]. Written once by userspace
/// before any program is attached.
#[map]
pub static PORT_SLOTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

/// One bit per port number, set for the guarded ports: the test every TCP state change on the
/// host makes, so it is a plain load rather than a hash lookup. Set by the loader.
#[unsafe(no_mangle)]
static GUARDED_PORT_BITS: [u64; 1024] = [0; 1024];

/// Per-port counters, indexed by slot; only this side writes them, with atomic adds.
#[map]
pub static PORT_COUNTERS: Array<PortCounters> = Array::with_max_entries(MAX_PORTS, 0);

/// Switches userspace flips; see `drainer_common::SWITCH_*`.
#[map]
pub static SWITCHES: Array<u32> = Array::with_max_entries(SWITCH_COUNT, 0);

/// Socket cookies of outbound connections from a guarded port that are not yet closed. Rare:
/// a server's own sockets are never outbound.
#[map]
pub static OUTBOUND: HashMap<u64, u8> = HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// How many entries [`OUTBOUND`] holds, so the usual case — none — skips its hash lookups. An
/// entry is counted after it is inserted and before it is removed, both under the socket's lock,
/// so a socket that has an entry always sees a non-zero count.
#[map]
pub static OUTBOUND_ENTRIES: Array<i64> = Array::with_max_entries(1, 0);

/// Count changes while draining, so userspace wakes on the change rather than polling.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const EEXIST: i32 = 17;

/// Whether `port` is guarded, without touching a map.
pub fn guarded(port: u16) -> bool {
    let word = usize::from(port >> 6);
    // SAFETY: `word` < 1024; the static is read-only data the loader filled in.
    let bits =
        unsafe { core::ptr::read_volatile((&raw const GUARDED_PORT_BITS).cast::<u64>().add(word)) };
    bits & (1 << (port & 63)) != 0
}

pub fn port_slot(port: u16) -> Option<u32> {
    if !guarded(port) {
        return None;
    }
    // SAFETY: the value is a plain u32 copied out before the map can change.
    unsafe { PORT_SLOTS.get(&port).copied() }
}

fn switch(index: u32) -> bool {
    SWITCHES.get(index).is_some_and(|v| *v != 0)
}

pub fn draining() -> bool {
    switch(SWITCH_DRAINING)
}

fn seeded() -> bool {
    switch(SWITCH_SEEDED)
}

fn counters(slot: u32) -> Option<*mut PortCounters> {
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

fn count_untracked(slot: u32) {
    if let Some(c) = counters(slot) {
        // SAFETY: `c` is a valid map value pointer.
        bump(unsafe { &raw mut (*c).untracked });
    }
}

fn change_live(slot: u32, delta: i64, kind: EventKind) {
    let Some(c) = counters(slot) else { return };
    // SAFETY: `c` is a valid map value pointer.
    add(unsafe { &raw mut (*c).live }, delta);
    notify(slot, kind);
}

fn record_seeded(cookie: u64, slot: u32) {
    match seeded::insert(cookie) {
        Insert::Added => change_live(slot, 1, EventKind::Opened),
        Insert::Present => {}
        Insert::Full => count_untracked(slot),
    }
}

/// A connection the start-up sweep found established.
pub fn found_established(cookie: u64, slot: u32) {
    if !is_outbound(cookie) {
        record_seeded(cookie, slot);
    }
}

/// A socket the start-up sweep found handing over to a TIME_WAIT socket: the full socket's own
/// close may still be on its way, and is not to be counted.
pub fn found_closing(cookie: u64, slot: u32) {
    if let Insert::Full = seeded::insert(cookie | seeded::NOT_COUNTED) {
        count_untracked(slot);
    }
}

/// A server-side connection completed its handshake.
pub fn passive_established(cookie: u64, slot: u32) {
    if is_outbound(cookie) {
        // The second half of a simultaneous open.
        return;
    }
    if seeded() {
        change_live(slot, 1, EventKind::Opened);
    } else {
        record_seeded(cookie, slot);
    }
}

/// A socket on a guarded port became connected other than by accepting a handshake.
pub fn outbound(cookie: u64, slot: u32) {
    match OUTBOUND.insert(&cookie, &0, u64::from(BPF_NOEXIST)) {
        Ok(()) => count_outbound(1),
        Err(err) if err == -EEXIST => {}
        Err(_) => count_untracked(slot),
    }
}

fn count_outbound(delta: i64) {
    if let Some(entries) = OUTBOUND_ENTRIES.get_ptr_mut(0) {
        add(entries, delta);
    }
}

fn any_outbound() -> bool {
    OUTBOUND_ENTRIES.get(0).is_some_and(|n| *n != 0)
}

fn is_outbound(cookie: u64) -> bool {
    // SAFETY: only the presence of the entry is used.
    any_outbound() && unsafe { OUTBOUND.get(&cookie).is_some() }
}

fn forget_outbound(cookie: u64) -> bool {
    let removed = any_outbound() && OUTBOUND.remove(&cookie).is_ok();
    if removed {
        count_outbound(-1);
    }
    removed
}

/// A socket on a guarded port reached TCP_CLOSE; `was_live` tells whether it came from one of the
/// live states (rather than from a handshake that never completed).
pub fn closed(cookie: u64, slot: u32, was_live: bool) {
    match seeded::remove(cookie) {
        Some(true) => change_live(slot, -1, EventKind::Closed),
        Some(false) => {}
        None => {
            let outbound = forget_outbound(cookie);
            if was_live && !outbound && seeded() {
                change_live(slot, -1, EventKind::Closed);
            }
        }
    }
}

fn notify(slot: u32, kind: EventKind) {
    if !draining() {
        return;
    }
    // A full ring only delays userspace until its next read: the counters stay exact.
    let _ = EVENTS.output(
        &Event {
            port_slot: slot,
            kind: kind as u32,
        },
        0,
    );
}
