//! drainer's kernel-side programs.
//!
//! One file per kernel hook, named after the hook; each opens with when the kernel calls it, what
//! it sees and what it costs:
//!
//! - [`sk_lookup`]: `refuse_while_draining`, attached to the guarded namespace while refusing;
//!   answers new connections to a draining port with a reset; `steer_to_next_generation`,
//!   attached while a restarted server's serving generation listens elsewhere; hands new
//!   connections to it;
//! - [`inet_sock_set_state`]: `follow_transitions`, BTF tracepoint on every TCP state change,
//!   attached from the drain's start;
//!   counts server-side connections as their handshake completes and as they reach TCP_CLOSE;
//!   `watch_for_listener`, attached while a restart waits for its next generation to listen;
//! - [`iter_tcp`]: `seed_established`, TCP socket iterator run once at drain start; records the
//!   connections that were established before drainer started.
//!
//! What they share:
//!
//! - [`tracking`]: the counters, the switches, the event ring and the rules that keep the counts
//!   exact;
//! - [`generations`]: which connections are a restarted server's replaced generation's;
//! - [`seeded`]: the table of connections the drain-start sweep found;
//! - [`ports`]: which ports are guarded, and their slots;
//! - [`sock`]: the reads of `struct sock`;
//! - [`counter`]: the atomic adds to counts in maps;
//! - [`globals`]: the reads of the values the loader sets.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

// The hooks.
mod inet_sock_set_state;
mod iter_tcp;
mod sk_lookup;

// What they share.
mod counter;
mod generations;
mod globals;
mod ports;
mod seeded;
mod sock;
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
