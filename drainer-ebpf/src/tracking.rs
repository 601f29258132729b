//! The live count and the rules that keep it exact, shared by the programs that see connections
//! open and close.
//!
//! The programs that call this are attached only from a drain's start. A connection established
//! during the drain costs no memory: its passive handshake completing
//! adds one to its port's `opened` counter and its reaching TCP_CLOSE one to `closed`. Only two
//! kinds of socket need a record, because their close must not be counted like the others:
//!
//! - connections that already existed when the drain started, recorded by the drain-start sweep in
//!   the [`seeded`](crate::seeded) table. Until the sweep has finished (`SWITCH_SEEDED`), a close that
//!   finds no record is one of those the sweep never reached, and is not counted; connections
//!   established meanwhile go into the table too, so the sweep cannot count them twice.
//! - outbound connections from a guarded port (a client bound to it, or a simultaneous open), held
//!   in [`OUTBOUND`] so that their close is not taken for a server connection's.
//!
//! A restart follows both generations of the server on one port (`SWITCH_RESTART`), each in
//! counters of its own: the replaced generation's connections in `replaced_opened` and
//! `replaced_closed`, the serving generation's in `opened` and `closed` as in a drain. One event is
//! one add to one counter, so neither count can read low while the other's add is under way. The
//! replaced generation's connections are the table's: the sweep records every connection of the port, as
//! every one so far came through the replaced generation's listeners; after it, a new connection
//! is recorded only if it came through them too ([`generations`](crate::generations)), which
//! happens only for handshakes under way when the next generation took over.
//!
//! Every counter change is made by whichever program succeeded at the record operation (insert or
//! remove), so two programs seeing the same socket count it once. While both tables are empty —
//! once the connections found at the drain's start have closed, if nothing connects out from the
//! guarded ports — no socket cookie is even asked for.
//!
//! The counters are per CPU, so connections opening and closing on different CPUs never contend
//! for one cache line; `drainer_common::PortCounters` says how userspace sums them exactly.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use drainer_common::{
    Event, EventKind, LIVE_TCP_STATES, MAX_PORTS, PortCounters, SWITCH_COUNT, SWITCH_RESTART,
    SWITCH_SEEDED,
};

use crate::{
    counter, generations,
    seeded::{self, Insert},
    sock::Socket,
};

/// Per-port counters of each CPU, indexed by slot; only this side writes them. Adds are atomic:
/// another program (or this one, from an interrupt) can update the same CPU's copy mid-way.
#[map]
pub static PORT_COUNTERS: PerCpuArray<PortCounters> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

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

/// Count changes, so userspace wakes on the change rather than polling, and any connection that
/// could not be recorded, so it learns at once that the count is unknown. The programs run only
/// while draining, so every event is a drain's.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const EEXIST: i32 = 17;

/// Whether a connection in TCP state `state` is live: one in these states is counted (a server-side
/// connection on a guarded port), and the sweep records it as if drainer had seen it established.
pub fn live(state: u8) -> bool {
    LIVE_TCP_STATES.contains(&state)
}

fn switch(index: u32) -> bool {
    SWITCHES.get(index).is_some_and(|v| *v != 0)
}

fn seeded() -> bool {
    switch(SWITCH_SEEDED)
}

fn restarting() -> bool {
    switch(SWITCH_RESTART)
}

fn bump(field: impl FnOnce(*mut PortCounters) -> *mut u64, slot: u32) {
    if let Some(counters) = PORT_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: `field` points into the map value `counters`.
        unsafe { counter::add(field(counters), 1) };
    }
}

pub fn count_refused(slot: u32) {
    // SAFETY: the pointer is a valid map value pointer; only a field address is taken.
    bump(|c| unsafe { &raw mut (*c).refused }, slot);
}

fn count_untracked(slot: u32) {
    // SAFETY: as in `count_refused`.
    bump(|c| unsafe { &raw mut (*c).untracked }, slot);
    // The operator learns of it when it happens, not at the deadline.
    announce(slot, EventKind::Untracked);
}

