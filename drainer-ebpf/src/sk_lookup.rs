//! `sk_lookup`, two programs on the guarded network namespace.
//!
//! `refuse_while_draining` is attached while drainer refuses connections (from the drain's start,
//! or the end of its accept window, until it exits or the drain is resumed).
//!
//! When: the kernel runs it when a packet finds no established socket and it is about to look up a
//! listening socket — for TCP, in practice, each SYN (and a SYN-cookie ACK). Established
//! connections and handshakes already under way never reach it, so refusing here cannot disturb
//! them.
//! Sees: the packet's addresses, ports and protocol; not the packet itself.
//! Returning `SK_DROP` fails the lookup, and TCP answers a lookup that found no socket with a reset:
//! the client's connect fails at once with ECONNREFUSED instead of retransmitting its SYN.
//! Cost: nothing while serving — the kernel takes its `sk_lookup` path only while a program is
//! attached; while refusing, a few compares per lookup in this namespace.
//!
//! `steer_to_next_generation` is attached while a restarted server's serving generation listens
//! on a port other than the public one: it hands each new connection for the public port to that
//! generation's listener, taken from [`STEER_TO`], whatever address and port the listener is
//! bound to. The connection keeps the public address and port as its local ones. With no
//! listener in the entry (none given, or it closed: the map does not keep a socket alive) the
//! usual lookup decides. With several programs attached, a socket one of them selects wins over
//! another's drop, so userspace empties the map when refusal starts. Cost, while attached: a few
//! compares, one map lookup and the assignment per new connection in this namespace.
use aya_ebpf::{
    macros::{map, sk_lookup},
    maps::SockMap,
    programs::SkLookupContext,
};
use aya_log_ebpf::debug;
use drainer_common::{STEER_ENTRIES, steer_entry};

use crate::{ports, tracking::count_refused};

const IPPROTO_TCP: u32 = 6;
const AF_INET6: u32 = 10;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

/// The serving generation's listeners, by port slot and address family
/// (`drainer_common::steer_entry`); written by userspace.
#[map]
pub static STEER_TO: SockMap = SockMap::with_max_entries(STEER_ENTRIES, 0);

#[sk_lookup]
pub fn refuse_while_draining(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid context.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let port = lookup.local_port as u16;
    let Some(slot) = ports::slot(port) else {
        return SK_PASS;
    };
    count_refused(slot);
    // A fixed target rather than this module's path: userspace compiles this statement in only
    // when `drainer::refuse` is enabled at debug level (`ebpf_log_level` in drainer's programs.rs).
    debug!(
        &ctx,
        target: "drainer::refuse",
        "refused a connection to draining port {}",
        port
    );
    SK_DROP
}

#[sk_lookup]
pub fn steer_to_next_generation(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid context.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let Some(slot) = ports::slot(lookup.local_port as u16) else {
        return SK_PASS;
    };
    // Reuseport is kept: a listener of a reuseport group hands the connection to its group.
    let _ = STEER_TO.redirect_sk_lookup(&ctx, steer_entry(slot, lookup.family == AF_INET6), 0);
    SK_PASS
}
