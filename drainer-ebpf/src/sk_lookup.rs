//! `sk_lookup`, attached to the guarded network namespace while drainer refuses connections (from
//! the drain's start, or the end of its accept window, until it exits or the drain is resumed).
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
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::debug;

use crate::{ports, tracking::count_refused};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

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
