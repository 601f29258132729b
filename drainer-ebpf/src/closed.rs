//! BTF tracepoint `inet_sock_set_state`, global.
//!
//! When: the kernel fires it on every TCP state change of every socket on the host, in every
//! namespace, including sockets that existed before drainer started.
//! Sees: the `struct sock` and the old and new states.
//! drainer acts on TCP_CLOSE only: a socket reaches it when the connection is over for the server —
//! reset, both FINs exchanged, or an orphaned socket leaving for TIME_WAIT — and never leaves it.
//! Cost: a compare per state change; at TCP_CLOSE, a cookie read and one hash lookup.
use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::tracking::forget;

const TCP_CLOSE: i32 = 7;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn forget_closed(ctx: BtfTracePointContext) -> u32 {
    let new_state: i32 = ctx.arg(2);
    if new_state != TCP_CLOSE {
        return 0;
    }
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's BTF-typed socket argument.
    forget(unsafe { bpf_get_socket_cookie(sk) });
    0
}
