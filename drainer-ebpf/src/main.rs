//! drainer's kernel-side programs, one module per kernel hook:
//!
//! - [`refuse`]: `sk_lookup`, answers new connections to a draining port with a reset;
//! - [`established`]: `sock_ops`, records each passive connection as it becomes established;
//! - [`closed`]: BTF tracepoint `inet_sock_set_state`, forgets a recorded connection at TCP_CLOSE;
//! - [`seed`]: `iter/tcp`, records the connections that were established before drainer started.
//!
//! [`tracking`] holds the maps and the bookkeeping they share.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod closed;
mod established;
mod refuse;
mod seed;
mod tracking;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_ktime_get_boot_ns, tracing and iterator programs require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
