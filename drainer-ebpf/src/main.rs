//! drainer's kernel-side programs, one module per kernel hook:
//!
//! - [`refuse`]: `sk_lookup`, answers new connections to a draining port with a reset;
//! - [`transitions`]: BTF tracepoint `inet_sock_set_state`, counts server-side connections as
//!   their handshake completes and as they reach TCP_CLOSE;
//! - [`seed`]: `iter/tcp`, records the connections that were established before drainer started.
//!
//! [`tracking`] holds the counters and the rules that keep them exact, [`seeded`] the table of
//! connections found at start-up, [`ports`] the guarded ports, [`sock`] the reads of
//! `struct sock`, [`counter`] the atomic adds to counts in maps, [`globals`] the reads of the
//! values the loader sets.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod counter;
mod globals;
mod ports;
mod refuse;
mod seed;
mod seeded;
mod sock;
mod tracking;
mod transitions;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_ktime_get_boot_ns, tracing and iterator programs require it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
