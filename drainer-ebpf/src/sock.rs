//! Reading `struct sock` from a tracing program.
//!
//! The local port sits in the head of `struct sock_common`, whose layout has not changed since
//! Linux 3.x. Other fields move between kernel builds, so the loader finds their offsets in the
//! running kernel's BTF. Fields of `struct sock` are loaded directly, checked by the verifier
//! against the kernel's BTF; `inet_sport` lies beyond `struct sock`, in the `struct inet_sock`
//! that contains it, where the verifier cannot follow, so it is read with
//! `bpf_probe_read_kernel`.
use aya_ebpf::helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel};

use crate::globals;

/// `skc_num`: the local port in host byte order.
const SKC_NUM_OFFSET: usize = 14;

/// Cookie of the network namespace drainer guards; set by the loader.
#[unsafe(no_mangle)]
static TARGET_NETNS_COOKIE: u64 = 0;
/// Offset of `sock.__sk_common.skc_net.net` (a `struct net *`); set by the loader.
#[unsafe(no_mangle)]
static SOCK_NET_OFFSET: u64 = 0;
/// Offset of `net.net_cookie`; set by the loader.
#[unsafe(no_mangle)]
static NET_COOKIE_OFFSET: u64 = 0;
/// Offset of `inet_sock.inet_sport` (network byte order); set by the loader.
#[unsafe(no_mangle)]
static INET_SPORT_OFFSET: u64 = 0;

/// The socket's local port.
///
/// # Safety
/// `sk` must be a BTF-typed `struct sock *` argument of a tracing program.
pub unsafe fn local_port(sk: *const u8) -> u16 {
    // SAFETY: the caller's promise; the verifier checks the access against the kernel's BTF.
    unsafe { *sk.add(SKC_NUM_OFFSET).cast::<u16>() }
}

/// The port the socket was bound to, still readable after the socket released it at TCP_CLOSE;
/// 0 if the read fails.
pub fn bound_port(sk: *const u8) -> u16 {
    // SAFETY: a checked kernel read; a fault yields an error, not a crash.
    let port = unsafe {
        bpf_probe_read_kernel(
            sk.wrapping_add(globals::read(&INET_SPORT_OFFSET) as usize)
                .cast::<u16>(),
        )
    };
    port.map_or(0, u16::from_be)
}

/// Whether the socket belongs to the guarded namespace.
///
/// # Safety
/// As for [`local_port`].
pub unsafe fn in_target(sk: *const u8) -> bool {
    // SAFETY: the caller's promise. The offsets are read-only data, constants to the verifier,
    // which checks both loads against the kernel's BTF (`sock.skc_net.net` is a `struct net *`).
    let cookie = unsafe {
        let net = *sk
            .add(globals::read(&SOCK_NET_OFFSET) as usize)
            .cast::<*const u8>();
        *net.add(globals::read(&NET_COOKIE_OFFSET) as usize)
            .cast::<u64>()
    };
    cookie == globals::read(&TARGET_NETNS_COOKIE)
}

/// A socket a program was handed, named by its cookie only when a record needs it: the cookie is
/// a helper call, and most connections never need one.
#[derive(Clone, Copy)]
pub struct Socket(*mut core::ffi::c_void);

impl Socket {
    /// # Safety
    /// `sk` must be a BTF-typed socket pointer the kernel passed to the program.
    pub unsafe fn new(sk: *mut core::ffi::c_void) -> Self {
        Self(sk)
    }

    pub fn cookie(self) -> u64 {
        // SAFETY: `new`'s promise.
        unsafe { bpf_get_socket_cookie(self.0) }
    }

    /// The pointer, for helpers that take the socket itself.
    pub fn as_ptr(self) -> *mut core::ffi::c_void {
        self.0
    }
}
