//! `sock_ops`, attached to a cgroup v2 (by default the root, so every socket on the host).
//!
//! When: the kernel calls it at a few points of each TCP connection's life (connection set-up,
//! RTO and RTT callbacks are off); drainer acts only on PASSIVE_ESTABLISHED, the moment a
//! server-side connection completes its handshake — before the server has accepted it.
//! Sees: the socket's addresses, ports, cookie and network namespace; not packet data.
//! It never asks for per-packet callbacks, so an established flow costs nothing here.
//! Cost: per new connection, a namespace and a port check; for a guarded port, one hash insert.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::tracking::{port_slot, target_netns_cookie, track};

#[sock_ops]
pub fn track_established(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 1;
    }
    let raw = ctx.ops.cast::<c_void>();
    // SAFETY: helpers called with the program's own context.
    if unsafe { bpf_get_netns_cookie(raw) } != target_netns_cookie() {
        return 1;
    }
    let Some(slot) = port_slot(ctx.local_port() as u16) else {
        return 1;
    };
    // SAFETY: as above.
    let (cookie, now) = unsafe { (bpf_get_socket_cookie(raw), bpf_ktime_get_boot_ns()) };
    track(cookie, slot, now);
    1
}