fn count_outbound_unrecorded(slot: u32) {
    // SAFETY: as in `count_refused`.
    bump(|c| unsafe { &raw mut (*c).outbound_unrecorded }, slot);
    announce(slot, EventKind::OutboundUnrecorded);
}

fn count_opened(slot: u32) {
    // SAFETY: as in `count_refused`.
    bump(|c| unsafe { &raw mut (*c).opened }, slot);
    notify(slot, EventKind::Opened);
}

fn count_closed(slot: u32) {
    // SAFETY: as in `count_refused`.
    bump(|c| unsafe { &raw mut (*c).closed }, slot);
    notify(slot, EventKind::Closed);
}

fn count_replaced_opened(slot: u32) {
    // SAFETY: as in `count_refused`.
    bump(|c| unsafe { &raw mut (*c).replaced_opened }, slot);
    notify(slot, EventKind::Opened);
}

fn count_replaced_closed(slot: u32) {
    // SAFETY: as in `count_refused`.
    bump(|c| unsafe { &raw mut (*c).replaced_closed }, slot);
    notify(slot, EventKind::Closed);
}

/// Records a connection the sweep found, or one established before it finished, or, during a
/// restart, one the replaced generation's listeners handed over since: during a restart, every
/// connection in the table is the replaced generation's.
fn record_seeded(cookie: u64, slot: u32) {
    match seeded::insert(cookie) {
        Insert::Added if restarting() => count_replaced_opened(slot),
        Insert::Added => count_opened(slot),
        Insert::Present => {}
        Insert::Full => count_untracked(slot),
    }
}

/// A connection the drain-start sweep found established.
pub fn found_established(sk: Socket, slot: u32) {
    let cookie = sk.cookie();
    if !is_outbound(cookie) {
        record_seeded(cookie, slot);
    }
}

/// A server-side connection completed its handshake.
pub fn passive_established(sk: Socket, slot: u32) {
    if restarting() && seeded() && generations::from_replaced_listener(sk) {
        // A handshake the replaced generation had begun: its connection, recorded so its close
        // is told apart too.
        let cookie = sk.cookie();
        if !is_outbound(cookie) {
            record_seeded(cookie, slot);
        }
        return;
    }
    if seeded() && !any_outbound() {
        count_opened(slot);
        return;
    }
    let cookie = sk.cookie();
    if is_outbound(cookie) {
        // The second half of a simultaneous open.
        return;
    }
    if seeded() {
        count_opened(slot);
    } else {
        record_seeded(cookie, slot);
    }
}

/// A socket on a guarded port became connected other than by accepting a handshake.
pub fn outbound(sk: Socket, slot: u32) {
    match OUTBOUND.insert(&sk.cookie(), &0, u64::from(BPF_NOEXIST)) {
        Ok(()) => count_outbound(1),
        Err(err) if err == -EEXIST => {}
        Err(_) => count_outbound_unrecorded(slot),
    }
}

fn count_outbound(delta: i64) {
    counter::add_entries(&OUTBOUND_ENTRIES, delta);
}

fn any_outbound() -> bool {
    counter::any_entries(&OUTBOUND_ENTRIES)
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
pub fn closed(sk: Socket, slot: u32, was_live: bool) {
    if seeded::any() || any_outbound() {
        let cookie = sk.cookie();
        if seeded::remove(cookie) {
            if restarting() {
                count_replaced_closed(slot);
            } else {
                count_closed(slot);
            }
            return;
        }
        if forget_outbound(cookie) {
            return;
        }
    }
    if was_live && seeded() {
        count_closed(slot);
    }
}

/// A socket of the guarded namespace began listening on the port a restart's next generation was
/// given.
pub fn next_generation_listening() {
    announce(0, EventKind::Listening);
}

/// Announces a count change once the sweep has finished. Userspace reads the counters only after
/// it, so a million connections swept need no million events, nor the wake-ups they would cause.
fn notify(slot: u32, kind: EventKind) {
    if seeded() {
        announce(slot, kind);
    }
}

fn announce(slot: u32, kind: EventKind) {
    // A full ring only delays userspace until its next read: the counters stay exact.
    let _ = EVENTS.output(
        &Event {
            port_slot: slot,
            kind: kind as u32,
        },
        0,
    );
}
