//! `iter/tcp`, run once at each drain start from inside the guarded network namespace.
//!
//! When: each read of the iterator visits every TCP socket of the namespace the iterator was
//! created in: full sockets, request sockets and TIME_WAIT sockets. The kernel holds each full
//! socket's lock while the program runs, so a socket cannot close half-way through being recorded;
//! one that closes afterwards is seen by [`inet_sock_set_state`](crate::inet_sock_set_state),
//! like any other.
//! Sees: `struct sock_common`. Only its first 20 bytes are read — addresses, ports, family and
//! state — whose layout has not changed since Linux 3.x; nothing else is assumed about the struct.
//! Cost: runs only when a drain starts; no per-packet cost.
use crate::{
    ports,
    sock::Socket,
    tracking::{found_established, live},
};

/// `struct bpf_iter__tcp`.
#[repr(C)]
pub struct TcpIterContext {
    meta: *const core::ffi::c_void,
    sk_common: *mut SockCommonHead,
    uid: u32,
}

/// The stable head of `struct sock_common`.
#[repr(C)]
pub struct SockCommonHead {
    daddr: u32,
    rcv_saddr: u32,
    hash: u32,
    dport: u16,
    num: u16,
    family: u16,
    state: u8,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn seed_established(ctx: *mut TcpIterContext) -> i32 {
    // SAFETY: the kernel passes a valid context; `sk_common` is null at the end of the walk.
    let sk = unsafe { (*ctx).sk_common };
    if sk.is_null() {
        return 0;
    }
    // SAFETY: non-null BTF pointer to a sock_common; the fields read are in its stable head.
    let (state, port) = unsafe { ((*sk).state, (*sk).num) };
    if !live(state) {
        return 0;
    }
    let Some(slot) = ports::slot(port) else {
        return 0;
    };
    // SAFETY: `sk` is known to the verifier as sock_common, which holds the cookie.
    found_established(unsafe { Socket::new(sk.cast()) }, slot);
    0
}
